"""Collapse monitor: is the embedding spread out, or has it shrunk to a point or a few directions?"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def embedding_std(z: Tensor) -> float:
    """Mean per-dimension std of L2-normalized embeddings (SimSiam paper, sec. 4.1): ~1/sqrt(d) if healthy, 0 if collapsed."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean().item()


def effective_rank(z: Tensor) -> float:
    """exp(entropy) of the normalized singular values of the centred batch (Roy & Vetterli 2007); 1 = one direction."""
    z = z.detach().float()
    s = torch.linalg.svdvals(z - z.mean(dim=0))
    if s.sum() <= 0:
        return 1.0
    p = s / s.sum()
    return math.exp(-(p * torch.log(p.clamp_min(1e-12))).sum().item())


def collapse_stats(z: Tensor) -> dict[str, float]:
    """std, its healthy reference 1/sqrt(d), their ratio, and effective rank of a batch of embeddings."""
    d = z.shape[1]
    std = embedding_std(z)
    return {"embed_std": std, "embed_std_ref": 1 / math.sqrt(d), "embed_std_ratio": std * math.sqrt(d),
            "effective_rank": effective_rank(z)}


COLLAPSE_RATIO = 0.1  # std below a tenth of 1/sqrt(d) means the embeddings have collapsed


def is_collapsed(stats: dict[str, float]) -> bool:
    return stats["embed_std_ratio"] < COLLAPSE_RATIO
