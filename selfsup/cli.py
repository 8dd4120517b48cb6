"""The `selfsup` command."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .errors import ConfigError, DataError, Interrupted, SelfsupError


def _csv_ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,10,100, got {text!r}") from None


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a number of seeds (1 or more), got {text!r}")
    return n


def _kv(text: str) -> dict:
    """'width=64,stem=small' or a JSON object -> dict with typed values."""
    import yaml

    try:
        if text.strip().startswith("{"):
            out = json.loads(text)
            if not isinstance(out, dict):
                raise ValueError("not an object")
            return out
        out = {}
        for part in filter(None, text.split(",")):
            if "=" not in part:
                raise argparse.ArgumentTypeError(f"expected key=value pairs, got {part!r}")
            k, v = part.split("=", 1)
            out[k.strip()] = yaml.safe_load(v)
        return out
    except (ValueError, yaml.YAMLError) as e:
        raise argparse.ArgumentTypeError(f"expected key=value pairs or a JSON object, got {text!r} "
                                         f"({str(e).splitlines()[0]})") from None


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per PretrainConfig field, its help and default from the field: the dataclass is the single source.

    Flags default to None (= not given) so that a YAML file or a resumed run's config is only overridden by
    what the user typed; the help shows the field's own default."""
    from .config import PretrainConfig

    for f in dataclasses.fields(PretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        t, help_ = str(f.type), f"{f.metadata.get('help', '')} (default: {_default(f)})"
        if t in ("bool", "bool | None"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif t.startswith("dict"):
            p.add_argument(flag, type=_kv, default=None, metavar="K=V,...", help=help_)
        else:
            kind = int if t.startswith("int") else float if t.startswith("float") else str
            p.add_argument(flag, type=kind, default=None, metavar=f.name.upper(), help=help_)


def _config_from(args: argparse.Namespace):
    """The config the flags and the YAML give; optimisation fields neither set come from the method's own defaults
    for the device (`papers.method_defaults`: its paper's on a GPU, its measured CPU setting on a CPU)."""
    from .config import PretrainConfig, load_yaml
    from .papers import OPTIMISATION, method_defaults

    given = load_yaml(args.config) if args.config else {}
    base = PretrainConfig.from_dict(given) if args.config else PretrainConfig()
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}
    cfg = base.override(**changes)
    return method_defaults(cfg, {k for k in OPTIMISATION if k not in given and changes.get(k) is None})


def cmd_pretrain(args) -> None:
    from .config import PretrainConfig, load_yaml
    from .engine import fabric_for
    from .factory import encoder_spec
    from .run import resumable
    from .data import load_for, with_data_side
    from .train import pretrain

    found = None
    if args.resume:
        if args.out is not None and Path(args.out) != Path(args.resume):
            raise ConfigError(f"--resume {args.resume} continues that run in place; drop --out {args.out}")
        found = resumable(args.resume)
        base = PretrainConfig.from_dict(found[1]["config"])
        base = base.override(**load_yaml(args.config)) if args.config else base
        changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}
        base = base.with_budget(changes.pop("epochs"), changes.pop("minutes"), changes.pop("steps"))
        cfg = base.override(**changes | {"out": str(args.resume)})
    else:
        cfg = _config_from(args)
        if cfg.epochs is None and cfg.minutes is None and cfg.steps is None:
            raise ConfigError("give a budget: --minutes M, --epochs E or --steps S")
    data = load_for(cfg.validate())
    cfg = with_data_side(cfg, data)
    fabric = fabric_for(cfg, encoder_spec(cfg, data.channels, data.side))  # the engine starts here
    path = pretrain(cfg, data, resume=found or False, overwrite=args.overwrite, fabric=fabric)
    if fabric.is_global_zero:
        print(f"checkpoint: {path}")


def cmd_eval(args) -> None:
    import numpy as np

    from .checkpoint import read
    from .data import load
    from .engine import eval_device
    from .evaluate import FinetuneConfig, SemisupConfig, aggregate, few_label_rows
    from .evaluate.labels import label_plan
    from .factory import encoder_from
    from .files import write_json
    from .audit import leakage_report
    from .report import format_table

    finetune = FinetuneConfig() if args.finetune_steps is None else FinetuneConfig(steps=args.finetune_steps)
    # the budgets, checked before any work
    trained = {"finetune": finetune.checked(), "semisup": SemisupConfig(steps=args.semisup_steps).checked()}
    path, state = read(args.checkpoint)
    encoder, cfg = encoder_from(state)
    dataset = args.dataset or cfg.dataset
    labels = args.labels or (args.labeled if dataset.startswith("folder:") else None) or \
        (cfg.labels if dataset == cfg.dataset else None)
    train, test = (load(dataset, s, cfg.data_root, size=cfg.image_size, labels=labels, accelerator=cfg.accelerator)
                   for s in ("train", "test"))
    if train.channels != encoder.in_channels:
        raise ConfigError(f"{dataset} has {train.channels} channel(s) but the checkpoint's encoder takes {encoder.in_channels}")
    plan = label_plan(train, args.labels_per_class, args.val_per_class, args.labeled, labels is not None)
    trained["semisup"] = trained["semisup"].resolved(train.channels, len(train))  # its budget depends on the images
    evals = tuple(args.evals.split(","))
    seen = train if cfg.split == "train" or dataset != cfg.dataset else \
        load(dataset, cfg.split, cfg.data_root, size=cfg.image_size, labels=labels, accelerator=cfg.accelerator)
    leak = leakage_report(encoder, seen, test)  # before any score, which it qualifies
    rows = few_label_rows(encoder, train, test, list(plan.counts), cfg.method, evals, tuple(range(args.seeds)),
                          device=eval_device(args.device, cfg.accelerator), validation=plan.validation,
                          label_sets=plan.sets, leaked=np.array(leak["leaked_index"]), progress=True, **trained)
    out = Path(args.out) if args.out else path.parent.parent / "eval.json"
    settings = {name: c.to_dict() for name, c in trained.items()}  # what the rows were made with
    write_json(out, {"dataset": dataset, "rows": aggregate(rows), "rows_per_seed": rows, "labels": plan.to_dict(),
                     "leakage": {k: v for k, v in leak.items() if k != "leaked_index"}, "checkpoint": str(path),
                     "config": cfg.to_dict(), "evaluation": settings})
    print(format_table(rows))
    print(leak["text"])
    print(f"results: {out}")


def cmd_demo(args) -> None:
    from .demo import DEMO_MINUTES, run_demo

    minutes = DEMO_MINUTES if args.minutes is None else args.minutes
    run_demo(args.out, tuple(args.methods.split(",")), minutes, tuple(args.labels_per_class), args.dataset,
             seed=args.seed)


def cmd_compare(args) -> None:
    from .compare import CompareConfig, run_compare
    from .config import PretrainConfig, load_yaml

    if args.recipe:
        from .recipes import get

        cc = get(args.recipe).config(args.size or "cpu")
    elif args.size:
        raise ConfigError("--size picks a recipe's size; give --recipe NAME too (see `selfsup recipes`)")
    else:
        cc = CompareConfig()
    names = lambda text: tuple(v for v in text.split(",") if v)  # noqa: E731
    given = {"dataset": args.dataset, "minutes_per_method": args.minutes_per_method, "out": args.out,
             "val_per_class": args.val_per_class, "labeled": args.labeled, "device": args.device,
             "methods": None if args.methods is None else names(args.methods),
             "baselines": None if args.baselines is None else names(args.baselines),
             "evals": None if args.evals is None else names(args.evals),
             "labels_per_class": None if args.labels_per_class is None else tuple(args.labels_per_class),
             "seeds": None if args.seeds is None else tuple(range(args.seeds))}
    cc = dataclasses.replace(cc, **{k: v for k, v in given.items() if v is not None})
    if args.config:  # a YAML of PretrainConfig fields replaces the recipe's (or the measured default) base
        given = load_yaml(args.config)
        cc = dataclasses.replace(cc, pretrain=PretrainConfig.from_dict(given), given=tuple(given))
    labels = args.labels or (args.labeled if (args.dataset or cc.dataset).startswith("folder:") else None)
    changes = {"backbone": args.backbone, "backbone_args": args.backbone_args, "batch_size": args.batch_size,
               "labels": labels}
    cc = dataclasses.replace(cc, pretrain_args=cc.pretrain_args | {k: v for k, v in changes.items() if v is not None})
    if args.finetune_steps is not None:
        cc = dataclasses.replace(cc, finetune=dataclasses.replace(cc.finetune, steps=args.finetune_steps))
    if args.semisup_steps is not None:
        cc = dataclasses.replace(cc, semisup=dataclasses.replace(cc.semisup, steps=args.semisup_steps))
    run_compare(cc)  # the engine starts there, once the images (whose shape decides the precision) are read


def cmd_embed(args) -> None:
    from .config import PretrainConfig
    from .data import has_test_split, load
    from .factory import encoder_spec, encoder_and_config, random_encoder
    from .report.embedding import PROJECTIONS, write_embedding

    if args.projection not in PROJECTIONS:
        raise ConfigError(f"unknown projection {args.projection!r}; choose from: {', '.join(PROJECTIONS)}")
    if not args.out and not args.export:
        raise ConfigError("say what to write: --out map.html, --out map.png, and/or --export feats.npy|.csv")
    for o in args.out or []:
        if Path(o).suffix not in (".html", ".png"):
            raise ConfigError(f"--out writes .html or .png, not {o}")
    if args.export and Path(args.export).suffix not in (".npy", ".csv"):
        raise ConfigError(f"--export writes .npy or .csv, not {args.export}")
    if args.checkpoint:
        encoder, cfg = encoder_and_config(args.checkpoint)
        dataset = args.dataset or cfg.dataset
    elif args.random_init:
        if not args.dataset:
            raise ConfigError("--random-init without --checkpoint needs --dataset (and optionally --backbone)")
        cfg, dataset = PretrainConfig(backbone=args.backbone or "small_cnn", steps=1), args.dataset
    else:
        raise ConfigError("give --checkpoint CKPT, or --random-init with --dataset")
    labels = cfg.labels if dataset == cfg.dataset else None
    split = args.split or ("test" if has_test_split(dataset, labels) else "train")
    data = load(dataset, split, cfg.data_root, size=cfg.image_size, accelerator=cfg.accelerator, labels=labels)
    if args.random_init:
        encoder = random_encoder(encoder_spec(cfg.override(dataset=dataset), data.channels, data.side), args.seed,
                                 data.images)
    if data.channels != encoder.in_channels:
        raise ConfigError(f"{dataset} has {data.channels} channel(s) but the encoder takes {encoder.in_channels}")
    title = f"{'random init' if args.random_init else cfg.method} on {dataset} {split}"
    written = write_embedding(encoder, data, [Path(o) for o in args.out or []], title, args.projection,
                              args.max_points or None, args.seed, Path(args.export) if args.export else None)
    for kind, path in written.items():
        print(f"{kind}: {path}")


def _checkpoint_data(args, split: str = "train"):
    """(encoder, config, images) of a command given --checkpoint and optionally --dataset/--labels."""
    from .data import load
    from .factory import encoder_and_config

    encoder, cfg = encoder_and_config(args.checkpoint)
    dataset = args.dataset or cfg.dataset
    labels = getattr(args, "labels", None) or (cfg.labels if dataset == cfg.dataset else None)
    data = load(dataset, split, cfg.data_root, size=cfg.image_size, labels=labels, accelerator=cfg.accelerator)
    if data.channels != encoder.in_channels:
        raise ConfigError(f"{dataset} has {data.channels} channel(s) but the encoder takes {encoder.in_channels}")
    return encoder, cfg, data


def cmd_select(args) -> None:
    from .select import run_select, selection_head

    encoder, cfg, data = _checkpoint_data(args, args.split)
    run_select(encoder, data, args.budget, args.out, args.seed, args.labeled, args.map_points,
               head=selection_head(args.checkpoint))


def cmd_similar(args) -> None:
    from .similar import similar

    encoder, cfg, data = _checkpoint_data(args, args.split)
    similar(encoder, data, args.image, args.k, Path(args.out))


def cmd_export(args) -> None:
    from .export import export

    for kind, path in export(args.source, args.format, args.out).items():
        print(f"{kind}: {path}")


def cmd_data(args) -> None:
    from .data import fetch, load

    if args.action == "fetch":
        print(f"{args.name}: ready in {fetch(args.name)}")
        return
    if args.action == "prepare":
        from .data.prepare import prepare

        if not args.name.startswith("folder:"):
            raise DataError(f"only image folders are prepared (folder:PATH); {args.name} is read from its own files")
        try:
            prepare(args.name[len("folder:"):], args.image_size, workers=args.workers, progress=not args.quiet,
                    labels=args.labels)
        except KeyboardInterrupt:
            import signal

            raise Interrupted("the finished shards are kept; run the same command to go on from there",
                              signal.SIGINT) from None
        return
    if args.action == "audit":
        from .audit import audit_dataset

        return audit_dataset(args.name, args.checkpoint, args.labels, args.image_size, Path(args.out or "audit"))
    if args.name.startswith("folder:"):
        from .data.info import describe_folder

        print("\n".join(describe_folder(args.name[len("folder:"):], args.labels, args.image_size)))
        return
    import numpy as np

    for split in args.split.split(","):
        d = load(args.name, split)
        labeled = d.labels[d.labels >= 0]
        counts = np.bincount(labeled, minlength=len(d.classes)) if len(labeled) else []
        print(f"{args.name} {split}: {len(d)} images, shape {tuple(d.images.shape[1:])} uint8, "
              f"{len(labeled)} labeled, {len(d.classes)} classes")
        if len(counts):
            print("  per class: " + ", ".join(f"{d.classes[i] if i < len(d.classes) else i}={c}" for i, c in enumerate(counts)))


def cmd_list(registry_name: str):
    def run(args) -> None:
        if registry_name == "methods":
            from .methods import METHODS as reg
        elif registry_name == "backbones":
            from .backbones import BACKBONES as reg
        elif registry_name == "evals":
            from .evaluate import EVALS as reg
        elif registry_name == "recipes":
            from .recipes import RECIPES as reg
        else:
            from .data import DATASETS as reg
        for name, desc in reg.describe().items():
            print(f"{name:12s} {desc}")
        if registry_name == "datasets":
            print(f"{'folder:PATH':12s} a folder of images: subfolders are classes, a flat folder is unlabeled")
    return run


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line, like every other error: `error: ...` and where to look, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's help shows its default; config flags already name theirs (their parser default is None)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default:" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


SEMISUP_STEPS_DEFAULT = ("(default: 500 for 1-channel images, 2,000 of half the batch for colour; at most 250 passes "
                         "over the training images)")


def _compare_flags(c: argparse.ArgumentParser) -> None:
    """`compare` flags default to None (= not given), so that only what the user typed overrides a recipe."""
    c.add_argument("--recipe", help="start from a packaged experiment (see `selfsup recipes`); flags override it")
    c.add_argument("--size", choices=("cpu", "gpu"), help="the recipe's size: cpu (about 15 minutes on 2 cores, the "
                   "default) or gpu (the full-length protocol)")
    c.add_argument("--dataset", help="dataset name or folder:PATH (default: mnist)")
    c.add_argument("--methods", help="comma-separated; see `selfsup methods` (default: simclr)")
    c.add_argument("--baselines", help="comma-separated: supervised, random (default: supervised,random)")
    c.add_argument("--labels-per-class", type=_csv_ints, help="comma-separated label counts (default: 1,10,100, or "
                   "what the labeled images allow; with --labels or --labeled: the labeled images)")
    c.add_argument("--evals", help="comma-separated; see `selfsup evals` (default: knn,linear,propagate,finetune)")
    c.add_argument("--minutes-per-method", type=float, help="pretraining budget of each method (default: 3)")
    c.add_argument("--seeds", type=_count, help="how many seeds (label subsets and initializations): 0..N-1 (default: 1)")
    c.add_argument("--val-per-class", type=int, help="held-out labeled images per class for early stopping (default: "
                   "10, or what the labeled images allow)")
    c.add_argument("--labels", help="a folder's labels: CSV of path,label, paths relative to the folder; the test "
                   "split is held out from the labeled files")
    c.add_argument("--labeled", help="evaluate with exactly these labeled images instead of N per class: a CSV with an "
                   "index column for a built-in dataset, path,label for a folder")
    c.add_argument("--finetune-steps", type=int, help="step budget of fine-tuning and supervised training (default: 300)")
    c.add_argument("--semisup-steps", type=int, help="step budget of semi-supervised training, from the pretrained "
                   f"encoder and from scratch alike {SEMISUP_STEPS_DEFAULT}")
    c.add_argument("--backbone", default=None, help="encoder for every method (default: the measured one for the "
                   "data: small_cnn width 16 for grey images; for colour, whiten_cnn width 32 with SimCLR alone and small_cnn "
                   "width 32 beside other methods)")
    c.add_argument("--backbone-args", type=_kv, default=None, metavar="K=V,...", help="the backbone's arguments")
    c.add_argument("--batch-size", type=int, default=None, help="pretraining batch size (default: 256)")
    c.add_argument("--config", help="YAML of PretrainConfig fields shared by every method (replaces the defaults)")
    c.add_argument("--device", help="where evaluation runs: auto (the pretraining's: a GPU where torch sees one), cpu, "
                   "cuda or cuda:N")
    c.add_argument("--out", help="output directory (default: runs/cmp, or runs/RECIPE-SIZE)")
    c.set_defaults(run=cmd_compare)


def _data_command(add) -> None:
    da = add("data", "fetch datasets, prepare image folders, or describe them")
    da.add_argument("action", choices=["fetch", "prepare", "info", "audit"],
                    help="fetch: download and verify; prepare: decode a folder once into a memory-mapped copy that "
                         "every later command reads (resumable); info: sizes and classes; audit: duplicates, "
                         "leakage from test into training, unreadable files and outliers (audit.json, audit.html)")
    da.add_argument("name", help="dataset name (see `selfsup datasets`) or folder:PATH")
    da.add_argument("--split", default="train,test", help="comma-separated splits for info")
    da.add_argument("--image-size", type=int, default=None,
                    help="the side an encoder will train at (default: 64 px on a CPU, 224 on a GPU, or the folder's "
                         "own side where smaller); images are kept at 1.5 times it")
    da.add_argument("--labels", help="a folder's labels: CSV of path,label (paths relative to the folder)")
    da.add_argument("--checkpoint", help="audit: a pretraining run whose features find near-duplicates too")
    da.add_argument("--out", help="audit: output folder (default: audit)")
    da.add_argument("--workers", type=int, default=None, help="prepare: decoding processes (default: every core)")
    da.add_argument("--quiet", action="store_true", help="prepare: no progress bar")
    da.set_defaults(run=cmd_data)



def _photo_commands(add) -> None:
    """`select` and `similar`: the commands that work on a person's own images with a pretrained encoder."""
    se = add("select", "pick the images worth labeling: near-duplicates dropped, then density-weighted coverage of a "
                       "pretrained encoder's features (or its spectral clusters, where they cut its neighbour graph "
                       "less); writes to_label.csv, a contact sheet and a map")
    se.add_argument("--checkpoint", required=True, help="a pretraining run directory or .pt file")
    se.add_argument("--budget", type=int, required=True, help="how many images to pick")
    se.add_argument("--dataset", help="default: the checkpoint's dataset")
    se.add_argument("--split", default="train", help="which split to pick from")
    se.add_argument("--labels", help="a folder's labels file, for its splits (default: the checkpoint's)")
    se.add_argument("--labeled", help="the next round: a CSV of the images labeled already (path,label for a folder, "
                    "index for a built-in dataset); picks where label propagation is least sure, with coverage")
    se.add_argument("--seed", type=int, default=0, help="seed of the map (and of exact ties between picks)")
    se.add_argument("--map-points", type=int, default=3000, help="images on the embedding map besides the picks")
    se.add_argument("--out", default="select", help="folder for to_label.csv, picks.html and map.html")
    se.set_defaults(run=cmd_select)

    si = add("similar", "the images most like one image, by a pretrained encoder's features; an HTML page of them")
    si.add_argument("--checkpoint", required=True, help="a pretraining run directory or .pt file")
    si.add_argument("--image", required=True, help="an image file (anywhere), or a path inside the folder")
    si.add_argument("--dataset", help="where to look (default: the checkpoint's dataset)")
    si.add_argument("--split", default="train", help="which split to search")
    si.add_argument("--k", type=int, default=16, help="how many images")
    si.add_argument("--out", default="similar.html", help="the page to write")
    si.set_defaults(run=cmd_similar)


def build_parser() -> argparse.ArgumentParser:
    fmt = _Help
    p = _Parser(prog="selfsup", formatter_class=fmt,
                                description="Self-supervised pretraining on images, evaluated against few-label baselines.")
    sub = p.add_subparsers(dest="command", required=True)
    add = lambda name, help_: sub.add_parser(name, help=help_, description=help_, formatter_class=fmt)  # noqa: E731

    d = add("demo", "the main job: SimCLR vs supervised and random init on MNIST at 1/10/100 labels per class")
    d.add_argument("--out", default="runs/demo", help="output directory")
    d.add_argument("--dataset", default="mnist", help="dataset name or folder:PATH; colour images get the measured "
                   "colour setup (see `selfsup recipes`)")
    d.add_argument("--methods", default="simclr", help="comma-separated methods (see `selfsup methods`)")
    d.add_argument("--minutes", type=float, default=None, help="pretraining minutes per method (default: the demo's "
                   "3, selfsup.demo.DEMO_MINUTES)")
    d.add_argument("--labels-per-class", type=_csv_ints, default=[1, 10, 100], help="comma-separated label counts")
    d.add_argument("--seed", type=int, default=0, help="seed for pretraining, label subsets and baselines")
    d.set_defaults(run=cmd_demo)

    _compare_flags(add("compare", "methods vs supervised-from-scratch and random-init, one table and report.html"))

    t = add("pretrain", "pretrain an encoder without labels")
    t.add_argument("--config", help="YAML file of config fields; flags override it")
    t.add_argument("--resume", metavar="RUN", help="continue the run in RUN exactly, from its newest readable checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    _add_config_flags(t)
    t.set_defaults(run=cmd_pretrain)

    e = add("eval", "kNN, linear probe, propagation or fine-tuning of a checkpoint at few labels per class")
    e.add_argument("--checkpoint", required=True, help="a .pt file or a run directory")
    e.add_argument("--labels-per-class", type=_csv_ints, default=None, help="comma-separated label counts (default: "
                   "1,10,100, or what the labeled images allow; with --labels or --labeled: the labeled images)")
    e.add_argument("--labels", help="a folder's labels: CSV of path,label, paths relative to the folder (default: the "
                   "checkpoint's)")
    e.add_argument("--labeled", help="evaluate with exactly these labeled images: a CSV with an index column for a "
                   "built-in dataset (labels read from it), or path,label for a folder (e.g. `selfsup select`'s "
                   "to_label.csv, labeled)")
    e.add_argument("--val-per-class", type=int, default=None, help="held-out labeled images per class for early "
                   "stopping (default: 10, or what the labels allow)")
    e.add_argument("--evals", default="knn,linear,propagate", help="comma-separated; see `selfsup evals` (default: "
                   "knn,linear,propagate)")
    e.add_argument("--seeds", type=_count, default=1, help="how many seeds (label subsets): 0..N-1")
    e.add_argument("--finetune-steps", type=int, help="step budget of fine-tuning (default: 300)")
    e.add_argument("--semisup-steps", type=int, help=f"step budget of semi-supervised training {SEMISUP_STEPS_DEFAULT}")
    e.add_argument("--dataset", help="default: the dataset the checkpoint was trained on")
    e.add_argument("--out", help="JSON path (default: RUN/eval.json)")
    e.add_argument("--device", default="auto", help="where evaluation runs: auto (a GPU where torch sees one), cpu, cuda "
                   "or cuda:N")
    e.set_defaults(run=cmd_eval)

    m = add("embed", "2-D map of an encoder's features: interactive HTML, PNG, or raw export")
    m.add_argument("--checkpoint", help="a .pt file or run directory")
    m.add_argument("--random-init", action="store_true", help="an untrained encoder (of the checkpoint's architecture, if given)")
    m.add_argument("--backbone", help="with --random-init and no checkpoint (default small_cnn)")
    m.add_argument("--dataset", help="default: the checkpoint's dataset")
    m.add_argument("--split", help="which split to map (default: test, or train for a flat folder, which has none)")
    m.add_argument("--out", action="append", help="map.html and/or map.png (repeat the flag for both)")
    m.add_argument("--projection", default="tsne", help="tsne, umap (needs umap-learn) or pca")
    m.add_argument("--max-points", type=int, default=10000, help="subsample to at most this many images (0: all)")
    m.add_argument("--export", help="write the raw features with labels: feats.npy (+ feats.labels.npy) or feats.csv")
    m.add_argument("--seed", type=int, default=0, help="seed of the subsample, the projection and a random init")
    m.set_defaults(run=cmd_embed)

    x = add("export", "write a pretrained encoder for use without selfsup: safetensors + spec, TorchScript or ONNX")
    x.add_argument("source", help="a run directory or checkpoint file")
    x.add_argument("--format", default="safetensors", help="safetensors, torchscript or onnx")
    x.add_argument("--out", required=True, help="output folder (encoder.json beside the weights)")
    x.set_defaults(run=cmd_export)

    _data_command(add)
    _photo_commands(add)

    for name in ("methods", "backbones", "datasets", "evals", "recipes"):
        add(name, f"list the registered {name}").set_defaults(run=cmd_list(name))
    return p


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = _one_line_warning  # a warning is one line too, without the code that raised it
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "evals", None):
            from .evaluate import EVALS

            EVALS.check(args.evals.split(","))
        if args.run in (cmd_pretrain, cmd_compare, cmd_demo, cmd_eval, cmd_embed):
            from . import threads

            threads.start()  # before the engine: torch's thread count is decided here, then revised while running
        args.run(args)
    except Interrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_code
    except SelfsupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
