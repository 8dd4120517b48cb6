"""Which images to label: selfsup's selection against uniform random picks, class-balanced random picks (the
N-per-class protocol, an oracle: balancing needs the labels) and TypiClust, at the same label budgets, with every
evaluation.

    python bench/selection.py --dataset cifar10 --checkpoint RUN --budgets 10,100 --seeds 3
    python bench/selection.py --dataset mnist --checkpoint RUN --budgets 10 --seeds 3

Each strategy picks `budget` training images (labels in all, not per class); their labels are read from the
dataset, as the person labeling them would give them. The evaluations then train on exactly those images: the
validation split comes out of the picks (up to a quarter of each class, none below 4 per class), as it would for a
user. The test split is scored once per configuration. Writes bench/results/selection-<dataset>-<device_tag>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402

from selfsup import duplicates as dup  # noqa: E402
from selfsup.data import load  # noqa: E402
from selfsup.data.splits import few_labels  # noqa: E402
from selfsup.evaluate import SemisupConfig, aggregate, extract_features, few_label_rows  # noqa: E402
from selfsup.factory import encoder_and_config  # noqa: E402
from selfsup.report import format_table  # noqa: E402
from selfsup.select import density, random_picks, select, selection_features, selection_head  # noqa: E402


def typiclust(feats: torch.Tensor, budget: int, seed: int, candidates: np.ndarray) -> np.ndarray:
    """TypiClust (Hacohen et al. 2022), for comparison: k-means into `budget` clusters of the encoder's features,
    then each cluster's most typical image (the inverse mean distance to its 20 nearest members)."""
    from sklearn.cluster import KMeans

    u = F.normalize(feats.float(), dim=1)[candidates]
    ids = KMeans(budget, random_state=seed, n_init=1).fit_predict(u.numpy())
    out = []
    for c in np.unique(ids):
        members = np.flatnonzero(ids == c)
        out.append(candidates[members[np.argmax(density(u[members]))]])
    return np.sort(np.array(out, np.int64))


def picks(strategy: str, budget: int, seed: int, labels: np.ndarray, feats, head_feats, keep: np.ndarray
          ) -> tuple[np.ndarray, str]:
    """The picks, and the rule that chose them (selfsup's first round: coverage or spectral)."""
    n_classes = int(labels.max()) + 1
    if strategy == "random":
        return random_picks(len(labels), budget, seed), strategy
    if strategy == "balanced":
        return few_labels(labels, max(1, budget // n_classes), seed), strategy
    if strategy == "typiclust":
        return typiclust(feats, budget, seed, np.flatnonzero(keep)), strategy
    space = feats if strategy == "selfsup-backbone" else head_feats
    chosen = select(space, budget, seed, np.flatnonzero(keep), spectral=strategy != "selfsup-coverage")
    return np.sort(np.array([p.index for p in chosen], np.int64)), chosen[0].rule if chosen else "none"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--budgets", default="10,100")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--strategies", default="random,balanced,typiclust,selfsup",
                   help="also selfsup-backbone (the encoder's features) and selfsup-coverage (no spectral option)")
    p.add_argument("--evals", default="knn,linear,propagate,finetune,semisup")
    p.add_argument("--semisup-steps", type=int, default=None, help="default: semisup's own for the kind of image")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    encoder, cfg = encoder_and_config(args.checkpoint)
    train, test = load(args.dataset, "train"), load(args.dataset, "test")
    t0 = time.perf_counter()
    feats = extract_features(encoder, train.images)
    head_feats = selection_features(feats, selection_head(args.checkpoint))
    keep = dup.keep_one(len(train), dup.near_pairs(train.images))
    print(f"{len(train) - int(keep.sum())} near-duplicates left out of selection ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    budgets = [int(b) for b in args.budgets.split(",")]
    rows, chosen = [], {}
    for s in range(args.seeds):
        sets = {}
        for b in budgets:
            for strategy in args.strategies.split(","):
                t = time.perf_counter()
                idx, rule = picks(strategy, b, s, train.labels, feats, head_feats, keep)
                sets[f"{strategy}@{b}"] = idx
                chosen[f"{strategy}@{b}/seed{s}"] = {"index": idx.tolist(), "rule": rule,
                                                     "seconds": round(time.perf_counter() - t, 1),
                                                     "classes_covered": int(len(np.unique(train.labels[idx])))}
        # one call per seed: the features and the graph are made once for every strategy and budget
        for r in few_label_rows(encoder, train, test, [], "", tuple(args.evals.split(",")), (s,), label_sets=sets,
                                semisup=SemisupConfig(steps=args.semisup_steps)):
            strategy, b = r["labels_per_class"].split("@")
            r |= {"method": strategy, "labels_per_class": int(b)}  # the budget, in labels in all
            rows.append(r)
            print(r, flush=True)
        agg = aggregate(rows)  # written after every seed: a long run leaves what it finished
        print(format_table(agg).replace("@", " @"), flush=True)
        write(f"selection-{args.dataset}{args.tag}-{device_tag()}.json",
              {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "dataset": args.dataset,
               "checkpoint": str(args.checkpoint), "config": cfg.to_dict(), "budgets_in_labels": budgets,
               "seeds_done": s + 1, "rows": agg, "rows_per_seed": rows, "picks": chosen,
               "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
