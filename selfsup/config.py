"""Typed configuration. YAML files and command-line flags only override these fields."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run; saved beside every checkpoint and result."""

    dataset: str = "mnist"
    split: str = "train"  # e.g. "train+unlabeled" for stl10
    data_root: str | None = None  # default: $SELFSUP_DATA or ~/.cache/selfsup
    strict: bool = False  # an image folder with unreadable files is an error (default: skip them with a warning)
    method: str = "simclr"
    method_args: dict[str, Any] = field(default_factory=dict)
    backbone: str = "small_cnn"
    backbone_args: dict[str, Any] = field(default_factory=dict)
    augment: str = "auto"  # preset name; auto = simclr for colour, greyscale for 1 channel
    augment_args: dict[str, Any] = field(default_factory=dict)  # fields of the preset to change, e.g. {rotate: 20}
    image_size: int | None = None  # None keeps the dataset's size
    # Budget: exactly one of these.
    epochs: float | None = None
    minutes: float | None = None
    steps: int | None = None
    batch_size: int = 256
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 1e-5
    warmup: float = 0.05  # fraction of the budget spent warming up the learning rate
    precision: str = "auto"  # auto | bf16-mixed | 32-true | 16-mixed
    channels_last: bool = True
    accelerator: str = "auto"  # auto | cpu | cuda | mps
    devices: int = 1
    num_nodes: int = 1
    seed: int = 0
    checkpoint_minutes: float = 5.0  # a checkpoint at least this often (wall clock) ...
    checkpoint_steps: int | None = None  # ... and every this many steps, if set
    keep_checkpoints: int = 3  # the newest K periodic checkpoints are kept
    skip_nonfinite: int = 0  # skip up to this many batches whose loss is NaN/inf; then stop (0: stop at the first)
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch when training on several GPUs
    monitor_seconds: float = 30.0  # online kNN on a small labeled holdout this often (0 turns it off)
    monitor_per_class: int = 50  # holdout bank and queries, per class, from the pretraining split's labels
    out: str = "runs/pretrain"

    def validate(self) -> "PretrainConfig":
        budgets = {k: getattr(self, k) for k in ("epochs", "minutes", "steps") if getattr(self, k) is not None}
        if len(budgets) != 1:
            raise ConfigError(f"give exactly one budget: --epochs, --minutes or --steps (got {', '.join(budgets) or 'none'})")
        (name, value), = budgets.items()
        if not value > 0:
            raise ConfigError(f"--{name} must be positive, got {value}")
        for k in ("batch_size", "devices", "num_nodes", "keep_checkpoints"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be at least 1, got {getattr(self, k)}")
        if self.checkpoint_steps is not None and self.checkpoint_steps < 1:
            raise ConfigError(f"checkpoint_steps must be at least 1, got {self.checkpoint_steps}")
        if self.skip_nonfinite < 0:
            raise ConfigError(f"skip_nonfinite must be 0 or more, got {self.skip_nonfinite}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        from .augment import check_changes
        from .backbones import BACKBONES
        from .methods import METHODS

        METHODS.get(self.method), BACKBONES.get(self.backbone)  # clear errors listing the valid names
        check_changes(self.augment_args)
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose adamw or sgd")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**d)

    def override(self, **changes: Any) -> "PretrainConfig":
        """A copy with the non-None `changes` applied (unknown fields are an error)."""
        d = self.to_dict()
        d.update({k: v for k, v in changes.items() if v is not None})
        return PretrainConfig.from_dict(d)


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of field: value")
    return data


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    tmp.replace(path)
