"""The one place that decides the precision and creates Lightning Fabric (devices, processes, autocast).

Programs create the engine at their entry point (`selfsup pretrain`, `selfsup compare`) and hand it to
`pretrain`; a library call that gets none makes a single-machine one itself.
"""
from __future__ import annotations

import contextlib
import logging

import torch

PRECISIONS = ("auto", "bf16-mixed", "16-mixed", "32-true")


def cpu_bf16_path() -> str:
    """The CPU's fastest bf16 matmul path: 'amx', 'avx512bf16', or 'none'."""
    if torch.cpu._is_amx_tile_supported():
        return "amx"
    return "avx512bf16" if torch.cpu._is_avx512_bf16_supported() else "none"


def choose_precision(accelerator: str = "auto", precision: str = "auto") -> str:
    """`precision` unless it is 'auto': then bf16 autocast where the hardware runs bf16 natively (CUDA with bf16,
    CPUs with AMX or AVX512-BF16), fp16 with a gradient scaler on older GPUs, else fp32."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and cpu_bf16_path() != "none":
        return "bf16-mixed"
    return "32-true"


def autocast_for(device: torch.device, precision: str = "auto"):
    """The autocast context for evaluation code that runs outside Fabric (bf16 where chosen, else nothing)."""
    chosen = choose_precision(device.type, precision)
    if chosen.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if chosen.startswith("16") and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def make_fabric(accelerator: str = "auto", devices: int = 1, num_nodes: int = 1, precision: str = "auto",
                launch: bool = True):
    """A Fabric for these settings, launched (processes started) unless `launch` is False."""
    from lightning.fabric import Fabric

    for name in ("lightning.fabric", "lightning.pytorch"):  # the chosen precision goes into summary.json instead
        logging.getLogger(name).setLevel(logging.WARNING)
    fabric = Fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes,
                    precision=choose_precision(accelerator, precision))
    if launch:
        fabric.launch()
    return fabric


def check_engine(cfg, device_type: str | None = None) -> None:
    """Settings the engine cannot honour, said before any process starts."""
    from .errors import ConfigError

    on_cpu = device_type == "cpu" if device_type else (cfg.accelerator == "cpu" or not torch.cuda.is_available())
    if cfg.sync_batchnorm and cfg.devices * cfg.num_nodes > 1 and on_cpu:
        raise ConfigError("--sync-batchnorm needs GPUs (torch's SyncBatchNorm has no CPU kernel); drop it on CPU")


def fabric_for(cfg) -> "object":
    """The engine a PretrainConfig asks for (its accelerator, devices, nodes and precision), launched."""
    check_engine(cfg)
    return make_fabric(cfg.accelerator, cfg.devices, cfg.num_nodes, cfg.precision)


def agree(fabric, values: list, ops: list[str]) -> list[float]:
    """Every process's `values` (floats or 0-dim tensors) combined by op, 'max' or 'sum', in one collective.

    This is where the training loop waits for the device: it reads the result on the host."""
    vec = torch.stack([torch.as_tensor(v, dtype=torch.float64).to(fabric.device) for v in values])  # (k,)
    if fabric.world_size > 1:
        import torch.distributed as dist

        parts = [torch.empty_like(vec) for _ in range(fabric.world_size)]
        dist.all_gather(parts, vec)
        vec = torch.stack(parts)  # (world, k)
    rows = vec.reshape(-1, len(values)).cpu()
    return [float(rows[:, i].max() if op == "max" else rows[:, i].sum()) for i, op in enumerate(ops)]
