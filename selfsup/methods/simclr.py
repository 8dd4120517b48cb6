"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations (Chen et al., ICML 2020).

With `local_crops=K`, each image also gets K small crops at half the side (multi-crop, Caron et al. 2020,
SwAV §3.2): each local crop is contrasted with each of the two global views, as a pair of its own, and the
loss is the mean over the pairs. Small crops cost a quarter of a global view each and teach the encoder that
a part predicts the whole.

With `decoupled=True` the loss is DCL's (Yeh et al., ECCV 2022): the positive pair is left out of NT-Xent's
denominator (`losses.nt_xent`). The colour setup uses it (bench/README.md, "The contrastive loss, and a wider last
block").
"""
from __future__ import annotations

from torch import Tensor, nn

from .. import heads
from ..errors import ConfigError
from ..losses import gather_with_grad, nt_xent
from . import METHODS
from .base import MethodBase, by_size, local_view


@METHODS.register("simclr", "Two views, MLP projector, NT-Xent against 2N-2 negatives; optional local crops (SimCLR, "
                  "Chen et al. 2020)")
class SimCLR(MethodBase):
    global_batchnorm = True  # the paper's BatchNorm statistics span every process (SyncBN)
    n_views = 2

    def __init__(self, backbone: nn.Module, proj_hidden: int = 512, proj_dim: int = 128, temperature: float = 0.2,
                 local_crops: int = 0, local_scale: tuple[float, float] | list[float] = (0.05, 0.4),
                 decoupled: bool = False):
        super().__init__()
        if local_crops < 0 or not (0 < local_scale[0] <= local_scale[1] <= 1):
            raise ConfigError(f"simclr: local_crops must be 0 or more and local_scale a range in (0, 1], "
                              f"got {local_crops} and {local_scale}")
        self.backbone = backbone
        self.projector = heads.projection(backbone.out_dim, proj_hidden, proj_dim)
        self.temperature, self.decoupled = temperature, decoupled
        self.local_crops, self.local_scale = int(local_crops), (float(local_scale[0]), float(local_scale[1]))
        self.n_views = 2 + self.local_crops

    def views(self, base):
        if not self.local_crops:
            return [base, base]
        local = local_view(base, self.backbone, (1, 2), self.local_scale, "simclr")
        return [base, base] + [local] * self.local_crops

    def embed(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))  # (B, proj_dim)

    def pair(self, z1: Tensor, z2: Tensor) -> Tensor:
        g1, g2 = gather_with_grad(z1), gather_with_grad(z2)  # negatives from every process, when there are several
        if g1 is None:
            return nt_xent(z1, z2, self.temperature, decoupled=self.decoupled)
        import torch.distributed as dist

        return nt_xent(z1, z2, self.temperature, gathered=(g1, g2), rank=dist.get_rank(), decoupled=self.decoupled)

    def loss(self, views: list[Tensor]) -> Tensor:
        z1, z2 = self.embed(views[0]), self.embed(views[1])
        self.last_embedding = z1.detach()
        loss = self.pair(z1, z2)
        if len(views) == 2:
            return loss
        for z in by_size(self.embed, views[2:]):  # the local crops in one forward
            loss = loss + self.pair(z, z1) + self.pair(z, z2)
        return loss / (1 + 2 * (len(views) - 2))
