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
alone. Writes bench/results/semisup-validation<tag>-<device_tag>.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, split, write  # noqa: E402

from selfsup import load_encoder  # noqa: E402
from selfsup.augment import PRESETS, Augment, check_changes  # noqa: E402
from selfsup.data import load  # noqa: E402
from selfsup.evaluate import SemisupConfig, few_label_rows  # noqa: E402
from selfsup.evaluate import semisup as semisup_module  # noqa: E402
from selfsup.evaluate.finetune import accuracy  # noqa: E402


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


def alone(held_x: torch.Tensor, held_y: torch.Tensor, shift: bool):
    """A `keep` hook that adds to the row the held-out accuracy of the kept weights' classifier alone, scored as the
    evaluation scores it but without its pool neighbours' vote (`accuracy_classifier`: paired with `accuracy`)."""
    def keep(row: dict, model) -> None:
        row["accuracy_classifier"] = round(accuracy(model, held_x, held_y, shift=shift), 4)
    return keep


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
    args = ap.parse_args()
    for spec in args.preset:
        name, fields = spec.split("=", 1)
        PRESETS[name] = Augment(**check_changes(json.loads(fields)))  # validated as --augment-args are
    encoder = load_encoder(args.checkpoint)
    train, held = split(load(args.dataset, "train"), args.held)
    held_x, held_y = torch.from_numpy(held.images), torch.from_numpy(held.labels)
    frozen = few_label_rows(encoder, train, held, [args.labels_per_class], "frozen", ("knn", "linear", "propagate"),
                            seeds=(args.seed,), pool_size=args.pool)
    print(json.dumps({r["eval"]: r["accuracy"] for r in frozen}), flush=True)
    trials = []
    for variant in args.variants:
        name, fields = variant.split("=", 1)
        cfg, trajectory, t0 = SemisupConfig(**json.loads(fields)), [], time.perf_counter()
        semisup_module.accuracy = watched(trajectory, held_x, held_y, args.mirror, args.shift)
        row = few_label_rows(encoder, train, held, [args.labels_per_class], name, ("semisup",), seeds=(args.seed,),
                             semisup=cfg, keep=alone(held_x, held_y, cfg.shift), pool_size=args.pool)[0]
        trial = {"variant": name, "config": cfg.to_dict(), "accuracy": row["accuracy"],
                 "accuracy_classifier": row["accuracy_classifier"], "best_step": row["best_step"],
                 "pseudo_label_share": row["pseudo_label_share"], "checks_every": cfg.eval_every,
                 "steps_run": row["steps_run"], "trajectory": trajectory,
                 "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({k: trial[k] for k in ("variant", "accuracy", "accuracy_classifier", "best_step", "seconds")}),
              flush=True)
        print("  held out at each check:", [t["held_out"] for t in trajectory], flush=True)
        if args.mirror:
            print("  each image alone:", [t["held_out_alone"] for t in trajectory], flush=True)
        if args.shift:
            print("  with one-pixel shifts:", [t["held_out_shift"] for t in trajectory], flush=True)
        trials.append(trial)
    write(f"semisup-validation{args.tag}-{device_tag()}.json", {
        "machine": machine(), "dataset": args.dataset, "checkpoint": args.checkpoint,
        "labels_per_class": args.labels_per_class, "seed": args.seed, "pool": args.pool,
        "scored_on": f"the last {args.held:,} training images", "frozen": {r["eval"]: r["accuracy"] for r in frozen},
        "trials": trials})


if __name__ == "__main__":
    main()
