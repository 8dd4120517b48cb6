"""Colorization: Colorful Image Colorization (Zhang, Isola & Efros, ECCV 2016), as regression of Lab ab.

Colour data: the encoder sees Lab lightness L (1 channel); a small decoder predicts the ab channels
from the encoder's last feature map, with an L1 loss. Predicting ab leaves luminance, which the input
already holds, out of the target; L1 is less prone than L2 to the desaturated average of plausible
colours. (Zhang et al. classify over quantized ab bins instead, which is heavier.)
The encoder that evaluation gets has the `lightness` input transform, so colour images downstream go
through the same conversion as in pretraining, and the first conv layer is kept, never swapped.

1-channel data (MNIST, digits) has no colour. There the method runs a documented inpainting variant:
a random square covering a quarter of each image is blanked, and the decoder restores it (L1 loss on the hole).
"""
from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import conv_bn
from ..colour import lab_to_rgb, rgb_to_lab
from ..errors import ConfigError
from . import METHODS
from .base import MethodBase

AB_SCALE = 110.0  # a, b in about [-110, 110] -> about [-1, 1]


def square_holes(x: Tensor, frac: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """A (B, 1, H, W) mask with a random square of side frac*H per image (1 = hidden)."""
    b, _, h, w = x.shape
    s = max(1, int(round(frac * min(h, w))))
    top = torch.randint(0, h - s + 1, (b, 1, 1, 1), device=x.device, generator=generator)
    left = torch.randint(0, w - s + 1, (b, 1, 1, 1), device=x.device, generator=generator)
    rows, cols = torch.arange(h, device=x.device).view(1, 1, h, 1), torch.arange(w, device=x.device).view(1, 1, 1, w)
    return ((rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)).to(x.dtype)


@METHODS.register("colorization", "Colorization: grey (Lab L) in, ab colour out, L1; 1-channel data: inpainting variant")
class Colorization(MethodBase):
    n_views = 1
    default_augment = "crop"  # colour jitter or greyscale would corrupt the target

    @classmethod
    def input_transform(cls, data_channels: int) -> str | None:
        if data_channels not in (1, 3):
            raise ConfigError(f"colorization needs 1- or 3-channel images, got {data_channels}")
        return "lightness" if data_channels == 3 else None  # grey data goes to the conv net as it is

    def __init__(self, backbone: nn.Module, hidden: int = 128):
        super().__init__()
        self.backbone = backbone
        self.variant = "lab" if backbone.in_channels == 3 else "inpainting"
        self.net = backbone.encoder if self.variant == "lab" else backbone  # the conv net behind the transform
        out = 2 if self.variant == "lab" else 1
        self.decoder_in = conv_bn(backbone.out_dim, hidden)  # the last feature map has out_dim channels
        self.decoder_out = nn.Sequential(conv_bn(hidden, hidden // 2), nn.Conv2d(hidden // 2, out, 1))
        if self.variant == "inpainting":
            print("colorization: 1-channel data has no colour; running the inpainting variant", file=sys.stderr)

    def predict(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        fmap = self.net.forward_features(x)  # (B, out_dim, h, w)
        self.last_embedding = fmap.detach().mean(dim=(2, 3))  # (B, out_dim), the pooled features, for the monitor
        h = F.interpolate(self.decoder_in(fmap), size=size, mode="bilinear", align_corners=False)  # (B, hidden, H, W)
        return self.decoder_out(h)  # (B, 2 or 1, H, W)

    def loss(self, views: list[Tensor]) -> Tensor:
        x = views[0]
        size = tuple(x.shape[-2:])
        if self.variant == "lab":
            lab = rgb_to_lab(x)  # (B, 3, H, W), fp32
            grey = (lab[:, :1] / 100).to(x.dtype).contiguous(memory_format=torch.channels_last)
            err = (self.predict(grey, size).float() - lab[:, 1:] / AB_SCALE).abs()
            self.measure(ab_l1=err.mean() * AB_SCALE)
            return err.mean()
        hole = square_holes(x)
        pred = self.predict((x * (1 - hole)).contiguous(memory_format=torch.channels_last), size).float()
        loss = ((pred - x.float()).abs() * hole).sum() / hole.sum().clamp_min(1)
        self.measure(hole_l1=loss)
        return loss

    @torch.no_grad()
    def pictures(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Rows of (input the encoder saw, its prediction, the true image): grey/colour, or hole/restored."""
        from ..report.pictures import auto_scale, grid, to_rgb

        was_training = self.training
        self.eval()
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
        size = tuple(x.shape[-2:])
        if self.variant == "lab":
            lab = rgb_to_lab(x)
            grey = lab[:, :1] / 100
            ab = self.predict(grey, size).float() * AB_SCALE
            seen, made = grey.expand(-1, 3, -1, -1), lab_to_rgb(torch.cat([lab[:, :1], ab], dim=1))
            caption = "colorization: input, prediction, truth"
        else:
            hole = square_holes(x, generator=torch.Generator().manual_seed(0))
            seen = x * (1 - hole)
            made = seen + self.predict(seen, size).float().clamp(0, 1) * hole
            caption = "inpainting: input, restored, truth"
        self.train(was_training)
        rows = [np.concatenate([to_rgb(seen[i:i + 1]), to_rgb(made[i:i + 1]), to_rgb(x[i:i + 1])]) for i in range(len(x))]
        return {caption: grid(rows, scale=auto_scale(size[0]))}
