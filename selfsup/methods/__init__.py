"""Methods: one `nn.Module` each, built by composition behind the contract in `base.py` (`Method`, `MethodBase`).

A new method is one file here that registers itself with `@METHODS.register(name, description)`;
the loop, the evaluation, the report and the command line find it through the registry.
"""
from ..registry import Registry

METHODS: Registry = Registry("method")

from . import barlow, byol, colorization, dino, mae, moco, rotation, simclr, simsiam, vicreg  # noqa: E402,F401  (each registers itself)
from .base import Method, MethodBase  # noqa: E402

__all__ = ["METHODS", "Method", "MethodBase"]
