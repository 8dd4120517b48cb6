"""Checkpoints: written atomically, loaded back into an encoder with the config that made it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import PretrainConfig
from .errors import ConfigError, SelfsupError


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save to a temporary file, fsync, then rename: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def resolve(path: str | Path) -> Path:
    """Accept a checkpoint file or a run directory (then its checkpoints/last.pt)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.exists():
        raise SelfsupError(f"no checkpoint at {path}; pass a .pt file or a run directory made by `selfsup pretrain`")
    return path


def load(path: str | Path) -> dict[str, Any]:
    path = resolve(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise SelfsupError(f"checkpoint {path} is unreadable ({type(e).__name__}); it may be truncated, use an earlier one") from None


def build_method(cfg: PretrainConfig, in_channels: int) -> nn.Module:
    from .backbones import BACKBONES
    from .methods import METHODS

    cls = METHODS.get(cfg.method)
    args, method_args = dict(cfg.backbone_args), dict(cfg.method_args)
    if hasattr(cls, "input_channels"):  # e.g. colorization: the conv net sees one channel of colour data
        args["in_channels"] = cls.input_channels(in_channels)
        method_args["data_channels"] = in_channels
    args.setdefault("in_channels", in_channels)
    return METHODS.build(cfg.method, BACKBONES.build(cfg.backbone, **args), **method_args)


def load_encoder(path: str | Path) -> tuple[nn.Module, PretrainConfig]:
    """The pretrained backbone (on CPU, eval mode) and the config it was trained with."""
    state = load(path)
    if "method_state" not in state or "config" not in state:
        raise SelfsupError(f"{resolve(path)} is not a selfsup checkpoint (no method_state/config)")
    cfg = PretrainConfig.from_dict(state["config"])
    method = build_method(cfg, state["in_channels"])
    try:
        method.load_state_dict(state["method_state"])
    except RuntimeError as e:
        raise ConfigError(f"checkpoint weights do not fit {cfg.method}/{cfg.backbone}: {str(e).splitlines()[0]}") from None
    return method.backbone.eval(), cfg
