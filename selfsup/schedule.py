"""Schedules over training progress in [0, 1]: one cosine, used for learning rates and EMA momenta."""
from __future__ import annotations

import math


def cosine(progress: float, start: float, end: float) -> float:
    """From `start` at progress 0 to `end` at progress 1 along half a cosine."""
    p = min(1.0, max(0.0, progress))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * p))


def warmup_cosine(progress: float, base: float, warmup: float) -> float:
    """Linear warmup from 0 over the first `warmup` of progress, then cosine decay from `base` to zero."""
    if progress < warmup:
        return base * progress / warmup
    return cosine((progress - warmup) / max(1e-8, 1 - warmup), base, 0.0)


def side_at(progress: float, full: int, start: float, ramp: float, multiple: int = 4) -> int:
    """Progressive resolution: the side of a step's views, from `start` x `full` at progress 0 growing linearly to
    `full` at progress `ramp`, in multiples of `multiple` px (a few shapes, each a fraction of the full step's cost)."""
    if start >= 1 or progress >= ramp:
        return full
    side = full * (start + (1 - start) * progress / ramp)
    return max(multiple, min(full, round(side / multiple) * multiple))
