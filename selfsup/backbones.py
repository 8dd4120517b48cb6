"""Encoders that map images (B, C, H, W) to pooled features (B, out_dim).

Every backbone in `BACKBONES` is built as `builder(in_channels=..., image_size=..., **backbone_args)` and keeps
the `Backbone` contract, so methods, evaluation and export can use any of them.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
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

    def first_conv(self) -> nn.Module:
        return next(m for m in self.modules() if isinstance(m, (nn.Conv2d, Whiten)))


@BACKBONES.register("small_cnn", "4 conv layers (width, 2w, 4w, 8w), stride 2 from the second; 256-d for width 32")
def small_cnn(in_channels: int = 1, width: int = 32, image_size: int | None = None) -> Encoder:
    w = width
    body = nn.Sequential(conv_bn(w, 2 * w, stride=2), conv_bn(2 * w, 4 * w, stride=2), conv_bn(4 * w, 8 * w, stride=2))
    return Encoder(conv_bn(in_channels, w), body, 8 * w, in_channels, image_size)


class Whiten(nn.Module):
    """A frozen first layer that whitens k x k patches: conv filters W = L^-1/2 V^T from the eigendecomposition
    V L V^T of the patch covariance of the training images (and their negatives, so a ReLU-like activation keeps
    both signs), with bias -W mean. Fitted from data by `fit` before training (`fit_to_data`); saved as buffers."""

    def __init__(self, in_channels: int, k: int = 2, eps: float = 5e-4):
        super().__init__()
        d = in_channels * k * k
        self.k, self.eps, self.in_channels, self.out_channels = k, eps, in_channels, 2 * d
        eye = torch.eye(d)  # until fitted: each patch pixel and its negative
        self.register_buffer("weight", torch.cat([eye, -eye]).view(2 * d, in_channels, k, k))
        self.register_buffer("bias", torch.zeros(2 * d))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """x: float images (N, C, H, W) in [0, 1] as the encoder sees them."""
        patches = F.unfold(x.float(), self.k).transpose(1, 2).reshape(-1, self.weight.shape[1] * self.k ** 2)
        mean = patches.mean(0)
        centred = patches - mean
        cov = centred.T.double() @ centred.double() / max(1, len(patches) - 1)
        eig, vec = torch.linalg.eigh(cov)
        w = (vec / (eig.clamp(min=0) + self.eps).sqrt()).T.float()  # (d, d): rows are whitening filters
        w = torch.cat([w, -w])
        self.weight.copy_(w.view_as(self.weight))
        self.bias.copy_(-(w @ mean))
        self.fitted.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))


class _Fitted(Exception):
    """Raised by the fitting hook: nothing after the fitted layer needs to run."""


def fit_to_data(model: nn.Module, images, n: int = 2048, seed: int = 0) -> nn.Module:
    """Fit the data-dependent layer of `model` (a `Whiten`) from up to `n` of `images` (uint8 or float
    (N, C, H, W)) at the encoder's side (at most 2^25 pixel values), drawn by a fixed seed so that every process
    fits the same. It fits from what reaches it in a forward of the encoder (after a method's input transform); copies of
    the encoder in the model (an EMA follower's) take the same fit."""
    layers = [m for m in model.modules() if isinstance(m, Whiten)]
    if not layers:
        return model
    encoder = getattr(model, "backbone", model)
    side = getattr(encoder, "image_size", None) or images.shape[-1]
    n = max(16, min(n, len(images), 2 ** 25 // (images.shape[1] * side * side)))
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    x = torch.as_tensor(images[idx.numpy()]) if not torch.is_tensor(images) else images[idx]
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    if x.shape[-1] != side or x.shape[-2] != side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)

    def fit(layer, args):
        layer.fit(args[0])
        raise _Fitted

    first = next(m for m in encoder.modules() if isinstance(m, Whiten))
    hook = first.register_forward_pre_hook(fit)
    try:
        with torch.no_grad():
            encoder(x.to(next(encoder.buffers()).device))
    except _Fitted:
        pass
    finally:
        hook.remove()
    for copy in (m for m in layers if m is not first):
        copy.load_state_dict(first.state_dict())
    return model


def conv_identity(cin: int, cout: int) -> nn.Conv2d:
    """3x3 conv whose first min(cin, cout) filters start as the identity (the rest at the default init)."""
    conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:min(cin, cout)])
    return conv


def conv_pool_block(cin: int, cout: int) -> nn.Sequential:
    """conv - max-pool 2 - BN - GELU - conv - BN - GELU, as the fastest CIFAR-10 trainers stack them."""
    return nn.Sequential(conv_identity(cin, cout), nn.MaxPool2d(2), nn.BatchNorm2d(cout), nn.GELU(),
                         conv_identity(cout, cout), nn.BatchNorm2d(cout), nn.GELU())


@BACKBONES.register("whiten_cnn", "frozen patch-whitening layer fitted from the data, then three conv-pool-BN blocks "
                    "(widths w, 2w and `last`, 4w unless set; identity-initialised convs); `last`-d, 256-d for width 64")
def whiten_cnn(in_channels: int = 3, width: int = 64, image_size: int | None = None, last: int | None = None) -> Encoder:
    whiten = Whiten(in_channels)
    w, last = width, last or 4 * width
    stem = nn.Sequential(whiten, nn.GELU())
    body = nn.Sequential(conv_pool_block(whiten.out_channels, w), conv_pool_block(w, 2 * w),
                         conv_pool_block(2 * w, last))
    return Encoder(stem, body, last, in_channels, image_size)


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
