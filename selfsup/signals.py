"""Label-free signals of how good an encoder's features are, for a folder that has no labels yet.

Each is computed on the same sample of images and the same two augmented views of each:
- `agreement`: how many of an image's 10 nearest neighbours under one view are also its neighbours under the
  other view (higher is better): features that keep an image's neighbourhood through an augmentation.
- `effective_rank`: exp of the entropy of the normalised singular values of the centred features (Roy & Vetterli
  2007; RankMe, Garrido et al. 2023; higher is better): how many directions the features really use.
- `alignment`: mean squared distance between the two views' unit features (lower is better), and
  `uniformity`: log of the mean Gaussian potential between images' unit features (lower is better)
  (Wang & Isola, ICML 2020).
How well each ranks checkpoints and methods against labeled evaluations was measured on MNIST and CIFAR-10
(bench/README.md, "Label-free signals"); `BEST` is the one that ranked them best there.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .augment import augment, preset
from .evaluate.features import extract_features
from .neighbours import search

SAMPLE = 2000
SEED = 4242
BEST = "agreement"
HIGHER_IS_BETTER = {"agreement": True, "effective_rank": True, "alignment": False, "uniformity": False}


def effective_rank(f: torch.Tensor) -> float:
    s = torch.linalg.svdvals(f - f.mean(0))
    p = s / s.sum().clamp(min=1e-12)
    return float(torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum()))


def signals(encoder, images: np.ndarray, k: int = 10) -> dict[str, float]:
    """The label-free signals of `encoder` on (a fixed sample of) `images` (N, C, H, W) uint8."""
    n = len(images)
    idx = np.sort(np.random.default_rng(SEED).choice(n, min(SAMPLE, n), replace=False))
    x = torch.from_numpy(np.ascontiguousarray(images[idx]))
    g = torch.Generator().manual_seed(SEED)
    view = preset("simclr" if x.shape[1] == 3 else "greyscale", x.shape[1])
    v1 = extract_features(encoder, (augment(x, view, g) * 255).round().to(torch.uint8))
    v2 = extract_features(encoder, (augment(x, view, g) * 255).round().to(torch.uint8))
    plain = extract_features(encoder, x)
    u1, u2, u = F.normalize(v1, dim=1), F.normalize(v2, dim=1), F.normalize(plain, dim=1)
    _, n1 = search(u1, None, k)
    _, n2 = search(u2, None, k)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(n1.tolist(), n2.tolist())])
    d2 = torch.cdist(u, u).pow(2)  # (n, n)
    off = ~torch.eye(len(u), dtype=torch.bool)
    return {"agreement": round(float(overlap), 4), "effective_rank": round(effective_rank(plain), 2),
            "alignment": round(float((u1 - u2).pow(2).sum(1).mean()), 4),
            "uniformity": round(float(torch.log(torch.exp(-2 * d2[off]).mean())), 4)}


def best_of(table: dict[str, dict[str, float]], signal: str = BEST) -> tuple[str, str]:
    """(name, why) of the encoder that the trusted signal ranks first."""
    sign = 1 if HIGHER_IS_BETTER[signal] else -1
    name = max(table, key=lambda m: sign * table[m][signal])
    others = ", ".join(f"{m} {v[signal]}" for m, v in table.items() if m != name)
    return name, (f"{name} looks best without labels: its {signal} is {table[name][signal]}"
                  + (f" (against {others})" if others else "")
                  + f"; {signal} ranked checkpoints and methods closest to labeled accuracy in selfsup's measurements")
