"""Pretraining img/s for the same model, batch and data: a plain fp32 NCHW loop vs selfsup's default path.

(a) plain: fp32, NCHW, no autocast - the way most tutorials and libraries run on a CPU.
(b) selfsup: `selfsup.train.pretrain` as a user runs it (bf16 autocast where native, channels_last).
img/s = images per optimizer step x steps per second, after warm-up steps.
Writes bench/results/throughput-<device_tag>.json (cuda, cpu-amx, cpu-avx512bf16 or cpu-avx2).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, matmul_peak, write  # noqa: E402

from selfsup.augment import augment, preset  # noqa: E402
from selfsup.factory import build_method, encoder_spec  # noqa: E402
from selfsup.config import PretrainConfig  # noqa: E402
from selfsup.data import ImageSet, load  # noqa: E402
from selfsup.train import pretrain  # noqa: E402

CASES = {  # name: (backbone, channels, side, batch)
    "small_cnn-mnist28": ("small_cnn", 1, 28, 256),
    "resnet18-32px": ("resnet18", 3, 32, 64),
}


def images_for(channels: int, side: int, n: int = 4096) -> ImageSet:
    if channels == 1 and side == 28:
        try:
            return load("mnist", "train").subset(np.arange(n))
        except Exception:  # noqa: BLE001 - fall back to random pixels when MNIST is absent
            pass
    x = np.random.default_rng(0).integers(0, 256, (n, channels, side, side), dtype=np.uint8)
    return ImageSet("random", x, np.full(n, -1, np.int64))


def plain_loop(cfg: PretrainConfig, data: ImageSet, warmup: int, steps: int) -> dict:
    """A textbook fp32 NCHW loop over the same model, batch and augmentation."""
    torch.manual_seed(0)
    method = build_method(cfg, encoder_spec(cfg, data.channels, data.size[0]))
    opt = torch.optim.AdamW(method.parameters(), lr=cfg.lr)
    view, g = preset(cfg.augment, data.channels), torch.Generator().manual_seed(0)
    x_all = torch.from_numpy(data.images)
    times = []
    for i in range(warmup + steps):
        idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=g)
        t0 = time.perf_counter()
        views = [augment(x_all[idx], view, g) for _ in range(method.n_views)]
        loss = method.loss(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(method, "after_step"):  # BYOL's EMA target update is part of its step
            method.after_step(i / (warmup + steps))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"img_per_s": cfg.batch_size * len(times) / sum(times), "steps": len(times)}


def selfsup_path(cfg: PretrainConfig, data: ImageSet, warmup: int, steps: int) -> dict:
    """Run the library's own loop; img/s from its per-step log, skipping the warm-up steps."""
    with tempfile.TemporaryDirectory() as out:
        c = cfg.override(steps=warmup + steps, out=out, checkpoint_minutes=1e9)
        t_start = time.perf_counter()
        pretrain(c, data, show_progress=False)
        total = time.perf_counter() - t_start
        hist = [json.loads(line) for line in open(Path(out) / "metrics.jsonl")]
        summary = json.loads((Path(out) / "summary.json").read_text())
    late = [h for h in hist if h["step"] > warmup] or hist
    return {"img_per_s": float(np.median([h["img_per_s"] for h in late])), "steps": steps,
            "precision": summary["precision"], "wall_seconds": round(total, 1)}


PHASES = ("data", "augment", "forward", "loss", "backward", "optimizer")  # the selfsup.* ranges in train.py/losses.py


def breakdown(cfg: PretrainConfig, data: ImageSet, warmup: int, steps: int) -> dict:
    """Where a step of `selfsup.train.pretrain` goes: torch.profiler over its labelled phases, after warm-up.

    Fractions are of the summed step phases (data + augment + forward + backward + optimizer); `loss` is the
    forward of the loss function alone and lies inside `forward`. Also the 8 ops with the most self time.
    """
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as out, profile(activities=acts) as prof:
        pretrain(cfg.override(steps=warmup + steps, out=out, checkpoint_minutes=1e9, monitor_seconds=0), data,
                 show_progress=False)
    spans: dict[str, list] = {p: [] for p in PHASES}
    for ev in prof.events():
        name = ev.name.removeprefix("selfsup.")
        if ev.name.startswith("selfsup.") and name in spans:
            spans[name].append((ev.time_range.start, ev.time_range.elapsed_us()))
    per_step = {}
    for name, s in spans.items():
        s.sort()
        skip = warmup * (len(s) // (warmup + steps)) if name == "loss" else warmup  # some methods call the loss twice
        per_step[name] = sum(d for _, d in s[skip:]) / steps / 1e3  # ms per step
    step_ms = sum(v for k, v in per_step.items() if k != "loss")
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    ops = [e for e in ops if not e.key.startswith("selfsup.")]
    total_self = sum(e.self_cpu_time_total for e in ops)
    return {"ms_per_step": {k: round(v, 2) for k, v in per_step.items()}, "step_ms": round(step_ms, 2),
            "fraction": {k: round(v / step_ms, 3) for k, v in per_step.items()},
            "top_ops_self_cpu_fraction": {e.key: round(e.self_cpu_time_total / total_self, 3) for e in ops[:8]}}


def flops_per_image(cfg: PretrainConfig, data: ImageSet) -> float:
    """Forward + backward FLOPs of one training step, per image (all views), counted by torch."""
    method = build_method(cfg, encoder_spec(cfg, data.channels, data.size[0]))
    x = torch.from_numpy(data.images[: cfg.batch_size])
    views = [augment(x, preset(cfg.augment, data.channels)) for _ in range(method.n_views)]
    with FlopCounterMode(display=False) as fc:
        method.loss(views).backward()
    return fc.get_total_flops() / cfg.batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--methods", default="simclr,byol")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                   help="also profile selfsup's step by phase (a separate run)")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = {"fp32_tflops": matmul_peak(torch.float32, device), "bf16_tflops": matmul_peak(torch.bfloat16, device)}
    print(f"matmul peak: {peak}")
    rows = []
    for case in args.cases.split(","):
        backbone, channels, side, batch = CASES[case]
        data = images_for(channels, side)
        for method in args.methods.split(","):
            cfg = PretrainConfig(dataset=data.name, method=method, backbone=backbone, batch_size=batch, steps=1)
            steps = args.steps if backbone == "small_cnn" else max(4, args.steps // 4)
            a = plain_loop(cfg, data, args.warmup, steps)
            b = selfsup_path(cfg, data, args.warmup, steps)
            fpi = flops_per_image(cfg, data)
            row = {"case": case, "method": method, "batch": batch, "plain_fp32_img_per_s": round(a["img_per_s"], 1),
                   "selfsup_img_per_s": round(b["img_per_s"], 1), "selfsup_precision": b["precision"],
                   "speedup": round(b["img_per_s"] / a["img_per_s"], 2), "gflop_per_image": round(fpi / 1e9, 3),
                   "selfsup_tflops": round(fpi * b["img_per_s"] / 1e12, 4)}
            row["fraction_of_bf16_matmul_peak"] = round(row["selfsup_tflops"] / peak["bf16_tflops"], 3)
            used = peak["bf16_tflops"] if b["precision"].startswith("bf16") else peak["fp32_tflops"]
            row["fraction_of_matmul_peak"] = round(row["selfsup_tflops"] / used, 3)  # at the precision it ran in
            if args.profile:
                row["profile"] = breakdown(cfg, data, args.warmup, steps)
            print(row, flush=True)
            rows.append(row)
    write(f"throughput-{device_tag()}.json", {"machine": machine(), "matmul_peak": peak, "rows": rows,
                                        "command": "python bench/throughput.py " + " ".join(sys.argv[1:])})


if __name__ == "__main__":
    main()
