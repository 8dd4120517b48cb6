"""Features from a frozen encoder, fed as it was trained: floats in [0, 1] at its training size."""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import to_float
from .. import threads
from ..engine import autocast_for


def prepare(x: Tensor, encoder: nn.Module) -> Tensor:
    """uint8 or float (B, C, H, W) -> float in [0, 1], resized to the encoder's training size, channels-last."""
    x = to_float(x)
    size = getattr(encoder, "image_size", None)
    if size and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)
    return x.contiguous(memory_format=torch.channels_last)


def inference_batch(device: torch.device) -> int:
    """Images per forward pass without gradients: on a CPU a batch whose activations stay in the caches (on a 2-core
    AVX2 EPYC, 128 ran MNIST digits 3.3x and CIFAR-10 images 2x faster than 1,024: bench/README.md, "The demo");
    elsewhere 1,024."""
    return 128 if device.type == "cpu" else 1024


@torch.no_grad()
def extract_features(encoder: nn.Module, images: np.ndarray | Tensor, batch_size: int | None = None,
                     device: str | torch.device | None = None, precision: str = "auto",
                     rows: np.ndarray | None = None) -> Tensor:
    """Run a frozen encoder in eval mode over uint8 images (N, C, H, W); returns float32 features (N, D) on CPU.
    Weights that are not channels-last, as the inputs are, run as a channels-last copy (the same values; the
    convolutions then skip a layout conversion at every call); the caller's module keeps its layout, since it may
    be training in another (`channels_last: false`). batch_size: None for `inference_batch`.

    rows: only these images, in this order, read a batch at a time (a memory-mapped dataset is never copied whole)."""
    device = torch.device(device) if device else next(encoder.parameters()).device
    batch_size = batch_size or inference_batch(device)
    original = encoder.to(device)
    was_training = original.training
    if any(p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last) for p in original.parameters()):
        encoder = copy.deepcopy(original).to(memory_format=torch.channels_last)
    encoder = encoder.eval()
    n = len(images) if rows is None else len(rows)
    out = torch.empty(0)
    with autocast_for(device, precision, encoder):
        for i in range(0, n, batch_size):
            threads.poll()
            x = images[i:i + batch_size] if rows is None else images[np.asarray(rows[i:i + batch_size])]
            x = tensor_of(x) if isinstance(x, np.ndarray) else x
            f = encoder(prepare(x.to(device), encoder)).float().cpu()
            if i == 0:
                out = torch.empty(n, *f.shape[1:])  # filled in place: no second copy of a million features
            out[i:i + len(f)] = f
    original.train(was_training)
    return out


def tensor_of(images: np.ndarray) -> torch.Tensor:
    """A tensor over a contiguous, writable array (read-only ones, as IDX files and memory maps give, are copied)."""
    return torch.from_numpy(np.require(images, requirements=("C", "W")))
