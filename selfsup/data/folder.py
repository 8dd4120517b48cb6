"""Read a folder of images.

Layouts:
- PATH/train/CLASS/*, PATH/test/CLASS/* (or val/), optionally PATH/unlabeled/*: those are the splits;
  `unlabeled` joins pretraining only (split "train+unlabeled").
- PATH/CLASS/*: a fixed, stratified held-out test split (HOLDOUT of each class, seed HOLDOUT_SEED);
  "train" is the rest. The test split is never the training images.
- PATH/* (flat): unlabeled images; fine for pretraining, refused where labels are needed.
"""
from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import DataError

HOLDOUT, HOLDOUT_SEED = 0.2, 30_011  # the held-out test split of a folder of class subfolders
GREY_MODES = ("1", "L", "I", "I;16", "F", "LA")
MAX_PIXELS = 64_000_000  # larger claimed sizes (decompression bombs, absurd headers) are skipped unread
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


def read_folder(folder: str | Path, size: int | None = None, strict: bool = False, classes: list[str] | None = None,
                colour: bool | None = None):
    """Return (images uint8 (N, C, H, W), labels int64, class names).

    Greyscale folders give 1 channel; if any image has colour, all are converted to RGB
    (RGBA drops alpha, palette images are expanded). Images of other sizes are resized to
    `size` (default: the most common size) by shorter side, then centre-cropped.
    Unreadable files are skipped with a warning, or raise with `strict=True`. `classes` fixes the class order
    (another split's); `colour` forces RGB (True) or grey (False).
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
        if classes is None:
            classes = [d.name for d in subdirs]
        unknown = [d.name for d in subdirs if d.name not in classes]
        if unknown:
            raise DataError(f"{folder} has class folder(s) {', '.join(unknown[:5])} that the training split has not; "
                            f"use the same class names in every split")
        files = [(p, classes.index(d.name)) for d in subdirs for p in listed[d]]
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
            with Image.open(path) as im:  # reads the header only
                if im.width * im.height > MAX_PIXELS:
                    raise DataError(f"{im.width}x{im.height} pixels is more than {MAX_PIXELS:,}")
                im.load()
                loaded.append((im.copy(), label))
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds on corrupt files; each is one unreadable image
            bad.append((path, e))
    if bad:
        first = ", ".join(str(p) for p, _ in bad[:3])
        if strict:
            raise DataError(f"{len(bad)} unreadable image file(s) in {folder}, first: {first}; remove them or drop --strict")
        warnings.warn(f"skipped {len(bad)} unreadable image file(s) in {folder}, first: {first} "
                      f"({type(bad[0][1]).__name__}: {str(bad[0][1])[:80]})", stacklevel=2)
    if not loaded:
        raise DataError(f"none of the {len(files)} image files in {folder} could be read")

    if colour is None:
        colour = any(im.mode not in GREY_MODES for im, _ in loaded)
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
    return np.stack(arrays), labels, classes or []


def layout(root: Path) -> str:
    """'splits' (train/ and test/ subfolders), 'classes' (class subfolders) or 'flat' (images only)."""
    if (root / "train").is_dir():
        return "splits"
    return "classes" if any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()) else "flat"


def _scan(folder: Path) -> tuple[int, bool]:
    """The most common shorter side and whether any image has colour, from the files' headers alone."""
    from PIL import Image

    sides, colour = Counter(), False
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            try:
                with Image.open(p) as im:
                    sides[min(im.size)] += 1
                    colour |= im.mode not in GREY_MODES
            except Exception:  # noqa: BLE001 - unreadable files are reported when they are read
                continue
    if not sides:
        raise DataError(f"no images found in {folder}; put image files there, one subfolder per class")
    return sides.most_common(1)[0][0], colour


def holdout(labels: np.ndarray) -> np.ndarray:
    """The fixed, stratified test split of a folder of class subfolders: HOLDOUT of each class (at least one image
    of every class with two or more), drawn with HOLDOUT_SEED. Indices, sorted."""
    rng, chosen = np.random.default_rng(HOLDOUT_SEED), []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(HOLDOUT * len(idx))) if len(idx) > 1 else 0
        chosen.append(rng.choice(idx, k, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], np.int64)


def load_folder(path: str | Path, split: str = "train", strict: bool = False):
    """(images, labels, class names) of one split (or splits joined with +) of an image folder; see the layouts above."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass folder:PATH with a directory of images")
    kind = layout(root)
    parts = []
    for s in split.split("+"):
        if s not in ("train", "test", "unlabeled"):
            raise DataError(f"folder:{root} has no split {s!r}; choose from: train, test, unlabeled")
        parts.append(_one_split(root, kind, s, strict))
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), parts[0][2]


def _one_split(root: Path, kind: str, split: str, strict: bool):
    if kind == "flat":
        if split == "test":
            raise DataError(f"{root} is a flat folder of unlabeled images: it has no labels to test on; put the labeled "
                            f"images in class subfolders (PATH/CLASS/*.png) or in PATH/train/CLASS and PATH/test/CLASS")
        return read_folder(root, strict=strict)
    if kind == "classes":
        if split == "unlabeled":
            raise DataError(f"{root} has no unlabeled/ subfolder; add PATH/train, PATH/test and PATH/unlabeled for that")
        x, y, classes = read_folder(root, strict=strict)
        test = holdout(y)
        keep = test if split == "test" else np.setdiff1d(np.arange(len(y)), test)
        return x[keep], y[keep], classes
    side, colour = _scan(root / "train")
    train_classes = [d.name for d in sorted((root / "train").iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if split == "train":
        return read_folder(root / "train", side, strict, colour=colour)
    sub = next((root / n for n in (("test", "val") if split == "test" else ("unlabeled",)) if (root / n).is_dir()), None)
    if sub is None:
        raise DataError(f"{root} has train/ but no {'test/ or val/' if split == 'test' else 'unlabeled/'} subfolder")
    x, y, _ = read_folder(sub, side, strict, classes=None if split == "unlabeled" else train_classes, colour=colour)
    return x, (np.full(len(y), -1, np.int64) if split == "unlabeled" else y), train_classes


def split_info(path: str | Path) -> dict:
    """How a folder's splits were made, for results.json and the report."""
    root = Path(path).expanduser()
    kind = layout(root)
    if kind == "classes":
        return {"layout": "class subfolders", "test_split": f"held out: {HOLDOUT:.0%} of each class, seed {HOLDOUT_SEED}"}
    if kind == "splits":
        return {"layout": "train/ and test/ subfolders", "unlabeled": (root / "unlabeled").is_dir()}
    return {"layout": "flat (unlabeled)"}
