"""--precision auto on a CPU: bf16 only where a timed probe finds it faster for the encoder, cached, and reported."""
import json

import pytest
import torch

from selfsup import engine
from selfsup.config import PretrainConfig
from selfsup.encoders import EncoderSpec
from selfsup.train import pretrain

SPEC = EncoderSpec("small_cnn", {"width": 8}, 1, 8)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty cache, no decision in this process yet, and a CPU that runs bf16 natively."""
    monkeypatch.setenv("SELFSUP_PRECISION_CACHE", str(tmp_path / "precision.json"))
    monkeypatch.delenv("SELFSUP_PRECISION_CHOSEN", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(engine, "_CHOSEN", {})
    monkeypatch.setattr(engine, "cpu_bf16_path", lambda: "avx512bf16")
    return tmp_path / "precision.json"


def probe_returning(fp32, bf16, calls):
    def probe(spec, *a, **k):
        calls.append(spec)
        return {"fp32": fp32, "bf16": bf16, "batch": 16}
    return probe


@pytest.mark.parametrize("fp32,bf16,want", [(1.0, 1.0, "32-true"), (1.0, 0.92, "32-true"), (1.0, 0.90, "bf16-mixed"),
                                            (1.0, 0.5, "bf16-mixed"), (1.0, 1.3, "32-true")])
def test_bf16_only_where_it_is_measurably_faster(fresh, monkeypatch, fp32, bf16, want):
    calls = []
    monkeypatch.setattr(engine, "probe_seconds", probe_returning(fp32, bf16, calls))
    got = engine.measured_precision(SPEC)
    assert got["precision"] == want and len(calls) == 1
    assert f"{fp32 / bf16:.2f}x fp32" in got["reason"] and str(fresh) in got["reason"]


def test_the_answer_is_cached_per_encoder(fresh, monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "probe_seconds", probe_returning(1.0, 0.5, calls))
    engine.measured_precision(SPEC)
    monkeypatch.setattr(engine, "_CHOSEN", {})  # a new process: only the file remembers
    assert engine.measured_precision(SPEC)["precision"] == "bf16-mixed" and len(calls) == 1
    other = EncoderSpec("small_cnn", {"width": 16}, 1, 8)
    engine.measured_precision(other)
    assert len(calls) == 2 and len(json.loads(fresh.read_text())) == 2


def test_no_probe_without_native_bf16_or_among_launched_processes(fresh, monkeypatch):
    monkeypatch.setattr(engine, "probe_seconds", lambda *a, **k: pytest.fail("probed"))
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun started several: they could disagree, so none probes
    got = engine.measured_precision(SPEC)
    assert got["precision"] == "32-true" and "several processes" in got["reason"]
    monkeypatch.setattr(engine, "_CHOSEN", {})
    monkeypatch.setattr(engine, "cpu_bf16_path", lambda: "none")
    assert "no native bf16" in engine.measured_precision(SPEC)["reason"]


def test_a_launched_process_takes_its_parents_choice(fresh, monkeypatch):
    monkeypatch.setattr(engine, "probe_seconds", probe_returning(1.0, 0.5, []))
    chosen = engine.measured_precision(SPEC)
    handed = engine.os.environ["SELFSUP_PRECISION_CHOSEN"]
    monkeypatch.setattr(engine, "_CHOSEN", {})
    fresh.unlink()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("SELFSUP_PRECISION_CHOSEN", handed)
    assert engine.measured_precision(SPEC) == chosen


def test_the_probe_times_both_and_leaves_the_random_streams_alone():
    torch.manual_seed(3)
    want = torch.rand(4)
    torch.manual_seed(3)
    with torch.no_grad():  # as evaluation calls it
        t = engine.probe_seconds(SPEC, batch=32, rounds=1)
    assert torch.equal(torch.rand(4), want)
    assert t["fp32"] > 0 and t["bf16"] > 0 and 16 <= t["batch"] <= 32


def test_summary_records_precision_and_threads_with_reasons(fresh, tmp_path, monkeypatch):
    from selfsup.data import load

    monkeypatch.setattr(engine, "probe_seconds", probe_returning(1.0, 2.0, []))  # bf16 measured slower
    data = load("digits", "train")
    cfg = PretrainConfig(dataset="digits", steps=2, batch_size=32, monitor_seconds=0, out=str(tmp_path / "a"),
                         accelerator="cpu")
    pretrain(cfg, data, show_progress=False)
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["precision"] == "32-true" and "bf16 ran 0.50x fp32" in s["precision_reason"]
    assert s["threads"]["threads"] >= 1 and "thread(s)" in s["threads"]["reason"]
    pretrain(cfg.override(out=str(tmp_path / "b"), precision="bf16-mixed"), data, show_progress=False)
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["precision"] == "bf16-mixed" and s["precision_reason"] == "--precision bf16-mixed"


def test_evaluation_follows_the_measured_choice(fresh, monkeypatch):
    from selfsup.encoders import build_encoder

    encoder = build_encoder(SPEC)
    monkeypatch.setattr(engine, "probe_seconds", probe_returning(1.0, 2.0, []))
    with engine.autocast_for(torch.device("cpu"), "auto", encoder):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(engine, "_CHOSEN", {})
    monkeypatch.delenv("SELFSUP_PRECISION_CHOSEN")
    fresh.unlink()
    monkeypatch.setattr(engine, "probe_seconds", probe_returning(1.0, 0.5, []))
    with engine.autocast_for(torch.device("cpu"), "auto", encoder):
        assert torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("precision,want", [("bf16-mixed", True), ("32-true", False)])
def test_one_process_training_runs_under_the_precision_it_reports(tmp_path, precision, want):
    """The engine's wrapper autocasts a marked method only under DDP; one process must autocast too (it did not:
    every single-process bf16 run trained in fp32 while summary.json said bf16-mixed)."""
    from selfsup.data import load

    seen = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, i, o: seen.append(torch.is_autocast_enabled("cpu")) if isinstance(m, torch.nn.Conv2d) else None)
    try:
        cfg = PretrainConfig(dataset="digits", steps=2, batch_size=32, monitor_seconds=0, out=str(tmp_path / "r"),
                             accelerator="cpu", precision=precision)
        pretrain(cfg, load("digits", "train"), show_progress=False)
    finally:
        hook.remove()
    assert seen and all(s == want for s in seen)
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["precision"] == precision


def test_a_damaged_cache_is_measured_again(fresh, monkeypatch):
    calls = []
    monkeypatch.setattr(engine, "probe_seconds", probe_returning(1.0, 0.5, calls))
    monkeypatch.setenv("SELFSUP_PRECISION_CHOSEN", "not json")
    fresh.write_text("[1, 2")
    assert engine.measured_precision(SPEC)["precision"] == "bf16-mixed" and len(calls) == 1
    assert list(json.loads(fresh.read_text()).values())[0]["precision"] == "bf16-mixed"


@pytest.mark.parametrize("native, want", [(True, "bf16-mixed"), (False, "16-mixed")])
def test_auto_on_a_gpu_takes_bf16_only_where_it_is_native(monkeypatch, native, want):
    """A V100 or T4 runs bf16 only by emulation (torch counts it as supported by default): auto must take fp16
    with a gradient scaler there, and bf16 on Ampere and later."""
    from selfsup.engine import choose_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert choose_precision("cuda") == want
