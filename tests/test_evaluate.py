import numpy as np
import pytest
import torch

from selfsup.backbones import BACKBONES
from selfsup.data import ImageSet
from selfsup.evaluate import extract_features, few_label_rows, knn_accuracy, linear_accuracy
from selfsup.evaluate.knn import knn_predict


def blobs(n_per_class=50, classes=10, dim=32, spread=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_separable_features_reach_high_accuracy():
    tr_f, tr_y = blobs(10, seed=0)
    te_f, te_y = blobs(50, seed=0)
    te_f = te_f + 0.05 * torch.randn_like(te_f)
    assert knn_accuracy(tr_f, tr_y, te_f, te_y, k=5) > 0.95
    assert linear_accuracy(tr_f, tr_y, te_f, te_y) > 0.95


def test_shuffled_labels_give_chance():
    tr_f, tr_y = blobs(30, seed=1)
    te_f, te_y = blobs(100, seed=1)
    shuffled = tr_y[torch.randperm(len(tr_y), generator=torch.Generator().manual_seed(0))]
    assert knn_accuracy(tr_f, shuffled, te_f, te_y) < 0.2
    assert linear_accuracy(tr_f, shuffled, te_f, te_y) < 0.2


def test_knn_matches_naive_vote():
    g = torch.Generator().manual_seed(2)
    tr_f, tr_y, te_f = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g), torch.randn(9, 6, generator=g)
    k, t = 7, 0.1
    fast = knn_predict(tr_f, tr_y, te_f, k, t, 3)
    a = tr_f / tr_f.norm(dim=1, keepdim=True)
    for i, q in enumerate(te_f / te_f.norm(dim=1, keepdim=True)):
        sims = [(float(q @ a[j]), int(tr_y[j])) for j in range(40)]
        votes = [0.0] * 3
        for s, c in sorted(sims, reverse=True)[:k]:
            votes[c] += np.exp(s / t)
        assert int(np.argmax(votes)) == int(fast[i])


def test_features_are_frozen_and_eval_mode():
    net = BACKBONES.build("small_cnn", in_channels=1, width=8)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = np.random.default_rng(0).integers(0, 256, (5, 1, 12, 12), dtype=np.uint8)
    f = extract_features(net, x, batch_size=2)
    assert f.shape == (5, 64) and f.dtype == torch.float32
    assert net.training  # restored
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # BN stats untouched
    assert torch.allclose(f[:2], extract_features(net, x[:2]), atol=1e-2)


def test_features_equal_a_plain_forward_pass_in_any_batch():
    """The default batch (128 on a CPU) and the channels-last copy of the weights change the speed, not the
    features: they equal the encoder's own eval-mode output on the [0, 1] images, computed in one plain NCHW pass;
    the caller's module keeps its layout and its training mode."""
    torch.manual_seed(0)
    net = BACKBONES.build("small_cnn", in_channels=3, width=8)
    x = np.random.default_rng(1).integers(0, 256, (600, 3, 16, 16), dtype=np.uint8)
    with torch.no_grad():
        plain = net.eval()(torch.from_numpy(x).float() / 255).float()
    net.train()
    f = extract_features(net, x, precision="fp32")
    assert net.training and all(p.is_contiguous() for p in net.parameters())  # not turned channels-last in place
    assert torch.allclose(f, plain, atol=1e-4) and torch.allclose(extract_features(net, x, batch_size=7,
                                                                                   precision="fp32"), plain, atol=1e-4)


def test_few_label_rows_use_only_the_subset():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.integers(0, 256, (60, 1, 8, 8), dtype=np.uint8)
    train, test = ImageSet("t", x, y), ImageSet("t", x[:9], y[:9])
    net = BACKBONES.build("small_cnn", in_channels=1, width=4)
    rows = few_label_rows(net, train, test, [1, 5], "random-init", seeds=(0, 1))
    assert len(rows) == 2 * 2 * 2
    assert {r["labels_per_class"] for r in rows} == {1, 5} and {r["seed"] for r in rows} == {0, 1}
    assert all(0 <= r["accuracy"] <= 1 for r in rows)


def naive_propagation(labeled, labels, pool, n_classes, k, alpha, gamma):
    """Label spreading written out with dense matrices and loops, solved exactly, to check the sparse CG version."""
    x = torch.cat([labeled, pool]).double()
    x = x / x.norm(dim=1, keepdim=True)
    n = len(x)
    w = torch.zeros(n, n, dtype=torch.double)
    for i in range(n):
        sims = sorted(((float(x[i] @ x[j]), j) for j in range(n) if j != i), reverse=True)[:k]
        for s, j in sims:
            w[i, j] += max(s, 0.0) ** gamma
    w = w + w.T
    d = torch.diag(w.sum(1) ** -0.5)
    y = torch.zeros(n, n_classes, dtype=torch.double)
    for i, c in enumerate(labels.tolist()):
        y[i, c] = 1.0 / int((labels == c).sum())
    z = torch.linalg.solve(torch.eye(n, dtype=torch.double) - alpha * d @ w @ d, y)
    return z / z.sum(1, keepdim=True)


def test_propagation_matches_dense_reference():
    from selfsup.evaluate.propagate import propagate

    g = torch.Generator().manual_seed(3)
    labeled, labels, pool = torch.randn(6, 5, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(30, 5, generator=g)
    _, scores = propagate(labeled, labels, pool, 3, k=4, alpha=0.9, gamma=3.0)
    ref = naive_propagation(labeled, labels, pool, 3, 4, 0.9, 3.0)
    assert torch.allclose(scores.double(), ref, atol=1e-4)


def test_propagation_follows_the_unlabeled_structure_where_knn_cannot():
    """Two arcs of the unit circle with a gap between them, one label at the start of each: the nearest label
    is the wrong one for the far end of each arc, but the unlabeled points join each arc into one chain."""
    from selfsup.evaluate import propagate_accuracy

    g = torch.Generator().manual_seed(0)

    def arcs(n):
        t = 0.1 + 0.8 * torch.rand(2 * n, generator=g) + torch.arange(2).repeat_interleave(n)  # in half turns
        return torch.stack([(t * torch.pi).cos(), (t * torch.pi).sin()], 1), torch.arange(2).repeat_interleave(n)

    pool, _ = arcs(400)
    test, test_y = arcs(200)
    at = torch.tensor([0.12, 1.12]) * torch.pi
    labeled, labels = torch.stack([at.cos(), at.sin()], 1), torch.tensor([0, 1])
    knn = knn_accuracy(labeled, labels, test, test_y, k=1)
    prop = propagate_accuracy(labeled, labels, test, test_y, pool, k=10)
    assert prop > 0.97 and knn < 0.8, (prop, knn)


def test_few_label_rows_propagate_rows():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.integers(0, 256, (60, 1, 8, 8), dtype=np.uint8)
    net = BACKBONES.build("small_cnn", in_channels=1, width=4)
    rows = few_label_rows(net, ImageSet("t", x, y), ImageSet("t", x[:9], y[:9]), [1, 2], "r", evals=("propagate",),
                          seeds=(0, 1), pool_size=40)
    assert [(r["eval"], r["labels_per_class"], r["seed"]) for r in rows] == \
        [("propagate", n, s) for s in (0, 1) for n in (1, 2)]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)


def test_few_label_rows_propagation_shares_one_graph(monkeypatch):
    """The graph is built once over the pool for every label subset and seed: each row equals propagating over
    the labeled images plus the rest of the pool, built afresh for that subset."""
    from selfsup.evaluate import label_subset, propagate_accuracy, unlabeled_pool, validation_split

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 30)
    x = np.clip(rng.normal(40 + 60 * y[:, None, None, None], 30, (90, 1, 8, 8)), 0, 255).astype(np.uint8)
    train, test = ImageSet("t", x, y), ImageSet("t", x[::3], y[::3])
    net = BACKBONES.build("small_cnn", in_channels=1, width=4)
    import selfsup.evaluate as ev

    calls = []
    monkeypatch.setattr(ev, "extract_features", lambda *a, **k: calls.append(1) or extract_features(*a, **k))
    rows = few_label_rows(net, train, test, [1, 3], "r", evals=("propagate",), seeds=(0, 1), val_per_class=5)
    assert len(rows) == 4 and len(calls) == 2  # the nodes and the test split, once for both seeds
    val_idx = validation_split(y, 5)
    pool = unlabeled_pool(len(y), None, val_idx)
    assert len(pool) == 75 and not set(pool) & set(val_idx)
    test_f = extract_features(net, test.images)
    for row in rows:
        idx = label_subset(y, row["labels_per_class"], row["seed"], val_idx)
        f, pool_f = (extract_features(net, x[i]) for i in (idx, np.setdiff1d(pool, idx)))
        fresh = propagate_accuracy(f, torch.from_numpy(y[idx]), test_f, torch.from_numpy(test.labels), pool_f)
        assert abs(row["accuracy"] - fresh) <= 1 / len(test) + 1e-4  # another node order: one near-tie may flip


def test_one_encoder_is_embedded_once_across_evaluations_and_baselines(monkeypatch):
    """A shared FrozenCache: the frozen evaluations, propagation and a baseline built again from the same random
    weights (another module, equal weights) embed the training images once for the graph, and give the rows that
    separate calls without it give; other weights are embedded anew."""
    import copy

    import selfsup.evaluate as ev
    from selfsup.evaluate import FrozenCache

    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(3), 30)
    x = np.clip(rng.normal(40 + 60 * y[:, None, None, None], 30, (90, 1, 8, 8)), 0, 255).astype(np.uint8)
    train, test = ImageSet("t", x, y), ImageSet("t", x[::3], y[::3])
    net = BACKBONES.build("small_cnn", in_channels=1, width=4)
    alone = [r for e in ("knn", "propagate") for r in few_label_rows(net, train, test, [1, 3], "r", (e,), val_per_class=5)]
    rows_of = lambda rows: [(r["eval"], r["labels_per_class"], r["accuracy"]) for r in rows]  # noqa: E731
    calls = []
    monkeypatch.setattr(ev, "extract_features", lambda *a, **k: calls.append(len(k.get("rows") if k.get("rows")
                                                                                  is not None else a[1])) or
                        extract_features(*a, **k))
    cache = FrozenCache()
    shared = [r for e in ("knn", "propagate") for r in few_label_rows(net, train, test, [1, 3], "r", (e,),
                                                                      val_per_class=5, frozen=cache)]
    assert rows_of(shared) == rows_of(alone)
    assert calls == [11, 30, 75]  # knn: the 11 images of both subsets, the test split; propagation: the pool
    again = few_label_rows(copy.deepcopy(net), train, test, [1, 3], "r", ("propagate",), val_per_class=5, frozen=cache)
    assert rows_of(again) == rows_of(alone)[2:] and calls == [11, 30, 75]  # the same weights: nothing embedded
    other = BACKBONES.build("small_cnn", in_channels=1, width=4)
    few_label_rows(other, train, test, [1], "o", ("propagate",), val_per_class=5, frozen=cache)
    assert calls == [11, 30, 75, 75, 30]


def test_predicting_the_same_queries_again_searches_once(monkeypatch):
    """LabelGraph.predict keeps the queries' nearest nodes: a second label subset gives what a graph built afresh
    gives, without a second search."""
    import selfsup.evaluate.propagate as prop

    f, y = blobs(20, classes=4, dim=8, spread=0.8, seed=3)
    q, qy = blobs(10, classes=4, dim=8, spread=0.8, seed=4)
    searches = []
    real = prop.search
    monkeypatch.setattr(prop, "search", lambda *a, **k: searches.append(1) or real(*a, **k))
    graph = prop.LabelGraph(f)
    built = len(searches)
    for at in (torch.tensor([0, 20, 40, 60]), torch.tensor([1, 2, 21, 41, 61, 62])):
        cached = graph.predict(at, y[at], q, 4)
        assert torch.equal(cached, prop.LabelGraph(f).predict(at, y[at], q, 4))
    assert len(searches) - built == 1 + 2  # one search for the cached graph's queries, one for each fresh graph


def test_graphs_from_one_neighbour_search_equal_graphs_built_alone():
    from selfsup.evaluate.propagate import LabelGraph

    g = torch.Generator().manual_seed(5)
    x, labels = torch.randn(80, 6, generator=g), torch.tensor([0, 1, 2, 3])
    for k, graph in LabelGraph.for_each_k(x, (3, 5, 10)).items():
        alone = LabelGraph(x, k)
        assert torch.equal(graph.s.col_indices(), alone.s.col_indices())
        assert torch.equal(graph.s.crow_indices(), alone.s.crow_indices())
        assert torch.allclose(graph.spread(torch.arange(4), labels, 4), alone.spread(torch.arange(4), labels, 4))


def test_shortlisted_neighbours_equal_the_exact_search():
    """Ranking in bfloat16 and choosing among 2k + 8 candidates in float32 finds the float32 search's neighbours."""
    from selfsup.evaluate.propagate import knn_graph

    x, _ = blobs(n_per_class=200, dim=64)
    x = torch.nn.functional.normalize(x, dim=1)
    (ja, sa), (jb, sb) = knn_graph(x, 5, chunk=300, shortlist=False), knn_graph(x, 5, chunk=300, shortlist=True)
    assert (ja == jb).float().mean() > 0.999
    same = ja == jb
    assert torch.allclose(sa[same], sb[same], atol=1e-6)  # the similarities are float32's
    assert torch.allclose(sa, sb, atol=1e-3)  # where they differ, the two are near-ties
    assert not (jb == torch.arange(len(x))[:, None]).any()  # never its own neighbour


def test_validation_adapts_to_the_labels_there_are():
    from selfsup.errors import DataError
    from selfsup.evaluate import plan_validation

    labels = np.repeat(np.arange(3), [30, 20, 13])
    assert plan_validation(labels, (3,)).to_dict()["kind"] == "fixed"  # 10 beside 3: every class has 13
    v = plan_validation(labels, (5,))  # class 2 has 13: 8 to spare
    assert (v.per_class, v.kind) == (8, "fewer") and "class 2 has 13" in v.why
    assert plan_validation(labels, (13,)).kind == "none"
    with pytest.raises(DataError, match="--labels-per-class"):
        plan_validation(labels, (14,))
    with pytest.raises(DataError, match="--val-per-class 10"):  # named only because the user set it
        plan_validation(labels, (5,), 10, given=True)
    picked = np.concatenate([np.flatnonzero(labels == c)[:k] for c, k in ((0, 8), (1, 8), (2, 4))])
    assert plan_validation(labels, (), label_set=picked).per_class == 1  # a quarter of the smallest class


def test_a_given_label_set_trains_on_exactly_those_images():
    from selfsup.data import load
    from selfsup.evaluate import few_label_rows

    train, test = load("digits", "train"), load("digits", "test")
    torch.manual_seed(0)
    enc = BACKBONES.build("small_cnn", in_channels=1, width=4)
    idx = np.sort(np.concatenate([np.flatnonzero(train.labels == c)[:2] for c in range(10)]))
    rows = few_label_rows(enc, train, test, [], "x", ("knn", "linear"), (0, 1), label_sets={"picks": idx})
    assert {r["labels"] for r in rows} == {20} and {r["labels_per_class"] for r in rows} == {"picks"}
    assert len({r["accuracy"] for r in rows if r["eval"] == "knn"}) == 1  # the same set for every seed


def test_fp16_evaluation_training_scales_its_loss():
    """Under fp16 autocast (the choice on GPUs without native bf16) a gradient below fp16's smallest number
    (6e-8) underflows to 0 unless the loss is scaled first: fine-tuning's and semi-supervised training's step
    (`TrainStep`) carries a gradient scaler there, and the weights move; a plain backward leaves them."""
    from selfsup.engine import TrainStep

    def moved(scaled: bool) -> bool:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        before = model[0].weight.detach().clone()
        amp = TrainStep(torch.device("cpu"), precision="16-mixed")
        assert amp.scaler is not None
        with amp.autocast():
            loss = model(torch.rand(8, 16)).float().sum() * 1e-9
        if scaled:
            amp.step(loss, opt)
        else:
            opt.zero_grad()
            loss.backward()
            opt.step()
        return not torch.equal(before, model[0].weight.detach())

    assert moved(scaled=True) and not moved(scaled=False)


def test_class_mass_follows_the_papers_decision_rule():
    """Zhu, Ghahramani & Lafferty (2003), section 4: node i takes argmax_k q_k f_ik / sum_j f_jk for a class prior q.
    Written as that loop, against `class_mass`'s argmax, for an equal prior over the labeled classes and another."""
    from selfsup.evaluate.propagate import class_mass

    g = torch.Generator().manual_seed(0)
    f = torch.rand(200, 4, generator=g) ** 3
    f[:, 1] *= 5  # one class with far more mass: the plain argmax would give it most nodes
    f[:, 3] = 0  # a class without labels
    for q in ([1.0, 1.0, 1.0, 0.0], [0.5, 0.2, 0.3, 0.0]):
        z = class_mass(f, torch.tensor(q))
        expected = []
        for i in range(len(f)):
            ratios = [q[k] * float(f[i, k]) / float(f[:, k].sum()) if q[k] else -1.0 for k in range(4)]
            expected.append(max(range(4), key=lambda k: ratios[k]))
        assert z.argmax(1).tolist() == expected
        assert torch.allclose(z.sum(1), torch.ones(len(f))) and (z[:, 3] == 0).all()
    equal = class_mass(f, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert (f.argmax(1) == 1).float().mean() > 0.6 and (equal.argmax(1) == 1).float().mean() < 0.45


def test_propagation_balances_class_masses_only_for_as_many_labels_per_class():
    """An N-per-class label set is voted on class-mass normalised scores; a set with unequal counts per class
    (whose counts might say how common each class is) is voted on the scores as spread."""
    import torch.nn.functional as F

    from selfsup.evaluate import propagate as prop

    g = torch.Generator().manual_seed(1)
    f, q = torch.randn(300, 8, generator=g), torch.randn(50, 8, generator=g)
    graph = prop.LabelGraph(f)
    for at, y, balanced in [(torch.arange(6), torch.tensor([0, 0, 1, 1, 2, 2]), True),
                            (torch.arange(5), torch.tensor([0, 0, 1, 1, 2]), False)]:
        scores = graph.spread(at, y, 3)
        plain = prop.vote(graph.nodes, scores, F.normalize(q, dim=1))
        massed = prop.vote(graph.nodes, prop.class_mass(scores, torch.ones(3)), F.normalize(q, dim=1))
        assert not torch.equal(plain, massed)  # the case tells the two apart
        assert torch.equal(graph.predict(at, y, F.normalize(q, dim=1), 3), massed if balanced else plain)
        assert torch.equal(graph.predict(at, y, F.normalize(q, dim=1), 3, balance=False), plain)
