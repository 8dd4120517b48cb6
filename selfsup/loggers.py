"""Where else the metrics go, beside metrics.jsonl: TensorBoard, CSV or Weights & Biases, through Lightning's loggers.

Each logger gets the same numbers as a line of metrics.jsonl, keyed by step, and the resolved config as
hyperparameters (where the logger keeps them). Only the main process logs.
"""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

LOGGERS = ("tensorboard", "csv", "wandb")


def names(text: str) -> list[str]:
    """'tensorboard,csv' -> the logger names, each checked."""
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    for n in chosen:
        if n not in LOGGERS:
            raise ConfigError(f"unknown logger {n!r}; choose from: {', '.join(LOGGERS)} (comma-separated)")
    return chosen


def make(text: str, out: Path, config: dict) -> list:
    """Lightning loggers writing under `out`: OUT/tensorboard/ (event files), OUT/csv/metrics.csv, OUT/wandb/."""
    loggers = []
    for n in names(text):
        try:
            if n == "tensorboard":
                from lightning.fabric.loggers import TensorBoardLogger

                loggers.append(TensorBoardLogger(out, name="tensorboard", version="", default_hp_metric=False))
            elif n == "csv":
                from lightning.fabric.loggers import CSVLogger

                loggers.append(CSVLogger(out, name="csv", version="", flush_logs_every_n_steps=1))
            else:
                from lightning.pytorch.loggers import WandbLogger

                loggers.append(WandbLogger(save_dir=str(out), name=out.name))
        except (ImportError, ModuleNotFoundError) as e:
            package = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(n, n)
            raise ConfigError(f"--logger {n} needs {package} ({e}); pip install {package}") from None
    for lg in loggers:
        try:
            lg.log_hyperparams(config)
        except NotImplementedError:  # the CSV logger keeps none; config.json has them
            pass
    return loggers


def log(loggers: list, stats: dict) -> None:
    numbers = {k: v for k, v in stats.items() if k != "step" and isinstance(v, (int, float))}
    for lg in loggers:
        lg.log_metrics(numbers, step=int(stats.get("step", 0)))


def close(loggers: list) -> None:
    for lg in loggers:
        lg.finalize("success")
