import os

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# --precision auto measures bf16 per encoder and caches the answer: the tests keep their own cache, never the user's
os.environ.setdefault("SELFSUP_PRECISION_CACHE", os.path.join(__import__("tempfile").gettempdir(),
                                                              f"selfsup-test-precision-{os.getuid()}.json"))


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """An empty data root, so no test reads or writes the user's cache."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("SELFSUP_DATA", str(root))
    return root


# Per-method settings for the few-step tests of every registered method (MAE needs a ViT; a shallow one is enough;
# Barlow Twins' and VICReg's 2048-wide projectors tripled their tests' time, and no smoke test needs the width).
NARROW = {"method_args": {"proj_hidden": 128, "proj_dim": 128}}
SMOKE = {"mae": {"backbone": "vit_tiny", "backbone_args": {"depth": 2}}, "barlowtwins": NARROW, "vicreg": NARROW}


def smoke(method: str) -> dict:
    """The config fields a few-step run of `method` needs besides the test's own."""
    return {"method": method} | SMOKE.get(method, {})


def assert_same_run(a: dict, b: dict, steps: int) -> None:
    """Two final checkpoints, one of a run that was stopped and resumed: the same step, weights, optimizer moments
    and precision state, bit for bit."""
    assert a["budget"]["step"] == b["budget"]["step"] == steps and b["summary"]["resumed"]
    for k, t in a["method"].items():
        assert torch.equal(t, b["method"][k]), k
    for i, s in a["optimizer"]["state"].items():
        for k, t in s.items():
            assert torch.equal(t, b["optimizer"]["state"][i][k]), (i, k)
    assert a["precision"] == b["precision"]


@pytest.fixture
def fixed_threads(monkeypatch):
    """One thread count for the whole test, for tests that compare two runs bit for bit: selfsup's thread governor
    revises the count every few seconds from the cores' load, and a reduction over 1 thread and over 2 rounds
    differently (weights a few 1e-6 apart after 4 steps)."""
    from selfsup import threads

    n = torch.get_num_threads()
    monkeypatch.setenv("SELFSUP_THREADS", str(n))
    monkeypatch.setattr(threads, "THREADS", threads.Threads())
    yield n
    torch.set_num_threads(n)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


@pytest.fixture
def browser_page():
    """A headless Debian-chromium page (never a downloaded browser), with its console errors and remote requests.

    Skips where chromium is absent, but fails under CI, where `make test` installs it.
    """
    import shutil
    import tempfile

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make test` installs it (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    errors, remote = [], []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=browser, headless=True, args=CHROMIUM_ARGS,
                                                   viewport={"width": 1000, "height": 850})
        page = ctx.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: remote.append(r.url) if not r.url.startswith(("file:", "data:", "blob:")) else None)
        yield page, errors, remote
        ctx.close()
