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
            rank: int = 0, decoupled: bool = False) -> Tensor:
    """SimCLR's NT-Xent: each of the 2N embeddings must pick its partner out of 2N-1 others (2N-2 negatives).

    z1, z2: (n, D) embeddings of two views of the same n images; row i of z1 pairs with row i of z2.
    gathered: (Z1, Z2), the (N, D) embeddings of every process's batch, this process's rows at `rank * n`;
    the local 2n anchors are then contrasted against all 2N-2 negatives. The mean over local anchors, averaged
    over processes (as data-parallel gradients are), is the single-process loss on the global batch.
    decoupled: the partner leaves the denominator too (DCL, Yeh et al. 2022): -s(partner) + log sum over the
    negatives of exp(s), so a pair already close no longer scales down the push from the negatives.
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
    if not decoupled:
        return F.cross_entropy(sim.masked_fill(self_mask, float("-inf")), partner)
    negatives = sim.masked_fill(self_mask.scatter_(1, partner[:, None], True), float("-inf"))
    return (torch.logsumexp(negatives, 1) - sim.gather(1, partner[:, None]).squeeze(1)).mean()


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


def gather_detached(z: Tensor) -> Tensor:
    """All processes' rows of `z` in rank order, without gradients (keys of a momentum encoder); `z` on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z.detach()
    out = [torch.empty_like(z) for _ in range(dist.get_world_size())]
    dist.all_gather(out, z.detach().contiguous())
    return torch.cat(out)


def process_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@_profiled
def info_nce(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo v2: query i must pick its key i (positive) out of the queue's K negatives, averaged over the batch.

    q, k: (n, D) queries and keys of the same n images (k carries no gradient); queue: (K, D) earlier keys.
    Each query's loss involves only its own key and the queue, so the mean over processes (what data-parallel
    gradients average) equals the loss of one process on the global batch with the same queue."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.detach().float(), dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.detach().float().T], dim=1) / temperature  # (n, 1 + K)
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


@_profiled
def batch_info_nce(q: Tensor, keys: Tensor, temperature: float = 0.2, offset: int = 0) -> Tensor:
    """MoCo v3's contrastive loss: query i must pick key `offset + i` among every key of the (global) batch,
    scaled by 2 * temperature as in the paper. keys: (N, D) from the momentum encoder, gathered over processes."""
    q, keys = F.normalize(q.float(), dim=1), F.normalize(keys.detach().float(), dim=1)
    labels = torch.arange(q.shape[0], device=q.device) + offset
    return F.cross_entropy(q @ keys.T / temperature, labels) * 2 * temperature


def standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """Each dimension to zero mean and unit (biased) variance over the batch, as an affine-free BatchNorm."""
    z = z.float()
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def off_diagonal(m: Tensor) -> Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


@_profiled
def barlow_twins_loss(z1: Tensor, z2: Tensor, off_diagonal_weight: float = 0.0051) -> Tensor:
    """Barlow Twins: the cross-correlation of the standardized embeddings (N, D) pushed to the identity:
    sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2. Pass the global batch (gathered) across processes."""
    c = standardize(z1).T @ standardize(z2) / z1.shape[0]  # (D, D)
    return (torch.diagonal(c) - 1).pow(2).sum() + off_diagonal_weight * off_diagonal(c).pow(2).sum()


@_profiled
def vicreg_terms(z1: Tensor, z2: Tensor, eps: float = 1e-4) -> tuple[Tensor, Tensor, Tensor]:
    """VICReg's invariance (MSE between views), variance (hinge on each dimension's std at 1, averaged over the two
    branches) and covariance (squared off-diagonal covariances / D, summed over the two branches: c(Z) + c(Z') of
    Bardes et al. 2022, eq. 6, as the authors' code computes it) terms. Pass the global batch across processes."""
    z1, z2 = z1.float(), z2.float()
    invariance = F.mse_loss(z1, z2)
    variance, covariance = z1.new_zeros(()), z1.new_zeros(())
    for z in (z1, z2):
        z = z - z.mean(0)
        variance = variance + F.relu(1 - torch.sqrt(z.var(0) + eps)).mean() / 2
        cov = z.T @ z / (z.shape[0] - 1)  # (D, D)
        covariance = covariance + off_diagonal(cov).pow(2).sum() / z.shape[1]
    return invariance, variance, covariance


@_profiled
def dino_loss(student: list[Tensor], teacher: list[Tensor], center: Tensor, student_temp: float,
              teacher_temp: float | Tensor) -> Tensor:
    """DINO: cross-entropy from each centred, sharpened teacher distribution (global crops) to every student crop
    but the same one, averaged over pairs and the batch. student[i], teacher[j]: (n, K) logits; student[j] for
    j < len(teacher) is the same crop as teacher[j]."""
    targets = [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1) for t in teacher]
    logs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student]
    total, pairs = student[0].new_zeros((), dtype=torch.float32), 0
    for j, t in enumerate(targets):
        for i, s in enumerate(logs):
            if i != j:
                total = total + (-t * s).sum(-1).mean()
                pairs += 1
    return total / pairs


@torch.no_grad()
def batch_mean(x: Tensor) -> Tensor:
    """The mean over the rows of every process's `x` (N, K): (K,), the same on every process."""
    import torch.distributed as dist

    total, n = x.float().sum(0), torch.tensor(float(x.shape[0]), device=x.device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(total)
        dist.all_reduce(n)
    return total / n


@_profiled
def masked_patch_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """MAE: mean squared error over the masked patches only. pred, target: (B, N, P) pixels per patch; mask: (B, N),
    1 where the patch was hidden. norm_pix: each target patch to zero mean and unit variance (the paper's choice)."""
    target = target.float()
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(-1)  # (B, N)
    return (per_patch * mask).sum() / mask.sum()
