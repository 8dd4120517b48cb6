"""Encoders that map images (B, C, H, W) to pooled features (B, out_dim).

Every backbone in `BACKBONES` is built as `builder(in_channels=..., image_size=..., **backbone_args)` and keeps
the `Backbone` contract, so methods, evaluation and export can use any of them.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor, nn

from .registry import Registry

BACKBONES: Registry = Registry("backbone")


@runtime_checkable
class Backbone(Protocol):
    """What every backbone offers."""

    out_dim: int  # size of the pooled feature vector
    in_channels: int  # channels of the images it takes
    image_size: int | None  # the side it was built (and trained) for; evaluation resizes to it

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> the last feature map (B, out_dim, h, w) (tokens for a ViT)."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> pooled features (B, out_dim)."""

    def first_conv(self) -> nn.Module:
        """The layer that sees pixels first (its filters are drawn in the report)."""


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


class Encoder(nn.Module):
    """A feature extractor: `stem`, `body`, global average pool. `out_dim` is the feature size."""

    def __init__(self, stem: nn.Module, body: nn.Module, out_dim: int, in_channels: int, image_size: int | None = None):
        super().__init__()
        self.stem, self.body = stem, body
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim, self.in_channels, self.image_size = out_dim, in_channels, image_size

    def forward_features(self, x: Tensor) -> Tensor:
        return self.body(self.stem(x))  # (B, out_dim, h, w)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.forward_features(x))  # (B, out_dim)

    def first_conv(self) -> nn.Conv2d:
        return next(m for m in self.modules() if isinstance(m, nn.Conv2d))


@BACKBONES.register("small_cnn", "4 conv layers (width, 2w, 4w, 8w), stride 2 from the second; 256-d for width 32")
def small_cnn(in_channels: int = 1, width: int = 32, image_size: int | None = None) -> Encoder:
    w = width
    body = nn.Sequential(conv_bn(w, 2 * w, stride=2), conv_bn(2 * w, 4 * w, stride=2), conv_bn(4 * w, 8 * w, stride=2))
    return Encoder(conv_bn(in_channels, w), body, 8 * w, in_channels, image_size)


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.f = nn.Sequential(conv_bn(cin, width, 3, stride), conv_bn(width, cout, 3, relu=False))
        self.skip = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, relu=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.f(x) + self.skip(x)).relu_()


class Bottleneck(Basic):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__(cin, width, stride)
        self.f = nn.Sequential(conv_bn(cin, width, 1), conv_bn(width, width, 3, stride),
                               conv_bn(width, width * 4, 1, relu=False))


SMALL_STEM_MAX_SIDE = 96  # px: the small stem up to here (CIFAR, STL-10), the ImageNet stem above (224 px photos)


def sized_args(name: str, args: dict, side: int | None) -> dict:
    """A backbone's arguments with those that follow from the image side filled in where not given: a ResNet's
    stem. The small stem keeps full resolution into stage 1; at 224 px that is 16 times the FLOPs and activation
    memory of the ImageNet stem, which the papers use at that size."""
    if name.startswith("resnet") and "stem" not in args:
        return args | {"stem": "small" if not side or side <= SMALL_STEM_MAX_SIDE else "imagenet"}
    return args


def resnet(block: type[Basic], depths: tuple[int, ...], in_channels: int, stem: str, width: int,
           image_size: int | None = None) -> Encoder:
    """ResNet (He et al. 2016). stem='small': 3x3 conv, no max-pool (for 32-96 px); 'imagenet': 7x7/2 conv + max-pool."""
    if stem == "small":
        first = conv_bn(in_channels, width, 3)
    elif stem == "imagenet":
        first = nn.Sequential(conv_bn(in_channels, width, 7, 2), nn.MaxPool2d(3, 2, 1))
    else:
        from .errors import ConfigError
        raise ConfigError(f"unknown stem {stem!r}; choose 'small' or 'imagenet'")
    stages, cin = [], width
    for i, n in enumerate(depths):
        w = width * 2 ** i
        for j in range(n):
            stages.append(block(cin, w, 2 if (j == 0 and i > 0) else 1))
            cin = w * block.expansion
    return Encoder(first, nn.Sequential(*stages), cin, in_channels, image_size)


@BACKBONES.register("resnet18", "ResNet-18, 512-d; stem='small' (3x3, up to 96 px) or 'imagenet' (7x7/2 + max-pool, "
                    "larger images): chosen from the image side unless given")
def resnet18(in_channels: int = 3, stem: str = "small", width: int = 64, image_size: int | None = None) -> Encoder:
    return resnet(Basic, (2, 2, 2, 2), in_channels, stem, width, image_size)


@BACKBONES.register("resnet50", "ResNet-50 (bottlenecks), 2048-d; stem='small' (up to 96 px) or 'imagenet' (larger "
                    "images): chosen from the image side unless given")
def resnet50(in_channels: int = 3, stem: str = "small", width: int = 64, image_size: int | None = None) -> Encoder:
    return resnet(Bottleneck, (3, 4, 6, 3), in_channels, stem, width, image_size)


@BACKBONES.register("vit_tiny", "ViT-Tiny: width 192, 12 blocks, 3 heads; patch 2/4/8 px for <=16/<=64/larger images")
def vit_tiny(in_channels: int = 3, image_size: int | None = None, patch_size: int | None = None, depth: int = 12,
             pool: str = "cls") -> nn.Module:
    from .vit import ViT

    return ViT(in_channels, image_size, patch_size, 192, depth, 3, pool=pool)


@BACKBONES.register("vit_small", "ViT-Small: width 384, 12 blocks, 6 heads; patch 2/4/8 px for <=16/<=64/larger images")
def vit_small(in_channels: int = 3, image_size: int | None = None, patch_size: int | None = None, depth: int = 12,
              pool: str = "cls") -> nn.Module:
    from .vit import ViT

    return ViT(in_channels, image_size, patch_size, 384, depth, 6, pool=pool)
