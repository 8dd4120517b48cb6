"""A plain-text results table: one row per method, one column per eval and label count."""
from __future__ import annotations

from collections import defaultdict
from statistics import mean, stdev

from ..evaluate import EVALS


def count_key(n) -> tuple:
    """Sort key of a label count: numbers in order, then named label sets."""
    return (0, n, "") if isinstance(n, (int, float)) else (1, 0, str(n))


def format_table(rows: list[dict]) -> str:
    """Pivot per-seed or aggregated rows (method, eval, labels_per_class, accuracy) into a fixed-width table.

    Several seeds show as mean±std.
    """
    cells: dict[tuple, list[float]] = defaultdict(list)
    methods, cols = [], []
    for r in rows:
        col = (r["eval"], r["labels_per_class"])
        cells[(r["method"], col)] += r.get("accuracies", [r["accuracy"]])
        if r["method"] not in methods:
            methods.append(r["method"])
        if col not in cols:
            cols.append(col)
    order = {e: i for i, e in enumerate(EVALS)}
    cols.sort(key=lambda c: (order.get(c[0], len(order)), count_key(c[1])))
    mark = lambda e: "*" if e in EVALS and EVALS.get(e).unlabeled else ""  # noqa: E731
    head = ["method"] + [f"{e}{mark(e)}@{n}" for e, n in cols]
    def show(v: list[float]) -> str:
        return f"{mean(v):.3f}±{stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"

    body = [[m] + [show(cells[(m, c)]) if cells.get((m, c)) else "-" for c in cols] for m in methods]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    line = lambda row: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))  # noqa: E731
    note = ["* uses the unlabeled training images too"] if any(mark(e) for e, _ in cols) else []
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body] + note)
