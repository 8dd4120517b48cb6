"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations (Chen et al., ICML 2020)."""
from __future__ import annotations

from torch import Tensor, nn

from .. import heads
from ..losses import gather_with_grad, nt_xent
from . import METHODS
from .base import MethodBase


@METHODS.register("simclr", "SimCLR: two views, MLP projector, NT-Xent against 2N-2 negatives")
class SimCLR(MethodBase):
    n_views = 2

    def __init__(self, backbone: nn.Module, proj_hidden: int = 512, proj_dim: int = 128, temperature: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.projector = heads.projection(backbone.out_dim, proj_hidden, proj_dim)
        self.temperature = temperature

    def embed(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))  # (B, proj_dim)

    def loss(self, views: list[Tensor]) -> Tensor:
        z1, z2 = self.embed(views[0]), self.embed(views[1])
        self.last_embedding = z1.detach()
        g1, g2 = gather_with_grad(z1), gather_with_grad(z2)  # negatives from every process, when there are several
        if g1 is None:
            return nt_xent(z1, z2, self.temperature)
        import torch.distributed as dist

        return nt_xent(z1, z2, self.temperature, gathered=(g1, g2), rank=dist.get_rank())
