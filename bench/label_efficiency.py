"""Time to accuracy on MNIST at 10 labels per class, within a wall-clock budget (issue: label efficiency).

    python bench/label_efficiency.py --minutes 8 --every 1 --seeds 1 --name simclr-default
    python bench/label_efficiency.py --minutes 8 --set backbone_args='{width: 64}' --name simclr-w64

Pretrains once per seed with a checkpoint every `--every` minutes (all kept), then scores each checkpoint:
kNN and linear probe at 10 labels per class (validation split held out, as everywhere), fine-tuning at the
last one. Elapsed time = pretraining seconds at the checkpoint + that evaluation's own seconds.
Writes bench/results/label-efficiency-cpu-NAME.json (or -cuda-).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

from common import machine, write  # noqa: E402
from selfsup import checkpoint  # noqa: E402
from selfsup.compare import load_splits  # noqa: E402
from selfsup.config import PretrainConfig  # noqa: E402
from selfsup.evaluate import aggregate, few_label_rows  # noqa: E402
from selfsup.train import pretrain  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=8.0, help="pretraining minutes (the rest of 10 is evaluation)")
    p.add_argument("--every", type=float, default=1.0, help="minutes between scored checkpoints")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=YAML", help="PretrainConfig override")
    p.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--name", default="default")
    args = p.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    train, test = load_splits("mnist", None)
    runs = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = PretrainConfig(dataset="mnist", minutes=args.minutes, seed=seed, out=tmp, checkpoint_minutes=args.every,
                                 keep_checkpoints=1000, monitor_seconds=0).override(**overrides)
            pretrain(cfg, train, show_progress=True)
            points = []
            for path in reversed(checkpoint.candidates(tmp)):
                state = checkpoint.load(path)
                encoder, _ = checkpoint.encoder_from(state)
                last = path.name == "last.pt"
                evals = ("knn", "linear", "finetune") if last and args.finetune else ("knn", "linear")
                t0 = time.perf_counter()
                rows = few_label_rows(encoder, train, test, [10], cfg.method, evals=evals, seeds=(seed,))
                point = {"step": state["step"], "pretrain_seconds": round(state["seconds"], 1),
                         "eval_seconds": round(time.perf_counter() - t0, 1)}
                point["elapsed_minutes"] = round((point["pretrain_seconds"] + point["eval_seconds"]) / 60, 2)
                point |= {r["eval"]: r["accuracy"] for r in rows}
                point |= {f"{r['eval']}_val": r["val_accuracy"] for r in rows if "val_accuracy" in r}
                print(point, flush=True)
                points.append(point)
            runs.append({"seed": seed, "config": cfg.to_dict() | {"out": None}, "points": points,
                         "summary": state["summary"]})  # the last checkpoint scored is last.pt
    final = aggregate([{"method": args.name, "eval": k, "labels_per_class": 10, "seed": r["seed"],
                        "accuracy": r["points"][-1][k]} for r in runs for k in ("knn", "linear", "finetune")
                       if k in r["points"][-1]])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    write(f"label-efficiency-{device}-{args.name}.json",
          {"command": " ".join(sys.argv), "machine": machine(), "minutes": args.minutes, "final": final, "runs": runs})


if __name__ == "__main__":
    main()
