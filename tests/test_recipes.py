"""Recipes: each packaged experiment runs end to end on small files in its dataset's real format, and flags
given beside --recipe override it."""
import dataclasses
import json

import pytest

from selfsup import cli
from selfsup.compare import run_compare
from selfsup.errors import ConfigError
from selfsup.recipes import RECIPES, get

from real_formats import WRITERS

# A few steps of everything: the real protocol's shape (methods, evals, baselines, splits) at toy size.
TINY = {"steps": 2, "batch_size": 16, "monitor_seconds": 0, "backbone_args": {"width": 4}}


@pytest.mark.parametrize("name", RECIPES.names())
def test_recipe_runs_on_real_formats(name, data_root, rng, tmp_path):
    recipe = get(name)
    WRITERS[recipe.dataset](data_root, rng)
    cc = recipe.config("cpu", out=str(tmp_path / name))
    cc = dataclasses.replace(cc, labels_per_class=(1,), val_per_class=1, minutes_per_method=None, pretrain_args=TINY,
                             finetune=dataclasses.replace(cc.finetune, steps=2, eval_every=1), map_points=30,
                             pictures=name == "simclr-cifar10")
    results = run_compare(cc, show_progress=False)
    got = {(r["method"], r["eval"]) for r in results["rows"]}
    assert {(m, e) for m in cc.methods for e in cc.evals} <= got
    assert ("supervised", "finetune") in got and all(0 <= r["accuracy"] <= 1 for r in results["rows"])
    if recipe.dataset == "stl10":  # pretraining read the unlabeled split too, at the CPU size's 48 px
        assert results["splits"]["pretraining"] == {"byol": "train+unlabeled"}
        assert results["config"]["pretrain"]["byol"]["image_size"] == 48
    if cc.pictures:
        page = (tmp_path / name / "report.html").read_text()
        assert "<img" in page and "map" in page


def test_recipe_flags_override(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("selfsup.compare.run_compare", lambda cc, fabric=None: seen.setdefault("cc", cc))
    out = str(tmp_path / "o")
    assert cli.main(["compare", "--recipe", "simclr-cifar10", "--labels-per-class", "5", "--minutes-per-method", "1",
                     "--backbone-args", "width=8", "--finetune-steps", "7", "--out", out]) == 0
    cc, base = seen["cc"], get("simclr-cifar10").config("cpu")
    assert cc.labels_per_class == (5,) and cc.minutes_per_method == 1 and cc.finetune.steps == 7 and cc.out == out
    assert cc.evals == base.evals and cc.methods == base.methods and cc.dataset == "cifar10"  # the rest: the recipe's
    assert cc.base(3).backbone_args == {"width": 8} and cc.base(3).method_args == base.base(3).method_args
    assert cli.main(["compare", "--recipe", "simclr-cifar10", "--size", "gpu", "--out", out]) == 0
    assert seen["cc"] is cc  # setdefault kept the first; the gpu size is checked directly:
    gpu = get("simclr-cifar10").config("gpu").resolved(3)
    assert gpu.pretrain.backbone == "resnet18" and gpu.minutes_per_method is None and gpu.pretrain.epochs == 200


def test_recipe_errors(capsys):
    assert cli.main(["compare", "--recipe", "nope"]) == 2
    assert "unknown recipe 'nope'; choose one of: rotation-mnist" in capsys.readouterr().err
    assert cli.main(["compare", "--size", "gpu"]) == 2
    assert "--size picks a recipe's size" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="sizes cpu, gpu"):
        get("rotation-mnist").config("tpu")


def test_recipes_listed(capsys):
    assert cli.main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in RECIPES.names())
    for n in RECIPES.names():  # each names its source's published numbers for docs/experiments.md
        assert get(n).published and get(n).source
    json.dumps({n: get(n).published for n in RECIPES.names()})


def test_defaults_follow_the_data_and_flags_change_them():
    from selfsup.compare import CompareConfig
    from selfsup.defaults import COLOUR, GREY
    from selfsup.demo import demo_config

    cc = CompareConfig(pretrain_args={"batch_size": 64})
    assert cc.resolved(3).pretrain == COLOUR.override(batch_size=64)
    assert cc.resolved(1).pretrain == GREY.override(batch_size=64)
    assert demo_config(dataset="cifar10", seed=2).resolved(3).pretrain == COLOUR.override(seed=2)
    with pytest.raises(ValueError, match="resolved"):
        cc.method_config("simclr")


def test_every_recipe_is_documented():
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "experiments.md").read_text()
    assert all(f"`{n}`" in page and f"--recipe {n}" in page for n in RECIPES.names())


def test_gpu_recipes_train_each_method_as_its_paper_does():
    """The gpu size takes the papers' optimisation: BYOL with LARS at 0.2 x B/256 and tau 0.996 with its asymmetric
    views, SimSiam with SGD; the cpu size keeps the measured AdamW setup."""
    from selfsup.recipes import get

    gpu = get("cifar100-compare").config("gpu").resolved(3)
    byol, simsiam = gpu.method_config("byol"), gpu.method_config("simsiam")
    assert byol.optimizer == "lars" and byol.lr == pytest.approx(0.2 * byol.batch_size / 256)
    assert byol.method_args == {"tau_base": 0.996, "asymmetric": True} and byol.weight_decay == 1.5e-6
    assert simsiam.optimizer == "sgd" and simsiam.lr == pytest.approx(0.03 * simsiam.batch_size / 256)
    cpu = get("cifar100-compare").config("cpu").resolved(3)
    assert cpu.method_config("byol").optimizer == "adamw"
    from selfsup.methods import METHODS
    from selfsup.papers import PAPERS, _accepted

    assert set(PAPERS) == set(METHODS.names())
    for name, paper in PAPERS.items():  # every paper argument is one the method takes
        assert set(paper.method_args) <= _accepted(name), name


def test_compare_gives_each_method_its_cpu_rate_unless_the_user_set_one():
    from selfsup.compare import CompareConfig

    cc = CompareConfig(dataset="cifar10", methods=("simclr", "dino")).resolved(3)
    assert cc.method_config("simclr").lr == 2e-3 and cc.method_config("dino").lr == 1e-3
    mine = CompareConfig(dataset="cifar10", methods=("simclr", "dino"), pretrain_args={"lr": 3e-3}).resolved(3)
    assert mine.method_config("dino").lr == 3e-3


def test_mocov3_takes_its_papers_vit_setting_on_a_vit():
    from selfsup.config import PretrainConfig
    from selfsup.papers import paper_config

    vit = paper_config(PretrainConfig(method="mocov3", backbone="vit_small", batch_size=512))
    resnet = paper_config(PretrainConfig(method="mocov3", backbone="resnet18", batch_size=512))
    assert (vit.optimizer, vit.method_args["temperature"], vit.weight_decay) == ("adamw", 0.2, 0.1)
    assert vit.lr == pytest.approx(1.5e-4 * 2)
    assert (resnet.optimizer, resnet.method_args["temperature"]) == ("lars", 1.0)


def test_the_whitening_backbone_is_the_colour_default_only_where_it_was_measured_to_win():
    """SimCLR on colour images starts from whiten_cnn with progressive resolution; a comparison that includes a
    method it was not measured to help (BYOL fell to near random weights on it) shares the small CNN; grey images
    keep theirs; the GPU recipes train at full size."""
    from selfsup.compare import CompareConfig
    from selfsup.defaults import COLOUR, COLOUR_SMALL_CNN, GREY, for_channels
    from selfsup.recipes import get

    assert for_channels(3) is COLOUR and COLOUR.backbone == "whiten_cnn" and COLOUR.side_start < 1
    assert for_channels(3, ("simclr", "byol")) is COLOUR_SMALL_CNN and COLOUR_SMALL_CNN.side_start == 1
    assert for_channels(1, ("byol",)) is GREY
    assert CompareConfig(dataset="cifar10", methods=("byol",)).resolved(3).pretrain.backbone == "small_cnn"
    assert get("simclr-cifar10").config("cpu").pretrain.backbone == "whiten_cnn"
    assert get("cifar100-compare").config("cpu").pretrain.backbone == "small_cnn"
    assert get("simclr-cifar10").config("gpu").pretrain.side_start == 1.0
