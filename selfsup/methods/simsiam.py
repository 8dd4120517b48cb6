"""SimSiam: Exploring Simple Siamese Representation Learning (Chen & He, CVPR 2021)."""
from __future__ import annotations

from torch import Tensor, nn

from .. import heads
from ..losses import negative_cosine
from . import METHODS
from .base import MethodBase


@METHODS.register("simsiam", "Predictor + stop-gradient, no momentum target; symmetric negative cosine (SimSiam, Chen "
                  "& He 2021)")
class SimSiam(MethodBase):
    global_batchnorm = True  # the paper's BatchNorm statistics span every process (SyncBN)
    n_views = 2

    def __init__(self, backbone: nn.Module, proj_dim: int = 1024, pred_hidden: int = 256):
        super().__init__()
        self.backbone = backbone
        d = backbone.out_dim
        self.projector = heads.mlp((d, proj_dim, proj_dim, proj_dim), last_bn=True)  # BN on the output, as in the paper
        self.predictor = heads.mlp((proj_dim, pred_hidden, proj_dim))  # bottleneck predictor

    def loss(self, views: list[Tensor]) -> Tensor:
        z1, z2 = self.projector(self.backbone(views[0])), self.projector(self.backbone(views[1]))  # (B, proj_dim)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        self.last_embedding = z1.detach()
        return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)  # z is detached inside the loss
