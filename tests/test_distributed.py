"""Data-parallel training on 2 CPU processes (gloo) through the engine, against one process on the same global batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup.config import PretrainConfig
from selfsup.errors import ConfigError
from selfsup.train import Batches, pretrain

from distributed_common import frozen_bn, global_views, make_simclr

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_each_rank_sees_a_disjoint_shard_of_each_epoch():
    images = np.arange(200, dtype=np.uint8).reshape(200, 1, 1, 1)
    for epoch in range(2):
        seen = [torch.cat([b.flatten() for b in Batches(images, 16, torch.device("cpu"), 3, r, 2).epoch(epoch)])
                for r in range(2)]
        assert len(seen[0]) == len(seen[1]) == 6 * 16
        assert not set(seen[0].tolist()) & set(seen[1].tolist())
        assert len(set(seen[0].tolist())) == len(seen[0])
    one = Batches(images, 16, torch.device("cpu"), 3, 0, 2)
    assert not torch.equal(next(iter(one.epoch(0))), next(iter(one.epoch(1))))  # a new order every epoch


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    """SimCLR's negatives are gathered with gradients: DDP's averaged gradients equal one process's on the whole
    batch. A gather without backward (or one that does not sum over ranks) gives a wrong gradient scale here."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(HERE / "distributed_worker.py"), str(tmp_path)]
    env = os.environ | {"PYTHONPATH": str(HERE.parent)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]

    single = frozen_bn(make_simclr())
    v1, v2 = global_views()
    loss = single.loss([v1, v2])
    loss.backward()
    got = torch.load(tmp_path / "simclr.pt")
    assert got["world"] == 2
    torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
    scale = max(p.grad.abs().max() for p in single.parameters())
    for name, p in single.named_parameters():
        torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-4 * scale, msg=name)

    byol = torch.load(tmp_path / "byol.pt")  # different data on each rank, 4 steps
    assert torch.equal(byol["targets"][0], byol["targets"][1]), "BYOL's EMA target differs across ranks"
    assert torch.equal(byol["onlines"][0], byol["onlines"][1])
    assert byol["ema_steps"] == 4 and byol["tau"] == pytest.approx(1.0)


def test_sync_batchnorm_on_cpu_is_a_clear_error(tmp_path):
    cfg = PretrainConfig(dataset="digits", steps=1, accelerator="cpu", devices=2, sync_batchnorm=True, out=str(tmp_path))
    with pytest.raises(ConfigError, match="needs GPUs"):
        pretrain(cfg, show_progress=False)


@pytest.mark.slow
def test_cli_trains_on_two_processes(tmp_path):
    """The same command with --devices 2: Fabric starts the second process; each takes half of every epoch."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "selfsup", "pretrain", "--dataset", "digits", "--accelerator", "cpu", "--devices", "2",
           "--steps", "4", "--batch-size", "32", "--monitor-seconds", "0", "--out", str(out)]
    env = os.environ | {"MASTER_PORT": str(free_port()), "PYTHONPATH": str(HERE.parent)}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    assert summary["images_seen"] == 4 * 32 * 2
