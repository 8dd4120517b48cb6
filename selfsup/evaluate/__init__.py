"""Evaluation takes features and labels and returns numbers; `few_label_rows` ties it to an encoder."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import ImageSet, few_labels
from .features import extract_features
from .knn import knn_accuracy
from .linear import linear_accuracy

EVALS = {"knn": knn_accuracy, "linear": linear_accuracy}


def few_label_rows(encoder: nn.Module, train: ImageSet, test: ImageSet, labels_per_class: list[int], name: str,
                   evals: tuple[str, ...] = ("knn", "linear"), seeds: tuple[int, ...] = (0,),
                   device: str | torch.device | None = None) -> list[dict]:
    """Frozen-feature accuracies for each labels-per-class count, eval and seed, as result rows.

    Only the labeled subsets and the test split are embedded; the probe never sees other labels.
    """
    subsets = {(n, s): few_labels(train.labels, n, s) for n in labels_per_class for s in seeds}
    needed = np.unique(np.concatenate(list(subsets.values())))
    feats = extract_features(encoder, train.images[needed], device=device)  # (len(needed), D)
    row_of = {int(i): r for r, i in enumerate(needed)}
    test_f, test_y = extract_features(encoder, test.images, device=device), torch.from_numpy(test.labels)
    rows = []
    for (n, s), idx in subsets.items():
        f = feats[[row_of[int(i)] for i in idx]]
        y = torch.from_numpy(train.labels[idx])
        for e in evals:
            acc = EVALS[e](f, y, test_f, test_y)
            rows.append({"method": name, "eval": e, "labels_per_class": n, "accuracy": round(acc, 4), "seed": s})
    return rows


__all__ = ["extract_features", "knn_accuracy", "linear_accuracy", "few_label_rows", "EVALS"]
