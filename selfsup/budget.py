"""The budget of a run: steps, images seen and progress in [0, 1] by epochs, steps or wall-clock minutes."""
from __future__ import annotations

import math
import time

from .config import PretrainConfig


class Budget:
    """Steps, images seen and progress in [0, 1] by epochs, steps or minutes.

    A time budget reads the clock only at sync points, where the processes agree on it; in between, progress
    moves at the agreed pace, so every process uses the same learning rate at every step."""

    def __init__(self, cfg: PretrainConfig, steps_per_epoch: int):
        self.total = cfg.steps or (None if cfg.minutes else max(1, math.ceil(cfg.epochs * steps_per_epoch)))
        self.seconds = 60 * cfg.minutes if cfg.minutes else None
        self.step = self.images_seen = 0
        self.before, self.start = 0.0, time.perf_counter()  # seconds spent in earlier sessions of a resumed run
        self.anchor, self.pace = (0, 0.0), 0.0  # (step, progress) at the last sync; progress per step since

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start

    def progress(self) -> float:
        if self.total is not None:
            return min(1.0, self.step / self.total)
        step, p = self.anchor
        return min(1.0, p + (self.step - step) * self.pace)

    def sync(self, elapsed: float) -> None:
        """Agreed wall time at a sync point: the new anchor and pace of a time budget."""
        if self.seconds is not None:
            (step, p), now = self.anchor, min(1.0, elapsed / self.seconds)
            self.pace = (now - p) / (self.step - step) if self.step > step else self.pace
            self.anchor = (self.step, now)

    def state_dict(self) -> dict:
        return {"step": self.step, "images_seen": self.images_seen, "progress": self.progress(),
                "seconds": self.elapsed()}

    def load_state_dict(self, s: dict) -> None:
        self.step, self.images_seen, self.before = s["step"], s["images_seen"], s["seconds"]
        self.anchor, self.start = (s["step"], s["progress"]), time.perf_counter()
