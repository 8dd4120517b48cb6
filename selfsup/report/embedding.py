"""2-D maps of an encoder's features: an interactive, self-contained HTML page and a static PNG.

The page is Bokeh with its JavaScript inlined (no CDN, no server): points coloured by class, hover
shows the image and its class, wheel zoom and pan, and clicking a legend entry hides that class.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

from ..errors import ConfigError

PROJECTIONS = ("tsne", "umap", "pca")
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def project(features: np.ndarray, how: str = "tsne", seed: int = 0) -> np.ndarray:
    """(N, D) -> (N, 2) by t-SNE (after PCA to 50 dims), UMAP (if umap-learn is installed) or PCA."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, np.float32)
    x = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)  # cosine geometry, as kNN uses
    if how == "pca" or len(x) < 5:
        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if how == "tsne":
        from sklearn.manifold import TSNE

        if x.shape[1] > 50:
            x = PCA(n_components=min(50, len(x) - 1), random_state=seed).fit_transform(x)
        return TSNE(n_components=2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed).fit_transform(x)
    if how == "umap":
        try:
            import umap
        except ImportError:
            raise ConfigError("UMAP needs the optional extra: pip install 'selfsup[umap]' (umap-learn); or use --projection tsne") from None
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    raise ConfigError(f"unknown projection {how!r}; choose from: {', '.join(PROJECTIONS)}")


def subsample(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    if not max_points or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))


def thumbnails(images: np.ndarray, side: int = 96) -> list[str]:
    """PNG data URIs of each (C, H, W) uint8 image, enlarged (nearest) to about `side` pixels."""
    from PIL import Image

    out = []
    for img in images:
        a = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        im = Image.fromarray(np.ascontiguousarray(a))
        if im.width < side:
            im = im.resize((side, side * im.height // im.width), Image.NEAREST)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        out.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return out


def class_names(labels: np.ndarray, classes: list[str]) -> list[str]:
    return [classes[y] if 0 <= y < len(classes) else ("unlabeled" if y < 0 else str(y)) for y in labels]


def map_html(xy: np.ndarray, labels: np.ndarray, classes: list[str], images: np.ndarray, path: str | Path,
             title: str = "embedding map", marked: dict[int, str] | None = None, names: list[str] | None = None
             ) -> Path:
    """Write the interactive map: one glyph renderer per class, so the legend can hide classes. `marked`: point ->
    note, drawn as rings on top (the images `selfsup select` picked); `names`: each point's file or index."""
    from bokeh.embed import file_html
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure
    from bokeh.resources import INLINE

    files = names if names is not None else [str(i) for i in range(len(labels))]
    names = class_names(labels, classes)
    thumbs = thumbnails(images)
    fig = figure(title=title, width=900, height=760, tools="pan,wheel_zoom,box_zoom,reset,save",
                 active_scroll="wheel_zoom", output_backend="webgl", match_aspect=True)
    for i, name in enumerate(dict.fromkeys(sorted(set(names), key=lambda n: (len(n), n)))):
        idx = [j for j, n in enumerate(names) if n == name]
        src = ColumnDataSource({"x": xy[idx, 0], "y": xy[idx, 1], "cls": [name] * len(idx), "img": [thumbs[j] for j in idx],
                                "index": idx, "file": [files[j] for j in idx], "note": [""] * len(idx)})
        fig.scatter("x", "y", source=src, size=6, alpha=0.75, color=PALETTE[i % len(PALETTE)], legend_label=name,
                    name="points")
    if marked:
        idx = sorted(marked)
        src = ColumnDataSource({"x": xy[idx, 0], "y": xy[idx, 1], "cls": [names[j] for j in idx],
                                "img": [thumbs[j] for j in idx], "index": idx, "file": [files[j] for j in idx],
                                "note": [marked[j] for j in idx]})
        fig.scatter("x", "y", source=src, size=14, fill_alpha=0, line_color="black", line_width=2.5,
                    legend_label=f"to label ({len(idx)})", name="marked")
    fig.add_tools(HoverTool(tooltips='<div class="selfsup-tip"><img src="@img" width="96" style="image-rendering:pixelated">'
                                     '<div class="selfsup-cls">class: @cls</div><div>@file</div>'
                                     '<div class="selfsup-note">@note</div></div>'))
    fig.legend.click_policy = "hide"
    fig.legend.location = "top_left"
    fig.xaxis.visible = fig.yaxis.visible = False
    path = Path(path)
    path.write_text(file_html(fig, INLINE, title))
    return path


def map_png(xy: np.ndarray, labels: np.ndarray, classes: list[str], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = np.array(class_names(labels, classes))
    fig, ax = plt.subplots(figsize=(7, 6.5))
    for i, name in enumerate(dict.fromkeys(sorted(set(names), key=lambda n: (len(n), n)))):
        m = names == name
        ax.scatter(xy[m, 0], xy[m, 1], s=4, alpha=0.7, color=PALETTE[i % len(PALETTE)], label=name)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title)
    ax.legend(markerscale=3, fontsize=8, loc="best")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def export(features: np.ndarray, labels: np.ndarray, path: str | Path, names: list[str] | None = None,
           by: str = "index") -> Path:
    """Each row keyed to its image (`names`: file paths, `by`="path", or dataset indices, `by`="index").
    `.npy`: features (N, D) float32, with NAME.labels.npy and NAME.paths.txt (a file per line) or NAME.index.npy
    beside; `.csv`: path (or index), label, then f0..f{D-1}."""
    path = Path(path)
    names = names if names is not None else [str(i) for i in range(len(labels))]
    if path.suffix == ".npy":
        np.save(path, np.asarray(features, np.float32))
        np.save(path.with_suffix(".labels.npy"), np.asarray(labels, np.int64))
        if by == "path":
            path.with_suffix(".paths.txt").write_text("".join(n + "\n" for n in names))
        else:
            np.save(path.with_suffix(".index.npy"), np.asarray([int(n) for n in names], np.int64))
    elif path.suffix == ".csv":
        import csv

        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([by, "label"] + [f"f{i}" for i in range(features.shape[1])])
            for n, y, row in zip(names, labels, features):
                w.writerow([n, int(y)] + [f"{v:.6g}" for v in row])
    else:
        raise ConfigError(f"--export writes .npy or .csv, not {path.suffix or 'no suffix'}")
    return path


def write_embedding(encoder, data, outs: list[Path], title: str, how: str = "tsne", max_points: int | None = 10000,
                    seed: int = 0, export_to: Path | None = None, marked: dict[int, str] | None = None
                    ) -> dict[str, Path]:
    """Embed (a subsample of) `data`, then write each of `outs` (.html map, .png map) and the optional raw export.
    `marked`: image index -> note, ringed on the map (always shown, whatever the subsample)."""
    from ..evaluate import extract_features

    idx = subsample(len(data), max_points, seed)
    if marked:
        idx = np.union1d(idx, np.array(sorted(marked), np.int64))
    images, labels = np.ascontiguousarray(data.images[idx]), data.labels[idx]
    feats = extract_features(encoder, images).numpy()
    every = data.names()
    names = [every[i] for i in idx]
    written = {}
    if export_to is not None:
        written["features"] = export(feats, labels, export_to, names, "path" if data.paths is not None else "index")
    if outs:
        xy = project(feats, how, seed)
        for path in map(Path, outs):
            if path.suffix not in (".html", ".png"):
                raise ConfigError(f"a map is written as .html or .png, not {path.name}")
            if path.suffix == ".html":
                shown = {int(j): marked[int(i)] for j, i in enumerate(idx) if int(i) in (marked or {})}
                written["html"] = map_html(xy, labels, data.classes, images, path, title, shown, names)
            else:
                written["png"] = map_png(xy, labels, data.classes, path, title)
    return written
