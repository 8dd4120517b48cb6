"""Shared helpers for the benchmarks: machine facts and JSON output."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from selfsup.engine import cpu_bf16_path, cpu_name  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "bf16_path": cpu_bf16_path(), "amx": cpu_bf16_path() == "amx",
            "avx512_bf16": torch.cpu._is_avx512_bf16_supported()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def device_tag() -> str:
    """`cuda`, or `cpu-` and the CPU's fastest bf16 path (amx, avx512bf16, or none: avx2): result files keep apart
    machines whose speeds differ."""
    if torch.cuda.is_available():
        return "cuda"
    path = cpu_bf16_path()
    return "cpu-avx2" if path == "none" else f"cpu-{path}"


def matmul_peak(dtype: torch.dtype, device: str = "cpu", n: int = 2048, seconds: float = 2.0) -> float:
    """Measured matmul TFLOP/s for square n x n operands."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def split(data, n_val: int):
    """(first N - n_val images, last n_val images) of an ImageSet: a validation split carved from the training images."""
    cut = len(data) - n_val
    return data.subset(np.arange(cut)), data.subset(np.arange(cut, len(data)))


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path
