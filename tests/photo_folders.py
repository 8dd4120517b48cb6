"""Small folders of photographs for the tests: patches of scikit-learn's two bundled sample photos, and the copies
a real folder has (exact, re-encoded, resized, cropped, colour-shifted)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance


def patches(n: int, side: int = 160, seed: int = 0) -> list[Image.Image]:
    """n distinct photographs: square crops of the sample photos at spread-out places and scales."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]  # 427 x 640 each
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        im = photos[i % 2]
        c = int(rng.integers(110, 200))
        x, y = int(rng.integers(0, im.width - c)), int(rng.integers(0, im.height - c))
        out.append(im.crop((x, y, x + c, y + c)).resize((side, side), Image.BICUBIC))
    return out


def copies(im: Image.Image) -> dict[str, Image.Image | None]:
    """The near-copies of one photo a merged camera dump has; "exact" is a byte copy (None here)."""
    w, h = im.size
    return {"exact": None, "reencoded": im, "resized": im.resize((w * 2 // 3, h * 2 // 3), Image.BILINEAR),
            "cropped": im.crop((w // 20, h // 20, w - w // 20, h - h // 20)),
            "colour": ImageEnhance.Brightness(ImageEnhance.Color(im).enhance(1.4)).enhance(1.15)}


def write_with_copies(folder: Path, n: int = 24, side: int = 160) -> dict[str, str]:
    """A flat folder of n photos (JPEG) plus one planted copy of each kind: {copy file: original file}."""
    folder.mkdir(parents=True, exist_ok=True)
    ims = patches(n, side)
    for i, im in enumerate(ims):
        im.save(folder / f"p{i:03d}.jpg", quality=92)
    planted = {}
    for j, kind in enumerate(("exact", "reencoded", "resized", "cropped", "colour")):
        src, dst = folder / f"p{j:03d}.jpg", folder / f"z_{kind}.jpg"
        if kind == "exact":
            dst.write_bytes(src.read_bytes())
        else:
            copies(ims[j])[kind].save(dst, quality=60 if kind == "reencoded" else 90)
        planted[dst.name] = src.name
    return planted
