import json
import math
from statistics import mean

import pytest
import torch

from selfsup import checkpoint
from selfsup.backbones import BACKBONES
from selfsup.config import PretrainConfig
from selfsup.data import load
from selfsup.errors import ConfigError, SelfsupError
from selfsup.evaluate import extract_features, few_label_rows
from selfsup.train import lr_at, pretrain


@pytest.fixture(scope="module")
def digits():
    return load("digits", "train"), load("digits", "test")


def small(tmp_path, **kw):
    base = dict(dataset="digits", batch_size=64, backbone_args={"width": 8}, out=str(tmp_path / "run"))
    return PretrainConfig(**(base | kw))


def test_two_step_smoke_run_writes_everything(tmp_path, digits):
    cfg = small(tmp_path, steps=2)
    path = pretrain(cfg, digits[0], show_progress=False)
    run = tmp_path / "run"
    assert path == run / "checkpoints" / "last.pt"
    assert json.loads((run / "config.json").read_text()) == cfg.to_dict()
    state = torch.load(path, weights_only=False)
    assert state["step"] == 2 and state["final"] and state["config"] == cfg.to_dict()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and 0 <= lines[0]["knn_acc"] <= 1  # the online monitor starts at random init
    assert all(math.isfinite(r["loss"]) for r in lines[1:]) and "knn_acc" in lines[-1]


def test_checkpoint_reloads_the_trained_encoder(tmp_path, digits):
    path = pretrain(small(tmp_path, steps=3), digits[0], show_progress=False)
    encoder, cfg = checkpoint.load_encoder(path)
    state = torch.load(path, weights_only=False)["method_state"]
    fresh = checkpoint.build_method(cfg, 1)
    fresh.load_state_dict(state)
    x = digits[1].images[:16]
    assert torch.allclose(extract_features(encoder, x, precision="32-true"), extract_features(fresh.backbone, x, precision="32-true"))


def test_checkpoint_from_other_architecture_is_a_clear_error(tmp_path, digits):
    path = pretrain(small(tmp_path, steps=1), digits[0], show_progress=False)
    state = torch.load(path, weights_only=False)
    state["config"]["backbone_args"] = {"width": 16}
    checkpoint.save(path, state)
    with pytest.raises(ConfigError, match=r"do not fit simclr/small_cnn\(width=16\)"):
        checkpoint.load_encoder(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SelfsupError, match="sha256"):
        checkpoint.load_encoder(path)
    path.with_name("last.pt.sha256").unlink()  # no sidecar: unpickling still catches it
    with pytest.raises(SelfsupError, match="unreadable"):
        checkpoint.load_encoder(path)


def test_epoch_budget_counts_steps(tmp_path, digits):
    pretrain(small(tmp_path, epochs=1), digits[0], show_progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == len(digits[0]) // 64


def test_simclr_learns_on_digits(tmp_path, digits):
    """After ~5 s of SimCLR, kNN at 10 labels per class clearly beats random-init features."""
    train, test = digits
    cfg = small(tmp_path, steps=150, batch_size=256, backbone_args={"width": 16})
    torch.manual_seed(0)
    random_init = BACKBONES.build("small_cnn", in_channels=1, width=16)
    before = few_label_rows(random_init, train, test, [10], "random", ("knn",), seeds=(0, 1, 2))
    encoder, _ = checkpoint.load_encoder(pretrain(cfg, train, show_progress=False))
    after = few_label_rows(encoder, train, test, [10], "simclr", ("knn",), seeds=(0, 1, 2))
    gain = mean(r["accuracy"] for r in after) - mean(r["accuracy"] for r in before)
    assert gain > 0.08, (before, after)


def test_lr_schedule_warms_up_then_decays_to_zero():
    assert lr_at(0.0, 1.0, 0.1) == 0.0
    assert lr_at(0.05, 1.0, 0.1) == pytest.approx(0.5)
    assert lr_at(0.1, 1.0, 0.1) == pytest.approx(1.0)
    assert lr_at(0.55, 1.0, 0.1) == pytest.approx(0.5)
    assert lr_at(1.0, 1.0, 0.1) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kw, message", [
    ({}, "exactly one budget"),
    ({"minutes": 0}, "must be positive"),
    ({"epochs": -1}, "must be positive"),
    ({"steps": 3, "minutes": 1}, "exactly one budget"),
    ({"steps": 1, "method": "moco"}, "unknown method 'moco'; choose one of"),
    ({"steps": 1, "optimizer": "lion"}, "unknown optimizer"),
])
def test_bad_config(kw, message):
    with pytest.raises(ConfigError, match=message):
        PretrainConfig(**kw).validate()


def test_batch_larger_than_dataset(tmp_path, digits):
    with pytest.raises(ConfigError, match="lower --batch-size"):
        pretrain(small(tmp_path, steps=1, batch_size=5000), digits[0], show_progress=False)


def test_config_roundtrip_and_unknown_field():
    cfg = PretrainConfig(steps=3).override(lr=0.1, seed=None)
    assert cfg.lr == 0.1 and cfg.seed == 0
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        PretrainConfig.from_dict({"learning_rate": 1})
