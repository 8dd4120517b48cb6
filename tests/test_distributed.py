"""Data-parallel training on 2 CPU processes (gloo) through the engine, against one process on the same global batch."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfsup import checkpoint
from selfsup.config import PretrainConfig
from selfsup.errors import ConfigError
from selfsup.train import pretrain

from distributed_common import (COUPLED, SGD_CONFIG, coupled_views, frozen_bn, global_views, make_coupled,
                                make_simclr, method_state)
from selfsup.optim import NonFiniteGuard, make_optimizer

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cmd: list[str], env: dict, timeout: float = 150) -> subprocess.CompletedProcess:
    """Run a multi-process launch; on a timeout, kill the launcher and every process it started (they share its new
    session) and fail with what they printed, instead of leaving workers behind."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the multi-process launch did not finish in {timeout:.0f} s:\n{(out + err)[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    """SimCLR's negatives are gathered with gradients: DDP's averaged gradients equal one process's on the whole
    batch. A gather without backward (or one that does not sum over ranks) gives a wrong gradient scale here."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(HERE / "distributed_worker.py"), str(tmp_path)]
    env = os.environ | {"PYTHONPATH": str(HERE.parent)}
    r = launch(cmd, env)
    assert r.returncode == 0, r.stderr[-3000:]

    single = frozen_bn(make_simclr())
    opt = make_optimizer(single, SGD_CONFIG)
    v1, v2 = global_views()
    loss = single.loss([v1, v2])
    loss.backward()
    got = torch.load(tmp_path / "simclr.pt")
    assert got["world"] == 2
    torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    scale = max(p.grad.abs().max() for p in single.parameters())
    for name, p in single.named_parameters():
        torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-4 * scale, msg=name)
    NonFiniteGuard(opt, torch.device("cpu"), 0).check(loss, 1)
    opt.step()
    for name, p in single.named_parameters():
        torch.testing.assert_close(got["weights"][name], p.detach(), rtol=1e-4, atol=1e-4 * scale, msg=name)

    byol = torch.load(tmp_path / "byol.pt")  # different data on each rank, 4 steps
    assert torch.equal(byol["targets"][0], byol["targets"][1]), "BYOL's EMA target differs across ranks"
    assert torch.equal(byol["onlines"][0], byol["onlines"][1])
    assert byol["ema_steps"] == 4 and byol["tau"] == pytest.approx(1.0)


def test_coupled_losses_on_two_processes_match_one_process(tmp_path):
    """Barlow Twins' and VICReg's statistics over the global batch, MoCo v2's gathered queue, MoCo v3's gathered keys and
    DINO's centre: loss, averaged gradients and the state a step leaves equal one process on the whole batch. Then
    the EMA followers (DINO's teacher, MoCo's key encoders) are identical on every rank and never get a gradient."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(HERE / "distributed_methods_worker.py"), str(tmp_path)]
    r = launch(cmd, os.environ | {"PYTHONPATH": str(HERE.parent)})
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(tmp_path / "methods.pt")
    assert got["world"] == 2
    for name in COUPLED:
        single = make_coupled(name)
        loss = single.loss(coupled_views(name))
        loss.backward()
        single.after_optimizer_step(0.5)
        mine = got["results"][name]
        torch.testing.assert_close(mine["loss"], loss.detach(), rtol=1e-5, atol=1e-6, msg=name)
        scale = max(p.grad.abs().max() for p in single.parameters() if p.grad is not None)
        for key, p in single.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(mine["grads"][key], p.grad, rtol=1e-4, atol=1e-4 * scale, msg=f"{name} {key}")
        assert set(mine["grads"]) == {k for k, p in single.named_parameters() if p.grad is not None}, name
        for key, value in method_state(name, single).items():
            torch.testing.assert_close(mine["state"][key], value, rtol=1e-5, atol=1e-6, msg=f"{name} {key}")
    for name in ("dino", "mocov2", "mocov3"):
        followers = got["results"][name]["followers"]
        assert torch.equal(followers[0], followers[1]), f"{name}'s EMA copy differs across ranks"
        assert got["results"][name]["follower_grads"] == []


def test_sync_batchnorm_on_cpu_is_a_clear_error(tmp_path):
    cfg = PretrainConfig(dataset="digits", steps=1, accelerator="cpu", devices=2, sync_batchnorm=True, out=str(tmp_path))
    with pytest.raises(ConfigError, match="needs GPUs"):
        pretrain(cfg, show_progress=False)


def two_processes(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "selfsup", "pretrain", "--dataset", "digits", "--accelerator", "cpu", "--devices", "2",
           "--batch-size", "32", "--monitor-seconds", "0", "--backbone-args", "width=8", *args]
    env = os.environ | {"MASTER_PORT": str(free_port()), "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    r = launch(cmd, env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_cli_on_two_processes_writes_once_and_resumes_exactly(tmp_path):
    """--devices 2 through the command line: Fabric starts the second process; each takes its shard of every epoch;
    only rank 0 prints and writes; a run stopped after its step-4 checkpoint and resumed on two processes ends
    bit-identical to one that never stopped."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    r = two_processes("--steps", "8", "--checkpoint-steps", "4", "--out", str(whole))
    assert r.stdout.count("checkpoint:") == 1
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 8 and summary["images_seen"] == 8 * 32 * 2
    steps = [json.loads(line)["step"] for line in (whole / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # one writer: no line twice
    assert sorted(p.name for p in whole.iterdir()) == [".lock", "checkpoints", "config.json", "metrics.jsonl", "summary.json"]
    shutil.copytree(whole, cut)  # the same command again would write the same files
    for name in ("last.pt", "step-000000008.pt"):
        checkpoint.remove(cut / "checkpoints" / name)
    two_processes("--resume", str(cut))
    a, b = (torch.load(run / "checkpoints" / "last.pt", weights_only=False) for run in (whole, cut))
    assert b["summary"]["resumed"] and len(b["rng"]) == 2  # every process's random streams are saved
    for k, t in a["method"].items():
        assert torch.equal(t, b["method"][k]), k


def test_several_processes_keep_their_buffers_without_rebroadcasting():
    """Every process updates its buffers (EMA followers, MoCo's queue, DINO's centre) identically from gathered
    values (the workers above check it), so DDP must not send rank 0's buffers again on every forward."""
    from selfsup.engine import make_fabric

    fabric = make_fabric("cpu", devices=2, precision="32-true", launch=False)
    assert fabric.strategy._ddp_kwargs.get("broadcast_buffers") is False


def test_batchnorm_spans_the_processes_by_default_where_the_paper_does():
    from selfsup.engine import sync_batchnorm
    from selfsup.methods import METHODS

    need = {name for name in METHODS.names() if sync_batchnorm(None, METHODS.get(name), 2, "cuda")}
    assert need == {"simclr", "byol", "simsiam", "mocov3", "barlowtwins", "vicreg", "dino"}
    simclr = METHODS.get("simclr")
    assert not sync_batchnorm(None, simclr, 1, "cuda") and not sync_batchnorm(None, simclr, 2, "cpu")
    assert not sync_batchnorm(False, simclr, 2, "cuda") and sync_batchnorm(True, METHODS.get("mocov2"), 2, "cuda")
