"""Evaluation takes features and labels and returns numbers; `few_label_rows` ties it to encoders and splits.

Splits of the labeled training data: a fixed validation split (`val_per_class` per class, its own seed)
for early stopping, and per-seed label subsets drawn from the rest. The test split is only ever scored.
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from statistics import mean, stdev
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..data import ImageSet, few_labels
from ..data.splits import class_count
from ..errors import DataError
from ..progress import clock
from ..registry import Registry
from .features import extract_features, tensor_of
from .finetune import FinetuneConfig, correct, train_classifier
from .semisup import NeighbourVote, SemisupConfig, train_semisup
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
    if per_class == 0:
        return np.array([], np.int64)
    return few_labels(labels, per_class, VAL_SEED)


@dataclass(frozen=True)
class Validation:
    """The validation split an evaluation stops early by: `per_class` images of each class (0: none, when the labels
    cannot spare any; LP-FT then keeps the probe), and why."""

    per_class: int
    kind: str  # "fixed": as asked; "fewer": fewer per class, what the labels allow; "none"
    why: str

    def split(self, labels: np.ndarray) -> np.ndarray:
        return validation_split(labels, self.per_class)

    def to_dict(self) -> dict:
        return {"per_class": self.per_class, "kind": self.kind, "why": self.why}


def plan_validation(labels: np.ndarray, labels_per_class, asked: int = 10, given: bool = False,
                    label_set: np.ndarray | None = None) -> Validation:
    """The validation split that the labels allow, decided before any training.

    N per class: `asked` per class beside the largest N, or as many as every class can spare, or none.
    A given set of labeled images (`label_set`): at most a quarter of each class's labeled images, so that most of
    a person's labels train. `given`: the user set `asked` (--val-per-class), so too few labels are an error that
    names it rather than a quieter split."""
    if label_set is not None:
        counts = np.bincount(labels[label_set], minlength=class_count(labels))
        counts = counts[counts > 0]
        k = min(asked, int(counts.min()) // 4) if len(counts) else 0
        why = "up to a quarter of each class's labeled images" if k else "no class has 4 labeled images to spare one"
        return Validation(k, "fixed" if k == asked else "fewer" if k else "none", why)
    have = np.bincount(labels[labels >= 0], minlength=class_count(labels))
    if not len(have) or have.max() == 0:
        raise DataError("this split has no labeled images; few-label evaluation needs labels")
    low = int(np.argmin(have))
    need = max(labels_per_class)
    if have[low] < need:
        raise DataError(f"{need} labels per class is more than class {low} has ({have[low]} labeled images); "
                        f"ask for at most {have[low]} with --labels-per-class")
    spare = int(have[low]) - need
    if spare >= asked:
        return Validation(asked, "fixed", f"{asked} per class, held out beside the {need} that train")
    if given:
        raise DataError(f"--val-per-class {asked} with {need} labels per class needs {asked + need} labeled images "
                        f"of every class, and class {low} has {have[low]}; lower one of them")
    if spare > 0:
        return Validation(spare, "fewer", f"class {low} has {have[low]} labeled images: {spare} per class can be "
                                          f"held out beside the {need} that train")
    return Validation(0, "none", f"class {low} has {have[low]} labeled images, all of them needed to train")


def fitting_counts(labels: np.ndarray, counts) -> tuple[int, ...]:
    """The label counts per class that every class has labeled images for (the counts a user did not choose)."""
    have = np.bincount(labels[labels >= 0], minlength=class_count(labels))
    low = int(have.min()) if len(have) else 0
    return tuple(n for n in counts if n <= low) or ((low,) if low else ())


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
                   head: str | None = None, keep: Callable[[dict, nn.Module], None] | None = None,
                   validation: Validation | None = None, label_sets: dict[str, np.ndarray] | None = None,
                   leaked: np.ndarray | None = None, frozen: "FrozenCache | None" = None, progress: bool = False
                   ) -> list[dict]:
    """Accuracy rows for each seed, labels-per-class count (or label set) and eval.

    `encoder`: a module, or a function of the seed that builds one (the baselines). Frozen evals embed the labeled
    images and the test split; `propagate` builds the kNN graph of every training image outside validation (at most
    `pool_size`) once per encoder, and only the subset's labels spread over it. Fine-tuning keeps its best weights
    on validation; `semisup` trains on the labels and the pool from the graph's scores. `encoder_lr_scale` and
    `head` override the trained evaluations' own (from scratch: 1.0 and "linear"). `keep(row, model)` sees each
    trained model. `validation` replaces the fixed `val_per_class` split (`plan_validation`). `label_sets`: named
    sets of labeled training images instead of `labels_per_class`, the same for every seed, each with validation
    out of it. `leaked`: test images with near-copies among the images the encoder saw (rows add `accuracy_clean`).
    `frozen`: a `FrozenCache` shared across calls, so that one encoder's features and graph are made once for all.
    `progress`: trained evaluations show a progress line, and each row a line when it is done, on stderr.
    """
    EVALS.check(evals)
    val_idx, val_of = _validation_images(train, validation or Validation(val_per_class, "fixed", ""), label_sets)
    finetune, semisup = finetune or FinetuneConfig(), semisup or SemisupConfig()
    n_classes = class_count(train.labels, test.labels)
    test_y = torch.from_numpy(test.labels)
    clean = None
    if leaked is not None and len(leaked):  # the test images without a near-copy among the training images
        clean = torch.ones(len(test), dtype=torch.bool)
        clean[torch.from_numpy(np.asarray(leaked, np.int64))] = False
    scored = lambda model, shift: _test_scores(model, test.images, test_y, clean, shift)  # noqa: E731
    rows, frozen = [], frozen if frozen is not None else FrozenCache()
    for s in seeds:
        enc = encoder(s) if callable(encoder) and not isinstance(encoder, nn.Module) else encoder
        dev = device or next(enc.parameters()).device
        subsets = {name: np.setdiff1d(idx, val_of[name]) for name, idx in label_sets.items()} if label_sets else \
            {n: label_subset(train.labels, n, s, val_idx) for n in labels_per_class}
        kinds = {EVALS.get(e).kind for e in evals}
        if kinds - {"trained"}:  # the frozen features of the labeled images, and of the graph's pool
            needed = np.unique(np.concatenate(list(subsets.values())))
            if kinds & {"graph", "semi"}:  # the graph's nodes: the pool and every labeled image
                needed = np.union1d(unlabeled_pool(len(train), pool_size, val_idx), needed)
            nodes, feats, test_f, graph = frozen.get(enc, train, test, needed, dev, bool(kinds & {"graph", "semi"}))
            pos = {int(i): r for r, i in enumerate(nodes)}
            pool_x = train.images[nodes] if "semi" in kinds else None  # the graph's images, in its order
        for n, idx in subsets.items():
            for e in evals:
                row, t0 = {"method": name, "eval": e, "labels_per_class": n, "seed": s, "labels": len(idx)}, time.perf_counter()
                label = f"{name} {e}, seed {s}, {len(idx)} labels{_per_class(n)}" if progress else None
                v = val_of.get(n, val_idx)  # a given set's validation images come out of that set
                kind = EVALS.get(e).kind
                if kind in ("graph", "semi"):
                    at, lab = torch.tensor([pos[int(i)] for i in idx]), torch.from_numpy(train.labels[idx])
                if kind == "graph":
                    row |= _hit_rate(graph.predict(at, lab, test_f, n_classes) == test_y, clean)
                elif kind == "semi":  # the pool: every image the graph holds, the labeled ones among them
                    model, info = train_semisup(enc, pool_x, at.numpy(), train.labels[idx],
                                                train.images[v], train.labels[v], n_classes, semisup, s,
                                                encoder_lr_scale, dev, scores=graph.spread(at, lab, n_classes),
                                                progress=label)
                    k = semisup.resolved(pool_x.shape[1]).neighbours
                    voted = NeighbourVote(model, pool_x, k, queries=len(test)) if k else model  # with the pool's vote
                    _trained_row(row, scored(voted, semisup.shift), info, model, keep)
                elif kind == "frozen":
                    f = feats[[pos[int(i)] for i in idx]]
                    fy = torch.from_numpy(train.labels[idx])
                    row["accuracy"] = round(EVALS.get(e).fn(f, fy, test_f, test_y), 4)
                    row |= _clean(clean, lambda m: EVALS.get(e).fn(f, fy, test_f[m], test_y[m]))
                else:
                    model, info = train_classifier(enc, train.images[idx], train.labels[idx], train.images[v],
                                                   train.labels[v], n_classes, finetune, s, encoder_lr_scale, dev,
                                                   head, progress=label)
                    _trained_row(row, scored(model, finetune.shift), info, model, keep)
                rows.append(row | {"seconds": round(time.perf_counter() - t0, 2)})  # embedding not counted
                if progress:
                    print(f"{label}: {row['accuracy']:.4f} in {clock(rows[-1]['seconds'])}", file=sys.stderr, flush=True)
    return rows


def _per_class(n) -> str:
    """' (N per class)' for a labels-per-class count, '' for a named label set."""
    return f" ({n} per class)" if isinstance(n, (int, np.integer)) else ""


def _hit_rate(hits: torch.Tensor, clean: torch.Tensor | None) -> dict:
    """{"accuracy"} of the test images' hits, and {"accuracy_clean"} of those without near-copies where known."""
    return {"accuracy": round(hits.float().mean().item(), 4)} | _clean(clean, lambda m: hits[m].float().mean().item())


class FrozenCache:
    """A frozen encoder's features of training images and of the test split, and the kNN graph of the pool, kept
    across calls of `few_label_rows` and found again by the encoder's weights: a comparison's evaluations of one
    encoder, and a baseline trained from the same random weights as the random-init row, embed the images and build
    the graph once. Holds the last encoder only, so that memory peaks where it did when each call made its own (a
    million images' features, graph and index take gigabytes); a comparison evaluates one encoder's rows in a row,
    and the from-scratch baseline right after the random-init row, for one seed."""

    def __init__(self):
        self.key, self.entry = None, None

    @staticmethod
    def digest(enc: nn.Module, train: ImageSet, test: ImageSet) -> tuple:
        h = hashlib.sha1()
        for name, t in enc.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest(), type(enc).__name__, getattr(enc, "image_size", None), id(train), id(test)

    def get(self, enc: nn.Module, train: ImageSet, test: ImageSet, needed: np.ndarray, dev, graph: bool) -> tuple:
        """(the training rows embedded, their features, the test features, the graph of those rows or None) for an
        encoder and the rows `needed`: a graph's nodes are exactly `needed`; features alone may cover more rows."""
        key = self.digest(enc, train, test)
        hit = self.entry if key == self.key else None
        if hit is not None and (np.array_equal(hit[0], needed) and hit[3] is not None if graph
                                else bool(np.isin(needed, hit[0]).all())):
            return hit
        feats = extract_features(enc, train.images, device=dev, rows=needed)  # (len(needed), D)
        test_f = hit[2] if hit is not None else extract_features(enc, test.images, device=dev)
        self.key, self.entry = key, (needed, feats, test_f, LabelGraph(feats) if graph else None)
        return self.entry


def _validation_images(train: ImageSet, validation: Validation, label_sets: dict | None
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(every validation image, {label set name: its own validation images})."""
    if not label_sets:
        return validation.split(train.labels), {}  # held out for every eval, so subsets match across evals
    of = {name: given_validation(idx, train.labels, validation.per_class) for name, idx in label_sets.items()}
    return np.unique(np.concatenate(list(of.values()))), of


def _test_scores(model: nn.Module, images: np.ndarray, y: torch.Tensor, clean: torch.Tensor | None, shift: bool) -> dict:
    """A trained classifier's accuracy on the test split (scored once, after training), and without the leaked
    images where there are some (`_clean`), both from one pass over the test images."""
    return _hit_rate(correct(model, tensor_of(images), y, shift=shift), clean)


def _trained_row(row: dict, scores: dict, info: dict, model: nn.Module, keep: Callable | None) -> None:
    """A trained evaluation's row gets its test scores, validation accuracy and steps; `keep` sees the classifier."""
    row |= scores | {"val_accuracy": _r4(info["val_accuracy"])} | {
        k: info[k] for k in ("best_step", "steps_run", "pseudo_label_share") if k in info}
    if keep:
        keep(row, model)


def _clean(mask: torch.Tensor | None, score: Callable[[torch.Tensor], float]) -> dict:
    """{"accuracy_clean": the accuracy on the test images outside `mask`'s leaked ones}, or {} with no leak."""
    return {} if mask is None else {"accuracy_clean": round(score(mask), 4)}


def _r4(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def given_validation(idx: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """`per_class` validation images of each class drawn from a given labeled set (VAL_SEED), sorted."""
    if per_class == 0:
        return np.array([], np.int64)
    rng, out = np.random.default_rng(VAL_SEED), []
    for c in np.unique(labels[idx]):
        at = idx[labels[idx] == c]
        out.append(rng.choice(at, min(per_class, len(at) // 4 if len(at) >= 4 else 0), replace=False))
    return np.sort(np.concatenate(out)).astype(np.int64)


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (method, eval, labels_per_class): mean accuracy, with std and per-seed values when seeds > 1."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["eval"], r["labels_per_class"]), []).append(r)
    out = []
    for (m, e, n), rs in groups.items():
        accs = [r["accuracy"] for r in rs]
        row = {"method": m, "eval": e, "labels_per_class": n, "accuracy": round(mean(accs), 4)}
        if isinstance(n, str) and "labels" in rs[0]:  # a given set: how many labels it trained on
            row["labels"] = rs[0]["labels"]
        if all("accuracy_clean" in r for r in rs):
            row["accuracy_clean"] = round(mean(r["accuracy_clean"] for r in rs), 4)
        if len(rs) > 1:
            row |= {"std": round(stdev(accs), 4), "seeds": [r["seed"] for r in rs], "accuracies": accs}
        else:
            row["seed"] = rs[0]["seed"]
        out.append(row)
    return out


__all__ = ["class_count", "Evaluation", "extract_features", "FrozenCache", "knn_accuracy", "linear_accuracy",
           "propagate_accuracy", "few_label_rows",
           "unlabeled_pool", "aggregate", "EVALS",
           "FinetuneConfig", "SemisupConfig", "validation_split", "label_subset", "Validation", "plan_validation",
           "fitting_counts"]
