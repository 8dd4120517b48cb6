"""Small files in each dataset's real on-disk format (IDX, CIFAR pickles, STL-10 binaries), for readers and recipes."""
import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path, arr):
    arr = np.asarray(arr, np.uint8)
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.tobytes())


def cifar_batch(path, x, y, label_key):
    with open(path, "wb") as f:
        pickle.dump({b"data": x.reshape(len(x), -1), label_key.encode(): list(y), b"batch_label": b"x"}, f, protocol=2)


def stratified(rng, classes: int, per_class: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Random colour images, `per_class` of every class: (N, 3, side, side) uint8 and labels."""
    y = np.repeat(np.arange(classes), per_class)
    return rng.integers(0, 256, (len(y), 3, side, side), dtype=np.uint8), y


def write_mnist(root: Path, rng, per_class: int = 4) -> None:
    d = root / "mnist"
    d.mkdir(parents=True)
    for stem in ("train", "t10k"):
        y = np.repeat(np.arange(10), per_class)
        write_idx(d / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (len(y), 28, 28)))
        write_idx(d / f"{stem}-labels-idx1-ubyte.gz", y)


def write_cifar10(root: Path, rng, per_class: int = 5) -> None:
    d = root / "cifar10" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    x, y = stratified(rng, 10, per_class, 32)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), 1):
        cifar_batch(d / f"data_batch_{i}", x[part], y[part], "labels")
    cifar_batch(d / "test_batch", *stratified(rng, 10, 2, 32), "labels")
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                             "frog", "horse", "ship", "truck")]}, f)


def write_cifar100(root: Path, rng, per_class: int = 3) -> None:
    d = root / "cifar100" / "cifar-100-python"
    d.mkdir(parents=True)
    cifar_batch(d / "train", *stratified(rng, 100, per_class, 32), "fine_labels")
    cifar_batch(d / "test", *stratified(rng, 100, 1, 32), "fine_labels")
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)


def write_stl10(root: Path, rng, per_class: int = 3, unlabeled: int = 20) -> None:
    d = root / "stl10" / "stl10_binary"
    d.mkdir(parents=True)
    for split, n in (("train", per_class), ("test", 1)):
        x, y = stratified(rng, 10, n, 96)
        x.transpose(0, 1, 3, 2).tofile(d / f"{split}_X.bin")  # each plane column-major
        (y + 1).astype(np.uint8).tofile(d / f"{split}_y.bin")  # labels 1..10
    rng.integers(0, 256, (unlabeled, 3, 96, 96), dtype=np.uint8).transpose(0, 1, 3, 2).tofile(d / "unlabeled_X.bin")
    (d / "class_names.txt").write_text("\n".join(("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey",
                                                  "ship", "truck")))


WRITERS = {"mnist": write_mnist, "cifar10": write_cifar10, "cifar100": write_cifar100, "stl10": write_stl10}
