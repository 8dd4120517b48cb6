"""MAE: Masked Autoencoders Are Scalable Vision Learners (He et al., CVPR 2022).

A ViT encoder sees only a random `1 - mask_ratio` of the patches (the masked ones are dropped before the first
block, not replaced); a light decoder gets the encoded visible tokens back in place, a shared mask token at every
hidden position and fixed position codes, and predicts each hidden patch's pixels. The loss is the mean squared
error on the hidden patches, each target patch normalised to zero mean and unit variance (`norm_pix`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders import WithInput
from ..errors import ConfigError
from ..losses import masked_patch_loss
from ..vit import ViT, Block, init_weights, sincos_table
from . import METHODS
from .base import MethodBase


def patchify(x: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, N, C * p * p) pixels per patch, padded at the right and bottom like ViT.embed."""
    x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
    return F.unfold(x.float(), kernel_size=p, stride=p).transpose(1, 2)


def random_masking(batch: int, n: int, keep: int, device, noise: Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """A uniformly random subset of `keep` of `n` patches per image: (kept indices (B, keep), restore order (B, n),
    mask (B, n) with 1 where hidden). Drawn from `generator` (the process's own stream in training)."""
    noise = torch.rand(batch, n, device=device, generator=generator) if noise is None else noise
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    mask = torch.ones(batch, n, device=device)
    mask[:, :keep] = 0
    return shuffle[:, :keep], restore, mask.gather(1, restore)


@METHODS.register("mae", "A ViT encodes the visible 25% of patches; a light decoder rebuilds the rest's pixels (MAE, "
                  "He et al. 2022)")
class MAE(MethodBase):
    cpu_settings = {"lr": 5e-4}  # 1e-3 collapsed its pooled tokens on digits (bench/README.md)
    n_views = 1
    default_augment = "crop"  # the paper: random resized crop and flip only

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.75, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_heads: int = 4, norm_pix: bool = True):
        super().__init__()
        vit = backbone.encoder if isinstance(backbone, WithInput) else backbone
        if not isinstance(vit, ViT):
            raise ConfigError("mae needs a Vision Transformer backbone; use --backbone vit_tiny (or vit_small)")
        if not 0 < mask_ratio < 1:
            raise ConfigError(f"mae: mask_ratio must be between 0 and 1, got {mask_ratio}")
        self.backbone = backbone
        self.mask_ratio, self.norm_pix = mask_ratio, norm_pix
        self.decoder_embed = nn.Linear(vit.out_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        table = torch.cat([torch.zeros(1, decoder_dim), sincos_table(vit.grid, decoder_dim)])  # the class token: 0
        self.register_buffer("decoder_pos", table[None], persistent=False)  # fixed codes, rebuilt from the config
        self.decoder = nn.Sequential(*[Block(decoder_dim, decoder_heads) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, vit.patch_size ** 2 * vit.in_channels)
        init_weights(nn.ModuleList([self.decoder_embed, self.decoder, self.decoder_norm, self.decoder_pred]))
        nn.init.normal_(self.mask_token, std=0.02)

    @property
    def vit(self) -> ViT:
        """The ViT inside the backbone (not a second registered submodule: the weights are saved once)."""
        return self.backbone.encoder if isinstance(self.backbone, WithInput) else self.backbone

    @classmethod
    def check_backbone(cls, name: str) -> None:
        if not name.startswith("vit"):
            raise ConfigError(f"mae needs a Vision Transformer backbone; use --backbone vit_tiny (or vit_small), not {name}")

    def no_weight_decay(self) -> set[str]:
        return {"mask_token"}

    def encode_visible(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Encode a random visible subset of each image's patches: (latent (B, 1 + keep, D), restore, mask)."""
        tokens = self.vit.embed(x)  # (B, N, D)
        b, n, d = tokens.shape
        keep = max(1, int(n * (1 - self.mask_ratio)))
        kept, restore, mask = random_masking(b, n, keep, x.device, noise, self.generator)
        visible = tokens.gather(1, kept[..., None].expand(-1, -1, d))  # hidden patches never reach a block
        return self.vit.encode(visible), restore, mask

    def decode(self, latent: Tensor, restore: Tensor) -> Tensor:
        """Encoded visible tokens -> predicted pixels for every patch (B, N, C * p * p)."""
        y = self.decoder_embed(latent)
        b, n = restore.shape
        hidden = self.mask_token.to(y.dtype).expand(b, n + 1 - y.shape[1], -1)
        patches = torch.cat([y[:, 1:], hidden], dim=1).gather(1, restore[..., None].expand(-1, -1, y.shape[-1]))
        if patches.shape[1] + 1 != self.decoder_pos.shape[1]:
            raise ConfigError(f"mae: images of {n} patches but the model was built for {self.decoder_pos.shape[1] - 1}; "
                              f"train at the --image-size the backbone was built for")
        y = torch.cat([y[:, :1], patches], dim=1) + self.decoder_pos.to(y.dtype)
        return self.decoder_pred(self.decoder_norm(self.decoder(y)))[:, 1:]

    def loss(self, views: list[Tensor]) -> Tensor:
        x = views[0]
        latent, restore, mask = self.encode_visible(x)
        self.last_embedding = latent[:, 1:].mean(dim=1).detach()  # the visible tokens, pooled
        return masked_patch_loss(self.decode(latent, restore), patchify(x, self.vit.patch_size), mask, self.norm_pix)
