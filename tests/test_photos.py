"""A person's own photos: large and of mixed sizes, unlabeled at first, then a CSV of the labels they made."""
import csv
import json

import numpy as np
import pytest

from photo_folders import patches, write_with_copies
from selfsup.cli import main
from selfsup.data import folder as fol
from selfsup.data import load


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_csv(path, rows, header=("path", "label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_large_photos_are_never_decoded_at_full_size(tmp_path, data_root, monkeypatch):
    folder = tmp_path / "big"
    folder.mkdir()
    for i, im in enumerate(patches(4, side=1000)):
        im.save(folder / f"{i}.jpg", quality=90)
    sizes = []
    real = fol.decode
    monkeypatch.setattr(fol, "decode", lambda p, size, colour: sizes.append(size) or real(p, size, colour))
    d = load(f"folder:{folder}", "train", accelerator="cpu")
    assert d.size == (96, 96) and d.side == 64 and set(sizes) == {96}  # 64 px training, 1.5x margin kept
    gpu = fol.store_side(1000, None, "cuda"), fol.train_side(1000, None, "cuda")
    assert gpu == (336, 224)
    assert load(f"folder:{folder}", "train", size=1000).size == (1000, 1000)  # only when asked


def test_data_info_on_a_flat_folder_says_what_it_found(tmp_path, capsys, data_root):
    write_with_copies(tmp_path / "flat", n=6)
    (tmp_path / "flat" / "broken.jpg").write_text("no")
    code, out, err = run(capsys, "data", "info", f"folder:{tmp_path / 'flat'}")
    assert code == 0, err
    assert "12 image files" in out and "0 labeled" in out and "1 unreadable" in out and "selfsup select" in out


def test_a_folder_too_large_for_memory_is_prepared_first(tmp_path, data_root, monkeypatch):
    import selfsup.data as data

    write_with_copies(tmp_path / "flat", n=6)
    monkeypatch.setattr(data, "in_memory_bytes", lambda: 1000)
    d = load(f"folder:{tmp_path / 'flat'}", "train")
    assert isinstance(d.images, np.memmap) and len(d) == 11 and len(d.paths) == 11
    assert list(data_root.glob("prepared/*/*px/manifest.json"))


@pytest.fixture
def labeled_folder(tmp_path):
    """A flat folder of 30 photos; the CSV labels 5 of each of 3 classes (subfolders are not classes here)."""
    folder = tmp_path / "photos"
    (folder / "2024").mkdir(parents=True)
    for i, im in enumerate(patches(30, side=48)):
        im.save(folder / ("2024" if i % 2 else ".") / f"{i:02d}.jpg", quality=90)
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.jpg"))
    rows = [(f, "abc"[k % 3]) for k, f in enumerate(files[:15])]
    return folder, write_csv(tmp_path / "labels.csv", rows), files


def test_labels_from_a_csv_hold_out_a_stratified_test_split(labeled_folder, data_root):
    folder, labels, files = labeled_folder
    train = load(f"folder:{folder}", "train", labels=labels)
    test = load(f"folder:{folder}", "test", labels=labels)
    assert train.classes == ["a", "b", "c"] and np.bincount(test.labels).tolist() == [1, 1, 1]
    assert len(train) + len(test) == 30 and not set(train.paths) & set(test.paths)
    assert (train.labels >= 0).sum() == 12 and (train.labels == -1).sum() == 15
    again = load(f"folder:{folder}", "test", labels=labels)
    assert again.paths == test.paths


@pytest.mark.parametrize("rows,header,message", [
    ([("nope.jpg", "a")], ("path", "label"), "nope.jpg is not an image in"),
    ([("00.jpg", "a"), ("00.jpg", "b")], ("path", "label"), "give 00.jpg two labels ('a' and 'b'); keep one"),
    ([], None, "is empty"),
    ([("00.jpg", "a"), ("02.jpg", "a"), ("04.jpg", "b")], ("path", "label"), "class 'b' has 1 labeled image"),
])
def test_label_file_errors_are_one_line_before_pretraining(labeled_folder, data_root, capsys, tmp_path, rows, header,
                                                          message):
    folder, _, _ = labeled_folder
    bad = tmp_path / "bad.csv"
    write_csv(bad, rows, header) if header else bad.write_text("")
    code, out, err = run(capsys, "compare", "--dataset", f"folder:{folder}", "--labels", str(bad),
                         "--minutes-per-method", "0.05", "--out", str(tmp_path / "cmp"))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "cmp" / "pretrain").exists()  # nothing was pretrained


def few_labels_folder(root, per_class=5):
    for c, name in enumerate(("a", "b", "c")):
        (root / name).mkdir(parents=True)
        for i, im in enumerate(patches(per_class, side=40, seed=c + 1)):
            im.save(root / name / f"{i}.jpg", quality=90)
    return root


def test_compare_and_eval_work_with_three_labels_per_class(tmp_path, data_root, capsys):
    """5 images per class: 1 held out for testing, 4 left; 3 train and 1 validates, a split no flag asked for."""
    folder = few_labels_folder(tmp_path / "few")
    code, out, err = run(capsys, "compare", "--dataset", f"folder:{folder}", "--labels-per-class", "3",
                         "--evals", "knn,linear,finetune,semisup", "--minutes-per-method", "0.05", "--finetune-steps",
                         "4", "--out", str(tmp_path / "cmp"))
    assert code == 0, err
    res = json.loads((tmp_path / "cmp" / "results.json").read_text())
    # semi-supervised training on 12 colour training images: ceil(250 passes x 12 / 128 a step), not 2,000 steps
    assert {r["steps_run"] for r in res["rows_per_seed"] if r["eval"] == "semisup"} == {24}
    assert res["config"]["semisup"]["steps"] == 24
    assert res["labels"]["validation"] == {"per_class": 1, "kind": "fewer", "why": res["labels"]["validation"]["why"]}
    assert {r["labels_per_class"] for r in res["rows"]} == {3}
    assert "val_per_class" not in err and "val-per-class" not in err
    code, out, err = run(capsys, "eval", "--checkpoint", str(tmp_path / "cmp" / "pretrain" / "simclr"),
                         "--labels-per-class", "3", "--evals", "knn,finetune", "--out", str(tmp_path / "e.json"))
    assert code == 0, err
    assert json.loads((tmp_path / "e.json").read_text())["labels"]["validation"]["per_class"] == 1


def test_eval_with_the_labels_a_person_made(labeled_folder, data_root, capsys, tmp_path):
    folder, labels, files = labeled_folder
    code, _, err = run(capsys, "pretrain", "--dataset", f"folder:{folder}", "--steps", "2", "--batch-size", "8",
                       "--backbone-args", "width=4", "--out", str(tmp_path / "run"))
    assert code == 0, err
    code, out, err = run(capsys, "eval", "--checkpoint", str(tmp_path / "run"), "--labels", str(labels),
                         "--evals", "knn,linear,finetune", "--out", str(tmp_path / "e.json"))
    assert code == 0, err
    res = json.loads((tmp_path / "e.json").read_text())
    # 5 labeled a class: 1 held out to test, 4 left, of which 1 validates (a quarter) and 3 train
    assert {r["labels_per_class"] for r in res["rows"]} == {"labeled"} and {r["labels"] for r in res["rows_per_seed"]} == {9}
    assert res["labels"]["validation"]["per_class"] == 1
    # semi-supervised training on 24 pool images: a few passes' steps, a progress line and each row as it is done
    code, out, err = run(capsys, "eval", "--checkpoint", str(tmp_path / "run"), "--labels", str(labels),
                         "--evals", "knn,semisup", "--out", str(tmp_path / "s.json"))
    assert code == 0, err
    semi = next(r for r in json.loads((tmp_path / "s.json").read_text())["rows_per_seed"] if r["eval"] == "semisup")
    assert semi["steps_run"] == 53  # ceil(250 passes x 27 colour training images / 128 a step), not 2,000
    assert "simclr knn, seed 0, 9 labels: " in err and "simclr semisup, seed 0, 9 labels: " in err
    few = write_csv(tmp_path / "few.csv", [(f, "abc"[k % 3]) for k, f in enumerate(files[:9])])  # 3 a class
    code, out, err = run(capsys, "eval", "--checkpoint", str(tmp_path / "run"), "--labels", str(few),
                         "--evals", "linear,finetune", "--out", str(tmp_path / "few.json"))
    assert code == 0, err
    res = json.loads((tmp_path / "few.json").read_text())
    assert res["labels"]["validation"]["kind"] == "none"  # 2 a class left: none to spare; LP-FT keeps the probe
    ft = next(r for r in res["rows_per_seed"] if r["eval"] == "finetune")
    lin = next(r for r in res["rows_per_seed"] if r["eval"] == "linear")
    assert ft["steps_run"] == 0 and ft["accuracy"] == lin["accuracy"] and ft["labels"] == 6


def test_compare_reports_a_test_image_leaked_into_the_unlabeled_images(tmp_path, data_root):
    from selfsup.compare import CompareConfig, run_compare
    from selfsup.config import PretrainConfig

    ims = patches(40, side=40)
    for split, rng_ in (("train", range(0, 24)), ("test", range(24, 36))):
        for i in rng_:
            (tmp_path / "f" / split / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
            ims[i].save(tmp_path / "f" / split / "ab"[i % 2] / f"{i}.png")
    (tmp_path / "f" / "unlabeled").mkdir()
    for i in range(36, 40):
        ims[i].save(tmp_path / "f" / "unlabeled" / f"{i}.png")
    ims[25].save(tmp_path / "f" / "unlabeled" / "leak.jpg", quality=80)  # a test image, re-encoded
    base = PretrainConfig(steps=2, batch_size=8, backbone_args={"width": 4}, monitor_seconds=0)
    res = run_compare(CompareConfig(dataset=f"folder:{tmp_path / 'f'}", baselines=("random",), evals=("knn",),
                                    labels_per_class=(2,), minutes_per_method=None, pictures=False,
                                    out=str(tmp_path / "cmp"), pretrain=base), show_progress=False)
    assert res["leakage"]["leaked"] == 1 and res["leakage"]["leaked_test_images"] == ["test/b/25.png"]
    assert all("accuracy_clean" in r for r in res["rows"])


def test_exported_rows_match_their_files(data_root, capsys, tmp_path):
    import torch

    from selfsup.evaluate import extract_features
    from selfsup.factory import encoder_and_config

    folder = tmp_path / "flat"
    write_with_copies(folder, n=10)
    files = sorted(p.name for p in folder.iterdir())
    assert run(capsys, "pretrain", "--dataset", f"folder:{folder}", "--steps", "1", "--batch-size", "8",
               "--backbone-args", "width=4", "--out", str(tmp_path / "run"))[0] == 0
    for suffix in (".csv", ".npy"):
        out = tmp_path / f"feats{suffix}"
        code, _, err = run(capsys, "embed", "--checkpoint", str(tmp_path / "run"), "--split", "train", "--export",
                           str(out))
        assert code == 0, err
        if suffix == ".csv":
            with open(out) as f:
                rows = list(csv.reader(f))
            assert rows[0][:2] == ["path", "label"]
            paths, feats = [r[0] for r in rows[1:]], np.array([[float(v) for v in r[2:]] for r in rows[1:]])
        else:
            paths, feats = out.with_suffix(".paths.txt").read_text().splitlines(), np.load(out)
        assert sorted(paths) == files
        encoder, cfg = encoder_and_config(tmp_path / "run")
        one = load(f"folder:{folder}", "train", size=cfg.image_size)
        for k in (0, 7):
            image = one.images[one.paths.index(paths[k])]
            f = extract_features(encoder, torch.from_numpy(np.ascontiguousarray(image))[None])[0].numpy()
            assert np.allclose(f, feats[k], rtol=1e-3, atol=1e-4), paths[k]


def test_similar_finds_a_near_copy_first(tmp_path, data_root, capsys):
    write_with_copies(tmp_path / "flat", n=12)
    assert run(capsys, "pretrain", "--dataset", f"folder:{tmp_path / 'flat'}", "--steps", "1", "--batch-size", "8",
               "--backbone-args", "width=4", "--out", str(tmp_path / "run"))[0] == 0
    code, out, err = run(capsys, "similar", "--checkpoint", str(tmp_path / "run"), "--image", "p000.jpg", "--k", "3",
                         "--out", str(tmp_path / "s.html"))
    assert code == 0, err
    assert out.splitlines()[0].endswith("z_exact.jpg") and (tmp_path / "s.html").read_text().count("<img") == 4


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_photos_are_turned_upright_by_their_exif_orientation(tmp_path, fmt):
    """A phone stores a portrait photo as landscape rows and an EXIF orientation; every one of the 8 is decoded as
    Pillow's `ImageOps.exif_transpose` shows it (the reference), by libjpeg-turbo's path and Pillow's."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    base = np.zeros((36, 60, 3), np.uint8)  # no symmetry: a bright block top left, a gradient, coarse noise
    base[:, :, 0] = np.linspace(0, 255, 60, dtype=np.uint8)[None]
    base[2:14, 4:20] = 255
    base[:, :, 2] = np.kron(rng.integers(0, 2, (6, 10)), np.ones((6, 6))).astype(np.uint8) * 200
    for turn in range(1, 9):
        path = tmp_path / f"o{turn}.{fmt.lower()}"
        exif = Image.Exif()
        exif[0x0112] = turn
        Image.fromarray(base).save(path, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
        with Image.open(path) as im:
            want = np.asarray(fol._fit(ImageOps.exif_transpose(im).convert("RGB"), 24)).transpose(2, 0, 1)
        got = fol.decode(path, 24, True)
        err = np.abs(got.astype(int) - want).mean()
        wrong = min(np.abs(fol.upright(got, t).astype(int) - want).mean()
                    for t in range(2, 9))  # the same pixels turned any other way are far from the reference
        assert err < 6 and wrong > 25, (turn, err, wrong)


def test_heic_photos_are_read_or_named_with_what_to_install(tmp_path, monkeypatch):
    """A phone's HEIC photos load beside JPEGs where pillow-heif is installed (the test extra has it); without it
    they are skipped with a warning that says what to install, and a folder of HEIC alone is a one-line error."""
    import warnings

    from PIL import Image
    from selfsup.errors import DataError

    pixels = np.zeros((48, 64, 3), np.uint8)  # smooth, so that both codecs keep it close
    pixels[..., 0] = np.linspace(0, 255, 64, dtype=np.uint8)[None]
    pixels[8:24, 8:32, 1] = 200
    Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=95)
    if fol.heif_readable():
        Image.fromarray(pixels).save(tmp_path / "b.HEIC", quality=95)
        data = load(f"folder:{tmp_path}", size=32)
        assert len(data) == 2 and sorted(data.paths) == ["a.jpg", "b.HEIC"]
        assert np.abs(data.images[0].astype(int) - data.images[1]).mean() < 12  # the same photo, two codecs
    else:
        (tmp_path / "b.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    monkeypatch.setattr(fol, "_HEIF", False)  # as on a machine without pillow-heif
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert len(load(f"folder:{tmp_path}", size=32)) == 1
    assert any("b.HEIC" in str(m.message) and "pip install 'selfsup[heic]'" in str(m.message) for m in w)
    (tmp_path / "a.jpg").unlink()
    with pytest.raises(DataError, match=r"none of the 1 image files .* pip install 'selfsup\[heic\]'"):
        load(f"folder:{tmp_path}", size=32)


def test_a_labels_file_from_a_spreadsheet_reads_as_the_csv_does(tmp_path):
    """Saved by a spreadsheet: a byte-order mark, CRLF line ends, semicolons (where the decimal mark is a comma) or
    tabs, quoted fields, a blank row. Each reads to the same rows as the plain CSV."""
    from selfsup.data.labels_csv import read_rows

    rows = [("a b/01.jpg", "cat"), ("02.jpg", ""), ("03.jpg", "dog, big")]
    plain = tmp_path / "plain.csv"
    with open(plain, "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "cluster")] + [r + ("1",) for r in rows])
    want = read_rows(plain)
    assert want == ("path", [(2, "a b/01.jpg", "cat"), (3, "02.jpg", ""), (4, "03.jpg", "dog, big")])
    for name, delimiter in (("semi.csv", ";"), ("tabs.tsv", "\t")):
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8-sig") as f:
            w = csv.writer(f, delimiter=delimiter, lineterminator="\r\n", quoting=csv.QUOTE_ALL)
            w.writerows([("path", "label", "cluster")] + [r + ("1",) for r in rows])
        assert read_rows(path) == want, name


def test_a_labels_file_may_name_an_image_as_a_person_copies_its_path(tmp_path):
    """Windows' backslashes, an absolute path inside the folder, or a path from the folder's parent name the same
    image as its path relative to the folder; a path outside the folder is still a one-line error."""
    from selfsup.data.labels_csv import read_labels
    from selfsup.errors import DataError

    root = tmp_path / "photos"
    files = [root / "2024" / "trip" / "a.jpg", root / "b.jpg"]
    ways = ["2024\\trip\\a.jpg", str(root / "2024" / "trip" / "a.jpg"), "photos/2024/trip/a.jpg", "./2024/trip/a.jpg"]
    for way in ways:
        (tmp_path / "labels.csv").write_text(f"path,label\n{way},cat\nb.jpg,dog\n")
        assert read_labels(tmp_path / "labels.csv", root, files) == {"2024/trip/a.jpg": "cat", "b.jpg": "dog"}, way
    (tmp_path / "labels.csv").write_text(f"path,label\n{tmp_path / 'elsewhere.jpg'},cat\n")
    with pytest.raises(DataError, match="elsewhere.jpg is not an image in .*paths are relative to the folder"):
        read_labels(tmp_path / "labels.csv", root, files)
