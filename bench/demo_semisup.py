"""Semi-supervised training's settings for the demo's time, on a validation split of MNIST.

    python bench/demo_semisup.py --checkpoint RUN --variants 'base={}' 'ratio2={"unlabeled_ratio": 2}' 'steps300={"steps": 300}'

RUN is a demo pretraining (`runs/demo/pretrain/simclr`). The labels come from the first 50,000 training images
(1, 10 and 100 per class, seed 0, with the evaluations' own 10-per-class validation); the scored set is the last
10,000 training images, so no test label is read. Each variant (SemisupConfig fields as JSON) trains from the
pretrained encoder and from random weights (the demo's baseline), and records its accuracy, best step and seconds.
Writes bench/results/demo-semisup-<device_tag>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, split, write  # noqa: E402

from selfsup import load_encoder  # noqa: E402
from selfsup.data import load  # noqa: E402
from selfsup.encoders import random_encoder  # noqa: E402
from selfsup.evaluate import SemisupConfig, few_label_rows  # noqa: E402

COUNTS = [1, 10, 100]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--variants", nargs="+", required=True, help="NAME=JSON of SemisupConfig fields")
    args = ap.parse_args()
    encoder = load_encoder(args.checkpoint)
    full = load("mnist", "train")
    train, held = split(full, 10_000)
    trials = []
    for variant in args.variants:
        name, fields = variant.split("=", 1)
        cfg = SemisupConfig(**json.loads(fields))
        for who in ("pretrained", "from-scratch"):
            enc = encoder if who == "pretrained" else (lambda s: random_encoder(encoder.spec, s, train.images))
            rows = few_label_rows(enc, train, held, COUNTS, who, ("semisup",), seeds=(0,), semisup=cfg)
            trial = {"variant": name, "config": cfg.to_dict(), "encoder": who, "labels_per_class": COUNTS,
                     "accuracy": [r["accuracy"] for r in rows], "best_step": [r["best_step"] for r in rows],
                     "seconds": [r["seconds"] for r in rows]}
            print(json.dumps({k: trial[k] for k in ("variant", "encoder", "accuracy", "seconds")}), flush=True)
            trials.append(trial)
    write(f"demo-semisup-{device_tag()}.json", {"machine": machine(), "checkpoint": args.checkpoint,
                                                "scored_on": "the last 10,000 MNIST training images", "trials": trials})


if __name__ == "__main__":
    main()
