"""Colorization: Colorful Image Colorization (Zhang, Isola & Efros, ECCV 2016).

Colour data: the encoder sees Lab lightness L (1 channel); a small decoder predicts, at a quarter of the
image's side, a distribution over the ab plane quantized into 10x10 bins (`loss="classes"`, the default): the
target is soft (each pixel's 5 nearest bins, Gaussian weights, sigma 5), and rare colours weigh more (class
rebalancing with the running colour prior mixed half and half with uniform, as the paper does). A picture
decodes the annealed mean (temperature 0.38) of the predicted distribution. `loss="l1"` regresses ab with
an L1 loss instead: cheaper, but it predicts the desaturated average of plausible colours (grey on photographs).
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
from ..constants import beside
from ..colour import lab_to_rgb, rgb_to_lab
from ..errors import ConfigError
from . import METHODS
from .base import MethodBase

AB_SCALE = 110.0  # a, b in about [-110, 110] -> about [-1, 1]
GRID = 10.0  # ab bin side
CENTRES = torch.cartesian_prod(torch.arange(-105.0, 110.0, GRID), torch.arange(-105.0, 110.0, GRID))  # (484, 2)
SIGMA, NEAREST, MIX, ANNEAL = 5.0, 5, 0.5, 0.38


def soft_bins(ab: Tensor) -> Tensor:
    """(B, 2, h, w) ab -> (B, Q, h, w) soft targets: Gaussian weights on each pixel's NEAREST bins, summing to 1."""
    b, _, h, w = ab.shape
    d2 = torch.cdist(ab.permute(0, 2, 3, 1).reshape(-1, 2).float(), beside(CENTRES, ab.float())) ** 2  # (B*h*w, Q)
    near, idx = d2.topk(NEAREST, dim=1, largest=False)
    weight = torch.softmax(-near / (2 * SIGMA ** 2), dim=1)
    target = torch.zeros_like(d2).scatter_(1, idx, weight)
    return target.view(b, h, w, -1).permute(0, 3, 1, 2)


def annealed_mean(logits: Tensor, temperature: float = ANNEAL) -> Tensor:
    """(B, Q, h, w) logits -> (B, 2, h, w) ab: the mean of the distribution sharpened by `temperature`."""
    p = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", p, beside(CENTRES, p))


def lab_input(x: Tensor) -> tuple[Tensor, Tensor]:
    """(B, 3, H, W) RGB -> (Lab in fp32, the encoder's input L/100 in x's dtype, channels-last)."""
    lab = rgb_to_lab(x)
    return lab, (lab[:, :1] / 100).to(x.dtype).contiguous(memory_format=torch.channels_last)


def quarter(size: tuple[int, int]) -> tuple[int, int]:
    """The side the class loss predicts colour at: a quarter of the image's, as Zhang et al. do."""
    return max(1, size[0] // 4), max(1, size[1] // 4)


def square_holes(x: Tensor, frac: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """A (B, 1, H, W) mask with a random square of side frac*H per image (1 = hidden)."""
    b, _, h, w = x.shape
    s = max(1, int(round(frac * min(h, w))))
    top = torch.randint(0, h - s + 1, (b, 1, 1, 1), device=x.device, generator=generator)
    left = torch.randint(0, w - s + 1, (b, 1, 1, 1), device=x.device, generator=generator)
    rows, cols = torch.arange(h, device=x.device).view(1, 1, h, 1), torch.arange(w, device=x.device).view(1, 1, 1, w)
    return ((rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)).to(x.dtype)


@METHODS.register("colorization", "Grey (Lab L) in, a distribution over ab colour bins out; 1-channel data: "
                  "inpainting (Colorization, Zhang et al. 2016)")
class Colorization(MethodBase):
    n_views = 1
    default_augment = "crop"  # colour jitter or greyscale would corrupt the target

    @classmethod
    def input_transform(cls, data_channels: int) -> str | None:
        if data_channels not in (1, 3):
            raise ConfigError(f"colorization needs 1- or 3-channel images, got {data_channels}")
        return "lightness" if data_channels == 3 else None  # grey data goes to the conv net as it is

    @classmethod
    def legacy_args(cls, args: dict, checkpoint_format: int) -> dict:
        return {"loss": "l1"} | args if checkpoint_format < 2 else args  # format 1 regressed ab with L1

    def __init__(self, backbone: nn.Module, hidden: int = 128, loss: str = "classes"):
        super().__init__()
        if loss not in ("classes", "l1"):
            raise ConfigError(f"colorization loss must be 'classes' or 'l1', got {loss!r}")
        self.backbone = backbone
        self.variant = "lab" if backbone.in_channels == 3 else "inpainting"
        self.net = backbone.encoder if self.variant == "lab" else backbone  # the conv net behind the transform
        self.classes = self.variant == "lab" and loss == "classes"
        out = len(CENTRES) if self.classes else 2 if self.variant == "lab" else 1
        self.decoder_in = conv_bn(backbone.out_dim, hidden)  # the last feature map has out_dim channels
        self.decoder_out = nn.Sequential(conv_bn(hidden, hidden // 2), nn.Conv2d(hidden // 2, out, 1))
        if self.classes:  # the running colour prior (how often each bin is the target), for rebalancing
            self.register_buffer("prior", torch.full((len(CENTRES),), 1.0 / len(CENTRES)))
        if self.variant == "inpainting":
            print("colorization: 1-channel data has no colour; running the inpainting variant", file=sys.stderr)

    def predict(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        grid = getattr(self.net, "feature_map", None)  # a ViT lays its patch tokens back on their grid
        fmap = grid(x) if grid else self.net.forward_features(x)  # (B, out_dim, h, w)
        self.last_embedding = fmap.detach().mean(dim=(2, 3))  # (B, out_dim), the pooled features, for the monitor
        h = F.interpolate(self.decoder_in(fmap), size=size, mode="bilinear", align_corners=False)  # (B, hidden, H, W)
        return self.decoder_out(h)  # (B, 2 or 1, H, W)

    def loss(self, views: list[Tensor]) -> Tensor:
        x = views[0]
        size = tuple(x.shape[-2:])
        if self.classes:
            return self.class_loss(x)
        if self.variant == "lab":
            lab, grey = lab_input(x)
            err = (self.predict(grey, size).float() - lab[:, 1:] / AB_SCALE).abs()
            self.measure(ab_l1=err.mean() * AB_SCALE)
            return err.mean()
        hole = square_holes(x, generator=self.generator)  # this process's stream: other holes on every rank
        pred = self.predict((x * (1 - hole)).contiguous(memory_format=torch.channels_last), size).float()
        loss = ((pred - x.float()).abs() * hole).sum() / hole.sum().clamp_min(1)
        self.measure(hole_l1=loss)
        return loss

    def class_loss(self, x: Tensor) -> Tensor:
        """Rebalanced cross-entropy against soft ab bins, at a quarter of the side."""
        lab, grey = lab_input(x)
        small = quarter(tuple(x.shape[-2:]))
        target = soft_bins(F.adaptive_avg_pool2d(lab[:, 1:], small))  # (B, Q, h, w)
        with torch.no_grad():
            if self.training:  # the prior follows the data seen so far
                self.prior.lerp_(target.mean(dim=(0, 2, 3)), 0.01)
            w = 1 / ((1 - MIX) * self.prior + MIX / len(CENTRES))
            w = w / (self.prior * w).sum()  # the expected weight under the prior is 1
            pixel_w = w[target.argmax(1)]  # (B, h, w): the weight of each pixel's nearest bin
        logp = F.log_softmax(self.predict(grey, small).float(), dim=1)
        ce = -(target * logp).sum(1)  # (B, h, w)
        self.measure(colour_ce=ce.mean())
        return (pixel_w * ce).mean()

    @torch.no_grad()
    def pictures(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Rows of (input the encoder saw, its prediction, the true image): grey/colour, or hole/restored."""
        from ..report.pictures import auto_scale, grid, to_rgb

        was_training = self.training
        self.eval()
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255)
        size = tuple(x.shape[-2:])
        if self.variant == "lab":
            lab, grey = lab_input(x)
            if self.classes:  # the annealed mean at a quarter of the side, enlarged to the image's
                ab = F.interpolate(annealed_mean(self.predict(grey, quarter(size))), size=size, mode="bilinear",
                                   align_corners=False)
            else:
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
