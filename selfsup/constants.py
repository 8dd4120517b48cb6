"""Constant tensors beside the data they meet, copied to each device once.

A module-level constant (a colour matrix, colour bins) moved with `.to(x.device)` on every call is a blocking
host-to-device copy on every step on a GPU; `beside` keeps one copy per device and dtype instead.
"""
from __future__ import annotations

import torch
from torch import Tensor

_COPIES: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}


def beside(constant: Tensor, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """`constant` on `like`'s device, in `dtype` (default: `like`'s when both are floating point, else its own)."""
    if dtype is None:
        dtype = like.dtype if like.is_floating_point() and constant.is_floating_point() else constant.dtype
    if constant.device == like.device and constant.dtype == dtype:
        return constant
    key = (id(constant), like.device, dtype)
    copy = _COPIES.get(key)
    if copy is None:
        copy = _COPIES[key] = constant.to(like.device, dtype)
    return copy
