"""Readers for the on-disk formats of each dataset. Each returns uint8 (N, C, H, W) images."""
from __future__ import annotations

import gzip
import math
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError


def _open(path: Path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def _read_at_most(f, limit: int, block: int = 1 << 24) -> bytes:
    """Read up to `limit` bytes in blocks, so that a garbage header promising terabytes allocates only what is there."""
    parts, total = [], 0
    while total < limit:
        part = f.read(min(block, limit - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format): images come back as (N, 1, H, W) uint8, labels as (N,) int64."""
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08:
                raise DataError(f"{path} is not an unsigned-byte IDX file; re-fetch it with `selfsup data fetch mnist`")
            ndim = head[3]
            if ndim not in (1, 3):
                raise DataError(f"{path} has {ndim} dimensions; MNIST IDX files have 1 (labels) or 3 (images)")
            dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            expected = math.prod(dims)  # Python ints: no overflow on garbage headers
            data = np.frombuffer(_read_at_most(f, expected + 1), dtype=np.uint8)
    except (OSError, EOFError, struct.error, zlib.error) as e:
        raise DataError(f"{path} is unreadable ({e}); delete it and run `selfsup data fetch mnist`") from None
    if data.size != expected:
        raise DataError(f"{path} holds {data.size} bytes of data where its header says {expected}; delete it and re-fetch")
    data = data.reshape(dims)
    if ndim == 1:
        return data.astype(np.int64)
    return data.reshape(dims[0], 1, *dims[1:])


class _ArraysOnly(pickle.Unpickler):
    """An unpickler for dataset pickles (MNIST's, CIFAR's): numpy arrays, numbers, strings, bytes and containers.
    Anything else a file asks for (a function to call, a class to build) is refused, so reading runs no code."""

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"), ("numpy", "ndarray"),
               ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused {module}.{name}: a dataset pickle holds arrays, not code")


def load_arrays(f, encoding: str):
    """pickle.load for dataset files, through `_ArraysOnly`."""
    return _ArraysOnly(f, encoding=encoding).load()


def read_mnist_pickle(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read the classic `mnist.pkl.gz` (50k/10k/10k float32 in [0, 1)); 'train' is train + valid, as in the IDX release."""
    try:
        with gzip.open(path, "rb") as f:
            (xtr, ytr), (xva, yva), (xte, yte) = load_arrays(f, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - garbage can make the unpickler raise almost anything
        raise DataError(f"{path} is not a readable mnist.pkl.gz ({type(e).__name__}); delete it and run "
                        f"`selfsup data fetch mnist`") from None

    def to_u8(x):  # pixel values are multiples of 1/256
        return np.clip(np.rint(np.asarray(x, np.float32) * 256), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)

    try:
        out = {
            "train": (np.concatenate([to_u8(xtr), to_u8(xva)]), np.concatenate([ytr, yva]).astype(np.int64)),
            "test": (to_u8(xte), np.asarray(yte, np.int64)),
        }
    except (ValueError, TypeError) as e:
        raise DataError(f"{path} does not hold 28x28 MNIST arrays ({e}); delete it and re-fetch") from None
    for split, (x, y) in out.items():
        if len(x) != len(y) or y.ndim != 1:
            raise DataError(f"{path}: {split} has {len(x)} images but {len(y)} labels; delete it and re-fetch")
    return out


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = load_arrays(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - garbage can make the unpickler raise almost anything
        raise DataError(f"{path} is not a readable CIFAR batch ({type(e).__name__}); delete it and re-fetch") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR batch (it holds a {type(d).__name__}, not a dict); delete it and re-fetch")
    return d


def _key(d: dict, name: str):
    return d.get(name.encode(), d.get(name))


def read_cifar(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR python-pickle batches: rows of 3072 bytes, R then G then B planes of 32x32."""
    xs, ys = [], []
    for name in files:
        d = _unpickle(folder / name)
        data, labels = _key(d, "data"), _key(d, label_key)
        if data is None or labels is None:
            raise DataError(f"{folder / name} lacks 'data' or '{label_key}'; it is not a CIFAR batch")
        try:
            x, y = np.asarray(data, np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, np.int64).reshape(-1)
        except (ValueError, TypeError, OverflowError) as e:
            raise DataError(f"{folder / name} does not hold 32x32 colour images with labels ({e}); delete it and re-fetch") from None
        if len(x) != len(y):
            raise DataError(f"{folder / name} has {len(x)} images but {len(y)} labels; delete it and re-fetch")
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def read_cifar_names(path: Path, key: str) -> list[str]:
    names = _key(_unpickle(path), key) or []
    if not isinstance(names, (list, tuple)):
        raise DataError(f"{path} has no list of class names under {key!r}; delete it and re-fetch")
    return [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names]


def read_stl10(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map STL-10's binary files: each image is 3 planes of 96x96 stored column-major."""
    xpath = folder / f"{split}_X.bin"
    n_bytes = xpath.stat().st_size
    if n_bytes == 0 or n_bytes % (3 * 96 * 96):
        raise DataError(f"{xpath} has {n_bytes} bytes, not a whole number of 3x96x96 images; delete it and re-fetch")
    raw = np.memmap(xpath, dtype=np.uint8, mode="r", shape=(n_bytes // (3 * 96 * 96), 3, 96, 96))
    images = raw.transpose(0, 1, 3, 2)  # column-major planes -> (N, 3, H, W), still a view of the map
    ypath = folder / f"{split}_y.bin"
    if ypath.exists():
        labels = np.fromfile(ypath, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
        if len(labels) != len(images):
            raise DataError(f"{ypath} has {len(labels)} labels for {len(images)} images; re-fetch stl10")
    else:
        labels = np.full(len(images), -1, np.int64)
    return images, labels
