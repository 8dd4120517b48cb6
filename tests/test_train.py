import json
import math
from statistics import mean

import numpy as np
import pytest
import torch
from conftest import assert_same_run, smoke

from selfsup import checkpoint
from selfsup.backbones import BACKBONES
from selfsup.config import PretrainConfig
from selfsup.data import load
from selfsup.errors import ConfigError, SelfsupError
from selfsup.evaluate import extract_features, few_label_rows
from selfsup.factory import build_method, encoder_spec, load_encoder
from selfsup.methods import METHODS
from selfsup.schedule import warmup_cosine as lr_at
from selfsup.train import pretrain


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
    assert state["budget"]["step"] == 2 and state["final"] and state["config"] == cfg.to_dict()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 0 and 0 <= lines[0]["knn_acc"] <= 1  # the online monitor starts at random init
    assert all(math.isfinite(r["loss"]) for r in lines[1:]) and "knn_acc" in lines[-1]


def test_checkpoint_reloads_the_trained_encoder(tmp_path, digits):
    path = pretrain(small(tmp_path, steps=3), digits[0], show_progress=False)
    encoder, cfg = load_encoder(path)
    state = torch.load(path, weights_only=False)["method"]
    fresh = build_method(cfg, encoder_spec(cfg, 1, 8))
    fresh.load_state_dict(state)
    x = digits[1].images[:16]
    assert torch.allclose(extract_features(encoder, x, precision="32-true"), extract_features(fresh.backbone, x, precision="32-true"))


def test_checkpoint_from_other_architecture_is_a_clear_error(tmp_path, digits):
    path = pretrain(small(tmp_path, steps=1), digits[0], show_progress=False)
    state = torch.load(path, weights_only=False)
    state["config"]["backbone_args"] = state["encoder"]["backbone_args"] = {"width": 16}
    checkpoint.save(path, state)
    with pytest.raises(ConfigError, match=r"do not fit simclr/small_cnn\(width=16\)"):
        load_encoder(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SelfsupError, match="sha256"):
        load_encoder(path)
    path.with_name("last.pt.sha256").unlink()  # no sidecar: unpickling still catches it
    with pytest.raises(SelfsupError, match="unreadable"):
        load_encoder(path)


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
    encoder, _ = load_encoder(pretrain(cfg, train, show_progress=False))
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
    ({"steps": 1, "method": "mae"}, "mae needs a Vision Transformer backbone; use --backbone vit_tiny"),
    ({"steps": 1, "optimizer": "lion"}, "unknown optimizer"),
])
def test_bad_config(kw, message):
    with pytest.raises(ConfigError, match=message):
        PretrainConfig(**kw).validate()


def test_a_dataset_smaller_than_the_batch_trains_with_a_smaller_batch(tmp_path, digits):
    """24 images and the default batch of 256: a one-line warning, then training on batches of 24."""
    few = digits[0].subset(np.arange(24))
    with pytest.warns(UserWarning, match="only 24 images per process: training with batch 24 instead of --batch-size 256"):
        pretrain(small(tmp_path, steps=3, batch_size=256, monitor_seconds=0), few, show_progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["images_seen"] == 3 * 24


def test_config_roundtrip_and_unknown_field():
    cfg = PretrainConfig(steps=3).override(lr=0.1, seed=None)
    assert cfg.lr == 0.1 and cfg.seed == 0
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config field"):
        PretrainConfig.from_dict({"learning_rate": 1})


def run_and_resume(tmp_path, digits, make_fabric, **kw):
    """A run of 8 steps, and the same run stopped after its step-4 checkpoint and resumed: their final states."""
    cfg = small(tmp_path, steps=8, checkpoint_steps=4, monitor_seconds=0, **kw)
    whole = torch.load(pretrain(cfg, digits[0], show_progress=False, fabric=make_fabric()), weights_only=False)
    cut = small(tmp_path / "cut", steps=8, checkpoint_steps=4, monitor_seconds=0, **kw)
    pretrain(cut, digits[0], show_progress=False, fabric=make_fabric())
    ckpts = tmp_path / "cut" / "run" / "checkpoints"
    for name in ("last.pt", "step-000000008.pt"):
        checkpoint.remove(ckpts / name)
    resumed = torch.load(pretrain(cut, digits[0], show_progress=False, resume=True, fabric=make_fabric()),
                         weights_only=False)
    return whole, resumed


@pytest.mark.parametrize("method", METHODS.names())
def test_resume_in_process_is_bit_identical(tmp_path, digits, method):
    """Every method's state (EMA targets, MoCo's queue, DINO's centre and temperature, MAE's masks) resumes exactly."""
    from selfsup.engine import make_fabric

    whole, resumed = run_and_resume(tmp_path, digits, lambda: make_fabric("cpu"), **smoke(method))
    assert_same_run(whole, resumed, 8)


def test_resume_under_fp16_restores_the_gradient_scaler(tmp_path, digits):
    """16-bit mixed precision with a gradient scaler whose scale moves every step: resuming without the scaler's
    state would start again from the initial scale, skip other steps, and end elsewhere."""
    from lightning.fabric import Fabric
    from lightning.fabric.plugins import MixedPrecision

    def fp16():
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20, growth_interval=1)
        return Fabric(accelerator="cpu", devices=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler)])

    whole, resumed = run_and_resume(tmp_path, digits, fp16)
    assert whole["precision"]["scale"] != 2.0**20  # the scale did move
    assert_same_run(whole, resumed, 8)


def test_evaluation_resizes_to_the_training_size(tmp_path, digits):
    """An encoder trained on views resized to 12 px is fed 12 px images by evaluation, whatever the data's size."""
    import torch.nn.functional as F

    cfg = small(tmp_path, steps=2, image_size=12, monitor_seconds=0)
    encoder, _ = load_encoder(pretrain(cfg, digits[0], show_progress=False))
    assert encoder.image_size == 12 and encoder.spec.image_size == 12
    x = digits[1].images[:8]  # 8x8
    resized = F.interpolate(torch.from_numpy(x).float() / 255, size=(12, 12), mode="bilinear", align_corners=False,
                            antialias=True)
    with torch.no_grad():
        want = encoder.eval()(resized.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(extract_features(encoder, x, precision="32-true"), want, atol=1e-5)


def test_unknown_evaluation_is_an_error_from_python(digits):
    from selfsup.evaluate import few_label_rows

    with pytest.raises(ConfigError, match="unknown evaluation 'knnn'; choose one of: knn, linear"):
        few_label_rows(BACKBONES.build("small_cnn", in_channels=1, width=4), digits[0], digits[1], [1], "x", ("knnn",))


def test_no_host_sync_between_sync_points(tmp_path, digits, monkeypatch):
    """Reads of a tensor's value on the host (item, float, int, bool, tolist) happen at sync points only: twice the
    steps between the same sync points make no more of them. (A loss.item() per step would make 40 more.)"""
    import selfsup.train as train

    monkeypatch.setattr(train, "SYNC_SECONDS", 1e9)  # after the sync at step 1, the next is the budget's end
    counts = {"n": 0}
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            counts["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    seen = []
    for steps in (20, 40):
        counts["n"] = 0
        pretrain(small(tmp_path / str(steps), steps=steps, monitor_seconds=0), digits[0], show_progress=False)
        seen.append(counts["n"])
    assert seen[0] == seen[1], seen
