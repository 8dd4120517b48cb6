"""How often each rule's pseudo-labels are right, on a validation pool (labels read only to score the rules).

    python bench/pseudo_labels.py --dataset cifar10 --checkpoint RUN --held 5000

The pool is the training images outside the last `--held`; 10 labels per class are drawn from it as the evaluations
draw theirs (`few_labels`, seed 0). The
frozen encoder's features give label propagation's scores (the graph) and the linear probe's probabilities; each
source (graph, probe, their mean, their product) is scored on the unlabeled pool: all of it, where its top score is
at least 0.5, and on the `share` of N/C images per class it is surest of (class-balanced selection). Writes
bench/results/pseudo-labels-<dataset>-<device_tag>.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, split, write  # noqa: E402

from selfsup import load_encoder  # noqa: E402
from selfsup.data import load  # noqa: E402
from selfsup.data.splits import few_labels  # noqa: E402
from selfsup.evaluate import extract_features  # noqa: E402
from selfsup.evaluate.linear import fit_linear, probe_logits  # noqa: E402
from selfsup.evaluate.propagate import LabelGraph  # noqa: E402
from selfsup.evaluate.semisup import balanced, confident, product  # noqa: E402

SHARES = (0.1, 0.2, 0.3, 0.5)


def scored(scores: torch.Tensor, truth: torch.Tensor, unlabeled: torch.Tensor) -> dict:
    right = lambda given: round(float((scores.argmax(1) == truth)[given & unlabeled].float().mean()), 4)  # noqa: E731
    _, sure = confident(scores, 0.5)
    out = {"all": right(torch.ones_like(sure)), "score_0.5": {"share": round(float(sure[unlabeled].float().mean()), 4),
                                                               "right": right(sure)}}
    return out | {f"balanced_{s}": right(balanced(scores, s)[1]) for s in SHARES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--held", type=int, default=5_000)
    ap.add_argument("--labels-per-class", type=int, default=10)
    args = ap.parse_args()
    pool, _ = split(load(args.dataset, "train"), args.held)
    truth = torch.from_numpy(pool.labels).long()
    n_classes = int(truth.max()) + 1
    at = torch.from_numpy(few_labels(pool.labels, args.labels_per_class, 0)).long()
    unlabeled = torch.ones(len(pool), dtype=torch.bool)
    unlabeled[at] = False
    f = extract_features(load_encoder(args.checkpoint), pool.images)
    graph = LabelGraph(f).spread(at, truth[at], n_classes)
    probe = probe_logits(fit_linear(f[at], truth[at], n_classes), f).softmax(1)
    sources = {"graph": graph, "probe": probe, "mean": (graph + probe) / 2, "product": product(graph, probe)}
    results = {name: scored(s, truth, unlabeled) for name, s in sources.items()}
    for name, r in results.items():
        print(name, r, flush=True)
    write(f"pseudo-labels-{args.dataset}-{device_tag()}.json", {
        "machine": machine(), "dataset": args.dataset, "checkpoint": args.checkpoint, "pool": len(pool),
        "labels_per_class": args.labels_per_class, "results": results})


if __name__ == "__main__":
    main()
