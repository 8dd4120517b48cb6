import numpy as np
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
