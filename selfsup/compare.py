"""`selfsup compare`: every method and baseline, the same budget, the same label subsets, one table and report.

Work is reused: a method's pretraining is skipped when a finished checkpoint with the same config
exists, and each (name, eval, labels per class, seed) result is cached in OUT/evals.jsonl.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from . import checkpoint, loggers, threads
from .augment import view_for
from .config import PretrainConfig
from .data import ImageSet, fetch, has_unlabeled_split, load
from .data.folder import split_info
from .engine import eval_device
from .errors import ConfigError, DataError, SelfsupError
from .audit import leakage_report
from .evaluate import (EVALS, FinetuneConfig, FrozenCache, SemisupConfig, aggregate, class_count, few_label_rows,
                       given_validation, label_subset)
from .evaluate.labels import LabelPlan, label_plan
from .evaluate.finetune import train_classifier
from .factory import encoder_spec, method_from, random_encoder
from .files import DirLock, append_jsonl, read_jsonl, write_json
from .methods import METHODS
from .papers import paper_config
from .report import format_table
from .train import pretrain

BASELINES = {"random": "random-init", "supervised": "supervised"}
# Training from random weights: one learning rate (a slower encoder makes no sense there) and, for fine-tuning, a
# plain linear head (a probe on random features is a poor start: 0.913 against 0.955 at 100 MNIST labels per class,
# bench/README.md).
SCRATCH = {"encoder_lr_scale": 1.0, "head": "linear"}


@dataclass
class CompareConfig:
    dataset: str = "mnist"
    methods: tuple[str, ...] = ("simclr",)
    baselines: tuple[str, ...] = ("supervised", "random")
    labels_per_class: tuple[int, ...] | None = None  # None: 1, 10, 100, or what the labeled images allow
    evals: tuple[str, ...] = ("knn", "linear", "propagate", "finetune")  # propagation: the best frozen evaluation at
    # 10 labels per class on MNIST and CIFAR-10 for a few seconds (bench/README.md, "The default evaluations")
    minutes_per_method: float | None = 3.0  # None: keep the budget in `pretrain`
    seeds: tuple[int, ...] = (0,)
    val_per_class: int | None = None  # None: 10, or what the labeled images allow
    labeled: str | None = None  # a CSV of the labeled images to evaluate with, instead of N per class
    pictures: bool = True  # maps, filters, neighbours, views and colorization samples in the report
    map_points: int = 2000  # test images per embedding map (t-SNE time grows with this)
    out: str = "runs/cmp"
    given: tuple[str, ...] = ()  # pretraining fields the user set (kept over a method's own settings)
    paper_settings: bool = False  # each method trained as its paper does (selfsup.papers): the GPU recipes
    device: str = "auto"  # where evaluation runs: auto (the pretraining accelerator's device), cpu, cuda, cuda:N
    pretrain: PretrainConfig | None = None  # None: the measured defaults for the data's channels (selfsup.defaults)
    pretrain_args: dict = field(default_factory=dict)  # PretrainConfig fields changed on top of `pretrain`
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    semisup: SemisupConfig = field(default_factory=SemisupConfig)

    def validate(self) -> "CompareConfig":
        METHODS.check(self.methods)
        EVALS.check(self.evals)
        for b in self.baselines:
            if b not in BASELINES:
                raise ConfigError(f"unknown baseline {b!r}; choose from: {', '.join(BASELINES)}")
        if not self.methods and not self.baselines:
            raise ConfigError("nothing to compare: give --methods and/or --baselines")
        if any(n < 1 for n in self.labels_per_class or ()):
            raise ConfigError("--labels-per-class values must be at least 1")
        self.finetune.checked()
        self.semisup.checked()
        if self.minutes_per_method is not None and not self.minutes_per_method > 0:
            raise ConfigError(f"--minutes-per-method must be positive, got {self.minutes_per_method}")
        return self

    def base(self, channels: int | None = None) -> PretrainConfig:
        """The pretraining config every method shares: `pretrain` (or the defaults for `channels`) + `pretrain_args`."""
        from .defaults import for_channels

        if self.pretrain is None and channels is None:
            return PretrainConfig().override(**self.pretrain_args)  # before the data is read: engine and data fields
        return (self.pretrain or for_channels(channels, self.methods)).override(**self.pretrain_args)

    def resolved(self, channels: int, images: int | None = None) -> "CompareConfig":
        """The same comparison with its pretraining config made concrete for `images` training images of `channels`
        channels (semi-supervised training's budget depends on how many there are)."""
        return replace(self, pretrain=self.base(channels), pretrain_args={},
                       given=self.given + tuple(self.pretrain_args), semisup=self.semisup.resolved(channels, images))

    def method_config(self, method: str) -> PretrainConfig:
        if self.pretrain is None or self.pretrain_args:
            raise ValueError("method_config needs a resolved CompareConfig (call resolved(channels) first)")
        d = self.pretrain.to_dict() | {"dataset": self.dataset, "method": method, "out": str(Path(self.out) / "pretrain" / method)}
        if d["split"] == "train" and has_unlabeled_split(self.dataset, d["data_root"], d["labels"]):
            d["split"] = "train+unlabeled"  # unlabeled images join pretraining, never evaluation
        if method != self.pretrain.method:  # method_args (and the learning rate) belong to the shared config's own
            d["method_args"] = {}             # method: another takes its own CPU settings where it has them
            d |= {k: v for k, v in METHODS.get(method).cpu_settings.items() if k not in self.given}
        cfg = PretrainConfig.from_dict(d).with_budget(minutes=self.minutes_per_method)
        return (paper_config(cfg) if self.paper_settings else cfg).validate()

    def to_dict(self) -> dict:
        return asdict(self)


def _key(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_splits(dataset: str, root: str | None, size: int | None = None, labels: str | None = None,
                accelerator: str = "auto") -> tuple[ImageSet, ImageSet | None]:
    """(train, test) of a dataset; test is None for a folder with no labels (nothing to test on)."""
    kw = {"size": size, "labels": labels, "accelerator": accelerator}
    try:
        train = load(dataset, "train", root, **kw)
    except DataError:
        if dataset != "mnist":
            raise
        fetch("mnist")
        train = load(dataset, "train", root, **kw)
    if dataset.startswith("folder:") and not labels and (train.labels < 0).all():
        return train, None
    return train, load(dataset, "test", root, **kw)


def pretrained(cfg: PretrainConfig, train: ImageSet, show_progress: bool, fabric=None) -> tuple[Path, dict, bool]:
    """Pretrain, reuse a finished checkpoint made with exactly this config, or resume an interrupted one.
    Returns (path, state, reused)."""
    resume: bool | tuple = False
    if checkpoint.candidates(cfg.out):
        try:
            path, state = checkpoint.latest(cfg.out)
            if state.get("config") == cfg.to_dict():
                if state.get("final"):
                    return path, state, True
                resume = (path, state)
        except SelfsupError:  # nothing readable: the run is redone
            pass
    print(f"{'resuming' if resume else 'pretraining'} {cfg.method} on {cfg.dataset}", file=sys.stderr, flush=True)
    path = pretrain(cfg, train, show_progress, resume=resume, overwrite=not resume, fabric=fabric)
    return path, checkpoint.load(path), False


class EvalCache:
    """Rows already computed, keyed by everything that determines them; appended as they are made."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = {r["key"]: r for r in read_jsonl(path) if "key" in r}  # a torn last line is dropped

    def add(self, key: str, row: dict) -> None:
        self.rows[key] = row | {"key": key}
        append_jsonl(self.path, [self.rows[key]])


def run_compare(cc: CompareConfig, show_progress: bool = True, fabric=None) -> dict:
    """Pretrain each method (or reuse), evaluate methods and baselines, write results.json and report.html.

    fabric: the engine the program created (default: one from `cc.pretrain`). On several processes every one
    pretrains; only the main one evaluates and writes (the others return an empty dict)."""
    cc.validate()
    threads.start()
    out = Path(cc.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to output directory {out} ({e.strerror}); choose another --out") from None
    base = cc.base()
    train, test = load_splits(cc.dataset, base.data_root, base.image_size, base.labels, base.accelerator)
    cc = cc.resolved(train.channels, len(train))
    if cc.pretrain.image_size is None and train.side != train.size[0]:  # photos: the side chosen for the device
        cc = replace(cc, pretrain=cc.pretrain.override(image_size=train.side))
    plan = None
    if test is not None:  # every check that can fail on the labels runs before any pretraining
        plan = label_plan(train, cc.labels_per_class, cc.val_per_class, cc.labeled, bool(cc.pretrain.labels))
    configs = {m: cc.method_config(m) for m in cc.methods}
    if configs and fabric is None:
        from .engine import fabric_for

        first = next(iter(configs.values()))
        fabric = fabric_for(first, encoder_spec(first, train.channels, train.side))
    run = _compare if test is not None else label_free_compare
    if fabric is None or fabric.is_global_zero:
        with DirLock(out):  # one live compare per OUT
            return run(cc, configs, train, test, show_progress, fabric, plan)
    return run(cc, configs, train, test, show_progress, fabric, plan)


def _compare(cc: CompareConfig, configs: dict, train: ImageSet, test: ImageSet, show_progress: bool, fabric,
             plan: LabelPlan) -> dict:
    out = Path(cc.out)
    subjects, shown, states, checkpoints = {}, {}, {}, {}
    for m, cfg in configs.items():
        images = train if cfg.split == "train" else load(cc.dataset, cfg.split, cfg.data_root, cfg.strict)
        path, state, reused = pretrained(cfg, images, show_progress, fabric)
        states[m], checkpoints[m] = state.get("summary", {}) | {"reused": reused}, state
        method, _ = method_from(state)
        subjects[m] = (method.backbone, cc.evals, {}, cfg.to_dict())
        shown[m] = {"encoder": method.backbone, "identity": cfg.to_dict(), "method": method,
                    "view": view_for(cfg, train.channels, method)}
    if fabric is not None and not fabric.is_global_zero:
        return {}
    spec = encoder_spec(cc.pretrain.override(dataset=cc.dataset), train.channels, train.side)
    fresh = lambda seed: random_encoder(spec, seed, train.images)  # noqa: E731
    arch = {"backbone": cc.pretrain.backbone, "backbone_args": cc.pretrain.backbone_args, "method": cc.pretrain.method}
    if "random" in cc.baselines:
        subjects[BASELINES["random"]] = (fresh, tuple(e for e in cc.evals if EVALS.get(e).kind in ("frozen", "graph")), {}, arch)
        shown[BASELINES["random"]] = {"encoder": fresh(cc.seeds[0]), "identity": arch | {"seed": cc.seeds[0]}}
    if "supervised" in cc.baselines:
        trained = ("finetune",) + tuple(e for e in cc.evals if EVALS.get(e).kind == "semi")  # the same training
        subjects[BASELINES["supervised"]] = (fresh, trained, SCRATCH, arch)
    t_eval = time.perf_counter()
    seen = train if all(c.split == "train" for c in configs.values()) else \
        load(cc.dataset, next(c.split for c in configs.values() if c.split != "train"), cc.pretrain.data_root,
             size=cc.pretrain.image_size, accelerator=cc.pretrain.accelerator)
    leak = leakage_report(None, seen, test)
    print(leak["text"], file=sys.stderr, flush=True)
    pictured = (BASELINES["supervised"], "finetune", pictured_count(plan), cc.seeds[0])

    def keep(row: dict, model) -> None:
        keep_trained(cc, checkpoints, row, model, plan.counts)
        if (row["method"], row["eval"], row["labels_per_class"], row["seed"]) == pictured:
            shown[BASELINES["supervised"]] = {"encoder": model.encoder}  # the pictures' supervised encoder
    per_seed = evaluate_all(cc, subjects, train, test, EvalCache(out / "evals.jsonl"), plan,
                            np.array(leak["leaked_index"], np.int64), keep=keep, progress=show_progress)
    rows = aggregate(per_seed)
    results = {
        "dataset": cc.dataset, "rows": rows, "rows_per_seed": per_seed,
        "pretrain_seconds": round(sum(s.get("seconds", 0) for s in states.values()), 1),
        "pretrain": states, "eval_seconds": round(time.perf_counter() - t_eval, 1),
        "config": {"compare": {k: v for k, v in cc.to_dict().items() if k not in ("pretrain", "finetune", "semisup")},
                   "pretrain": {m: c.to_dict() for m, c in configs.items()}, "finetune": cc.finetune.to_dict(),
                   "semisup": cc.semisup.to_dict()},
        "evals": {e: {"description": EVALS.describe()[e], "uses_unlabeled_images": EVALS.get(e).unlabeled}
                  for e in cc.evals},
        "headline": headline(rows, plan.counts),
        "splits": {"train": len(train), "test": len(test), "validation_per_class": plan.validation.per_class,
                   "pretraining": {m: c.split for m, c in configs.items()}}
        | (split_info(cc.dataset[len("folder:"):], cc.pretrain.labels) if cc.dataset.startswith("folder:") else {}),
        "labels": plan.to_dict(), "leakage": {k: v for k, v in leak.items() if k != "leaked_index"},
    }
    write_json(out / "results.json", results)
    if cc.pretrain.logger:  # the table as metrics, the comparison's settings as hyperparameters
        board = loggers.make(cc.pretrain.logger, out, results["config"]["compare"])
        loggers.log(board, {"step": 0} | {f"{r['method']}/{r['eval']}@{r['labels_per_class']}": r["accuracy"] for r in rows})
        loggers.close(board)
    write_pages(cc, results, configs, shown, fresh, arch, train, test, plan)
    print(format_table(rows))
    if results["headline"]:
        print(results["headline"]["text"])
    print(leak["text"])
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}")
    return results


def pictured_count(plan: LabelPlan) -> int | str:
    """The label count (or label set) whose supervised-from-scratch encoder the pictures show: about 10 per class."""
    return next(iter(plan.sets)) if plan.sets else max([k for k in plan.counts if k <= 10] or [min(plan.counts)])


def headline_count(labels_per_class: tuple) -> int | str:
    """The label count a headline speaks of: 10 per class, or the middle count asked for (or a label set's name)."""
    if any(isinstance(n, str) for n in labels_per_class):
        return labels_per_class[0]
    return 10 if 10 in labels_per_class else sorted(labels_per_class)[len(labels_per_class) // 2]


def keep_trained(cc: CompareConfig, checkpoints: dict, row: dict, model, counts: tuple) -> None:
    """Save the semi-supervised encoder (and head) of each pretrained method at the headline's label count, first
    seed, as a checkpoint in OUT/semisup/METHOD: `selfsup export OUT/semisup/METHOD` hands it on like a pretrained one."""
    key = ("semisup", headline_count(counts), cc.seeds[0])
    if (row["eval"], row["labels_per_class"], row["seed"]) != key or row["method"] not in checkpoints:
        return
    state = dict(checkpoints[row["method"]])
    method, _ = method_from(state)
    method.backbone.load_state_dict(model.encoder.state_dict())
    state |= {"method": method.state_dict(), "semisup": {"row": row, "head": model.head.state_dict()}}
    checkpoint.save(Path(cc.out) / "semisup" / row["method"] / "checkpoints" / "last.pt", state)


def evaluate_all(cc: CompareConfig, subjects: dict, train: ImageSet, test: ImageSet, cache: EvalCache,
                 plan: LabelPlan, leaked: np.ndarray | None = None, keep=None, progress: bool = False) -> list[dict]:
    """Per-seed rows of every subject (name -> (encoder or seed -> encoder, evals, training overrides, identity));
    rows already in the cache are reused, new ones are added to it as they are made; `keep(row, model)` sees each
    newly trained model; `progress`: lines on stderr as `few_label_rows` gives them."""
    ft, per_seed = cc.finetune, []
    device = eval_device(cc.device, cc.base().accelerator)  # baselines and trained evaluations on the run's device
    trained = {"finetune": ft.to_dict(), "semisup": cc.semisup.to_dict()}  # what else determines a trained row
    frozen = FrozenCache()  # each encoder's features and graph, made once for all its evaluations
    for name, (encoder, evals, overrides, identity) in subjects.items():
        for s in cc.seeds:
            for e in evals:
                sets = {k: v.tolist() for k, v in (plan.sets or {}).items()}
                keys = {n: _key([name, identity, cc.dataset, e, n, s, plan.validation.per_class, trained.get(e)]
                                + ([overrides] if overrides else []) + ([sets] if sets else [])
                                + ([len(leaked)] if leaked is not None and len(leaked) else []))
                        for n in plan.counts}
                todo = [n for n, k in keys.items() if k not in cache.rows]
                if todo:
                    print(f"evaluating {name}: {e} at {todo} labels per class, seed {s}", file=sys.stderr, flush=True)
                    for r in few_label_rows(encoder, train, test, [] if plan.sets else todo, name, (e,), (s,),
                                            device=device, finetune=ft, semisup=cc.semisup, keep=keep, validation=plan.validation,
                                            label_sets={k: plan.sets[k] for k in todo} if plan.sets else None,
                                            leaked=leaked, frozen=frozen, progress=progress, **overrides):
                        cache.add(keys[r["labels_per_class"]], r)
                per_seed += [{k: v for k, v in cache.rows[keys[n]].items() if k != "key"} for n in plan.counts]
    return per_seed


def write_pages(cc: CompareConfig, results: dict, configs: dict, shown: dict, fresh, arch: dict, train: ImageSet,
                test: ImageSet, plan: LabelPlan) -> None:
    """report.html with the pretraining curves and, when asked, every subject's pictures."""
    from .report.gallery import gallery_html
    from .report.html import write_report

    out = Path(cc.out)
    histories = {m: read_jsonl(Path(c.out) / "metrics.jsonl") for m, c in configs.items()}
    if cc.pictures and "supervised" in cc.baselines:  # its pictures: the encoder trained at ~10 labels per class, first seed
        n = pictured_count(plan)
        if BASELINES["supervised"] not in shown:  # not trained in this process (its row came from the cache)
            val = plan.validation.split(train.labels) if not plan.sets else \
                given_validation(next(iter(plan.sets.values())), train.labels, plan.validation.per_class)
            idx = np.setdiff1d(plan.sets[n], val) if plan.sets else label_subset(train.labels, n, cc.seeds[0], val)
            model, _ = train_classifier(fresh(cc.seeds[0]), train.images[idx], train.labels[idx], train.images[val],
                                        train.labels[val], class_count(train.labels), cc.finetune, cc.seeds[0], **SCRATCH)
            shown[BASELINES["supervised"]] = {"encoder": model.encoder}
        shown[BASELINES["supervised"]]["identity"] = arch | {"n": n, "ft": cc.finetune.to_dict()}
    extra = gallery_html(shown, test, out / "maps", cc.map_points, cc.seeds[0]) if cc.pictures else ""
    write_report(results, histories, out / "report.html", extra)


def headline(rows: list[dict], labels_per_class: tuple[int, ...]) -> dict:
    """Which evaluation of which method won at 10 labels per class (or the middle count), what it used, and how far
    it is from supervised from scratch (and from the same semi-supervised training from scratch, and from random
    weights' best frozen evaluation, when shown)."""
    n = headline_count(labels_per_class)
    at = [r for r in rows if r["labels_per_class"] == n]
    sup = {r["eval"]: r["accuracy"] for r in at if r["method"] == BASELINES["supervised"]}
    ssl = [r for r in at if r["method"] not in BASELINES.values()]
    if "finetune" not in sup or not ssl:
        return {}
    unlabeled = lambda r: r["eval"] in EVALS and EVALS.get(r["eval"]).unlabeled  # noqa: E731
    best = max(ssl, key=lambda r: r["accuracy"])
    gain = best["accuracy"] - sup["finetune"]
    uses = "the labels and the unlabeled images" if unlabeled(best) else "the labels alone"
    where = f"With the {best.get('labels', n)} labeled images given" if isinstance(n, str) else f"At {n} labels per class"
    text = (f"{where}, {best['method']} with {best['eval']} wins: {best['accuracy']:.3f}, using {uses}; "
            f"{abs(gain) * 100:.1f} points {'ahead of' if gain > 0 else 'behind'} supervised from scratch "
            f"({sup['finetune']:.3f}).")
    alone = [r for r in ssl if not unlabeled(r)]
    if unlabeled(best) and alone:
        top = max(alone, key=lambda r: r["accuracy"])
        text += f" With the labels alone, {top['method']} {top['eval']} reaches {top['accuracy']:.3f}."
    if best["eval"] in sup and best["eval"] != "finetune":
        text += f" The same {best['eval']} training from random init reaches {sup[best['eval']]:.3f}."
    rnd = max((r for r in at if r["method"] == BASELINES["random"]), key=lambda r: r["accuracy"], default=None)
    if rnd is not None:
        text += (f" Frozen random weights reach {rnd['accuracy']:.3f} at best ({rnd['eval']})"
                 + (", as much as pretraining: it did not help here." if rnd["accuracy"] >= best["accuracy"] else "."))
    return {"labels_per_class": n, "best": best, "supervised": sup["finetune"], "gain": round(gain, 4),
            "uses_unlabeled_images": unlabeled(best), "text": text}


def label_free_compare(cc: CompareConfig, configs: dict, train: ImageSet, test: None, show_progress: bool, fabric,
                       plan: None = None) -> dict:
    """A folder with no labels yet: pretrain each method, then rank the encoders (and random init) by label-free
    signals (selfsup.signals). Writes results.json and report.html; says which encoder looks best and why."""
    import html as html_

    from .report.gallery import gallery_html
    from .report.sheets import page
    from .signals import HIGHER_IS_BETTER, best_of, signals

    out = Path(cc.out)
    table, shown = {}, {}
    for m, cfg in configs.items():
        images = train if cfg.split == "train" else load(cc.dataset, cfg.split, cfg.data_root, cfg.strict)
        path, state, _ = pretrained(cfg, images, show_progress, fabric)
        method, _ = method_from(state)
        table[m] = signals(method.backbone, train.images)
        shown[m] = {"encoder": method.backbone, "identity": cfg.to_dict(), "method": method,
                    "view": view_for(cfg, train.channels, method)}
    if fabric is not None and not fabric.is_global_zero:
        return {}
    if "random" in cc.baselines:
        spec = encoder_spec(cc.pretrain.override(dataset=cc.dataset), train.channels, train.side)
        table[BASELINES["random"]] = signals(random_encoder(spec, cc.seeds[0], train.images), train.images)
    best, why = best_of(table)
    results = {"dataset": cc.dataset, "labels": "none: the folder has no labels yet, so no accuracy can be measured",
               "label_free": table, "higher_is_better": HIGHER_IS_BETTER, "best": best, "why": why,
               "config": {"compare": {k: v for k, v in cc.to_dict().items() if k not in ("pretrain", "finetune", "semisup")},
                          "pretrain": {m: c.to_dict() for m, c in configs.items()}},
               "next": "label a few images (`selfsup select --checkpoint RUN --budget B`), then compare again with "
                       "--labels FILE.csv"}
    write_json(out / "results.json", results)
    names = list(next(iter(table.values())))
    head = "".join(f"<th>{n} ({'higher' if HIGHER_IS_BETTER[n] else 'lower'} is better)</th>" for n in names)
    body = "".join(f"<tr><td>{html_.escape(m)}</td>" + "".join(f"<td>{v[n]}</td>" for n in names) + "</tr>"
                   for m, v in table.items())
    sample = train.subset(np.random.default_rng(cc.seeds[0]).choice(len(train), min(len(train), cc.map_points),
                                                                       replace=False))
    extra = gallery_html(shown, sample, out / "maps", cc.map_points, cc.seeds[0]) if cc.pictures else ""
    (out / "report.html").write_text(page("selfsup compare: no labels yet", html_.escape(why) + ". " +
                                          html_.escape(results["next"]) + ".",
                                          f"<table border=1 cellpadding=4><tr><th>encoder</th>{head}</tr>{body}</table>"
                                          + extra))
    print("encoder      " + "  ".join(names))
    for m, v in table.items():
        print(f"{m:12s} " + "  ".join(f"{v[n]:>{len(n)}}" for n in names))
    print(why)
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.html'}")
    return results
