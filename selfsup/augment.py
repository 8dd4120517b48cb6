"""Batched augmentation on the device: every image in the batch draws its own random parameters.

The geometry (random resized crop, flip, rotation) is folded into one affine matrix per image
and applied with a single `grid_sample`; colour ops are per-image blends. Input is a uint8 or
float batch (B, C, H, W); output is float in [0, 1], (B, C, size, size).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .constants import beside
from .errors import ConfigError


@dataclass(frozen=True)
class Augment:
    """Parameters of one view distribution; probabilities are per image."""

    size: int | None = None  # output side; None keeps the input size
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    rotate: float = 0.0  # max degrees either way
    shear: float = 0.0  # max horizontal shear in degrees either way (slanted handwriting)
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grey_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # in pixels at 224; scaled with the image side
    solarize_p: float = 0.0
    cutout: float = 0.0  # side of a grey square at a random centre in each view (it may reach past the border), as
    # a fraction of the view's side; 0: none (DeVries & Taylor 2017; FixMatch's strong views end with it)


PRESETS: dict[str, Augment] = {
    # SimCLR's colour recipe (Chen et al. 2020, appendix A).
    "simclr": Augment(),
    # Digits: no flips (a flipped 2 is not a 2), a gentle crop, small turns and slants, brightness/contrast and
    # light blur (without them SimCLR matches views by ink statistics; see the README's label-efficiency ablation).
    "greyscale": Augment(crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25), flip_p=0.0, rotate=20.0, shear=15.0,
                         jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0, grey_p=0.0, blur_p=0.3),
    # Geometry only, no colour: for pretext tasks whose target is the colour or the orientation.
    "crop": Augment(crop_scale=(0.5, 1.0), flip_p=0.5, jitter_p=0, grey_p=0, blur_p=0),
    # Supervised training and fine-tuning on few labels: mild crops; grey digits get small turns instead of flips.
    "supervised": Augment(crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25), flip_p=0.5, jitter_p=0, grey_p=0, blur_p=0),
    "supervised-grey": Augment(crop_scale=(0.6, 1.0), crop_ratio=(0.8, 1.25), flip_p=0, rotate=10.0, jitter_p=0,
                               grey_p=0, blur_p=0),
    # No augmentation: resize only (used for evaluation and as an ablation).
    "none": Augment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0, jitter_p=0, grey_p=0, blur_p=0),
}


def preset(name: str, channels: int, size: int | None = None, method_default: str | None = None,
           changes: dict | None = None) -> Augment:
    """A preset by name; 'auto' takes the method's default, else `simclr` for colour and `greyscale` for 1 channel.

    `changes` overrides single fields of the preset (e.g. {"crop_scale": [0.6, 1.0], "rotate": 20}).
    """
    if name == "auto":
        name = method_default or ("simclr" if channels == 3 else "greyscale")
    if name not in PRESETS:
        raise ConfigError(f"unknown augmentation preset {name!r}; choose one of: auto, {', '.join(PRESETS)}")
    a = replace(PRESETS[name], size=size) if size else PRESETS[name]
    return replace(a, **check_changes(changes)) if changes else a


def view_for(cfg, channels: int, method) -> Augment:
    """The view distribution a pretraining config gives `method` on `channels`-channel images."""
    return preset(cfg.augment, channels, cfg.image_size, getattr(method, "default_augment", None), cfg.augment_args)


def check_changes(changes: dict) -> dict:
    """Validate augment_args against the fields of `Augment` (known names, numbers, [low, high] for ranges)."""
    fields = {f.name: f.default for f in dataclasses.fields(Augment) if f.name != "size"}
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise ConfigError(f"unknown augment_args field(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
    out = {}
    for k, v in changes.items():
        if isinstance(fields[k], tuple):
            if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)
                    and v[0] <= v[1]):
                raise ConfigError(f"augment_args {k} must be a range [low, high], got {v!r}")
            out[k] = (float(v[0]), float(v[1]))
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(f"augment_args {k} must be a non-negative number, got {v!r}")
        else:
            out[k] = float(v)
    return out


def _uniform(lo: float, hi: float, n: int, g, device) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def _coin(p: float, n: int, g, device) -> Tensor:
    return torch.rand(n, generator=g, device=device) < p


def affine_params(a: Augment, n: int, g, device) -> Tensor:
    """Per-image affine matrices (n, 2, 3) mapping output to input coordinates in [-1, 1]."""
    area = _uniform(*a.crop_scale, n, g, device)
    log_r = _uniform(math.log(a.crop_ratio[0]), math.log(a.crop_ratio[1]), n, g, device)
    ratio = log_r.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # crop width as a fraction of the image
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (1 - w) * (2 * torch.rand(n, generator=g, device=device) - 1)  # crop stays inside the image
    cy = (1 - h) * (2 * torch.rand(n, generator=g, device=device) - 1)
    flip = torch.where(_coin(a.flip_p, n, g, device), -1.0, 1.0)
    angle = _uniform(-a.rotate, a.rotate, n, g, device) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    k = (_uniform(-a.shear, a.shear, n, g, device) * (math.pi / 180)).tan() if a.shear > 0 else torch.zeros_like(cos)
    # rotation @ shear [[1, k], [0, 1]] @ crop-and-flip diag(w * flip, h)
    theta = torch.stack([
        torch.stack([cos * w * flip, (cos * k - sin) * h, cx], dim=1),
        torch.stack([sin * w * flip, (sin * k + cos) * h, cy], dim=1),
    ], dim=1)  # (n, 2, 3)
    return theta


def _grey(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])  # (B, 1, H, W)


def _per_image(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def colour_jitter(x: Tensor, a: Augment, g) -> Tensor:
    """Brightness, contrast, saturation and hue (a rotation of chroma in YIQ space), each image its own factors."""
    n, dev = x.shape[0], x.device
    on = _coin(a.jitter_p, n, g, dev)

    def factor(strength: float) -> Tensor:
        f = _uniform(max(0.0, 1 - strength), 1 + strength, n, g, dev)
        return _per_image(torch.where(on, f, torch.ones_like(f)))

    x = x * factor(a.brightness)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = mean + factor(a.contrast) * (x - mean)
    if x.shape[1] == 3:
        if a.saturation > 0:
            x = _grey(x) + factor(a.saturation) * (x - _grey(x))
        if a.hue > 0:
            turn = _uniform(-a.hue, a.hue, n, g, dev) * 2 * math.pi * on
            x = _rotate_hue(x, turn)
    return x.clamp(0, 1)


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _rotate_hue(x: Tensor, turn: Tensor) -> Tensor:
    to_yiq, from_yiq = beside(_RGB2YIQ, x), beside(_YIQ2RGB, x)
    c, s = turn.cos(), turn.sin()
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    rot = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, c, -s], 1), torch.stack([zero, s, c], 1)], 1)
    m = from_yiq @ rot @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", m, x)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one sigma (in pixels) per image, reflect-padded: two depthwise convolutions,
    each image and channel with its own 1-D kernel (one kernel launch per direction, no shifted copies)."""
    b, c, h, w = x.shape
    k = max(3, int(0.1 * min(h, w)) | 1)  # odd kernel, ~10% of the side as in SimCLR
    r = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kern = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))  # (B, k)
    kern = (kern / kern.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (B * C, k): one per image and channel
    p = k // 2
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (p, p, 0, 0), mode="reflect"), kern.view(b * c, 1, 1, k), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, p, p), mode="reflect"), kern.view(b * c, 1, k, 1), groups=b * c)
    return y.view(b, c, h, w)


def at_side(views: list[Augment], side: int, full: int) -> list[Augment]:
    """The views with those at the full side (the global crops) made at `side` instead; smaller ones (local crops)
    as they are. Progressive resolution's views for one step."""
    if side == full:
        return views
    return [dataclasses.replace(v, size=side) if (v.size or full) == full else v for v in views]


def cutout_mask(n: int, size: int, side: float, g, device) -> Tensor:
    """(n, size, size) bool: True inside a square of `side` times `size` pixels around a centre drawn uniformly over
    each image (pixel centres at i + 0.5)."""
    centre = _uniform(0, size, 2 * n, g, device).view(2, n, 1)
    at = torch.arange(size, device=device) + 0.5
    rows, cols = ((at - centre).abs() < side * size / 2)  # (2, n, size)
    return rows[:, :, None] & cols[:, None, :]


def augment(x: Tensor, a: Augment, generator: torch.Generator | None = None) -> Tensor:
    """One random view of each image in the batch: (B, C, H, W) uint8/float -> (B, C, S, S) float in [0, 1]."""
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    n, c, h, w = x.shape
    dev, g = x.device, generator
    size = a.size or h
    theta = affine_params(a, n, g, dev)
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if a.jitter_p > 0:
        x = colour_jitter(x, a, g)
    if a.grey_p > 0 and c == 3:
        x = torch.where(_per_image(_coin(a.grey_p, n, g, dev)), _grey(x).expand_as(x), x)
    if a.blur_p > 0:
        sigma = _uniform(*a.blur_sigma, n, g, dev) * (size / 224)  # sigma scales with the side
        blurred = gaussian_blur(x, sigma.clamp(min=0.1))
        x = torch.where(_per_image(_coin(a.blur_p, n, g, dev)), blurred, x)
    if a.solarize_p > 0:
        x = torch.where(_per_image(_coin(a.solarize_p, n, g, dev)) & (x >= 0.5), 1 - x, x)
    if a.cutout > 0:
        x = torch.where(cutout_mask(n, size, a.cutout, g, dev)[:, None], 0.5, x)
    return x.clamp_(0, 1)  # blur and resampling can overshoot by an ulp


def to_float(x: Tensor) -> Tensor:
    """The un-augmented view used for evaluation: uint8 -> float in [0, 1]."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x
