import pytest
import torch

from selfsup.config import PretrainConfig
from selfsup.data import load
from selfsup.methods import METHODS, MethodBase
from selfsup.monitor import collapse_stats, effective_rank, embedding_std, is_collapsed
from selfsup.train import pretrain


def test_healthy_vs_collapsed():
    g = torch.Generator().manual_seed(0)
    healthy = torch.randn(512, 64, generator=g)
    assert embedding_std(healthy) == pytest.approx(1 / 8, rel=0.1)  # 1/sqrt(d)
    collapsed = torch.ones(512, 64) + 1e-4 * torch.randn(512, 64, generator=g)
    stats = collapse_stats(collapsed)
    assert stats["embed_std_ratio"] < 0.01 and is_collapsed(stats)
    assert not is_collapsed(collapse_stats(healthy))


def test_effective_rank():
    g = torch.Generator().manual_seed(1)
    line = torch.randn(256, 1, generator=g) * torch.randn(1, 32, generator=g)  # rank 1
    assert effective_rank(line) == pytest.approx(1.0, abs=0.01)
    assert effective_rank(torch.randn(1024, 32, generator=g)) > 25


class Collapsing(MethodBase):
    """A method whose embedding is constant: the monitor must notice."""

    n_views = 1

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def loss(self, views):
        h = self.backbone(views[0])
        self.last_embedding = torch.ones_like(h.detach())
        return h.float().pow(2).mean()


def test_loop_warns_and_logs_on_collapse(tmp_path, capsys):
    METHODS.register("test-collapse")(Collapsing)
    try:
        cfg = PretrainConfig(dataset="digits", method="test-collapse", steps=2, batch_size=32,
                             backbone_args={"width": 4}, out=str(tmp_path))
        state = torch.load(pretrain(cfg, load("digits"), show_progress=False), weights_only=False)
    finally:
        METHODS.unregister("test-collapse")
    assert "embeddings have collapsed at step" in capsys.readouterr().err
    last = state["run"]["history"][-1]
    assert last["embed_std"] == 0.0 and "effective_rank" in last


def test_effective_rank_of_a_wide_batch_matches_the_singular_values():
    """A batch narrower than its embedding (DINO's 65,536 outputs) is measured through its Gram matrix: the same
    number as the singular values of the centred batch, computed from the paper's definition."""
    z = torch.randn(16, 300, generator=torch.Generator().manual_seed(0)) @ torch.randn(300, 300)
    s = torch.linalg.svdvals((z - z.mean(0)).double())
    p = s / s.sum()
    want = float(torch.exp(-(p * p.clamp_min(1e-30).log()).sum()))
    assert effective_rank(z) == pytest.approx(want, rel=1e-3)
