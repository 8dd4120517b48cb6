"""`selfsup data audit`: what is wrong with a dataset before anything is trained on it, and the leakage check
that `eval` and `compare` run.

An audit finds exact duplicates (equal files, or equal pixels), near-duplicate groups (duplicates.near_pairs:
thumbnails, and a pretraining run's features when one is given), test or validation images with near-copies
among the training or unlabeled images (leakage), unreadable files, and outliers (the images least like their
nearest neighbours). It writes audit.json and audit.html, thumbnails side by side for a person to judge.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch

from . import duplicates as dup
from .data import ImageSet
from .files import write_json
from .neighbours import search

OUTLIERS = 24  # shown on the page
SHOWN = 60  # pairs or groups shown per section


def leaked_test(seen: ImageSet, test: ImageSet, encoder=None) -> tuple[np.ndarray, list[dup.Pair]]:
    """(sorted indices of test images with a near-copy among `seen`, the pairs)."""
    feats = None
    if encoder is not None:
        from .evaluate import extract_features

        feats = (extract_features(encoder, seen.images), extract_features(encoder, test.images))
    pairs = dup.near_pairs(seen.images, test.images, *(feats or (None, None)))
    return np.array(sorted({p.a for p in pairs}), np.int64), pairs


def leakage_report(encoder, seen: ImageSet, test: ImageSet, rows: list[dict] | None = None) -> dict:
    """How many test images have near-copies among the images the encoder or classifier saw, for results.json."""
    leaked, pairs = leaked_test(seen, test, encoder)
    text = (f"leakage: {len(leaked)} of {len(test)} test images have a near-copy among the {len(seen)} images the "
            f"encoder or classifier saw")
    text += "; each accuracy without them is in results.json (accuracy_clean)" if len(leaked) else ""
    return {"test_images": len(test), "seen_images": len(seen), "leaked": len(leaked),
            "leaked_test_images": [test.names()[i] for i in leaked[:1000]],
            "pairs": [p.to_dict() | {"test": test.names()[p.a], "seen": seen.names()[p.b]} for p in pairs[:200]],
            "text": text, "leaked_index": leaked.tolist()}


def file_digests(root: Path, paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        h = hashlib.sha1()
        with open(root / p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out.append(h.hexdigest())
    return out


def outliers(features: torch.Tensor, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of the images least similar to their k nearest neighbours, most isolated first."""
    sims, _ = search(features, None, k)
    score = sims.mean(1).numpy()
    order = np.argsort(score)[:OUTLIERS]
    return order, score[order]


def audit(parts: dict[str, ImageSet], out: Path, encoder=None, unreadable: list[tuple[str, str]] = (),
          root: Path | None = None) -> dict:
    """Audit the named splits of one dataset (train, unlabeled, test); writes OUT/audit.json and OUT/audit.html."""
    from .evaluate import extract_features

    names = list(parts)
    images = [parts[s] for s in names]
    offsets = np.cumsum([0] + [len(d) for d in images])
    everything = np.concatenate([np.ascontiguousarray(d.images) for d in images]) if len(images) > 1 else images[0].images
    label = lambda i: (names[int(np.searchsorted(offsets, i, "right") - 1)],  # noqa: E731
                       int(i - offsets[int(np.searchsorted(offsets, i, "right") - 1)]))
    name_of = lambda i: f"{label(i)[0]}: {parts[label(i)[0]].names()[label(i)[1]]}"  # noqa: E731
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    say(f"audit: {len(everything):,} images in {', '.join(names)}")
    keys = dup.pixel_digests(everything)
    exact_pixels = dup.exact_groups(keys)
    exact_files = []
    if root is not None and all(d.paths is not None for d in images):
        exact_files = dup.exact_groups(file_digests(root, [p for d in images for p in d.paths]))
    feats = extract_features(encoder, everything) if encoder is not None else None
    thumbs = dup.all_thumbnails(everything)
    pairs = dup.near_pairs(everything, bank_features=feats, thumbs=(thumbs, None))
    near = dup.groups(len(everything), pairs)
    split_of = np.repeat(np.arange(len(names)), np.diff(offsets))
    held = [names.index(s) for s in ("test", "val") if s in names]
    seen = [names.index(s) for s in ("train", "unlabeled") if s in names]
    leaks = [p for p in pairs if {split_of[p.a], split_of[p.b]} & set(held) and {split_of[p.a], split_of[p.b]} & set(seen)]
    iso, iso_score = outliers(feats if feats is not None else thumbs[0])
    result = {
        "images": {s: len(parts[s]) for s in names},
        "signals": "thumbnails and the encoder's features" if feats is not None else "thumbnails (no pretraining run given)",
        "unreadable": [{"file": f, "why": w} for f, w in unreadable],
        "exact_duplicate_files": [[name_of(i) for i in g] for g in exact_files],
        "exact_duplicate_pixels": [[name_of(i) for i in g] for g in exact_pixels],
        "near_duplicate_groups": [[name_of(i) for i in g] for g in near],
        "leaked_pairs": [p.to_dict() | {"a_name": name_of(p.a), "b_name": name_of(p.b)} for p in leaks],
        "leaked_test_images": len({p.a if split_of[p.a] in held else p.b for p in leaks}),
        "outliers": [{"image": name_of(int(i)), "neighbour_similarity": round(float(s), 4)}
                     for i, s in zip(iso, iso_score)],
    }
    write_json(out / "audit.json", result)
    _page(result, everything, name_of, exact_pixels, near, leaks, iso, iso_score, out / "audit.html", unreadable)
    say(f"audit: {len(unreadable)} unreadable, {len(exact_pixels)} exact-duplicate groups, {len(near)} near-duplicate "
        f"groups, {result['leaked_test_images']} held-out images with near-copies among the training images")
    return result


def _page(result, images, name_of, exact, near, leaks, iso, iso_score, path: Path, unreadable) -> Path:
    from .report.sheets import rows_page

    def row(ix, extra=lambda i: []):
        return [(images[i], [name_of(i)] + extra(i)) for i in ix]

    sections = [
        {"heading": f"Held-out images with a near-copy among the training images ({len(leaks)} pairs)",
         "rows": [[(images[p.a], [name_of(p.a)]), (images[p.b], [name_of(p.b), f"thumbnails {p.pixels:.3f}, details {p.detail:.3f}"
                   + (f", features {p.features:.3f}" if p.features is not None else "")])] for p in leaks[:SHOWN]]},
        {"heading": f"Exact duplicates ({len(exact)} groups)", "rows": [row(g[:8]) for g in exact[:SHOWN]]},
        {"heading": f"Near-duplicate groups ({len(near)})", "rows": [row(g[:8]) for g in near[:SHOWN]]},
        {"heading": "Outliers: the images least like their nearest neighbours",
         "rows": [row(iso[i:i + 8].tolist(), lambda j: [f"similarity {iso_score[list(iso).index(j)]:.3f}"])
                  for i in range(0, len(iso), 8)]},
    ]
    lead = (f"{sum(result['images'].values()):,} images ({', '.join(f'{k}: {v:,}' for k, v in result['images'].items())}); "
            f"compared by {result['signals']}. {len(unreadable)} unreadable file(s)"
            + (": " + ", ".join(f for f, _ in unreadable[:10]) if unreadable else "") + ". Judge each pair by eye.")
    return rows_page(sections, path, "selfsup data audit", lead)


def audit_dataset(name: str, checkpoint: str | None, labels: str | None, image_size: int | None, out: Path) -> dict:
    """Audit dataset `name` (with a pretraining run's features, where given): OUT/audit.json and OUT/audit.html."""
    from .data import load

    encoder, cfg = None, None
    if checkpoint:
        from .factory import encoder_and_config

        encoder, cfg = encoder_and_config(checkpoint)
    size = image_size or (cfg.image_size if cfg else None)
    parts, unreadable, root = {}, [], None
    if name.startswith("folder:"):
        from .data import folder as fol

        p = fol.plan(name[len("folder:"):], labels=labels)
        root = p.root
        for split in p.files:
            parts[split] = load(name, split, size=size, labels=labels)
        kept = {q for d in parts.values() for q in d.paths}
        unreadable = [(q.relative_to(root).as_posix(), "could not be decoded") for fs in p.files.values() for q, _ in fs
                      if q.relative_to(root).as_posix() not in kept]
    else:
        from .data import SPLITS

        for split in SPLITS.get(name, ("train", "test")):
            parts[split] = load(name, split, size=size)
    out.mkdir(parents=True, exist_ok=True)
    result = audit(parts, out, encoder, unreadable, root)
    print(f"audit: {out / 'audit.json'}\npage:  {out / 'audit.html'}")
    return result
