"""Pictures: filter grids, neighbours, views, colorization samples, embedding maps and exports."""
import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.factory import build_method, encoder_spec, encoder_and_config, random_encoder
from selfsup.augment import preset
from selfsup.backbones import BACKBONES
from selfsup.config import PretrainConfig
from selfsup.data import ImageSet, load
from selfsup.report import embedding, pictures
from selfsup.train import pretrain


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = PretrainConfig(dataset="digits", steps=60, batch_size=128, backbone_args={"width": 8}, out=str(out))
    return encoder_and_config(pretrain(cfg, load("digits"), show_progress=False))[0], cfg


def test_filter_grid_size_and_pretrained_differs_from_random(trained):
    encoder, cfg = trained
    random = random_encoder(encoder_spec(cfg, 1, 8), 0)
    a, b = pictures.filter_grid(encoder), pictures.filter_grid(random)
    # 8 filters of 3x3, one row of 8, scaled 8x, 1px padding
    assert a.shape == (1 + 1 * (24 + 1), 1 + 8 * (24 + 1), 3) and a.dtype == np.uint8
    assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() > 2  # same init, 60 steps apart


def test_neighbours_views_and_samples_sizes(trained, tmp_path):
    encoder, _ = trained
    test = load("digits", "test")
    nn_grid, hits = pictures.nearest_neighbours(encoder, test.images[:3], test.images[:100], k=5)
    scale = pictures.auto_scale(8)
    tile, pad = 8 * scale, 2 * scale
    assert nn_grid.shape == (pad + 3 * (tile + pad), pad + 6 * (tile + pad), 3) and hits is None
    views = pictures.augmented_views(test.images[:2], preset("greyscale", 1), n_views=4)
    assert views.shape == (2 + 2 * (tile + 2), 2 + 5 * (tile + 2), 3)
    path = pictures.save_png(views, tmp_path / "views.png")
    from PIL import Image

    assert Image.open(path).size == (views.shape[1], views.shape[0])


def test_nearest_neighbours_exclude_the_query_itself():
    enc = BACKBONES.build("small_cnn", in_channels=1, width=4)
    x = np.random.default_rng(0).integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    g, _ = pictures.nearest_neighbours(enc, x[:1], x, k=3)
    scale = pictures.auto_scale(8)
    tile, pad = 8 * scale, 2 * scale
    query, first = g[pad:pad + tile, pad:pad + tile], g[pad:pad + tile, 2 * pad + tile:2 * pad + 2 * tile]
    assert not np.array_equal(query, first)


def test_neighbour_frames_tell_same_class_from_other():
    """Three copies of two images: each query's nearest neighbour is its own copy (green frame); the class of the
    other image decides the others' frames, and the returned fraction counts them."""
    enc = BACKBONES.build("small_cnn", in_channels=3, width=4)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    bank = np.stack([a, a, b, b]).copy()
    bank[1, :, 0, 0] ^= 1  # near-copies, so that the query is not excluded as itself
    bank[3, :, 0, 0] ^= 1
    labels = np.array([0, 0, 1, 1])
    g, hits = pictures.nearest_neighbours(enc, bank[[0]], bank, k=3, query_labels=labels[[0]], bank_labels=labels)
    scale = pictures.auto_scale(32)
    tile, pad = 32 * scale, 2 * scale
    first = g[pad:pad + tile, 2 * pad + tile:2 * pad + 2 * tile]  # the nearest neighbour: the near-copy of a
    assert tuple(first[0, tile // 2]) == pictures.SAME and hits == 1 / 3
    third = g[pad:pad + tile, 4 * pad + 3 * tile:4 * pad + 4 * tile]
    assert tuple(third[0, tile // 2]) == pictures.OTHER


def test_colorization_samples_colour_and_inpainting():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 3, 16, 16), dtype=np.uint8)
    cfg = PretrainConfig(method="colorization", backbone_args={"width": 4})
    (caption, grid), = build_method(cfg, encoder_spec(cfg, 3, 16)).pictures(rgb).items()
    assert caption.startswith("colorization")
    tile = 16 * pictures.auto_scale(16)
    assert grid.shape == (2 + 3 * (tile + 2), 2 + 3 * (tile + 2), 3)
    first_tile = grid[2:2 + tile, 2:2 + tile]
    assert np.array_equal(first_tile[..., 0], first_tile[..., 2])  # the input column is grey
    (caption, picture), = build_method(cfg, encoder_spec(cfg, 1, 16)).pictures(rgb[:, :1]).items()
    assert caption.startswith("inpainting") and picture.shape == grid.shape


def test_export_npy_and_csv(tmp_path):
    f, y = np.random.default_rng(0).random((5, 3)).astype(np.float32), np.array([0, 1, 2, -1, 1])
    index = ["7", "3", "9", "0", "4"]  # each row keyed to its image in the dataset
    embedding.export(f, y, tmp_path / "feats.npy", index)
    assert np.array_equal(np.load(tmp_path / "feats.npy"), f) and np.array_equal(np.load(tmp_path / "feats.labels.npy"), y)
    assert np.load(tmp_path / "feats.index.npy").tolist() == [7, 3, 9, 0, 4]
    embedding.export(f, y, tmp_path / "feats.csv", index)
    table = np.loadtxt(tmp_path / "feats.csv", delimiter=",", skiprows=1)
    assert table.shape == (5, 5) and table[:, 0].tolist() == [7, 3, 9, 0, 4] and np.array_equal(table[:, 1], y)
    assert np.allclose(table[:, 2:], f, atol=1e-5)
    assert (tmp_path / "feats.csv").read_text().startswith("index,label,f0,f1,f2\n")


def test_projections_and_subsample():
    x = np.random.default_rng(0).random((60, 16))
    for how in ("pca", "tsne"):
        assert embedding.project(x, how).shape == (60, 2)
    assert len(embedding.subsample(100, 10)) == 10 and len(embedding.subsample(5, 10)) == 5


def test_embed_cli_writes_map_png_and_export(tmp_path, capsys):
    from selfsup.cli import main

    code = main(["embed", "--random-init", "--dataset", "digits", "--split", "test", "--projection", "pca",
                 "--out", str(tmp_path / "m.html"), "--out", str(tmp_path / "m.png"), "--export", str(tmp_path / "f.npy")])
    assert code == 0
    assert (tmp_path / "m.png").stat().st_size > 5000 and np.load(tmp_path / "f.npy").shape == (363, 256)
    html = (tmp_path / "m.html").read_text()
    assert "<script src=" not in html and "Bokeh" in html  # bokeh inlined, no CDN
    assert main(["embed", "--random-init", "--dataset", "digits", "--out", str(tmp_path / "m.svg")]) == 2
    assert "writes .html or .png" in capsys.readouterr().err


def test_embed_exports_a_flat_folder_with_its_paths_by_default(tmp_path, capsys):
    """A flat folder has no test split: embed maps its images (the train split) unless told otherwise."""
    from selfsup.cli import main

    rng = np.random.default_rng(0)
    (tmp_path / "photos" / "album").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
            tmp_path / "photos" / ("album" if i < 4 else "") / f"{i}.png")
    code = main(["embed", "--random-init", "--dataset", f"folder:{tmp_path / 'photos'}", "--projection", "pca",
                 "--export", str(tmp_path / "f.csv")])
    assert code == 0, capsys.readouterr().err
    rows = (tmp_path / "f.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[0].startswith("path,label,f0")
    assert {r.split(",")[0] for r in rows[1:]} == {f"album/{i}.png" for i in range(4)} | {f"{i}.png" for i in range(4, 12)}


def test_map_in_headless_chromium_with_10k_points(tmp_path, browser_page):
    """Renders, holds every point, and hovering a point shows its thumbnail and class name."""
    page, errors, remote = browser_page
    digits = load("digits", "train")
    reps = -(-10_000 // len(digits))
    data = ImageSet("digits", np.tile(digits.images, (reps, 1, 1, 1))[:10_000], np.tile(digits.labels, reps)[:10_000], digits.classes)
    torch.manual_seed(0)
    enc = BACKBONES.build("small_cnn", in_channels=1, width=8)
    path = embedding.write_embedding(enc, data, [tmp_path / "map.html"], "10k points", "pca", None)["html"]
    page.goto(path.as_uri())
    page.wait_for_function("() => window.Bokeh && Bokeh.index.roots.length > 0", timeout=30_000)
    info = page.evaluate("""() => {
        const view = Bokeh.index.roots[0];
        const renderers = view.model.renderers.filter(r => r.data_source && r.data_source.data.x);
        const ds = renderers[3].data_source;
        const rect = view.canvas_view.el.getBoundingClientRect();
        return {points: renderers.reduce((a, r) => a + r.data_source.data.x.length, 0), classes: renderers.length,
                hide: [...view.model.center, ...view.model.left, ...view.model.right].find(m => m.click_policy !== undefined)?.click_policy, cls: ds.data.cls[0],
                x: rect.left + view.frame.x_scale.compute(ds.data.x[0]), y: rect.top + view.frame.y_scale.compute(ds.data.y[0])};
    }""")
    assert info["points"] == 10_000 and info["classes"] == 10 and info["hide"] == "hide"
    page.mouse.move(info["x"] + 40, info["y"] + 40)
    page.mouse.move(info["x"], info["y"], steps=4)
    tip = page.locator(".selfsup-tip").first
    tip.wait_for(state="visible", timeout=10_000)
    assert tip.locator("img").get_attribute("src").startswith("data:image/png;base64,")
    assert "class: " in tip.inner_text()  # the hovered class (points of several classes may overlap here)
    page.screenshot(path=str(tmp_path / "map.png"))
    assert errors == [] and remote == []
    assert (tmp_path / "map.png").stat().st_size > 10_000
