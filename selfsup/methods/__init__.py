"""Methods: one `nn.Module` each, built by composition, with `loss(views) -> Tensor`.

Protocol (no base class): `n_views` (how many augmented views `loss` takes), `backbone`
(the encoder that evaluation uses), `loss(views)`, and optionally `after_step(progress)`.
"""
from ..registry import Registry

METHODS: Registry = Registry("method")

from . import simclr  # noqa: E402,F401  (registers itself)

__all__ = ["METHODS"]
