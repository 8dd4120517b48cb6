"""Nearest neighbours by cosine similarity: exact where the search is small, an inverted-file index beyond.

Every neighbour search in selfsup goes through `search`: kNN evaluation, label propagation's graph and vote,
the online kNN monitor and the neighbour pictures. Up to EXACT_PAIRS query-bank pairs it multiplies the
features chunk by chunk and takes the top k (exact). Beyond, it uses faiss's inverted-file index (IndexIVFFlat
on inner products of unit vectors): k-means cells over the bank, and each query compares itself only with the
points of its NPROBE nearest cells. bench/scale.py measured it against faiss's HNSW and usearch on this
project's features (speed, memory, recall): bench/README.md, "Scale: cost against N".
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

EXACT_PAIRS = 2_500_000_000  # queries x bank searched exactly (50k x 50k); larger searches use the index
NPROBE = 32  # cells each query visits
CELLS_PER_ROOT = 4  # the index has 4 sqrt(N) cells
TRAIN_PER_CELL = 40  # k-means is fitted on at most 40 points per cell, 10 iterations
INDEX_SEED = 1234


def unit(x: Tensor) -> Tensor:
    """Rows scaled to unit length (float32); rows that are already so are returned as they are, not copied."""
    if x.dtype == torch.float32 and len(x) and bool(((x * x).sum(1) - 1).abs().max() < 1e-5):
        return x
    return F.normalize(x.float(), dim=1)


def resolve(method: str, queries: int, bank: int) -> str:
    """"exact" or "index" for a search of `queries` rows against `bank` rows."""
    if method == "auto":
        return "exact" if queries * bank <= EXACT_PAIRS else "index"
    if method not in ("exact", "index"):
        raise ValueError(f"unknown neighbour search {method!r}; use exact, index or auto")
    return method


def search(bank: Tensor, queries: Tensor | None, k: int, method: str = "auto", chunk: int = 2048,
           nprobe: int | None = None, index=None) -> tuple[Tensor, Tensor]:
    """The k most cosine-similar bank rows of each query, most similar first: (similarities, indices), (Q, k) each.

    queries=None searches the bank against itself and leaves each row out of its own neighbours (a kNN graph).
    method: "exact", "index" (approximate, faiss) or "auto" (exact up to EXACT_PAIRS pairs). Features need not be
    normalised. k is capped at the number of candidates. index: `build_index(bank)` already built (several
    searches of one bank build it once)."""
    bank = unit(bank)
    self_search = queries is None
    q = bank if self_search else unit(queries)
    k = min(k, len(bank) - int(self_search))
    if k <= 0 or len(q) == 0:
        return torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.long)
    if resolve(method, len(q), len(bank)) == "exact":
        return exact_search(bank, q, k, self_search, chunk)
    return index_search(bank, q, k, self_search, nprobe, index)


def exact_search(bank: Tensor, q: Tensor, k: int, self_search: bool, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Top k of the full similarity matrix, a chunk of queries at a time (unit-norm float32 inputs); a chunk's
    similarities take at most 1 GB."""
    chunk = max(1, min(chunk, 2**26 // max(len(bank), 1)))
    sims, idx = [], []
    for i in range(0, len(q), chunk):
        s = q[i:i + chunk] @ bank.T  # (chunk, N)
        if self_search:
            s[torch.arange(len(s)), torch.arange(i, i + len(s))] = -3.0  # not its own neighbour
        top, j = s.topk(k, dim=1)
        sims.append(top)
        idx.append(j)
    return torch.cat(sims), torch.cat(idx)


def index_search(bank: Tensor, q: Tensor, k: int, self_search: bool, nprobe: int | None = None, index=None
                 ) -> tuple[Tensor, Tensor]:
    """Approximate top k from faiss's IVF-Flat index; rows it cannot fill (too few points in the visited cells)
    are searched exactly."""
    index = index if index is not None else build_index(bank, len(q))
    index.nprobe = nprobe or NPROBE
    extra = int(self_search)
    sims, idx = [], []
    for i in range(0, len(q), 65_536):  # bounded result buffers
        d, j = index.search(np.ascontiguousarray(q[i:i + 65_536].numpy(), np.float32), k + extra)
        if self_search:
            d, j = drop_self(d, j, np.arange(i, i + len(j)), k)
        sims.append(torch.from_numpy(d))
        idx.append(torch.from_numpy(j))
    sim, ids = torch.cat(sims), torch.cat(idx)
    short = torch.nonzero((ids < 0).any(1)).flatten()
    if len(short):  # fill rows the index left short from an exact search of the same queries
        s, j = exact_search(bank, q[short], k + extra, False)
        if self_search:
            s, j = map(torch.from_numpy, drop_self(s.numpy(), j.numpy(), short.numpy(), k))
        sim[short], ids[short] = s, j
    return sim, ids


def build_index(bank: Tensor, queries: int | None = None):
    """An IVF-Flat inner-product index over the unit rows of `bank` (N, D): 4 sqrt(N) k-means cells fitted on a
    seeded sample, every row added. For Q < N `queries`, the cells are fewer by (Q/N)^(1/3): fitting the cells
    costs about cells^2 and the search Q N / cells, so a few queries against a large bank (a test split against
    every training image and its crops) spend less on k-means than the search would save. Fewer cells at the same
    NPROBE only widen each query's search."""
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    xb = np.ascontiguousarray(unit(bank).numpy(), np.float32)
    n, dim = xb.shape
    fewer = min(1.0, (queries or n) / n) ** (1 / 3)
    cells = max(1, min(int(CELLS_PER_ROOT * math.sqrt(n) * fewer), n // 8))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
    sample = xb if n <= TRAIN_PER_CELL * cells else \
        xb[np.sort(np.random.default_rng(INDEX_SEED).choice(n, TRAIN_PER_CELL * cells, replace=False))]
    index.cp.seed, index.cp.niter = INDEX_SEED, 10
    index.cp.min_points_per_centroid = 1  # no warnings on small samples
    index.train(sample)
    index.add(xb)
    return index


def drop_self(d: np.ndarray, j: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id from its k + 1 results (or the last result where it is not among them)."""
    own = j == rows[:, None]
    own[~own.any(1), -1] = True
    keep = ~own
    return d[keep].reshape(len(d), k), j[keep].reshape(len(j), k)
