"""Near-duplicates and leakage: what selfsup's detector finds on real data, and how much of each planted kind of
copy it finds.

    python bench/duplicates.py

- CIFAR-10 (the JPEG copy in $SELFSUP_DATA): test images with a near-copy in the training split, the training
  split's own near-duplicate groups, and the time each search takes;
- MNIST: the same search, where every handwritten digit has look-alikes and none is a copy;
- planted copies of 500 CIFAR-10 test images, each kind searched for among the 50,000 training images plus the
  copies: re-encoded (JPEG q40), resized (to 20 px and back), cropped (central 87.5% and a 90% corner),
  colour-shifted (saturation x1.5, brightness x1.2), mirrored. Recall is the share of copies paired with their
  original. Writes bench/results/duplicates-<device_tag>.json.
"""
from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402

from selfsup import duplicates as dup  # noqa: E402
from selfsup.data import load  # noqa: E402


def _pil(x):
    return Image.fromarray(np.ascontiguousarray(x.transpose(1, 2, 0)))


def _arr(im):
    return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


def jpeg(x):
    b = io.BytesIO()
    _pil(x).save(b, "JPEG", quality=40)
    return _arr(Image.open(b))


KINDS = {
    "reencoded": jpeg,
    "resized": lambda x: _arr(_pil(x).resize((20, 20), Image.BILINEAR).resize((32, 32), Image.BILINEAR)),
    "cropped_centre": lambda x: _arr(_pil(x).crop((2, 2, 30, 30)).resize((32, 32), Image.BILINEAR)),
    "cropped_corner": lambda x: _arr(_pil(x).crop((3, 3, 32, 32)).resize((32, 32), Image.BILINEAR)),
    "colour": lambda x: _arr(ImageEnhance.Brightness(ImageEnhance.Color(_pil(x)).enhance(1.5)).enhance(1.2)),
    "mirrored": lambda x: np.ascontiguousarray(x[..., ::-1]),
}


def main() -> None:
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"),
           "thresholds": {"pixels": dup.PIXEL_MATCH, "features": dup.FEATURE_MATCH, "detail": dup.DETAIL_MATCH,
                          "crowded": [dup.CROWD, dup.CROWDED_MATCH]}}
    tr, te = load("cifar10", "train"), load("cifar10", "test")
    t = time.perf_counter()
    pairs = dup.near_pairs(tr.images, te.images)
    out["cifar10_test_to_train"] = {"pairs": len(pairs), "test_images": len({p.a for p in pairs}),
                                    "seconds": round(time.perf_counter() - t, 1), "bar": pairs.threshold}
    t = time.perf_counter()
    own = dup.near_pairs(tr.images)
    groups = dup.groups(len(tr), own)
    out["cifar10_train_groups"] = {"pairs": len(own), "groups": len(groups), "images_left_out": int(len(tr) - dup.keep_one(len(tr), own).sum()),
                                   "largest": [len(g) for g in groups[:5]], "seconds": round(time.perf_counter() - t, 1)}
    q = np.ascontiguousarray(te.images[:500])
    recall = {}
    for kind, fn in KINDS.items():
        copies = np.stack([fn(x) for x in q])
        found = dup.near_pairs(np.concatenate([np.ascontiguousarray(tr.images), q]), copies)
        hit = {p.a for p in found if p.b == len(tr) + p.a}
        recall[kind] = round(len(hit) / len(q), 3)
    out["planted_recall"] = recall
    mtr, mte = load("mnist", "train"), load("mnist", "test")
    t = time.perf_counter()
    m = dup.near_pairs(mtr.images, mte.images)
    out["mnist_test_to_train"] = {"pairs": len(m), "test_images": len({p.a for p in m}), "bar": m.threshold,
                                  "seconds": round(time.perf_counter() - t, 1)}
    print(out)
    write(f"duplicates-{device_tag()}.json", out)


if __name__ == "__main__":
    main()
