"""Losses as pure tensor functions."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.profiler import record_function


def _profiled(fn):
    """Run `fn` inside a torch.profiler range called selfsup.loss (free when no profiler is running)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with record_function("selfsup.loss"):
            return fn(*args, **kwargs)
    return wrapper


@_profiled
def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.2, gathered: tuple[Tensor, Tensor] | None = None,
            rank: int = 0) -> Tensor:
    """SimCLR's NT-Xent: each of the 2N embeddings must pick its partner out of 2N-1 others (2N-2 negatives).

    z1, z2: (n, D) embeddings of two views of the same n images; row i of z1 pairs with row i of z2.
    gathered: (Z1, Z2), the (N, D) embeddings of every process's batch, this process's rows at `rank * n`;
    the local 2n anchors are then contrasted against all 2N-2 negatives. The mean over local anchors, averaged
    over processes (as data-parallel gradients are), is the single-process loss on the global batch.
    """
    n = z1.shape[0]
    anchors = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2n, D), in fp32 even under autocast
    if gathered is None:
        keys, big_n, offset = anchors, n, 0
    else:
        keys, big_n, offset = F.normalize(torch.cat(gathered).float(), dim=1), gathered[0].shape[0], rank * n
    sim = anchors @ keys.T / temperature  # (2n, 2N)
    own = torch.arange(n, device=z1.device) + offset
    itself, partner = torch.cat([own, own + big_n]), torch.cat([own + big_n, own])
    self_mask = torch.zeros_like(sim, dtype=torch.bool).scatter_(1, itself[:, None], True)
    return F.cross_entropy(sim.masked_fill(self_mask, float("-inf")), partner)


def gather_with_grad(z: Tensor) -> Tensor | None:
    """All processes' rows of `z`, concatenated in rank order, with gradients flowing back to each process's own rows
    (torch.distributed's differentiable all_gather sums the gradient from every rank). None on a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # its suggested successor has no gloo backward; this one sums over ranks on any backend
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(z.contiguous()))


@_profiled
def byol_loss(p: Tensor, z_target: Tensor) -> Tensor:
    """BYOL's normalized MSE, 2 - 2 cos(p, z'), averaged over the batch; z_target carries no gradient."""
    p, z = F.normalize(p.float(), dim=1), F.normalize(z_target.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


@_profiled
def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D(p, stopgrad(z)) = -cos(p, z), averaged over the batch; the stop-gradient is part of the loss."""
    p, z = F.normalize(p.float(), dim=1), F.normalize(z.detach().float(), dim=1)
    return -(p * z).sum(dim=1).mean()
