"""The first-run check of the GPU path: one script a machine with a GPU runs in one go.

    python bench/gpu_check.py                 # on a GPU machine (2+ GPUs add the data-parallel check)
    python bench/gpu_check.py --dry-run       # anywhere: the same code paths on the CPU, small (the test suite)

What it checks, each as a named entry of bench/results/gpu-check-<device_tag>.json (exit status 1 and a list of
what failed when anything did):
- `loop/<method>/<precision>/<optimizer>`: STEPS steps of every method under bf16-mixed, 16-mixed and 32-true, with
  AdamW and SGD, on random images, with `torch.cuda.set_sync_debug_mode("error")` between sync points (any
  hidden host-device synchronisation in the loop raises), and a finite loss at the end;
- `eval-on-device`: `few_label_rows` (kNN, linear, propagation, fine-tuning, semi-supervised) for a random-init
  encoder with the device `eval_device()` chooses, and the memory it took there;
- `compare-on-device`: a small `compare` on digits, whose evaluations must be handed the GPU;
- `ddp/...` (2 GPUs or more): SimCLR on 2 processes with and without SyncBN, against 1 process on the global batch;
- `throughput/...`: training images per second of the `--size gpu` recipes' backbone (ResNet-18, small stem, batch
  512 at 32 and 96 px) and of ResNet-50 and ViT-S at 224 px under SimCLR.

The dry run takes every method once, each precision and optimizer once, two steps each, on the CPU, with the widest
layers narrowed (DRY_SMALL), without the sync debug mode (CUDA only), and skips the multi-GPU and throughput parts.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402

from selfsup import train as train_module  # noqa: E402
from selfsup.config import PretrainConfig  # noqa: E402
from selfsup.data import ImageSet  # noqa: E402
from selfsup.methods import METHODS  # noqa: E402

STEPS = 50
PRECISIONS = ("bf16-mixed", "16-mixed", "32-true")
OPTIMIZERS = ("adamw", "sgd")
SMALL = {"mae": {"backbone": "vit_tiny", "backbone_args": {"depth": 2}}}  # MAE needs a ViT
# The dry run narrows the widest layers as well: a CPU without bf16 or fp16 arithmetic (AVX2) emulates the 16-bit
# precisions, and two steps of Barlow Twins' or VICReg's 2048-wide projector took 25 s there against 1 s in fp32.
NARROW = {"method_args": {"proj_hidden": 128, "proj_dim": 128}}
DRY_SMALL = {"mae": {"backbone": "vit_tiny", "backbone_args": {"depth": 2, "patch_size": 4},
                     "method_args": {"decoder_dim": 32}},
             "barlowtwins": NARROW, "vicreg": NARROW}


def random_images(n: int, side: int, channels: int = 3, seed: int = 0) -> ImageSet:
    """Random uint8 images with 10 random labels: the loop's mechanics do not need real data."""
    rng = np.random.default_rng(seed)
    return ImageSet("random", rng.integers(0, 256, (n, channels, side, side), dtype=np.uint8),
                    rng.integers(0, 10, n).astype(np.int64))


@contextlib.contextmanager
def sync_debug(enabled: bool):
    """Hidden host-device synchronisation raises between the loop's sync points (where it belongs, it is allowed)."""
    if not enabled:
        yield
        return
    real_iter, real_sync = train_module.Batches.__iter__, train_module.sync_point

    def batches(self):
        for x in real_iter(self):
            torch.cuda.set_sync_debug_mode("error")  # from the first step on
            yield x

    def sync_point(p, signals):
        torch.cuda.set_sync_debug_mode(0)
        done = real_sync(p, signals)
        if not done:
            torch.cuda.set_sync_debug_mode("error")
        return done

    train_module.Batches.__iter__, train_module.sync_point = batches, sync_point
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)
        train_module.Batches.__iter__, train_module.sync_point = real_iter, real_sync


def fabric_for_precision(precision: str, accelerator: str):
    """The engine for `precision`; on a CPU, 16-mixed gets an explicit gradient scaler (Lightning refuses it there
    otherwise), so that the scaled path runs in the dry run too."""
    from lightning.fabric import Fabric
    from lightning.fabric.plugins import MixedPrecision

    if precision == "16-mixed" and accelerator == "cpu":
        return Fabric(accelerator="cpu", devices=1, plugins=[MixedPrecision("16-mixed", "cpu",
                                                                            torch.amp.GradScaler("cpu"))])
    from selfsup.engine import make_fabric

    return make_fabric(accelerator, 1, precision=precision, launch=False)


def loop_check(method: str, precision: str, optimizer: str, accelerator: str, steps: int, side: int,
               out: Path) -> dict:
    arch = {"backbone_args": {"width": 8}, **(SMALL if accelerator == "cuda" else DRY_SMALL).get(method, {})}
    cfg = PretrainConfig(dataset="random", method=method, steps=steps, batch_size=64, optimizer=optimizer,
                         precision=precision, accelerator=accelerator, monitor_seconds=0, out=str(out), **arch)
    with sync_debug(accelerator == "cuda"):
        fabric = fabric_for_precision(precision, accelerator)
        train_module.pretrain(cfg, random_images(512, side), show_progress=False, fabric=fabric, overwrite=True)
    summary = json.loads((out / "summary.json").read_text())
    loss = summary["final_loss"]
    if loss is None or not math.isfinite(loss):
        raise RuntimeError(f"final loss {loss}")
    return {"final_loss": round(loss, 4), "img_per_s": summary["img_per_s"], "precision": summary["precision"],
            "device": summary["device"], "skipped_batches": summary["skipped_batches"]}


def eval_check(dry: bool) -> dict:
    from selfsup.encoders import EncoderSpec, random_encoder
    from selfsup.engine import eval_device
    from selfsup.evaluate import FinetuneConfig, SemisupConfig, few_label_rows

    device = eval_device()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train, test = random_images(600, 16, seed=1), random_images(200, 16, seed=2)
    encoder = random_encoder(EncoderSpec("small_cnn", {"width": 8}, 3, 16), 0)
    rows = few_label_rows(encoder, train, test, [5], "random", ("knn", "linear", "propagate", "finetune", "semisup"),
                          device=device, finetune=FinetuneConfig(steps=20 if dry else 100, eval_every=10),
                          semisup=SemisupConfig(steps=10 if dry else 100, eval_every=5), val_per_class=3)
    found = {"device": str(device), "rows": {r["eval"]: r["accuracy"] for r in rows}}
    if device.type == "cuda":
        found["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if found["peak_gpu_mb"] <= 0:
            raise RuntimeError("evaluation allocated nothing on the GPU")
    elif not dry:
        raise RuntimeError(f"evaluation chose {device} on a machine where torch sees no GPU")
    return found


def compare_check(out: Path, dry: bool) -> dict:
    from selfsup import compare
    from selfsup.compare import CompareConfig, run_compare
    from selfsup.evaluate import FinetuneConfig

    seen, real = [], compare.few_label_rows

    def recorded(*a, **k):
        seen.append(str(k.get("device")))
        return real(*a, **k)

    compare.few_label_rows = recorded
    try:
        cc = CompareConfig(dataset="digits", methods=("simclr",), evals=("knn", "finetune"), labels_per_class=(5,),
                           minutes_per_method=0.05, pictures=False, out=str(out),
                           finetune=FinetuneConfig(steps=20, eval_every=10),
                           pretrain_args={"batch_size": 64, "backbone_args": {"width": 8}, "monitor_seconds": 0.0})
        with contextlib.redirect_stdout(sys.stderr):
            results = run_compare(cc, show_progress=False)
    finally:
        compare.few_label_rows = real
    want = "cpu" if dry else "cuda"
    if not seen or any(not d.startswith(want) for d in seen):
        raise RuntimeError(f"evaluations were handed {sorted(set(seen))}, not {want}")
    return {"devices": sorted(set(seen)), "rows": len(results.get("rows", []))}


def ddp_check(out: Path) -> dict:
    """SimCLR on 2 GPUs (with and without SyncBN) and on 1 GPU with their global batch, from the command line."""
    found = {}
    for name, extra in (("1gpu-batch256", ["--devices", "1", "--batch-size", "256"]),
                        ("2gpu-syncbn", ["--devices", "2", "--batch-size", "128", "--sync-batchnorm"]),
                        ("2gpu-no-syncbn", ["--devices", "2", "--batch-size", "128", "--no-sync-batchnorm"])):
        run = out / name
        cmd = [sys.executable, "-m", "selfsup", "pretrain", "--dataset", "digits", "--method", "simclr", "--steps",
               "200", "--accelerator", "cuda", "--monitor-seconds", "0", "--out", str(run), *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"{name}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
        s = json.loads((run / "summary.json").read_text())
        found[name] = {"final_loss": s["final_loss"], "img_per_s": s["img_per_s"], "world_size": s["world_size"]}
    return found


def throughput_check(out: Path) -> dict:
    found = {}
    for name, backbone, args, side, batch in (("resnet18-small-32px", "resnet18", {"stem": "small"}, 32, 512),
                                              ("resnet18-small-96px", "resnet18", {"stem": "small"}, 96, 512),
                                              ("resnet50-224px", "resnet50", {}, 224, 128),
                                              ("vit_small-224px", "vit_small", {}, 224, 128)):
        cfg = PretrainConfig(dataset="random", method="simclr", backbone=backbone, backbone_args=args, steps=60,
                             batch_size=batch, accelerator="cuda", monitor_seconds=0, out=str(out / name))
        train_module.pretrain(cfg, random_images(batch * 8, side), show_progress=False, overwrite=True)
        s = json.loads((out / name / "summary.json").read_text())
        found[name] = {"img_per_s": s["img_per_s"], "precision": s["precision"], "batch": batch}
    return found


def plan(dry: bool) -> list[tuple[str, str, str]]:
    """(method, precision, optimizer) runs: all of them on a GPU; each method, precision and optimizer once dry."""
    methods = METHODS.names()
    if not dry:
        return [(m, p, o) for m in methods for p in PRECISIONS for o in OPTIMIZERS]
    return [(m, PRECISIONS[i % len(PRECISIONS)], OPTIMIZERS[i % len(OPTIMIZERS)]) for i, m in enumerate(methods)]


def run_checks(dry: bool, work: Path) -> dict:
    accelerator = "cpu" if dry else "cuda"
    steps, side = (2, 16) if dry else (STEPS, 32)
    checks = {f"loop/{m}/{p}/{o}": (lambda m=m, p=p, o=o: loop_check(m, p, o, accelerator, steps, side,
                                                                       work / f"loop-{m}-{p}-{o}"))
              for m, p, o in plan(dry)}
    checks["eval-on-device"] = lambda: eval_check(dry)
    checks["compare-on-device"] = lambda: compare_check(work / "compare", dry)
    if not dry:
        checks["ddp"] = (lambda: ddp_check(work / "ddp")) if torch.cuda.device_count() >= 2 else None
        checks["throughput"] = lambda: throughput_check(work / "throughput")
    results = {}
    for name, check in checks.items():
        t0 = time.perf_counter()
        if check is None:
            results[name] = {"status": "skipped", "why": f"{torch.cuda.device_count()} GPU(s); needs 2"}
            continue
        try:
            results[name] = {"status": "ok", **check()}
        except Exception as e:  # every check runs; each failure is reported with its cause
            results[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}".splitlines()[0][:300],
                             "trace": traceback.format_exc()[-2000:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{results[name]['status']:>7}  {name}  {results[name].get('error', '')}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same code paths on the CPU, small (no GPU needed)")
    p.add_argument("--work", help="where the runs go (default: a temporary folder)")
    p.add_argument("--out", help="JSON path (default: bench/results/gpu-check-<device>.json; dry: not written)")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("torch sees no GPU here: run with --dry-run, or on a machine with one", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        os.environ.setdefault("SELFSUP_PRECISION_CACHE", str(work / "precision.json"))
        results = run_checks(args.dry_run, work)
    failed = [name for name, r in results.items() if r["status"] == "failed"]
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "dry_run": args.dry_run,
              "failed": failed, "checks": results}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    elif not args.dry_run:
        write(f"gpu-check-{device_tag()}.json", report)
    if failed:
        print(f"{len(failed)} check(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print(f"all {len(results)} checks passed" + (" (dry run, CPU)" if args.dry_run else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
