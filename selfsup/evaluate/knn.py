"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018, as used across SSL papers)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.splits import class_count


def knn_predict(train_f: Tensor, train_y: Tensor, test_f: Tensor, k: int = 20, t: float = 0.07,
                n_classes: int | None = None, chunk: int = 4096) -> Tensor:
    """Each test point votes among its k most cosine-similar training points, weighted by exp(sim / t)."""
    train_f, test_f = F.normalize(train_f.float(), dim=1), F.normalize(test_f.float(), dim=1)
    train_y = train_y.long()
    c = n_classes or class_count(train_y)
    k = min(k, len(train_f))
    preds = []
    for i in range(0, len(test_f), chunk):
        sim = test_f[i:i + chunk] @ train_f.T  # (chunk, N_train)
        top, idx = sim.topk(k, dim=1)  # (chunk, k)
        votes = torch.zeros(len(top), c).scatter_add_(1, train_y[idx], (top / t).exp())  # (chunk, C)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, k: int = 20, t: float = 0.07) -> float:
    """Accuracy of weighted kNN; `k` is capped at the number of training points."""
    n_classes = class_count(train_y, test_y)
    pred = knn_predict(train_f, train_y, test_f, k, t, n_classes)
    return (pred == test_y.long()).float().mean().item()
