"""Accuracy per CPU second of each backbone: the colour defaults' SimCLR for a fixed wall clock, then frozen
evaluations at 10 labels per class on a validation split of the training images (never the test split).

    python bench/backbones.py --backbones small_cnn:width=32,whiten_cnn:width=32 --minutes 8

Pretraining sees every training image without labels; the labeled images are drawn from the first 40,000 and
the last 10,000 are scored. A run folder that already holds a finished run is evaluated, not trained again.
Writes bench/results/backbones-<dataset><tag>-<device>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, split, write  # noqa: E402

from selfsup.data import load  # noqa: E402
from selfsup.defaults import for_channels  # noqa: E402
from selfsup.evaluate import few_label_rows  # noqa: E402
from selfsup.factory import encoder_and_config, encoder_spec, random_encoder  # noqa: E402
from selfsup.train import pretrain  # noqa: E402


def parse_backbone(text: str) -> tuple[str, dict]:
    name, _, args = text.partition(":")
    return name, {k: int(v) if v.isdigit() else v for k, v in (a.split("=") for a in args.split(";") if a)}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for e, n in sorted({(r["eval"], r["labels_per_class"]) for r in rows}):
        acc = [r["accuracy"] for r in rows if r["eval"] == e and r["labels_per_class"] == n]
        out[e if n == 10 else f"{e}@{n}"] = {"mean": round(float(np.mean(acc)), 4), "std": round(float(np.std(acc)), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--backbones", default="small_cnn:width=32,whiten_cnn:width=32")
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--runs", default="runs/bench-backbones", help="folder of the run folders")
    ap.add_argument("--evals", default="knn,linear,propagate")
    ap.add_argument("--seeds", type=int, default=3, help="label draws per encoder")
    ap.add_argument("--labels-per-class", default="10", help="comma-separated label counts")
    ap.add_argument("--val", type=int, default=10000)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a pretraining config field for every run (e.g. side_start=0.5); in the run's name")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    data = load(a.dataset, "train")
    labeled, val = split(data, a.val)
    evals, seeds = tuple(a.evals.split(",")), tuple(range(a.seeds))
    changes = {k: json.loads(v) if v[:1].isdigit() or v[:1] in "[{-" else v for k, v in (x.split("=", 1) for x in a.set)}
    results = []
    for text in a.backbones.split(","):
        name, args = parse_backbone(text)
        named = "-".join(f"{k}{v}" for k, v in (args | changes).items())
        out = Path(a.runs) / f"{a.dataset}-{name}-{named}-{a.minutes:g}min"
        cfg = for_channels(data.channels).override(dataset=a.dataset, backbone=name, backbone_args=args,
                                                   out=str(out), **changes).with_budget(minutes=a.minutes)
        if not (out / "summary.json").exists():
            pretrain(cfg, data, show_progress=False, overwrite=True)
        summary = json.loads((out / "summary.json").read_text())
        encoder, _ = encoder_and_config(out / "checkpoints" / "last.pt")
        counts = [int(n) for n in a.labels_per_class.split(",")]
        rows = few_label_rows(encoder, labeled, val, counts, text, evals, seeds)
        spec = encoder_spec(cfg, data.channels, data.images.shape[-1])
        fresh = lambda seed: random_encoder(spec, seed, data.images)  # noqa: E731
        random_rows = few_label_rows(fresh, labeled, val, counts, f"random {text}", ("knn", "linear"), seeds)
        result = {"backbone": name, "backbone_args": args, "changes": changes, "minutes": a.minutes, "steps": summary["steps"],
                  "img_per_s": summary["img_per_s"], "epochs": summary["epochs"], "precision": summary.get("precision"),
                  "val": summarise(rows), "random_init_val": summarise(random_rows), "rows": rows + random_rows}
        print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
        results.append(result)
    write(f"backbones-{a.dataset}{a.tag}-{device_tag()}.json",
          {"machine": machine(), "command": " ".join(sys.argv), "labels_per_class": counts, "val_images": a.val,
           "results": results})


if __name__ == "__main__":
    main()
