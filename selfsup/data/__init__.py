"""Datasets as uint8 (N, C, H, W) arrays with int64 labels (-1 = unlabeled), and few-label splits."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..registry import Registry
from . import formats, prepare
from .download import MNIST_PICKLE, data_root, fetch, unpack_if_needed
from .folder import read_folder
from .splits import few_labels


@dataclass
class ImageSet:
    """Images (N, C, H, W) uint8, in memory or memory-mapped, with labels (N,) int64; -1 marks unlabeled."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str] = field(default_factory=list)
    paths: list[str] | None = None  # each image's file, relative to its folder (folders only)
    train_size: int | None = None  # the side an encoder trains at on these images (None: their own side)

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if self.paths is not None and len(self.paths) != len(self.images):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.paths)} file paths")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        return self.images.shape[2], self.images.shape[3]

    @property
    def side(self) -> int:
        """The side an encoder trains at on these images by default."""
        return self.train_size or self.images.shape[2]

    def names(self) -> list[str]:
        """Each image's name: its file path for a folder, its index for a built-in dataset."""
        return list(self.paths) if self.paths is not None else [str(i) for i in range(len(self))]

    def subset(self, idx: np.ndarray) -> "ImageSet":
        idx = np.sort(np.asarray(idx))  # sorted reads are fast on memory maps
        paths = [self.paths[i] for i in idx] if self.paths is not None else None
        return ImageSet(self.name, np.ascontiguousarray(self.images[idx]), self.labels[idx], self.classes, paths,
                        self.train_size)

    def labeled(self) -> "ImageSet":
        return self if (self.labels >= 0).all() else self.subset(np.flatnonzero(self.labels >= 0))


DATASETS: Registry = Registry("dataset")


def _need(folder: Path, files: list[str], name: str) -> None:
    from .download import SOURCES

    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        archive = SOURCES[name][0].filename
        raise DataError(f"{name} not found ({folder / missing[0]} is missing); run `selfsup data fetch {name}`, "
                        f"or put {archive} in {folder.parent}/ when offline")


@DATASETS.register("digits", "scikit-learn's bundled 8x8 digits (1797 images); fixed 80/20 train/test split")
def _digits(split: str, root: Path) -> ImageSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255 / 16)).astype(np.uint8)[:, None]  # values 0..16 -> 0..255
    y = d.target.astype(np.int64)
    test = np.random.default_rng(0).random(len(y)) < 0.2  # fixed forever: never tune on it
    keep = test if split == "test" else ~test
    return ImageSet("digits", x[keep], y[keep], [str(i) for i in range(10)])


@DATASETS.register("mnist", "MNIST handwritten digits, 60k train / 10k test, 28x28 grey (IDX files or mnist.pkl.gz)")
def _mnist(split: str, root: Path) -> ImageSet:
    folder = root / "mnist"
    stem = {"train": "train", "test": "t10k"}[split]
    idx = [f"{stem}-images-idx3-ubyte.gz", f"{stem}-labels-idx1-ubyte.gz"]
    if all((folder / f).exists() for f in idx):
        x, y = formats.read_idx(folder / idx[0]), formats.read_idx(folder / idx[1])
        if len(x) != len(y):
            raise DataError(f"{folder}: {len(x)} images but {len(y)} labels; re-fetch mnist")
    elif (folder / MNIST_PICKLE).exists():
        x, y = formats.read_mnist_pickle(folder / MNIST_PICKLE)[split]
    else:
        raise DataError(f"mnist not found in {folder}; run `selfsup data fetch mnist` (or put the IDX .gz files or {MNIST_PICKLE} there)")
    return ImageSet("mnist", x, y, [str(i) for i in range(10)])


def _cifar(name: str, split: str, root: Path, sub: str, train: list[str], test: list[str], meta: tuple[str, str], label_key: str):
    folder = root / name
    unpack_if_needed(name, folder)
    folder = folder / sub
    files = train if split == "train" else test
    _need(folder, files + [meta[0]], name)
    x, y = formats.read_cifar(folder, files, label_key)
    return ImageSet(name, x, y, formats.read_cifar_names(folder / meta[0], meta[1]))


@DATASETS.register("cifar10", "CIFAR-10, 50k train / 10k test, 32x32 colour, 10 classes (python pickle batches)")
def _cifar10(split: str, root: Path) -> ImageSet:
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _cifar("cifar10", split, root, "cifar-10-batches-py", train, ["test_batch"], ("batches.meta", "label_names"), "labels")


@DATASETS.register("cifar100", "CIFAR-100, 50k train / 10k test, 32x32 colour, 100 fine classes")
def _cifar100(split: str, root: Path) -> ImageSet:
    return _cifar("cifar100", split, root, "cifar-100-python", ["train"], ["test"], ("meta", "fine_label_names"), "fine_labels")


@DATASETS.register("stl10", "STL-10, 5k train / 8k test / 100k unlabeled, 96x96 colour (binary files, memory-mapped)")
def _stl10(split: str, root: Path) -> ImageSet:
    folder = root / "stl10"
    unpack_if_needed("stl10", folder)
    folder = folder / "stl10_binary"
    _need(folder, [f"{split}_X.bin"], "stl10")
    x, y = formats.read_stl10(folder, split)
    names_file = folder / "class_names.txt"
    classes = names_file.read_text().split() if names_file.exists() else [str(i) for i in range(10)]
    return ImageSet("stl10", x, y, classes)


SPLITS = {"digits": ("train", "test"), "mnist": ("train", "test"), "cifar10": ("train", "test"),
          "cifar100": ("train", "test"), "stl10": ("train", "test", "unlabeled")}


def load(name: str, split: str = "train", root: str | Path | None = None, strict: bool = False,
         size: int | None = None, labels: str | Path | None = None, accelerator: str = "auto") -> ImageSet:
    """Load a dataset split by name; `folder:PATH` reads an image folder; `a+b` joins splits (e.g. stl10 train+unlabeled).

    strict: an image folder with unreadable files is an error instead of a warning that skips them.
    size: the side an encoder trains at on a folder's images (None: folder.train_side's default for the device);
    they are kept at folder.store_side. A folder's prepared copy is read where there is one (`selfsup data
    prepare`); a folder whose pixels would take more than `in_memory_bytes()` is prepared first, else it is decoded
    into memory. labels: a CSV of path,label for a folder (see folder.plan)."""
    if name.startswith("folder:"):
        return _folder(name, split, Path(root).expanduser() if root else None, strict, size, labels, accelerator)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS.names())}, or folder:PATH")
    root = Path(root).expanduser() if root else data_root()
    parts = []
    for s in split.split("+"):
        if s not in SPLITS[name]:
            raise DataError(f"{name} has no split {s!r}; choose from: {', '.join(SPLITS[name])}")
        parts.append(DATASETS.get(name)(s, root))
    if len(parts) == 1:
        return parts[0]
    return ImageSet(name, np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]), parts[0].classes)


def in_memory_bytes() -> int:
    """The most pixels a folder is decoded into memory with: 1 GB, or a quarter of the memory available now."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        avail = 1 << 32
    return min(1 << 30, avail // 4)


def _folder(name: str, split: str, root: Path | None, strict: bool, size: int | None, labels, accelerator: str
            ) -> ImageSet:
    from . import folder as fol

    path = name[len("folder:"):]
    p = fol.plan(path, labels=labels)
    natural, colour = prepare.natural_size(p, root, labels)
    side = fol.store_side(natural, size, accelerator)
    copy = prepare.find(path, side, root, labels)
    pixels = sum(len(f) for f in p.files.values()) * (3 if colour else 1) * side * side
    if copy is None and pixels > in_memory_bytes():
        import sys

        print(f"folder:{path}: {pixels / 1e9:.1f} GB of pixels at {side} px is more than fits in memory; preparing a "
              f"memory-mapped copy once (resumable)", file=sys.stderr, flush=True)
        copy = prepare.prepare(path, size, root, labels=labels, accelerator=accelerator,
                               log=lambda m: print(m, file=sys.stderr))
    splits = split.split("+")
    if copy is not None:
        x, y, classes, paths = prepare.open_prepared(copy, path, splits, strict, labels)
    else:
        fol.plan(path, splits, labels)  # the layout's own one-line error for a split it has not
        x, y, paths = fol.read_splits(p, splits, side, colour, strict)
        classes = p.classes
    return ImageSet(name, x, y, classes, paths, fol.train_side(natural, size, accelerator))


def load_for(cfg, split: str | None = None) -> ImageSet:
    """The images a PretrainConfig `cfg` pretrains on (or its `split`)."""
    return load(cfg.dataset, split or cfg.split, cfg.data_root, cfg.strict, cfg.image_size, cfg.labels, cfg.accelerator)


def with_data_side(cfg, data: ImageSet):
    """`cfg` with the side a folder of photos trains at written in, where it differs from the kept images' side,
    so that the encoder, its views and every later evaluation use it."""
    if cfg.image_size is None and data.side != data.size[0]:
        return cfg.override(image_size=data.side)
    return cfg


def has_unlabeled_split(name: str, root: str | Path | None = None, labels: str | None = None) -> bool:
    """Whether `name` has unlabeled images beside its training split (STL-10's unlabeled, a folder's unlabeled/)."""
    if labels:  # every image under the folder is in the pool already
        return False
    if name.startswith("folder:"):
        return (Path(name[len("folder:"):]).expanduser() / "unlabeled").is_dir()
    return "unlabeled" in SPLITS.get(name, ())


def has_test_split(name: str, labels: str | None = None) -> bool:
    """Whether `name` has a test split: every built-in dataset, a folder with labels (held out from them) and a
    folder of class or split subfolders; a flat folder has none until it is labeled."""
    if labels or not name.startswith("folder:"):
        return True
    from . import folder as fol

    root = Path(name[len("folder:"):]).expanduser()
    return root.is_dir() and fol.has_split(root, fol.layout(root), "test")


__all__ = ["ImageSet", "DATASETS", "load", "fetch", "few_labels", "data_root", "read_folder", "SPLITS"]
