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
