"""A Vision Transformer (Dosovitskiy et al., ICLR 2021) sized for small images, on the backbone contract.

Images are cut into `patch_size` squares (padded at the right and bottom to a whole number of patches), each
embedded linearly, plus a learned position embedding (truncated normal, std 0.02, as DeiT and DINO: a
sine-cosine table of amplitude 1 would drown a random network's content, and bf16 evaluation would lose it) that
is resampled when a crop of another size comes in (DINO's local crops). A class token goes first; `forward` pools
by that token (`pool="cls"`) or by the mean of the patch tokens (`pool="mean"`). MAE uses `embed`, `cls`
and `encode` to run the encoder on the visible patches only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError


def sincos_table(grid: int, dim: int) -> Tensor:
    """(grid * grid, dim) 2-D sine-cosine position codes: half the channels code the row, half the column."""
    if dim % 4:
        raise ConfigError(f"the width must be a multiple of 4 for 2-D position codes, got {dim}")
    freq = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    pos = torch.arange(grid, dtype=torch.float64)[:, None] * freq[None]  # (grid, dim/4)
    row = torch.cat([pos.sin(), pos.cos()], 1)[:, None].expand(grid, grid, dim // 2)
    col = torch.cat([pos.sin(), pos.cos()], 1)[None].expand(grid, grid, dim // 2)
    return torch.cat([row, col], 2).reshape(grid * grid, dim).float()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"vit: width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, N, d/H)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_weights(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) linear weights, zero biases, unit LayerNorm (the ViT/DeiT/MAE initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def default_patch(image_size: int) -> int:
    """2 px for tiny images (8 px digits), 4 px up to 64 px (7x7 tokens at 28 px, 8x8 at 32), 8 px above (12x12 at 96)."""
    return 2 if image_size <= 16 else 4 if image_size <= 64 else 8


class ViT(nn.Module):
    def __init__(self, in_channels: int, image_size: int | None, patch_size: int | None = None, dim: int = 192,
                 depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0, pool: str = "cls"):
        super().__init__()
        image_size = image_size or 32  # the position table's side; other sizes are resampled
        if pool not in ("cls", "mean"):
            raise ConfigError(f"vit: pool must be 'cls' or 'mean', got {pool!r}")
        self.patch_size = int(patch_size or default_patch(image_size))
        self.grid = math.ceil(image_size / self.patch_size)
        self.out_dim, self.in_channels, self.image_size, self.pool = dim, in_channels, image_size, pool
        self.patch_embed = nn.Conv2d(in_channels, dim, self.patch_size, self.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** 2, dim))  # (1, grid * grid, dim)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        init_weights(self)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # the patch embedding as a linear layer (MAE)
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def positions(self, gh: int, gw: int) -> Tensor:
        """The position embedding for a gh x gw grid of patches: the table itself, or resampled (bicubic)."""
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed
        table = self.pos_embed.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(gh, gw), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> patch tokens with their positions (B, N, dim), no class token."""
        p = self.patch_size
        pad_h, pad_w = -x.shape[-2] % p, -x.shape[-1] % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        t = self.patch_embed(x)  # (B, dim, gh, gw)
        gh, gw = t.shape[-2:]
        return t.flatten(2).transpose(1, 2) + self.positions(gh, gw)

    def encode(self, patches: Tensor) -> Tensor:
        """Patch tokens (B, n, dim), all or a subset -> the class token prepended, the blocks, the final norm."""
        cls = self.cls_token.expand(patches.shape[0], -1, -1).to(patches.dtype)
        return self.norm(self.blocks(torch.cat([cls, patches], dim=1)))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.encode(self.embed(x))  # (B, 1 + N, dim): the class token first

    def feature_map(self, x: Tensor) -> Tensor:
        """The patch tokens laid back on their grid, (B, dim, gh, gw), for heads that decode a map (colorization)."""
        gh, gw = (math.ceil(s / self.patch_size) for s in x.shape[-2:])
        return self.forward_features(x)[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, gh, gw)

    def forward(self, x: Tensor) -> Tensor:
        t = self.forward_features(x)
        return t[:, 0] if self.pool == "cls" else t[:, 1:].mean(dim=1)  # (B, dim)

    def first_conv(self) -> nn.Conv2d:
        return self.patch_embed
