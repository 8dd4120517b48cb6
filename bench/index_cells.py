"""The leakage check's largest search, with the index's cells as they were (4 sqrt(N)) and as they are now (fewer by
(Q/N)^(1/3) for Q < N queries): its time and its recall of the thumbnail pairs that exact search finds.

    python bench/index_cells.py --dataset mnist
    python bench/index_cells.py --dataset cifar10

The search is the first of `duplicates.near_pairs`: each test image's whole thumbnail against every training
image's thumbnails, whole and cropped (N = 6 x the training images, Q = the test images), its K nearest. A pair is
a candidate where the thumbnails agree at PIXEL_MATCH or more; recall is the share of exact search's candidate
pairs (test image, training image) that the index also returns. Writes bench/results/index-cells-<dataset>-<tag>.json.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402

from selfsup import duplicates as dup  # noqa: E402
from selfsup import neighbours as nb  # noqa: E402
from selfsup.data import load  # noqa: E402


def candidates(sims: torch.Tensor, idx: torch.Tensor, image_of: torch.Tensor) -> set[tuple[int, int]]:
    ok = sims >= dup.PIXEL_MATCH
    query = torch.arange(len(sims)).repeat_interleave(idx.shape[1])
    return {(int(a), int(image_of[b])) for a, b, o in zip(query, idx.flatten(), ok.flatten()) if o}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    args = ap.parse_args()
    train, test = load(args.dataset, "train"), load(args.dataset, "test")
    tb, tq = dup.all_thumbnails(train.images), dup.all_thumbnails(test.images)
    bank, queries = tb.reshape(-1, tb.shape[-1]), tq[0]
    image_of = torch.arange(tb.shape[1]).repeat(tb.shape[0])
    t = time.perf_counter()
    exact = candidates(*nb.search(bank, queries, dup.K, "exact"), image_of)
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "dataset": args.dataset, "bank": len(bank),
           "queries": len(queries), "k": dup.K, "nprobe": nb.NPROBE,
           "exact": {"pairs": len(exact), "seconds": round(time.perf_counter() - t, 1)}}
    for rule, queries_seen in (("4 sqrt(N) cells (before)", None), ("fewer by (Q/N)^(1/3) (now)", len(queries))):
        t = time.perf_counter()
        index = nb.build_index(bank, queries_seen)
        found = candidates(*nb.search(bank, queries, dup.K, "index", index=index), image_of)
        out[rule] = {"cells": index.nlist, "pairs": len(found), "of_exact": len(found & exact),
                     "recall": round(len(found & exact) / max(1, len(exact)), 5),
                     "seconds": round(time.perf_counter() - t, 1)}
        print(rule, out[rule], flush=True)
    write(f"index-cells-{args.dataset}-{device_tag()}.json", out)


if __name__ == "__main__":
    main()
