"""Label propagation's settings on one pretrained MNIST checkpoint, at 10 labels per class, chosen on validation.

    python bench/propagation.py --checkpoint runs/le/seed0/checkpoints/last.pt --name demo-seed0

Sweeps the unlabeled pool (a random 10,000 of the training images, or all outside the validation split), the
graph's k, alpha, and the vote's k. Validation and test accuracy for each; the validation split is the one
bench/label_efficiency.py uses (500 per class), the labels are seed `--seed`'s draw.
Writes bench/results/propagation-<device>-NAME.json.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))

from common import machine, write  # noqa: E402
from selfsup import checkpoint  # noqa: E402
from selfsup.factory import encoder_from  # noqa: E402
from selfsup.compare import load_splits  # noqa: E402
from selfsup.evaluate import extract_features, label_subset, unlabeled_pool, validation_split  # noqa: E402
from selfsup.evaluate.propagate import LabelGraph, vote  # noqa: E402

POOLS = ("10k", "all")
GRAPH_K = (3, 5, 10, 20)
ALPHA = (0.9, 0.99, 0.999)
VOTE_K = (5, 10, 20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--seed", type=int, default=0, help="which label draw (as in bench/label_efficiency.py)")
    p.add_argument("--val-per-class", type=int, default=500)
    p.add_argument("--name", default="default")
    args = p.parse_args()
    train, test = load_splits("mnist", None)
    val_idx = validation_split(train.labels, args.val_per_class)
    idx = label_subset(train.labels, 10, args.seed, val_idx)
    state = checkpoint.load(args.checkpoint)
    encoder, _ = encoder_from(state)
    rest = unlabeled_pool(len(train), exclude=np.union1d(val_idx, idx))
    f, vf, tf, pool = (extract_features(encoder, a) for a in (train.images[idx], train.images[val_idx], test.images,
                                                              train.images[rest]))
    y, vy, ty = (torch.from_numpy(a) for a in (train.labels[idx], train.labels[val_idx], test.labels))
    rows = []
    for pool_name in POOLS:
        pf = pool if pool_name == "all" else pool[np.random.default_rng(0).choice(len(pool), 10_000, replace=False)]
        graphs = LabelGraph.for_each_k(torch.cat([f, pf]), GRAPH_K)
        for k, alpha in itertools.product(GRAPH_K, ALPHA):
            t0 = time.perf_counter()
            graph = graphs[k]
            scores = graph.spread(torch.arange(len(y)), y, 10, alpha=alpha)
            for vk in VOTE_K:
                acc = [(vote(graph.nodes, scores, q, vk) == qy).float().mean().item() for q, qy in ((vf, vy), (tf, ty))]
                rows.append({"pool": pool_name, "pool_size": len(pf), "graph_k": k, "alpha": alpha, "vote_k": vk,
                             "val": round(acc[0], 4), "test": round(acc[1], 4)})
            print(rows[-1] | {"seconds": round(time.perf_counter() - t0, 1)}, flush=True)
    best = max(rows, key=lambda r: r["val"])
    print("best on validation:", best)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    write(f"propagation-{device}-{args.name}.json",
          {"command": "python " + " ".join(sys.argv), "machine": machine(), "checkpoint_step": state["budget"]["step"],
           "pretrain_seconds": round(state["seconds"], 1), "seed": args.seed, "best_on_validation": best, "rows": rows})


if __name__ == "__main__":
    main()
