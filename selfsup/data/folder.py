"""Read a folder of images.

Layouts:
- PATH/train/CLASS/*, PATH/test/CLASS/* (or val/), optionally PATH/unlabeled/*: those are the splits;
  `unlabeled` joins pretraining only (split "train+unlabeled").
- PATH/CLASS/*: a fixed, stratified held-out test split (HOLDOUT of each class, seed HOLDOUT_SEED, drawn from the
  file list, so an unreadable file never moves it); "train" is the rest. The test split is never the training images.
  Two or more subfolders hold images and PATH holds none of its own; a class's images may lie at any depth in it.
- PATH/* (flat): unlabeled images, at any depth; fine for pretraining, refused where labels are needed. Images
  directly in PATH beside subfolders (a camera or phone dump beside its albums), or a single subfolder (DCIM/),
  make a folder flat (`is_flat`).

Reading has three steps, shared by the in-memory path and `selfsup data prepare` (prepare.py), so both give the
same pixels: `plan` lists the files of each split with their labels; `scan` reads the headers of the files that
decide the common size (the most common shorter side) and whether the set has colour; `decode_files` decodes
and fits each file, in worker processes when there are many.

Sides: photos are never decoded at their own size unless asked. The encoder trains at `train_side` (TRAIN_SIDE:
64 px on a CPU, 224 px on a GPU, or the folder's own side where it is smaller; `--image-size` sets it), and the
images are kept at `store_side`, MARGIN times that, so that a random-resized crop still has detail to resize from
(bench/README.md, "Photos of any size").

Labels from a file: `plan(path, labels=CSV)` takes every image under the folder, at any depth, as one pool, with
the labels the CSV gives (`labels_csv.py`) and -1 elsewhere; the test split is held out from the labeled files
(HOLDOUT of each class, HOLDOUT_SEED), and everything else is the training split.

Decoding: JPEGs with simplejpeg (libjpeg-turbo, scaled in the DCT to the smallest size at least the target),
everything else and any JPEG it refuses with Pillow. Measured in bench/README.md, "Decoders".
"""
from __future__ import annotations

import io
import multiprocessing
import os
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import DataError

HOLDOUT, HOLDOUT_SEED = 0.2, 30_011  # the held-out test split of a folder of class subfolders
GREY_MODES = ("1", "L", "I", "I;16", "F", "LA")
MAX_PIXELS = 64_000_000  # larger claimed sizes (decompression bombs, absurd headers) are skipped unread
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                  ".avif", ".heic", ".heif"}
HEIF_SUFFIXES = {".heic", ".heif"}  # a phone's own format: read with pillow-heif (`pip install 'selfsup[heic]'`)
SPLIT_ORDER = ("train", "unlabeled", "test")  # the order of the splits in a prepared copy
PARALLEL_MIN = 2048  # fewer files are read in this process
TRAIN_SIDE = {"cpu": 64, "gpu": 224}  # the side the encoder trains at by default (bench/README.md, "Photos of any size")
MARGIN = 1.5  # stored side / training side: a crop of 44% of the area still resizes down, never up
TASK = 512  # files per task of a worker process
HEAVY_BYTES = 64_000  # files larger than this on average are photos: decoded in HEAVY_TASK-file tasks
HEAVY_TASK, HEAVY_PARALLEL_MIN = 16, 32
EXIF_SEARCH = 65_536  # a JPEG's EXIF block (APP1) comes first and is at most 64 KB

try:  # libjpeg-turbo with DCT scaling: 4x Pillow's speed on 32 px JPEGs here (bench/README.md, "Decoders")
    import simplejpeg
except ImportError:  # pragma: no cover - a core dependency; Pillow reads every file without it
    simplejpeg = None


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _holds_images(folder: Path) -> bool:
    """Whether any image file lies under `folder`, at any depth (hidden folders left out); stops at the first."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in filenames):
            return True
    return False


def is_flat(folder: Path) -> bool:
    """Whether a folder's images are one unlabeled pool rather than one subfolder per class: it has images of its
    own (a class-folder dataset has none at its top; a camera or phone dump has them beside its albums), or fewer
    than two subfolders that hold images (one class is no classification). A flat folder's images are read at any
    depth."""
    return bool(_list_images(folder)) or sum(map(_holds_images, _subfolders(folder))) < 2


def list_files(folder: Path, classes: list[str] | None = None, flat: bool | None = None
               ) -> tuple[list[tuple[Path, int]], list[str]]:
    """The image files of one folder with their labels: one subfolder per class (images at any depth inside it), or
    flat (label -1, images at any depth). `classes` fixes the class order (another split's); `flat` None decides by
    `is_flat`, and a folder that must hold classes (train/ and test/ of the split layout) passes False."""
    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist; pass folder:PATH with a directory of images")
    if flat is None:
        flat = classes is None and is_flat(folder)
    if not flat:
        subdirs = _subfolders(folder)
        listed = {d: list_tree(d) for d in subdirs}
        empty = [d.name for d in subdirs if not listed[d]]
        if empty and len(empty) < len(subdirs):
            warnings.warn(f"ignored {len(empty)} class folder(s) with no images in {folder}: {', '.join(empty[:5])}", stacklevel=3)
        subdirs = [d for d in subdirs if listed[d]]
        loose = _list_images(folder)
        if loose and subdirs:
            warnings.warn(f"{len(loose)} image(s) directly in {folder} are left out: beside subfolders, every image "
                          f"belongs to a class subfolder; to use them all, label by file with --labels FILE.csv",
                          stacklevel=3)
        if classes is None:
            classes = [d.name for d in subdirs]
        unknown = [d.name for d in subdirs if d.name not in classes]
        if unknown:
            raise DataError(f"{folder} has class folder(s) {', '.join(unknown[:5])} that the training split has not; "
                            f"use the same class names in every split")
        files = [(p, classes.index(d.name)) for d in subdirs for p in listed[d]]
    else:
        classes = []
        files = [(p, -1) for p in list_tree(folder)]
        parts = [p.relative_to(folder).parts for p, _ in files]
        albums = sorted({q[0] for q in parts if len(q) > 1}) if any(len(q) == 1 for q in parts) else []
        if len(albums) >= 2:  # could have been meant as classes: say how it was read
            shown = ", ".join(albums[:3]) + (", ..." if len(albums) > 3 else "")
            warnings.warn(f"{folder} has images of its own beside {len(albums)} subfolders of images ({shown}): "
                          f"read as one unlabeled pool; if the subfolders are "
                          f"classes, move the loose images into them, or label by file with --labels FILE.csv",
                          stacklevel=3)
    if not files:
        others = [p.name for p in folder.rglob("*") if p.is_file()]
        seen = f" (only {len(others)} other file(s), e.g. {', '.join(others[:3])})" if others else ""
        raise DataError(f"no images found in {folder}{seen}; put {'/'.join(sorted(IMAGE_SUFFIXES))} files there, "
                        f"one subfolder per class (or flat for unlabeled)")
    return files, classes or []


@dataclass
class Plan:
    """What reading a folder means: the files of each split with their labels, and the files whose headers decide
    the common size and colour."""

    root: Path
    layout: str
    files: dict[str, list[tuple[Path, int]]]  # split -> [(path, label)], in SPLIT_ORDER
    classes: list[str]
    reference: list[Path]


def plan(path: str | Path, splits: Iterable[str] | None = None, labels: str | Path | None = None) -> Plan:
    """The files of `splits` (default: every split the folder has) of an image folder; see the layouts above.
    `labels`: a CSV of path,label; every image under the folder is then one pool labeled by it."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; pass folder:PATH with a directory of images")
    if labels is not None:
        return _labeled_plan(root, labels, splits)
    kind = layout(root)
    wanted = list(splits) if splits is not None else [s for s in SPLIT_ORDER if has_split(root, kind, s)]
    for s in wanted:
        if s not in SPLIT_ORDER:
            raise DataError(f"folder:{root} has no split {s!r}; choose from: train, test, unlabeled")
    files: dict[str, list[tuple[Path, int]]] = {}
    if kind == "flat":
        if "test" in wanted:
            raise DataError(f"{root} is a flat folder of unlabeled images: it has no labels to test on; put the labeled "
                            f"images in class subfolders (PATH/CLASS/*.png) or in PATH/train/CLASS and PATH/test/CLASS")
        if "unlabeled" in wanted:
            raise DataError(f"{root} is a flat folder: all its images are the unlabeled train split; use --split train")
        every, classes = list_files(root, flat=True)
        files["train"], reference = every, [p for p, _ in every]
    elif kind == "classes":
        if "unlabeled" in wanted:
            raise DataError(f"{root} has no unlabeled/ subfolder; add PATH/train, PATH/test and PATH/unlabeled for that")
        every, classes = list_files(root, flat=False)
        test = set(holdout(np.array([y for _, y in every], np.int64)).tolist())
        for s in wanted:
            files[s] = [f for i, f in enumerate(every) if (i in test) == (s == "test")]
        reference = [p for p, _ in every]
    else:
        train, classes = list_files(root / "train", flat=False)
        reference = [p for p, _ in train]
        for s in wanted:
            if s == "train":
                files[s] = train
                continue
            sub = next((root / n for n in (("test", "val") if s == "test" else ("unlabeled",)) if (root / n).is_dir()), None)
            if sub is None:
                raise DataError(f"{root} has train/ but no {'test/ or val/' if s == 'test' else 'unlabeled/'} subfolder")
            listed, _ = list_files(sub, *((None, True) if s == "unlabeled" else (classes, False)))
            files[s] = [(p, -1) for p, _ in listed] if s == "unlabeled" else listed
    ordered = {s: files[s] for s in SPLIT_ORDER if s in files}
    return Plan(root, kind, ordered, classes, reference)


def list_tree(root: Path) -> list[Path]:
    """Every image file under `root`, at any depth (hidden folders left out), sorted by relative path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _labeled_plan(root: Path, labels: str | Path, splits: Iterable[str] | None) -> Plan:
    from .labels_csv import class_holdout, read_labels

    every = list_tree(root)
    if not every:
        raise DataError(f"no images found in {root}; put {'/'.join(sorted(IMAGE_SUFFIXES))} files there")
    named = read_labels(labels, root, every)  # relative path -> class name
    classes = sorted(set(named.values()))
    y = np.array([classes.index(named[p.relative_to(root).as_posix()]) if p.relative_to(root).as_posix() in named
                  else -1 for p in every], np.int64)
    test = set(class_holdout(y, classes, labels, holdout).tolist())
    wanted = list(splits) if splits is not None else ["train", "test"]
    files = {}
    for s in wanted:
        if s not in ("train", "test"):
            raise DataError(f"with a labels file, folder:{root} has the splits train and test (held out from the "
                            f"labeled files), not {s!r}")
        files[s] = [(p, int(y[i])) for i, p in enumerate(every) if (i in test) == (s == "test")]
    return Plan(root, "labels", {s: files[s] for s in SPLIT_ORDER if s in files}, classes, every)


def has_split(root: Path, kind: str, split: str) -> bool:
    if split == "train":
        return True
    if kind == "splits":
        return any((root / n).is_dir() for n in (("test", "val") if split == "test" else ("unlabeled",)))
    return kind == "classes" and split == "test"


def on_gpu(accelerator: str = "auto") -> bool:
    from ..engine import accelerator_for

    return accelerator_for(accelerator) == "cuda"


def train_side(natural: int, image_size: int | None = None, accelerator: str = "auto") -> int:
    """The side the encoder trains at on a folder whose most common shorter side is `natural`."""
    if image_size:
        return image_size
    return min(natural, TRAIN_SIDE["gpu" if on_gpu(accelerator) else "cpu"])


def store_side(natural: int, image_size: int | None = None, accelerator: str = "auto") -> int:
    """The side images are decoded and kept at: MARGIN times the training side, never above the folder's own."""
    side = train_side(natural, image_size, accelerator)
    return max(1, min(natural, round(side * MARGIN))) if side < natural else side


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


_HEIF: bool | None = None  # whether pillow-heif is registered here (None: not looked for yet)


def heif_readable() -> bool:
    """Whether HEIC/HEIF files can be read here: pillow-heif installed (then registered with Pillow, once per
    process)."""
    global _HEIF
    if _HEIF is None:
        try:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _HEIF = True
        except ImportError:
            _HEIF = False
    return _HEIF


def _check_kind(path: Path) -> None:
    if path.suffix.lower() in HEIF_SUFFIXES and not heif_readable():
        raise DataError("HEIC photos need pillow-heif: pip install 'selfsup[heic]', or convert them to JPEG")


def header(path: Path) -> tuple[int, bool]:
    """(shorter side, has colour) from a file's header; raises on an unreadable or oversized file."""
    from PIL import Image

    _check_kind(path)
    with Image.open(path) as im:  # reads the header only
        if im.width * im.height > MAX_PIXELS:
            raise DataError(f"{im.width}x{im.height} pixels is more than {MAX_PIXELS:,}")
        return min(im.size), im.mode not in GREY_MODES


def upright(a: np.ndarray, orientation: int) -> np.ndarray:
    """A square image (C, S, S) as its EXIF orientation (tag 0x0112, 1-8) says to show it: a phone stores a portrait
    photo as the sensor's landscape rows with orientation 6. The square centre crop commutes with these eight turns
    and mirrors, so they can follow it."""
    hw = (1, 2)
    turned = {2: lambda x: x[:, :, ::-1], 3: lambda x: np.rot90(x, 2, hw), 4: lambda x: x[:, ::-1, :],
              5: lambda x: x.transpose(0, 2, 1), 6: lambda x: np.rot90(x, -1, hw),
              7: lambda x: np.rot90(x.transpose(0, 2, 1), 2, hw), 8: lambda x: np.rot90(x, 1, hw)}
    return np.ascontiguousarray(turned[orientation](a)) if orientation in turned else a


def orientation(im) -> int:
    """An opened image's EXIF orientation (1: as stored, also where there is none or it cannot be read)."""
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block leaves the pixels readable: show them as stored
        return 1


def jpeg_orientation(data: bytes) -> int:
    """A JPEG file's EXIF orientation from its header (1 where it has no EXIF block, as small JPEGs rarely do, or
    where the header cannot be read: the pixels decoded already)."""
    from PIL import Image

    if b"Exif\x00" not in data[:EXIF_SEARCH]:
        return 1
    try:
        with Image.open(io.BytesIO(data)) as im:  # the header only
            return orientation(im)
    except Exception:  # noqa: BLE001 - as in `orientation`
        return 1


def decode(path: Path, size: int, colour: bool) -> np.ndarray:
    """One file as uint8 (C, size, size): converted to RGB or grey, shorter side to `size`, centre-cropped, and
    turned upright as its EXIF orientation says."""
    from PIL import Image

    _check_kind(path)
    data = path.read_bytes()
    if simplejpeg is not None and data[:3] == b"\xff\xd8\xff":
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            if h * w > MAX_PIXELS:
                raise DataError(f"{w}x{h} pixels is more than {MAX_PIXELS:,}")
            a = simplejpeg.decode_jpeg(data, "RGB" if colour else "GRAY", min_height=size, min_width=size)
            if a.shape[:2] != (size, size):
                a = np.asarray(_fit(Image.fromarray(a if colour else a[..., 0]), size))
            a = a.transpose(2, 0, 1) if a.ndim == 3 and colour else a.reshape(1, size, size)
            return upright(a, jpeg_orientation(data))
        except ValueError:  # a JPEG libjpeg-turbo refuses here (CMYK, damaged): Pillow decides
            pass
    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > MAX_PIXELS:
            raise DataError(f"{im.width}x{im.height} pixels is more than {MAX_PIXELS:,}")
        mode = "RGB" if colour else "L"
        turn = orientation(im)
        if im.format == "JPEG":
            im.draft(mode, (size, size))  # DCT scaling: decodes at the smallest size at least the target
        im.load()
        if im.mode in ("I", "I;16", "F"):  # wide greyscale: scale to 8 bits
            a = np.asarray(im, np.float64)
            im = Image.fromarray(np.uint8(255 * (a - a.min()) / max(np.ptp(a), 1e-12)))
        a = np.asarray(_fit(im.convert(mode), size), np.uint8)
    return upright(a[None] if a.ndim == 2 else a.transpose(2, 0, 1), turn)


def decoder_versions() -> dict:
    import PIL

    return {"jpeg": f"simplejpeg {simplejpeg.__version__}" if simplejpeg else f"Pillow {PIL.__version__}",
            "other": f"Pillow {PIL.__version__}"}


def _headers(paths: list[Path]) -> list[tuple[int, bool] | str]:
    out = []
    for p in paths:
        try:
            out.append(header(p))
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds on corrupt files; each is one unreadable image
            out.append(f"{type(e).__name__}: {str(e)[:200]}")
    return out


_IN_MEMORY = re.compile(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>")  # says nothing to a person


def _decode_task(task: tuple[list[Path], int, bool]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode a list of files: (images of the readable ones (n, C, S, S), [(position, reason)] of the others)."""
    paths, size, colour = task
    good, bad = [], []
    for i, p in enumerate(paths):
        try:
            good.append(decode(p, size, colour))
        except Exception as e:  # noqa: BLE001 - as above
            bad.append((i, f"{type(e).__name__}: {_IN_MEMORY.sub('', str(e))[:200]}"))
    c = 3 if colour else 1
    return (np.stack(good) if good else np.empty((0, c, size, size), np.uint8)), bad


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask (which containers and `taskset` narrow), and no more
    than its cgroup's CPU quota (a container limited to 1.5 CPUs gets 2 workers, not one per core it can see)."""
    import math

    from ..threads import cgroup_quota

    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def pool_map(fn: Callable, tasks: list, workers: int | None = None) -> Iterator:
    """fn over tasks, in order: in worker processes when there are several tasks and cores, else here."""
    workers = min(workers or usable_cores(), len(tasks))
    if workers <= 1:
        yield from map(fn, tasks)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")  # fork: no re-import of torch
    with ctx.Pool(workers, initializer=_ignore_sigint) as pool:  # Ctrl-C reaches the parent alone: one line, no
        yield from pool.imap(fn, tasks)  # traceback per worker; leaving the block terminates the workers


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def scan(paths: list[Path], folder: Path, workers: int | None = None) -> tuple[int, bool]:
    """The most common shorter side and whether any image has colour, from the files' headers alone."""
    chunks = [paths[i:i + 4 * TASK] for i in range(0, len(paths), 4 * TASK)]
    sides, colour, why = Counter(), False, ""
    for part in pool_map(_headers, chunks, workers if len(paths) >= PARALLEL_MIN else 1):
        for h in part:
            if not isinstance(h, str):
                sides[h[0]] += 1
                colour |= h[1]
            why = why or (h if isinstance(h, str) else "")
    if not sides:
        raise DataError(f"none of the {len(paths)} image files in {folder} could be read (all unreadable, first: "
                        f"{paths[0]}: {why[:120]}); put readable images there")
    return sides.most_common(1)[0][0], colour


def heavy(paths: list[Path]) -> bool:
    """Whether these are photographs rather than small images: files of more than HEAVY_BYTES on average (of the
    first 64). Photos are decoded in small tasks on every core from a few dozen files on, with a progress bar."""
    sizes = []
    for p in paths[:64]:
        try:
            sizes.append(p.stat().st_size)
        except OSError:
            pass
    return bool(sizes) and sum(sizes) / len(sizes) > HEAVY_BYTES


def decode_files(files: list[tuple[Path, int]], size: int, colour: bool, workers: int | None = None,
                 progress: bool = True):
    """(images uint8 (N, C, size, size), labels, [(path, reason)] of the files skipped), in file order."""
    from tqdm import tqdm

    paths = [p for p, _ in files]
    big = heavy(paths)
    step = HEAVY_TASK if big else TASK
    tasks = [(paths[i:i + step], size, colour) for i in range(0, len(paths), step)]
    arrays, bad = [], []
    parallel = len(paths) >= (HEAVY_PARALLEL_MIN if big else PARALLEL_MIN)
    bar = tqdm(total=len(paths), unit="img", desc="decode", file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
               disable=not (progress and big and len(paths) > HEAVY_PARALLEL_MIN))
    for t, (x, b) in enumerate(pool_map(_decode_task, tasks, workers if parallel else 1)):
        arrays.append(x)
        bad += [(t * step + i, why) for i, why in b]
        bar.update(len(tasks[t][0]))
    bar.close()
    skipped = {i for i, _ in bad}
    labels = np.array([y for i, (_, y) in enumerate(files) if i not in skipped], np.int64)
    return np.concatenate(arrays), labels, [(paths[i], why) for i, why in bad]


def report_skipped(folder: Path, bad: list[tuple[Path, str]], total: int, strict: bool) -> None:
    """A warning that names the unreadable files (an error with `strict`, or when none could be read)."""
    if not bad:
        return
    first = ", ".join(str(p) for p, _ in bad[:3])
    if strict:
        raise DataError(f"{len(bad)} unreadable image file(s) in {folder}, first: {first}; remove them or drop --strict")
    if len(bad) == total:
        raise DataError(f"none of the {total} image files in {folder} could be read, first: {first} ({bad[0][1][:100]})")
    warnings.warn(f"skipped {len(bad)} unreadable image file(s) in {folder}, first: {first} ({bad[0][1][:80]})",
                  stacklevel=3)


def read_folder(folder: str | Path, size: int | None = None, strict: bool = False, classes: list[str] | None = None,
                colour: bool | None = None):
    """Return (images uint8 (N, C, H, W), labels int64, class names) of one folder (class subfolders or flat).

    Greyscale folders give 1 channel; if any image has colour, all are converted to RGB
    (RGBA drops alpha, palette images are expanded). Images of other sizes are resized to
    `size` (default: the most common size) by shorter side, then centre-cropped.
    Unreadable files are skipped with a warning, or raise with `strict=True`. `classes` fixes the class order
    (another split's); `colour` forces RGB (True) or grey (False).
    """
    folder = Path(folder).expanduser()
    files, classes = list_files(folder, classes)
    if size is None or colour is None:
        side, has_colour = scan([p for p, _ in files], folder)
        size, colour = size or side, has_colour if colour is None else colour
    return (*_read(folder, files, size, colour, strict), classes)


def _read(folder: Path, files: list[tuple[Path, int]], size: int, colour: bool, strict: bool):
    x, y, bad = decode_files(files, size, colour)
    report_skipped(folder, bad, len(files), strict)
    return x, y


def layout(root: Path) -> str:
    """'splits' (train/ and test/ subfolders), 'classes' (class subfolders) or 'flat' (unlabeled; `is_flat`)."""
    if (root / "train").is_dir():
        return "splits"
    return "flat" if is_flat(root) else "classes"


def holdout(labels: np.ndarray) -> np.ndarray:
    """The fixed, stratified test split of a folder of class subfolders: HOLDOUT of each class (at least one image
    of every class with two or more), drawn with HOLDOUT_SEED. Indices, sorted."""
    rng, chosen = np.random.default_rng(HOLDOUT_SEED), []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(HOLDOUT * len(idx))) if len(idx) > 1 else 0
        chosen.append(rng.choice(idx, k, replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.array([], np.int64)


def load_folder(path: str | Path, split: str = "train", strict: bool = False, size: int | None = None):
    """(images, labels, class names) of one split (or splits joined with +) of an image folder, decoded into memory
    at `size` (default: the folder's most common shorter side); see the layouts above."""
    p = plan(path, split.split("+"))
    natural, colour = scan(p.reference, p.root)
    x, y, _ = read_splits(p, split.split("+"), size or natural, colour, strict)
    return x, y, p.classes


def read_splits(p: Plan, splits: list[str], size: int, colour: bool, strict: bool = False):
    """(images, labels, relative paths of the images kept) of `splits` of plan `p`, decoded into memory."""
    xs, ys, paths = [], [], []
    for s in splits:
        x, y, bad = decode_files(p.files[s], size, colour)
        report_skipped(p.root, bad, len(p.files[s]), strict)
        skipped = {q for q, _ in bad}
        xs.append(x)
        ys.append(y)
        paths += [q.relative_to(p.root).as_posix() for q, _ in p.files[s] if q not in skipped]
    if len(xs) == 1:
        return xs[0], ys[0], paths
    return np.concatenate(xs), np.concatenate(ys), paths


def split_info(path: str | Path, labels: str | None = None) -> dict:
    """How a folder's splits were made, for results.json and the report."""
    root = Path(path).expanduser()
    if labels:
        return {"layout": "every image under the folder; labels from a file", "labels_file": str(labels),
                "test_split": f"held out from the labeled files: {HOLDOUT:.0%} of each class (at least one), "
                              f"seed {HOLDOUT_SEED}"}
    kind = layout(root)
    if kind == "classes":
        return {"layout": "class subfolders", "test_split": f"held out: {HOLDOUT:.0%} of each class, seed {HOLDOUT_SEED}"}
    if kind == "splits":
        return {"layout": "train/ and test/ subfolders", "unlabeled": (root / "unlabeled").is_dir()}
    return {"layout": "flat (unlabeled)"}
