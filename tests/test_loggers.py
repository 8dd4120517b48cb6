"""TensorBoard and CSV get what metrics.jsonl gets; compare's table goes to them too."""
import csv
import json

import pytest

from selfsup.cli import main
from selfsup.config import PretrainConfig
from selfsup.data import load
from selfsup.errors import ConfigError
from selfsup.train import pretrain


def scalar_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return acc, set(acc.Tags()["scalars"])


def test_tensorboard_and_csv_hold_the_metrics(tmp_path):
    cfg = PretrainConfig(dataset="digits", steps=12, batch_size=64, backbone_args={"width": 4}, logger="tensorboard,csv",
                         out=str(tmp_path))
    pretrain(cfg, load("digits"), show_progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*lines)
    acc, tags = scalar_tags(tmp_path / "tensorboard")
    assert {"loss", "img_per_s", "lr", "embed_std_ratio", "effective_rank", "knn_acc"} <= tags
    assert tags == keys - {"step"}
    assert [e.step for e in acc.Scalars("loss")] == [line["step"] for line in lines if "loss" in line]
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == keys and len(rows) == len(lines)
    assert float(rows[-1]["loss"]) == pytest.approx(lines[-1]["loss"])


def test_compare_logs_its_table(tmp_path, capsys):
    code = main(["compare", "--dataset", "digits", "--methods", "simclr", "--baselines", "random", "--labels-per-class",
                 "1", "--evals", "knn", "--minutes-per-method", "0.02", "--backbone-args", "width=4", "--config",
                 str(write_config(tmp_path)), "--out", str(tmp_path / "cmp")])
    assert code == 0, capsys.readouterr().err
    _, tags = scalar_tags(tmp_path / "cmp" / "tensorboard")
    assert {"simclr/knn@1", "random-init/knn@1"} <= tags
    assert (tmp_path / "cmp" / "pretrain" / "simclr" / "tensorboard").is_dir()  # each method's own run


def write_config(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("logger: tensorboard\nmonitor_seconds: 0\n")
    return path


def test_unknown_logger_is_one_line():
    with pytest.raises(ConfigError, match="unknown logger 'tb'; choose from: tensorboard, csv, wandb"):
        PretrainConfig(steps=1, logger="tb").validate()
