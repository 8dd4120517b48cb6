"""Prepared folders: decoded once into a memory map, resumable, idempotent, and the same data as decoding in memory."""
import json
import multiprocessing

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data import batches as batches_mod
from selfsup.data import folder as fol
from selfsup.data import load
from selfsup.data import prepare as prep
from selfsup.data.batches import Batches
from selfsup.errors import DataError


def write(root, rng, classes=("cat", "dog", "emu"), per_class=14, size=12, jpeg_every=2):
    """Class subfolders of noisy colour images; every other one a JPEG, one of another size."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = size + 6 if i == 3 else size
            a = np.clip(rng.normal(60 * c + 40, 40, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i:03d}.{'jpg' if i % jpeg_every == 0 else 'png'}")
    return root


@pytest.fixture
def folder(tmp_path, rng, data_root, monkeypatch):
    monkeypatch.setattr(prep, "SHARD", 5)  # several shards per split
    return write(tmp_path / "imgs", rng)


def quiet(path, **kw):
    return prep.prepare(path, workers=1, progress=False, log=lambda *_: None, **kw)


def test_prepared_copy_equals_decoding_in_memory(folder):
    in_ram = {s: fol.load_folder(folder, s) for s in ("train", "test")}
    copy = quiet(folder)
    m = json.loads((copy / "manifest.json").read_text())
    assert m["images"] == 42 and m["size"] == 12 and m["classes"] == ["cat", "dog", "emu"] and not m["skipped_files"]
    for s, (x, y, classes) in in_ram.items():
        d = load(f"folder:{folder}", s)
        assert isinstance(d.images, np.memmap)  # read from disk, not decoded again
        assert np.array_equal(d.images, x) and np.array_equal(d.labels, y) and d.classes == classes


def test_train_and_unlabeled_are_one_slice_of_the_map(tmp_path, rng, data_root):
    root = tmp_path / "f"
    write(root / "train", rng, per_class=4)
    write(root / "test", rng, per_class=2)
    (root / "unlabeled").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / "unlabeled" / f"{i}.png")
    quiet(root)
    both = load(f"folder:{root}", "train+unlabeled")
    assert isinstance(both.images, np.memmap) and len(both) == 17 and (both.labels == -1).sum() == 5
    x, y, _ = fol.load_folder(root, "train+unlabeled")
    assert np.array_equal(both.images, x) and np.array_equal(both.labels, y)


def test_prepare_again_is_a_no_op_and_repairs_a_damaged_shard(folder):
    copy = quiet(folder)
    images = copy / "images.u8"
    before, stamp = images.read_bytes(), images.stat().st_mtime_ns
    said = []
    prep.prepare(folder, workers=1, progress=False, log=said.append)
    assert "up to date" in said[-1] and images.stat().st_mtime_ns == stamp  # nothing written
    with open(images, "r+b") as f:  # one flipped byte in the third shard
        f.seek(11 * 3 * 12 * 12 + 7)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))
    prep.prepare(folder, workers=1, progress=False, log=said.append)
    assert "1 damaged shard" in said[-1] and images.read_bytes() == before


def test_an_interrupted_prepare_resumes_from_its_last_shard(folder, monkeypatch):
    copy = quiet(folder)
    clean = (copy / "images.u8").read_bytes()
    for f in ("manifest.json", "images.u8", "labels.npy"):
        (copy / f).unlink()
    calls, real = [], fol._decode_task

    def dies_on_the_fourth(task):
        calls.append(len(task[0]))
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(fol, "_decode_task", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        quiet(folder)
    assert prep.find(folder, None) is None  # no manifest: never read as a dataset, half done
    decoded = []
    monkeypatch.setattr(fol, "_decode_task", lambda task: decoded.append(len(task[0])) or real(task))
    said = []
    prep.prepare(folder, workers=1, progress=False, log=said.append)
    assert "resuming after 3 of" in said[0]
    assert sum(decoded) == 42 - 15  # only the shards not finished before
    assert (copy / "images.u8").read_bytes() == clean


def test_a_changed_folder_is_noticed_and_prepared_again(folder, rng):
    quiet(folder)
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / "dog" / "new.png")
    with pytest.raises(DataError, match="changed since it was prepared.*selfsup data prepare"):
        load(f"folder:{folder}", "train")
    said = []
    prep.prepare(folder, workers=1, progress=False, log=said.append)
    assert any("changed since it was prepared" in s for s in said)
    x, y, _ = fol.load_folder(folder, "train")
    assert np.array_equal(load(f"folder:{folder}", "train").images, x)


def test_a_corrupt_file_is_skipped_and_listed(folder):
    (folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    copy = quiet(folder)
    assert (copy / "skipped.txt").read_text().startswith("cat/broken.jpg\t")
    assert json.loads((copy / "manifest.json").read_text())["skipped_files"] == ["cat/broken.jpg"]
    with pytest.raises(DataError, match=r"1 unreadable image file.*skipped.txt"):
        load(f"folder:{folder}", "train+test", strict=True)
    x, y, _ = fol.load_folder(folder, "train")
    assert np.array_equal(load(f"folder:{folder}", "train").images, x)


def test_a_copy_at_another_size_is_read_when_asked_for(folder):
    quiet(folder, size=6)  # training at 6 px: kept at 9 px, a margin of 1.5 for crops
    assert prep.find(folder, 12) is None  # not the folder's own size
    d = load(f"folder:{folder}", "train", size=6)
    assert isinstance(d.images, np.memmap) and d.size == (9, 9) and d.side == 6
    assert not isinstance(load(f"folder:{folder}", "train").images, np.memmap)  # own size: decoded


def test_batches_read_from_disk_equal_batches_on_the_device():
    x = np.random.default_rng(0).integers(0, 255, (100, 1, 4, 4), dtype=np.uint8)
    on, off = (Batches(x, 16, torch.device("cpu"), 3, on_device_bytes=b) for b in (2**31, 0))
    assert isinstance(on.images, torch.Tensor) and not isinstance(off.images, torch.Tensor)
    for a, b, _ in zip(on, off, range(14)):  # across an epoch boundary
        assert torch.equal(a, b)


def _rows_seen(args):
    path, n, rank = args
    images = np.memmap(path, np.uint8, "r", shape=(n, 1, 2, 2))
    b = Batches(images, 8, torch.device("cpu"), 5, rank=rank, world=2, on_device_bytes=0)
    ids = [int(i) for batch, _ in zip(b, range(b.steps_per_epoch)) for i in batch[:, 0, 0, 0] * 256 + batch[:, 0, 0, 1]]
    return ids


def test_two_processes_read_disjoint_shards_of_a_memory_map(tmp_path):
    n = 200
    ids = np.arange(n)
    a = np.zeros((n, 1, 2, 2), np.uint8)
    a[:, 0, 0, 0], a[:, 0, 0, 1] = ids // 256, ids % 256  # each image carries its row number
    path = tmp_path / "images.u8"
    a.tofile(path)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        seen = pool.map(_rows_seen, [(path, n, 0), (path, n, 1)])
    assert not set(seen[0]) & set(seen[1])  # disjoint
    assert len(set(seen[0])) == len(seen[0]) == 96 and len(set(seen[1])) == 96  # an epoch: each row once
    shard = Batches(a, 8, torch.device("cpu"), 5, rank=0, world=2).shard(0)
    assert set(seen[0]) <= set(shard.tolist())  # rank 0 touched only its own shard of the epoch


def test_prepare_refuses_a_dataset_that_is_not_a_folder(capsys):
    from selfsup.cli import main

    assert main(["data", "prepare", "mnist"]) != 0
    assert "only image folders are prepared" in capsys.readouterr().err


@pytest.mark.parametrize("from_disk", [False, True])
def test_training_from_a_prepared_copy_equals_training_in_memory(folder, tmp_path, monkeypatch, from_disk,
                                                                 fixed_threads):
    """Same seed, same steps: the same weights, from the decoded folder in memory and from its prepared copy (on the
    device, and read batch by batch from the memory map)."""
    from selfsup.config import PretrainConfig
    from selfsup.train import pretrain

    def run(out):
        # fp32 and one thread count (`fixed_threads`): the test is about the data path; the weights' last digits
        # also depend on the precision a timing probe picks and on the threads the governor picks from the load
        cfg = PretrainConfig(dataset=f"folder:{folder}", method="simclr", steps=4, batch_size=8, seed=3,
                             backbone_args={"width": 4}, monitor_per_class=0, precision="32-true",
                             out=str(tmp_path / out))
        return torch.load(pretrain(cfg, show_progress=False), weights_only=False)["method"]

    in_ram = run("ram")
    quiet(folder)
    opened = []
    real = prep.open_prepared
    monkeypatch.setattr(prep, "open_prepared", lambda *a: opened.append(a) or real(*a))
    if from_disk:
        monkeypatch.setattr(batches_mod, "ON_DEVICE_BYTES", 0)
    prepared = run("prepared")
    assert opened  # the prepared copy was read
    assert set(in_ram) == set(prepared)
    for k in in_ram:
        assert torch.equal(in_ram[k], prepared[k]), k
