"""Gaussian blur of a batch, one sigma per image: two depthwise convolutions (selfsup.augment.gaussian_blur)
against the weighted sum of k shifted copies it replaced.

    python bench/blur.py

Writes bench/results/blur-<device_tag>.json: milliseconds per batch for each shape, both ways (the fastest
average over 1-second windows, after a warm-up), and the largest difference between their outputs.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402

from selfsup.augment import gaussian_blur  # noqa: E402

SHAPES = [(256, 1, 28, 28), (256, 3, 32, 32), (256, 3, 64, 64), (128, 3, 96, 96), (64, 3, 224, 224)]


def shifted_copies(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The earlier blur: per-image kernels applied as a weighted sum of k shifted copies, rows then columns."""
    b, c, h, w = x.shape
    k = max(3, int(0.1 * min(h, w)) | 1)
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    kern = (kern / kern.sum(1, keepdim=True)).view(b, 1, 1, 1, k)
    p = k // 2
    xp = F.pad(x, (p, p, 0, 0), mode="reflect")
    x = sum(kern[..., j] * xp[..., j:j + w] for j in range(k))
    xp = F.pad(x, (0, 0, p, p), mode="reflect")
    return sum(kern[..., j] * xp[:, :, j:j + h] for j in range(k))


def ms(f, *args) -> float:
    f(*args)
    best = float("inf")
    for _ in range(3):
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < 1.0:
            f(*args)
            n += 1
        best = min(best, (time.perf_counter() - t) / n * 1000)
    return round(best, 2)


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for shape in SHAPES:
        x = torch.rand(*shape, device=device)
        sigma = torch.rand(shape[0], device=device) * 1.5 + 0.5
        diff = float((shifted_copies(x, sigma) - gaussian_blur(x, sigma)).abs().max())
        row = {"shape": list(shape), "shifted_copies_ms": ms(shifted_copies, x, sigma),
               "depthwise_conv_ms": ms(gaussian_blur, x, sigma), "max_abs_difference": diff}
        row["speedup"] = round(row["shifted_copies_ms"] / row["depthwise_conv_ms"], 2)
        rows.append(row)
        print(row, flush=True)
    write(f"blur-{device_tag()}.json", {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows})


if __name__ == "__main__":
    main()
