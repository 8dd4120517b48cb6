"""Augmentation img/s: selfsup's batched ops vs kornia's, same recipes, same batches, one run.

Writes bench/results/augment-<device>.json. Needs kornia (in the test extra).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402

from selfsup.augment import augment, preset  # noqa: E402


def kornia_pipeline(name: str, side: int, channels: int):
    import kornia.augmentation as K

    a = preset(name, channels)
    k = max(3, int(0.1 * side) | 1)
    ops = [K.RandomResizedCrop((side, side), scale=a.crop_scale, ratio=a.crop_ratio)]
    if a.flip_p:
        ops.append(K.RandomHorizontalFlip(p=a.flip_p))
    if a.rotate:
        ops.append(K.RandomRotation(a.rotate, p=1.0))
    ops.append(K.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue, p=a.jitter_p))
    if a.grey_p and channels == 3:
        ops.append(K.RandomGrayscale(p=a.grey_p))
    ops.append(K.RandomGaussianBlur((k, k), (a.blur_sigma[0] * side / 224, a.blur_sigma[1] * side / 224), p=a.blur_p))
    return torch.nn.Sequential(*ops)


def rate(fn, x, seconds=3.0) -> float:
    fn(x)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(x)
        n += 1
    return n * len(x) / (time.perf_counter() - t0)


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name, channels, side, batch in [("simclr", 3, 32, 256), ("greyscale", 1, 28, 512), ("simclr", 3, 96, 128)]:
        x = torch.randint(0, 256, (batch, channels, side, side), dtype=torch.uint8, device=device)
        a, g = preset(name, channels), torch.Generator(device).manual_seed(0)
        ours = rate(lambda b: augment(b, a, g), x)
        kp = kornia_pipeline(name, side, channels).to(device)
        theirs = rate(lambda b: kp(b.float() / 255), x)
        row = {"preset": name, "shape": [batch, channels, side, side], "selfsup_img_per_s": round(ours),
               "kornia_img_per_s": round(theirs), "ratio": round(ours / theirs, 2)}
        print(row, flush=True)
        rows.append(row)
    import kornia

    write(f"augment-{device}.json", {"machine": machine(), "kornia": kornia.__version__, "rows": rows,
                                     "command": "python bench/augment.py"})


if __name__ == "__main__":
    main()
