"""sRGB <-> CIE Lab (D65) on batches, for colorization."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .constants import beside

_RGB2XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_XYZ2RGB = torch.linalg.inv(_RGB2XYZ)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])
_EPS = (6 / 29) ** 3


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """(B, 3, H, W) sRGB in [0, 1] -> Lab with L in [0, 100], a and b roughly in [-110, 110]."""
    rgb = rgb.float()
    lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp_min(0) + 0.055) / 1.055) ** 2.4)
    white = beside(_WHITE, rgb).view(1, 3, 1, 1)
    xyz = torch.einsum("ij,bjhw->bihw", beside(_RGB2XYZ, rgb), lin) / white
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    fx, fy, fz = f[:, 0:1], f[:, 1:2], f[:, 2:3]
    return torch.cat([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab: Tensor) -> Tensor:
    """Inverse of rgb_to_lab, clamped to [0, 1]."""
    lab = lab.float()
    fy = (lab[:, 0:1] + 16) / 116
    f = torch.cat([fy + lab[:, 1:2] / 500, fy, fy - lab[:, 2:3] / 200], dim=1)
    xyz = torch.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29)) * beside(_WHITE, lab).view(1, 3, 1, 1)
    lin = torch.einsum("ij,bjhw->bihw", beside(_XYZ2RGB, lab), xyz).clamp(0, 1)
    return torch.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin ** (1 / 2.4) - 0.055).clamp(0, 1)


class Lightness(nn.Module):
    """RGB in [0, 1] -> Lab lightness L/100 in [0, 1], one channel: the colorization encoder's input, in training and after."""

    def forward(self, x: Tensor) -> Tensor:
        return (rgb_to_lab(x)[:, 0:1] / 100).to(x.dtype)
