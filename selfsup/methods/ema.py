"""The EMA follower: BYOL's target, MoCo's key encoder and DINO's teacher.

A copy of online modules that no gradient reaches and no optimizer holds; after every optimizer step it moves
towards them, follower <- tau * follower + (1 - tau) * online, in one fused kernel per dtype. It owns its momentum
and schedule: tau from `tau_base` up to 1 on a cosine over the budget (BYOL, MoCo v3, DINO), or fixed (MoCo v2).
Its weights keep the keys an `nn.Sequential` of the copies has; `tau` and `steps` are its own buffers, saved
with the checkpoint.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..schedule import cosine


def tau_at(progress: float, tau_base: float) -> float:
    """BYOL's schedule: tau = 1 - (1 - tau_base) * (cos(pi * progress) + 1) / 2, from tau_base up to 1."""
    return cosine(progress, tau_base, 1.0)


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float | Tensor) -> None:
    """target <- tau * target + (1 - tau) * online, for every parameter, in one fused kernel per dtype (tau may be
    a tensor: no host sync)."""
    by_dtype: dict[torch.dtype, tuple[list, list]] = {}
    for t, o in zip(target.parameters(), online.parameters()):
        pair = by_dtype.setdefault(t.dtype, ([], []))
        pair[0].append(t)
        pair[1].append(o.detach())
    for dtype, (ts, os_) in by_dtype.items():
        torch._foreach_lerp_(ts, os_, (1 - tau).to(dtype) if isinstance(tau, Tensor) else 1 - tau)


class EMAFollower(nn.Sequential):
    """Copies of `online` modules, run in sequence, that follow them by EMA with momentum `tau`."""

    def __init__(self, *online: nn.Module, tau_base: float, schedule: bool = True):
        super().__init__(*(copy.deepcopy(m) for m in online))
        self.requires_grad_(False)
        self.tau_base, self.schedule = tau_base, schedule
        self.register_buffer("tau", torch.tensor(tau_base, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.steps_seen = 0  # a host copy of `steps` (no device read per step), restored with the weights
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "steps_seen", int(module.steps)))

    @torch.no_grad()
    def follow(self, online: nn.Module, progress: float) -> None:
        """One step: move towards `online` (the same modules, in order) at the current tau, then set tau for the next
        step from `progress` (in [0, 1] of the budget) unless it is fixed."""
        ema_update(self, online, self.tau)
        if self.schedule:
            self.tau.fill_(tau_at(progress, self.tau_base))
        self.steps += 1
        self.steps_seen += 1


def move_legacy_keys(method: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    """A load_state_dict pre-hook of a method: checkpoints written before the follower was a module kept its tau
    and step count on the method itself (`tau`, `ema_steps`); they move to the follower that owns them now."""
    followers = [name for name, m in method.named_children() if isinstance(m, EMAFollower)]
    for old, new in (("tau", "tau"), ("ema_steps", "steps")):
        if len(followers) == 1 and prefix + old in state_dict and f"{prefix}{followers[0]}.{new}" not in state_dict:
            state_dict[f"{prefix}{followers[0]}.{new}"] = state_dict.pop(prefix + old)
