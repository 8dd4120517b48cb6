"""Image folders: their layouts give honest splits; the test split is never the training images."""
import json

import numpy as np
import pytest
from PIL import Image

from selfsup.data import load
from selfsup.data.folder import HOLDOUT
from selfsup.errors import DataError


def write(folder, n, value_of=lambda i: i, size=8, mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        v = value_of(i) % 256
        Image.fromarray(np.full((size, size) if mode == "L" else (size, size, 3), v, np.uint8), mode).save(folder / f"{i}.png")


def test_class_subfolders_get_a_fixed_stratified_held_out_test_split(tmp_path):
    for c, name in enumerate(("cat", "dog", "emu")):
        write(tmp_path / name, 20, lambda i, c=c: 60 * c + i)
    train, test = load(f"folder:{tmp_path}", "train"), load(f"folder:{tmp_path}", "test")
    assert len(train) + len(test) == 60 and len(test) == round(HOLDOUT * 60)
    assert np.bincount(test.labels).tolist() == [4, 4, 4] and train.classes == test.classes == ["cat", "dog", "emu"]
    pixels = lambda s: {int(x[0, 0, 0]) for x in s.images}  # noqa: E731 - each image is one grey value
    assert not pixels(train) & pixels(test)  # never the training images
    again = load(f"folder:{tmp_path}", "test")
    assert np.array_equal(again.images, test.images)  # fixed: the same every time


def test_train_test_and_unlabeled_subfolders_are_the_splits(tmp_path):
    write(tmp_path / "train" / "a", 6, lambda i: i)
    write(tmp_path / "train" / "b", 6, lambda i: 100 + i)
    write(tmp_path / "test" / "b", 3, lambda i: 200 + i)  # test lacks class a: labels still by name
    write(tmp_path / "unlabeled", 5, lambda i: 50 + i, size=16)  # another size: resized to the training size
    train, test = load(f"folder:{tmp_path}", "train"), load(f"folder:{tmp_path}", "test")
    assert len(train) == 12 and train.classes == ["a", "b"]
    assert len(test) == 3 and test.labels.tolist() == [1, 1, 1] and test.classes == ["a", "b"]
    both = load(f"folder:{tmp_path}", "train+unlabeled")
    assert len(both) == 17 and (both.labels == -1).sum() == 5 and both.images.shape[1:] == (1, 8, 8)


def test_val_stands_for_test_and_unknown_classes_are_refused(tmp_path):
    write(tmp_path / "train" / "a", 4)
    write(tmp_path / "val" / "a", 2)
    assert len(load(f"folder:{tmp_path}", "test")) == 2
    write(tmp_path / "val" / "zebra", 2)
    with pytest.raises(DataError, match="zebra that the training split has not"):
        load(f"folder:{tmp_path}", "test")


def test_a_flat_folder_pretrains_but_has_no_test_split(tmp_path):
    write(tmp_path, 10)
    assert (load(f"folder:{tmp_path}", "train").labels == -1).all()
    with pytest.raises(DataError, match="flat folder of unlabeled images: it has no labels to test on"):
        load(f"folder:{tmp_path}", "test")


def test_a_photo_dump_with_albums_is_flat_and_read_at_any_depth(tmp_path, capsys):
    """Images of its own beside album subfolders, or a single subfolder (DCIM/), make a folder one unlabeled pool,
    read at any depth, not albums as classes with the loose photos left out."""
    from selfsup.cli import main

    write(tmp_path / "dump", 6)
    write(tmp_path / "dump" / "2024" / "trip", 3, lambda i: 100 + i)  # an album two levels down
    write(tmp_path / "dump" / "2025", 2, lambda i: 200 + i)
    with pytest.warns(UserWarning, match=r"images of its own beside 2 subfolders of images \(2024, 2025\): read as one "
                      r"unlabeled pool; if the subfolders are classes, move the loose images into them"):
        dump = load(f"folder:{tmp_path / 'dump'}", "train")
    assert len(dump) == 11 and (dump.labels == -1).all()
    assert "2024/trip/0.png" in dump.paths and "0.png" in dump.paths
    write(tmp_path / "phone" / "DCIM" / "100APPLE", 4)  # one subfolder: no classes to tell apart
    assert len(load(f"folder:{tmp_path / 'phone'}", "train")) == 4
    assert main(["data", "info", f"folder:{tmp_path / 'dump'}"]) == 0
    assert "11 image files (flat, unlabeled layout)" in capsys.readouterr().out
    write(tmp_path / "classes" / "cat" / "indoor", 5)  # class folders may hold folders of their own
    write(tmp_path / "classes" / "dog", 5, lambda i: 100 + i)
    train, test = load(f"folder:{tmp_path / 'classes'}", "train"), load(f"folder:{tmp_path / 'classes'}", "test")
    assert len(train) + len(test) == 10 and train.classes == ["cat", "dog"] and sorted(set(train.labels)) == [0, 1]


def test_compare_on_a_class_folder_says_how_it_split(tmp_path, capsys):
    from selfsup.cli import main

    rng = np.random.default_rng(0)
    for c in range(2):
        write(tmp_path / "data" / f"c{c}", 40, lambda i, c=c: 120 * c + int(rng.integers(0, 60)))
    out = tmp_path / "cmp"
    code = main(["compare", "--dataset", f"folder:{tmp_path / 'data'}", "--methods", "simclr", "--baselines", "random",
                 "--labels-per-class", "2", "--evals", "knn", "--minutes-per-method", "0.02", "--val-per-class", "2",
                 "--batch-size", "16", "--backbone-args", "width=4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["splits"]["train"] == 64
    assert results["splits"]["layout"] == "class subfolders"
    assert results["splits"]["test"] == 16 and "held out: 20% of each class, seed" in results["splits"]["test_split"]


def test_decoding_workers_follow_affinity_and_the_cpu_quota(monkeypatch):
    """A container limited to 1.5 CPUs on a 64-core host decodes with 2 workers, not 64; without a quota, the cores
    in the affinity mask."""
    import os

    from selfsup import threads
    from selfsup.data.folder import usable_cores

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(threads, "cgroup_quota", lambda: 1.5)
    assert usable_cores() == 2
    monkeypatch.setattr(threads, "cgroup_quota", lambda: None)
    assert usable_cores() == 64
