"""Dataset readers on truncated, bit-flipped and garbage files: our DataError or a valid result, never a crash or hang."""
import dataclasses
import gzip
import io
import pickle
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from selfsup.config import PretrainConfig
from selfsup.data import formats
from selfsup.data.folder import read_folder
from selfsup.errors import DataError

FUZZ = settings(max_examples=60, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def idx_bytes(images: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, images.ndim) + struct.pack(f">{images.ndim}I", *images.shape) + images.tobytes()


def damaged(good: bytes):
    """Truncated at any point, with bytes overwritten anywhere, or plain garbage."""
    cut = st.integers(0, len(good)).map(lambda n: good[:n])
    flips = st.lists(st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda edits: bytes(_edit(bytearray(good), edits)))
    return st.one_of(cut, flips, st.binary(max_size=4 * len(good)))


def _edit(buf: bytearray, edits) -> bytearray:
    for i, v in edits:
        buf[i] = v
    return buf


SCRATCH = tempfile.TemporaryDirectory(prefix="selfsup-fuzz-")  # removed when the test process ends


def write(data: bytes, name: str) -> Path:
    folder = Path(tempfile.mkdtemp(dir=SCRATCH.name))
    path = folder / name
    path.write_bytes(data)
    return path


def must_be_clean(fn, *args):
    try:
        return fn(*args)
    except DataError:
        return None


GOOD_IDX = idx_bytes(np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4))


@FUZZ
@given(damaged(GOOD_IDX), st.booleans())
def test_idx(data, zipped):
    path = write(gzip.compress(data) if zipped else data, "x-idx3-ubyte" + (".gz" if zipped else ""))
    out = must_be_clean(formats.read_idx, path)
    assert out is None or out.dtype in (np.uint8, np.int64)


@FUZZ
@given(damaged(gzip.compress(GOOD_IDX)))
def test_idx_damaged_gzip_stream(data):
    must_be_clean(formats.read_idx, write(data, "x-idx3-ubyte.gz"))


def _mnist_pickle() -> bytes:
    x, y = np.zeros((2, 784), np.float32), np.array([1, 2])
    return pickle.dumps(((x, y), (x, y), (x, y)), protocol=2)


@FUZZ
@given(damaged(_mnist_pickle()))
def test_mnist_pickle(data):
    out = must_be_clean(formats.read_mnist_pickle, write(gzip.compress(data), "mnist.pkl.gz"))
    assert out is None or out["train"][0].shape[1:] == (1, 28, 28)


def _cifar_batch() -> bytes:
    return pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=2)


@FUZZ
@given(damaged(_cifar_batch()))
def test_cifar_batch(data):
    path = write(data, "data_batch_1")
    out = must_be_clean(formats.read_cifar, path.parent, ["data_batch_1"], "labels")
    assert out is None or (out[0].shape[1:] == (3, 32, 32) and len(out[0]) == len(out[1]))


@FUZZ
@given(st.integers(0, 3 * 3 * 96 * 96 + 5), st.integers(0, 6))
def test_stl10_sizes(n_bytes, n_labels):
    path = write(bytes(n_bytes), "train_X.bin")
    (path.parent / "train_y.bin").write_bytes(bytes([1]) * n_labels)
    out = must_be_clean(formats.read_stl10, path.parent, "train")
    assert out is None or len(out[0]) == len(out[1])


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buf, format="PNG")
    return buf.getvalue()


@FUZZ
@given(damaged(_png()), st.sampled_from(["a.png", "a.jpg", "a.gif"]))
def test_image_folder(data, name):
    import warnings

    path = write(data, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = must_be_clean(read_folder, path.parent)
    assert out is None or out[0].dtype == np.uint8


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims width x height pixels, then a few bytes of data: a decompression bomb's shape."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bombs_and_absurd_sizes_are_skipped_unread(tmp_path):
    """Claimed sizes of 10^10 pixels and more are skipped from the header alone (no memory is spent on them),
    with a warning that names them; --strict refuses the folder in one line."""
    import time
    import warnings

    from selfsup.data import load

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "good.png").write_bytes(_png())
    (tmp_path / "a" / "bomb.png").write_bytes(_png_claiming(100_000, 100_000))
    (tmp_path / "b" / "wide.png").write_bytes(_png_claiming(2**31 - 1, 1))
    (tmp_path / "b" / "text.png").write_text("not an image at all")
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        x, y, _ = read_folder(tmp_path)
    assert time.perf_counter() - t < 5 and len(x) == 2 and y.tolist() == [0, 1]
    assert any("skipped 3 unreadable" in str(m.message) and "bomb.png" in str(m.message) for m in w)
    with pytest.raises(DataError, match="3 unreadable image file"):
        read_folder(tmp_path, strict=True)
    with pytest.raises(DataError, match="unreadable image file"):  # the held-out split draws from the file list
        load(f"folder:{tmp_path}", "train", strict=True)


CONFIG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True),
                          st.text(max_size=8), st.lists(st.integers(), max_size=3),
                          st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(f.name for f in dataclasses.fields(PretrainConfig)) + ["junk", "1"]),
                       CONFIG_VALUES, max_size=6))
def test_any_config_mapping_is_valid_or_one_config_error(d):
    """What a YAML file or a resumed checkpoint can hold: ConfigError (one line) or a valid config, nothing else."""
    from selfsup.errors import ConfigError

    try:
        PretrainConfig.from_dict(d).validate()
    except ConfigError as e:
        assert "\n" not in str(e)


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(["--lr", "--steps", "--minutes", "--batch-size", "--method", "--dataset",
                                           "--backbone-args", "--method-args", "--augment-args", "--precision",
                                           "--strict", "--no-channels-last", "--seed", "--logger", "--nope"]),
                          st.text(max_size=6)), max_size=8))
def test_any_pretrain_command_line_is_valid_or_one_line(argv):
    """Everything `selfsup pretrain` judges before training starts: a valid config, or one line and status 2."""
    import contextlib
    import io as _io

    from selfsup.cli import _config_from, build_parser
    from selfsup.errors import ConfigError

    err = _io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(["pretrain", *argv])
        _config_from(args).validate()
    except SystemExit as e:
        lines = err.getvalue().strip().splitlines()
        assert e.code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err.getvalue()
    except ConfigError as e:
        assert "\n" not in str(e)
