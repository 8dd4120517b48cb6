import pytest
import torch

from selfsup.backbones import BACKBONES
from selfsup.errors import ConfigError


@pytest.mark.parametrize("name", BACKBONES.names())
@pytest.mark.parametrize("channels", [1, 3])
def test_output_dim_and_channels(name, channels):
    net = BACKBONES.build(name, in_channels=channels)
    out = net(torch.rand(2, channels, 32, 32))
    assert out.shape == (2, net.out_dim)
    assert net.first_conv().in_channels == channels


def test_resnet_sizes_and_stems():
    r18 = BACKBONES.build("resnet18", in_channels=3)
    assert r18.out_dim == 512 and 11.1e6 < sum(p.numel() for p in r18.parameters()) < 11.2e6
    assert BACKBONES.build("resnet50", in_channels=3).out_dim == 2048
    imagenet = BACKBONES.build("resnet18", in_channels=3, stem="imagenet")
    assert imagenet(torch.rand(1, 3, 64, 64)).shape == (1, 512)
    with pytest.raises(ConfigError, match="stem"):
        BACKBONES.build("resnet18", stem="huge")


def test_unknown_backbone_lists_names():
    with pytest.raises(ConfigError, match="resnet18, resnet50, small_cnn"):
        BACKBONES.build("vit")


def test_the_resnet_stem_follows_the_image_size_unless_given():
    """At 224 px the ImageNet stem (7x7/2 and a max-pool) brings stage 1 to 56 x 56, as the papers train; the small
    stem (CIFAR's) keeps 32 px images whole. An explicit stem wins."""
    from selfsup.config import PretrainConfig
    from selfsup.encoders import build_encoder
    from selfsup.factory import encoder_spec

    def stage1_side(cfg, side):
        enc = build_encoder(encoder_spec(cfg, 3, side))
        return enc.stem(torch.zeros(1, 3, side, side)).shape[-1]

    r50 = PretrainConfig(backbone="resnet50", backbone_args={"width": 8})
    assert encoder_spec(r50, 3, 224).backbone_args["stem"] == "imagenet" and stage1_side(r50, 224) == 56
    assert encoder_spec(r50, 3, 32).backbone_args["stem"] == "small" and stage1_side(r50, 32) == 32
    given = PretrainConfig(backbone="resnet18", backbone_args={"width": 8, "stem": "small"})
    assert stage1_side(given, 224) == 224


def test_the_precision_probe_never_runs_more_images_than_the_step():
    """The probe that decides bf16 on a CPU times the encoder on at most the run's own batch: a probe must never need
    more memory than the training step it measures (ResNet-50 at 224 px with --batch-size 4)."""
    from selfsup.engine import probe_seconds
    from selfsup.encoders import EncoderSpec

    t = probe_seconds(EncoderSpec("small_cnn", {"width": 4}, 1, 8), batch=4, rounds=1)
    assert t["batch"] <= 4


def correlated_images(n=400, side=16, seed=0):
    """Colour images with strongly correlated neighbouring pixels and channels (blurred noise, shared grey)."""
    g = torch.Generator().manual_seed(seed)
    grey = torch.nn.functional.avg_pool2d(torch.rand(n, 1, side, side, generator=g), 3, 1, 1)
    return (0.7 * grey + 0.3 * torch.rand(n, 3, side, side, generator=g)).clamp(0, 1)


def test_the_whitening_layer_whitens_patches():
    """After fitting, the layer's first 12 outputs over the 2x2 patches of the images have zero mean and identity
    covariance (the definition of whitening, written from the covariance, not the layer's code); the other 12 are
    their negatives. Before fitting they are the patch pixels themselves."""
    from selfsup.backbones import Whiten

    x = correlated_images()
    layer = Whiten(3, k=2, eps=1e-9)
    raw = layer(x)
    assert torch.allclose(raw[:, [0, 4, 8]], x[:, :, :-1, :-1], atol=1e-6)  # unfitted: each channel's top-left pixel
    patches = torch.nn.functional.unfold(x, 2).transpose(1, 2).reshape(-1, 12)
    assert torch.cov(patches.T).abs().min() > 1e-3  # the input is far from white
    layer.fit(x)
    y = layer(x)
    feats = y[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    assert feats.mean(0).abs().max() < 1e-3
    assert torch.allclose(torch.cov(feats.T), torch.eye(12, dtype=torch.float64), atol=2e-3)
    assert torch.equal(y[:, 12:], -y[:, :12])


def test_whiten_cnn_fits_from_data_the_same_way_everywhere():
    """fit_to_data draws a fixed sample, so two processes (two calls) fit the same layer; an EMA follower's copy
    (BYOL's target) takes the online encoder's fit; the fit is saved with the weights and no optimizer holds it."""
    from selfsup.backbones import Whiten, fit_to_data
    from selfsup.config import PretrainConfig
    from selfsup.factory import build_method, encoder_spec

    images = (correlated_images(300) * 255).to(torch.uint8)
    cfg = PretrainConfig(dataset="digits", method="byol", backbone="whiten_cnn", backbone_args={"width": 8})
    a, b = (build_method(cfg, encoder_spec(cfg, 3, 16)) for _ in range(2))
    fit_to_data(a, images), fit_to_data(b, images)
    wa = [m for m in a.modules() if isinstance(m, Whiten)]
    assert len(wa) == 2 and all(bool(m.fitted) for m in wa)  # the online encoder's and the target's
    assert torch.equal(wa[0].weight, wa[1].weight)
    assert torch.equal(wa[0].weight, next(m for m in b.modules() if isinstance(m, Whiten)).weight)
    assert "backbone.stem.0.weight" in a.state_dict()
    trained = {id(p) for g in a.param_groups(0.1) for p in g["params"]}
    assert id(wa[0].weight) not in trained


def test_identity_initialised_convolutions_pass_their_input_through():
    from selfsup.backbones import conv_identity

    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(conv_identity(4, 6)(x)[:, :4], x, atol=1e-6)
    assert torch.allclose(conv_identity(4, 4)(x), x, atol=1e-6)


def test_whiten_cnn_last_sets_the_last_block_and_the_feature_size_alone():
    from selfsup.backbones import whiten_cnn

    plain, wide = whiten_cnn(3, width=8), whiten_cnn(3, width=8, last=24)
    x = torch.rand(2, 3, 16, 16)
    assert plain.out_dim == 32 and plain(x).shape == (2, 32)
    assert wide.out_dim == 24 and wide(x).shape == (2, 24)
    assert [p.shape for p in plain.body[:2].parameters()] == [p.shape for p in wide.body[:2].parameters()]
