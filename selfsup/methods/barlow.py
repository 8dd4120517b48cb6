"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al., ICML 2021).

The loss is a statistic of the batch (each dimension standardized, then the cross-correlation), so across
processes it is taken over the global batch: the embeddings are gathered with gradients and every process
computes the same loss; the gathered gradients sum over ranks and data-parallel averaging then gives one
process's gradient on the global batch.
"""
from __future__ import annotations

from torch import Tensor, nn

from .. import heads
from ..losses import barlow_twins_loss, gather_with_grad
from . import METHODS
from .base import MethodBase


def global_batch(z: Tensor) -> Tensor:
    """Every process's rows of `z` with gradients, or `z` itself on one process."""
    g = gather_with_grad(z)
    return z if g is None else g


@METHODS.register("barlowtwins", "Cross-correlation of the two views' embeddings pushed to the identity (Barlow "
                  "Twins, Zbontar et al. 2021)")
class BarlowTwins(MethodBase):
    global_batchnorm = True  # the paper's BatchNorm statistics span every process (SyncBN)
    n_views = 2

    def __init__(self, backbone: nn.Module, proj_hidden: int = 2048, proj_dim: int = 2048,
                 off_diagonal_weight: float = 0.0051):
        super().__init__()
        self.backbone = backbone
        self.projector = heads.mlp((backbone.out_dim, proj_hidden, proj_hidden, proj_dim))  # 3 layers, as the paper
        self.off_diagonal_weight = off_diagonal_weight

    def loss(self, views: list[Tensor]) -> Tensor:
        z1, z2 = (self.projector(self.backbone(v)) for v in views[:2])  # (n, proj_dim)
        self.last_embedding = z1.detach()
        return barlow_twins_loss(global_batch(z1), global_batch(z2), self.off_diagonal_weight)
