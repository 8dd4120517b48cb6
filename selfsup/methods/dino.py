"""DINO: self-distillation with no labels (Caron et al., ICCV 2021), with multi-crop.

A student (backbone + DINO head) matches the output distribution of a teacher, an EMA copy of itself that sees
only the two global crops. The teacher's outputs are centred (an EMA of their batch mean, averaged over every
process) and sharpened (a low temperature, warmed up from `teacher_temp_start`); the student sees the global crops
and `local_crops` small crops. The head's last layer is frozen for the first `freeze_last_layer` epochs and
gradients are clipped at `clip_grad` (each parameter's norm, as the paper's code does; by the training loop, after
unscaling).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import heads
from ..errors import ConfigError
from ..losses import batch_mean, dino_loss
from . import METHODS
from .base import MethodBase, by_size, local_view
from .ema import EMAFollower


class DINOHead(nn.Module):
    """MLP to a bottleneck, L2-normalised, then a weight-normalised linear layer (rows of unit norm) to `out_dim`."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int, bn: bool, act: type[nn.Module]):
        super().__init__()
        self.mlp = heads.mlp((in_dim, hidden, hidden, bottleneck), bn=bn, act=act)
        self.last = nn.Linear(bottleneck, out_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(self.last.weight, dim=1))


@METHODS.register("dino", "Student matches a centred, sharpened EMA teacher across 2 global + local crops (DINO, "
                  "Caron et al. 2021)")
class DINO(MethodBase):
    cpu_settings = {"lr": 1e-3}  # 4e-3 collapsed it on digits; 1e-3 chosen on MNIST validation (bench/README.md)
    global_batchnorm = True  # the paper's BatchNorm statistics span every process (SyncBN)
    def __init__(self, backbone: nn.Module, out_dim: int = 4096, hidden: int = 1024, bottleneck: int = 256,
                 head_bn: bool = False, local_crops: int | None = None, local_scale: tuple[float, float] | list[float] = (0.05, 0.4),
                 student_temp: float = 0.1, teacher_temp: float = 0.07, teacher_temp_start: float = 0.04,
                 teacher_temp_warmup: float = 0.3, center_momentum: float = 0.9, tau_base: float = 0.996,
                 freeze_last_layer: float = 1.0, clip_grad: float = 3.0, clip_per_parameter: bool = True,
                 head_activation: str = "relu", asymmetric: bool = False):
        super().__init__()
        side = getattr(backbone, "image_size", None) or 0
        if local_crops is None:  # measured on MNIST validation: at 28 px, local crops cost half the speed and lost
            local_crops = 4 if side >= 64 else 0  # (kNN 0.36 against 0.46 in 2 minutes); at 96 px they have content
        if local_crops < 0 or not (0 < local_scale[0] <= local_scale[1] <= 1):
            raise ConfigError(f"dino: local_crops must be 0 or more and local_scale a range in (0, 1], "
                              f"got {local_crops} and {local_scale}")
        self.backbone = backbone
        if head_activation not in ("relu", "gelu"):
            raise ConfigError(f"dino: head_activation must be relu or gelu, got {head_activation!r}")
        self.head = DINOHead(backbone.out_dim, out_dim, hidden, bottleneck, head_bn,
                             nn.GELU if head_activation == "gelu" else nn.ReLU)
        self.asymmetric = asymmetric
        self.teacher = EMAFollower(backbone, self.head, tau_base=tau_base)
        self.local_crops, self.local_scale = int(local_crops), (float(local_scale[0]), float(local_scale[1]))
        self.n_views = 2 + self.local_crops
        self.student_temp, self.teacher_temps = student_temp, (teacher_temp_start, teacher_temp, teacher_temp_warmup)
        self.center_momentum = center_momentum
        self.freeze_last_layer, self.clip_grad, self.clip_per_parameter = freeze_last_layer, clip_grad, clip_per_parameter
        self.register_buffer("center", torch.zeros(out_dim))
        self.register_buffer("temp", torch.tensor(teacher_temp_start if teacher_temp_warmup > 0 else teacher_temp))

    def views(self, base):
        """2 global crops (scale from 0.4; with `asymmetric`, the paper's two: always blurred, and rarely blurred and
        sometimes solarized) and `local_crops` small ones."""
        first = replace(base, crop_scale=(max(base.crop_scale[0], 0.4), base.crop_scale[1])) if self.local_crops else base
        globals_ = [replace(first, blur_p=1.0, solarize_p=0.0), replace(first, blur_p=0.1, solarize_p=0.2)] \
            if self.asymmetric else [first, first]
        if not self.local_crops:
            return globals_
        local = local_view(base, self.backbone, (3, 7), self.local_scale, "dino")  # 96 of 224 in the paper
        return globals_ + [local] * self.local_crops

    def teacher_temp(self, progress: float) -> float:
        start, end, warmup = self.teacher_temps
        return end if progress >= warmup or warmup <= 0 else start + (end - start) * progress / warmup

    def loss(self, views: list[Tensor]) -> Tensor:
        student = by_size(lambda v: self.head(self.backbone(v)), views)  # (n, out_dim) per crop
        with torch.no_grad():
            teacher = by_size(self.teacher, views[:2])
        self.last_embedding = student[0].detach()
        temp = self.temp  # a tensor: no host read per step
        loss = dino_loss(student, teacher, self.center, self.student_temp, temp)
        with torch.no_grad():
            self.pending_center = batch_mean(torch.cat(teacher))
            probs = F.softmax((teacher[0].float() - self.center) / temp, dim=-1)
            self.measure(teacher_entropy=-(probs * probs.clamp_min(1e-12).log()).sum(-1).mean(), teacher_temp=temp)
        return loss

    def before_optimizer_step(self, progress: float) -> None:
        if self.teacher.steps_seen < self.freeze_last_layer * max(1, self.steps_per_epoch):
            self.head.last.weight.grad = None  # the fused optimizer leaves a parameter without a gradient alone

    @torch.no_grad()
    def after_optimizer_step(self, progress: float) -> None:
        self.teacher.follow(nn.Sequential(self.backbone, self.head), progress)
        self.center.mul_(self.center_momentum).add_(self.pending_center, alpha=1 - self.center_momentum)
        self.temp.fill_(self.teacher_temp(progress))
