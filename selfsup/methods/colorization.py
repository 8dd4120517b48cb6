"""Colorization: Colorful Image Colorization (Zhang, Isola & Efros, ECCV 2016), as regression of Lab ab.

Colour data: the encoder sees Lab lightness L (1 channel); a small decoder predicts the ab channels
from the encoder's last feature map, with an L1 loss. Predicting ab leaves luminance, which the input
already holds, out of the target; L1 is less prone than L2 to the desaturated average of plausible
colours. (Zhang et al. classify over quantized ab bins instead, which is heavier.)
The encoder that evaluation gets is `Lightness -> conv net`, so colour images downstream go through
the same conversion as in pretraining, and the first conv layer is kept, never swapped.

1-channel data (MNIST, digits) has no colour. There the method runs a documented inpainting variant:
a random square covering a quarter of each image is blanked, and the decoder restores it (L1 loss on the hole).
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import conv_bn
from ..colour import Lightness, rgb_to_lab
from . import METHODS

AB_SCALE = 110.0  # a, b in about [-110, 110] -> about [-1, 1]


class WithInput(nn.Module):
    """An encoder behind a fixed input transform; exposes the same `out_dim`, `in_channels` and `first_conv()`."""

    def __init__(self, transform: nn.Module, encoder: nn.Module, in_channels: int):
        super().__init__()
        self.transform, self.encoder = transform, encoder
        self.out_dim, self.in_channels = encoder.out_dim, in_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(self.transform(x))

    def first_conv(self) -> nn.Conv2d:
        return self.encoder.first_conv()


def square_holes(x: Tensor, frac: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """A (B, 1, H, W) mask with a random square of side frac*H per image (1 = hidden)."""
    b, _, h, w = x.shape
    s = max(1, int(round(frac * min(h, w))))
    top = torch.randint(0, h - s + 1, (b, 1, 1, 1), device=x.device, generator=generator)
    left = torch.randint(0, w - s + 1, (b, 1, 1, 1), device=x.device, generator=generator)
    rows, cols = torch.arange(h, device=x.device).view(1, 1, h, 1), torch.arange(w, device=x.device).view(1, 1, 1, w)
    return ((rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)).to(x.dtype)


@METHODS.register("colorization", "Colorization: grey (Lab L) in, ab colour out, L1; 1-channel data: inpainting variant")
class Colorization(nn.Module):
    n_views = 1
    default_augment = "crop"  # colour jitter or greyscale would corrupt the target

    @staticmethod
    def input_channels(data_channels: int) -> int:
        return 1  # the conv net always sees one channel: L for colour data, the image itself for grey data

    def __init__(self, backbone: nn.Module, data_channels: int = 3, hidden: int = 128):
        super().__init__()
        if data_channels not in (1, 3):
            raise ValueError(f"colorization needs 1- or 3-channel images, got {data_channels}")
        self.variant = "lab" if data_channels == 3 else "inpainting"
        self.net = backbone
        self.backbone = WithInput(Lightness(), backbone, 3) if self.variant == "lab" else backbone
        channels = backbone.out_dim  # the last feature map has out_dim channels before pooling
        out = 2 if self.variant == "lab" else 1
        self.decoder_in = conv_bn(channels, hidden)
        self.decoder_out = nn.Sequential(conv_bn(hidden, hidden // 2), nn.Conv2d(hidden // 2, out, 1))
        self.metrics: dict[str, float] = {}
        if self.variant == "inpainting":
            print("colorization: 1-channel data has no colour; running the inpainting variant", file=sys.stderr)

    def predict(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        fmap = self.net.body(self.net.stem(x))  # (B, out_dim, h, w)
        self.last_embedding = fmap.detach().mean(dim=(2, 3))  # (B, out_dim), the pooled features, for the monitor
        h = F.interpolate(self.decoder_in(fmap), size=size, mode="bilinear", align_corners=False)  # (B, hidden, H, W)
        return self.decoder_out(h)  # (B, 2 or 1, H, W)

    def loss(self, views: list[Tensor]) -> Tensor:
        x = views[0]
        size = tuple(x.shape[-2:])
        if self.variant == "lab":
            lab = rgb_to_lab(x)  # (B, 3, H, W), fp32
            grey = (lab[:, :1] / 100).to(x.dtype).contiguous(memory_format=torch.channels_last)
            pred = self.predict(grey, size).float()
            err = (pred - lab[:, 1:] / AB_SCALE).abs()
            self.metrics = {"ab_l1": err.mean().item() * AB_SCALE}
            loss = err.mean()
        else:
            hole = square_holes(x)
            pred = self.predict((x * (1 - hole)).contiguous(memory_format=torch.channels_last), size).float()
            err = (pred - x.float()).abs() * hole
            loss = err.sum() / hole.sum().clamp_min(1)
            self.metrics = {"hole_l1": loss.item()}
        return loss
