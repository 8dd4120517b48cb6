"""`selfsup select`: B distinct, existing files, never near-copies of each other, the same for the same seed; a
second round never picks what is labeled already."""
import csv

import numpy as np
import pytest
import torch

from photo_folders import write_with_copies
from selfsup.cli import main
from selfsup.data import load
from selfsup.select import select


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sel")
    folder = root / "flat"
    planted = write_with_copies(folder, n=40, side=64)
    import os

    os.environ["SELFSUP_DATA"] = str(root / "data")
    assert main(["pretrain", "--dataset", f"folder:{folder}", "--steps", "2", "--batch-size", "16",
                 "--backbone-args", "width=8", "--monitor-seconds", "0", "--out", str(root / "run")]) == 0
    return root, folder, planted


def picks_of(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_select_picks_b_distinct_files_never_copies_the_same_for_a_seed(run_dir, tmp_path, capsys):
    root, folder, planted = run_dir
    for out in ("a", "b"):
        assert main(["select", "--checkpoint", str(root / "run"), "--budget", "8", "--map-points", "50",
                     "--out", str(tmp_path / out)]) == 0
    rows = picks_of(tmp_path / "a" / "to_label.csv")
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 8 and all((folder / p).is_file() for p in paths)
    assert all(r["label"] == "" and r["reason"] for r in rows)
    for copy, original in planted.items():
        assert not {copy, original} <= set(paths)  # never a near-duplicate of another pick
    assert paths == [r["path"] for r in picks_of(tmp_path / "b" / "to_label.csv")]
    sheet = (tmp_path / "a" / "picks.html").read_text()
    assert sheet.count("<img") == 8 and all(p in sheet for p in paths)
    assert "to label (8)" in (tmp_path / "a" / "map.html").read_text()


def test_a_second_round_picks_new_images(run_dir, tmp_path):
    root, folder, _ = run_dir
    assert main(["select", "--checkpoint", str(root / "run"), "--budget", "6", "--map-points", "20",
                 "--out", str(tmp_path / "r1")]) == 0
    first = picks_of(tmp_path / "r1" / "to_label.csv")
    with open(tmp_path / "labeled.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows((r["path"], "ab"[i % 2]) for i, r in enumerate(first))
    assert main(["select", "--checkpoint", str(root / "run"), "--budget", "6", "--labeled", str(tmp_path / "labeled.csv"),
                 "--map-points", "20", "--out", str(tmp_path / "r2")]) == 0
    second = [r["path"] for r in picks_of(tmp_path / "r2" / "to_label.csv")]
    assert len(set(second)) == 6 and not set(second) & {r["path"] for r in first}


def test_picks_are_the_densest_images_of_the_regions_they_cover():
    """Three tight blobs: three picks, one per blob, each at its blob's centre, the densest image there."""
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 8) * 5
    blobs = torch.cat([c + 0.3 * torch.randn(30, 8, generator=g) for c in centres])
    feats = torch.cat([blobs, centres])  # rows 90..92 sit exactly at the centres
    picks = select(feats, 3, seed=0)
    assert {p.index for p in picks} == {90, 91, 92}
    assert sorted(int(p.reason.split()[1]) for p in picks) == [31, 31, 31]  # each covers its blob


def test_a_later_round_goes_where_the_labels_are_not():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(4, 8) * 5
    feats = torch.cat([c + 0.3 * torch.randn(25, 8, generator=g) for c in centres])
    labeled = np.array([0, 25])  # blobs 0 and 1 have a label each
    picks = select(feats, 2, seed=0, labeled=labeled, labeled_y=np.array([0, 1]))
    assert sorted(p.index // 25 for p in picks) == [2, 3]


def test_the_contact_sheet_and_map_open_in_chromium(run_dir, tmp_path, browser_page):
    root, _, _ = run_dir
    assert main(["select", "--checkpoint", str(root / "run"), "--budget", "5", "--map-points", "30",
                 "--out", str(tmp_path / "p")]) == 0
    page, errors, remote = browser_page
    page.goto((tmp_path / "p" / "picks.html").as_uri())
    shown = page.evaluate("() => [...document.querySelectorAll('figure img')].filter(i => i.complete && i.naturalWidth > 0).length")
    assert shown == 5 and page.locator("figcaption").count() == 5
    page.goto((tmp_path / "p" / "map.html").as_uri())
    page.wait_for_selector("canvas", timeout=15000)
    assert not errors and not remote


def test_picks_of_a_built_in_dataset_are_evaluated_with_their_own_labels(tmp_path, capsys):
    """to_label.csv names training indices; `eval --labeled` reads their labels from the dataset, as the person
    labeling them would give them, and trains on exactly those images."""
    import json

    assert main(["pretrain", "--dataset", "digits", "--steps", "2", "--batch-size", "32", "--backbone-args",
                 "width=4", "--monitor-seconds", "0", "--out", str(tmp_path / "run")]) == 0
    assert main(["select", "--checkpoint", str(tmp_path / "run"), "--budget", "40", "--map-points", "50",
                 "--out", str(tmp_path / "p")]) == 0
    rows = picks_of(tmp_path / "p" / "to_label.csv")
    assert len(rows) == 40 and all(r["index"].isdigit() for r in rows)
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--labeled", str(tmp_path / "p" / "to_label.csv"),
                 "--evals", "knn,linear", "--out", str(tmp_path / "e.json")]) == 0
    res = json.loads((tmp_path / "e.json").read_text())
    assert {r["labels_per_class"] for r in res["rows"]} == {"picks"}
    used = {r["labels"] for r in res["rows_per_seed"]}
    per_class = np.bincount(load("digits").labels[[int(r["index"]) for r in rows]], minlength=10)
    held = sum(min(res["labels"]["validation"]["per_class"], c // 4) if c >= 4 else 0 for c in per_class if c)
    assert used == {40 - held}  # the picks, less the validation images drawn from them


def test_a_first_round_finds_a_small_cluster_that_coverage_alone_misses():
    """A long chain of 240 images and a tight clump of 20 beside its middle. Density x coverage puts its third pick
    at the chain's far end (the largest distance), so the clump gets no label; the chain's two halves and the clump
    are the graph's three clusters, and their picks cut the graph less, so the first round takes those."""
    g = torch.Generator().manual_seed(0)
    chain = torch.zeros(240, 8)
    chain[:, 0] = torch.linspace(-6, 6, 240)
    clump = torch.zeros(20, 8)
    clump[:, 1] = 2.0
    x = torch.cat([chain, clump])
    x[:, 5] = 20  # away from the origin: cosine distance is about Euclidean distance here
    x += 0.15 * torch.randn(x.shape, generator=g)
    assert max(p.index for p in select(x, 3, seed=0, spectral=False)) < 240  # coverage alone: the chain only
    picks = select(x, 3, seed=0)
    assert {p.rule for p in picks} == {"spectral"}
    assert sum(p.index >= 240 for p in picks) == 1 and sum(p.index < 120 for p in picks) == 1
    assert sorted(int(p.reason.split()[1]) for p in picks)[0] == 20  # the clump's pick covers the clump


def test_a_spectral_clusters_pick_comes_from_its_core_not_its_densest_edge():
    """A cluster of 30 images around one direction of the spectral embedding and 10 on its edge, toward a
    neighbouring cluster's. The edge image beside that denser cluster is the densest member; the pick must be the
    densest image of the cluster's core (image 0, at its centre, here)."""
    from selfsup.select import cluster_pick

    g = torch.Generator().manual_seed(0)
    core, edge = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.5, 0.85, 0.0])
    rows = torch.cat([core + 0.05 * torch.randn(30, 3, generator=g), edge + 0.05 * torch.randn(10, 3, generator=g)])
    embedding = torch.nn.functional.normalize(rows, dim=1)
    embedding[0] = torch.nn.functional.normalize(embedding[1:].mean(0), dim=0)  # image 0 at the cluster's centre
    embedding = embedding.numpy()
    dens = np.ones(40)
    dens[0], dens[35] = 5.0, 10.0
    members = np.arange(40)
    assert members[np.argmax(dens)] == 35  # the densest member overall: on the edge
    assert cluster_pick(members, embedding, dens) == 0
    assert cluster_pick(members[::-1].copy(), embedding, dens) == 0  # whatever the members' order
