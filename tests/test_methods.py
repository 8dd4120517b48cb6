"""Every registered method: runs, saves its full state, and (slow) learns. Plus each method's defining property."""
import copy
import math
from statistics import mean

import numpy as np
import pytest
import torch

from selfsup.backbones import BACKBONES
from selfsup.colour import Lightness, lab_to_rgb, rgb_to_lab
from selfsup.config import PretrainConfig
from selfsup.data import ImageSet, load
from selfsup.errors import ConfigError
from selfsup.evaluate import extract_features, few_label_rows
from selfsup.losses import byol_loss, negative_cosine
from selfsup.methods import METHODS
from selfsup.methods.byol import ema_update, tau_at
from selfsup.factory import WithInput, build_method, encoder_spec, load_encoder, random_encoder
from selfsup.methods.colorization import square_holes
from selfsup.methods.rotation import rotate_batch
from selfsup.train import pretrain


@pytest.fixture(scope="module")
def digits():
    return load("digits", "train"), load("digits", "test")


@pytest.mark.parametrize("name", METHODS.names())
def test_few_steps_on_digits_and_full_state_saved(name, digits, tmp_path):
    cfg = PretrainConfig(dataset="digits", method=name, steps=3, batch_size=32, backbone_args={"width": 8}, out=str(tmp_path))
    path = pretrain(cfg, digits[0], show_progress=False)
    state = torch.load(path, weights_only=False)
    assert all(math.isfinite(h["loss"]) for h in state["run"]["history"] if "loss" in h) and "loss" in state["run"]["history"][-1]
    assert "embed_std_ratio" in state["run"]["history"][-1]  # every method feeds the collapse monitor
    fresh = build_method(cfg, encoder_spec(cfg, 1, 8))
    fresh.load_state_dict(state["method"])  # strict: every buffer and submodule (e.g. BYOL's target) is there
    assert set(fresh.state_dict()) == set(state["method"])
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state["method"][k]), k


def test_methods_list_has_descriptions(capsys):
    from selfsup.cli import main

    main(["methods"])
    out = capsys.readouterr().out
    for name in ("simclr", "byol", "simsiam", "rotation", "colorization"):
        line = next(l for l in out.splitlines() if l.startswith(name))
        assert len(line.split(None, 1)[1]) > 20


# --- BYOL -------------------------------------------------------------------------------------------

def test_byol_ema_matches_hand_computation():
    online = torch.nn.Linear(3, 2)
    target = copy.deepcopy(online)
    with torch.no_grad():
        target.weight.fill_(1.0)
        target.bias.fill_(-1.0)
    w, b = online.weight.detach().clone(), online.bias.detach().clone()
    ema_update(target, online, tau=0.9)
    assert torch.allclose(target.weight, 0.9 * 1.0 + 0.1 * w)
    assert torch.allclose(target.bias, 0.9 * -1.0 + 0.1 * b)


def test_byol_tau_schedule():
    assert tau_at(0.0, 0.996) == pytest.approx(0.996)
    assert tau_at(0.5, 0.996) == pytest.approx(0.998)
    assert tau_at(1.0, 0.996) == pytest.approx(1.0)


def test_byol_target_gets_no_gradient_and_follows_ema():
    m = METHODS.build("byol", BACKBONES.build("small_cnn", in_channels=1, width=4), proj_hidden=16, proj_dim=8, pred_hidden=16)
    views = [torch.rand(6, 1, 12, 12), torch.rand(6, 1, 12, 12)]
    m.loss(views).backward()
    assert all(p.grad is None and not p.requires_grad for p in m.target.parameters())
    assert all(p.grad is not None for p in m.predictor.parameters())
    before = [p.clone() for p in m.target.parameters()]
    online = [p.detach().clone() for p in list(m.backbone.parameters()) + list(m.projector.parameters())]
    tau = float(m.tau)
    m.after_optimizer_step(0.5)
    for t0, o, t1 in zip(before, online, m.target.parameters()):
        assert torch.allclose(t1, tau * t0 + (1 - tau) * o)
    assert float(m.tau) == pytest.approx(tau_at(0.5, m.tau_base)) and int(m.ema_steps) == 1


def test_byol_loss_reference():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    ref = mean(float(((p[i] / p[i].norm() - z[i] / z[i].norm()) ** 2).sum()) for i in range(5))
    assert byol_loss(p, z).item() == pytest.approx(ref, rel=1e-5)


# --- SimSiam ----------------------------------------------------------------------------------------

def test_simsiam_stop_gradient():
    p = torch.randn(4, 6, requires_grad=True)
    z = torch.randn(4, 6, requires_grad=True)
    negative_cosine(p, z).backward()
    assert p.grad is not None and z.grad is None  # nothing flows into the target branch
    ref = -mean(float(p[i].detach() @ z[i].detach() / (p[i].norm() * z[i].norm()).detach()) for i in range(4))
    assert negative_cosine(p, z).item() == pytest.approx(ref, rel=1e-5)


def test_simsiam_gradient_reaches_z_only_through_the_predictor_branch():
    predictor = METHODS.build("simsiam", BACKBONES.build("small_cnn", in_channels=1, width=4), proj_dim=8, pred_hidden=4).predictor
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g, requires_grad=True), torch.randn(6, 8, generator=g, requires_grad=True)
    full = 0.5 * negative_cosine(predictor(z1), z2) + 0.5 * negative_cosine(predictor(z2), z1)
    (g_full,) = torch.autograd.grad(full, z1)
    (g_pred,) = torch.autograd.grad(0.5 * negative_cosine(predictor(z1), z2), z1)  # the predictor branch alone
    assert torch.allclose(g_full, g_pred) and g_full.abs().sum() > 0


# --- Rotation ---------------------------------------------------------------------------------------

def test_simclr_local_crops_views_and_loss():
    """K local crops at half the side; the loss is the mean NT-Xent over the global pair and every (local, global)
    pair, computed here pair by pair; the views run through the real loop and resume."""
    from selfsup.augment import preset
    from selfsup.losses import nt_xent

    cfg = PretrainConfig(method="simclr", method_args={"local_crops": 3}, backbone_args={"width": 4})
    m = build_method(cfg, encoder_spec(cfg, 3, 32))
    views = m.views(preset("simclr", 3))
    assert [v.size for v in views] == [None, None, 16, 16, 16] and views[2].crop_scale == (0.05, 0.4)
    torch.manual_seed(0)
    x = [torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32)] + [torch.rand(6, 3, 16, 16) for _ in range(3)]
    m.eval()  # BatchNorm with running statistics: each embedding is the same whichever batch it is in
    z = [m.embed(v) for v in x]
    pairs = [(z[0], z[1])] + [(z[k], z[g]) for k in (2, 3, 4) for g in (0, 1)]
    want = mean(nt_xent(a, b, m.temperature).item() for a, b in pairs)
    assert math.isclose(m.loss(x).item(), want, rel_tol=1e-5)
    with pytest.raises(ConfigError, match="local_crops"):
        build_method(cfg.override(method_args={"local_crops": -1}), encoder_spec(cfg, 3, 32))


def test_rotation_labels_match_the_rotation_applied():
    x = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3)
    rotated, k = rotate_batch(x)
    assert rotated.shape == (8, 1, 3, 3) and k.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for i in range(8):
        expected = np.rot90(x[i % 2, 0].numpy(), int(k[i]))  # numpy's own rotation, counter-clockwise
        assert np.array_equal(rotated[i, 0].numpy(), expected)
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.rand(1, 1, 3, 4))


def test_rotation_logs_pretext_accuracy():
    m = METHODS.build("rotation", BACKBONES.build("small_cnn", in_channels=1, width=4))
    m.loss([torch.rand(4, 1, 8, 8)])
    assert 0 <= m.metrics["rotation_acc"] <= 1


# --- Colorization -----------------------------------------------------------------------------------

def test_lab_known_values_and_roundtrip():
    px = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(1, 3, 3, 1)
    lab = rgb_to_lab(px)[0, :, :, 0].T
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.05)
    assert torch.allclose(lab[1], torch.tensor([53.24, 80.09, 67.20]), atol=0.05)  # sRGB red, D65
    assert torch.allclose(lab[2], torch.zeros(3), atol=0.05)
    rgb = torch.rand(2, 3, 5, 5)
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-4)


def test_colorization_on_colour_keeps_first_layer_and_input_path(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (64, 3, 16, 16), dtype=np.uint8)
    data = ImageSet("colour", x, np.zeros(64, np.int64))
    cfg = PretrainConfig(dataset="colour", method="colorization", steps=2, batch_size=16, backbone_args={"width": 8}, out=str(tmp_path))
    trained = torch.load(pretrain(cfg, data, show_progress=False), weights_only=False)["method"]
    encoder, _ = load_encoder(tmp_path)
    assert isinstance(encoder, WithInput) and encoder.in_channels == 3
    assert encoder.first_conv().in_channels == 1
    assert torch.equal(encoder.first_conv().weight, trained["net.stem.0.weight"])  # the pretrained first layer, not a fresh one
    rgb = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(encoder(rgb), encoder.encoder(Lightness()(rgb)))  # downstream sees the same L input
    assert extract_features(encoder, x[:4], precision="32-true").shape == (4, 64)


def test_colour_bins_soft_targets_and_annealed_mean():
    from selfsup.methods.colorization import CENTRES, annealed_mean, soft_bins

    ab = torch.tensor([[35.0, -65.0], [-104.0, 3.0], [0.0, 0.0]]).T.reshape(1, 2, 3, 1)  # three pixels
    t = soft_bins(ab)  # (1, Q, 3, 1)
    assert torch.allclose(t.sum(1), torch.ones(1, 3, 1)) and ((t > 0).sum(1) == 5).all()
    for i, (a, b) in enumerate(ab[0, :, :, 0].T.tolist()):  # the heaviest bin is the nearest centre
        nearest = ((CENTRES - torch.tensor([a, b])) ** 2).sum(1).argmin()
        assert t[0, :, i, 0].argmax() == nearest
    sharp = annealed_mean(torch.log(t + 1e-12) * 50)  # a near one-hot distribution decodes to its bin's centre
    assert (sharp - ab).abs().max() < GRID_HALF_DIAGONAL


GRID_HALF_DIAGONAL = 7.1  # 10x10 bins: no point is farther than this from its bin's centre


def test_colorization_classes_learn_colours_and_prior():
    """Trained on a few red and blue images, the classes loss paints them in colour through the annealed-mean
    decoding, and the rebalancing prior moves from uniform towards the colours it saw."""
    from selfsup.colour import rgb_to_lab

    red, blue = torch.zeros(3, 16, 16), torch.zeros(3, 16, 16)
    red[0], blue[2], blue[1] = 0.8, 1.0, 0.35
    x = torch.stack([red, blue] * 8)
    cfg = PretrainConfig(method="colorization", backbone_args={"width": 8})
    m = build_method(cfg, encoder_spec(cfg, 3, 16))
    opt = torch.optim.AdamW(m.parameters(), 3e-3)
    for _ in range(60):
        loss = m.loss([x])
        opt.zero_grad()
        loss.backward()
        opt.step()
    (caption, picture), = m.pictures((x[:2] * 255).round().to(torch.uint8).numpy()).items()
    tile = picture.shape[0] // 2 - 1
    made = torch.from_numpy(picture[2:2 + tile, 4 + tile:4 + 2 * tile]).permute(2, 0, 1)[None].float() / 255
    chroma = rgb_to_lab(made)[:, 1:].norm(dim=1).mean()
    assert chroma > 30, chroma  # red is about 70 from grey in ab
    assert m.prior.max() > 3 / len(m.prior)  # the prior left uniform for the colours it saw


def test_colorization_on_grey_is_inpainting(capsys):
    cfg = PretrainConfig(method="colorization", backbone_args={"width": 4})
    m = build_method(cfg, encoder_spec(cfg, 1, 12))
    assert m.variant == "inpainting" and "inpainting variant" in capsys.readouterr().err
    loss = m.loss([torch.rand(4, 1, 12, 12)])
    assert math.isfinite(loss.item()) and "hole_l1" in m.metrics
    hole = square_holes(torch.zeros(3, 1, 8, 8))
    assert hole.sum(dim=(1, 2, 3)).tolist() == [16.0, 16.0, 16.0]


# --- Learning: slow, one per method ---------------------------------------------------------------

LEARN = {  # a short run per method on digits that should clearly beat random-init features
    "simclr": dict(steps=200, batch_size=256, backbone_args={"width": 16}),
    "byol": dict(steps=200, batch_size=256, backbone_args={"width": 16}),
    "simsiam": dict(steps=200, batch_size=256, backbone_args={"width": 16}),
    "rotation": dict(steps=600, batch_size=128, lr=1e-3, backbone_args={"width": 32}),
    "colorization": dict(steps=600, batch_size=256, backbone_args={"width": 16}),  # inpainting on 1-channel digits
}


def test_every_method_has_a_learning_check():
    assert set(LEARN) == set(METHODS.names())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LEARN))
def test_method_beats_random_init_on_digits(name, digits, tmp_path):
    train, test = digits
    cfg = PretrainConfig(dataset="digits", method=name, out=str(tmp_path), **LEARN[name])
    random_init = random_encoder(encoder_spec(cfg, 1, 8), 0)
    before = few_label_rows(random_init, train, test, [10], "random", ("knn",), seeds=(0, 1, 2))
    encoder, _ = load_encoder(pretrain(cfg, train, show_progress=False))
    after = few_label_rows(encoder, train, test, [10], name, ("knn",), seeds=(0, 1, 2))
    gain = mean(r["accuracy"] for r in after) - mean(r["accuracy"] for r in before)
    assert gain > 0.04, (name, before, after)


def test_byol_asymmetric_views_are_the_papers_two():
    from selfsup.augment import preset

    base = preset("simclr", 3)
    cfg = PretrainConfig(method="byol", method_args={"asymmetric": True}, backbone_args={"width": 4})
    a, b = build_method(cfg, encoder_spec(cfg, 3, 16)).views(base)
    assert (a.blur_p, a.solarize_p, b.blur_p, b.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    symmetric = PretrainConfig(method="byol", backbone_args={"width": 4})
    assert build_method(symmetric, encoder_spec(symmetric, 3, 16)).views(base) == [base, base]
