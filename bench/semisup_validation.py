"""Semi-supervised training's settings on a validation split, with every checkpoint's accuracy on it.

    python bench/semisup_validation.py --dataset cifar10 --checkpoint RUN --held 5000 --tag=-c10 \
        --variants 'base={"steps": 2000, "eval_every": 250}' 'enc03={"steps": 2000, "eval_every": 250, "encoder_lr_scale": 0.3}'

The labels (10 per class by default, seed 0, with the evaluations' own 10-per-class validation) come from the
training images outside the last `--held`, which are the scored set: no test label is read. Each variant
(SemisupConfig fields as JSON) trains from the checkpoint's encoder. Besides the accuracy of the weights the
evaluation keeps (chosen, as always, on its own small validation), it records, at every check, that validation's
accuracy and the held-out images' accuracy: the trajectory shows whether the small validation could see what
the held-out images see. `accuracy` is the kept weights' score as the evaluation gives it (with the pool
neighbours' vote unless the variant sets `neighbours` to 0), `accuracy_classifier` the same weights' classifier
alone. `--oracle` swaps true labels into the rounds' targets, for a ceiling of the training itself; `--prior` also
scores two test-time changes of the kept weights. Writes bench/results/semisup-validation<tag>-<device_tag>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, split, write  # noqa: E402

from selfsup import load_encoder  # noqa: E402
from selfsup.augment import PRESETS, Augment, check_changes  # noqa: E402
from selfsup.data import load  # noqa: E402
from selfsup.evaluate import SemisupConfig, Validation, few_label_rows, label_subset, unlabeled_pool  # noqa: E402
from selfsup.evaluate import semisup as semisup_module  # noqa: E402
from selfsup.evaluate.features import extract_features  # noqa: E402
from selfsup.evaluate.finetune import accuracy, scored_probabilities  # noqa: E402
from selfsup.evaluate.propagate import VOTE_K, LabelGraph, weighted_votes  # noqa: E402
from selfsup.neighbours import search, unit  # noqa: E402


def watched(trajectory: list, held_x: torch.Tensor, held_y: torch.Tensor, mirror: bool, shift: bool):
    """semisup's validation accuracy, recording the held-out images' accuracy of the same weights beside it, scored
    as the evaluation scores them (colour over each image and its mirror image), and with `mirror` that of each
    image alone besides (`held_out_alone`), and with `shift` that over the images and their one-pixel translations
    (`held_out_shift`)."""
    def check(model, x, y, batch_size=1024, shift=True):
        val = accuracy(model, x, y, batch_size, shift=shift)
        trajectory.append({"validation": round(val, 4), "held_out": round(accuracy(model, held_x, held_y), 4)})
        if mirror:
            trajectory[-1]["held_out_alone"] = round(accuracy(model, held_x, held_y, mirror=False), 4)
        if shift:
            trajectory[-1]["held_out_shift"] = round(accuracy(model, held_x, held_y, shift=True), 4)
        return val
    return check


def alone(held_x: torch.Tensor, held_y: torch.Tensor, shift: bool, prior_pool: torch.Tensor | None = None,
          votes: torch.Tensor | None = None):
    """A `keep` hook that adds to the row the held-out accuracy of the kept weights' classifier alone, scored as the
    evaluation scores it but without its pool neighbours' vote (`accuracy_classifier`: paired with `accuracy`); with a
    `prior_pool` of training images, also with the class weights that make the classifier's mean prediction over that
    pool uniform applied to every held-out image's probabilities (`accuracy_prior`: a test-time prior correction
    that assumes balanced classes), and, with the frozen encoder's propagation `votes` (N_held, C) from the same labels,
    with the classifier's probabilities multiplied by them (`accuracy_with_propagation`)."""
    def keep(row: dict, model) -> None:
        row["accuracy_classifier"] = round(accuracy(model, held_x, held_y, shift=shift), 4)
        if prior_pool is not None:
            w = uniform_weights(scored_probabilities(model, prior_pool))
            p = scored_probabilities(model, held_x, shift=shift)  # as accuracy_classifier scores them
            row["accuracy_prior"] = round(float(((p * w).argmax(1) == held_y).float().mean()), 4)
            row["accuracy_with_propagation"] = round(float(((p * votes).argmax(1) == held_y).float().mean()), 4)
    return keep


def propagation_votes(encoder, train, held, labels_per_class: int, seed: int) -> torch.Tensor:
    """Frozen label propagation's class votes (N_held, C), rows summing to 1, from the labels `few_label_rows` draws
    for `seed`, over the graph of every training image outside its validation split."""
    val_idx = Validation(10, "fixed", "").split(train.labels)
    idx = label_subset(train.labels, labels_per_class, seed, val_idx)
    nodes = np.union1d(unlabeled_pool(len(train), None, val_idx), idx)
    graph = LabelGraph(extract_features(encoder, train.images[nodes]))
    at = torch.from_numpy(np.searchsorted(nodes, idx))
    scores = graph.scores(at, torch.from_numpy(train.labels[idx]).long(), int(train.labels.max()) + 1)
    sim, j = search(graph.nodes, unit(extract_features(encoder, held.images)), VOTE_K, graph.method, index=graph.index)
    votes = weighted_votes(sim, j, scores, 0.07)
    return votes / votes.sum(1, keepdim=True).clamp(min=1e-30)


def uniform_weights(probs: torch.Tensor, iters: int = 50) -> torch.Tensor:
    """Class weights (C,) under which the rows of `probs` (N, C), reweighted and renormalised, average to uniform."""
    w = torch.ones(probs.shape[1])
    for _ in range(iters):
        q = probs * w
        w = w / ((q / q.sum(1, keepdim=True)).mean(0) * probs.shape[1])
    return w


def oracle_targets(round_targets, train, which: str):
    """`round_targets` with the true labels of the pool images (found by their pixels among `train`'s) as classes,
    given for every image (`all`) or for those the round gives a target (`given`); prints how many of the round's own
    classes were right."""
    truth = {}

    def targets(cfg, scores, model, pool_x, amp):
        if "y" not in truth:
            label_of = {train.images[i].tobytes(): int(train.labels[i]) for i in range(len(train))}
            truth["y"] = torch.tensor([label_of[x.tobytes()] for x in pool_x])
        cls, given = round_targets(cfg, scores, model, pool_x, amp)
        y = truth["y"].to(cls.device)
        print(f"  the round's targets: {float((cls[given] == y[given]).float().mean()):.4f} right, "
              f"{float(given.float().mean()):.3f} of the pool", flush=True)
        return y, torch.ones_like(given) if which == "all" else given
    return targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--held", type=int, default=5_000, help="the last N training images: the scored set")
    ap.add_argument("--labels-per-class", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", required=True, help="NAME=JSON of SemisupConfig fields")
    ap.add_argument("--pool", type=int, default=None, help="the unlabeled pool: at most N training images (default: "
                    "all outside validation), as a small dataset would have")
    ap.add_argument("--tag", default="")
    ap.add_argument("--mirror", action="store_true", help="also score each held-out image alone (the "
                    "evaluation scores colour images over each image and its mirror)")
    ap.add_argument("--shift", action="store_true", help="also score each held-out image as the mean over it and "
                    "its one-pixel translations")
    ap.add_argument("--preset", nargs="*", default=[], help="NAME=JSON: an augmentation preset (Augment fields) that "
                    "variants can name as weak or strong, for this run only")
    ap.add_argument("--oracle", choices=("all", "given"), default=None, help="a ceiling, not an evaluation: each round's "
                    "targets are true labels, for every pool image (all) or for the images the round would give a "
                    "target (given)")
    ap.add_argument("--prior", type=int, default=0, help="also score the kept weights with a class-prior correction "
                    "from their predictions on the first N training images (accuracy_prior), and multiplied by the "
                    "frozen encoder's propagation votes (accuracy_with_propagation)")
    args = ap.parse_args()
    for spec in args.preset:
        name, fields = spec.split("=", 1)
        PRESETS[name] = Augment(**check_changes(json.loads(fields)))  # validated as --augment-args are
    encoder = load_encoder(args.checkpoint)
    train, held = split(load(args.dataset, "train"), args.held)
    if args.oracle:
        semisup_module.round_targets = oracle_targets(semisup_module.round_targets, train, args.oracle)
    held_x, held_y = torch.from_numpy(held.images), torch.from_numpy(held.labels)
    prior_pool = torch.from_numpy(train.images[:args.prior]) if args.prior else None
    votes = propagation_votes(encoder, train, held, args.labels_per_class, args.seed) if args.prior else None
    frozen = few_label_rows(encoder, train, held, [args.labels_per_class], "frozen", ("knn", "linear", "propagate"),
                            seeds=(args.seed,), pool_size=args.pool)
    print(json.dumps({r["eval"]: r["accuracy"] for r in frozen}), flush=True)
    trials = []
    for variant in args.variants:
        name, fields = variant.split("=", 1)
        cfg, trajectory, t0 = SemisupConfig(**json.loads(fields)), [], time.perf_counter()
        semisup_module.accuracy = watched(trajectory, held_x, held_y, args.mirror, args.shift)
        row = few_label_rows(encoder, train, held, [args.labels_per_class], name, ("semisup",), seeds=(args.seed,),
                             semisup=cfg, keep=alone(held_x, held_y, cfg.shift, prior_pool, votes), pool_size=args.pool)[0]
        trial = {"variant": name, "config": cfg.to_dict(), "accuracy": row["accuracy"],
                 "accuracy_classifier": row["accuracy_classifier"], "accuracy_prior": row.get("accuracy_prior"),
                 "accuracy_with_propagation": row.get("accuracy_with_propagation"),
                 "best_step": row["best_step"],
                 "pseudo_label_share": row["pseudo_label_share"], "checks_every": cfg.eval_every,
                 "steps_run": row["steps_run"], "trajectory": trajectory,
                 "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({k: trial[k] for k in ("variant", "accuracy", "accuracy_classifier", "accuracy_prior",
                                                 "accuracy_with_propagation", "best_step", "seconds")}),
              flush=True)
        print("  held out at each check:", [t["held_out"] for t in trajectory], flush=True)
        if args.mirror:
            print("  each image alone:", [t["held_out_alone"] for t in trajectory], flush=True)
        if args.shift:
            print("  with one-pixel shifts:", [t["held_out_shift"] for t in trajectory], flush=True)
        trials.append(trial)
    write(f"semisup-validation{args.tag}-{device_tag()}.json", {
        "machine": machine(), "dataset": args.dataset, "checkpoint": args.checkpoint,
        "labels_per_class": args.labels_per_class, "seed": args.seed, "pool": args.pool, "oracle": args.oracle,
        "scored_on": f"the last {args.held:,} training images", "frozen": {r["eval"]: r["accuracy"] for r in frozen},
        "trials": trials})


if __name__ == "__main__":
    main()
