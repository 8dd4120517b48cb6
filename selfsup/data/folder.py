"""Read a folder of images: subfolders are classes, a flat folder is unlabeled."""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _fit(img, size: int):
    """Resize the shorter side to `size`, then centre-crop to size x size (the documented rule for mixed sizes)."""
    from PIL import Image

    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def read_folder(folder: str | Path, size: int | None = None, strict: bool = False):
    """Return (images uint8 (N, C, H, W), labels int64, class names).

    Greyscale folders give 1 channel; if any image has colour, all are converted to RGB
    (RGBA drops alpha, palette images are expanded). Images of other sizes are resized to
    `size` (default: the most common size) by shorter side, then centre-cropped.
    Unreadable files are skipped with a warning, or raise with `strict=True`.
    """
    from PIL import Image

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; pass folder:PATH with a directory of images")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        listed = {d: _list_images(d) for d in subdirs}
        empty = [d.name for d in subdirs if not listed[d]]
        if empty and len(empty) < len(subdirs):
            warnings.warn(f"ignored {len(empty)} class folder(s) with no images in {folder}: {', '.join(empty[:5])}", stacklevel=2)
        subdirs = [d for d in subdirs if listed[d]]
        classes = [d.name for d in subdirs]
        files = [(p, i) for i, d in enumerate(subdirs) for p in listed[d]]
    else:
        classes = []
        files = [(p, -1) for p in _list_images(folder)]
    if not files:
        others = [p.name for p in folder.rglob("*") if p.is_file()]
        seen = f" (only {len(others)} other file(s), e.g. {', '.join(others[:3])})" if others else ""
        raise DataError(f"no images found in {folder}{seen}; put {'/'.join(sorted(IMAGE_SUFFIXES))} files there, "
                        f"one subfolder per class (or flat for unlabeled)")

    loaded, bad = [], []
    for path, label in files:
        try:
            with Image.open(path) as im:
                im.load()
                loaded.append((im.copy(), label))
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds on corrupt files; each is one unreadable image
            bad.append((path, e))
    if bad:
        first = ", ".join(str(p) for p, _ in bad[:3])
        if strict:
            raise DataError(f"{len(bad)} unreadable image file(s) in {folder}, first: {first}; remove them or drop --strict")
        warnings.warn(f"skipped {len(bad)} unreadable image file(s) in {folder}, first: {first}", stacklevel=2)
    if not loaded:
        raise DataError(f"none of the {len(files)} image files in {folder} could be read")

    colour = any(im.mode not in ("1", "L", "I", "I;16", "F", "LA") for im, _ in loaded)
    mode = "RGB" if colour else "L"
    size = size or Counter(min(im.size) for im, _ in loaded).most_common(1)[0][0]
    arrays = []
    for im, _ in loaded:
        if im.mode in ("I", "I;16", "F"):  # wide greyscale: scale to 8 bits
            a = np.asarray(im, np.float64)
            im = Image.fromarray(np.uint8(255 * (a - a.min()) / max(np.ptp(a), 1e-12)))
        im = _fit(im.convert(mode), size)
        a = np.asarray(im, np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    labels = np.array([lab for _, lab in loaded], np.int64)
    return np.stack(arrays), labels, classes
