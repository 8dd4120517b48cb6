"""Stratified, deterministic label subsets."""
from __future__ import annotations

import numpy as np

from ..errors import DataError


def few_labels(labels: np.ndarray, per_class: int, seed: int = 0, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of `per_class` labeled examples of every class, the same for the same seed.

    `exclude` removes indices (e.g. a validation split) from the pool first.
    """
    labels = np.asarray(labels)
    if per_class < 1:
        raise DataError(f"labels_per_class must be at least 1, got {per_class}")
    pool = np.ones(len(labels), bool)
    pool &= labels >= 0
    if exclude is not None:
        pool[np.asarray(exclude, np.int64)] = False
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(pool & (labels == c))
        if len(idx) < per_class:
            raise DataError(f"labels_per_class={per_class} is more than class {c} has ({len(idx)} labeled images); ask for at most {len(idx)}")
        chosen.append(rng.choice(idx, per_class, replace=False))
    if not chosen:
        raise DataError("this split has no labeled images; few-label evaluation needs labels")
    return np.sort(np.concatenate(chosen))


def class_count(*labels) -> int:
    """The number of classes that label arrays or tensors name (classes are 0..C-1; -1 marks unlabeled)."""
    return max(int(y.max()) for y in labels if len(y)) + 1
