"""The model factory: methods and their encoders from a config or a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .backbones import sized_args
from .config import PretrainConfig
from .encoders import EncoderSpec, WithInput, build_encoder, load_exported, random_encoder  # noqa: F401  (re-exported)
from .errors import ConfigError
from .methods import METHODS

def encoder_spec(cfg: PretrainConfig, data_channels: int, data_size: int) -> EncoderSpec:
    """The encoder a pretraining config makes for images of `data_channels` channels and side `data_size`."""
    transform = METHODS.get(cfg.method).input_transform(data_channels)
    side = cfg.image_size or data_size
    return EncoderSpec(cfg.backbone, sized_args(cfg.backbone, dict(cfg.backbone_args), side), data_channels, side,
                       transform)


def build_method(cfg: PretrainConfig, spec: EncoderSpec) -> nn.Module:
    return METHODS.build(cfg.method, build_encoder(spec), **cfg.method_args)


def describe(cfg: PretrainConfig | dict) -> str:
    """`method/backbone` plus non-default backbone and method arguments, as a user would name the architecture."""
    c = cfg if isinstance(cfg, dict) else cfg.to_dict()
    extra = ",".join(f"{k}={v}" for k, v in sorted({**c.get("backbone_args", {}), **c.get("method_args", {})}.items()))
    return f"{c['method']}/{c['backbone']}" + (f"({extra})" if extra else "")


def load_state_into(method: nn.Module, state: dict[str, Any], wanted: PretrainConfig, path: str | Path) -> None:
    """Load a checkpoint's weights into `method`, or say which architecture the checkpoint holds and which was asked for."""
    saved = state["config"]
    reason = None
    if any(saved.get(k) != getattr(wanted, k) for k in ("method", "backbone", "backbone_args", "method_args")):
        reason = "different architecture"
    else:
        try:
            method.load_state_dict(state["method"])
        except RuntimeError as e:
            reason = str(e).splitlines()[0]
    if reason:
        raise ConfigError(f"checkpoint {path} holds {describe(saved)} but {describe(wanted)} was asked for "
                          f"({reason}); use a matching checkpoint or start a new run")


def method_from(state: dict[str, Any]) -> tuple[nn.Module, PretrainConfig]:
    """The trained method (on CPU, eval mode) and config of a checkpoint read by `checkpoint.read`."""
    cfg = PretrainConfig.from_dict(state["config"])
    method = build_method(cfg, EncoderSpec.from_dict(state["encoder"]))
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as e:
        raise ConfigError(f"checkpoint weights do not fit {describe(cfg)}: {str(e).splitlines()[0]}") from None
    return method.eval(), cfg


def encoder_from(state: dict[str, Any]) -> tuple[nn.Module, PretrainConfig]:
    """The pretrained encoder (on CPU, eval mode) and config of a checkpoint read by `checkpoint.read`."""
    method, cfg = method_from(state)
    return method.backbone.eval(), cfg


def encoder_and_config(path: str | Path) -> tuple[nn.Module, PretrainConfig]:
    """The pretrained encoder of a checkpoint file, a run directory or a safetensors export (`selfsup export`),
    and the config it was trained with."""
    from . import checkpoint

    if (Path(path) / "encoder.json").exists():
        encoder, meta = load_exported(path)
        return encoder, PretrainConfig.from_dict(meta["config"])
    return encoder_from(checkpoint.load(path))
