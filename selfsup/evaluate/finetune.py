"""Fine-tuning (pretrained encoder + linear head, end to end) and supervised training from scratch.

Both are LP-FT (Kumar et al. 2022): the head starts as the linear probe fitted on the frozen encoder's
features (`linear.fit_linear`, the same solution the `linear` evaluation scores), then encoder and head train
together on the few-label subset, with augmentation. Validation accuracy is checked before the first step and
every `eval_every` steps, and the best weights are kept, so the result starts from the probe and moves only
when a held-out labeled validation split (drawn from the training data) says it is better. The test split is
looked at once, after training.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import augment, preset
from .. import threads
from ..engine import TrainStep, autocast_for
from ..errors import ConfigError
from ..progress import Steps
from ..schedule import cosine
from .features import extract_features, inference_batch, prepare
from .linear import fit_linear, probe_logits


@dataclass
class FinetuneConfig:
    steps: int = 300  # the step budget; supervised-from-scratch gets the same
    batch_size: int = 128
    lr: float = 3e-3  # the head's learning rate (AdamW, cosine decay)
    encoder_lr_scale: float = 0.1  # the pretrained encoder learns 10x slower than the head
    head_init: str = "probe"  # probe: LP-FT, the head starts as the fitted linear probe; linear: nn.Linear's init
    weight_decay: float = 5e-4
    eval_every: int = 20  # steps between validation checks
    patience: int = 5  # validation checks without improvement before stopping
    augment: str = "auto"  # auto: `supervised` for colour, `supervised-grey` for 1 channel
    shift: bool = True  # score validation and test over each image and its one-pixel translations (`probabilities`)

    def to_dict(self) -> dict:
        return asdict(self)

    def checked(self) -> "FinetuneConfig":
        """This config, or a one-line ConfigError where a setting cannot run."""
        if self.steps < 1:
            raise ConfigError(f"--finetune-steps must be at least 1, got {self.steps}")
        return self


class ProbeHead(nn.Module):
    """The linear probe as a layer: logits = normalize(f) * sqrt(D) @ weight + bias, in float32, so that a probe
    fitted by `fit_linear` is exactly its starting point."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim, n_classes))
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        with torch.autocast(f.device.type, enabled=False):
            return probe_logits((self.weight, self.bias), f)  # (B, n_classes)


class Classifier(nn.Module):
    """Encoder + head: the probe's form (`ProbeHead`), or a plain `nn.Linear` on the raw features (`head="linear"`)."""

    def __init__(self, encoder: nn.Module, n_classes: int, head: str = "probe"):
        super().__init__()
        if head not in ("probe", "linear"):
            raise ValueError(f"head must be 'probe' or 'linear', got {head!r}")
        self.encoder = encoder
        self.head = ProbeHead(encoder.out_dim, n_classes) if head == "probe" else nn.Linear(encoder.out_dim, n_classes)
        self.image_size = getattr(encoder, "image_size", None)

    @torch.no_grad()
    def init_head(self, x: np.ndarray, y: np.ndarray, weight_decay: float = 1e-4) -> None:
        """Fit the head as the linear probe on the frozen encoder's features of (x, y), un-augmented."""
        w, b = fit_linear(extract_features(self.encoder, x), torch.from_numpy(y), self.head.bias.numel(), weight_decay)
        self.head.weight.copy_(w)
        self.head.bias.copy_(b)

    def forward(self, x):
        return self.head(self.encoder(x))  # (B, n_classes)


def shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The batch (B, C, H, W) translated by (dy, dx) pixels, the uncovered border filled from the nearest edge pixel."""
    h, w = x.shape[-2:]
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return pad[..., 1 - dy:1 - dy + h, 1 - dx:1 - dx + w]


SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # one pixel right, left, down and up
SHIFT_MIN_SIDE = 16  # smaller images are scored unshifted: one pixel is an eighth of scikit-learn's 8-px digits, and
# a classifier trained for 30 steps there scored 9 points lower on validation with the shifted views


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor, mirror: bool | None = None, shift: bool = False) -> torch.Tensor:
    """Class probabilities (B, C) of a prepared batch (B, C, H, W); with `mirror`, the mean over each image and its
    mirror image (None: for colour images, whose training views were flipped; digits are not mirrored); with
    `shift`, also over each of those moved by one pixel in each of the four directions (images of at least
    SHIFT_MIN_SIDE pixels a side)."""
    views = [x, x.flip(3)] if (mirror if mirror is not None else x.shape[1] == 3) else [x]
    if shift and min(x.shape[-2:]) >= SHIFT_MIN_SIDE:
        views += [shifted(v, dy, dx) for v in views for dy, dx in SHIFTS]  # built whole before it extends views
    return torch.stack([model(v).float().softmax(1) for v in views]).mean(0)


@torch.no_grad()
def scored_probabilities(model: nn.Module, x: torch.Tensor, batch_size: int | None = None, mirror: bool | None = None,
                         shift: bool = False) -> torch.Tensor:
    """The trained classifier's class probabilities (N, C, on the CPU) of the uint8 images (N, C, H, W), in eval mode
    and the precision it trained in, as `probabilities` says: the one pass every score of a classifier comes from."""
    model.eval()
    device = next(model.parameters()).device
    batch_size = batch_size or inference_batch(device)
    out = []
    with autocast_for(device, encoder=model.encoder):
        for i in range(0, len(x), batch_size):
            xb = prepare(x[i:i + batch_size].to(device), model.encoder)
            out.append(probabilities(model, xb, mirror, shift).cpu())
    model.train()
    return torch.cat(out) if out else torch.zeros(0, 0)


def correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None,
            mirror: bool | None = None, shift: bool = False) -> torch.Tensor:
    """Whether the trained classifier gets each of the uint8 images (N, C, H, W) right (N bools, on the CPU),
    scored as `probabilities` says: one pass, from which any subset's accuracy can be taken."""
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.bool)
    return scored_probabilities(model, x, batch_size, mirror, shift).argmax(1) == y


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None,
             mirror: bool | None = None, shift: bool = False) -> float:
    """The trained classifier's accuracy on uint8 images (N, C, H, W), scored as `probabilities` says."""
    return correct(model, x, y, batch_size, mirror, shift).sum().item() / max(1, len(x))


def train_classifier(encoder: nn.Module, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                     n_classes: int, cfg: FinetuneConfig, seed: int = 0, encoder_lr_scale: float | None = None,
                     device: str | torch.device = "cpu", head: str | None = None, progress: str | None = None
                     ) -> tuple[nn.Module, dict]:
    """Train encoder + linear head on (train_x, train_y); keep the weights with the best validation accuracy.
    `head` overrides `cfg.head_init`. With no validation images, LP-FT keeps the probe (nothing could tell a later
    step better), and a head trained from scratch keeps its last weights. `progress`: a label for a progress line
    on stderr (None: silent)."""
    torch.manual_seed(seed)
    device = torch.device(device)
    head = cfg.head_init if head is None else head
    model = Classifier(copy.deepcopy(encoder), n_classes, head).to(device).to(memory_format=torch.channels_last)
    if head == "probe":
        model.init_head(train_x, train_y)
    no_val = len(val_y) == 0
    if no_val and head == "probe":
        return model.eval(), {"val_accuracy": None, "best_step": 0, "steps_run": 0, "start_val_accuracy": None}
    scale = cfg.encoder_lr_scale if encoder_lr_scale is None else encoder_lr_scale
    opt = torch.optim.AdamW([{"params": model.head.parameters(), "lr": cfg.lr},
                             {"params": model.encoder.parameters(), "lr": cfg.lr * scale}], weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in opt.param_groups]
    view = preset(cfg.augment, train_x.shape[1], method_default="supervised" if train_x.shape[1] == 3 else "supervised-grey")
    view = replace(view, size=getattr(encoder, "image_size", None))  # views at the size the encoder was trained at
    g = torch.Generator(device).manual_seed(seed)
    amp = TrainStep(device, model.encoder)
    x = torch.from_numpy(np.ascontiguousarray(train_x)).to(device)
    y = torch.from_numpy(train_y).to(device)
    vx, vy = torch.from_numpy(np.ascontiguousarray(val_x)), torch.from_numpy(val_y)
    best = (None, 0, None)
    if len(val_y):
        best = (accuracy(model, vx, vy, shift=cfg.shift), 0, copy.deepcopy(model.state_dict()))
    start = best[0]
    bad_checks, step = 0, 0
    line = Steps(progress, cfg.steps)
    model.train()
    for step in range(1, cfg.steps + 1):
        threads.poll()
        idx = torch.randint(0, len(x), (min(cfg.batch_size, len(x)),), generator=g, device=device)
        xb = augment(x[idx], view, g).contiguous(memory_format=torch.channels_last)
        for group, lr in zip(opt.param_groups, base_lrs):
            group["lr"] = cosine(step / cfg.steps, lr, 0.0)
        with amp.autocast():
            loss = F.cross_entropy(model(xb).float(), y[idx])
        amp.step(loss, opt)
        line.update(step)
        if no_val:
            continue
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val = accuracy(model, vx, vy, shift=cfg.shift)
            if val > best[0]:
                best, bad_checks = (val, step, copy.deepcopy(model.state_dict())), 0
            else:
                bad_checks += 1
                if bad_checks >= cfg.patience:
                    break
    line.close()
    if no_val:
        return model.eval(), {"val_accuracy": None, "best_step": step, "steps_run": step, "start_val_accuracy": None}
    model.load_state_dict(best[2])
    return model.eval(), {"val_accuracy": best[0], "best_step": best[1], "steps_run": step, "start_val_accuracy": start}
