"""`selfsup similar`: the images of a set most like one image, by an encoder's features, as a page of thumbnails."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data import ImageSet
from .errors import DataError
from .evaluate import extract_features
from .neighbours import search


def query_image(path: str, data: ImageSet) -> tuple[np.ndarray, int | None]:
    """(the image as uint8 (C, S, S) at the set's stored side, its index in the set or None), from a path inside
    the folder or any image file."""
    from .data import folder as fol

    if data.paths is not None and path in data.paths:
        i = data.paths.index(path)
        return np.asarray(data.images[i]), i
    root = Path(data.name[len("folder:"):]).expanduser().resolve() if data.name.startswith("folder:") else None
    f = Path(path).expanduser()
    if root is not None and not f.is_absolute() and (root / f).is_file():
        f = root / f
    if not f.is_file():
        raise DataError(f"image {path} not found; give an image file, or a path inside the folder")
    if root is not None and data.paths is not None:
        try:
            rel = f.resolve().relative_to(root).as_posix()
            if rel in data.paths:
                i = data.paths.index(rel)
                return np.asarray(data.images[i]), i
        except ValueError:
            pass
    try:
        x = fol.decode(f, data.size[0], data.channels == 3)
    except Exception as e:  # noqa: BLE001 - any decoder error is one unreadable image
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {str(e)[:120]})") from None
    return x, None


def similar(encoder, data: ImageSet, image: str, k: int, out: Path) -> list[tuple[str, float]]:
    """The k images of `data` nearest to `image` (itself left out), printed and written as an HTML page."""
    from .report.sheets import contact_sheet

    if k < 1:
        raise DataError(f"--k must be at least 1, got {k}")
    x, own = query_image(image, data)
    bank = extract_features(encoder, data.images)
    q = extract_features(encoder, torch.from_numpy(np.ascontiguousarray(x))[None])
    sims, idx = search(bank, q, k + (own is not None))
    hits = [(int(i), float(s)) for s, i in zip(sims[0], idx[0]) if int(i) != own][:k]
    names = data.names()
    images = np.stack([x] + [np.asarray(data.images[i]) for i, _ in hits])
    contact_sheet(images, [f"query: {image}"] + [names[i] for i, _ in hits],
                  [[]] + [[f"similarity {s:.3f}"] for _, s in hits], out, f"Images most like {Path(image).name}",
                  f"The {len(hits)} nearest of {len(data):,} images by cosine similarity of the encoder's features.")
    for i, s in hits:
        print(f"{s:.3f}  {names[i]}")
    print(f"page: {out}")
    return [(names[i], s) for i, s in hits]
