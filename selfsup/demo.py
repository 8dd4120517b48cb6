"""The main job: pretrain on MNIST, then compare against random-init features at few labels."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from . import checkpoint
from .backbones import BACKBONES
from .config import PretrainConfig, write_json
from .data import fetch, load
from .errors import DataError
from .evaluate import few_label_rows
from .methods import METHODS
from .report import format_table
from .train import pretrain


def run_demo(out: str | Path = "runs/demo", methods: tuple[str, ...] = ("simclr",), minutes: float = 5.0,
             labels_per_class: tuple[int, ...] = (1, 10, 100), dataset: str = "mnist", seed: int = 0,
             base: PretrainConfig | None = None, show_progress: bool = True) -> dict:
    """Random-init vs each method at each labels-per-class count (kNN and linear probe); writes OUT/results.json."""
    out = Path(out)
    for m in methods:
        METHODS.get(m)  # fail before any work on an unknown name
    base = (base or PretrainConfig()).override(dataset=dataset, minutes=minutes, seed=seed)
    base.validate()
    try:
        train, test = load(dataset, "train", base.data_root), load(dataset, "test", base.data_root)
    except DataError:
        if dataset != "mnist":
            raise
        fetch("mnist")
        train, test = load(dataset, "train", base.data_root), load(dataset, "test", base.data_root)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    random_encoder = BACKBONES.build(base.backbone, in_channels=train.channels, **base.backbone_args)
    rows = few_label_rows(random_encoder, train, test, list(labels_per_class), "random-init", seeds=(seed,))
    seconds, configs = {}, {}
    for m in methods:
        cfg = base.override(method=m, out=str(out / m))
        print(f"pretraining {m} on {dataset} for {minutes:g} min", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        path = pretrain(cfg, train, show_progress)
        seconds[m] = round(time.perf_counter() - t0, 1)
        encoder, configs[m] = checkpoint.load_encoder(path)
        rows += few_label_rows(encoder, train, test, list(labels_per_class), m, seeds=(seed,))
    results = {"dataset": dataset, "rows": rows,
               "pretrain_seconds": round(sum(seconds.values()), 1), "pretrain_seconds_per_method": seconds,
               "config": {m: c.to_dict() for m, c in configs.items()} if len(methods) > 1 else configs[methods[0]].to_dict()}
    write_json(out / "results.json", results)
    print(format_table(rows))
    print(f"results: {out / 'results.json'}")
    return results
