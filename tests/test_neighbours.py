"""The neighbour search: the index path agrees with the exact one, and both with a naive loop."""
import numpy as np
import pytest
import torch

from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.propagate import LabelGraph, knn_graph
from selfsup.neighbours import CELLS_PER_ROOT, build_index, drop_self, search


def clusters(n: int, dim: int = 32, centres: int = 10, seed: int = 0, noise: float = 0.6):
    c = torch.randn(centres, dim, generator=torch.Generator().manual_seed(100))  # the same clusters for every seed
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, centres, (n,), generator=g)
    return c[y] + noise * torch.randn(n, dim, generator=g), y


def naive(bank: torch.Tensor, q: torch.Tensor, k: int) -> list[list[int]]:
    """The k nearest by cosine, one query at a time, by sorting every similarity."""
    b = bank / bank.norm(dim=1, keepdim=True)
    out = []
    for row in q / q.norm(dim=1, keepdim=True):
        sims = [(float(row @ b[j]), j) for j in range(len(b))]
        out.append([j for _, j in sorted(sims, key=lambda t: -t[0])[:k]])
    return out


def recall(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / a.shape[1] for x, y in zip(a, b)]))


def test_exact_search_equals_a_naive_loop():
    bank, _ = clusters(300)
    q, _ = clusters(20, seed=1)
    sim, idx = search(bank, q, 5, "exact")
    assert idx.tolist() == naive(bank, q, 5)
    assert (sim[:, :-1] >= sim[:, 1:]).all()  # most similar first


def test_index_agrees_with_exact_search_on_small_data():
    bank, _ = clusters(4000)
    q, _ = clusters(500, seed=1)
    (se, ie), (si, ii) = search(bank, q, 10, "exact"), search(bank, q, 10, "index")
    assert recall(ie, ii) > 0.95
    assert torch.allclose(si[ii == ie], se[ii == ie], atol=1e-5)  # the same neighbours have the same similarity


def test_few_queries_against_a_large_bank_fit_fewer_cells_and_agree_with_exact_search():
    """A test split against every training image and its crops: cells fewer by (Q/N)^(1/3), the same neighbours."""
    bank, _ = clusters(20_000)
    q, _ = clusters(160, seed=1)
    assert build_index(bank).nlist == int(CELLS_PER_ROOT * 20_000 ** 0.5)
    assert build_index(bank, len(q)).nlist == int(CELLS_PER_ROOT * 20_000 ** 0.5 * (160 / 20_000) ** (1 / 3))
    assert recall(search(bank, q, 10, "exact")[1], search(bank, q, 10, "index")[1]) > 0.95


def test_the_graph_from_the_index_leaves_each_node_out_and_agrees_with_exact():
    x = torch.nn.functional.normalize(clusters(3000)[0], dim=1)  # knn_graph takes unit rows
    (je, _), (ji, si) = knn_graph(x, 5, method="exact", shortlist=False), knn_graph(x, 5, method="index")
    assert ji.shape == (3000, 5) and not (ji == torch.arange(3000)[:, None]).any()  # never its own neighbour
    assert recall(je, ji) > 0.95
    assert (si >= 0).all()


def test_knn_and_propagation_accuracy_agree_between_index_and_exact():
    x, y = clusters(3000, noise=1.2)
    q, qy = clusters(600, seed=1, noise=1.2)
    acc = {m: knn_accuracy(x, y, q, qy, method=m) for m in ("exact", "index")}
    assert abs(acc["exact"] - acc["index"]) <= 0.01 and acc["exact"] > 0.5
    labeled = torch.cat([torch.nonzero(y == c).flatten()[:3] for c in range(10)])
    prop = {m: (LabelGraph(x, method=m).predict(labeled, y[labeled], q, 10) == qy).float().mean().item()
            for m in ("exact", "index")}
    assert abs(prop["exact"] - prop["index"]) <= 0.01 and prop["exact"] > 0.5


def test_rows_the_index_cannot_fill_are_searched_exactly():
    bank, _ = clusters(64, centres=2)  # 8 cells of about 8 points: one cell cannot hold 20 neighbours
    sim, idx = search(bank, None, 20, "index", nprobe=1)
    assert (idx >= 0).all() and not (idx == torch.arange(64)[:, None]).any()
    assert recall(idx, search(bank, None, 20, "exact")[1]) == 1.0


def test_drop_self_removes_the_own_id_or_the_last():
    d = np.array([[0.9, 0.8, 0.7], [1.0, 0.5, 0.4]])
    j = np.array([[5, 0, 7], [3, 4, 9]])
    d2, j2 = drop_self(d, j, np.array([0, 1]), 2)
    assert j2.tolist() == [[5, 7], [3, 4]] and d2.tolist() == [[0.9, 0.7], [1.0, 0.5]]


def test_unknown_search_method_is_refused():
    with pytest.raises(ValueError, match="unknown neighbour search"):
        search(torch.randn(10, 4), None, 3, "fast")
