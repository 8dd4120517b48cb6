"""Checkpoints survive crashes and signals, resume is exact, and numerical faults stop cleanly."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import assert_same_run

from selfsup import checkpoint
from selfsup.config import PretrainConfig
from selfsup.errors import ConfigError, SelfsupError, TrainingError
from selfsup.methods.simclr import SimCLR
from selfsup.train import pretrain

ROOT = Path(__file__).parent.parent


def cfg_for(out, **kw) -> PretrainConfig:
    base = dict(dataset="digits", steps=6, batch_size=64, lr=1e-3, monitor_seconds=0, out=str(out),
                backbone_args={"width": 8})
    return PretrainConfig(**base | kw)


def cli(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "selfsup", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ | {"PYTHONPATH": str(ROOT)} | (env or {}))


def test_save_is_atomic_and_rotation_keeps_the_newest(tmp_path, monkeypatch):
    for step in range(1, 5):
        checkpoint.save_rotating(tmp_path, {"step": step}, step, keep=2)
    assert [p.name for p in checkpoint.step_files(tmp_path)] == ["step-000000004.pt", "step-000000003.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000003.pt", "step-000000003.pt.sha256",
                                                          "step-000000004.pt", "step-000000004.pt.sha256"]
    good = tmp_path / "step-000000004.pt"
    before = good.read_bytes()

    def crash(state, f):  # a crash half way through writing
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(good, {"step": 5})
    assert good.read_bytes() == before  # the old file is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    pretrain(cfg_for(tmp_path, checkpoint_steps=2), show_progress=False)
    ckpts = tmp_path / "checkpoints"
    (ckpts / "last.pt").write_bytes((ckpts / "last.pt").read_bytes()[:-200])  # truncated
    newest = ckpts / "step-000000004.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, the same length
    newest.write_bytes(bytes(data))
    with pytest.warns(UserWarning) as caught:
        path, state = checkpoint.latest(tmp_path)
    assert path.name == "step-000000002.pt" and state["budget"]["step"] == 2
    text = " ".join(str(w.message) for w in caught)
    assert "last.pt fails its sha256 check" in text and "step-000000004.pt fails its sha256 check" in text


def test_a_second_run_in_the_same_directory_needs_resume_or_overwrite(tmp_path):
    pretrain(cfg_for(tmp_path, steps=1), show_progress=False)
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        pretrain(cfg_for(tmp_path, steps=1), show_progress=False)
    with pytest.raises(SelfsupError, match="already finished at step 1"):
        pretrain(cfg_for(tmp_path, steps=1), show_progress=False, resume=True)
    pretrain(cfg_for(tmp_path, steps=2), show_progress=False, overwrite=True)
    assert checkpoint.load(tmp_path)["budget"]["step"] == 2


def test_resume_with_another_architecture_names_both(tmp_path):
    pretrain(cfg_for(tmp_path, checkpoint_steps=2), show_progress=False)
    (tmp_path / "checkpoints" / "last.pt").unlink()  # as if it had been stopped after step 4
    with pytest.raises(ConfigError, match=r"holds simclr/small_cnn\(width=8\) but byol/small_cnn\(width=8\)"):
        pretrain(cfg_for(tmp_path, method="byol"), show_progress=False, resume=True)
    with pytest.raises(ConfigError, match=r"holds simclr/small_cnn\(width=8\) but simclr/small_cnn\(width=16\)"):
        pretrain(cfg_for(tmp_path, backbone_args={"width": 16}), show_progress=False, resume=True)


def test_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot write to output directory"):
        pretrain(cfg_for(blocker / "run"), show_progress=False)


def poison_after(monkeypatch, good_calls: int, times: int):
    """SimCLR's loss turns NaN after `good_calls` calls, for `times` calls."""
    real, calls = SimCLR.loss, {"n": 0}

    def loss(self, views):
        calls["n"] += 1
        value = real(self, views)
        bad = good_calls < calls["n"] <= good_calls + times
        return value * float("nan") if bad else value

    monkeypatch.setattr(SimCLR, "loss", loss)


def test_non_finite_loss_stops_with_step_cause_and_last_good_checkpoint(tmp_path, monkeypatch):
    poison_after(monkeypatch, good_calls=4, times=1)
    with pytest.raises(TrainingError) as e:
        pretrain(cfg_for(tmp_path, checkpoint_steps=2), show_progress=False)
    msg = str(e.value)
    assert "loss became nan at step 5" in msg and "learning rate" in msg and "--precision 32-true" in msg
    assert "step-000000004.pt" in msg and "--skip-nonfinite" in msg
    path, state = checkpoint.latest(tmp_path)
    assert path.name == "step-000000004.pt" and state["budget"]["step"] == 4 and not state["final"]
    assert all(torch.isfinite(t).all() for t in state["method"].values() if t.is_floating_point())


def test_skip_nonfinite_skips_up_to_n_batches(tmp_path, monkeypatch):
    poison_after(monkeypatch, good_calls=2, times=2)
    pretrain(cfg_for(tmp_path, skip_nonfinite=2), show_progress=False)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["skipped_batches"] == 2
    poison_after(monkeypatch, good_calls=2, times=2)
    with pytest.raises(TrainingError, match="at step 4"):  # the second bad step, past an allowance of 1
        pretrain(cfg_for(tmp_path, skip_nonfinite=1), show_progress=False, overwrite=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.communicate()[1][-2000:]}")
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.05)


def finish(proc: subprocess.Popen) -> int:
    _, err = proc.communicate(timeout=300)
    if proc.returncode not in (0, -signal.SIGKILL):
        print(err[-3000:])
    return proc.returncode


def final_state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["byol", "simclr"])
def test_killed_and_resumed_run_is_bit_identical_to_an_uninterrupted_one(tmp_path, method):
    """SIGKILL mid-run (no chance to save), resume from the newest periodic checkpoint: the final weights,
    optimizer moments and EMA target equal, bit for bit, those of a run that was never stopped. CPU kernels,
    bf16 autocast included, are deterministic for a fixed thread count, so no tolerance is needed."""
    args = ["pretrain", "--dataset", "digits", "--method", method, "--steps", "40", "--batch-size", "64",
            "--checkpoint-steps", "5", "--keep-checkpoints", "2", "--monitor-seconds", "0", "--backbone-args", "width=16"]
    threads = {"OMP_NUM_THREADS": "2"}
    whole = cli(*args, "--out", str(tmp_path / "whole"), env=threads)
    assert finish(whole) == 0

    run = tmp_path / "killed"
    killed = cli(*args, "--out", str(run), env=threads)
    wait_for(run / "checkpoints" / "step-000000020.pt.sha256", killed)
    killed.send_signal(signal.SIGKILL)
    finish(killed)
    assert not (run / "checkpoints" / "last.pt").exists()
    resumed = cli("pretrain", "--resume", str(run), env=threads)
    assert finish(resumed) == 0

    assert_same_run(final_state(tmp_path / "whole"), final_state(run), 40)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    proc = cli("pretrain", "--dataset", "digits", "--steps", "100000", "--batch-size", "32", "--monitor-seconds", "0",
               "--checkpoint-steps", "5", "--out", str(run))
    wait_for(run / "checkpoints" / "step-000000005.pt.sha256", proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "SIGTERM at step" in err and f"--resume {run}" in err and "Traceback" not in err
    path, state = checkpoint.latest(run)
    assert not state["final"] and state["budget"]["step"] >= 5
    stopped_at = state["budget"]["step"]
    more = cli("pretrain", "--resume", str(run), "--steps", str(stopped_at + 3))  # a new budget replaces the old one
    _, err = more.communicate(timeout=300)
    assert more.returncode == 0, err[-2000:]
    assert checkpoint.load(run)["budget"]["step"] == stopped_at + 3


def test_two_runs_into_one_directory_and_a_crash_leaves_no_lock(tmp_path):
    """A second pretrain into a directory a live run is using is one line; once the first is killed (no chance to
    clean up), the directory is free again and the run resumes."""
    run = tmp_path / "run"
    args = ["--dataset", "digits", "--batch-size", "32", "--monitor-seconds", "0", "--checkpoint-steps", "2",
            "--backbone-args", "width=4"]
    first = cli("pretrain", *args, "--steps", "100000", "--out", str(run))
    wait_for(run / "checkpoints" / "step-000000002.pt.sha256", first)
    second = cli("pretrain", *args, "--steps", "2", "--overwrite", "--out", str(run))
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and "another selfsup process (pid" in err and "Traceback" not in err, err
    assert checkpoint.step_files(run / "checkpoints")  # --overwrite deleted nothing of the live run
    first.send_signal(signal.SIGKILL)
    finish(first)
    resumed = cli("pretrain", "--resume", str(run), "--steps", str(checkpoint.latest(run)[1]["budget"]["step"] + 2))
    assert finish(resumed) == 0


def test_a_full_disk_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    """Files may grow to 40 kB only (RLIMIT_FSIZE, as a full disk or a quota would refuse them): the checkpoint at
    step 4 cannot be written. The run stops with one line naming the file and the cause; the step-2 checkpoint
    is intact and verifiable; nothing half-written is left."""
    run = tmp_path / "run"
    pretrain(cfg_for(run, batch_size=32, checkpoint_steps=2, backbone_args={"width": 4},
                     method_args={"proj_hidden": 16, "proj_dim": 8}), show_progress=False)
    for name in ("last.pt", "step-000000006.pt", "step-000000004.pt"):
        checkpoint.remove(run / "checkpoints" / name)
    good = (run / "checkpoints" / "step-000000002.pt").read_bytes()

    def small_files():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # then a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))

    proc = subprocess.Popen([sys.executable, "-m", "selfsup", "pretrain", "--resume", str(run)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=small_files,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})
    _, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "cannot write" in lines[0] and "step-000000004.pt" in lines[0] and "File too large" in lines[0]
    assert [p.name for p in checkpoint.step_files(run / "checkpoints")] == ["step-000000002.pt"]
    assert (run / "checkpoints" / "step-000000002.pt").read_bytes() == good
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verifiable: no fallback warning
        assert checkpoint.latest(run)[1]["budget"]["step"] == 2
    assert not [p for p in run.rglob("*.tmp")]


def test_appending_after_a_torn_line_keeps_both_rows(tmp_path):
    from selfsup.files import append_jsonl, read_jsonl

    path = tmp_path / "evals.jsonl"
    path.write_text('{"key": "a", "accuracy": 0.5}\n{"key": "b", "accur')  # a writer killed mid-line
    append_jsonl(path, [{"key": "c", "accuracy": 0.7}])
    assert [r["key"] for r in read_jsonl(path)] == ["a", "c"]


@pytest.mark.slow
def test_compare_killed_during_evaluation_reuses_what_it_finished(tmp_path):
    """SIGKILL once the first evaluations are in evals.jsonl, then the same command: pretraining is reused, every
    evaluation appears once, and the ones finished before the kill are kept."""
    from selfsup.files import read_jsonl

    out = tmp_path / "cmp"
    args = ["compare", "--dataset", "digits", "--methods", "simclr", "--baselines", "random", "--labels-per-class",
            "1,2,5,10", "--evals", "knn,linear", "--seeds", "3", "--minutes-per-method", "0.05", "--backbone-args",
            "width=4", "--out", str(out)]
    first = cli(*args)
    wait_for(out / "evals.jsonl", first, timeout=300)
    first.send_signal(signal.SIGKILL)
    finish(first)
    before = {r["key"] for r in read_jsonl(out / "evals.jsonl")}
    second = cli(*args)
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    keys = [r["key"] for r in read_jsonl(out / "evals.jsonl")]
    assert len(keys) == len(set(keys)) == 2 * 4 * 3 * 2 and before <= set(keys)
    results = json.loads((out / "results.json").read_text())
    assert results["pretrain"]["simclr"]["reused"] and "pretraining simclr" not in err
