"""Features from a frozen encoder."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor, nn

from ..augment import to_float


def autocast_for(device: torch.device, precision: str = "auto"):
    """bf16 autocast where the hardware runs it natively (see train.auto_precision), else nothing."""
    from ..train import auto_precision

    chosen = auto_precision(device.type) if precision == "auto" else precision
    if chosen.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def extract_features(encoder: nn.Module, images: np.ndarray | Tensor, batch_size: int = 1024,
                     device: str | torch.device | None = None, precision: str = "auto") -> Tensor:
    """Run a frozen encoder in eval mode over uint8 images (N, C, H, W); returns float32 features (N, D) on CPU."""
    device = torch.device(device) if device else next(encoder.parameters()).device
    was_training = encoder.training
    encoder = encoder.to(device).eval()
    out = []
    with autocast_for(device, precision):
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size]
            x = torch.as_tensor(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
            x = to_float(x.to(device)).contiguous(memory_format=torch.channels_last)
            out.append(encoder(x).float().cpu())
    encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0)
