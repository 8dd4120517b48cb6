"""selfsup against lightly on the same network, batch and images: training img/s in one alternating run, and
accuracy after the same wall clock of pretraining, both scored by the same evaluation code (selfsup's).

lightly runs in its own virtual environment (DEVELOPERS.md, "The peer benchmark"), given by --peer-python or
$SELFSUP_PEER_PYTHON; bench/peer_lightly.py is its side. selfsup runs as a user runs it (`selfsup.train.pretrain`,
its measured defaults for the images, --precision auto, threads decided by selfsup).

Cases: small_cnn (the demo's width-16 CNN on MNIST, batch 256) and resnet18 (small stem, CIFAR-10 at 32 px,
batch 64; random colour images when CIFAR-10 is absent).

    python bench/peers.py --case small_cnn --rounds 3 --steps 30            # throughput only
    python bench/peers.py --case small_cnn --minutes 5                      # and accuracy after 5 minutes each
Writes bench/results/peers-<tag>-<case>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from common import device_tag, machine, write  # noqa: E402

from selfsup.data import ImageSet, load  # noqa: E402
from selfsup.defaults import for_channels  # noqa: E402

CASES = {  # dataset, backbone, backbone args, batch
    "small_cnn": ("mnist", "small_cnn", {"width": 16}, 256),
    "resnet18": ("cifar10", "resnet18", {}, 64),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def dataset(case: str, split: str) -> ImageSet:
    name = CASES[case][0]
    try:
        return load(name, split)
    except Exception:  # noqa: BLE001 - no copy here: random colour images keep the throughput comparable
        if split == "test":
            raise
        x = np.random.default_rng(0).integers(0, 256, (10_000, 3, 32, 32), dtype=np.uint8)
        return ImageSet("random", x, np.full(len(x), -1, np.int64))


def selfsup_config(case: str, data: ImageSet):
    _, backbone, args, batch = CASES[case]
    return for_channels(data.channels).override(dataset=CASES[case][0], backbone=backbone, backbone_args=args,
                                                batch_size=batch, monitor_seconds=0, checkpoint_minutes=1e9)


def selfsup_worker(args) -> None:
    """One selfsup turn, in its own process like lightly's: steps after warm-up, or a timed run kept for scoring."""
    from throughput import selfsup_path

    from selfsup.train import pretrain

    data = dataset(args.case, "train")
    cfg = selfsup_config(args.case, data)
    if args.seconds:
        pretrain(cfg.override(minutes=args.seconds / 60, out=args.save), data, show_progress=False)
        s = json.loads((Path(args.save) / "summary.json").read_text())
        result = {"img_per_s": s["img_per_s"], "steps": s["steps"], "precision": s["precision"], "threads": s["threads"]}
    else:
        result = selfsup_path(cfg, data, args.warmup, args.steps)
    Path(args.out).write_text(json.dumps(result))


def turn(cmd: list[str], env: dict, out: Path) -> dict:
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed: {r.stderr.strip()[-800:]}")
    return json.loads(out.read_text())


class SeenByLightly(nn.Module):
    """lightly's backbone behind the input it trained on: grey as RGB, ImageNet normalisation."""

    def __init__(self, backbone: nn.Module, side: int):
        super().__init__()
        self.backbone, self.out_dim, self.image_size = backbone, backbone.out_dim, side
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x):
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return self.backbone((x - self.mean) / self.std)


def score(encoder: nn.Module, case: str, name: str) -> dict:
    from selfsup.evaluate import aggregate, few_label_rows

    train, test = dataset(case, "train"), dataset(case, "test")
    rows = aggregate(few_label_rows(encoder, train, test, [10], name, ("knn", "linear"), seeds=(0, 1, 2)))
    return {r["eval"]: {"accuracy": r["accuracy"], "std": r.get("std")} for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="small_cnn", choices=sorted(CASES))
    ap.add_argument("--rounds", type=int, default=3, help="alternating throughput turns per library")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per turn, after --warmup")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=0, help="also pretrain each this long and score kNN/linear@10")
    ap.add_argument("--peer-python", default=os.environ.get("SELFSUP_PEER_PYTHON"))
    ap.add_argument("--name", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--save", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "selfsup":
        return selfsup_worker(args)
    if not args.peer_python:
        raise SystemExit("give --peer-python PATH (or SELFSUP_PEER_PYTHON): the python of a venv with lightly; "
                         "see DEVELOPERS.md, 'The peer benchmark'")
    _, backbone, bargs, batch = CASES[args.case]
    env = os.environ | {"PYTHONPATH": str(HERE.parent)}
    results: dict = {"selfsup": [], "lightly": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train = dataset(args.case, "train")
        np.save(tmp / "images.npy", train.images)
        peer = [args.peer_python, str(HERE / "peer_lightly.py"), "--images", str(tmp / "images.npy"), "--backbone",
                backbone, "--backbone-args", json.dumps(bargs), "--batch", str(batch)]
        ours = [sys.executable, str(HERE / "peers.py"), "--worker", "selfsup", "--case", args.case]
        for r in range(args.rounds):
            for lib, cmd in (("selfsup", ours), ("lightly", peer)):
                out = tmp / f"{lib}-{r}.json"
                results[lib].append(turn(cmd + ["--steps", str(args.steps), "--warmup", str(args.warmup),
                                                "--out", str(out)], env, out))
                print(f"round {r} {lib:8s} {results[lib][-1]['img_per_s']:8.1f} img/s", flush=True)
        summary = {lib: float(np.median([t["img_per_s"] for t in turns])) for lib, turns in results.items()}
        summary["ratio"] = summary["selfsup"] / summary["lightly"]
        print(f"median img/s: selfsup {summary['selfsup']:.1f}, lightly {summary['lightly']:.1f}, "
              f"ratio {summary['ratio']:.2f}x", flush=True)
        accuracy = {}
        if args.minutes:
            from selfsup import load_encoder
            from selfsup.backbones import BACKBONES

            seconds = str(60 * args.minutes)
            runs = {"selfsup": turn(ours + ["--seconds", seconds, "--save", str(tmp / "run"), "--out",
                                            str(tmp / "acc-selfsup.json")], env, tmp / "acc-selfsup.json"),
                    "lightly": turn(peer + ["--seconds", seconds, "--warmup", "5", "--save", str(tmp / "peer.pt"),
                                            "--out", str(tmp / "acc-lightly.json")], env, tmp / "acc-lightly.json")}
            net = BACKBONES.build(backbone, **bargs | {"in_channels": 3, "image_size": train.size[0]})
            net.load_state_dict(torch.load(tmp / "peer.pt"))
            encoders = {"selfsup": load_encoder(tmp / "run"), "lightly": SeenByLightly(net, train.size[0])}
            for lib, enc in encoders.items():
                accuracy[lib] = runs[lib] | score(enc, args.case, lib)
                print(f"{lib} after {args.minutes} min: {accuracy[lib]}", flush=True)
    path = write(f"peers-{device_tag()}-{args.name or args.case}.json",
                 {"machine": machine(), "case": args.case, "network": {"backbone": backbone, "args": bargs},
                  "batch": batch, "throughput": results, "median_img_per_s": summary, "minutes": args.minutes,
                  "accuracy": accuracy})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
