"""Linear probe: multinomial logistic regression on frozen, L2-normalized features."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.splits import class_count


def fit_linear(train_f: Tensor, train_y: Tensor, n_classes: int, weight_decay: float = 1e-4,
               iters: int = 200, scale: float | None = None) -> tuple[Tensor, Tensor]:
    """Full-batch L-BFGS on the cross-entropy of normalized features (deterministic).

    Features are L2-normalized, then multiplied by `scale` (default sqrt(D)) so that
    each coordinate is O(1) and `weight_decay` means the same thing for any D.
    """
    x = F.normalize(train_f.float(), dim=1) * (scale or train_f.shape[1] ** 0.5)
    y = train_y.long()
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def probe_logits(probe: tuple[Tensor, Tensor], features: Tensor) -> Tensor:
    """Logits of a fitted probe on features, scaled as `fit_linear` scaled its inputs (default scale)."""
    w, b = probe
    return F.normalize(features.float(), dim=1) * features.shape[1] ** 0.5 @ w + b


def predict_linear(probe: tuple[Tensor, Tensor], features: Tensor) -> Tensor:
    """Classes a fitted probe gives to features."""
    return probe_logits(probe, features).argmax(1)


def linear_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, weight_decay: float = 1e-4) -> float:
    """Train the probe on (train_f, train_y) only and report accuracy on the test features."""
    n_classes = class_count(train_y, test_y)
    probe = fit_linear(train_f, train_y, n_classes, weight_decay)
    return (predict_linear(probe, test_f) == test_y.long()).float().mean().item()
