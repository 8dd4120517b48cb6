"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020)."""
from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import Tensor, nn

from .. import heads
from ..losses import byol_loss
from ..schedule import cosine
from . import METHODS
from .base import MethodBase


def tau_at(progress: float, tau_base: float) -> float:
    """The paper's schedule: tau = 1 - (1 - tau_base) * (cos(pi * progress) + 1) / 2, from tau_base up to 1."""
    return cosine(progress, tau_base, 1.0)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float | Tensor) -> None:
    """target <- tau * target + (1 - tau) * online, for every parameter (tau may be a tensor: no host sync)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o.detach(), (1 - tau).to(t.dtype) if isinstance(tau, Tensor) else 1 - tau)


@torch.no_grad()
def follow(method: nn.Module, follower: nn.Module, online: nn.Module, progress: float, schedule: bool = True) -> None:
    """One step of an EMA follower (BYOL's target, MoCo's key encoder, DINO's teacher): follower <- EMA of online at
    `method.tau`, then tau to its cosine schedule at `progress` (unless fixed) and one more `method.ema_steps`."""
    ema_update(follower, online, method.tau)
    if schedule:
        method.tau.fill_(tau_at(progress, method.tau_base))
    method.ema_steps += 1


@METHODS.register("byol", "Online net + predictor chases an EMA target net; symmetric normalized MSE (BYOL, Grill et "
                  "al. 2020)")
class BYOL(MethodBase):
    n_views = 2

    def __init__(self, backbone: nn.Module, proj_hidden: int = 1024, proj_dim: int = 256, pred_hidden: int = 1024,
                 tau_base: float = 0.99, asymmetric: bool = False):
        super().__init__()
        self.backbone = backbone
        self.projector = heads.mlp((backbone.out_dim, proj_hidden, proj_dim))
        self.predictor = heads.mlp((proj_dim, pred_hidden, proj_dim))
        # The target is (backbone, projector) updated only by EMA: no gradients, never in the optimizer.
        self.target = nn.Sequential(copy.deepcopy(backbone), copy.deepcopy(self.projector)).requires_grad_(False)
        self.tau_base, self.asymmetric = tau_base, asymmetric
        self.register_buffer("tau", torch.tensor(tau_base, dtype=torch.float64))  # saved with the checkpoint
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

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
        follow(self, self.target, nn.Sequential(self.backbone, self.projector), progress)
