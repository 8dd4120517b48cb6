"""Every method for the same minutes of pretraining: kNN and linear probe at 10 labels per class, img/s, and the
collapse monitor's last reading, beside random weights of the same architecture.

    python bench/methods.py --dataset mnist --minutes 5                    # every method, on the test split
    python bench/methods.py --dataset cifar10 --methods dino mae --eval val --minutes 1 --set dino.head_bn=true

--eval val scores on 5,000 labeled training images held out of the labeled pool (pretraining still sees every
training image, without labels): settings are chosen there, never on the test split. Needs the datasets
(SELFSUP_DATA, or `selfsup data fetch`). Writes bench/results/methods-<dataset>-<eval>[-name].json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean, stdev

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))
from common import machine, write  # noqa: E402

from selfsup import defaults  # noqa: E402
from selfsup.config import PretrainConfig  # noqa: E402
from selfsup.data import load  # noqa: E402
from selfsup.evaluate import few_label_rows  # noqa: E402
from selfsup.factory import encoder_spec, encoder_and_config, random_encoder  # noqa: E402
from selfsup.methods import METHODS  # noqa: E402
from selfsup.train import pretrain  # noqa: E402

# Each method's settings for this budget on top of the dataset's recipe (selfsup.defaults): chosen on --eval val.
VIT = {"backbone": "vit_tiny", "backbone_args": {"depth": 6}}
SETTINGS: dict[str, dict] = {
    "dino": {"lr": 1e-3},  # MNIST validation, 1 minute: at the recipe's 4e-3 the embeddings collapsed at step 9
    "mae": VIT | {"lr": 5e-4},  # a transformer: a lower rate than the CNN recipes (the paper: 1.5e-4 at batch 256)
}


def config(method: str, channels: int, minutes: float, out: str, changes: dict) -> PretrainConfig:
    base = defaults.for_channels(channels).to_dict()
    args = base["method_args"] if method == base["method"] else {}  # the recipe's own method keeps its arguments
    base |= {"method": method, "method_args": args, "minutes": minutes, "steps": None, "out": out, "monitor_seconds": 0}
    base |= SETTINGS.get(method, {})
    for key, value in changes.items():  # m.arg=value (a method argument) or field=value
        if key.startswith("m."):
            base["method_args"] = {**base.get("method_args", {}), key[2:]: value}
        else:
            base[key] = value
    return PretrainConfig.from_dict(base)


def parse_set(items: list[str]) -> dict[str, dict]:
    """['dino.head_bn=true', 'mae:lr=0.001'] -> {'dino': {'head_bn'...}}: method.arg or method:field."""
    out: dict[str, dict] = {}
    for item in items:
        key, value = item.split("=", 1)
        method, _, rest = key.partition(":") if ":" in key else key.partition(".")
        name = rest if ":" in key else f"arg.{rest}"
        out.setdefault(method, {})[name] = json.loads(value)
    return out


def scores(rows: list[dict]) -> dict:
    out = {}
    for ev in ("knn", "linear"):
        acc = [r["accuracy"] for r in rows if r["eval"] == ev]
        out[ev] = {"mean": round(mean(acc), 4), "std": round(stdev(acc), 4) if len(acc) > 1 else 0.0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--methods", nargs="*", default=None, help="default: every registered method")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--eval", choices=["test", "val"], default="test")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--set", nargs="*", default=[], help="method.arg=JSON or method:field=JSON")
    ap.add_argument("--name", default="")
    args = ap.parse_args()

    train, test = load(args.dataset, "train"), load(args.dataset, "test")
    if args.eval == "val":  # the last 5,000 training images, held out of the labeled pool
        order = np.random.default_rng(0).permutation(len(train))
        pool, test = train.subset(np.sort(order[5000:])), train.subset(np.sort(order[:5000]))
    else:
        pool = train
    changes = parse_set(args.set)
    seeds = tuple(range(args.seeds))
    results = {"machine": machine(), "dataset": args.dataset, "minutes": args.minutes, "eval": args.eval,
               "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv), "methods": {}}
    name = f"methods-{args.dataset}-{args.eval}" + (f"-{args.name}" if args.name else "")
    randoms: dict[str, dict] = {}
    for method in args.methods or METHODS.names():
        mine = {k.removeprefix("arg."): v for k, v in changes.get(method, {}).items() if k.startswith("arg.")}
        fields = {k: v for k, v in changes.get(method, {}).items() if not k.startswith("arg.")}
        cfg = config(method, train.channels, args.minutes, tempfile.mkdtemp(prefix="selfsup-bench-"),
                     fields | {f"m.{k}": v for k, v in mine.items()})
        t0 = time.perf_counter()
        path = pretrain(cfg, train, show_progress=False)
        encoder, _ = encoder_and_config(path)
        import torch

        state = torch.load(path, weights_only=False)
        history, summary = state["run"]["history"], state["summary"]
        last = next((h for h in reversed(history) if "embed_std_ratio" in h), {})
        trained = scores(few_label_rows(encoder, pool, test, [10], method, ("knn", "linear"), seeds=seeds))
        spec = encoder_spec(cfg, train.channels, train.size[0])
        key = json.dumps(spec.to_dict(), sort_keys=True)
        if key not in randoms:  # random weights of each architecture, scored once
            randoms[key] = scores(few_label_rows(lambda s: random_encoder(spec, s, pool.images), pool, test, [10], "random",
                                                 ("knn", "linear"), seeds=seeds))
        random = randoms[key]
        results["methods"][method] = {
            "config": cfg.to_dict(), "steps": summary.get("steps", state["budget"]["step"]),
            "img_per_s": summary.get("img_per_s"), "seconds": round(time.perf_counter() - t0, 1),
            "embed_std_ratio": last.get("embed_std_ratio"), "effective_rank": last.get("effective_rank"),
            "trained": trained, "random": random}
        print(f"{method:13s} knn {trained['knn']['mean']:.3f} linear {trained['linear']['mean']:.3f} | random "
              f"{random['knn']['mean']:.3f} {random['linear']['mean']:.3f} | {summary.get('img_per_s')} img/s "
              f"std ratio {last.get('embed_std_ratio', float('nan')):.3f}", flush=True)
        write(name + ".json", results)


if __name__ == "__main__":
    main()
