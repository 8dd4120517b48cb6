"""A self-contained HTML report: results table, label-efficiency and pretraining curves, run facts.

Plots are matplotlib SVG inlined in the page: no scripts, no network, opens offline.
"""
from __future__ import annotations

import html
import io
import os
import platform

from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..evaluate import EVALS
from .table import count_key  # noqa: E402
from ..files import write_text  # noqa: E402

BASELINE_STYLE = {"supervised": dict(color="black", linestyle="--"), "random-init": dict(color="grey", linestyle=":")}


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def label_efficiency_svg(rows: list[dict]) -> str:
    """Accuracy against labels per class (log x), one panel per eval, one line per method and baseline."""
    evals = [e for e in EVALS if any(r["eval"] == e for r in rows)]
    if any(isinstance(r["labels_per_class"], str) for r in rows):  # a set of labeled images: one point, no curve
        return "<p>One set of labeled images, so one point per evaluation: the table above.</p>"
    fig, axes = plt.subplots(1, len(evals), figsize=(4.2 * len(evals), 3.4), squeeze=False, sharey=True)
    for ax, e in zip(axes[0], evals):
        lines = defaultdict(list)
        for r in rows:
            if r["eval"] == e:
                lines[r["method"]].append((r["labels_per_class"], r["accuracy"], r.get("std", 0.0)))
        for m, pts in lines.items():
            pts.sort()
            x, y, s = zip(*pts)
            ax.errorbar(x, y, yerr=s, marker="o", capsize=3, label=m, gid=f"curve-{e}-{m}", **BASELINE_STYLE.get(m, {}))
        ax.set_xscale("log")
        ticks = sorted({r["labels_per_class"] for r in rows})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_title(e)
        ax.legend(fontsize=8, loc="lower right")
        ax.set_xlabel("labels per class")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    return _svg(fig)


def pretraining_svg(histories: dict[str, list[dict]]) -> str:
    """Loss, online kNN accuracy and embedding std x sqrt(d) against seconds, one line per method."""
    panels = [("loss", "loss"), ("knn_acc", "online kNN accuracy"), ("embed_std_ratio", "embedding std x sqrt(d)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, (key, title) in zip(axes, panels):
        for m, hist in histories.items():
            pts = [(h["seconds"], h[key]) for h in hist if key in h]
            if pts:
                ax.plot(*zip(*pts), marker="." if key == "knn_acc" else None, label=m, gid=f"curve-{key}-{m}")
        if key == "embed_std_ratio":
            ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            ax.axhline(0.1, color="red", lw=0.8, ls=":")
        ax.set_title(title)
        ax.set_xlabel("seconds")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return _svg(fig)


def table_html(rows: list[dict]) -> str:
    """Methods by eval, then labels per class (a two-row header keeps it narrow); best per column in bold; the
    gain of each method's best evaluation over supervised from scratch."""
    cols = sorted({(r["eval"], r["labels_per_class"]) for r in rows},
                  key=lambda c: (EVALS.names().index(c[0]), count_key(c[1])))
    counts = sorted({r["labels_per_class"] for r in rows}, key=count_key)
    cell = {(r["method"], r["eval"], r["labels_per_class"]): r for r in rows}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    best = {c: max((cell[(m, *c)]["accuracy"] for m in methods if (m, *c) in cell), default=None) for c in cols}
    sup = {n: cell[("supervised", "finetune", n)]["accuracy"] for n in counts if ("supervised", "finetune", n) in cell}
    groups = list(dict.fromkeys(e for e, _ in cols)) + (["gain vs supervised"] if sup else [])
    span = {g: sum(1 for e, _ in cols if e == g) for g in groups} | {"gain vs supervised": len(sup)}
    marked = lambda g: g in EVALS and EVALS.get(g).unlabeled  # noqa: E731
    top = "".join(f'<th colspan="{span[g]}"' + (' class="unlabeled" title="uses the unlabeled images too"' if marked(g) else "")
                  + f">{html.escape(g)}{'*' if marked(g) else ''}</th>" for g in groups)
    sub = "".join(f"<th>{n}</th>" for _, n in cols) + "".join(f"<th>{n}</th>" for n in counts if n in sup)
    body = []
    for m in methods:
        tds = []
        for c in cols:
            r = cell.get((m, *c))
            if r is None:
                tds.append("<td>–</td>")
                continue
            text = f"{r['accuracy']:.3f}" + (f"<small> ± {r['std']:.3f}</small>" if "std" in r else "")
            tds.append(f"<td><b>{text}</b></td>" if r["accuracy"] == best[c] else f"<td>{text}</td>")
        for n in counts:
            if n not in sup:
                continue
            mine = [cell[(m, e, n)]["accuracy"] for e in EVALS if (m, e, n) in cell]
            if m == "supervised" or not mine:
                tds.append("<td>–</td>")
            else:
                g = max(mine) - sup[n]
                tds.append(f'<td class="{"up" if g > 0 else "down"}">{g * 100:+.1f}</td>')
        body.append(f"<tr><th>{html.escape(m)}</th>{''.join(tds)}</tr>")
    return (f'<div class="scroll"><table id="results"><thead><tr><th rowspan="2">method</th>{top}</tr>'
            f'<tr class="counts">{sub}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
            '<p class="note">Columns: evaluation, then labels per class; gains in accuracy points.'
            + (" * uses the unlabeled training images (never their labels) beside the few labeled ones."
               if any(marked(g) for g in groups) else "") + "</p>")


def run_facts(results: dict) -> dict[str, str]:
    import torch

    from .. import __version__

    cfgs = results["config"]["pretrain"]
    first = next(iter(cfgs.values()), {})
    hw = f"{_cpu_name()}, {os.cpu_count()} cores"
    if torch.cuda.is_available():
        hw += f"; {torch.cuda.get_device_name()}"
    facts = {
        "dataset": results["dataset"],
        "backbone": f"{first.get('backbone', '?')} {first.get('backbone_args') or ''}".strip(),
        "hardware": hw,
        "pretraining": "; ".join(f"{m}: {s.get('seconds', 0) / 60:.1f} min, {s.get('img_per_s', 0):.0f} img/s, "
                                 f"{s.get('epochs', 0)} epochs, {s.get('precision', '?')}{' (reused)' if s.get('reused') else ''}"
                                 + "".join(f", final {k} {v:.3f}" for k, v in s.get("method_metrics", {}).items())
                                 for m, s in results.get("pretrain", {}).items()) or "none",
        "evaluation": f"{results.get('eval_seconds', 0) / 60:.1f} min; seeds {', '.join(map(str, results['config']['compare']['seeds']))}; "
                      f"validation: {_validation(results)} (early stopping only)",
        "splits": "; ".join(f"{k}: {v}" for k, v in results.get("splits", {}).items()) or "the dataset's own",
        "versions": f"selfsup {__version__}, torch {torch.__version__}, python {platform.python_version()}",
        "written": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        import lightning

        facts["versions"] += f", lightning {lightning.__version__}"
    except ImportError:
        pass
    return facts


def _validation(results: dict) -> str:
    v = results.get("labels", {}).get("validation")
    if v is None:
        return f"{results['config']['compare'].get('val_per_class') or 10} per class"
    return f"{v['per_class']} per class ({v['why']})" if v["per_class"] else f"none ({v['why']})"


def leakage_html(results: dict) -> str:
    leak = results.get("leakage")
    if not leak:
        return ""
    text = (f"{leak['leaked']} of {leak['test_images']:,} test images have a near-copy among the "
            f"{leak['seen_images']:,} images the encoders and classifiers saw")
    if leak["leaked"]:
        rows = [r for r in results["rows"] if "accuracy_clean" in r]
        best = max(rows, key=lambda r: r["accuracy"], default=None)
        if best is not None:
            text += (f"; without them, {best['method']} {best['eval']} at {best['labels_per_class']} scores "
                     f"{best['accuracy_clean']:.3f} instead of {best['accuracy']:.3f} (every row's figure is "
                     f"accuracy_clean in results.json)")
    return f'<p class="note" id="leakage">Leakage: {html.escape(text)}.</p>'


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
thead th{background:#f3f3f3;text-align:center}tr.counts th{font-weight:normal;font-size:.85em}
.scroll{max-width:100%;overflow-x:auto}#results{font-size:13px}.note{font-size:.85em;color:#555;margin-top:-.5em}tbody th{text-align:left}td.up{color:#176117}td.down{color:#a11}
.facts td,.facts th{text-align:left}.plot svg{max-width:100%;height:auto}.headline{font-size:1.1em;background:#f6f8ff;padding:.6em 1em}
section.extra img{image-rendering:pixelated;max-width:100%;height:auto}section.extra figure{display:inline-block;vertical-align:top;margin:.3em 1em .3em 0}
section.extra img.map{width:360px;image-rendering:auto}figcaption{font-size:.85em;color:#555}"""


def write_report(results: dict, histories: dict[str, list[dict]], path: str | Path, extra_html: str = "") -> Path:
    """Write the report page; `extra_html` is appended (pictures from other modules)."""
    path = Path(path)
    rows = results["rows"]
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in run_facts(results).items())
    head = results.get("headline") or {}
    curves = pretraining_svg(histories) if histories else "<p>No pretraining in this comparison.</p>"
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>selfsup report: {html.escape(results['dataset'])}</title>
<style>{CSS}</style></head><body>
<h1>Did self-supervision help? {html.escape(results['dataset'])}</h1>
{f'<p class="headline" id="headline">{html.escape(head["text"])}</p>' if head else ''}
<h2>Results</h2>
<p>Test accuracy. Each evaluation trains only on the N labeled images per class (plus a fixed validation split
used for early stopping of fine-tuning); the test split is scored once. Best per column in bold.</p>
{table_html(rows)}
{leakage_html(results)}
<h2>Label efficiency</h2><div class="plot" id="label-efficiency">{label_efficiency_svg(rows)}</div>
<h2>Pretraining</h2><div class="plot" id="pretraining">{curves}</div>
{extra_html}
<h2>Run facts</h2><table class="facts">{facts}</table>
</body></html>
"""
    return write_text(path, page)


__all__ = ["write_report", "table_html", "label_efficiency_svg", "pretraining_svg"]
