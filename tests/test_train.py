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
from selfsup.factory import build_method, encoder_spec, encoder_and_config
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
    encoder, cfg = encoder_and_config(path)
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
        encoder_and_config(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(SelfsupError, match="sha256"):
        encoder_and_config(path)
    path.with_name("last.pt.sha256").unlink()  # no sidecar: unpickling still catches it
    with pytest.raises(SelfsupError, match="unreadable"):
        encoder_and_config(path)


def test_epoch_budget_counts_steps(tmp_path, digits):
    pretrain(small(tmp_path, epochs=1), digits[0], show_progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == len(digits[0]) // 64


def test_a_time_budget_spends_its_learning_rate_exactly_when_the_time_ends(tmp_path, digits, monkeypatch):
    """Budgeted training: under --minutes the cosine's progress is the agreed wall clock, so the rate falls to
    (nearly) zero at the last step, and the last step comes when the time is spent, not an extrapolated step count
    later or earlier."""
    import selfsup.train

    # a log every 0.25 s rather than every 2: with three points in 6 s, a slow first step on a cold machine left
    # none near the peak of the rate (0.26e-3 logged at most), and the check in between failed on a sound schedule
    monkeypatch.setattr(selfsup.train, "SYNC_SECONDS", 0.25)
    seconds = 6.0
    pretrain(small(tmp_path, minutes=seconds / 60, lr=1e-3, warmup=0.05), digits[0], show_progress=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [h for h in history if "lr" in h]
    assert len(logged) >= 2 and logged[-1]["progress"] == 1.0
    assert logged[-1]["lr"] < 0.01 * 1e-3
    assert max(h["lr"] for h in logged) > 0.3 * 1e-3  # it did train at the rate in between
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert seconds <= summary["seconds"] < seconds + 2.5  # at most one sync interval over


def test_simclr_learns_on_digits(tmp_path, digits):
    """After ~5 s of SimCLR, kNN at 10 labels per class clearly beats random-init features."""
    train, test = digits
    cfg = small(tmp_path, steps=150, batch_size=256, backbone_args={"width": 16})
    torch.manual_seed(0)
    random_init = BACKBONES.build("small_cnn", in_channels=1, width=16)
    before = few_label_rows(random_init, train, test, [10], "random", ("knn",), seeds=(0, 1, 2))
    encoder, _ = encoder_and_config(pretrain(cfg, train, show_progress=False))
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
def test_resume_in_process_is_bit_identical(tmp_path, digits, method, fixed_threads):
    """Every method's state (EMA targets, MoCo's queue, DINO's centre and temperature, MAE's masks) resumes exactly."""
    from selfsup.engine import make_fabric

    whole, resumed = run_and_resume(tmp_path, digits, lambda: make_fabric("cpu"), **smoke(method))
    assert_same_run(whole, resumed, 8)


def test_resume_under_fp16_restores_the_gradient_scaler(tmp_path, digits, fixed_threads):
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
    encoder, _ = encoder_and_config(pretrain(cfg, digits[0], show_progress=False))
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


def _moves_to_a_device(args, kwargs) -> bool:
    """Whether a Tensor.to call names a device (or a tensor, whose device it takes) and waits for the copy."""
    if kwargs.get("non_blocking") or (len(args) > 1 and args[-1] is True):
        return False  # an asynchronous copy (from page-locked memory on a GPU)
    return "device" in kwargs or any(isinstance(a, (torch.device, str, torch.Tensor)) for a in args)


@pytest.mark.parametrize("method", ["simclr", "colorization"])
def test_no_host_sync_between_sync_points(tmp_path, digits, monkeypatch, method):
    """Reads of a tensor's value on the host (item, float, int, bool, tolist, numpy) and blocking copies between
    the host and a device (`.to(device)`, `.cpu()`, `.cuda()`) happen at sync points only: twice the steps between
    the same sync points make no more of them. (A loss.item() per step would make 40 more; so would moving a
    constant to the device on each call.) Colorization's colour conversions and bins, and every augmentation,
    are exercised."""
    import selfsup.train as train

    monkeypatch.setattr(train, "SYNC_SECONDS", 1e9)  # after the sync at step 1, the next is the budget's end
    counts = {"n": 0, "where": []}
    for name in ("item", "__float__", "__int__", "__bool__", "tolist", "numpy", "cpu", "cuda", "to"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            if _name != "to" or _moves_to_a_device(a, k):
                counts["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    seen = []
    for steps in (20, 40):
        counts["n"] = 0
        cfg = small(tmp_path / str(steps), steps=steps, monitor_seconds=0, method=method, augment="simclr" if method == "simclr" else "auto")
        data = colour_digits(digits[0])
        pretrain(cfg, data, show_progress=False)
        seen.append(counts["n"])
    assert seen[0] == seen[1], seen


def colour_digits(data):
    """Digits as 3-channel images (colorization needs colour; the strong colour augmentation needs 3 channels)."""
    import dataclasses

    return dataclasses.replace(data, images=np.repeat(data.images, 3, axis=1))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_optimizer_state_lives_where_the_weights_were_placed(tmp_path, digits, optimizer):
    """The engine places the model (on a GPU: moves it) before the optimizer and its state are made. Here the
    placement is stood in for by a change of dtype, which a CPU can show: state made before placement (SGD's
    momentum buffers) would stay float32 beside float64 weights, and the fused step would fail."""
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    real = fabric.setup_module

    def placed(module, *a, **k):
        return real(module.double(), *a, **k)

    fabric.setup_module = placed
    cfg = small(tmp_path, steps=2, optimizer=optimizer, monitor_seconds=0)
    from selfsup.run import RunDir
    from selfsup.train import build

    run = RunDir(cfg.out, False, False, cfg.checkpoint_steps, cfg.checkpoint_minutes, cfg.keep_checkpoints, cfg.logger)
    parts = build(cfg, digits[0], fabric, run, show_progress=False)
    for group in parts.optimizer.param_groups:
        for p in group["params"]:
            assert p.dtype == torch.float64
            for value in parts.optimizer.state.get(p, {}).values():
                if torch.is_tensor(value) and value.ndim:
                    assert value.dtype == p.dtype and value.device == p.device
    loss = parts.method.backbone(torch.rand(4, 1, 8, 8, dtype=torch.float64)).square().mean()
    loss.backward()
    parts.optimizer.step()  # fused: every state tensor must match its weight


def test_clipping_sees_unscaled_gradients_under_fp16(tmp_path, digits, monkeypatch):
    """Under 16-mixed the gradients are multiplied by the scaler's scale (here 1024) until it unscales them. The
    method's clipping must see the true gradients: the norms it clips are those of the same steps in fp32."""
    from lightning.fabric import Fabric
    from lightning.fabric.plugins import MixedPrecision

    import selfsup.optim as optim

    seen = []
    real = optim.clip_gradients

    def recorded(params, max_norm, per_parameter=False):
        params = list(params)
        seen[-1].append(float(torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in params
                                                                    if p.grad is not None]))))
        return real(params, max_norm, per_parameter)

    monkeypatch.setattr(optim, "clip_gradients", recorded)
    monkeypatch.setattr("selfsup.methods.simclr.SimCLR.clip_grad", 1e6, raising=False)
    for precision in ("32-true", "16-mixed"):
        seen.append([])
        plugins = [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu", init_scale=2.0**10))] \
            if precision == "16-mixed" else []
        fabric = Fabric(accelerator="cpu", devices=1, plugins=plugins) if plugins else \
            Fabric(accelerator="cpu", devices=1, precision="32-true")
        pretrain(small(tmp_path / precision, steps=2, monitor_seconds=0), digits[0], show_progress=False,
                 fabric=fabric)
    fp32, fp16 = seen
    assert len(fp16) == 2 and fp16[0] == pytest.approx(fp32[0], rel=0.05), (fp32, fp16)  # fp16 rounding only


def test_lars_follows_the_papers_update():
    """LARS (You et al. 2017; as Barlow Twins' and VICReg's code apply it): g = grad + wd w, trust ratio
    q = eta ||w|| / ||g||, mu = m mu + q g, w -= lr mu; biases and norms get plain momentum SGD without decay.
    Written from the formula, one scalar at a time."""
    from selfsup.optim import LARS

    w0, b0 = [0.5, -1.0, 2.0], [0.3]
    grads = [([0.1, 0.2, -0.3], [0.05]), ([-0.2, 0.1, 0.4], [-0.1])]
    w, b = torch.nn.Parameter(torch.tensor(w0)), torch.nn.Parameter(torch.tensor(b0))
    lr, m, wd, eta = 0.5, 0.9, 0.01, 0.001
    opt = LARS([{"params": [w], "weight_decay": wd, "lars_adapt": True},
                {"params": [b], "weight_decay": 0.0, "lars_adapt": False}], lr=lr, momentum=m, eta=eta)
    want_w, want_b, mu_w, mu_b = list(w0), list(b0), [0.0] * 3, [0.0]
    for gw, gb in grads:
        w.grad, b.grad = torch.tensor(gw), torch.tensor(gb)
        opt.step()
        g = [gi + wd * wi for gi, wi in zip(gw, want_w)]
        q = eta * math.sqrt(sum(x * x for x in want_w)) / math.sqrt(sum(x * x for x in g))
        mu_w = [m * u + q * gi for u, gi in zip(mu_w, g)]
        want_w = [wi - lr * u for wi, u in zip(want_w, mu_w)]
        mu_b = [m * u + gi for u, gi in zip(mu_b, gb)]
        want_b = [bi - lr * u for bi, u in zip(want_b, mu_b)]
    assert w.tolist() == pytest.approx(want_w, rel=1e-5) and b.tolist() == pytest.approx(want_b, rel=1e-5)
    opt.found_inf = torch.ones(())  # the guard's mark: this step is not applied
    before = (w.detach().clone(), opt.state[w]["momentum_buffer"].clone())
    w.grad = torch.tensor([1.0, 1.0, 1.0])
    opt.step()
    assert torch.equal(w.detach(), before[0]) and torch.equal(opt.state[w]["momentum_buffer"], before[1])


def test_lars_trains_a_run(tmp_path, digits):
    path = pretrain(small(tmp_path, steps=3, optimizer="lars", lr=0.3, monitor_seconds=0), digits[0],
                    show_progress=False)
    assert path.exists()


def test_weight_decay_follows_its_cosine_to_the_end_value(tmp_path, digits):
    """DINO raises weight decay from 0.04 to 0.4 on a cosine over training: the groups that decay follow it (the
    last step's value is the cosine at that step's progress), norms and biases stay at 0."""
    from selfsup.schedule import cosine

    path = pretrain(small(tmp_path, steps=4, weight_decay=0.04, weight_decay_end=0.4, monitor_seconds=0), digits[0],
                    show_progress=False)
    groups = torch.load(path, weights_only=False)["optimizer"]["param_groups"]
    assert groups[0]["weight_decay"] == pytest.approx(cosine(3 / 4, 0.04, 0.4)) and groups[1]["weight_decay"] == 0.0
    assert cosine(1.0, 0.04, 0.4) == pytest.approx(0.4) and cosine(0.0, 0.04, 0.4) == pytest.approx(0.04)


def test_progressive_resolution_grows_the_global_views_to_the_full_side():
    """side_start 0.5 over the first half: 16 px at the start of a 32 px run, full from the ramp's end on, never
    smaller than the rounding step; local crops (smaller than the full side) keep their size."""
    from selfsup.augment import Augment, at_side
    from selfsup.schedule import side_at

    sides = [side_at(p / 100, 32, 0.5, 0.5) for p in range(101)]
    assert sides[0] == 16 and sides[25] == 24 and all(s == 32 for s in sides[50:])
    assert sides == sorted(sides) and all(s % 4 == 0 for s in sides)
    assert all(side_at(p / 10, 32, 1.0, 0.5) == 32 for p in range(11))  # off
    assert side_at(0.0, 32, 0.01, 0.5) == 4
    views = [Augment(), Augment(size=32), Augment(size=12)]
    assert [v.size for v in at_side(views, 20, 32)] == [20, 20, 12]
    assert at_side(views, 32, 32) is views


def test_progressive_resolution_trains_at_the_smaller_side_first(tmp_path, digits, monkeypatch):
    import selfsup.train as train_module

    seen = []
    real = train_module.augment
    monkeypatch.setattr(train_module, "augment", lambda x, v, g: seen.append(real(x, v, g).shape[-1]) or real(x, v, g))
    pretrain(small(tmp_path, steps=8, side_start=0.5, side_ramp=0.5), digits[0], show_progress=False)
    assert seen[0] == 4 and seen[-1] == 8 and seen == sorted(seen)  # digits are 8 px
