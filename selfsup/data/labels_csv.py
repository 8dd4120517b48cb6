"""Labels from a CSV file: `path,label` for a folder (paths relative to it), or `index,label` for a built-in
dataset's training split; commas, or semicolons or tabs where the header has no comma. Extra columns (the cluster
and reason `selfsup select` writes) are ignored, and a row whose label is empty is a file not labeled yet. Every
problem is one line that names the file and the row.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import DataError


def read_rows(csv_path: str | Path) -> tuple[str, list[tuple[int, str, str]]]:
    """(key column: "path" or "index", [(line number, key, label)]) of a labels file; label "" = not labeled."""
    f = Path(csv_path).expanduser()
    try:
        text = f.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read labels file {f} ({getattr(e, 'strerror', None) or e}); give a CSV with the "
                        f"columns path,label") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    # a spreadsheet saved where the decimal mark is a comma separates by semicolons; a TSV by tabs
    delimiter = next((d for d in (",", ";", "\t") if d in first), ",")
    lines = [row for row in csv.reader(text.splitlines(), delimiter=delimiter)]
    if not any(any(c.strip() for c in row) for row in lines):
        raise DataError(f"labels file {f} is empty; write a header path,label and one row per labeled image")
    head = [c.strip().lower() for c in lines[0]]
    key = "path" if "path" in head else "index" if "index" in head else None
    if key is None:
        raise DataError(f"labels file {f} has no path (or index) column in its first line {','.join(lines[0])!r}; "
                        f"start it with the header path,label")
    k, lab = head.index(key), head.index("label") if "label" in head else None
    rows = []
    for n, row in enumerate(lines[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        value = row[k].strip() if k < len(row) else ""
        if not value:
            raise DataError(f"labels file {f} line {n} has no {key}; every row names one image")
        rows.append((n, value, row[lab].strip() if lab is not None and lab < len(row) else ""))
    return key, rows


def relative(path: str, root: Path, known: set[str]) -> str:
    """A labels file's path as the folder's relative path of that image, where it names one unambiguously: as given,
    or written with Windows' backslashes, or absolute inside the folder, or starting with the folder's own name (a
    path from the folder's parent)."""
    rel = Path(path).as_posix().removeprefix("./")
    tries = [rel, rel.replace("\\", "/")]
    p = Path(tries[-1])
    if p.is_absolute() and p.resolve().is_relative_to(root.resolve()):
        tries.append(p.resolve().relative_to(root.resolve()).as_posix())
    if p.parts[:1] == (root.name,):
        tries.append(Path(*p.parts[1:]).as_posix() if len(p.parts) > 1 else "")
    return next((t for t in tries if t in known), rel)


def read_labels(csv_path: str | Path, root: Path, files: list[Path]) -> dict[str, str]:
    """Relative path -> class name for the labeled rows of a folder's labels file, checked against `files`."""
    key, rows = read_rows(csv_path)
    if key != "path":
        raise DataError(f"labels file {csv_path} names images by index, which is for built-in datasets; for "
                        f"folder:{root} give a path column (paths relative to the folder)")
    known = {p.relative_to(root).as_posix() for p in files}
    seen: dict[str, tuple[int, str]] = {}
    for n, path, label in rows:
        rel = relative(path, root, known)
        if rel not in known:
            hint = " (paths are relative to the folder)" if Path(path).is_absolute() or rel.startswith("..") else ""
            raise DataError(f"labels file {csv_path} line {n}: {path} is not an image in {root}{hint}; fix or "
                            f"remove that row")
        if not label:
            continue
        if rel in seen and seen[rel][1] != label:
            raise DataError(f"labels file {csv_path} lines {seen[rel][0]} and {n} give {rel} two labels "
                            f"({seen[rel][1]!r} and {label!r}); keep one")
        seen[rel] = (n, label)
    if not seen:
        raise DataError(f"labels file {csv_path} labels no image yet (every label is empty); fill in the label "
                        f"column of the images you have labeled")
    return {rel: label for rel, (_, label) in seen.items()}


def class_holdout(labels: np.ndarray, classes: list[str], csv_path, holdout) -> np.ndarray:
    """The held-out test split of labels made by a person: the folder's `holdout` rule over the labeled rows, after
    checking that every class can spare one image."""
    counts = np.bincount(labels[labels >= 0], minlength=len(classes))
    few = [classes[c] for c in np.flatnonzero(counts < 2)]
    if few:
        raise DataError(f"class {few[0]!r} has {counts[classes.index(few[0])]} labeled image in {csv_path}"
                        f"{f' (and {len(few) - 1} more classes)' if len(few) > 1 else ''}; label at least 2 images "
                        f"of every class: one is held out to test on")
    at = np.flatnonzero(labels >= 0)
    return at[holdout(labels[at])]


def dataset_rows(csv_path: str | Path, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(training-split indices, labels given or None) of a built-in dataset's labels file (`index` column)."""
    key, rows = read_rows(csv_path)
    if key != "index":
        raise DataError(f"labels file {csv_path} names images by path; a built-in dataset's images are named by "
                        f"their index in the training split (an index column)")
    idx = []
    for line, value, _ in rows:
        try:
            i = int(value)
        except ValueError:
            i = -1
        if not 0 <= i < n:
            raise DataError(f"labels file {csv_path} line {line}: index {value} is not in the training split "
                            f"(0 to {n - 1})")
        idx.append(i)
    if len(set(idx)) != len(idx):
        dup = next(i for i in idx if idx.count(i) > 1)
        raise DataError(f"labels file {csv_path} names index {dup} twice; keep one row per image")
    given = [label for _, _, label in rows]
    return np.array(idx, np.int64), (np.array(given) if all(given) else None)
