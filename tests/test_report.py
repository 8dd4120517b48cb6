"""The HTML report: content checks, and a real render in headless Chromium."""
import re


from selfsup.report import format_table
from selfsup.report.html import table_html, write_report

ROWS = [
    {"method": "simclr", "eval": "linear", "labels_per_class": 10, "accuracy": 0.91, "std": 0.01, "seeds": [0, 1], "accuracies": [0.9, 0.92]},
    {"method": "simclr", "eval": "finetune", "labels_per_class": 10, "accuracy": 0.95, "seed": 0},
    {"method": "supervised", "eval": "finetune", "labels_per_class": 10, "accuracy": 0.83, "seed": 0},
    {"method": "random-init", "eval": "linear", "labels_per_class": 10, "accuracy": 0.52, "seed": 0},
    {"method": "simclr", "eval": "linear", "labels_per_class": 1, "accuracy": 0.5, "seed": 0},
    {"method": "random-init", "eval": "linear", "labels_per_class": 1, "accuracy": 0.3, "seed": 0},
]
RESULTS = {"dataset": "digits", "rows": ROWS, "pretrain": {"simclr": {"seconds": 60, "img_per_s": 900, "epochs": 3}},
           "eval_seconds": 12, "headline": {"text": "At 10 labels per class, simclr is 12.0 points ahead."},
           "config": {"compare": {"seeds": [0], "val_per_class": 10}, "pretrain": {"simclr": {"backbone": "small_cnn"}}}}
HISTORY = {"simclr": [{"step": 0, "seconds": 0, "knn_acc": 0.4}] +
           [{"step": i, "seconds": i, "loss": 3 - i / 10, "knn_acc": 0.5 + i / 100, "embed_std_ratio": 0.8} for i in range(1, 10)]}


def test_table_bold_best_and_gain():
    t = table_html(ROWS)
    assert "<b>0.910<small> ± 0.010</small></b>" in t and "<b>0.950</b>" in t
    assert '<td class="up">+12.0</td>' in t  # simclr's best at 10 (0.95) minus supervised (0.83), in points
    assert '<th colspan="1">gain vs supervised</th>' in t and '<th colspan="2">linear</th>' in t


def test_text_table_shows_std():
    assert "0.910±0.014" in format_table(ROWS)


def test_report_is_self_contained(tmp_path):
    path = write_report(RESULTS, HISTORY, tmp_path / "report.html")
    page = path.read_text()
    assert page.count("<svg") == 2 and 'id="results"' in page and "12.0 points ahead" in page
    assert not re.search(r'(src|href)="https?://', page)  # nothing fetched from the network


def test_wide_table_fits_a_laptop_screen(tmp_path, browser_page):
    """The widest table a compare makes (every evaluation x 3 label counts, 3 seeds with std, gains) fits in 1400 px."""
    from selfsup.evaluate import EVALS

    page, errors, _ = browser_page
    trained = [e for e in EVALS if EVALS.get(e).kind in ("trained", "semi")]
    rows = [{"method": m, "eval": e, "labels_per_class": n, "accuracy": 0.5 + i / 100, "std": 0.0123,
             "seeds": [0, 1, 2], "accuracies": [0.5, 0.5, 0.5]}
            for i, m in enumerate(("simclr", "colorization", "random-init")) for e in EVALS
            for n in (1, 10, 100) if not (m == "random-init" and e in trained)]
    rows += [{"method": "supervised", "eval": e, "labels_per_class": n, "accuracy": 0.4, "std": 0.01,
              "seeds": [0, 1, 2], "accuracies": [0.4] * 3} for n in (1, 10, 100) for e in trained]
    path = write_report(RESULTS | {"rows": rows}, HISTORY, tmp_path / "report.html")
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(path.as_uri())
    box = page.locator("#results").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 1400, box
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1400
    assert errors == []


def test_report_of_a_real_compare_renders_in_headless_chromium(tmp_path, browser_page):
    """Table, every curve and every picture render with no console errors; the screenshot is kept in the run directory."""
    from selfsup.compare import CompareConfig, run_compare
    from selfsup.config import PretrainConfig
    from selfsup.evaluate import FinetuneConfig

    page, errors, remote = browser_page
    run = tmp_path / "cmp"
    base = PretrainConfig(dataset="digits", steps=30, batch_size=64, backbone_args={"width": 8}, monitor_seconds=0.2)
    run_compare(CompareConfig(dataset="digits", methods=("simclr", "rotation", "colorization"), labels_per_class=(1, 10),
                              minutes_per_method=None, out=str(run), pretrain=base,
                              finetune=FinetuneConfig(steps=30, eval_every=10)), show_progress=False)
    page.goto((run / "report.html").as_uri())
    assert page.locator("#results tbody tr").count() == 5  # 3 methods, supervised, random-init
    assert page.locator("#results b").count() >= 4  # a best value per column
    images = page.locator("section.extra img")
    assert images.count() == 3 * 4 + 2 * 3 + 1  # map, filters, neighbours, views per method; 3 per baseline; inpainting
    assert page.evaluate("() => [...document.querySelectorAll('section.extra img')].every(i => i.complete && i.naturalWidth > 0)")
    for plot in ("#label-efficiency svg", "#pretraining svg"):
        box = page.locator(plot).bounding_box()
        assert box and box["width"] > 300 and box["height"] > 100, plot
    # every panel drew its data: a curve per method and baseline, a pretraining curve per method and quantity
    for e, names in {"knn": ("simclr", "rotation", "colorization", "random-init"),
                     "linear": ("simclr", "rotation", "random-init"), "finetune": ("simclr", "rotation", "supervised")}.items():
        for m in names:
            assert page.locator(f'#label-efficiency svg [id="curve-{e}-{m}"]').count() >= 1, (e, m)
    for key in ("loss", "knn_acc", "embed_std_ratio"):
        for m in ("simclr", "rotation", "colorization"):
            assert page.locator(f'#pretraining svg [id="curve-{key}-{m}"]').count() == 1, (key, m)
    page.screenshot(path=str(run / "report.png"), full_page=True)
    assert errors == [] and remote == []
    assert (run / "report.png").stat().st_size > 10_000
