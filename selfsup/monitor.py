"""Watching a run: has the embedding collapsed (to a point or a few directions), and how good is it by kNN?"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def embedding_std(z: Tensor) -> float:
    """Mean per-dimension std of L2-normalized embeddings (SimSiam paper, sec. 4.1): ~1/sqrt(d) if healthy, 0 if collapsed."""
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean().item()


def effective_rank(z: Tensor) -> float:
    """exp(entropy) of the normalized singular values of the centred batch (Roy & Vetterli 2007); 1 = one direction."""
    z = z.detach().float()
    z = z - z.mean(dim=0)
    if z.shape[1] > z.shape[0]:  # wide (DINO's 65,536 outputs): the same singular values from the (B, B) Gram matrix
        s = torch.linalg.eigvalsh(z @ z.T).clamp(min=0).sqrt()
    else:
        s = torch.linalg.svdvals(z)
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


def method_stats(method) -> dict[str, float]:
    """What a method measured at its last step: its metrics, and the collapse statistics of its last embedding."""
    stats = {k: float(v) for k, v in method.metrics.items()}
    z = method.last_embedding
    if z is not None and z.shape[0] > 1:
        stats |= collapse_stats(z)
    return stats


COLLAPSE_RATIO = 0.1  # std below a tenth of 1/sqrt(d) means the embeddings have collapsed


def is_collapsed(stats: dict[str, float]) -> bool:
    return stats["embed_std_ratio"] < COLLAPSE_RATIO


class OnlineKNN:
    """kNN accuracy of the current encoder on a small labeled holdout of the pretraining split.

    The labels are read only here, to show representation quality during training; they never reach the loss.
    `enabled` is False where the split has too few labels.
    """

    def __init__(self, images, labels, per_class: int, seed: int):
        from .data import few_labels

        self.enabled = False
        known = labels[labels >= 0]
        if per_class < 1 or len(known) == 0:
            return
        per_class = min(per_class, int(np.bincount(known).min()) // 2)
        if per_class < 1:
            return
        bank = few_labels(labels, per_class, seed + 1)
        queries = few_labels(labels, per_class, seed + 2, exclude=bank)
        self.bank_x, self.bank_y = images[bank], torch.from_numpy(labels[bank])
        self.query_x, self.query_y = images[queries], torch.from_numpy(labels[queries])
        self.enabled = True

    def __call__(self, encoder: torch.nn.Module) -> float:
        from .evaluate.features import extract_features
        from .evaluate.knn import knn_accuracy

        bank = extract_features(encoder, self.bank_x)
        return knn_accuracy(bank, self.bank_y, extract_features(encoder, self.query_x), self.query_y)
