"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020)."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from .. import heads
from ..losses import byol_loss
from . import METHODS
from .base import MethodBase
from .ema import EMAFollower, ema_update, tau_at  # noqa: F401  (re-exported)


@METHODS.register("byol", "Online net + predictor chases an EMA target net; symmetric normalized MSE (BYOL, Grill et "
                  "al. 2020)")
class BYOL(MethodBase):
    global_batchnorm = True  # the paper's BatchNorm statistics span every process (SyncBN)
    n_views = 2

    def __init__(self, backbone: nn.Module, proj_hidden: int = 1024, proj_dim: int = 256, pred_hidden: int = 1024,
                 tau_base: float = 0.99, asymmetric: bool = False):
        super().__init__()
        self.backbone = backbone
        self.projector = heads.mlp((backbone.out_dim, proj_hidden, proj_dim))
        self.predictor = heads.mlp((proj_dim, pred_hidden, proj_dim))
        # The target is (backbone, projector) updated only by EMA: no gradients, never in the optimizer.
        self.target = EMAFollower(backbone, self.projector, tau_base=tau_base)
        self.asymmetric = asymmetric

    def views(self, base):
        """asymmetric: the paper's two view distributions (always blurred; rarely blurred and sometimes solarized)."""
        if not self.asymmetric:
            return [base, base]
        return [replace(base, blur_p=1.0, solarize_p=0.0), replace(base, blur_p=0.1, solarize_p=0.2)]

    def loss(self, views: list[Tensor]) -> Tensor:
        z1, z2 = self.projector(self.backbone(views[0])), self.projector(self.backbone(views[1]))  # (B, proj_dim)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            # The target runs in the same mode as the online net (batch statistics in training, as in the paper);
            # its BatchNorm running stats come from its own forward passes.
            t1, t2 = self.target(views[0]), self.target(views[1])
        self.last_embedding = z1.detach()
        return byol_loss(p1, t2) + byol_loss(p2, t1)

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        self.target.follow(nn.Sequential(self.backbone, self.projector), progress)
