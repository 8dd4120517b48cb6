"""Duplicates: planted copies of photos are found (exact, re-encoded, resized, cropped by 10%, colour-shifted),
distinct photos are not paired, and groups do not chain."""
import json

import numpy as np
import pytest

from photo_folders import write_with_copies
from selfsup import duplicates as dup
from selfsup.data import load


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos") / "flat"
    return folder, write_with_copies(folder)


def test_planted_copies_are_found_and_nothing_else(planted, data_root):
    folder, copies = planted
    d = load(f"folder:{folder}", "train")
    pairs = dup.near_pairs(d.images)
    found = {frozenset((d.paths[p.a], d.paths[p.b])) for p in pairs}
    want = {frozenset(kv) for kv in copies.items()}
    assert want <= found, want - found  # every kind of copy
    assert found <= want, found - want  # and no two distinct photographs


def test_a_copy_among_other_images_is_a_leak(planted, data_root):
    folder, copies = planted
    d = load(f"folder:{folder}", "train")
    test_rows = [d.paths.index(c) for c in copies]  # the copies play the test split
    seen = d.subset(np.setdiff1d(np.arange(len(d)), test_rows))
    test = d.subset(np.array(test_rows))
    pairs = dup.near_pairs(seen.images, test.images)
    assert {(test.paths[p.a], seen.paths[p.b]) for p in pairs} == {(c, o) for c, o in copies.items()}


def test_groups_are_stars_not_chains():
    # a-b and b-c are copies, a-c is not: two groups would chain into one; stars keep c out of a's group
    pairs = [dup.Pair(0, 1, 0.95, detail=0.9), dup.Pair(1, 2, 0.95, detail=0.8)]
    assert dup.groups(3, pairs) == [[0, 1]]
    assert dup.keep_one(3, pairs).tolist() == [True, False, True]


def test_thumbnails_ignore_brightness_and_contrast():
    x = np.random.default_rng(0).integers(0, 200, (1, 3, 32, 32)).astype(np.uint8)
    brighter = np.clip(x.astype(int) * 1.2 + 20, 0, 255).astype(np.uint8)
    assert float((dup.thumbnails(x) * dup.thumbnails(brighter)).sum()) > 0.99


def test_audit_writes_json_and_a_page(planted, data_root, tmp_path):
    folder, copies = planted
    (folder / "zz_broken.jpg").write_bytes(b"not a jpeg")
    try:
        from selfsup.cli import main

        assert main(["data", "audit", f"folder:{folder}", "--out", str(tmp_path / "a")]) == 0
    finally:
        (folder / "zz_broken.jpg").unlink()
    result = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert [u["file"] for u in result["unreadable"]] == ["zz_broken.jpg"]
    assert any(set(g) == {"train: p000.jpg", "train: z_exact.jpg"} for g in result["exact_duplicate_files"])
    grouped = {name for g in result["near_duplicate_groups"] for name in g}
    assert {f"train: {c}" for c in copies} <= grouped
    page = (tmp_path / "a" / "audit.html").read_text()
    assert page.count("<img") >= 2 * len(copies) and "z_cropped.jpg" in page


def test_the_audit_page_opens_in_chromium(planted, data_root, tmp_path, browser_page):
    from selfsup.cli import main

    folder, copies = planted
    assert main(["data", "audit", f"folder:{folder}", "--out", str(tmp_path / "a")]) == 0
    page, errors, remote = browser_page
    page.goto((tmp_path / "a" / "audit.html").as_uri())
    loaded = page.evaluate("() => [...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)")
    assert loaded and page.locator("h2").count() == 4 and not errors and not remote
