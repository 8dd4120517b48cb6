"""What turning photos upright costs: decoding phone-sized JPEGs with and without an EXIF orientation tag.

    python bench/exif.py --n 200

Writes N JPEGs of 1,500 x 2,000 px (a CIFAR-10-like pattern upscaled, quality 90) twice, without EXIF and with
an orientation tag (6: a portrait photo stored as landscape rows), then times `selfsup.data.folder.decode` to the
kept 96 px side over each set, in this process (one core). Writes bench/results/exif-<device_tag>.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402

from selfsup.data import folder as fol  # noqa: E402


def write_photos(folder: Path, n: int, turn: int | None) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (32, 24, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((1500, 2000) if turn is None else (2000, 1500), Image.BICUBIC)
        exif = Image.Exif()
        if turn is not None:
            exif[0x0112] = turn
        paths.append(folder / f"{i}.jpg")
        im.save(paths[-1], quality=90, **({"exif": exif} if turn is not None else {}))
    return paths


def timed(paths: list[Path], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for p in paths:
            fol.decode(p, 96, True)
        best = min(best, time.perf_counter() - t)
    return best / len(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain = write_photos(Path(tmp) / "plain", args.n, None)
        tagged = write_photos(Path(tmp) / "tagged", args.n, 6)
        rows = {"no EXIF block": timed(plain, args.rounds), "EXIF orientation 6": timed(tagged, args.rounds)}
    for k, v in rows.items():
        print(f"{k}: {v * 1000:.2f} ms per photo")
    write(f"exif-{device_tag()}.json", {"machine": machine(), "photos": args.n, "side": "1500 x 2000, kept at 96 px",
                                        "ms_per_photo": {k: round(v * 1000, 3) for k, v in rows.items()}})


if __name__ == "__main__":
    main()
