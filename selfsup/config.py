"""Typed configuration. YAML files and command-line flags only override these fields."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError


def opt(default: Any, help: str) -> Any:
    """A config field with its help text (the command line shows it with the default)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class PretrainConfig:
    """Everything that defines a pretraining run; saved beside every checkpoint and result."""

    dataset: str = opt("mnist", "dataset name (see `selfsup datasets`) or folder:PATH")
    split: str = opt("train", "split(s) to pretrain on; join with + (stl10: train+unlabeled)")
    data_root: str | None = opt(None, "where datasets live; None: $SELFSUP_DATA or ~/.cache/selfsup")
    labels: str | None = opt(None, "a CSV of path,label for an image folder (paths relative to it); test images are "
                             "held out from the labeled files")
    strict: bool = opt(False, "an image folder with unreadable files is an error instead of a warning")
    method: str = opt("simclr", "pretraining method (see `selfsup methods`)")
    method_args: dict[str, Any] = opt({}, "the method's constructor arguments, e.g. temperature=0.5")
    backbone: str = opt("small_cnn", "encoder architecture (see `selfsup backbones`)")
    backbone_args: dict[str, Any] = opt({}, "the backbone's arguments, e.g. width=64")
    augment: str = opt("auto", "augmentation preset; auto: the method's, else simclr (colour) or greyscale (1 channel)")
    augment_args: dict[str, Any] = opt({}, "fields of the preset to change, e.g. rotate=20,crop_scale=[0.5,1]")
    image_size: int | None = opt(None, "side the encoder trains at (views are resized); None keeps the dataset's, "
                                 "and for a folder of photos 64 px on a CPU, 224 on a GPU")
    epochs: float | None = opt(None, "budget in passes over the data (give exactly one budget)")
    minutes: float | None = opt(None, "budget in wall-clock minutes")
    steps: int | None = opt(None, "budget in optimizer steps")
    batch_size: int = opt(256, "images per step on each device")
    optimizer: str = opt("adamw", "adamw, sgd (Nesterov momentum 0.9) or lars (momentum 0.9, trust ratio 0.001; the "
                         "large-batch optimizer of SimCLR, BYOL, Barlow Twins and VICReg)")
    lr: float = opt(2e-3, "peak learning rate (linear warmup, then cosine decay to 0)")
    weight_decay: float = opt(1e-5, "weight decay on weights (never on norms, biases or the method's exceptions)")
    weight_decay_end: float | None = opt(None, "weight decay at the end of the budget, reached by a cosine from "
                                         "--weight-decay (DINO: 0.04 to 0.4); None: constant")
    warmup: float = opt(0.05, "fraction of the budget spent warming up the learning rate")
    side_start: float = opt(1.0, "progressive resolution: the views' side at the start, as a fraction of the full "
                            "side, growing linearly to it over --side-ramp of the budget (1: off)")
    side_ramp: float = opt(0.5, "fraction of the budget over which the side grows to full (with --side-start)")
    precision: str = opt("auto", "auto, bf16-mixed, 16-mixed or 32-true; auto: bf16 where the hardware runs it")
    channels_last: bool = opt(True, "channels-last memory layout for convolutions")
    accelerator: str = opt("auto", "auto, cpu or cuda; auto: a GPU where torch sees one")
    devices: int = opt(1, "processes (GPUs) per node; each trains on its own shard of every epoch")
    num_nodes: int = opt(1, "machines")
    seed: int = opt(0, "seed for weights, data order and augmentation")
    checkpoint_minutes: float = opt(5.0, "save a checkpoint at least this often (wall clock)")
    checkpoint_steps: int | None = opt(None, "also save one every this many steps")
    keep_checkpoints: int = opt(3, "how many periodic checkpoints to keep (newest first)")
    skip_nonfinite: int = opt(0, "steps with NaN/inf gradients to skip before stopping (0: stop at the first)")
    sync_batchnorm: bool | None = opt(None, "BatchNorm statistics over the global batch (GPUs only); None: on for "
                                      "several GPU processes where the method's paper does so (SimCLR, BYOL, "
                                      "SimSiam, MoCo v3, Barlow Twins, VICReg, DINO)")
    monitor_seconds: float = opt(30.0, "online kNN on a small labeled holdout this often, in seconds (0: off)")
    monitor_per_class: int = opt(50, "online kNN bank and queries per class, from the pretraining split's labels")
    logger: str = opt("", "loggers beside metrics.jsonl, comma-separated: tensorboard, csv, wandb")
    out: str = opt("runs/pretrain", "run directory: checkpoints, config.json, metrics.jsonl, summary.json")

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
        if not (0 < self.side_start <= 1 and 0 <= self.side_ramp <= 1):
            raise ConfigError(f"side_start must be in (0, 1] and side_ramp in [0, 1], got {self.side_start} and "
                              f"{self.side_ramp}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        from .augment import check_changes
        from .backbones import BACKBONES
        from .methods import METHODS

        METHODS.get(self.method), BACKBONES.get(self.backbone)  # clear errors listing the valid names
        METHODS.check_args(self.method, self.method_args), BACKBONES.check_args(self.backbone, self.backbone_args)
        METHODS.get(self.method).check_backbone(self.backbone)
        check_changes(self.augment_args)
        from .engine import PRECISIONS
        from .loggers import names

        names(self.logger)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        from .engine import accelerator_for

        accelerator_for(self.accelerator)  # one line for an unknown one (mps included)
        if self.optimizer not in ("adamw", "sgd", "lars"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose adamw, sgd or lars")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PretrainConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a config is a mapping of field: value, not {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, d)) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**{f.name: typed(f, d[f.name]) for f in dataclasses.fields(cls) if f.name in d})

    def override(self, **changes: Any) -> "PretrainConfig":
        """A copy with the non-None `changes` applied (unknown fields are an error)."""
        d = self.to_dict()
        d.update({k: v for k, v in changes.items() if v is not None})
        return PretrainConfig.from_dict(d)

    def with_budget(self, epochs: float | None = None, minutes: float | None = None,
                    steps: int | None = None) -> "PretrainConfig":
        """A copy whose budget is the one given: a new budget replaces the old one (unchanged if none is given)."""
        if epochs is None and minutes is None and steps is None:
            return self
        return PretrainConfig.from_dict(self.to_dict() | {"epochs": epochs, "minutes": minutes, "steps": steps})


def typed(f: dataclasses.Field, value: Any) -> Any:
    """`value` as field `f`'s type (an int where a float is wanted becomes a float), or one ConfigError line."""
    kind = str(f.type)
    if value is None and "None" in kind:
        return None
    base = kind.split(" |")[0].split("[")[0]
    ok = {"str": isinstance(value, str), "bool": isinstance(value, bool), "dict": isinstance(value, dict),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool)}[base]
    if not ok:
        raise ConfigError(f"config field {f.name} must be {kind.replace('dict[str, Any]', 'a mapping')}, "
                          f"got {value!r:.80}")
    if base == "dict" and not all(isinstance(k, str) for k in value):
        raise ConfigError(f"config field {f.name} must have names as keys, got {value!r:.80}")
    return float(value) if base == "float" else value


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of field: value")
    return data
