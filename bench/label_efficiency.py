"""Time to accuracy at 10 labels per class (MNIST by default), within a wall-clock budget.

    python bench/label_efficiency.py --minutes 9 --every 1 --seeds 3 --name simclr-demo
    python bench/label_efficiency.py --minutes 4 --every 5 --no-finetune --set lr=0.002 --name x-lr2e-3
    SELFSUP_DATA=DIR python bench/label_efficiency.py --dataset cifar10 --base colour --minutes 8 --every 2 --name c10

Starts from the demo's configuration (`--base colour`: the colour-image recipe; `--base library`: PretrainConfig's
defaults), changed by `--set`.
Pretrains once per seed with a checkpoint every `--every` minutes (all kept), then scores each checkpoint
with the 10 labels per class that seed draws. Choices are made on a labeled validation split carved from
the training images (`--val-per-class`, 500 by default: 5,000 images, never among the labels); the test
split is scored alongside, once per configuration, and is not used to choose anything.

Each checkpoint gets kNN (k in K_GRID), the linear probe (weight decay in WD_GRID), both also on features
centred by the unlabeled mean, and label propagation over every training image outside the validation
split (graph k in GRAPH_GRID); `knn`, `linear` and `propagate` are the settings with the best validation accuracy.
The last checkpoint is also fine-tuned (LP-FT) and trained semi-supervised, each keeping its best weights on the
same validation split; `--scratch` runs the same two from random weights with the same budgets.
Elapsed time = pretraining seconds at the checkpoint + that evaluation's own seconds (`finetune_minutes`,
`semisup_minutes`); `pipeline_minutes` = pretraining + every evaluation of the pretrained encoder.

    python bench/label_efficiency.py --minutes 4 --every 4 --seeds 3 --name semisup-demo
Writes bench/results/label-efficiency-<device>-NAME.json.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

from common import machine, write  # noqa: E402
from selfsup import checkpoint, evaluate  # noqa: E402
from selfsup.factory import encoder_from, encoder_spec, random_encoder  # noqa: E402
from selfsup.compare import SCRATCH, load_splits  # noqa: E402
from selfsup.config import PretrainConfig  # noqa: E402
from selfsup.defaults import COLOUR  # noqa: E402
from selfsup.demo import DEMO_PRETRAIN  # noqa: E402
from selfsup.evaluate import (SemisupConfig, aggregate, class_count, extract_features, few_label_rows, knn_accuracy, label_subset,  # noqa: E402
                              unlabeled_pool, validation_split)
from selfsup.evaluate.linear import fit_linear, predict_linear  # noqa: E402
from selfsup.evaluate.propagate import LabelGraph, vote  # noqa: E402
from selfsup.evaluate.semisup import NeighbourVote  # noqa: E402
from selfsup.train import pretrain  # noqa: E402

K_GRID = (1, 5, 10, 20)
WD_GRID = (1e-5, 1e-4, 1e-3, 1e-2)
LABELS = 10
GRAPH_GRID = (3, 5, 10)


def probe_accuracy(probe: tuple, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict_linear(probe, x) == y).float().mean().item()


def frozen_scores(encoder, train, test, idx, val_idx, classes: int = 10) -> dict:
    """Validation and test accuracy of every kNN and linear-probe setting; `knn`/`linear` = best on validation.

    Features as they are, and centred on the mean feature of the unlabeled pool ("-c"): every training image
    outside the validation split and the labeled subset.
    """
    f, vf, tf = (extract_features(encoder, x) for x in (train.images[idx], train.images[val_idx], test.images))
    y, vy, ty = (torch.from_numpy(a) for a in (train.labels[idx], train.labels[val_idx], test.labels))
    pool = extract_features(encoder, train.images[unlabeled_pool(len(train), exclude=np.union1d(val_idx, idx))])
    mean = pool.mean(0)  # unlabeled: the pool's labels are never read
    grid = {}
    for tag, c in (("", 0), ("-c", mean)):
        for k in K_GRID:
            grid[f"knn_k{k}{tag}"] = (knn_accuracy(f - c, y, vf - c, vy, k=k), knn_accuracy(f - c, y, tf - c, ty, k=k))
        for wd in WD_GRID:
            probe = fit_linear(f - c, y, classes, wd)
            grid[f"linear_wd{wd:g}{tag}"] = (probe_accuracy(probe, vf - c, vy), probe_accuracy(probe, tf - c, ty))
    for k, graph in LabelGraph.for_each_k(torch.cat([f, pool]), GRAPH_GRID).items():
        scores = graph.spread(torch.arange(len(y)), y, classes)  # one spread for both splits
        grid[f"propagate_k{k}"] = tuple((vote(graph.nodes, scores, q) == qy).float().mean().item()
                                        for q, qy in ((vf, vy), (tf, ty)))
    out = {"grid": {name: {"val": round(v, 4), "test": round(t, 4)} for name, (v, t) in grid.items()}}
    for family in ("knn", "linear", "propagate"):
        name = max((n for n in grid if n.startswith(family)), key=lambda n: grid[n][0])  # first best on validation
        out |= {family: round(grid[name][1], 4), f"{family}_val": round(grid[name][0], 4), f"{family}_setting": name}
    return out


def trained_scores(encoder, train, test, args, seed: int, name: str, pretrain_seconds: float,
                   overrides: dict | None = None) -> dict:
    """Fine-tuning (LP-FT) and semi-supervised training, each best on the validation split, test scored once;
    with each one's own seconds and the minutes to its accuracy counting pretraining."""
    out = {}
    for e in ("finetune", "semisup"):
        if not getattr(args, e):
            continue
        t0, alone = time.perf_counter(), {}
        with test_also_alone(len(test.images), alone):
            row, = few_label_rows(encoder, train, test, [args.labels], name, evals=(e,), seeds=(seed,),
                                  val_per_class=args.val_per_class, semisup=SemisupConfig(steps=args.semisup_steps),
                                  **(overrides or {}))
        seconds = time.perf_counter() - t0 - alone.get("seconds", 0)
        out |= {e: row["accuracy"], f"{e}_val": row["val_accuracy"], f"{e}_seconds": round(seconds, 1),
                f"{e}_minutes": round((pretrain_seconds + seconds) / 60, 2)}
        out |= {f"{e}_unshifted": alone["accuracy"]} if "accuracy" in alone else {}
        out |= {f"{e}_classifier": alone["classifier"]} if "classifier" in alone else {}
    return out


@contextlib.contextmanager
def test_also_alone(n_test: int, alone: dict):
    """While inside, the evaluations' scoring of the n_test test images also records (in `alone`) the accuracy of
    the images alone, without their one-pixel shifts, and for semisup's `NeighbourVote` that of the classifier
    without its neighbours' vote (`classifier`; the same weights: paired comparisons of the scorings), and the
    seconds that extra scoring took, which are not the evaluation's."""
    scored = evaluate.correct

    def both(model, x, y, *a, **k):
        if len(x) == n_test:
            t0 = time.perf_counter()
            alone["accuracy"] = round(scored(model, x, y, *a, **(k | {"shift": False})).float().mean().item(), 4)
            if isinstance(model, NeighbourVote):
                alone["classifier"] = round(scored(model.model, x, y, *a, **k).float().mean().item(), 4)
            alone["seconds"] = time.perf_counter() - t0
        return scored(model, x, y, *a, **k)
    evaluate.correct = both
    try:
        yield
    finally:
        evaluate.correct = scored


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=9.0, help="pretraining minutes (the rest of 10 is evaluation)")
    p.add_argument("--every", type=float, default=1.0, help="minutes between scored checkpoints")
    p.add_argument("--steps", type=int, help="a step budget instead of --minutes (a fixed wall clock turned into "
                   "steps at the img/s measured alone, so that other work on the machine cannot change the result); "
                   "--every then counts steps")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (pretraining and label draw)")
    p.add_argument("--dataset", default="mnist", help="dataset name or folder:PATH")
    p.add_argument("--base", choices=("demo", "colour", "library"), default="demo",
                   help="start from the demo's configuration (selfsup.demo.DEMO_PRETRAIN) or PretrainConfig's defaults")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=YAML", help="PretrainConfig override")
    p.add_argument("--val-per-class", type=int, default=500, help="labeled validation images per class")
    p.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--semisup", action=argparse.BooleanOptionalAction, default=True,
                   help="semi-supervised training of the last checkpoint (selfsup.evaluate.semisup)")
    p.add_argument("--scratch", action=argparse.BooleanOptionalAction, default=True,
                   help="the same fine-tuning and semi-supervised training from random init, per seed")
    p.add_argument("--labels", type=int, default=LABELS, help="labels per class")
    p.add_argument("--semisup-steps", type=int, default=SemisupConfig.steps, help="semi-supervised step budget")
    p.add_argument("--name", default="default")
    p.add_argument("--keep", metavar="DIR", help="keep the runs and checkpoints in DIR/seedN (default: a temp dir)")
    p.add_argument("--reuse", action="store_true",
                   help="score the finished runs already in --keep DIR instead of pretraining again (the evaluation "
                        "changed, or scoring was interrupted); the pretraining config is read from the checkpoints")
    args = p.parse_args()
    if args.reuse and not args.keep:
        p.error("--reuse needs --keep DIR: the runs to score")
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    train, test = load_splits(args.dataset, None)
    classes = class_count(train.labels)
    val_idx = validation_split(train.labels, args.val_per_class)
    runs = []
    for seed in range(args.seeds):
        idx = label_subset(train.labels, args.labels, seed, val_idx)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = f"{args.keep}/seed{seed}" if args.keep else tmp
            base = {"demo": DEMO_PRETRAIN, "colour": COLOUR, "library": PretrainConfig()}[args.base]
            cfg = base.override(dataset=args.dataset, seed=seed, out=tmp, keep_checkpoints=1000, monitor_seconds=0)
            if args.steps:
                cfg = cfg.with_budget(steps=args.steps).override(checkpoint_steps=int(args.every),
                                                                 checkpoint_minutes=1e6)
            else:
                cfg = cfg.with_budget(minutes=args.minutes).override(checkpoint_minutes=args.every)
            cfg = cfg.override(**overrides)
            if args.reuse and (Path(tmp) / "summary.json").exists():
                print(f"scoring the finished run in {tmp}", flush=True)
            else:
                pretrain(cfg, train, show_progress=True)
            points = []
            for path in reversed(checkpoint.candidates(tmp)):
                state = checkpoint.load(path)
                encoder, _ = encoder_from(state)
                t0 = time.perf_counter()
                point = {"step": state["budget"]["step"], "pretrain_seconds": round(state["budget"]["seconds"], 1)}
                point |= frozen_scores(encoder, train, test, idx, val_idx, classes)
                point["eval_seconds"] = round(time.perf_counter() - t0, 1)
                if path.name == "last.pt":  # trained evaluations: each timed on its own, beside the frozen ones
                    point |= trained_scores(encoder, train, test, args, seed, cfg.method, point["pretrain_seconds"])
                    if args.scratch:
                        fresh = lambda s: random_encoder(encoder_spec(cfg, train.channels, train.size[0]), s, train.images)  # noqa: E731
                        point |= {f"scratch_{k}": v for k, v in
                                  trained_scores(fresh, train, test, args, seed, "supervised", 0.0, SCRATCH).items()}
                    own = sum(point.get(f"{e}_seconds", 0) for e in ("finetune", "semisup"))  # from scratch aside
                    point["pipeline_minutes"] = round((point["pretrain_seconds"] + point["eval_seconds"] + own) / 60, 2)
                point["elapsed_minutes"] = round((point["pretrain_seconds"] + point["eval_seconds"]) / 60, 2)
                print({k: v for k, v in point.items() if k != "grid"}, flush=True)
                points.append(point)
            runs.append({"seed": seed, "config": state["config"] | {"out": None}, "points": points,
                         "summary": state["summary"]})  # the last checkpoint scored is last.pt
    evals = [k for k in ("knn", "linear", "propagate", "finetune", "semisup", "scratch_finetune", "scratch_semisup")
             if k in runs[0]["points"][-1]]
    final = aggregate([{"method": args.name, "eval": k, "labels_per_class": args.labels, "seed": r["seed"],
                        "accuracy": r["points"][-1][k]} for r in runs for k in evals])
    for row in final:  # validation accuracy beside test, averaged the same way
        row["val_accuracy"] = round(float(np.mean([r["points"][-1][f"{row['eval']}_val"] for r in runs])), 4)
    pipeline = [r["points"][-1].get("pipeline_minutes") for r in runs]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for row in final:  # time to this accuracy: pretraining + this evaluation alone
        row["minutes"] = round(float(np.mean([r["points"][-1].get(f"{row['eval']}_minutes", r["points"][-1]["elapsed_minutes"])
                                              for r in runs])), 2)
    write(f"label-efficiency-{device}-{args.name}.json",
          {"command": "python " + " ".join(sys.argv), "machine": machine(), "minutes": args.minutes,
           "labels_per_class": args.labels, "pipeline_minutes": pipeline,
           "val_per_class": args.val_per_class, "final": final, "runs": runs})


if __name__ == "__main__":
    main()
