"""The method contract: what the training loop, evaluation, the report and export may ask of a method.

A method is one `nn.Module` built by composition (an encoder from the factory, heads, a pure loss).
`Method` is the contract, written as a Protocol; `MethodBase` gives every optional part a default, so a
method writes only what it changes. Nothing outside `methods/` knows any particular method.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..augment import Augment
    from ..encoders import EncoderSpec


@runtime_checkable
class Method(Protocol):
    backbone: nn.Module  # the encoder evaluation and export use (input transform included), with `spec`
    default_augment: str | None  # the augmentation preset `auto` means for this method (None: by channels)
    metrics: dict[str, Tensor]  # what `loss` last measured besides the loss (0-dim tensors; read at log time)
    last_embedding: Tensor | None  # (B, D) embeddings `loss` last made, for the collapse monitor

    @classmethod
    def input_transform(cls, data_channels: int) -> str | None:
        """A fixed transform the encoder applies to its input (a name in factory.INPUT_TRANSFORMS), or None."""

    def views(self, base: "Augment") -> list["Augment"]:
        """One augmentation per view `loss` takes, each with its own parameters and output size."""

    def loss(self, views: list[Tensor]) -> Tensor:
        """The scalar loss of one batch; views[i] is (B, C, S_i, S_i) float in [0, 1]."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer parameter groups with their weight decay."""

    generator: torch.Generator | None  # this process's random stream for the method's own draws (masks), set by the
    #                                    loop: different on every process, saved and restored with the run
    global_batchnorm: bool  # BatchNorm over the global batch (SyncBN) by default on several GPU processes
    clip_grad: float  # clip gradients at this norm before each step (0: never); the loop clips, unscaled first
    clip_per_parameter: bool  # clip each parameter's gradient norm rather than their global norm

    def before_optimizer_step(self, progress: float) -> None:
        """After backward and clipping, before the step (freezing a layer for a while); gradients are unscaled."""

    def after_optimizer_step(self, progress: float) -> None:
        """After each step (an EMA target, a schedule); `progress` in [0, 1] of the budget."""

    def pictures(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Pictures the method offers for the report: caption -> (H, W, 3) uint8."""


def by_size(fn, views: list[Tensor]) -> list[Tensor]:
    """`fn` of each view, with consecutive views of one shape run as one batch (multi-crop: one forward for the
    global crops and one for the local ones, as DINO's code does, instead of one per crop)."""
    out, i = [], 0
    while i < len(views):
        j = i + 1
        while j < len(views) and views[j].shape == views[i].shape:
            j += 1
        out += list(fn(torch.cat(views[i:j])).chunk(j - i)) if j - i > 1 else [fn(views[i])]
        i = j
    return out


def local_view(base: "Augment", backbone: nn.Module, fraction: tuple[int, int], scale: tuple[float, float],
               method: str) -> "Augment":
    """Multi-crop's small view: `fraction` (num, den) of the training side (at least 8 px), crops of area `scale`."""
    from dataclasses import replace

    from ..errors import ConfigError

    side = base.size or getattr(backbone, "image_size", None)
    if not side:
        raise ConfigError(f"{method} local crops need a known image size; give --image-size")
    return replace(base, size=max(8, side * fraction[0] // fraction[1]), crop_scale=scale)


class MethodBase(nn.Module):
    """Defaults for every optional part of `Method`. A subclass sets `backbone`, and overrides `loss` and what it needs."""

    n_views = 2
    default_augment: str | None = None
    steps_per_epoch = 0  # set by the training loop before the first step (for hooks counted in epochs)
    clip_grad = 0.0
    clip_per_parameter = False
    global_batchnorm = False
    cpu_settings: dict = {}  # optimisation fields measured for this method on a CPU (papers.method_defaults)
    generator: torch.Generator | None = None

    def __init__(self):
        super().__init__()
        self.metrics: dict[str, Tensor] = {}
        self.last_embedding: Tensor | None = None
        from .ema import move_legacy_keys

        self._register_load_state_dict_pre_hook(move_legacy_keys, with_module=True)

    @classmethod
    def input_transform(cls, data_channels: int) -> str | None:
        return None

    def views(self, base: "Augment") -> list["Augment"]:
        return [base] * self.n_views

    @classmethod
    def check_backbone(cls, name: str) -> None:
        """Raise ConfigError when the method cannot train the registered backbone `name` (checked before data loads)."""

    @classmethod
    def legacy_args(cls, args: dict, checkpoint_format: int) -> dict:
        """The method arguments that rebuild what a checkpoint of an older format trained (defaults changed since)."""
        return args

    def loss(self, views: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def no_weight_decay(self) -> set[str]:
        """Names of parameters kept out of weight decay besides norms and biases (e.g. position embeddings)."""
        return set()

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Weights decay; norms, biases (every parameter of one dimension) and `no_weight_decay()` do not, nor what
        any submodule's `no_weight_decay()` names (a ViT's position embedding and class token, wherever it sits)."""
        skip = set(self.no_weight_decay())
        for prefix, module in self.named_modules():
            if prefix and callable(getattr(module, "no_weight_decay", None)):
                skip |= {f"{prefix}.{name}" for name in module.no_weight_decay()}
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def before_optimizer_step(self, progress: float) -> None:
        pass

    def after_optimizer_step(self, progress: float) -> None:
        pass

    def pictures(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {}

    @property
    def encoder_spec(self) -> "EncoderSpec":
        """What downstream code needs to rebuild and feed `backbone` (set by the factory)."""
        return self.backbone.spec

    @torch.no_grad()
    def measure(self, **values: Tensor) -> None:
        """Record metrics as detached tensors: no host synchronisation until the loop logs them."""
        self.metrics = {k: v.detach().float() for k, v in values.items()}
