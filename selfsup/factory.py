"""The model factory: encoders and methods from a config, a checkpoint or an encoder spec."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import BACKBONES
from .colour import Lightness
from .config import PretrainConfig
from .errors import ConfigError
from .methods import METHODS

# A fixed input transform inside an encoder: name -> (module, the channels it hands the backbone).
INPUT_TRANSFORMS: dict[str, tuple[type[nn.Module], int]] = {"lightness": (Lightness, 1)}


@dataclass
class EncoderSpec:
    """What code outside selfsup needs to rebuild an encoder and feed it images."""

    backbone: str
    backbone_args: dict[str, Any] = field(default_factory=dict)
    in_channels: int = 3  # channels of the images the encoder takes
    image_size: int | None = None  # the side it was trained at; evaluation resizes other sizes to it
    input_transform: str | None = None  # applied inside the encoder first (lightness: RGB -> Lab L / 100)
    value_range: tuple[float, float] = (0.0, 1.0)  # pixel values it expects: uint8 / 255, no normalisation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EncoderSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or "backbone" not in d or set(d) - names:
            raise ConfigError(f"not an encoder spec: {d!r:.200}")
        return cls(**d | {"value_range": tuple(d.get("value_range", (0.0, 1.0)))})


class WithInput(nn.Module):
    """An encoder behind a fixed input transform, keeping the backbone contract."""

    def __init__(self, transform: nn.Module, encoder: nn.Module, in_channels: int):
        super().__init__()
        self.transform, self.encoder = transform, encoder
        self.out_dim, self.in_channels, self.image_size = encoder.out_dim, in_channels, encoder.image_size

    def forward_features(self, x: Tensor) -> Tensor:
        return self.encoder.forward_features(self.transform(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(self.transform(x))

    def first_conv(self) -> nn.Module:
        return self.encoder.first_conv()


def encoder_spec(cfg: PretrainConfig, data_channels: int, data_size: int) -> EncoderSpec:
    """The encoder a pretraining config makes for images of `data_channels` channels and side `data_size`."""
    transform = METHODS.get(cfg.method).input_transform(data_channels)
    return EncoderSpec(cfg.backbone, dict(cfg.backbone_args), data_channels, cfg.image_size or data_size, transform)


def build_encoder(spec: EncoderSpec) -> nn.Module:
    """A freshly initialised encoder for `spec`; the spec rides along as `encoder.spec`."""
    if spec.input_transform is not None and spec.input_transform not in INPUT_TRANSFORMS:
        raise ConfigError(f"unknown input transform {spec.input_transform!r}; known: {', '.join(INPUT_TRANSFORMS)}")
    transform, channels = INPUT_TRANSFORMS[spec.input_transform] if spec.input_transform else (None, spec.in_channels)
    net = BACKBONES.build(spec.backbone, **spec.backbone_args | {"in_channels": channels, "image_size": spec.image_size})
    encoder = WithInput(transform(), net, spec.in_channels) if transform else net
    encoder.spec = spec
    return encoder


def random_encoder(spec: EncoderSpec, seed: int) -> nn.Module:
    """The random-init baseline: an encoder of the same architecture, initialised from `seed`."""
    torch.manual_seed(seed)
    return build_encoder(spec)


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


def load_encoder(path: str | Path) -> tuple[nn.Module, PretrainConfig]:
    """The pretrained encoder of a checkpoint file or run directory, and the config it was trained with."""
    from . import checkpoint

    return encoder_from(checkpoint.load(path))
