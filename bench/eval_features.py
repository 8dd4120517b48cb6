"""Evaluation that uses what the features know: frozen features averaged over an image and its mirror image,
centred before normalising, or pooled from several blocks of the encoder, for kNN, the linear probe and label
propagation; measured on a validation split carved out of the training images (no test label is read).

    python bench/eval_features.py --dataset cifar10 --checkpoint RUN --labels-per-class 10 --seeds 3
    python bench/eval_features.py --dataset cifar10 --checkpoint RUN --blocks --tag=-blocks
    python bench/eval_features.py --dataset cifar10 --checkpoint RUN --head --tag=-head

The last `--val` training images are the validation split; labeled subsets (N per class, per seed) come from the
rest, and propagation's graph is built over the rest. Writes bench/results/eval-features-<dataset>-<tag>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402

from selfsup.data import load  # noqa: E402
from selfsup.data.splits import few_labels  # noqa: E402
from selfsup.evaluate import extract_features  # noqa: E402
from selfsup.evaluate.knn import knn_accuracy  # noqa: E402
from selfsup.evaluate.linear import linear_accuracy  # noqa: E402
from selfsup.evaluate.propagate import LabelGraph  # noqa: E402
from selfsup.factory import encoder_and_config  # noqa: E402
from selfsup.select import selection_features, selection_head  # noqa: E402


def variants(encoder, images: np.ndarray) -> dict[str, torch.Tensor]:
    plain = extract_features(encoder, images)
    mirrored = extract_features(encoder, np.ascontiguousarray(images[..., ::-1]))
    flip = (F.normalize(plain, dim=1) + F.normalize(mirrored, dim=1)) / 2
    return {"plain": plain, "flip-averaged": flip}


class Blocks(nn.Module):
    """The encoder's blocks (`body`) each average- (or max-) pooled and L2-normalised, then concatenated."""

    def __init__(self, encoder: nn.Module, blocks: tuple[int, ...], pool: str = "avg"):
        super().__init__()
        self.encoder, self.blocks, self.pool = encoder, blocks, pool
        self.image_size = encoder.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, out = self.encoder.stem(x), []
        for i, block in enumerate(self.encoder.body):
            h = block(h)
            if i in self.blocks:
                out.append(F.normalize(h.amax((2, 3)) if self.pool == "max" else h.mean((2, 3)), dim=1))
        return torch.cat(out, 1)


def block_variants(encoder, images: np.ndarray) -> dict[str, torch.Tensor]:
    last = len(encoder.body) - 1
    last_avg = extract_features(Blocks(encoder, (last,)), images)
    return {"last block": last_avg,
            "last two blocks": extract_features(Blocks(encoder, (last - 1, last)), images),
            "every block": extract_features(Blocks(encoder, tuple(range(last + 1))), images),
            "last block, avg and max": torch.cat([last_avg, extract_features(Blocks(encoder, (last,), "max"), images)], 1)}


def head_variants(encoder, images: np.ndarray, checkpoint: str) -> dict[str, torch.Tensor]:
    """The backbone's features, the method's projection head's (the space selection works in), and both side by side."""
    plain = extract_features(encoder, images)
    head = selection_features(plain, selection_head(checkpoint))
    return {"backbone": plain, "projection head": head,
            "backbone and head": torch.cat([F.normalize(plain, dim=1), F.normalize(head, dim=1)], 1)}


def centred(f: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    return F.normalize(F.normalize(f, dim=1) - mean, dim=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--labels-per-class", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--val", type=int, default=5000)
    p.add_argument("--blocks", action="store_true", help="pooled features of the last, last two and every block "
                   "(encoders with a `body` of blocks), not centred")
    p.add_argument("--head", action="store_true", help="the backbone's features against the projection head's and "
                   "both side by side (a pretraining run with a head), not centred")
    p.add_argument("--tag", default="")
    args = p.parse_args()
    encoder, cfg = encoder_and_config(args.checkpoint)
    train = load(args.dataset, "train")
    n = len(train) - args.val
    y = torch.from_numpy(train.labels)
    t0 = time.perf_counter()
    feats = block_variants(encoder, train.images) if args.blocks else \
        head_variants(encoder, train.images, args.checkpoint) if args.head else variants(encoder, train.images)
    rows = []
    for name, f in feats.items():
        mean = F.normalize(f[:n], dim=1).mean(0)  # from the training images only
        for centre in (False,) if args.blocks or args.head else (False, True):
            g = centred(f, mean) if centre else F.normalize(f, dim=1)
            pool, val = g[:n], g[n:]
            graph = LabelGraph(pool)
            for s in range(args.seeds):
                idx = few_labels(train.labels[:n], args.labels_per_class, s)
                lab = torch.from_numpy(idx)
                r = {"features": name, "centred": centre, "seed": s,
                     "knn": knn_accuracy(pool[lab], y[lab], val, y[n:]),
                     "linear": linear_accuracy(pool[lab], y[lab], val, y[n:]),
                     "propagate": float((graph.predict(lab, y[lab], val, int(y.max()) + 1) == y[n:]).float().mean())}
                rows.append(r)
                print(r, flush=True)
    summary = {}
    for r in rows:
        key = f"{r['features']}{' centred' if r['centred'] else ''}"
        for e in ("knn", "linear", "propagate"):
            summary.setdefault(key, {}).setdefault(e, []).append(r[e])
    table = {k: {e: round(float(np.mean(v)), 4) for e, v in d.items()} for k, d in summary.items()}
    for k, d in table.items():
        print(k, d)
    write(f"eval-features-{args.dataset}{args.tag}-{device_tag()}.json",
          {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "checkpoint": args.checkpoint,
           "config": cfg.to_dict(), "labels_per_class": args.labels_per_class, "validation_images": args.val,
           "rows": rows, "means": table, "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
