"""The run directory and what belongs to it: resume and overwrite policy, checkpoints and their cadence,
config.json, metrics.jsonl, summary.json, stop signals, the progress line, the random streams and the loop's
state at its sync points.

Only the main process (rank 0) writes; every process takes part in a save (the random streams are gathered).
"""
from __future__ import annotations

import json
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint, loggers
from .errors import ConfigError, SelfsupError
from .files import DirLock, append_jsonl, write_json, write_text
from .monitor import is_collapsed


def resumable(out: str | Path) -> tuple[Path, dict]:
    """The newest readable checkpoint of an unfinished run: (path, state)."""
    path, state = checkpoint.latest(out)
    if state.get("final"):
        raise SelfsupError(f"the run in {out} already finished at step {state['budget']['step']}; nothing to resume "
                           f"(start a new --out to train longer)")
    return path, state


class RunDir:
    """OUT/: config.json, metrics.jsonl, summary.json and checkpoints/ (rotating step-N.pt, then last.pt).

    resume: continue from the newest readable checkpoint (or the (path, state) already read); overwrite: replace
    a run already there. Anything else in a directory that holds a run is an error that says which to choose.
    """

    def __init__(self, out: str | Path, resume: bool | tuple[Path, dict] = False, overwrite: bool = False,
                 checkpoint_steps: int | None = None, checkpoint_minutes: float = 5.0, keep: int = 3, logger: str = ""):
        self.out = Path(out)
        try:
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
            probe = self.out / f".write-test-{time.time_ns()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"cannot write to output directory {self.out} ({e.strerror}); choose another --out") from None
        found = (resume if isinstance(resume, tuple) else resumable(self.out)) if resume else (None, None)
        self.resumed_from, self.saved = found
        self.old = [] if resume else checkpoint.candidates(self.out)  # read on every process, before any deletes
        if self.old and not overwrite:
            raise ConfigError(f"{self.out} already holds a run ({self.old[0].name}); continue it with --resume {self.out}, "
                              f"start over with --overwrite, or choose another --out")
        self.history: list[dict] = self.saved["run"]["history"] if self.saved else []
        self.last_good, self.main = self.resumed_from, True
        self.every_steps, self.every_seconds, self.keep = checkpoint_steps, 60 * checkpoint_minutes, keep
        self.last_save = time.perf_counter()
        self.collapse_warned, self.logger, self.loggers, self.lock = False, logger, [], None

    def start(self, fabric, config: dict) -> None:
        """Remove a replaced run (rank 0, once every process has looked), write config.json and the metrics so far."""
        self.main = fabric.is_global_zero
        if self.main:
            self.lock = DirLock(self.out).acquire()  # before anything in the directory changes
        fabric.barrier()  # every process has looked at the directory
        if self.old and self.main:
            for p in self.old:
                checkpoint.remove(p)
        fabric.barrier()
        if self.main:
            self.loggers = loggers.make(self.logger, self.out, config)
            write_json(self.out / "config.json", config)
            write_text(self.out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))

    def step_due(self, step: int) -> bool:
        return self.every_steps is not None and step % self.every_steps == 0

    def time_due(self) -> bool:
        return time.perf_counter() - self.last_save >= self.every_seconds

    def log(self, stats: dict) -> None:
        self.history.append(stats)
        if self.main:
            append_jsonl(self.out / "metrics.jsonl", [stats])
            loggers.log(self.loggers, stats)
            if "embed_std_ratio" in stats and is_collapsed(stats) and not self.collapse_warned:
                self.collapse_warned = True
                print(f"warning: embeddings have collapsed at step {stats['step']}: std {stats['embed_std']:.4f} vs "
                      f"{stats['embed_std_ref']:.4f} (1/sqrt(d)); lower the learning rate or check the method's "
                      f"settings", file=sys.stderr, flush=True)

    def save(self, state: dict, step: int, final: bool) -> Path | None:
        """Rank 0 writes `state` (last.pt when final, else a rotating step file); others return None."""
        self.last_save = time.perf_counter()
        if not self.main:
            return None
        folder = self.out / "checkpoints"
        path = checkpoint.save(folder / "last.pt", state) if final else checkpoint.save_rotating(folder, state, step, self.keep)
        self.last_good = path
        return path

    def finish(self, summary: dict) -> None:
        if self.main:
            write_json(self.out / "summary.json", summary)
            loggers.close(self.loggers)

    def release(self) -> None:
        """Let another process use the directory (also done by the system when this process ends)."""
        if self.lock is not None:
            self.lock.release()

    def state_dict(self) -> dict:
        return {"history": self.history}


class StopSignals:
    """Turn the first SIGINT/SIGTERM into a flag the loop reads at its next sync point; a second one acts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


class RandomStreams:
    """Every random stream a process draws from (torch CPU and CUDA, numpy, python, the augmentation generator).
    `state_dict` gathers every process's streams, so all of them must call it together."""

    def __init__(self, generator: torch.Generator, fabric):
        self.generator, self.fabric = generator, fabric

    def local_state(self) -> dict:
        name, keys, pos, has_gauss, gauss = np.random.get_state()  # as plain values: checkpoints hold no arrays
        state = {"torch": torch.get_rng_state(), "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(gauss)),
                 "python": random.getstate(), "augment": self.generator.get_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def state_dict(self) -> list[dict]:
        if self.fabric.world_size == 1:
            return [self.local_state()]
        import torch.distributed as dist

        out = [None] * self.fabric.world_size
        dist.all_gather_object(out, self.local_state())
        return out

    def load_state_dict(self, states: list[dict]) -> None:
        state = states[self.fabric.global_rank]
        torch.set_rng_state(state["torch"])
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
        random.setstate(state["python"])
        self.generator.set_state(state["augment"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class ProgressLine:
    """A tqdm bar in percent of the budget on a terminal, plain lines every `every` seconds otherwise. It shows
    whatever a step's stats hold: loss, speed, collapse statistics, the method's metrics and the online kNN."""

    FIXED = ("step", "epoch", "progress", "loss", "img_per_s", "lr", "seconds", "embed_std", "embed_std_ref",
             "embed_std_ratio", "effective_rank")

    def __init__(self, enabled: bool, every: float = 15.0):
        self.bar, self.every, self.last, self.enabled = None, every, 0.0, enabled
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}", file=sys.stderr)

    def update(self, progress: float, stats: dict) -> None:
        if not self.enabled:
            return
        text = f"loss={stats['loss']:.4f} img/s={stats['img_per_s']:.0f}"
        if "embed_std_ratio" in stats:
            text += f" std*sqrt(d)={stats['embed_std_ratio']:.2f} rank={stats['effective_rank']:.0f}"
        text += "".join(f" {k}={v:.3f}" for k, v in stats.items() if k not in self.FIXED and isinstance(v, float))
        if self.bar is not None:
            self.bar.n = round(100 * progress, 1)
            self.bar.set_postfix_str(text, refresh=True)
        elif time.perf_counter() - self.last >= self.every or progress >= 1:
            self.last = time.perf_counter()
            eta = stats["seconds"] * (1 - progress) / max(progress, 1e-9)
            print(f"[{100 * progress:5.1f}%] step {stats['step']} {text} eta {eta:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class SyncState:
    """Where the loop stands at its sync points (host values only)."""

    next: int  # the step of the next sync point
    step: int  # the step of the last one
    t: float  # its time (perf_counter)
    monitor: float  # when the online monitor last ran
    bad: float  # skipped steps reported so far
