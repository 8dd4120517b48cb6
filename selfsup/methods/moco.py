"""MoCo: momentum contrast. v2 (Chen et al. 2020, arXiv:2003.04297) keeps a queue of negative keys;
v3 (Chen, Xie & He, ICCV 2021) contrasts within the batch and adds a predictor.

The key encoder is a copy of (backbone, projector) that follows the query encoder by EMA only: no gradients, never
in the optimizer, updated the same way on every process, so it stays identical everywhere.

BatchNorm in the key encoder (v2). With the whole batch normalised together, a query and its positive key share
batch statistics that the negatives in the queue do not, and the network can find its positive by them instead of
by content (MoCo, section 3.3). MoCo shuffles the key batch across GPUs. selfsup splits it instead: each process
encodes its keys in `key_groups` groups, each normalised on its own, while the queries are normalised over the
process's whole batch; so no positive key shares its statistics with its query, on one process or on many, with
no communication and no randomness to save for an exact resume.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import heads
from ..errors import ConfigError
from ..losses import batch_info_nce, gather_detached, info_nce, process_rank
from . import METHODS
from .base import MethodBase
from .ema import EMAFollower


class Momentum(MethodBase):
    """Shared by both versions: the query branch, the EMA key branch and its schedule."""

    def __init__(self, backbone: nn.Module, projector: nn.Module, tau_base: float, schedule: bool):
        super().__init__()
        self.backbone, self.projector = backbone, projector
        self.key_encoder = EMAFollower(backbone, projector, tau_base=tau_base, schedule=schedule)

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        self.key_encoder.follow(nn.Sequential(self.backbone, self.projector), progress)


@METHODS.register("mocov2", "Momentum key encoder, a queue of negatives, InfoNCE; key BatchNorm split in groups (MoCo "
                  "v2, Chen et al. 2020)")
class MoCoV2(Momentum):
    n_views = 2

    def __init__(self, backbone: nn.Module, proj_hidden: int = 2048, proj_dim: int = 128, queue_size: int = 4096,
                 temperature: float = 0.2, tau: float = 0.99, key_groups: int = 4, symmetric: bool = True):
        if queue_size < 1 or key_groups < 1:
            raise ConfigError(f"mocov2: queue_size and key_groups must be 1 or more, got {queue_size} and {key_groups}")
        super().__init__(backbone, heads.mlp((backbone.out_dim, proj_hidden, proj_dim), bn=False), tau, schedule=False)
        self.temperature, self.key_groups, self.symmetric = temperature, key_groups, symmetric
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.pending: list[Tensor] = []

    @torch.no_grad()
    def keys(self, x: Tensor) -> Tensor:
        """Keys of `x` (n, D), each group of the batch normalised on its own (see the module's docstring)."""
        groups = min(self.key_groups, max(1, x.shape[0] // 2))  # BatchNorm needs two samples per group
        return torch.cat([self.key_encoder(chunk) for chunk in x.chunk(groups)])

    def loss(self, views: list[Tensor]) -> Tensor:
        q1 = self.projector(self.backbone(views[0]))  # (n, proj_dim)
        k2 = self.keys(views[1])
        self.last_embedding = q1.detach()
        loss = info_nce(q1, k2, self.queue, self.temperature)
        self.pending = [k2]
        if self.symmetric:  # MoCo v2 ran one direction; both directions give twice the signal per batch
            q2, k1 = self.projector(self.backbone(views[1])), self.keys(views[0])
            loss = (loss + info_nce(q2, k1, self.queue, self.temperature)) / 2
            self.pending.append(k1)
        return loss

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Write the keys of every process (gathered in rank order) into the queue, oldest out first."""
        keys = F.normalize(gather_detached(keys).float(), dim=1)
        size = self.queue.shape[0]
        if keys.shape[0] > size:
            raise ConfigError(f"mocov2: queue_size {size} is smaller than the global batch {keys.shape[0]}; raise it")
        rows = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[rows] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        super().after_optimizer_step(progress)
        for keys in self.pending:  # after the step: the loss's graph held the queue as it was
            self.enqueue(keys)
        self.pending = []


@METHODS.register("mocov3", "Momentum encoder + predictor, symmetric InfoNCE over the global batch, cosine momentum "
                  "(MoCo v3, Chen, Xie & He 2021)")
class MoCoV3(Momentum):
    global_batchnorm = True  # the paper's BatchNorm statistics span every process (SyncBN)
    n_views = 2

    def __init__(self, backbone: nn.Module, proj_hidden: int = 1024, proj_dim: int = 256, pred_hidden: int = 1024,
                 temperature: float = 0.2, tau_base: float = 0.99):
        super().__init__(backbone, heads.mlp((backbone.out_dim, proj_hidden, proj_hidden, proj_dim), last_bn=True),
                         tau_base, schedule=True)
        self.predictor = heads.mlp((proj_dim, pred_hidden, proj_dim))
        self.temperature = temperature

    def loss(self, views: list[Tensor]) -> Tensor:
        q1, q2 = (self.predictor(self.projector(self.backbone(v))) for v in views[:2])  # (n, proj_dim)
        with torch.no_grad():
            k1, k2 = (gather_detached(self.key_encoder(v)) for v in views[:2])  # (N, proj_dim), every process's
        self.last_embedding = q1.detach()
        offset = process_rank() * q1.shape[0]
        return batch_info_nce(q1, k2, self.temperature, offset) + batch_info_nce(q2, k1, self.temperature, offset)
