"""VICReg: Variance-Invariance-Covariance Regularization (Bardes, Ponce & LeCun, ICLR 2022).

Variance and covariance are statistics of the batch, so across processes they are taken over the global batch
(the embeddings gathered with gradients; see barlow.py for why the gradients then match one process).
"""
from __future__ import annotations

from torch import Tensor, nn

from .. import heads
from . import METHODS
from ..losses import vicreg_terms
from .barlow import global_batch
from .base import MethodBase


@METHODS.register("vicreg", "Invariance + variance hinge + covariance penalty on a wide expander, weights 25/25/0.5 "
                  "on a CPU, the paper's 25/25/1 on a GPU (VICReg, Bardes et al. 2022)")
class VICReg(MethodBase):
    global_batchnorm = True  # the paper's BatchNorm statistics span every process (SyncBN)
    n_views = 2

    def __init__(self, backbone: nn.Module, proj_hidden: int = 2048, proj_dim: int = 2048, invariance_weight: float = 25.0,
                 variance_weight: float = 25.0, covariance_weight: float = 0.5):
        # covariance_weight: the paper's 1.0 (the GPU recipes' setting) on a covariance term summed over both
        # branches left a 200-step run on digits below random weights (kNN -0.068); 0.5 learns there
        super().__init__()
        self.backbone = backbone
        self.projector = heads.mlp((backbone.out_dim, proj_hidden, proj_hidden, proj_dim))  # the expander
        self.weights = (invariance_weight, variance_weight, covariance_weight)

    def loss(self, views: list[Tensor]) -> Tensor:
        z1, z2 = (self.projector(self.backbone(v)) for v in views[:2])  # (n, proj_dim)
        self.last_embedding = z1.detach()
        invariance, variance, covariance = vicreg_terms(global_batch(z1), global_batch(z2))
        self.measure(invariance=invariance, variance=variance, covariance=covariance)
        a, b, c = self.weights
        return a * invariance + b * variance + c * covariance
