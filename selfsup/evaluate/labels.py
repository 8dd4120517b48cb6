"""Which labeled images an evaluation trains on, decided from the data before any pretraining starts.

Three cases:
- N per class (the benchmark protocol): `labels_per_class` counts drawn per seed, with a validation split beside
  them. Counts the user did not choose are trimmed to what every class has; counts they chose must fit.
- A set a person labeled (`--labeled FILE.csv`): exactly those images. On a built-in dataset the file names
  training indices and their labels are read from the dataset, as the person labeling them would give them.
- A folder labeled by a CSV (`--labels`): every labeled training image (the test split was held out already).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from ..data import ImageSet
from ..data.labels_csv import dataset_rows
from ..errors import DataError
from . import Validation, fitting_counts, plan_validation

DEFAULT_COUNTS = (1, 10, 100)


@dataclass
class LabelPlan:
    counts: tuple = ()  # N per class, or the names of `sets`
    sets: dict[str, np.ndarray] | None = None  # name -> training indices
    validation: Validation = field(default_factory=lambda: Validation(10, "fixed", "10 per class"))
    notes: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None  # the training labels, for the per-class counts of a set

    def to_dict(self) -> dict:
        d = {"validation": self.validation.to_dict(), "notes": self.notes}
        if self.sets:
            d["label_sets"] = {k: {"images": len(v), "per_class": _per_class(v, self.labels)} for k, v in self.sets.items()}
        else:
            d["labels_per_class"] = list(self.counts)
        return d


def _per_class(idx: np.ndarray, labels: np.ndarray | None) -> list[int]:
    return np.bincount(labels[idx]).tolist() if labels is not None and len(idx) else []


def label_plan(train: ImageSet, counts=None, val_per_class: int | None = None, labeled: str | None = None,
               folder_labels: bool = False, say=None) -> LabelPlan:
    """The labels an evaluation of `train` uses. `counts`/`val_per_class`: what the user asked for (None: not
    asked, so adapted to the data); `labeled`: a file of labeled images; `folder_labels`: the folder's labels come
    from a CSV. Raises one DataError line that names only what the user set."""
    say = say or (lambda m: print(m, file=sys.stderr, flush=True))
    asked_val = 10 if val_per_class is None else val_per_class
    if val_per_class is not None and val_per_class < 0:
        raise DataError(f"--val-per-class must be 0 or more, got {val_per_class}")
    labeled_rows = np.flatnonzero(train.labels >= 0)
    if not len(labeled_rows):
        raise DataError(f"{train.name} has no labeled training images to evaluate with; give a CSV of path,label "
                        f"with --labels (label a few: `selfsup select` says which)")
    sets = None
    if labeled is not None and train.paths is None:
        idx, _ = dataset_rows(labeled, len(train))
        if (train.labels[idx] < 0).any():
            raise DataError(f"{labeled} names training images that {train.name} has no label for")
        sets = {"picks": np.sort(idx)}
    elif (labeled is not None or folder_labels) and counts is None:
        sets = {"labeled": labeled_rows}
    if sets is not None:
        val = plan_validation(train.labels, (), asked_val, val_per_class is not None, next(iter(sets.values())))
        plan = LabelPlan(tuple(sets), sets, val, labels=train.labels)
        plan.notes.append(f"evaluated with the {len(next(iter(sets.values())))} labeled images given; validation: "
                          f"{val.why}")
        say(plan.notes[-1])
        return plan
    wanted = tuple(counts) if counts is not None else DEFAULT_COUNTS
    fit = wanted if counts is not None else fitting_counts(train.labels, wanted)
    if not fit:
        raise DataError(f"{train.name} has a class with no labeled training image; label at least one per class")
    plan = LabelPlan(fit, None, plan_validation(train.labels, fit, asked_val, val_per_class is not None),
                     labels=train.labels)
    if fit != wanted:
        plan.notes.append(f"labels per class: {', '.join(map(str, fit))} (the labeled images allow no more)")
    if plan.validation.kind != "fixed":
        plan.notes.append(f"validation: {plan.validation.why}")
    for note in plan.notes:
        say(note)
    return plan
