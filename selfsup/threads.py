"""How many CPU threads a selfsup process computes with, decided from the cores it may use and who else uses them.

torch's default takes every core and leaves OpenMP's workers spinning between parallel regions. Alone that is
the fastest setting; beside a second busy process on the same cores it is a cliff: the spinning workers of each
process take turns on the cores the other one needs, and two runs together reach about a third of one run's
throughput. OMP_WAIT_POLICY=PASSIVE shares fairly but costs about 15% alone.

selfsup keeps torch's default wait policy and instead never asks for more threads than there are free cores:

- the cores: the CPUs this process may run on (affinity), capped by a cgroup CPU quota (containers);
- the selfsup processes sharing them: each selfsup process registers in a small directory (its pid and its
  CPUs); every process counts the live ones whose CPUs overlap its own and that used at least BUSY_PEER of a
  core since its last look (an idle one, waiting on a child process, does not count);
- the other busy processes: the CPU time the cores spent busy over the last few seconds, less the time the
  registered selfsup processes used.

`decide` is the rule, a pure function of those four inputs. `Threads` measures them and applies the decision at
the start and again every few seconds (`poll`, called from the training and evaluation loops), so two runs
started one after the other split the cores within seconds and the survivor takes them back when the other ends.

SELFSUP_THREADS=N fixes the count; SELFSUP_THREADS=torch leaves torch's default untouched;
an OMP_NUM_THREADS the user set is respected as a fixed count.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, SelfsupError
from .files import write_json

BUSY_CORE = 0.7  # a core counts as taken by other processes when they used at least this much of it
BUSY_PEER = 0.3  # a registered selfsup process counts as a peer when it used at least this much of a core
POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Decision:
    threads: int
    reason: str


def decide(cores: int, quota: float | None = None, peers: int = 1, others_busy: float = 0.0) -> Decision:
    """Threads for one of `peers` busy selfsup processes sharing `cores` CPUs (a cgroup `quota` in cores, if any),
    with other processes keeping `others_busy` cores' worth of them busy.

    Each selfsup process gets an equal share of the cores the others leave free, and at least one thread."""
    limit = cores if quota is None else max(1, min(cores, math.floor(quota + 1e-9)))
    taken = min(limit, math.floor(max(others_busy, 0.0) + (1 - BUSY_CORE)))
    free = limit - taken
    threads = max(1, free // max(peers, 1))
    parts = [f"{cores} core(s)" + (f", a quota of {quota:g}" if quota is not None and quota < cores else "")]
    if peers > 1:
        parts.append(f"{peers} selfsup processes share them")
    if taken:
        parts.append(f"other processes keep {others_busy:.1f} busy")
    return Decision(threads, f"{threads} thread(s): " + "; ".join(parts))


# ---- measuring the inputs ----------------------------------------------------------------------------------

def affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 cpu.max or v1 cfs files), or None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), which tells a live process from a reused pid."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()[19]


def _cpu_seconds(pid: int | str) -> float:
    """User + system CPU seconds of every thread of `pid` so far (0 when it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_seconds(cpus: list[int]) -> float:
    """CPU seconds the given CPUs spent busy (not idle, not waiting for I/O) since boot."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return 0.0
    wanted, busy = {f"cpu{c}" for c in cpus}, 0
    for line in lines:
        name, *ticks = line.split()
        if name in wanted:
            t = [int(v) for v in ticks[:8]]
            busy += sum(t) - t[3] - t[4]  # idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def registry_dir() -> Path:
    return Path(os.environ.get("SELFSUP_REGISTRY") or Path(tempfile.gettempdir()) / f"selfsup-procs-{os.getuid()}")


class Registry:
    """One file per busy selfsup process: `PID.json` with its start time and CPUs. Dead entries are removed by
    whoever reads them, so a killed process stops counting at the next look."""

    def __init__(self, folder: Path | None = None):
        self.folder = folder or registry_dir()

    def add(self, pid: int, cpus: list[int]) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(self.folder / f"{pid}.json", {"start": _start_time(pid), "cpus": cpus})
        except (OSError, SelfsupError):  # an unwritable temp dir: this process just does not count for the others
            pass

    def remove(self, pid: int) -> None:
        (self.folder / f"{pid}.json").unlink(missing_ok=True)

    def live(self) -> dict[int, list[int]]:
        """pid -> CPUs of every registered process that is still running."""
        found = {}
        try:
            entries = list(self.folder.glob("*.json"))
        except OSError:
            return found
        for path in entries:
            try:
                pid, info = int(path.stem), json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if info.get("start") is None or _start_time(pid) != info["start"]:
                path.unlink(missing_ok=True)
                continue
            found[pid] = info.get("cpus", [])
        return found


def fixed_count(env: dict | None = None) -> int | str | None:
    """What the user fixed: an int, 'torch' (leave torch's default), or None (selfsup decides)."""
    env = os.environ if env is None else env
    given = env.get("SELFSUP_THREADS", "").strip().lower()
    if given in ("", "auto"):
        given = env.get("OMP_NUM_THREADS", "").strip()
    if not given:
        return None
    if given == "torch":
        return "torch"
    try:
        n = int(given)
    except ValueError:
        raise ConfigError(f"SELFSUP_THREADS={given!r}: give a number of threads, 'auto' or 'torch'") from None
    if n < 1:
        raise ConfigError(f"SELFSUP_THREADS={given!r}: give at least 1 thread, 'auto' or 'torch'")
    return n


@dataclass
class Threads:
    """The running process's thread count: decided at `start`, revised by `poll`, reported by `summary`."""

    registry: Registry = field(default_factory=Registry)
    poll_seconds: float = POLL_SECONDS
    fixed: int | str | None = None
    started: bool = False
    cpus: list[int] = field(default_factory=list)  # this process's CPUs, read at start
    current: Decision | None = None
    counts: list[int] = field(default_factory=list)
    _last: tuple[float, float, dict] | None = None  # (clock, busy CPU seconds, CPU seconds per selfsup pid)
    _next: float = 0.0

    def start(self, fixed: int | str | None = None) -> "Threads":
        """Register this process and set its threads (idempotent; `fixed` as from `fixed_count`).

        Deciding needs a short look at the cores' load: 0.25 s here, once per process."""
        if self.started:
            return self
        import atexit

        self.fixed, self.started = (fixed if fixed is not None else fixed_count()), True
        if self.fixed is None and torch_sees_a_gpu():  # the GPU sets the pace: no governor, torch's own threads
            self.fixed = "gpu"
        self.cpus = affinity()
        if self.fixed is None:
            self.registry.add(os.getpid(), self.cpus)
            atexit.register(self.stop)
            self.measure()
            time.sleep(0.25)
        self.apply()
        return self

    def stop(self) -> None:
        if self.started and self.fixed is None:
            self.registry.remove(os.getpid())
        self.started = False

    def measure(self) -> dict:
        """The decision's inputs over the time since the last look: the cores, the quota, the busy selfsup
        processes on them (this one and every registered one that used at least BUSY_PEER of a core), and the
        cores' worth of time the unregistered processes kept them busy."""
        me, mine = os.getpid(), set(self.cpus)
        pids = [pid for pid, cpus in self.registry.live().items() if not cpus or mine & set(cpus)]
        now, busy = time.monotonic(), _busy_seconds(self.cpus)
        seconds = {pid: _cpu_seconds(pid) for pid in set(pids) | {me}}
        peers, others = 1, 0.0
        if self._last is not None and now - self._last[0] > 0.1:
            wall, busy0, seconds0 = self._last
            dt = now - wall
            rates = {p: (s - seconds0[p]) / dt for p, s in seconds.items() if p in seconds0}  # newcomers: next time
            peers += sum(1 for p, r in rates.items() if p != me and r >= BUSY_PEER)
            others = max(0.0, (busy - busy0) / dt - sum(rates.values()))
        self._last = (now, busy, seconds)
        return {"cores": len(self.cpus), "quota": cgroup_quota(), "peers": peers, "others_busy": others}

    def apply(self) -> Decision | None:
        import torch

        if self.fixed in ("torch", "gpu"):
            why = "a GPU run: the governor stays off" if self.fixed == "gpu" else "SELFSUP_THREADS=torch"
            self.current = Decision(torch.get_num_threads(), f"torch's default ({why})")
        elif self.fixed is not None:
            self.current = Decision(int(self.fixed), f"{self.fixed} thread(s): fixed by SELFSUP_THREADS/OMP_NUM_THREADS")
        else:
            self.current = decide(**self.measure())
        if torch.get_num_threads() != self.current.threads:
            torch.set_num_threads(self.current.threads)
        self.counts.append(self.current.threads)
        self._next = time.monotonic() + self.poll_seconds
        return self.current

    def poll(self) -> None:
        """Revise the thread count when `poll_seconds` have passed (a clock read otherwise). Call from the main
        thread: torch's thread count belongs to the thread that sets it."""
        if self.started and self.fixed is None and time.monotonic() >= self._next:
            self.apply()

    def summary(self) -> dict:
        if self.current is None:
            import torch

            return {"threads": torch.get_num_threads(), "reason": "torch's default (selfsup did not decide)"}
        counts = self.counts or [self.current.threads]
        return {"threads": self.current.threads, "reason": self.current.reason, "min": min(counts), "max": max(counts),
                "changes": sum(a != b for a, b in zip(counts, counts[1:]))}


def torch_sees_a_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


THREADS = Threads()


def start(fixed: int | str | None = None) -> Threads:
    """Decide this process's threads now and keep revising them (idempotent)."""
    return THREADS.start(fixed)


def poll() -> None:
    THREADS.poll()
