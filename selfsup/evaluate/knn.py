"""Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018, as used across SSL papers)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..data.splits import class_count
from ..neighbours import search


def knn_predict(train_f: Tensor, train_y: Tensor, test_f: Tensor, k: int = 20, t: float = 0.07,
                n_classes: int | None = None, method: str = "auto") -> Tensor:
    """Each test point votes among its k most cosine-similar training points, weighted by exp(sim / t).
    method: the neighbour search (`selfsup.neighbours.search`: exact when small, an index beyond)."""
    train_y = train_y.long()
    c = n_classes or class_count(train_y)
    top, idx = search(train_f, test_f, k, method)  # (Q, k)
    return torch.zeros(len(top), c).scatter_add_(1, train_y[idx], (top / t).exp()).argmax(1)


def knn_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, k: int = 20, t: float = 0.07,
                 method: str = "auto") -> float:
    """Accuracy of weighted kNN; `k` is capped at the number of training points."""
    n_classes = class_count(train_y, test_y)
    pred = knn_predict(train_f, train_y, test_f, k, t, n_classes, method)
    return (pred == test_y.long()).float().mean().item()
