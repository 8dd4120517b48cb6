"""Label propagation on the encoder's kNN graph (Zhou et al. 2004; as used on deep features by Iscen et al. 2019).

The few labeled images and a pool of unlabeled ones become the nodes of a graph that joins every node
to its k most cosine-similar nodes. Labels spread along the edges; a test image then takes the vote of
its nearest nodes, after each labeled class's scores are scaled to the same total (class mass normalisation,
Zhu et al. 2003). Only the few labels are read: the pool's labels are never looked at. The graph depends
on the encoder and the images alone, so `LabelGraph` builds it once for any number of label subsets.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.splits import class_count
from ..neighbours import build_index, resolve, search

GRAPH_K = 5  # neighbours per node; chosen on MNIST's validation split (bench/label_efficiency.py, README)
VOTE_K = 10  # nodes a test image asks


def knn_graph(x: Tensor, k: int, chunk: int = 1024, shortlist: bool | None = None, method: str = "auto",
              index=None) -> tuple[Tensor, Tensor]:
    """Indices and cosine similarities (clamped at 0) of each row's k nearest other rows, nearest first: (N, k) each.

    method: "exact", "index" (faiss, approximate; see selfsup.neighbours) or "auto" (the index beyond
    EXACT_PAIRS pairs, about 50,000 nodes), with `index` if one is built. The rest is about the exact search.

    shortlist: rank in bfloat16 (several times faster where the hardware runs it natively), keep the 2k + 8 best
    as candidates, and choose the k nearest among them by their float32 similarities; None: where bf16 is native.
    A true neighbour is missed only if bfloat16's rounding (about 3 significant digits) pushes it below 2k + 8
    others, so the result equals the float32 search on all but near-ties.
    """
    n = len(x)
    if resolve(method, n, n) == "index":
        sim, idx = search(x, None, k, "index", index=index)
        return idx, sim.clamp(min=0)
    if shortlist is None:
        from ..engine import choose_precision

        shortlist = choose_precision(x.device.type).startswith("bf16")
    m = min(2 * k + 8, n - 1)
    shortlist = shortlist and m < n - 1
    ranked = x.to(torch.bfloat16) if shortlist else x
    idx, sim = [], []
    for i in range(0, n, chunk):
        s = ranked[i:i + chunk] @ ranked.T  # (chunk, N)
        s[torch.arange(len(s)), torch.arange(i, i + len(s))] = -2.0  # not its own neighbour
        if shortlist:
            cand = s.topk(m, dim=1).indices  # (chunk, m)
            exact = torch.einsum("cd,cmd->cm", x[i:i + chunk], x[cand])  # float32 similarities of the candidates
            top, j = exact.topk(k, dim=1)
            j = cand.gather(1, j)
        else:
            top, j = s.topk(k, dim=1)
        idx.append(j)
        sim.append(top.clamp(min=0))
    return torch.cat(idx), torch.cat(sim)


class LabelGraph:
    """The symmetric kNN graph of a set of features, normalized as S = D^-1/2 W D^-1/2 (sparse, N x N).

    Edge weights are similarity**gamma. `neighbours` = knn_graph's output for k or more neighbours, when several
    graphs of one feature set are wanted (the nearest k are used; see `for_each_k`).
    """

    def __init__(self, features: Tensor, k: int = GRAPH_K, gamma: float = 3.0,
                 neighbours: tuple[Tensor, Tensor] | None = None, method: str = "auto"):
        self.nodes = F.normalize(features.float(), dim=1)  # (N, D)
        self.method = method
        n = len(self.nodes)
        k = min(k, n - 1)
        # an index, where the graph needs one, serves the graph and every vote after it
        self.index = build_index(self.nodes) if neighbours is None and resolve(method, n, n) == "index" else None
        j, s = neighbours if neighbours is not None else knn_graph(self.nodes, k, method=method, index=self.index)
        j, s = j[:, :k], s[:, :k]
        rows = torch.arange(n).repeat_interleave(k)
        w = torch.sparse_coo_tensor(torch.stack([rows, j.flatten()]), s.flatten() ** gamma, (n, n),
                                    check_invariants=False)
        w = (w + w.t()).coalesce()  # symmetric
        d = torch.sparse.sum(w, 1).to_dense().clamp(min=1e-12).rsqrt()  # D^-1/2
        i0, i1 = w.indices()
        s = torch.sparse_coo_tensor(w.indices(), d[i0] * w.values() * d[i1], (n, n), is_coalesced=True,
                                    check_invariants=False)
        with warnings.catch_warnings():  # torch calls its CSR layout beta; its product is 5x COO's at 1M nodes
            warnings.simplefilter("ignore", UserWarning)
            self.s = s.to_sparse_csr()
        self._near: tuple | None = None  # (queries, k, their nearest nodes): one search for every label subset

    @classmethod
    def for_each_k(cls, features: Tensor, ks: tuple[int, ...], gamma: float = 3.0, method: str = "auto"
                   ) -> dict[int, "LabelGraph"]:
        """One graph per k over the same features, from a single neighbour search (for sweeps over k)."""
        x = F.normalize(features.float(), dim=1)
        neighbours = knn_graph(x, min(max(ks), len(x) - 1), method=method)
        return {k: cls(x, k, gamma, neighbours, method) for k in ks}

    def spread(self, positions: Tensor, labels: Tensor, n_classes: int, alpha: float = 0.99, max_iters: int = 200,
               tol: float = 1e-6) -> Tensor:
        """Class scores of every node (N, C), rows summing to 1 (0 where no label reaches), from the labels of the
        nodes at `positions`: the solution of (I - alpha S) Z = Y by conjugate gradients (symmetric positive
        definite for alpha < 1)."""
        y = torch.zeros(len(self.nodes), n_classes)
        y[torch.as_tensor(positions).long(), labels.long()] = 1.0
        y /= y.sum(0, keepdim=True).clamp(min=1)  # each class carries the same total mass
        z = conjugate_gradient(lambda v: v - alpha * (self.s @ v), y, max_iters, tol).clamp(min=0)
        return z / z.sum(1, keepdim=True).clamp(min=1e-30)

    def scores(self, positions: Tensor, labels: Tensor, n_classes: int, balance: bool = True, **kwargs) -> Tensor:
        """`spread`'s class scores; with `balance`, where every labeled class has as many labels as the others (N per
        class), each class's scores then carry the same total mass over the graph (`class_mass`); other label sets
        keep the scores as spread."""
        scores = self.spread(positions, labels, n_classes, **kwargs)
        counts = torch.bincount(torch.as_tensor(labels).long(), minlength=n_classes)
        if balance and len(counts[counts > 0].unique()) == 1:  # as many labels in every labeled class
            scores = class_mass(scores, (counts > 0).float())
        return scores

    def predict(self, positions: Tensor, labels: Tensor, queries: Tensor, n_classes: int, vote_k: int = VOTE_K,
                balance: bool = True, **kwargs) -> Tensor:
        """Classes of the query features: the labels' `scores` over the graph, then each query's vote. The queries'
        nearest nodes depend on the graph alone, so predicting the same queries again (another label subset) reuses
        them."""
        if self._near is None or self._near[0] is not queries or self._near[1] != vote_k:
            self._near = (queries, vote_k, search(self.nodes, queries, vote_k, self.method, index=self.index))
        return vote(self.nodes, self.scores(positions, labels, n_classes, balance, **kwargs), queries, vote_k,
                    near=self._near[2])


def class_mass(scores: Tensor, prior: Tensor) -> Tensor:
    """Class mass normalisation (Zhu, Ghahramani & Lafferty 2003, section 4): node i takes argmax_k q_k f_ik / sum_j
    f_jk for a class prior `prior` (C,), 0 for a class without labels. Each column of `scores` (N, C) is scaled to
    its prior over its total over the nodes, so that a class whose few labels sit in a dense hub of the graph no
    longer outvotes the others around it; rows are then scaled to sum to 1 again. `LabelGraph.scores` gives an
    equal prior, and only to label sets with as many labels in every class, which say nothing of the classes'
    frequencies: with few random labels, neither an equal prior nor the labels' own frequencies was reliably better
    than none (bench/README.md, "Label propagation's class masses")."""
    mass = scores.sum(0)
    z = scores * torch.where((prior > 0) & (mass > 0), prior / mass.clamp(min=1e-30), torch.zeros_like(mass))
    return z / z.sum(1, keepdim=True).clamp(min=1e-30)


def conjugate_gradient(matvec, b: Tensor, max_iters: int, tol: float) -> Tensor:
    """Solve A X = B column by column for a symmetric positive definite A given as X -> A X; b is (N, C)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rs = (r * r).sum(0)
    stop = tol ** 2 * rs.clamp(min=1e-30)
    for _ in range(max_iters):
        ap = matvec(p)
        step = rs / (p * ap).sum(0).clamp(min=1e-30)
        x += step * p
        r -= step * ap
        rs_new = (r * r).sum(0)
        if bool((rs_new <= stop).all()):
            break
        p = r + (rs_new / rs.clamp(min=1e-30)) * p
        rs = rs_new
    return x


def vote(nodes: Tensor, scores: Tensor, queries: Tensor, k: int = VOTE_K, t: float = 0.07, chunk: int = 4096,
         method: str = "auto", index=None, near: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Classes of the query features: a weighted vote (exp(sim / t)) of their k nearest nodes' propagated scores.
    `near`: the queries' (similarities, node indices), (Q, k) each, already searched."""
    top, j = near if near is not None else search(nodes, queries, k, method, index=index)  # (Q, k)
    preds = [weighted_votes(top[i:i + chunk], j[i:i + chunk], scores, t).argmax(1) for i in range(0, len(top), chunk)]
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def weighted_votes(sim: Tensor, j: Tensor, scores: Tensor, t: float) -> Tensor:
    """(Q, C): each query's sum of its neighbours' scores (`j`, (Q, k) indices into `scores`), each weighted by
    exp(similarity / t)."""
    return ((sim / t).exp()[..., None] * scores[j]).sum(1)


def propagate(labeled_f: Tensor, labels: Tensor, pool_f: Tensor, n_classes: int, k: int = GRAPH_K, alpha: float = 0.99,
              gamma: float = 3.0, max_iters: int = 200, tol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Spread the labels over the graph of labeled + pool features: the normalized node features (N, D) and their
    class scores (N, C) (see `LabelGraph.spread`)."""
    graph = LabelGraph(torch.cat([labeled_f, pool_f]), k, gamma)
    return graph.nodes, graph.spread(torch.arange(len(labels)), labels, n_classes, alpha, max_iters, tol)


def propagate_predict(labeled_f: Tensor, labels: Tensor, pool_f: Tensor, test_f: Tensor, n_classes: int,
                      k: int = GRAPH_K, vote_k: int = VOTE_K, gamma: float = 3.0, **kwargs) -> Tensor:
    """Predicted classes of the test features: propagate over labeled + pool, then each test point's vote."""
    graph = LabelGraph(torch.cat([labeled_f, pool_f]), k, gamma)
    return graph.predict(torch.arange(len(labels)), labels, test_f, n_classes, vote_k, **kwargs)


def propagate_accuracy(labeled_f: Tensor, labels: Tensor, test_f: Tensor, test_y: Tensor, pool_f: Tensor,
                       k: int = GRAPH_K) -> float:
    n_classes = class_count(labels, test_y)
    return (propagate_predict(labeled_f, labels, pool_f, test_f, n_classes, k) == test_y.long()).float().mean().item()
