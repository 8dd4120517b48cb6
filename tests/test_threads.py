"""The thread decision (a pure function), the registry of busy selfsup processes, and the measured inputs."""
import itertools
import json
import os
import subprocess
import sys
import time

import pytest

from selfsup import threads
from selfsup.errors import ConfigError
from selfsup.threads import Registry, Threads, decide, fixed_count


def reference(cores, quota, peers, others_busy):
    """The rule written out: the cores this process may use, less whole cores the others keep busy (a core counts
    when at least 0.7 of it is used), split evenly between the selfsup processes, never below one thread."""
    usable = cores
    if quota is not None:
        usable = max(1, min(cores, int(quota)))
    taken = 0
    while taken < usable and others_busy - taken >= 0.7 - 1e-9:
        taken += 1
    return max(1, (usable - taken) // peers)


def test_decide_matches_the_rule():
    for cores, quota, peers, others in itertools.product([1, 2, 4, 16], [None, 0.5, 1.0, 1.5, 2.0, 3.9, 8.0],
                                                         [1, 2, 3, 5], [0.0, 0.2, 0.69, 0.71, 1.0, 1.6, 2.5, 20.0]):
        d = decide(cores, quota, peers, others)
        assert d.threads == reference(cores, quota, peers, others), (cores, quota, peers, others)
        usable = cores if quota is None else max(1, min(cores, int(quota)))
        assert d.threads * peers <= max(usable, peers)  # never more threads than cores, unless each has one already


def test_decide_cases_a_user_meets():
    assert decide(2).threads == 2  # alone: torch's default, every core
    assert decide(2, peers=2).threads == 1  # two runs on two cores: one each, no spinning over each other
    assert decide(16, peers=2).threads == 8
    assert decide(16, quota=4.0).threads == 4  # a container's quota, not the host's cores
    assert decide(2, others_busy=1.0).threads == 1  # a busy program beside it keeps a core
    assert decide(2, others_busy=0.3).threads == 2  # an idle-ish one does not
    d = decide(8, quota=2.5, peers=2, others_busy=0.0)
    assert d.threads == 1 and "2 selfsup processes" in d.reason and "quota of 2.5" in d.reason


def test_fixed_count_reads_the_environment():
    assert fixed_count({}) is None
    assert fixed_count({"SELFSUP_THREADS": "auto"}) is None
    assert fixed_count({"SELFSUP_THREADS": "3"}) == 3
    assert fixed_count({"SELFSUP_THREADS": "torch"}) == "torch"
    assert fixed_count({"OMP_NUM_THREADS": "4"}) == 4  # the user's OpenMP setting is respected
    assert fixed_count({"SELFSUP_THREADS": "2", "OMP_NUM_THREADS": "4"}) == 2
    for bad in ("0", "many", "-1"):
        with pytest.raises(ConfigError, match="SELFSUP_THREADS"):
            fixed_count({"SELFSUP_THREADS": bad})


def test_cli_rejects_a_bad_thread_count(tmp_path):
    env = os.environ | {"SELFSUP_THREADS": "lots"}
    r = subprocess.run([sys.executable, "-m", "selfsup", "pretrain", "--dataset", "digits", "--steps", "1",
                        "--out", str(tmp_path / "r")], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: SELFSUP_THREADS='lots': give a number of threads, 'auto' or 'torch'"]


def spinner(registry: Registry | None = None) -> subprocess.Popen:
    """A process that keeps one core busy, registered as a selfsup process when `registry` is given."""
    code = "while True: pass"
    if registry is not None:
        code = (f"import os; from selfsup.threads import Registry, affinity; from pathlib import Path; "
                f"Registry(Path({str(registry.folder)!r})).add(os.getpid(), affinity()); print('ready', flush=True)\n"
                + code)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    if registry is not None:
        assert p.stdout.readline().strip() == "ready"
    return p


def test_registry_forgets_dead_and_reused_pids(tmp_path):
    reg = Registry(tmp_path)
    reg.add(os.getpid(), [0])
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    reg.add(p.pid, [0])  # start time unreadable: the process is gone
    (tmp_path / "1.json").write_text(json.dumps({"start": "0", "cpus": [0]}))  # pid 1 runs, but started otherwise
    (tmp_path / "junk.json").write_text("{")
    assert reg.live() == {os.getpid(): [0]}
    assert sorted(f.name for f in tmp_path.iterdir()) == [f"{os.getpid()}.json", "junk.json"]
    reg.remove(os.getpid())
    assert reg.live() == {}


@pytest.mark.skipif(len(threads.affinity()) < 2, reason="needs two cores to share")
def test_threads_follow_the_busy_processes_on_the_cores(tmp_path):
    """Measured, not assumed: a registered busy selfsup process halves this one's threads, an unregistered busy
    program takes its core, and when they end the threads come back."""
    import torch

    before = torch.get_num_threads()
    t = Threads(Registry(tmp_path), poll_seconds=0.0)
    cores = len(threads.affinity())
    try:
        t.start(fixed=None)
        assert t.current.threads == cores and os.getpid() in t.registry.live()
        peer = spinner(t.registry)
        try:
            time.sleep(0.6)
            t.apply()  # the peer is new: seen from the next window on
            time.sleep(0.6)
            d = t.apply()
            assert d.threads == cores // 2 and "2 selfsup processes" in d.reason, d
            assert torch.get_num_threads() == cores // 2
        finally:
            peer.kill()
            peer.wait()
        time.sleep(0.6)
        t.apply()
        time.sleep(0.6)
        assert t.apply().threads == cores
        if cores == 2:
            other = spinner()  # not selfsup: counts through the cores' busy time
            try:
                time.sleep(0.6)
                t.apply()
                time.sleep(1.0)
                d = t.apply()
                assert d.threads == 1 and "other processes" in d.reason, d
            finally:
                other.kill()
                other.wait()
        s = t.summary()
        assert s["min"] == cores // 2 and s["max"] == cores and s["changes"] >= 2
    finally:
        t.stop()
        torch.set_num_threads(before)
    assert t.registry.live() == {}


def test_fixed_threads_are_applied_and_reported(tmp_path):
    import torch

    before = torch.get_num_threads()
    t = Threads(Registry(tmp_path))
    try:
        t.start(fixed=1)
        assert torch.get_num_threads() == 1 and t.registry.live() == {}  # fixed: not registered, not revised
        assert t.summary()["reason"].startswith("1 thread(s): fixed")
    finally:
        t.stop()
        torch.set_num_threads(before)


def test_the_governor_stays_off_a_gpu_machine(monkeypatch):
    """On a machine where torch sees a GPU, the GPU sets the pace: torch keeps its own thread count and nothing
    measures or revises it."""
    from selfsup import threads

    monkeypatch.setattr(threads, "torch_sees_a_gpu", lambda: True)
    monkeypatch.delenv("SELFSUP_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    t = threads.Threads()
    monkeypatch.setattr(t, "measure", lambda: pytest.fail("measured the cores on a GPU machine"))
    t.start()
    assert "GPU" in t.current.reason and t.fixed == "gpu"
    t.stop()
