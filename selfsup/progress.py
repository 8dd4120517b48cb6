"""Progress of a loop of steps on stderr, for the long parts that are not pretraining (fine-tuning, semi-supervised
training): a tqdm bar on a terminal, otherwise a plain line every `every` seconds with the step, the time spent
and the time left at the pace so far. Pretraining has its own line (`run.ProgressLine`), which shows its loss and
collapse statistics."""
from __future__ import annotations

import sys
import time


def clock(seconds: float) -> str:
    """`seconds` as 1h02m, 3m05s or 42s."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Steps:
    """`update(step)` after each of `total` steps; `close()` at the end (also when the loop stops early). With no
    `label` (None) it does nothing, so that a loop can take its caller's optional label as it is."""

    def __init__(self, label: str | None, total: int, every: float = 15.0):
        self.label, self.total, self.enabled, self.every = label, total, label is not None, every
        self.start = self.last = time.perf_counter()
        self.bar = None
        if self.enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit="step", file=sys.stderr, leave=False)

    def line(self, step: int) -> str:
        spent = time.perf_counter() - self.start
        left = spent * (self.total - step) / max(step, 1)
        return f"{self.label}: step {step}/{self.total}, {clock(spent)} spent, about {clock(left)} left"

    def update(self, step: int) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()
        elif time.perf_counter() - self.last >= self.every:
            self.last = time.perf_counter()
            print(self.line(step), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
