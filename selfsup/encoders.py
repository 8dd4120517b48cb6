"""Encoders as downstream code sees them: a backbone, maybe behind a fixed input transform, and its spec;
rebuilt from a safetensors export."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .backbones import BACKBONES, fit_to_data
from .colour import Lightness
from .errors import ConfigError, SelfsupError
from .files import read_json

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


def build_encoder(spec: EncoderSpec) -> nn.Module:
    """A freshly initialised encoder for `spec`; the spec rides along as `encoder.spec`."""
    if spec.input_transform is not None and spec.input_transform not in INPUT_TRANSFORMS:
        raise ConfigError(f"unknown input transform {spec.input_transform!r}; known: {', '.join(INPUT_TRANSFORMS)}")
    transform, channels = INPUT_TRANSFORMS[spec.input_transform] if spec.input_transform else (None, spec.in_channels)
    net = BACKBONES.build(spec.backbone, **spec.backbone_args | {"in_channels": channels, "image_size": spec.image_size})
    encoder = WithInput(transform(), net, spec.in_channels) if transform else net
    encoder.spec = spec
    return encoder


def random_encoder(spec: EncoderSpec, seed: int, images=None) -> nn.Module:
    """The random-init baseline: an encoder of the same architecture, initialised from `seed`, with its
    data-fitted layers (a whitening layer) fitted from `images` as pretraining would have fitted them."""
    torch.manual_seed(seed)
    encoder = build_encoder(spec)
    return encoder if images is None else fit_to_data(encoder, images)


def load_exported(folder: str | Path) -> tuple[nn.Module, dict]:
    """The encoder `selfsup export --format safetensors` wrote, rebuilt (CPU, eval mode), and its encoder.json."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_json(folder / "encoder.json")
    if meta.get("format") != "safetensors":
        raise SelfsupError(f"{folder} holds a {meta.get('format')} export; load it with torch.jit.load or onnxruntime "
                           f"(docs/export.md), or export again with --format safetensors")
    encoder = build_encoder(EncoderSpec.from_dict(meta["encoder"]))
    encoder.load_state_dict(load_file(folder / meta["files"]["safetensors"]))
    return encoder.eval(), meta
