"""Pretraining img/s of the colour recipe on 96x96 images (STL-10's size) at the native size and at a reduced
`--image-size`: what a CPU user pays for each side.

    python bench/image_size.py --sizes 96,64,48,32 --steps 20

The images are random 96x96 colour pixels (speed does not depend on content; STL-10 itself cannot be had on the
machines this was written on). Writes bench/results/image-size-<device_tag>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402
from throughput import selfsup_path  # noqa: E402

from selfsup.data import ImageSet  # noqa: E402
from selfsup.defaults import COLOUR  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="96,64,48,32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--backbone-width", type=int, default=32)
    args = p.parse_args()
    x = np.random.default_rng(0).integers(0, 256, (4096, 3, 96, 96), dtype=np.uint8)
    data = ImageSet("random96", x, np.full(len(x), -1, np.int64))
    rows = []
    for side in map(int, args.sizes.split(",")):
        cfg = COLOUR.override(dataset="random96", image_size=side, monitor_seconds=0,
                              backbone_args={"width": args.backbone_width})
        r = selfsup_path(cfg, data, args.warmup, args.steps)
        rows.append({"image_size": side, "backbone": cfg.backbone, "width": args.backbone_width} | r)
        print(rows[-1], flush=True)
    write(f"image-size-{device_tag()}.json", {"command": "python " + " ".join(sys.argv), "machine": machine(),
                                               "input_side": 96, "rows": rows})


if __name__ == "__main__":
    main()
