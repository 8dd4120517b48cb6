"""Label-free signals against labeled accuracy: how well each signal ranks checkpoints and methods.

    python bench/signals.py --dataset mnist --methods simclr,byol,barlowtwins,vicreg,mocov2 --minutes 1
    python bench/signals.py --dataset cifar10 --methods simclr,byol,barlowtwins,vicreg,mocov2 --minutes 1.5

Each method pretrains for the same minutes on the training split, keeping a checkpoint every `--every` steps.
Every checkpoint, and a random-init encoder, is scored by the label-free signals (selfsup.signals) on the
training images, and by kNN and the linear probe at 10 labels per class on the test split (first seed). The
table gives Spearman's rank correlation of each signal (signed so that higher is better) with each accuracy,
over all encoders together and within each method's checkpoints. Writes
bench/results/signals-<dataset>-<device_tag>.json.
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

from selfsup import checkpoint  # noqa: E402
from selfsup.data import load  # noqa: E402
from selfsup.defaults import for_channels  # noqa: E402
from selfsup.evaluate import few_label_rows  # noqa: E402
from selfsup.factory import encoder_spec, method_from, random_encoder  # noqa: E402
from selfsup.signals import HIGHER_IS_BETTER, signals  # noqa: E402
from selfsup.train import pretrain  # noqa: E402


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 2 else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--methods", default="simclr,byol,barlowtwins,vicreg,mocov2")
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--every", type=int, default=60, help="checkpoint every this many steps")
    args = p.parse_args()
    train, test = load(args.dataset, "train"), load(args.dataset, "test")
    base = for_channels(train.channels)
    encoders = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.methods.split(","):
            cfg = base.override(dataset=args.dataset, method=m, method_args=base.method_args if m == base.method else {},
                                minutes=args.minutes, checkpoint_steps=args.every, keep_checkpoints=50,
                                monitor_seconds=0, out=f"{tmp}/{m}")
            pretrain(cfg, train, show_progress=False)
            for ck in sorted(Path(cfg.out, "checkpoints").glob("*.pt")):
                state = checkpoint.load(ck)
                encoders.append((m, int(state["budget"]["step"]), method_from(state)[0].backbone))
        spec = encoder_spec(base.override(dataset=args.dataset), train.channels, train.side)
        encoders.append(("random-init", 0, random_encoder(spec, 0, train.images)))
        rows = []
        for m, step, enc in encoders:
            t0 = time.perf_counter()
            row = {"method": m, "step": step} | signals(enc, train.images)
            row["signal_seconds"] = round(time.perf_counter() - t0, 1)
            for r in few_label_rows(enc, train, test, [10], m, ("knn", "linear"), (0,)):
                row[r["eval"]] = r["accuracy"]
            rows.append(row)
            print(row, flush=True)
    names = list(HIGHER_IS_BETTER)
    table = {}
    for s in names:
        sign = 1 if HIGHER_IS_BETTER[s] else -1
        vals = [sign * r[s] for r in rows]
        table[s] = {acc: round(spearman(vals, [r[acc] for r in rows]), 3) for acc in ("knn", "linear")}
        within = [spearman([sign * r[s] for r in rows if r["method"] == m], [r["knn"] for r in rows if r["method"] == m])
                  for m in args.methods.split(",")]
        table[s]["knn_within_methods"] = round(float(np.nanmean(within)), 3)
    print("signal          all: knn  linear   within a method: knn")
    for s, v in table.items():
        print(f"{s:15s} {v['knn']:8.3f} {v['linear']:7.3f} {v['knn_within_methods']:10.3f}")
    write(f"signals-{args.dataset}-{device_tag()}.json",
          {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "dataset": args.dataset,
           "methods": args.methods.split(","), "minutes": args.minutes, "rows": rows, "spearman": table})


if __name__ == "__main__":
    main()
