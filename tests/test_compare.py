"""Fine-tuning, baselines, seeds and `selfsup compare` (tiny budgets on digits)."""
import json
from statistics import mean, stdev

import numpy as np
import pytest
import torch

from selfsup.backbones import BACKBONES
from selfsup.compare import CompareConfig, run_compare
from selfsup.config import PretrainConfig
from selfsup.data import ImageSet, load
from selfsup.errors import ConfigError
from selfsup.evaluate import FinetuneConfig, aggregate, few_label_rows, label_subset, validation_split

FAST_FT = FinetuneConfig(steps=40, batch_size=64, eval_every=10, patience=2)


@pytest.fixture(scope="module")
def digits():
    return load("digits", "train"), load("digits", "test")


def test_label_subsets_never_overlap_validation(digits):
    y = digits[0].labels
    val = validation_split(y, 10)
    assert np.bincount(y[val]).tolist() == [10] * 10
    for seed in range(5):
        for n in (1, 10, 50):
            sub = label_subset(y, n, seed, val)
            assert not set(sub) & set(val) and np.bincount(y[sub]).tolist() == [n] * 10
    assert np.array_equal(validation_split(y, 10), val)  # fixed, whatever the evaluation seed


def test_finetune_early_stopping_never_sees_the_test_split(digits):
    """Scrambling the test labels changes test accuracy but not one thing about training or stopping."""
    train, test = digits
    scrambled = ImageSet("digits", test.images, np.roll(test.labels, 1))
    runs = []
    def fresh(seed):
        torch.manual_seed(seed)
        return BACKBONES.build("small_cnn", in_channels=1, width=8)

    for t in (test, scrambled):
        runs.append(few_label_rows(fresh, train, t, [5], "supervised", ("finetune",), (0,), finetune=FAST_FT,
                                   encoder_lr_scale=1.0))
    (a,), (b,) = runs
    assert (a["best_step"], a["val_accuracy"]) == (b["best_step"], b["val_accuracy"])
    assert a["accuracy"] != b["accuracy"]


def test_supervised_from_scratch_learns(digits):
    train, test = digits
    rows = few_label_rows(lambda s: BACKBONES.build("small_cnn", in_channels=1, width=16), train, test, [10],
                          "supervised", ("finetune",), (0,), finetune=FinetuneConfig(steps=150, eval_every=15), encoder_lr_scale=1.0)
    assert rows[0]["accuracy"] > 0.6, rows  # chance is 0.1


def test_aggregate_mean_and_std_over_seeds():
    rows = [{"method": "m", "eval": "knn", "labels_per_class": 10, "accuracy": a, "seed": s} for s, a in enumerate([0.5, 0.7, 0.9])]
    rows.append({"method": "m", "eval": "knn", "labels_per_class": 1, "accuracy": 0.3, "seed": 0})
    out = {r["labels_per_class"]: r for r in aggregate(rows)}
    assert out[10]["accuracy"] == pytest.approx(mean([0.5, 0.7, 0.9]))
    assert out[10]["std"] == pytest.approx(stdev([0.5, 0.7, 0.9]), abs=1e-4)
    assert out[10]["seeds"] == [0, 1, 2] and out[1]["seed"] == 0 and "std" not in out[1]


def test_headline_says_when_random_weights_do_as_well():
    from selfsup.compare import headline

    def rows(random_linear):
        acc = {("simclr", "knn"): 0.60, ("simclr", "linear"): 0.70, ("supervised", "finetune"): 0.50,
               ("random-init", "knn"): 0.30, ("random-init", "linear"): random_linear}
        return [{"method": m, "eval": e, "labels_per_class": 10, "accuracy": a} for (m, e), a in acc.items()]

    text = headline(rows(0.40), (1, 10))["text"]
    assert "simclr with linear wins: 0.700" in text and "20.0 points ahead of supervised from scratch" in text
    assert text.endswith("Frozen random weights reach 0.400 at best (linear).")
    text = headline(rows(0.75), (1, 10))["text"]  # random weights beat the pretrained encoder: the headline says so
    assert text.endswith("Frozen random weights reach 0.750 at best (linear), as much as pretraining: it did not help here.")


def tiny_compare(tmp_path, **kw):
    base = PretrainConfig(dataset="digits", steps=20, batch_size=64, backbone_args={"width": 8}, monitor_seconds=0.5)
    return CompareConfig(**({"dataset": "digits", "methods": ("simclr",), "labels_per_class": (1, 5), "seeds": (0, 1),
                             "minutes_per_method": None, "out": str(tmp_path / "cmp"), "pretrain": base,
                             "finetune": FAST_FT} | kw))


def test_compare_writes_results_and_report_and_skips_done_work(tmp_path, capsys, monkeypatch):
    import selfsup.compare as compare_module
    import selfsup.evaluate as evaluate_module

    trained = []
    for module in (compare_module, evaluate_module):  # the rows' fine-tuning and the pictures' supervised encoder
        real = module.train_classifier
        monkeypatch.setattr(module, "train_classifier", lambda *a, real=real, **k: trained.append(1) or real(*a, **k))
    cc = tiny_compare(tmp_path)
    res = run_compare(cc, show_progress=False)
    assert len(trained) == 8  # 2 counts x 2 seeds for simclr and supervised; the pictures reuse supervised's at 5
    err = capsys.readouterr().err
    assert "pretraining simclr" in err and "evaluating supervised" in err
    saved = json.loads((tmp_path / "cmp" / "results.json").read_text())
    keys = {(r["method"], r["eval"], r["labels_per_class"]) for r in saved["rows"]}
    expected = {("simclr", e, n) for e in ("knn", "linear", "propagate", "finetune") for n in (1, 5)}
    expected |= {("random-init", e, n) for e in ("knn", "linear", "propagate") for n in (1, 5)} | {("supervised", "finetune", n) for n in (1, 5)}
    assert keys == expected
    assert all("std" in r and r["seeds"] == [0, 1] for r in saved["rows"])
    assert len(saved["rows_per_seed"]) == 2 * len(expected)
    assert (tmp_path / "cmp" / "report.html").exists() and res["headline"]["labels_per_class"] == 5
    page = (tmp_path / "cmp" / "report.html").read_text()
    for name in ("simclr", "random-init", "supervised"):
        assert f'id="pictures-{name}"' in page and (tmp_path / "cmp" / "maps" / f"{name}.html").exists()
    assert page.count("<figcaption>first-layer filters") == 3 and page.count("<figcaption>augmented views") == 1  # views: methods only
    map_time = (tmp_path / "cmp" / "maps" / "simclr.png").stat().st_mtime
    n_cached = len((tmp_path / "cmp" / "evals.jsonl").read_text().splitlines())

    again = run_compare(cc, show_progress=False)  # everything is reused
    err = capsys.readouterr().err
    assert len(trained) == 9  # but the pictures' supervised encoder, which no cached row holds
    assert "pretraining" not in err and "evaluating" not in err
    assert again["pretrain"]["simclr"]["reused"] and again["rows"] == res["rows"]
    assert len((tmp_path / "cmp" / "evals.jsonl").read_text().splitlines()) == n_cached
    assert (tmp_path / "cmp" / "maps" / "simclr.png").stat().st_mtime == map_time  # the map is reused too

    run_compare(tiny_compare(tmp_path, labels_per_class=(1, 5, 10)), show_progress=False)  # only 10 is new
    err = capsys.readouterr().err
    assert "pretraining" not in err
    assert all("[10]" in line for line in err.splitlines() if line.startswith("evaluating"))


def test_compare_rejects_bad_names(tmp_path):
    for kw, msg in [({"baselines": ("oracle",)}, "unknown baseline"), ({"evals": ("svm",)}, "unknown eval"),
                    ({"methods": ("moco",)}, "unknown method"), ({"methods": (), "baselines": ()}, "nothing to compare")]:
        with pytest.raises(ConfigError, match=msg):
            tiny_compare(tmp_path, **kw).validate()


def test_evaluation_runs_on_the_runs_device(tmp_path, monkeypatch):
    """`compare` and `eval` hand evaluation the device the run trains on (a GPU where torch sees one), or --device:
    the baselines, fine-tuning and semi-supervised training must not fall back to the CPU the checkpoint loads on."""
    from selfsup import compare
    from selfsup.engine import eval_device
    from selfsup.evaluate.labels import label_plan

    seen = []
    row = {"method": "random", "eval": "knn", "labels_per_class": 1, "seed": 0, "accuracy": 0.0}
    monkeypatch.setattr(compare, "few_label_rows", lambda *a, **k: seen.append(k.get("device")) or [row])
    train = load("digits", "train")
    plan = label_plan(train, (1,), None, None, False)
    subjects = {"random": (BACKBONES.build("small_cnn", in_channels=1, width=4), ("knn",), {}, "r")}
    compare.evaluate_all(CompareConfig(dataset="digits", device="cuda:1"), subjects, train, load("digits", "test"),
                         compare.EvalCache(tmp_path / "evals.jsonl"), plan)
    assert seen == [torch.device("cuda:1")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert eval_device("auto", "auto") == torch.device("cuda") and eval_device(None, "cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert eval_device("auto", "auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        eval_device("tpu7")
    with pytest.raises(ConfigError, match="mps is not supported"):
        PretrainConfig(accelerator="mps", steps=1).validate()
