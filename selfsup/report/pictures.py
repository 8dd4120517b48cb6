"""Pictures of what an encoder learned, as uint8 RGB arrays (H, W, 3): save them as PNG or inline them."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import augment, to_float


def to_rgb(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """(N, C, H, W) uint8 or float in [0, 1] -> (N, H, W, 3) uint8."""
    x = images.detach().cpu().float().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.dtype != np.uint8:
        x = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    x = x.transpose(0, 2, 3, 1)
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x


def grid(rows: list[np.ndarray], pad: int = 2, scale: int = 1, background: int = 255) -> np.ndarray:
    """Tile rows of (n, h, w, 3) images into one (H, W, 3) picture, each tile upscaled `scale` times (nearest)."""
    h, w = rows[0].shape[1] * scale, rows[0].shape[2] * scale
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), background, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            big = tile.repeat(scale, 0).repeat(scale, 1)
            out[pad + i * (h + pad): pad + i * (h + pad) + h, pad + j * (w + pad): pad + j * (w + pad) + w] = big
    return out


def auto_scale(side: int, target: int = 96) -> int:
    """How many times to enlarge a tile of `side` pixels so that a person can see it (32 px -> 3x, 96 px -> 1x)."""
    return max(1, target // side)


def frame(tiles: np.ndarray, colours: list[tuple[int, int, int]], width: int = 2) -> np.ndarray:
    """(n, h, w, 3) tiles with a coloured border of `width` pixels drawn inside each (one colour per tile)."""
    out = tiles.copy()
    for t, c in zip(out, colours):
        t[:width], t[-width:], t[:, :width], t[:, -width:] = c, c, c, c
    return out


SAME, OTHER = (40, 160, 60), (210, 40, 40)  # neighbour frames: the query's class, another class


def filter_grid(encoder: torch.nn.Module, per_row: int = 8, scale: int = 8) -> np.ndarray:
    """The first conv layer's filters, each min-max scaled on its own (grey for 1 input channel, RGB for 3)."""
    w = encoder.first_conv().weight.detach().float().cpu()  # (out, in, k, k)
    if w.shape[1] not in (1, 3):
        w = w.mean(dim=1, keepdim=True)
    lo, hi = w.amin(dim=(1, 2, 3), keepdim=True), w.amax(dim=(1, 2, 3), keepdim=True)
    tiles = to_rgb((w - lo) / (hi - lo).clamp_min(1e-8))
    return grid([tiles[i:i + per_row] for i in range(0, len(tiles), per_row)], pad=1, scale=scale)


@torch.no_grad()
def nearest_neighbours(encoder: torch.nn.Module, queries: np.ndarray, bank: np.ndarray, k: int = 8,
                       query_labels: np.ndarray | None = None, bank_labels: np.ndarray | None = None
                       ) -> tuple[np.ndarray, float | None]:
    """Each row: a query image, then its k most cosine-similar images from `bank` (the query itself excluded).

    With labels, each neighbour is framed green when it shares the query's class and red when it does not;
    returns (picture, fraction of neighbours sharing the query's class, or None without labels)."""
    from ..evaluate import extract_features
    from ..neighbours import search

    spare = 4  # candidates beyond k, for copies of the query in the bank
    _, cand = search(extract_features(encoder, bank), extract_features(encoder, queries), k + spare)
    cand = cand.numpy()  # (Q, k + spare)
    same = (bank[cand].reshape(*cand.shape, -1) == queries.reshape(len(queries), 1, -1)).all(-1)  # the query itself
    idx = np.stack([c[~s][:k] if (~s).sum() >= k else c[:k] for c, s in zip(cand, same)])  # (Q, k)
    scale = auto_scale(queries.shape[-1])
    big = lambda a: to_rgb(a).repeat(scale, 1).repeat(scale, 2)  # noqa: E731  enlarged before framing: thin frames
    rows, hits = [], None
    labelled = query_labels is not None and bank_labels is not None
    if labelled:
        match = bank_labels[idx] == np.asarray(query_labels)[:, None]  # (Q, k)
        hits = float(match.mean())
    for i in range(len(queries)):
        nbrs = big(bank[idx[i]])
        if labelled:
            nbrs = frame(nbrs, [SAME if m else OTHER for m in match[i]], width=max(1, scale))
        rows.append(np.concatenate([big(queries[i:i + 1]), nbrs]))
    return grid(rows, pad=2 * scale), hits


def augmented_views(images: np.ndarray, view, n_views: int = 8, seed: int = 0) -> np.ndarray:
    """Each row: an image, then `n_views` views the augmentation preset makes of it."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    g = torch.Generator().manual_seed(seed)
    views = [augment(x, view, g) for _ in range(n_views)]  # each (N, C, S, S)
    side = views[0].shape[-1]
    orig = F.interpolate(to_float(x), size=(side, side), mode="bilinear", align_corners=False) if x.shape[-1] != side else to_float(x)
    rows = [np.concatenate([to_rgb(orig[i:i + 1])] + [to_rgb(v[i:i + 1]) for v in views]) for i in range(len(x))]
    return grid(rows, scale=auto_scale(side))


def save_png(picture: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
    return path


def data_uri(picture: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
