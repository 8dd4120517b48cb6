"""`selfsup data info` for a folder: what it holds, read from its file list and headers alone."""
from __future__ import annotations

import numpy as np

from ..errors import DataError


def describe_folder(path: str, labels: str | None = None, image_size: int | None = None) -> list[str]:
    """What a folder holds, from its file list and headers alone (nothing is decoded): lines to print."""
    from . import folder as fol
    from . import in_memory_bytes

    p = fol.plan(path, labels=labels)
    heads = fol._headers(p.reference)
    sides = np.array([h[0] for h in heads if not isinstance(h, str)])
    bad = [(q, h) for q, h in zip(p.reference, heads) if isinstance(h, str)]
    if not len(sides):
        raise DataError(f"none of the {len(p.reference)} image files in {p.root} could be read; put readable images there")
    colour = any(h[1] for h in heads if not isinstance(h, str))
    natural = int(np.bincount(sides).argmax())
    train, store = fol.train_side(natural, image_size), fol.store_side(natural, image_size)
    n = sum(len(f) for f in p.files.values())
    out = [f"folder:{p.root}: {n:,} image files ({p.layout.replace('flat', 'flat, unlabeled')} layout), "
           f"{'colour' if colour else 'greyscale'}; shorter sides {sides.min()} to {sides.max()} px (median "
           f"{int(np.median(sides))}, most common {natural})"]
    for split, files in p.files.items():
        ys = np.array([y for _, y in files])
        labeled = int((ys >= 0).sum())
        line = f"  {split}: {len(files):,} files, {labeled:,} labeled"
        if labeled and p.classes:
            line += " (" + ", ".join(f"{c}={k}" for c, k in zip(p.classes, np.bincount(ys[ys >= 0], minlength=len(p.classes)))) + ")"
        out.append(line)
    pixels = n * (3 if colour else 1) * store * store
    where = "decoded into memory" if pixels <= in_memory_bytes() else "prepared once as a memory-mapped copy"
    out.append(f"  training side {train} px on this machine, images kept at {store} px ({pixels / 1e6:,.0f} MB, {where})")
    if bad:
        out.append(f"  {len(bad)} unreadable file(s), skipped: " + ", ".join(str(q.relative_to(p.root)) for q, _ in bad[:5]))
    if p.layout == "flat":
        out.append("  no labels yet: pretrain on it, then `selfsup select` picks the images worth labeling")
    return out
