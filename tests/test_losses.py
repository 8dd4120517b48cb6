import math

import pytest
import torch

from selfsup.losses import nt_xent


def nt_xent_reference(z1, z2, t, decoupled=False):
    """Loop-based NT-Xent straight from the SimCLR paper's definition; `decoupled`: DCL's (Yeh et al. 2022, eq. 6),
    whose denominator leaves out the positive pair as well."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = len(z)
    half = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + half) % n2
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i and not (decoupled and k == j))
        total += -math.log(num / den)
    return total / n2


def test_matches_reference():
    g = torch.Generator().manual_seed(0)
    for n, d, t in [(1, 3, 0.5), (4, 8, 0.2), (7, 5, 1.0)]:
        z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        assert abs(nt_xent(z1, z2, t).item() - nt_xent_reference(z1, z2, t)) < 1e-5


def test_decoupled_matches_reference():
    g = torch.Generator().manual_seed(3)
    for n, d, t in [(2, 3, 0.5), (4, 8, 0.2), (6, 5, 1.0)]:
        z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        assert abs(nt_xent(z1, z2, t, decoupled=True).item() - nt_xent_reference(z1, z2, t, decoupled=True)) < 1e-5
        assert nt_xent(z1, z2, t, decoupled=True) < nt_xent(z1, z2, t)  # one term fewer in every denominator
        # two processes, each its half of the anchors against both halves' keys: the mean is the one-process loss
        h = n // 2
        both = sum(nt_xent(z1[r * h:(r + 1) * h], z2[r * h:(r + 1) * h], t, gathered=(z1, z2), rank=r,
                           decoupled=True) for r in (0, 1)) / 2
        assert abs(both.item() - nt_xent_reference(z1, z2, t, decoupled=True)) < 1e-5


def test_perfect_pairs_beat_random_and_gradient_flows():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(16, 32, generator=g)
    aligned = nt_xent(z, z + 0.01 * torch.randn(16, 32, generator=g), 0.1)
    random = nt_xent(z, torch.randn(16, 32, generator=g), 0.1)
    assert aligned < random
    z1 = torch.randn(4, 6, requires_grad=True)
    nt_xent(z1, torch.randn(4, 6), 0.2).backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()


def test_bf16_inputs_computed_in_fp32():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    assert nt_xent(z1.bfloat16(), z2.bfloat16(), 0.2).dtype == torch.float32


# --- The losses of MoCo, Barlow Twins, VICReg, DINO and MAE against loops over the papers' definitions -------------

def _cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_info_nce_matches_loop():
    from selfsup.losses import info_nce

    q, k, queue, t = _rand(5, 4), _rand(5, 4, seed=1), _rand(7, 4, seed=2), 0.3
    queue = queue / queue.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(5):
        logits = [_cos(q[i], k[i]) / t] + [_cos(q[i], queue[j]) / t for j in range(7)]
        total += -logits[0] + math.log(sum(math.exp(v) for v in logits))
    assert info_nce(q, k, queue, t).item() == pytest.approx(total / 5, rel=1e-5)


def test_batch_info_nce_matches_loop_with_an_offset():
    from selfsup.losses import batch_info_nce

    q, keys, t, offset = _rand(3, 4), _rand(6, 4, seed=1), 0.5, 3  # this process's 3 queries are rows 3..5
    total = 0.0
    for i in range(3):
        logits = [_cos(q[i], keys[j]) / t for j in range(6)]
        total += -logits[offset + i] + math.log(sum(math.exp(v) for v in logits))
    assert batch_info_nce(q, keys, t, offset).item() == pytest.approx(total / 3 * 2 * t, rel=1e-5)


def _standardized(z):
    n, d = z.shape
    out = torch.zeros_like(z)
    for j in range(d):
        col = [float(z[b, j]) for b in range(n)]
        mu = sum(col) / n
        var = sum((c - mu) ** 2 for c in col) / n
        for b in range(n):
            out[b, j] = (col[b] - mu) / math.sqrt(var + 1e-5)
    return out


def test_barlow_twins_matches_loop():
    from selfsup.losses import barlow_twins_loss

    z1, z2, lam = _rand(6, 3), _rand(6, 3, seed=1), 0.1
    a, b = _standardized(z1), _standardized(z2)
    total = 0.0
    for i in range(3):
        for j in range(3):
            c = sum(float(a[n, i] * b[n, j]) for n in range(6)) / 6
            total += (1 - c) ** 2 if i == j else lam * c ** 2
    assert barlow_twins_loss(z1, z2, lam).item() == pytest.approx(total, rel=1e-5)


def test_vicreg_terms_match_loop():
    """From the paper (Bardes et al. 2022, eqs. 1-6) and the authors' code: s = mean squared distance between the
    views; v(Z) = mean over dimensions of max(0, 1 - sqrt(Var + eps)), averaged over the two branches; c(Z) = sum of
    the squared off-diagonal covariances / d, for each branch, summed (c(Z) + c(Z'))."""
    from selfsup.losses import vicreg_terms

    z1, z2 = _rand(5, 3) * 0.3, _rand(5, 3, seed=1) * 2
    n, d = z1.shape
    inv = sum(float(z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)
    var = cov = 0.0
    for z in (z1, z2):
        mu = [sum(float(z[b, j]) for b in range(n)) / n for j in range(d)]
        c = [[sum((float(z[b, i]) - mu[i]) * (float(z[b, j]) - mu[j]) for b in range(n)) / (n - 1) for j in range(d)]
             for i in range(d)]
        var += sum(max(0.0, 1 - math.sqrt(c[j][j] + 1e-4)) for j in range(d)) / d / 2
        cov += sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    got = [t.item() for t in vicreg_terms(z1, z2)]
    assert got == pytest.approx([inv, var, cov], rel=1e-5)


def test_dino_loss_matches_loop_and_skips_the_same_crop():
    from selfsup.losses import dino_loss

    student = [_rand(4, 5, seed=s) for s in range(4)]  # 2 global + 2 local crops
    teacher = [_rand(4, 5, seed=10 + s) for s in range(2)]
    center, ts, tt = _rand(5, seed=20) * 0.1, 0.1, 0.04
    total, pairs = 0.0, 0
    for j, t in enumerate(teacher):
        for i, s in enumerate(student):
            if i == j:
                continue
            for b in range(4):
                pt = [math.exp((float(t[b, k]) - float(center[k])) / tt) for k in range(5)]
                ps = [math.exp(float(s[b, k]) / ts) for k in range(5)]
                total += -sum(pt[k] / sum(pt) * math.log(ps[k] / sum(ps)) for k in range(5)) / 4
            pairs += 1
    assert pairs == 6
    assert dino_loss(student, teacher, center, ts, tt).item() == pytest.approx(total / pairs, rel=1e-4)


def test_masked_patch_loss_counts_only_hidden_patches():
    from selfsup.losses import masked_patch_loss

    pred, target = _rand(2, 3, 4), _rand(2, 3, 4, seed=1)
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    for norm in (False, True):
        total, count = 0.0, 0
        for b in range(2):
            for p in range(3):
                if mask[b, p]:
                    t = [float(v) for v in target[b, p]]
                    if norm:
                        mu = sum(t) / 4
                        sd = math.sqrt(sum((v - mu) ** 2 for v in t) / 3 + 1e-6)
                        t = [(v - mu) / sd for v in t]
                    total += sum((float(pred[b, p, k]) - t[k]) ** 2 for k in range(4)) / 4
                    count += 1
        assert masked_patch_loss(pred, target, mask, norm).item() == pytest.approx(total / count, rel=1e-5)
        changed = pred.clone()
        changed[0, 1] += 100  # a visible patch's prediction does not count
        assert masked_patch_loss(changed, target, mask, norm).item() == pytest.approx(total / count, rel=1e-5)
