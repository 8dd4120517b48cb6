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
