"""Rotation prediction: Unsupervised Representation Learning by Predicting Image Rotations (Gidaris et al., ICLR 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import heads
from . import METHODS
from .base import MethodBase


def rotate_batch(x: Tensor) -> tuple[Tensor, Tensor]:
    """All four exact rotations of each image: (B, C, H, W) -> (4B, C, H, W) and labels k in 0..3 (k x 90 degrees CCW)."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got {tuple(x.shape[-2:])}")
    rotated = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])  # (4B, C, H, W)
    labels = torch.arange(4, device=x.device).repeat_interleave(x.shape[0])  # (4B,)
    return rotated, labels


@METHODS.register("rotation", "Predict which of 0/90/180/270 degrees each image was turned, by exact rot90s "
                  "(Rotation, Gidaris et al. 2018)")
class Rotation(MethodBase):
    n_views = 1
    default_augment = "crop"  # mild: the pretext task supplies the difficulty

    def __init__(self, backbone: nn.Module, hidden: int = 256):
        super().__init__()
        self.backbone = backbone
        self.classifier = heads.mlp((backbone.out_dim, hidden, 4))

    def loss(self, views: list[Tensor]) -> Tensor:
        x, k = rotate_batch(views[0])
        x = x.contiguous(memory_format=torch.channels_last) if views[0].is_contiguous(memory_format=torch.channels_last) else x
        h = self.backbone(x)  # (4B, D)
        logits = self.classifier(h)  # (4B, 4)
        self.measure(rotation_acc=(logits.argmax(1) == k).float().mean())
        self.last_embedding = h[: views[0].shape[0]].detach()
        return F.cross_entropy(logits.float(), k)
