"""Label-free signals, checked against their definitions (Roy & Vetterli's effective rank; Wang & Isola's
alignment and uniformity)."""
import math

import numpy as np
import torch
from torch import nn

from selfsup.signals import best_of, effective_rank, signals


def test_effective_rank_counts_the_directions_used():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(4000, 16, generator=g)
    assert abs(effective_rank(iso) - 16) < 0.5  # equal singular values: exp(log 16)
    line = torch.randn(500, 1, generator=g) * torch.ones(1, 16)
    assert effective_rank(line) < 1.05
    two = torch.cat([torch.randn(2000, 1, generator=g) * 3, torch.randn(2000, 1, generator=g)], 1)
    s = torch.linalg.svdvals(two - two.mean(0))
    p = s / s.sum()
    assert math.isclose(effective_rank(two), math.exp(-(p * p.log()).sum().item()), rel_tol=1e-5)


class Constant(nn.Module):
    """Every image to the same feature: perfectly aligned, not at all uniform."""

    out_dim, in_channels, image_size = 4, 1, 8

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.w.expand(len(x), 4) + 0 * x.mean()


def test_a_collapsed_encoder_is_aligned_but_not_uniform():
    x = np.random.default_rng(0).integers(0, 255, (300, 1, 8, 8), dtype=np.uint8)
    s = signals(Constant(), x)
    assert s["alignment"] < 1e-6 and s["uniformity"] > -1e-6 and s["effective_rank"] < 1.01


def test_best_of_reads_each_signal_in_its_direction():
    table = {"a": {"agreement": 0.2, "alignment": 0.1}, "b": {"agreement": 0.5, "alignment": 0.3}}
    assert best_of(table, "agreement")[0] == "b" and best_of(table, "alignment")[0] == "a"
