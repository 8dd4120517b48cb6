"""Self-contained HTML pages of thumbnails that a person reads: the picks to label, an image's nearest images,
and the audit's duplicate groups and leaked test images."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..files import write_text
from .embedding import thumbnails

STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}p.lead{color:#444}
.sheet{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:150px;font-size:11px;word-break:break-all}
figure img{width:150px;height:150px;object-fit:cover;image-rendering:pixelated;border:1px solid #ccc;display:block}
figcaption b{font-size:12px}.why{color:#555}
.row{display:flex;gap:10px;align-items:flex-start;margin:8px 0;padding:8px;border:1px solid #e3e3e3;border-radius:6px}
.row figure{width:120px}.row figure img{width:120px;height:120px}
.tag{display:inline-block;background:#eef;border-radius:4px;padding:1px 5px;margin:0 4px 0 0}
.score{color:#a40;font-weight:600}
</style>"""


def figure(uri: str, title: str, lines: list[str] = ()) -> str:
    extra = "".join(f"<div class='why'>{html.escape(t)}</div>" for t in lines)
    return (f"<figure><img src='{uri}' alt='{html.escape(title)}'><figcaption><b>{html.escape(title)}</b>"
            f"{extra}</figcaption></figure>")


def page(title: str, lead: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}</head>"
            f"<body><h1>{html.escape(title)}</h1><p class='lead'>{lead}</p>{body}</body></html>")


def contact_sheet(images: np.ndarray, names: list[str], notes: list[list[str]], path: Path, title: str,
                  lead: str) -> Path:
    """One figure per image: its name (file or index) and the notes under it."""
    uris = thumbnails(images, side=150)
    body = "<div class='sheet'>" + "".join(figure(u, n, t) for u, n, t in zip(uris, names, notes)) + "</div>"
    write_text(path, page(title, lead, body))
    return path


def rows_page(groups: list[dict], path: Path, title: str, lead: str) -> Path:
    """Sections of rows of figures: groups = [{"heading": str, "rows": [[(image (C, H, W) uint8, [caption lines]),
    ...], ...]}]."""
    parts = []
    for g in groups:
        parts.append(f"<h2>{html.escape(g['heading'])}</h2>")
        if not g["rows"]:
            parts.append("<p>None found.</p>")
        for row in g["rows"]:
            figs = "".join(figure(thumbnails(img[None], side=120)[0], lines[0], lines[1:]) for img, lines in row)
            parts.append(f"<div class='row'>{figs}</div>")
    write_text(path, page(title, lead, "".join(parts)))
    return path
