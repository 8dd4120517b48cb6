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
