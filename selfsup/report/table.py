"""A plain-text results table: one row per method, one column per eval and label count."""
from __future__ import annotations

from collections import defaultdict
from statistics import mean


def format_table(rows: list[dict]) -> str:
    """Pivot result rows (method, eval, labels_per_class, accuracy) into a fixed-width table; seeds are averaged."""
    cells: dict[tuple, list[float]] = defaultdict(list)
    methods, cols = [], []
    for r in rows:
        col = (r["eval"], r["labels_per_class"])
        cells[(r["method"], col)].append(r["accuracy"])
        if r["method"] not in methods:
            methods.append(r["method"])
        if col not in cols:
            cols.append(col)
    cols.sort(key=lambda c: (c[0], c[1]))
    head = ["method"] + [f"{e}@{n}" for e, n in cols]
    body = [[m] + [f"{mean(cells[(m, c)]):.3f}" if cells.get((m, c)) else "-" for c in cols] for m in methods]
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    line = lambda row: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in body])
