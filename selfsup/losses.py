"""Losses as pure tensor functions."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.2) -> Tensor:
    """SimCLR's NT-Xent: each of the 2N embeddings must pick its partner out of 2N-1 others (2N-2 negatives).

    z1, z2: (N, D) embeddings of two views of the same N images; row i of z1 pairs with row i of z2.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D), in fp32 even under autocast
    sim = z @ z.T / temperature  # (2N, 2N)
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))  # no self-pairs
    partner = torch.arange(2 * n, device=z.device).roll(n)  # i <-> i + N
    return F.cross_entropy(sim, partner)


def byol_loss(p: Tensor, z_target: Tensor) -> Tensor:
    """BYOL's normalized MSE, 2 - 2 cos(p, z'), averaged over the batch; z_target carries no gradient."""
    p, z = F.normalize(p.float(), dim=1), F.normalize(z_target.detach().float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D(p, stopgrad(z)) = -cos(p, z), averaged over the batch; the stop-gradient is part of the loss."""
    p, z = F.normalize(p.float(), dim=1), F.normalize(z.detach().float(), dim=1)
    return -(p * z).sum(dim=1).mean()
