"""Evaluation takes features and labels and returns numbers; `few_label_rows` ties it to encoders and splits.

Splits of the labeled training data: a fixed validation split (`val_per_class` per class, its own seed)
for early stopping, and per-seed label subsets drawn from the rest. The test split is only ever scored.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import mean, stdev
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data import ImageSet, few_labels
from ..data.splits import class_count
from ..registry import Registry
from .features import extract_features, tensor_of
from .finetune import FinetuneConfig, accuracy, train_classifier
from .semisup import SemisupConfig, train_semisup
from .knn import knn_accuracy
from .linear import linear_accuracy
from .propagate import LabelGraph, propagate_accuracy



@dataclass(frozen=True)
class Evaluation:
    """How an evaluation runs: on frozen features of the labeled subset (`fn(train_f, train_y, test_f, test_y)`),
    over the graph of every unlabeled training image (`graph`), by training the encoder on the labels
    (`trained`), or by training it on the labels and the unlabeled images, starting from the graph (`semi`)."""

    kind: str  # frozen | graph | trained | semi
    fn: Callable | None = None

    @property
    def unlabeled(self) -> bool:
        """Whether it reads the unlabeled training images (never their labels), beside the few labeled ones."""
        return self.kind in ("graph", "semi")

    @property
    def needs_graph(self) -> bool:
        return self.kind in ("graph", "semi")

    @property
    def frozen_features(self) -> bool:
        """Whether it starts from the frozen encoder's features of the training images (all but `trained`)."""
        return self.kind != "trained"


EVALS: Registry = Registry("evaluation", sort=False)  # registration order is the order of columns in tables
EVALS.register("knn", "weighted kNN (k 20, cosine) on frozen features")(Evaluation("frozen", knn_accuracy))
EVALS.register("linear", "logistic regression (L-BFGS) on frozen, normalized features")(Evaluation("frozen", linear_accuracy))
EVALS.register("propagate", "labels spread over the kNN graph of every training image (uses the unlabeled images)")(
    Evaluation("graph"))
EVALS.register("finetune", "LP-FT: the linear probe, then encoder + head trained on the labels, best on validation")(
    Evaluation("trained"))
EVALS.register("semisup", "encoder + head trained on the labels and on pseudo-labels, from propagation then its own "
               "confident predictions, of the unlabeled images (FixMatch-style; uses the unlabeled images)")(
    Evaluation("semi"))
VAL_SEED = 10_007  # the validation split never moves with the evaluation seeds
POOL_SEED = 20_011


def validation_split(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the held-out labeled validation images (the same for every seed and method)."""
    return few_labels(labels, per_class, VAL_SEED)


def label_subset(labels: np.ndarray, per_class: int, seed: int, val_idx: np.ndarray) -> np.ndarray:
    """The few labels an evaluation may train on: stratified, per seed, disjoint from validation."""
    return few_labels(labels, per_class, seed, exclude=val_idx)


def unlabeled_pool(n: int, size: int | None = None, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the training images that label propagation spreads labels over: all but `exclude` (the
    validation split), or a fixed random `size` of them (sorted)."""
    pool = np.setdiff1d(np.arange(n), exclude if exclude is not None else [])
    if size is None or size >= len(pool):
        return pool
    return np.sort(np.random.default_rng(POOL_SEED).choice(pool, size, replace=False))


def few_label_rows(encoder: nn.Module | Callable[[int], nn.Module], train: ImageSet, test: ImageSet,
                   labels_per_class: list[int], name: str, evals: tuple[str, ...] = ("knn", "linear"),
                   seeds: tuple[int, ...] = (0,), device: str | torch.device | None = None, val_per_class: int = 10,
                   finetune: FinetuneConfig | None = None, encoder_lr_scale: float | None = None,
                   pool_size: int | None = None, semisup: SemisupConfig | None = None,
                   head: str | None = None, keep: Callable[[dict, nn.Module], None] | None = None) -> list[dict]:
    """Accuracy rows for each seed, labels-per-class count and eval.

    `encoder` is a module, or a function of the seed that builds one (random-init and supervised baselines).
    Frozen evals embed the labeled subset and the test split. `propagate` embeds every training image outside
    the validation split (at most `pool_size` of them, drawn once; None: no limit) and builds their kNN graph
    once per encoder; the labels of each subset spread over it (no other label is read). A pretrained encoder
    is embedded once for all seeds. Fine-tuning keeps its best weights on validation. `semisup` trains on the
    labels and the pool, starting from the graph's scores. `encoder_lr_scale` overrides the trained evaluations'
    own and `head` fine-tuning's (a model from scratch: 1.0 and "linear"; semi-supervised training always starts
    from the probe, which measured better from random weights too: 0.956 against 0.934 at 10 MNIST labels).
    `keep(row, model)` is called with each trained model and its finished row.
    """
    EVALS.check(evals)
    val_idx = validation_split(train.labels, val_per_class)  # held out for every eval, so subsets match across evals
    finetune, semisup = finetune or FinetuneConfig(), semisup or SemisupConfig()
    n_classes = class_count(train.labels, test.labels)
    test_y = torch.from_numpy(test.labels)
    rows, embedded = [], None
    for s in seeds:
        enc = encoder(s) if callable(encoder) and not isinstance(encoder, nn.Module) else encoder
        dev = device or next(enc.parameters()).device
        subsets = {n: label_subset(train.labels, n, s, val_idx) for n in labels_per_class}
        frozen = [e for e in evals if EVALS.get(e).frozen_features]
        graph_evals = [e for e in evals if EVALS.get(e).needs_graph]
        kinds = {EVALS.get(e).kind for e in evals}
        if frozen:
            needed = np.unique(np.concatenate(list(subsets.values())))
            if graph_evals:  # the graph's nodes: the pool and every labeled image
                needed = np.union1d(unlabeled_pool(len(train), pool_size, val_idx), needed)
            if embedded is None or embedded[0] is not enc or not np.array_equal(embedded[1], needed):
                feats = extract_features(enc, train.images, device=dev, rows=needed)  # (len(needed), D)
                test_f = extract_features(enc, test.images, device=dev)
                graph = LabelGraph(feats) if graph_evals else None
                pool_x = train.images[needed] if "semi" in kinds else None  # semi-supervised training's images
                embedded = (enc, needed, feats, test_f, graph, pool_x)  # one frozen encoder over seeds: embedded once
            _, _, feats, test_f, graph, pool_x = embedded
            pos = {int(i): r for r, i in enumerate(needed)}
        for n, idx in subsets.items():
            for e in evals:
                row = {"method": name, "eval": e, "labels_per_class": n, "seed": s}
                kind = EVALS.get(e).kind
                if kind in ("graph", "semi"):
                    at, lab = torch.tensor([pos[int(i)] for i in idx]), torch.from_numpy(train.labels[idx])
                if kind == "graph":
                    hits = graph.predict(at, lab, test_f, n_classes) == test_y
                    row["accuracy"] = round(hits.float().mean().item(), 4)
                elif kind == "semi":  # the pool: every image the graph holds, the labeled ones among them
                    model, info = train_semisup(enc, pool_x, at.numpy(), train.labels[idx],
                                                train.images[val_idx], train.labels[val_idx], n_classes, semisup, s,
                                                encoder_lr_scale, dev, scores=graph.spread(at, lab, n_classes))
                    row["accuracy"] = round(accuracy(model, tensor_of(test.images), test_y), 4)  # test: scored once
                    row |= {k: info[k] for k in ("best_step", "steps_run", "pseudo_label_share")} | {
                        "val_accuracy": round(info["val_accuracy"], 4)}
                    if keep:
                        keep(row, model)
                elif kind == "frozen":
                    f = feats[[pos[int(i)] for i in idx]]
                    row["accuracy"] = round(EVALS.get(e).fn(f, torch.from_numpy(train.labels[idx]), test_f, test_y), 4)
                else:
                    model, info = train_classifier(enc, train.images[idx], train.labels[idx], train.images[val_idx],
                                                   train.labels[val_idx], n_classes, finetune, s, encoder_lr_scale, dev,
                                                   head)
                    row["accuracy"] = round(accuracy(model, tensor_of(test.images), test_y), 4)  # test: scored once
                    row |= {"val_accuracy": round(info["val_accuracy"], 4), "best_step": info["best_step"],
                            "steps_run": info["steps_run"]}
                    if keep:
                        keep(row, model)
                rows.append(row)
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (method, eval, labels_per_class): mean accuracy, with std and per-seed values when seeds > 1."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["eval"], r["labels_per_class"]), []).append(r)
    out = []
    for (m, e, n), rs in groups.items():
        accs = [r["accuracy"] for r in rs]
        row = {"method": m, "eval": e, "labels_per_class": n, "accuracy": round(mean(accs), 4)}
        if len(rs) > 1:
            row |= {"std": round(stdev(accs), 4), "seeds": [r["seed"] for r in rs], "accuracies": accs}
        else:
            row["seed"] = rs[0]["seed"]
        out.append(row)
    return out


__all__ = ["class_count", "Evaluation", "extract_features", "knn_accuracy", "linear_accuracy", "propagate_accuracy", "few_label_rows",
           "unlabeled_pool", "aggregate", "EVALS",
           "FinetuneConfig", "SemisupConfig", "validation_split", "label_subset"]
