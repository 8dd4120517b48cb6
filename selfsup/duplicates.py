"""Exact and near-duplicate images, and test images with near-copies among the images a model saw.

A near-duplicate survives re-encoding, resizing, a small crop and a colour shift. Two signals find one:
- candidates: each image as a 16x16 grey thumbnail, centred and scaled to unit length (so brightness and contrast
  drop out), compared with the other image, its mirror image and its 90% crops (centre and corners), both ways,
  at `PIXEL_MATCH` or more; and, where a pretraining run is given, the nearest images by its centred features
  at `FEATURE_MATCH` or more.
- the check: the candidates' details (a 24x24 thumbnail less its local mean: edges and texture) must agree at
  `DETAIL_MATCH` or more over the same alignments. Thumbnails alone match any two seascapes with a ship on the
  horizon; details do not.
The thresholds were set on planted copies of CIFAR-10 images and by looking at the pairs around them
(bench/README.md, "Duplicates and leakage").
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .neighbours import search

THUMB = 16
CROP = 0.9  # crops compared: the central 90% and each 90% corner
CROPS = ("centre", "tl", "tr", "bl", "br")
DETAIL = 24
PIXEL_MATCH = 0.90  # thumbnails: a candidate
FEATURE_MATCH = 0.95  # centred features: a candidate
DETAIL_MATCH = 0.72  # details: a near copy
CROWD, CROWDED_MATCH, CROWDED_PIXELS = 3, 0.995, 0.99  # where look-alikes are the rule (detail_bar)
SAMPLE = 1000  # queries whose candidates decide whether look-alikes are the rule
K = 5  # candidates per image


def grey(images: np.ndarray, crop: str | None = None) -> torch.Tensor:
    """uint8 images (N, C, H, W) as float grey (N, 1, H, W), whole or one 90% crop ("centre", "tl", "tr", "bl", "br")."""
    g = torch.from_numpy(np.require(images, requirements=("C", "W"))).float().mean(1, keepdim=True)
    if crop is None:
        return g
    h, w = g.shape[-2:]
    ch, cw = round(h * CROP), round(w * CROP)
    top = {"centre": (h - ch) // 2, "tl": 0, "tr": 0, "bl": h - ch, "br": h - ch}[crop]
    left = {"centre": (w - cw) // 2, "tl": 0, "tr": w - cw, "bl": 0, "br": w - cw}[crop]
    return g[..., top:top + ch, left:left + cw]


def thumbnails(images: np.ndarray, batch: int = 4096, crop: str | None = None) -> torch.Tensor:
    """(N, 256) unit rows: 16x16 grey, mean removed, of uint8 images (N, C, H, W) (read a batch at a time).
    `crop`: of the central 90% ("centre") or a 90% corner ("tl", "tr", "bl", "br") instead of the whole image."""
    out = torch.empty(len(images), THUMB * THUMB)
    for i in range(0, len(images), batch):
        g = grey(images[i:i + batch], crop)  # (B, 1, H, W)
        t = F.interpolate(g, size=(THUMB, THUMB), mode="area").flatten(1)  # (B, 256)
        t = t - t.mean(1, keepdim=True)
        out[i:i + len(t)] = F.normalize(t, dim=1)
    return out


def all_thumbnails(images: np.ndarray) -> torch.Tensor:
    """(1 + len(CROPS), N, 256): the whole image's thumbnail, then each crop's."""
    return torch.stack([thumbnails(images)] + [thumbnails(images, crop=c) for c in CROPS])


def mirrored(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, THUMB, THUMB).flip(-1).reshape(len(t), -1)


@dataclass
class Pair:
    a: int  # index in the queries (or the set, for a self-search)
    b: int  # index in the bank
    pixels: float  # thumbnail agreement
    features: float | None = None  # centred feature similarity, where features found the pair
    detail: float = 1.0  # detail agreement

    def to_dict(self) -> dict:
        d = {"a": self.a, "b": self.b, "pixels": round(self.pixels, 4), "detail": round(self.detail, 4)}
        return d | ({"features": round(self.features, 4)} if self.features is not None else {})


def near_pairs(bank_images: np.ndarray, query_images: np.ndarray | None = None, bank_features: torch.Tensor | None = None,
               query_features: torch.Tensor | None = None, thumbs: tuple | None = None) -> list[Pair]:
    """Near-duplicate pairs between queries and bank (query_images=None: within the bank, each pair once).

    Candidates: thumbnails compared whole to whole, whole to mirror image, and whole to each 90% crop both ways (a
    copy cropped by 10% still matches), at PIXEL_MATCH or more; and, with features, the nearest images by centred
    features at FEATURE_MATCH or more. Every candidate must then agree in its details (`detail_score`) at
    DETAIL_MATCH or more: two photographs of the sea with a ship on the horizon share a layout, not details.
    `thumbs`: (bank, queries) from `all_thumbnails`, already made."""
    self_search = query_images is None
    queries = bank_images if self_search else query_images
    tb, tq = thumbs if thumbs is not None else (all_thumbnails(bank_images),
                                                None if self_search else all_thumbnails(query_images))
    tq = tb if self_search or tq is None else tq
    nb, nq, v = tb.shape[1], tq.shape[1], tb.shape[0]
    cand: dict[tuple[int, int], float | None] = {}

    def add(a: torch.Tensor, b: torch.Tensor, ok: torch.Tensor, fs: torch.Tensor | None = None) -> None:
        ok = ok & (b >= 0) & ((a != b) if self_search else True)
        for i, j, f in zip(a[ok].tolist(), b[ok].tolist(), (fs[ok].tolist() if fs is not None else [None] * int(ok.sum()))):
            key = (min(i, j), max(i, j)) if self_search else (i, j)
            cand[key] = f if f is not None else cand.get(key)

    def run(bank: torch.Tensor, bank_of: torch.Tensor, q: torch.Tensor, q_of: torch.Tensor, k: int) -> None:
        sims, idx = search(bank, q, k)
        flat = idx.flatten()
        add(q_of.repeat_interleave(idx.shape[1]), torch.where(flat >= 0, bank_of[flat.clamp(min=0)], -1),
            sims.flatten() >= PIXEL_MATCH)

    every_b, every_q = torch.arange(nb), torch.arange(nq)
    # the query whole (and mirrored) against the bank whole and cropped: a bank image that is a crop of the query
    run(tb.reshape(-1, tb.shape[-1]), every_b.repeat(v), tq[0], every_q, K + v * int(self_search))
    run(tb[0], every_b, mirrored(tq[0]), every_q, K + int(self_search))
    # the query cropped against the bank whole: a query that is a crop of a bank image
    run(tb[0], every_b, tq[1:].reshape(-1, tq.shape[-1]), every_q.repeat(v - 1), K + int(self_search))
    if bank_features is not None:
        centre = bank_features.float().mean(0)
        fb = bank_features.float() - centre
        sims, idx = search(fb, None if self_search else query_features.float() - centre, K)
        add(every_q.repeat_interleave(idx.shape[1]), idx.flatten(), sims.flatten() >= FEATURE_MATCH, sims.flatten())
    if not cand:
        return Pairs()
    keys = sorted(cand)
    a, b = np.array([k[0] for k in keys]), np.array([k[1] for k in keys])
    qa_images = bank_images if self_search else queries
    px = pixel_score(tq, tb, torch.from_numpy(a), torch.from_numpy(b)).numpy()
    some = np.random.default_rng(0).permutation(np.unique(a))[:SAMPLE]  # is this a crowd of look-alikes?
    sample = np.flatnonzero(np.isin(a, some))
    bar = detail_bar(a[sample], detail_score(qa_images, bank_images, a[sample], b[sample]))
    if bar == CROWDED_MATCH:  # a near-identical copy agrees in its thumbnail too: check only those
        keep = px >= CROWDED_PIXELS
        a, b, px = a[keep], b[keep], px[keep]
    detail = detail_score(qa_images, bank_images, a, b)
    pairs = Pairs(Pair(int(i), int(j), float(p), cand[(int(i), int(j))], float(d))
                  for i, j, p, d in zip(a, b, px, detail) if d >= bar)
    pairs.sort(key=lambda p: (-p.detail, p.a, p.b))
    pairs.threshold = bar
    return pairs


class Pairs(list):
    """Near-duplicate pairs, with the detail bar they passed (`detail_bar`)."""

    threshold: float = DETAIL_MATCH


def detail_bar(a: np.ndarray, detail: np.ndarray) -> float:
    """DETAIL_MATCH; or CROWDED_MATCH, nearly identical, where look-alikes are the rule: where most queries that
    have a match at DETAIL_MATCH have CROWD of them or more. Handwritten digits are the case: every handwritten 1
    agrees with hundreds of other 1s at 0.95, and none is a copy. A photo has one copy, or a few.
    `a`, `detail`: every candidate of a sample of the queries."""
    counts = np.bincount(a[detail >= DETAIL_MATCH])
    counts = counts[counts > 0]
    return CROWDED_MATCH if len(counts) and np.median(counts) >= CROWD else DETAIL_MATCH


def pixel_score(tq: torch.Tensor, tb: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The best thumbnail agreement of query a and bank b over whole, mirror and crops (both ways)."""
    qa, bb = tq[:, a], tb[:, b]  # (V, P, 256)
    best = torch.maximum((qa[0] * bb).sum(-1).max(0).values, (qa * bb[0]).sum(-1).max(0).values)
    return torch.maximum(best, (mirrored(qa[0]) * bb[0]).sum(-1))


def details(images: np.ndarray, crop: str | None = None) -> torch.Tensor:
    """(N, 576) unit rows: a 24x24 grey thumbnail minus its 5x5 local mean (the edges and textures, not the layout)."""
    t = F.interpolate(grey(images, crop), size=(DETAIL, DETAIL), mode="area")
    t = t - F.avg_pool2d(F.pad(t, (2, 2, 2, 2), mode="replicate"), 5, 1)
    return F.normalize(t.flatten(1), dim=1)


def detail_score(qa: np.ndarray, bb: np.ndarray, a: np.ndarray, b: np.ndarray, batch: int = 2048) -> np.ndarray:
    """How well the details of qa[a] and bb[b] agree: the best over whole, mirror and 90% crops, both ways."""
    out = []
    for i in range(0, len(a), batch):
        x, y = qa[a[i:i + batch]], bb[b[i:i + batch]]
        dx = [details(x)] + [details(x, c) for c in CROPS]
        dy = [details(y)] + [details(y, c) for c in CROPS]
        s = [(dx[0] * d).sum(1) for d in dy] + [(d * dy[0]).sum(1) for d in dx[1:]]
        s.append((details(np.ascontiguousarray(x[..., ::-1])) * dy[0]).sum(1))
        out.append(torch.stack(s).max(0).values)
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def groups(n: int, pairs: list[Pair]) -> list[list[int]]:
    """Near-duplicate groups (two or more images) of a self-search's pairs, each sorted, largest first.

    Star-shaped, not chained: an image joins a group only if it is itself a near copy of the group's first image,
    so that seascapes linked one to the next never make one group of hundreds."""
    linked = {(p.a, p.b) for p in pairs} | {(p.b, p.a) for p in pairs}
    centre: dict[int, int] = {}
    members: dict[int, list[int]] = {}
    for p in sorted(pairs, key=lambda p: -p.detail):
        ca, cb = centre.get(p.a), centre.get(p.b)
        if ca is None and cb is None:
            centre[p.a] = centre[p.b] = p.a
            members[p.a] = [p.a, p.b]
        elif ca is not None and cb is None and (p.b, ca) in linked:
            centre[p.b] = ca
            members[ca].append(p.b)
        elif cb is not None and ca is None and (p.a, cb) in linked:
            centre[p.a] = cb
            members[cb].append(p.a)
    return sorted((sorted(m) for m in members.values()), key=lambda m: (-len(m), m[0]))


def exact_groups(keys: list[str]) -> list[list[int]]:
    """Groups of indices whose keys (file or pixel digests) are equal, largest first."""
    by: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by.setdefault(k, []).append(i)
    return sorted((g for g in by.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


def pixel_digests(images: np.ndarray, batch: int = 4096) -> list[str]:
    out = []
    for i in range(0, len(images), batch):
        out += [hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest() for x in images[i:i + batch]]
    return out


def keep_one(n: int, pairs: list[Pair]) -> np.ndarray:
    """A mask that keeps the first image of every near-duplicate group and drops the others."""
    keep = np.ones(n, bool)
    for g in groups(n, pairs):
        keep[g[1:]] = False
    return keep
