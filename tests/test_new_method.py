"""A new method is one file in methods/ and nothing else: this file registers a throwaway one, the worked example
of docs/architecture.md, and trains, evaluates and maps it through the command line like any other."""
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from selfsup import heads
from selfsup.cli import main
from selfsup.methods import METHODS, MethodBase


SEEN = {"sizes": set(), "hooks": 0}  # what the loop handed the method (for the tests below)


class MultiCropCosine(MethodBase):
    """Two full views and two small crops; every view's projection is pulled toward the mean of the full views'."""

    n_views = 4

    def __init__(self, backbone, dim: int = 16, small: int = 6):
        super().__init__()
        self.backbone, self.small = backbone, small
        self.projector = heads.mlp((backbone.out_dim, 32, dim))
        self.scale = torch.nn.Parameter(torch.ones(dim, dim))  # 2-D, but kept out of weight decay below

    def views(self, base):
        small = replace(base, size=self.small, crop_scale=(0.2, 0.5))
        return [base, base, small, small]

    def no_weight_decay(self) -> set[str]:
        return {"scale"}

    def loss(self, views):
        SEEN["sizes"] |= {v.shape[-1] for v in views}
        z = [F.normalize(self.projector(self.backbone(v)) @ self.scale, dim=1) for v in views]  # each (B, dim)
        anchor = F.normalize((z[0] + z[1]).detach(), dim=1)
        self.last_embedding = z[0].detach()
        agreement = torch.stack([(anchor * zi).sum(1).mean() for zi in z]).mean()
        self.measure(agreement=agreement)
        return -agreement

    clip_grad = 1.0  # the loop clips

    def before_optimizer_step(self, progress):
        SEEN["hooks"] += 1


@pytest.fixture
def registered():
    METHODS.register("test-multicrop", "throwaway: multi-crop cosine")(MultiCropCosine)
    yield
    METHODS.unregister("test-multicrop")


def test_a_method_from_outside_trains_evaluates_and_maps(registered, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["pretrain", "--dataset", "digits", "--method", "test-multicrop", "--steps", "6", "--batch-size", "32",
                 "--backbone-args", "width=4", "--monitor-seconds", "0", "--image-size", "10", "--out", str(run)])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "agreement" in metrics[-1] and "embed_std_ratio" in metrics[-1]  # its metric and the collapse monitor
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["encoder"]["image_size"] == 10
    assert main(["eval", "--checkpoint", str(run), "--labels-per-class", "2"]) == 0
    assert "knn@2" in capsys.readouterr().out
    assert main(["embed", "--checkpoint", str(run), "--projection", "pca", "--out", str(tmp_path / "map.png")]) == 0
    assert (tmp_path / "map.png").stat().st_size > 1000


def test_its_views_groups_and_hooks_reach_the_loop(registered, tmp_path):
    from selfsup.config import PretrainConfig
    from selfsup.data import load
    from selfsup.engine import make_fabric
    from selfsup.train import RunDir, build, pretrain

    cfg = PretrainConfig(dataset="digits", method="test-multicrop", steps=3, batch_size=32, backbone_args={"width": 4},
                         monitor_seconds=0, out=str(tmp_path))
    SEEN.update(sizes=set(), hooks=0)
    pretrain(cfg, load("digits"), show_progress=False)
    assert SEEN == {"sizes": {8, 6}, "hooks": 3}  # full 8 px views and 6 px crops; the hook ran before each step
    parts = build(cfg, load("digits"), make_fabric("cpu"), RunDir(tmp_path / "again"), False)
    assert [v.size for v in parts.views] == [None, None, 6, 6]
    decay = {id(p) for g in parts.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(parts.method.scale) not in decay and id(parts.method.projector[0].weight) in decay
