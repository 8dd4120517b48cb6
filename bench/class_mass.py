"""Label propagation's class masses: which prior the spread scores are normalised to before the vote, measured on a
validation split carved out of the training images (no test label is read).

    python bench/class_mass.py --dataset cifar10 --checkpoint RUN --tag=-dcl

Priors (Zhu, Ghahramani & Lafferty 2003, class mass normalisation: node i takes argmax_k q_k f_ik / sum_j f_jk):
`none` (the scores as spread), `equal` (q uniform over the labeled classes), `labels` (q the labeled images'
class frequencies), `smoothed` (those frequencies plus their mean: half way to equal). Label sets: N per class,
uniform random picks of B images, and selfsup's own picks (`selfsup.select`), each over a pool of the first
N - `--val` training images, scored on the last `--val`; then the same on a long-tailed pool and validation split
(class c kept with probability 10^(-c/9): a 10x imbalance), where an equal prior is wrong.
Writes bench/results/class-mass-<dataset><tag>-<device>.json.
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

from selfsup.data import load  # noqa: E402
from selfsup.evaluate import extract_features  # noqa: E402
from selfsup.evaluate.propagate import LabelGraph, class_mass, search, vote  # noqa: E402
from selfsup.factory import encoder_and_config  # noqa: E402
from selfsup.select import random_picks, select, selection_features, selection_head  # noqa: E402

PRIORS = ("none", "equal", "labels", "smoothed")


def prior_scores(z: torch.Tensor, y: torch.Tensor, n_classes: int, prior: str) -> torch.Tensor:
    if prior == "none":
        return z
    counts = torch.bincount(y, minlength=n_classes).float()
    present = (counts > 0).float()
    q = {"equal": present, "labels": counts, "smoothed": counts + present * counts.sum() / present.sum()}[prior]
    return class_mass(z, q)


def per_class(labels: np.ndarray, n: int, seed: int, n_classes: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=False) for c in range(n_classes)])


def score(feats, y_all, pool, val, sets: dict, n_classes: int) -> dict:
    graph, y = LabelGraph(feats[pool]), y_all[pool]
    near = search(graph.nodes, F.normalize(feats[val], dim=1), 10)
    out = {}
    for name, draws in sets.items():
        out[name] = {}
        for prior in PRIORS:
            accs = []
            for idx in draws:
                at = torch.as_tensor(np.asarray(idx, np.int64))
                z = prior_scores(graph.spread(at, y[at], n_classes), y[at], n_classes, prior)
                accs.append(round((vote(graph.nodes, z, None, near=near) == y_all[val]).float().mean().item(), 4))
            out[name][prior] = {"per_draw": accs, "mean": round(float(np.mean(accs)), 4)}
        print(name, {p: v["mean"] for p, v in out[name].items()}, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--val", type=int, default=5000, help="the last VAL training images are scored")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--tag", default="")
    args = p.parse_args()
    t0 = time.perf_counter()
    enc, _ = encoder_and_config(args.checkpoint)
    train = load(args.dataset, "train")
    feats = extract_features(enc, train.images)
    y_all, labels = torch.from_numpy(train.labels).long(), train.labels
    n, n_classes = len(labels), int(labels.max()) + 1
    head = selection_head(args.checkpoint)
    results = {}
    rng = np.random.default_rng(0)
    keep = rng.random(n) < 10.0 ** (-labels / (n_classes - 1))
    for split, pool, val in [("balanced", np.arange(n - args.val), np.arange(n - args.val, n)),
                             ("long-tailed", np.flatnonzero(keep[:n - args.val]), np.flatnonzero(keep[n - args.val:]) + n - args.val)]:
        lab = labels[pool]
        sets = {f"{k} per class": [per_class(lab, k, s, n_classes) for s in range(args.draws)] for k in (1, 10, 100)}
        sets |= {f"{b} uniform random": [random_picks(len(pool), b, s) for s in range(args.draws)] for b in (10, 100, 1000)}
        chosen = selection_features(feats[pool], head)
        sets |= {f"{b} selfsup picks": [[q.index for q in select(chosen, b, 0)]] for b in (10, 100)}
        print(split, len(pool), "pool,", len(val), "scored", flush=True)
        results[split] = {"pool": len(pool), "scored": len(val), "pool_per_class": np.bincount(lab).tolist(),
                          "sets": score(feats, y_all, torch.from_numpy(pool), torch.from_numpy(val), sets, n_classes)}
    write(f"class-mass-{args.dataset}{args.tag}-{device_tag()}.json",
          {"args": vars(args), "machine": machine(), "date": time.strftime("%Y-%m-%d"), "priors": list(PRIORS),
           "seconds": round(time.perf_counter() - t0, 1), "results": results})


if __name__ == "__main__":
    main()
