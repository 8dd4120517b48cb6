"""The report's pictures per method and baseline: embedding map, filters, neighbours, views, and what a method offers."""
from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from ..data import ImageSet
from . import embedding, pictures


def _img(uri: str, alt: str) -> str:
    return f'<figure><img src="{uri}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def neighbours(encoder, test: ImageSet, queries: np.ndarray, bank_idx: np.ndarray) -> str:
    """The neighbour grid, framed by class where every query has a label."""
    labelled = bool((test.labels[queries] >= 0).all())
    picture, hits = pictures.nearest_neighbours(encoder, test.images[queries], test.images[bank_idx], 8,
                                                test.labels[queries] if labelled else None,
                                                test.labels[bank_idx] if labelled else None)
    caption = "nearest neighbours (query, then top 8)"
    if hits is not None:
        caption += f": green shares the query's class, red does not ({hits:.0%} green)"
    return _img(pictures.data_uri(picture), caption)


def gallery_html(subjects: dict[str, dict], test: ImageSet, out_dir: Path, map_points: int = 2000, seed: int = 0) -> str:
    """subjects: name -> {"encoder", "identity", optional "method" (module) and "view" (augmentation preset)}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    queries = np.sort(rng.choice(len(test), min(8, len(test)), replace=False))
    bank_idx = embedding.subsample(len(test), map_points, seed)
    blocks = []
    for name, s in subjects.items():
        enc, safe = s["encoder"], "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        key_file, key = out_dir / f"{safe}.key", json.dumps(s["identity"], sort_keys=True, default=str) + f"|{map_points}|{seed}"
        if not (key_file.exists() and key_file.read_text() == key and (out_dir / f"{safe}.png").exists()):
            embedding.write_embedding(enc, test, [out_dir / f"{safe}.html", out_dir / f"{safe}.png"],
                                      f"{name}: t-SNE of test features", "tsne", map_points, seed)
            key_file.write_text(key)
        figs = [f'<figure><a href="{out_dir.name}/{safe}.html"><img src="{out_dir.name}/{safe}.png" alt="map" class="map"></a>'
                f'<figcaption>embedding map (<a href="{out_dir.name}/{safe}.html">interactive</a>)</figcaption></figure>',
                _img(pictures.data_uri(pictures.filter_grid(enc)), "first-layer filters"),
                neighbours(enc, test, queries, bank_idx)]
        if s.get("view") is not None:
            figs.append(_img(pictures.data_uri(pictures.augmented_views(test.images[queries[:4]], s["view"], seed=seed)),
                             "augmented views (original, then views)"))
        if s.get("method") is not None:  # pictures a method offers (colorization's samples)
            for caption, picture in s["method"].pictures(test.images[queries]).items():
                figs.append(_img(pictures.data_uri(picture), caption))
        blocks.append(f'<div class="subject" id="pictures-{safe}"><h3>{html.escape(name)}</h3>{"".join(figs)}</div>')
    return '<h2>What the encoders learned</h2><section class="extra">' + "".join(blocks) + "</section>"
