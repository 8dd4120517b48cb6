"""Frozen-feature extraction on a CPU: the batch size and the layout of the encoder's weights.

    python bench/extract.py --checkpoint RUN [--dataset mnist] [--images 60000] [--repeats 2] [--batches 128,256,512,1024]

Times `extract_features` over the first N training images of the dataset with the run's encoder: the weights as
a checkpoint loads them (NCHW) or channels-last (as extraction now makes them), at batches of 128 to 1,024 images.
Each setting runs `--repeats` times, alternating, and keeps its fastest. Writes
bench/results/extract-<dataset>-<device_tag>.json.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402

from selfsup import load_encoder  # noqa: E402
from selfsup.data import load  # noqa: E402
from selfsup.evaluate import extract_features  # noqa: E402
from selfsup.evaluate.features import prepare  # noqa: E402


@torch.no_grad()
def run(encoder, images, batch: int, layout: str) -> float:
    """Seconds for one pass; `nchw` keeps the weights as loaded (the extraction before it made them channels-last)."""
    enc = copy.deepcopy(encoder).eval()
    t0 = time.perf_counter()
    if layout == "channels_last":
        extract_features(enc, images, batch_size=batch)
    else:
        for i in range(0, len(images), batch):
            enc(prepare(torch.from_numpy(images[i:i + batch]), enc))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--images", type=int, default=60_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batches", default="128,256,512,1024")
    args = ap.parse_args()
    encoder = load_encoder(args.checkpoint)
    images = load(args.dataset, "train").images[:args.images]
    settings = [(layout, batch) for layout in ("nchw", "channels_last") for batch in map(int, args.batches.split(","))]
    best = {s: float("inf") for s in settings}
    for _ in range(args.repeats):
        for s in settings:
            best[s] = min(best[s], run(encoder, images, s[1], s[0]))
    rows = [{"weights": layout, "batch": batch, "seconds": round(best[(layout, batch)], 2),
             "images_per_second": round(len(images) / best[(layout, batch)])} for layout, batch in settings]
    for r in rows:
        print(r, flush=True)
    write(f"extract-{args.dataset}-{device_tag()}.json", {"machine": machine(), "checkpoint": args.checkpoint,
                                                          "images": len(images), "rows": rows})


if __name__ == "__main__":
    main()
