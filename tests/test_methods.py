"""Every registered method: runs, saves its full state, and (slow) learns. Plus each method's defining property."""
import copy
import math
from statistics import mean

import numpy as np
import pytest
import torch
from conftest import smoke

from selfsup.backbones import BACKBONES
from selfsup.colour import Lightness, lab_to_rgb, rgb_to_lab
from selfsup.config import PretrainConfig
from selfsup.data import ImageSet, load
from selfsup.errors import ConfigError
from selfsup.evaluate import extract_features, few_label_rows
from selfsup.losses import byol_loss, negative_cosine
from selfsup.methods import METHODS
from selfsup.methods.byol import ema_update, tau_at
from selfsup.factory import WithInput, build_method, encoder_spec, encoder_and_config, random_encoder
from selfsup.methods.colorization import square_holes
from selfsup.methods.rotation import rotate_batch
from selfsup.train import pretrain


@pytest.fixture(scope="module")
def digits():
    return load("digits", "train"), load("digits", "test")


@pytest.mark.parametrize("name", METHODS.names())
def test_few_steps_on_digits_and_full_state_saved(name, digits, tmp_path):
    cfg = PretrainConfig(**{"dataset": "digits", "steps": 3, "batch_size": 32, "backbone_args": {"width": 8},
                            "out": str(tmp_path)} | smoke(name))
    path = pretrain(cfg, digits[0], show_progress=False)
    state = torch.load(path, weights_only=False)
    assert all(math.isfinite(h["loss"]) for h in state["run"]["history"] if "loss" in h) and "loss" in state["run"]["history"][-1]
    assert "embed_std_ratio" in state["run"]["history"][-1]  # every method feeds the collapse monitor
    fresh = build_method(cfg, encoder_spec(cfg, 1, 8))
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = fresh.backbone.eval()(x)
    fresh.load_state_dict(state["method"])  # strict: every buffer and submodule (e.g. BYOL's target) is there
    assert set(fresh.state_dict()) == set(state["method"])
    from selfsup import load_encoder

    with torch.no_grad():  # the trained encoder came back: the public loader's, not the fresh one's
        after, public = fresh.backbone.eval()(x), load_encoder(path)(x)
    assert torch.allclose(after, public, atol=1e-6) and not torch.allclose(before, after, atol=1e-6)


def test_methods_list_has_descriptions(capsys):
    from selfsup.cli import main

    main(["methods"])
    out = capsys.readouterr().out
    for name in METHODS.names():
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
    tau = float(m.target.tau)
    m.after_optimizer_step(0.5)
    for t0, o, t1 in zip(before, online, m.target.parameters()):
        assert torch.allclose(t1, tau * t0 + (1 - tau) * o)
    assert float(m.target.tau) == pytest.approx(tau_at(0.5, m.target.tau_base)) and int(m.target.steps) == 1


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


def test_simclr_decoupled_uses_the_decoupled_loss_and_takes_only_true_or_false():
    from selfsup.losses import nt_xent

    cfg = PretrainConfig(method="simclr", method_args={"decoupled": True}, backbone_args={"width": 4})
    m = build_method(cfg, encoder_spec(cfg, 3, 16)).eval()
    x = [torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    want = nt_xent(m.embed(x[0]), m.embed(x[1]), m.temperature, decoupled=True)
    assert math.isclose(m.loss(x).item(), want.item(), rel_tol=1e-5)
    assert not math.isclose(m.loss(x).item(), nt_xent(m.embed(x[0]), m.embed(x[1]), m.temperature).item())
    with pytest.raises(ConfigError, match="decoupled must be true or false, got 'maybe'"):
        build_method(cfg.override(method_args={"decoupled": "maybe"}), encoder_spec(cfg, 3, 16))


@pytest.mark.parametrize("method, switch", [("byol", "asymmetric"), ("mocov2", "symmetric")])
def test_a_method_switch_given_as_text_is_an_error_not_true(method, switch):
    cfg = PretrainConfig(method=method, method_args={switch: "no"}, backbone_args={"width": 4})
    with pytest.raises(ConfigError, match=f"{switch} must be true or false"):
        build_method(cfg, encoder_spec(cfg, 3, 16))
    build_method(cfg.override(method_args={switch: False}), encoder_spec(cfg, 3, 16))


@pytest.mark.parametrize("args, message", [({"method_args": {"temperature": "hot"}}, "temperature must be a number"),
                                            ({"backbone_args": {"width": "wide"}}, "width must be a number"),
                                            ({"method_args": {"temperature": True}}, "temperature must be a number")])
def test_a_number_given_as_text_is_a_one_line_error(args, message):
    cfg = PretrainConfig(method="simclr", **({"backbone_args": {"width": 4}} | args))
    with pytest.raises(ConfigError, match=message):
        build_method(cfg, encoder_spec(cfg, 3, 16))
    with pytest.raises(ConfigError, match=message):  # and before any data is read
        cfg.override(steps=1).validate()


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
    encoder, _ = encoder_and_config(tmp_path)
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
    "rotation": dict(steps=1000, batch_size=128, lr=1e-3, backbone_args={"width": 32}),  # 600: +0.039 on an AMD EPYC
    "colorization": dict(steps=600, batch_size=256, backbone_args={"width": 16}),  # inpainting on 1-channel digits
    "mocov2": dict(steps=200, batch_size=256, backbone_args={"width": 16}),
    "mocov3": dict(steps=200, batch_size=256, backbone_args={"width": 16}),
    "barlowtwins": dict(steps=200, batch_size=256, backbone_args={"width": 16}),
    "vicreg": dict(steps=200, batch_size=256, backbone_args={"width": 16}),
    "dino": dict(steps=200, batch_size=256, backbone_args={"width": 16}, method_args={"tau_base": 0.99}),  # faster teacher
}


# MAE's frozen features on 8 px digits do not beat a random ViT's within a test's budget (measured: kNN 0.40 against
# 0.44 after 600 steps, 0.56 against 0.76 on the full split after 300); MAE is a pretrainer for fine-tuning and
# for long runs (bench/README.md, "Every method for 5 minutes"). Its check here is that it learns its task.
LEARN_TASK = {"mae": dict(steps=300, batch_size=128, lr=5e-4, backbone="vit_tiny", backbone_args={"depth": 2})}


def test_every_method_has_a_learning_check():
    assert set(LEARN) | set(LEARN_TASK) == set(METHODS.names())


@pytest.mark.slow
def test_mae_learns_to_fill_in_hidden_patches(digits, tmp_path):
    """On test images with the same masks, the trained MAE's error on the hidden patches is well below the untrained
    model's and clearly below predicting each normalised patch's mean (0.75 for 4-pixel patches)."""
    train, test = digits
    cfg = PretrainConfig(dataset="digits", method="mae", out=str(tmp_path), **LEARN_TASK["mae"])
    torch.manual_seed(0)
    untrained = build_method(cfg, encoder_spec(cfg, 1, 8)).eval()
    state = torch.load(pretrain(cfg, train, show_progress=False), weights_only=False)
    trained = build_method(cfg, encoder_spec(cfg, 1, 8)).eval()
    trained.load_state_dict(state["method"])
    x = torch.from_numpy(test.images[:300]).float() / 255

    def hidden_error(m):
        torch.manual_seed(1)
        with torch.no_grad():
            return m.loss([x]).item()

    before, after = hidden_error(untrained), hidden_error(trained)
    assert after < 0.85 * before and after < 0.7, (before, after)  # measured: 0.634 -> 0.500


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LEARN))
def test_method_beats_random_init_on_digits(name, digits, tmp_path):
    train, test = digits
    cfg = PretrainConfig(dataset="digits", method=name, out=str(tmp_path), **LEARN[name])
    random_init = random_encoder(encoder_spec(cfg, 1, 8), 0)
    before = few_label_rows(random_init, train, test, [10], "random", ("knn",), seeds=(0, 1, 2))
    encoder, _ = encoder_and_config(pretrain(cfg, train, show_progress=False))
    after = few_label_rows(encoder, train, test, [10], name, ("knn",), seeds=(0, 1, 2))
    gain = mean(r["accuracy"] for r in after) - mean(r["accuracy"] for r in before)
    assert gain > 0.04, (name, gain, before, after)


def test_byol_asymmetric_views_are_the_papers_two():
    from selfsup.augment import preset

    base = preset("simclr", 3)
    cfg = PretrainConfig(method="byol", method_args={"asymmetric": True}, backbone_args={"width": 4})
    a, b = build_method(cfg, encoder_spec(cfg, 3, 16)).views(base)
    assert (a.blur_p, a.solarize_p, b.blur_p, b.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    symmetric = PretrainConfig(method="byol", backbone_args={"width": 4})
    assert build_method(symmetric, encoder_spec(symmetric, 3, 16)).views(base) == [base, base]


# --- ViT ---------------------------------------------------------------------------------------------------------

def test_vit_backbone_contract_and_no_decay_on_positions():
    for name in ("vit_tiny", "vit_small"):
        vit = BACKBONES.build(name, in_channels=3, image_size=32, depth=1)
        assert vit.patch_size == 4 and vit.pos_embed.shape[1] == 64
        x = torch.rand(2, 3, 32, 32)
        assert vit.forward_features(x).shape == (2, 65, vit.out_dim) and vit(x).shape == (2, vit.out_dim)
        assert vit(torch.rand(2, 3, 13, 13)).shape == (2, vit.out_dim)  # a smaller crop: positions resampled
        assert vit.first_conv() is vit.patch_embed
    assert BACKBONES.build("vit_tiny", in_channels=3, image_size=96).patch_size == 8
    assert BACKBONES.build("vit_tiny", in_channels=1, image_size=28).grid == 7
    mean = BACKBONES.build("vit_tiny", in_channels=1, image_size=8, depth=1, pool="mean")
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(mean(x), mean.forward_features(x)[:, 1:].mean(1))  # 16 patch tokens, class token left out
    for method in ("simclr", "dino"):  # every parameter decays but norms, biases, positions and the class token
        cfg = PretrainConfig(method=method, backbone="vit_tiny", backbone_args={"depth": 1})
        m = build_method(cfg, encoder_spec(cfg, 3, 32))
        no_decay = {id(p) for g in m.param_groups(0.05) if g["weight_decay"] == 0 for p in g["params"]}
        names = {n for n, p in m.named_parameters() if id(p) in no_decay}
        assert {"backbone.pos_embed", "backbone.cls_token"} <= names
        assert "backbone.patch_embed.weight" not in names and "backbone.blocks.0.attn.qkv.weight" not in names


def test_every_method_trains_a_vit_and_mae_nothing_else():
    from selfsup.augment import augment, preset

    for name in METHODS.names():  # colorization decodes the patch tokens laid back on their grid
        cfg = PretrainConfig(method=name, backbone="vit_tiny", backbone_args={"depth": 1})
        m = build_method(cfg, encoder_spec(cfg, 3, 16))
        loss = m.loss([augment(torch.rand(4, 3, 16, 16), v) for v in m.views(preset("simclr", 3))])
        loss.backward()
        assert math.isfinite(loss.item()) and m.backbone.first_conv().weight.grad is not None, name
    with pytest.raises(ConfigError, match="mae needs a Vision Transformer"):
        PretrainConfig(method="mae", backbone="resnet18", steps=1).validate()


# --- MAE ---------------------------------------------------------------------------------------------------------

def test_mae_encoder_never_sees_a_masked_patch():
    from selfsup.methods.mae import patchify

    cfg = PretrainConfig(method="mae", backbone="vit_tiny", backbone_args={"depth": 2})
    m = build_method(cfg, encoder_spec(cfg, 1, 16)).eval()  # 2 px patches: 8 x 8 = 64, 16 visible
    seen = []
    m.vit.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    x, noise = torch.rand(3, 1, 16, 16), torch.rand(3, 64)
    latent, restore, mask = m.encode_visible(x, noise)
    assert seen == [1 + 16] and mask.sum(1).tolist() == [48.0, 48.0, 48.0]
    hidden = mask.reshape(3, 8, 8).repeat_interleave(2, 1).repeat_interleave(2, 2)[:, None].bool()  # pixels of hidden patches
    scrambled = torch.where(hidden, torch.rand_like(x), x)
    torch.testing.assert_close(m.encode_visible(scrambled, noise)[0], latent)  # nothing hidden reached the encoder
    visible_changed = torch.where(hidden, x, torch.rand_like(x))
    assert not torch.allclose(m.encode_visible(visible_changed, noise)[0], latent)
    assert patchify(x, 2).shape == (3, 64, 4) and torch.equal(patchify(x, 2)[0, 0], x[0, 0, :2, :2].flatten())
    loss = m.loss([x])
    loss.backward()
    assert math.isfinite(loss.item()) and m.vit.patch_embed.weight.grad is not None


# --- MoCo --------------------------------------------------------------------------------------------------------

def test_moco_key_encoder_gets_no_gradient_and_the_queue_turns():
    cfg = PretrainConfig(method="mocov2", backbone_args={"width": 4}, method_args={"queue_size": 10, "proj_dim": 8})
    m = build_method(cfg, encoder_spec(cfg, 1, 8))
    before = m.queue.clone()
    x = torch.rand(4, 1, 8, 8)
    loss = m.loss([x, x.flip(-1)])
    loss.backward()
    assert all(p.grad is None for p in m.key_encoder.parameters()) and torch.equal(m.queue, before)
    m.after_optimizer_step(0.1)  # 2 directions x 4 keys written after the step
    assert int(m.queue_ptr) == 8 and torch.equal(m.queue[8:], before[8:]) and not torch.equal(m.queue[:8], before[:8])
    torch.testing.assert_close(m.queue[:8].norm(dim=1), torch.ones(8))
    m.loss([x, x])
    m.after_optimizer_step(0.2)
    assert int(m.queue_ptr) == 6  # wrapped around: rows 8, 9, then 0..5


def test_mocov3_momentum_follows_the_cosine_schedule():
    cfg = PretrainConfig(method="mocov3", backbone_args={"width": 4}, method_args={"tau_base": 0.9})
    m = build_method(cfg, encoder_spec(cfg, 1, 8))
    m.after_optimizer_step(0.5)
    assert float(m.key_encoder.tau) == pytest.approx(tau_at(0.5, 0.9)) and float(m.key_encoder.tau) == pytest.approx(0.95)


# --- DINO --------------------------------------------------------------------------------------------------------

def test_dino_hooks_freeze_the_last_layer_clip_and_warm_the_teacher_temperature():
    from selfsup.optim import clip_gradients

    cfg = PretrainConfig(method="dino", backbone_args={"width": 4},
                         method_args={"out_dim": 16, "hidden": 16, "bottleneck": 8, "local_crops": 2, "clip_grad": 0.5,
                                      "teacher_temp_start": 0.04, "teacher_temp": 0.07, "teacher_temp_warmup": 0.5})
    m = build_method(cfg, encoder_spec(cfg, 1, 16))
    m.steps_per_epoch = 2  # the loop sets this; the last layer stays frozen for the first epoch (2 steps)
    from selfsup.augment import augment, preset

    views = m.views(preset("simclr", 1))
    assert [v.size for v in views][2:] == [8, 8] and views[0].crop_scale[0] >= 0.4  # 2 global, 2 local crops
    x = torch.rand(6, 1, 16, 16)
    for step in range(3):
        m.zero_grad()
        loss = m.loss([augment(x, v) for v in views])
        loss.backward()
        clip_gradients(m.parameters(), m.clip_grad, m.clip_per_parameter)  # as the loop does
        m.before_optimizer_step(step / 4)
        frozen = m.head.last.weight.grad is None
        assert frozen == (step < 2), step
        assert m.clip_per_parameter  # the paper's code clips each parameter's gradient norm
        assert max(float(p.grad.norm()) for p in m.parameters() if p.grad is not None) <= 0.5 + 1e-4
        assert all(p.grad is None for p in m.teacher.parameters())
        m.after_optimizer_step((step + 1) / 4)
    assert float(m.temp) == pytest.approx(0.07)  # warmed up by half the budget
    assert m.teacher_temp(0.25) == pytest.approx(0.055)
    assert not torch.equal(m.center, torch.zeros(16))
    default = PretrainConfig(method="dino", backbone_args={"width": 4})
    assert [build_method(default, encoder_spec(default, 3, side)).n_views for side in (28, 96)] == [2, 6]


# --- The collapse monitor ------------------------------------------------------------------------------------------

def test_collapse_monitor_warns_when_vicreg_loses_its_variance_term(digits, tmp_path, capsys):
    """With the variance term off, VICReg's loss is met by a constant embedding: the run collapses (std ratio 0.05 at
    the end when measured) and the monitor must say so; with the term on, the same run does not (0.99)."""
    base = dict(dataset="digits", method="vicreg", steps=300, batch_size=128, lr=2e-2, monitor_seconds=0,
                backbone_args={"width": 8})
    off = PretrainConfig(**base, method_args={"variance_weight": 0.0, "proj_hidden": 128, "proj_dim": 128},
                         out=str(tmp_path / "off"))
    pretrain(off, digits[0], show_progress=False)
    assert "embeddings have collapsed" in capsys.readouterr().err
    on = PretrainConfig(**base, method_args={"proj_hidden": 128, "proj_dim": 128}, out=str(tmp_path / "on"))
    pretrain(on, digits[0], show_progress=False)
    assert "collapsed" not in capsys.readouterr().err


@pytest.mark.parametrize("name, backbone", [("mae", "vit_tiny"), ("colorization", "small_cnn")])
def test_masks_come_from_the_process_stream(name, backbone, tmp_path):
    """MAE's masks and colorization's holes (its inpainting task on grey images) are drawn from the generator the loop gives each process (seeded by its
    rank), not from the global stream, which is seeded alike on every process: two processes would otherwise hide
    the same patches of their different images at every step."""
    from selfsup.data import load
    from selfsup.train import pretrain

    cfg = PretrainConfig(method=name, backbone=backbone, backbone_args={"depth": 1} if name == "mae" else {"width": 4})
    channels = 3 if name == "mae" else 1
    m = build_method(cfg, encoder_spec(cfg, channels, 16)).eval()
    x = torch.rand(4, channels, 16, 16, generator=torch.Generator().manual_seed(0))

    def loss(rank_seed):
        m.generator = torch.Generator().manual_seed(rank_seed)
        torch.manual_seed(0)  # the global stream, alike on every process
        with torch.no_grad():
            return float(m.loss([x] * m.n_views))

    assert loss(1) == loss(1) and loss(1) != loss(2)
    run = PretrainConfig(dataset="digits", method=name, backbone=backbone, steps=1, batch_size=16, monitor_seconds=0,
                         out=str(tmp_path), **({"backbone_args": {"depth": 1}} if name == "mae" else {}))
    from selfsup import train

    seen = {}
    real = train.build

    def build(*a, **k):
        seen["parts"] = real(*a, **k)
        return seen["parts"]

    train.build = build
    try:
        pretrain(run, load("digits", "train"), show_progress=False)
    finally:
        train.build = real
    assert seen["parts"].method.generator is seen["parts"].streams.generator


def test_a_checkpoint_from_before_the_follower_module_loads():
    """Checkpoints written while tau and the step count lived on the method (keys `tau`, `ema_steps`) load into the
    EMA follower, which now owns them; the follower's weights kept their keys."""
    m = METHODS.build("byol", BACKBONES.build("small_cnn", in_channels=1, width=4), proj_hidden=16, proj_dim=8,
                      pred_hidden=16)
    state = m.state_dict()
    old = {k: v for k, v in state.items() if k not in ("target.tau", "target.steps")}
    old |= {"tau": torch.tensor(0.997, dtype=torch.float64), "ema_steps": torch.tensor(42)}
    fresh = METHODS.build("byol", BACKBONES.build("small_cnn", in_channels=1, width=4), proj_hidden=16, proj_dim=8,
                          pred_hidden=16)
    fresh.load_state_dict(old)
    assert float(fresh.target.tau) == pytest.approx(0.997) and int(fresh.target.steps) == 42
    assert fresh.target.steps_seen == 42


def test_multicrop_runs_one_forward_per_crop_size():
    """DINO's student sees 2 global and 4 local crops in 2 forwards (one per size, as its code does), not 6; the
    outputs are those of each crop on its own where BatchNorm uses running statistics."""
    from selfsup.methods.base import by_size

    calls = []

    def f(x):
        calls.append(x.shape[0])
        return x.flatten(1).sum(1, keepdim=True)

    views = [torch.rand(3, 1, 8, 8)] * 2 + [torch.rand(3, 1, 4, 4)] * 4
    out = by_size(f, views)
    assert calls == [6, 12] and len(out) == 6
    assert all(torch.allclose(o, v.flatten(1).sum(1, keepdim=True)) for o, v in zip(out, views))
    cfg = PretrainConfig(method="dino", backbone_args={"width": 4},
                         method_args={"out_dim": 16, "hidden": 16, "bottleneck": 8, "local_crops": 4})
    m = build_method(cfg, encoder_spec(cfg, 1, 16)).eval()
    seen = []
    m.backbone.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    from selfsup.augment import augment, preset

    with torch.no_grad():
        m.loss([augment(torch.rand(5, 1, 16, 16), v) for v in m.views(preset("simclr", 1))])
    assert seen == [10, 20]


def test_dino_offers_the_papers_head_and_global_crops():
    """The paper's head is GELU between its layers, and its two global crops differ: one always blurred, the other
    rarely blurred and sometimes solarized (`asymmetric`); the GPU recipes take both."""
    from selfsup.augment import preset
    from selfsup.papers import PAPERS

    cfg = PretrainConfig(method="dino", backbone_args={"width": 4},
                         method_args={"out_dim": 16, "hidden": 16, "bottleneck": 8, "local_crops": 2,
                                      "head_activation": "gelu", "asymmetric": True})
    m = build_method(cfg, encoder_spec(cfg, 3, 16))
    assert any(isinstance(layer, torch.nn.GELU) for layer in m.head.mlp)
    assert not any(isinstance(layer, torch.nn.ReLU) for layer in m.head.mlp)
    g1, g2, *local = m.views(preset("simclr", 3))
    assert (g1.blur_p, g1.solarize_p, g2.blur_p, g2.solarize_p) == (1.0, 0.0, 0.1, 0.2) and len(local) == 2
    assert PAPERS["dino"].method_args["head_activation"] == "gelu" and PAPERS["dino"].weight_decay_end == 0.4
