"""Which images to label: a cold-start pick over an encoder's features, and the next round given labels made.

Density-weighted coverage. Each image's density is the inverse of its mean distance to its 20 nearest images
(TypiClust's typicality; Hacohen, Dekel & Weinshall, ICML 2022). The picks are made one at a time, each the image
with the largest density x distance to the nearest pick so far (greedy k-centre, as in coreset selection; Sener
& Savarese, ICLR 2018, weighted by density): the first pick is the densest image, and each next one the most
typical image of the region the picks cover worst. The features are the method's projection head's where it has
one (the space its loss shaped), else the encoder's.

A first round of up to SPECTRAL_MAX picks (among at most SPECTRAL_MAX_IMAGES images) also tries spectral clustering of the images' 10-NN graph (Ng, Jordan &
Weiss 2001; one cluster per pick, three k-means seeds), from each cluster the densest image of its core (the
quarter of it nearest its centre in the spectral embedding), and keeps whichever set's
regions (label propagation from the picks, each pick its own class) have the lowest normalised cut (Shi & Malik
2000). No label is read: the cut says which set follows the graph's clusters. Coverage alone can spend two picks on
the ends of one spread-out class and miss a small one (9 of MNIST's 10 digits from 10 picks); spectral clusters
follow the graph's clusters where it has them.

Measured against TypiClust (k-means into B clusters, each cluster's most typical image) and ProbCover on CIFAR-10
and MNIST (bench/README.md, "Choosing what to label"): density x coverage was the best at 10 and at 100 labels on
CIFAR-10, and the cut keeps it there; on MNIST the cut chooses the spectral set.

Next rounds (`labeled` given): the labeled images count as picks already, and each image's score is also weighted
by how unsure label propagation from the labels is of it (1 - its top-two margin): where labels are missing and
where they disagree.

Near-duplicates are dropped first (duplicates.near_pairs), so two picks are never copies of one photograph.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .neighbours import search

TYPICALITY_K = 20
SPECTRAL_MAX = 100  # first rounds up to this budget also try spectral clusters (one eigenvector per pick)
SPECTRAL_MAX_IMAGES = 200_000  # and up to this many images (the eigenvectors take N x budget floats, several times)
SPECTRAL_SEEDS = (0, 1, 2)  # k-means seeds of the spectral embedding: three candidate sets
GRAPH_K_SELECT = 10  # neighbours per image in the graph the first round clusters and cuts
CORE_SHARE = 4  # a spectral cluster's pick is the densest of the 1/CORE_SHARE of it nearest its centre
COVERS = {"coverage": "images nearest to it", "spectral": "images of its graph cluster"}  # a pick's region
RULES = {"coverage": "In order: each the most typical image of the region the picks before it cover worst.",
         "spectral": "Each the most typical image of one cluster of the images' neighbour graph (spectral "
                     "clustering), which cut the graph more cleanly than density-weighted coverage here."}


@dataclass
class Pick:
    index: int  # position in the image set
    cluster: int
    reason: str
    rule: str = "coverage"  # or "spectral": which first-round rule chose it (see `first_round`)


def density(features: torch.Tensor) -> np.ndarray:
    """Each image's density among `features` (unit rows): 1 / mean distance to its TYPICALITY_K nearest."""
    if len(features) < 2:
        return np.ones(len(features))
    sims, _ = search(features, None, min(TYPICALITY_K, len(features) - 1))
    dist = (2 - 2 * sims.clamp(max=1)).clamp(min=0).sqrt()  # unit vectors: Euclidean from cosine
    return (1.0 / (dist.mean(1) + 1e-8)).numpy()


def propagation_margin(features: torch.Tensor, labeled: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """How sure label propagation is of each image: its top class score minus the second (0 = unsure)."""
    from .evaluate.propagate import LabelGraph

    graph = LabelGraph(features)
    scores = graph.spread(torch.from_numpy(labeled), torch.from_numpy(labels), n_classes).float()  # (N, C)
    p = scores / scores.sum(1, keepdim=True).clamp(min=1e-12)
    top = p.topk(min(2, n_classes), dim=1).values
    return (top[:, 0] - (top[:, 1] if n_classes > 1 else 0)).clamp(0, 1).numpy()


def select(features: torch.Tensor, budget: int, seed: int = 0, candidates: np.ndarray | None = None,
           labeled: np.ndarray | None = None, labeled_y: np.ndarray | None = None, spectral: bool = True) -> list[Pick]:
    """`budget` images to label, as indices into `features` (N, D), chosen among `candidates` (default: all).
    `labeled`/`labeled_y`: images already labeled and their labels (a later round). `seed` breaks exact ties only:
    the picks are a function of the features. `spectral`: let a first round try spectral clusters (`first_round`)."""
    f = F.normalize(features.float(), dim=1)
    pool = np.arange(len(f)) if candidates is None else np.asarray(candidates)
    done = np.array([], np.int64) if labeled is None else np.asarray(labeled, np.int64)
    pool = np.setdiff1d(pool, done)
    budget = min(budget, len(pool))
    if budget <= 0:
        return []
    u = f[pool]
    dens = density(u)
    weight = dens / dens.max()
    weight = weight + np.random.default_rng(seed).random(len(weight)) * 1e-9  # ties, never order
    nearest = np.full(len(pool), np.inf)
    if len(done):
        nodes = np.concatenate([pool, done])
        margin = propagation_margin(f[nodes], np.arange(len(pool), len(nodes)), np.asarray(labeled_y),
                                    int(np.max(labeled_y)) + 1)[:len(pool)]
        weight = weight * (0.5 + (1 - margin))
        for i in range(0, len(done), 1024):
            d = torch.cdist(u, f[done[i:i + 1024]]).min(1).values.numpy()
            nearest = np.minimum(nearest, d)
    chosen = coverage_picks(u, weight, nearest, budget)
    owner = torch.cdist(u, u[chosen]).argmin(1).numpy()  # the region each pick covers: images nearest to it
    rule = "coverage"
    if spectral and not len(done) and budget <= SPECTRAL_MAX and 2 * budget + GRAPH_K_SELECT < len(pool) <= \
            SPECTRAL_MAX_IMAGES:
        chosen, owner, rule = first_round(u, dens, budget, chosen, owner)
    sizes = np.bincount(owner, minlength=len(chosen))
    rank = np.argsort(np.argsort(-dens))
    return [Pick(int(pool[i]), r, f"covers {sizes[r]} {COVERS[rule]}; density rank {rank[i] + 1} of {len(pool)}"
                 + (" among those propagation is least sure of" if len(done) else ""), rule)
            for r, i in enumerate(chosen)]


def coverage_picks(u: torch.Tensor, weight: np.ndarray, nearest: np.ndarray, budget: int) -> list[int]:
    """Greedy density-weighted k-centre: each pick the row of `u` (unit rows) with the largest weight x distance to
    its nearest pick so far (`nearest`: distances to picks made before, inf where none)."""
    nearest = nearest.copy()
    chosen: list[int] = []
    for _ in range(budget):
        score = weight * (nearest if np.isfinite(nearest).any() else 1.0)
        score[chosen] = -1
        i = int(np.argmax(score))
        chosen.append(i)
        nearest = np.minimum(nearest, (2 - 2 * (u @ u[i]).clamp(max=1)).clamp(min=0).sqrt().numpy())
    return chosen


def affinity(neighbours: tuple[torch.Tensor, torch.Tensor]):
    """The symmetric kNN graph (scipy CSR) of `knn_graph`'s (indices, similarities), weighted by cosine similarity
    (at least 0)."""
    import scipy.sparse as sp

    j, sim = neighbours
    n = len(j)
    w = sp.csr_matrix((sim.flatten().double().numpy(), (np.repeat(np.arange(n), j.shape[1]), j.flatten().numpy())),
                      shape=(n, n))
    return (w + w.T).tocsr()


def spectral_clusters(w, budget: int, seeds: tuple[int, ...]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Normalised spectral clustering of graph `w` into `budget` clusters (Ng, Jordan & Weiss 2001): the top
    `budget` eigenvectors of D^-1/2 W D^-1/2, rows scaled to unit length, k-means. Returns that embedding (N, budget)
    and one labelling per k-means seed."""
    import scipy.sparse as sp
    from scipy.sparse.linalg import eigsh
    from sklearn.cluster import KMeans

    d = 1 / np.sqrt(np.maximum(np.asarray(w.sum(1)).ravel(), 1e-12))
    _, vecs = eigsh(sp.diags(d) @ w @ sp.diags(d), k=budget, which="LA",
                    v0=np.random.default_rng(0).random(w.shape[0]))
    e = vecs / np.linalg.norm(vecs, axis=1, keepdims=True).clip(1e-12)
    return e, [KMeans(budget, random_state=s, n_init=3).fit_predict(e) for s in seeds]


def cluster_pick(members: np.ndarray, embedding: np.ndarray, dens: np.ndarray) -> int:
    """The image to label for one spectral cluster: the densest of the quarter of its `members` nearest the
    cluster's centre in the spectral `embedding` (its core). The densest member overall can sit on the cluster's
    edge, beside a denser neighbouring cluster (on MNIST, a 0 picked for a cluster of 8s)."""
    centre = embedding[members].mean(0)
    core = members[np.argsort(-(embedding[members] @ centre), kind="stable")[:max(1, len(members) // CORE_SHARE)]]
    return int(core[np.argmax(dens[core])])


def normalised_cut(w, regions: np.ndarray, n_regions: int) -> float:
    """Mean over regions of cut / volume on graph `w` (Shi & Malik 2000): low where the regions follow its
    clusters."""
    deg = np.asarray(w.sum(1)).ravel()
    c = w.tocoo()
    same = regions[c.row] == regions[c.col]
    inside = np.bincount(regions[c.row][same], weights=c.data[same], minlength=n_regions)
    volume = np.bincount(regions, weights=deg, minlength=n_regions)
    return float(np.mean((volume - inside) / np.maximum(volume, 1e-12)))


def first_round(u: torch.Tensor, dens: np.ndarray, budget: int, cover: list[int], cover_owner: np.ndarray
                ) -> tuple[list[int], np.ndarray, str]:
    """The first round's picks: density x coverage (`cover`, with the images nearest to each), or one core image
    of each spectral cluster of the kNN graph (one clustering per k-means seed), whichever set's regions cut the
    graph least. A region is what label propagation from the picks gives each pick, each pick its own class; the
    normalised cut of those regions is low where every pick sits in its own cluster of the graph. Coverage alone
    leaves a small cluster out where a large one is spread thin (a digit missing from 10 MNIST picks); spectral
    clusters follow the graph's clusters, where it has them."""
    from .evaluate.propagate import LabelGraph, knn_graph

    neighbours = knn_graph(u, GRAPH_K_SELECT)  # one search: the graph that is cut, and propagation's (its nearest 5)
    w = affinity(neighbours)
    graph = LabelGraph(u, neighbours=neighbours)

    def regions(picks: list[int]) -> np.ndarray:
        return graph.spread(torch.tensor(picks), torch.arange(len(picks)), len(picks)).argmax(1).numpy()

    options = [(cover, cover_owner, "coverage")]
    embedding, labellings = spectral_clusters(w, budget, SPECTRAL_SEEDS)
    for ids in labellings:
        members = [np.flatnonzero(ids == c) for c in range(budget)]
        if all(len(m) for m in members):
            options.append(([cluster_pick(m, embedding, dens) for m in members], ids, "spectral"))
    cuts = [normalised_cut(w, regions(picks), budget) for picks, *_ in options]
    return options[int(np.argmin(cuts))]


def random_picks(n: int, budget: int, seed: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """Uniform random picks (what a user without selfsup does)."""
    pool = np.arange(n) if candidates is None else np.asarray(candidates)
    return np.sort(np.random.default_rng(seed).choice(pool, min(budget, len(pool)), replace=False))


def labeled_rows(csv_path: str, data) -> tuple[np.ndarray, np.ndarray]:
    """(indices into `data`, labels) of the images a labels file says are labeled already: by path for a folder
    (its label column), by index for a built-in dataset (labels read from the dataset where the file has none)."""
    from .data.labels_csv import dataset_rows, read_rows
    from .errors import DataError

    if data.paths is None:
        idx, given = dataset_rows(csv_path, len(data))
        return idx, data.labels[idx] if given is None else _as_classes(given, data.classes, csv_path)
    _, rows = read_rows(csv_path)
    at = {p: i for i, p in enumerate(data.paths)}
    idx, names = [], []
    for line, path, label in rows:
        if not label:
            continue
        if path not in at:
            raise DataError(f"labels file {csv_path} line {line}: {path} is not an image of {data.name} (paths are "
                            f"relative to the folder)")
        idx.append(at[path])
        names.append(label)
    if not idx:
        raise DataError(f"labels file {csv_path} labels no image yet; fill in its label column first")
    classes = sorted(set(names))
    return np.array(idx, np.int64), np.array([classes.index(n) for n in names], np.int64)


def _as_classes(given: np.ndarray, classes: list[str], csv_path) -> np.ndarray:
    names = list(classes) or sorted(set(given.tolist()))
    out = []
    for g in given.tolist():
        if g in names:
            out.append(names.index(g))
        elif g.isdigit() and int(g) < max(len(names), 1):
            out.append(int(g))
        else:
            from .errors import DataError

            raise DataError(f"labels file {csv_path} has the label {g!r}, which is not a class of the dataset")
    return np.array(out, np.int64)


def selection_head(checkpoint_path) -> torch.nn.Module | None:
    """The projection head of a pretraining run's method, where it has one (the space selection works in)."""
    from . import checkpoint
    from .errors import SelfsupError
    from .factory import method_from

    try:
        method, _ = method_from(checkpoint.load(checkpoint_path))
    except (SelfsupError, OSError):  # an exported encoder: no head
        return None
    return getattr(method, "projector", None)


@torch.no_grad()
def selection_features(features: torch.Tensor, head: torch.nn.Module | None) -> torch.Tensor:
    if head is None:
        return features
    head = head.float().eval()
    return torch.cat([head(features[i:i + 4096]) for i in range(0, len(features), 4096)])


def run_select(encoder, data, budget: int, out, seed: int = 0, labeled: str | None = None, map_points: int = 3000,
               say=print, head: torch.nn.Module | None = None) -> dict:
    """Pick `budget` images of `data` to label with `encoder`'s features (through `head`, the method's projection
    head, where given); writes OUT/to_label.csv, OUT/picks.html and OUT/map.html (the picks ringed on the embedding
    map). Returns what it wrote and the picks."""
    import csv
    from pathlib import Path

    from . import duplicates as dup
    from .evaluate import extract_features
    from .report.embedding import write_embedding
    from .report.sheets import contact_sheet

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if budget < 1:
        from .errors import ConfigError

        raise ConfigError(f"--budget must be at least 1, got {budget}")
    done, done_y = labeled_rows(labeled, data) if labeled else (None, None)
    say(f"select: embedding {len(data):,} images")
    feats = extract_features(encoder, data.images)
    pairs = dup.near_pairs(data.images, bank_features=feats)
    keep = dup.keep_one(len(data), pairs)
    if done is not None:  # never a near-copy of an image labeled already
        labeled = set(done.tolist())
        for p in pairs:
            if p.a in labeled:
                keep[p.b] = False
            if p.b in labeled:
                keep[p.a] = False
    picks = select(selection_features(feats, head), budget, seed, np.flatnonzero(keep), done, done_y)
    rule = picks[0].rule if picks else None  # the first round's rule (every pick of a round shares it)
    names, key = data.names(), "path" if data.paths is not None else "index"
    with open(out / "to_label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([key, "label", "cluster", "reason"])
        for p in picks:
            w.writerow([names[p.index], "", p.cluster, p.reason])
    idx = [p.index for p in picks]
    contact_sheet(np.ascontiguousarray(data.images[np.array(idx, np.int64)]) if idx else data.images[:0],
                  [names[i] for i in idx], [[f"pick {p.cluster + 1}", p.reason] for p in picks], out / "picks.html",
                  f"{len(picks)} images to label", f"Picked from {int(keep.sum()):,} of {len(data):,} images "
                  f"({len(data) - int(keep.sum()):,} near-duplicates left out). "
                  f"{RULES[rule or 'coverage']} Label them in to_label.csv's label column.")
    marked = {p.index: f"pick {r + 1}: {p.reason}" for r, p in enumerate(picks)}
    written = write_embedding(encoder, data, [out / "map.html"], f"{len(picks)} picks to label", "tsne", map_points,
                              seed, marked=marked)
    say(f"select: {len(picks)} picks ({rule}) in {out / 'to_label.csv'}; contact sheet {out / 'picks.html'}; "
        f"map {written['html']}")
    return {"picks": picks, "rule": rule, "csv": out / "to_label.csv", "sheet": out / "picks.html",
            "map": written["html"], "duplicates_dropped": int(len(data) - keep.sum())}


