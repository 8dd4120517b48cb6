"""BYOL: Bootstrap Your Own Latent (Grill et al., NeurIPS 2020)."""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from .. import heads
from ..losses import byol_loss
from . import METHODS


def tau_at(progress: float, tau_base: float) -> float:
    """The paper's schedule: tau = 1 - (1 - tau_base) * (cos(pi * progress) + 1) / 2, from tau_base up to 1."""
    return 1 - (1 - tau_base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """target <- tau * target + (1 - tau) * online, for every parameter."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o.detach(), 1 - tau)


@METHODS.register("byol", "BYOL: online net + predictor chases an EMA target net; symmetric normalized MSE")
class BYOL(nn.Module):
    n_views = 2

    def __init__(self, backbone: nn.Module, proj_hidden: int = 1024, proj_dim: int = 256, pred_hidden: int = 1024,
                 tau_base: float = 0.99):
        super().__init__()
        self.backbone = backbone
        self.projector = heads.mlp((backbone.out_dim, proj_hidden, proj_dim))
        self.predictor = heads.mlp((proj_dim, pred_hidden, proj_dim))
        # The target is (backbone, projector) updated only by EMA: no gradients, never in the optimizer.
        self.target = nn.Sequential(copy.deepcopy(backbone), copy.deepcopy(self.projector)).requires_grad_(False)
        self.tau_base = tau_base
        self.register_buffer("tau", torch.tensor(tau_base, dtype=torch.float64))  # saved with the checkpoint
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))

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
    def after_step(self, progress: float) -> None:
        ema_update(self.target, nn.Sequential(self.backbone, self.projector), float(self.tau))
        self.tau.fill_(tau_at(progress, self.tau_base))
        self.ema_steps += 1
