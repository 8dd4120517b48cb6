import math

import torch

from selfsup.losses import nt_xent


def nt_xent_reference(z1, z2, t):
    """Loop-based NT-Xent straight from the SimCLR paper's definition."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = len(z)
    half = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + half) % n2
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def test_matches_reference():
    g = torch.Generator().manual_seed(0)
    for n, d, t in [(1, 3, 0.5), (4, 8, 0.2), (7, 5, 1.0)]:
        z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        assert abs(nt_xent(z1, z2, t).item() - nt_xent_reference(z1, z2, t)) < 1e-5


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
