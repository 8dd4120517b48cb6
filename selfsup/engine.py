"""The one place that decides the precision and creates Lightning Fabric (devices, processes, autocast).

Programs create the engine at their entry point (`selfsup pretrain`, `selfsup compare`) and hand it to
`pretrain`; a library call that gets none makes a single-machine one itself.

On a CPU, `--precision auto` is decided by measurement: bf16 autocast only pays where the CPU's bf16 kernels beat
its fp32 ones for this network (on a 2-core Xeon with AMX: 2.1x for ResNet-18's training step, 1.6x for the demo's
width-16 CNN; bench/README.md), and it costs precision. A short probe times the encoder's forward and backward both ways; bf16 is chosen when it is at
least BF16_MIN_GAIN faster. The answer is cached per CPU model, core count, torch version and encoder.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from pathlib import Path

import torch

from .errors import SelfsupError
from .files import write_json

PRECISIONS = ("auto", "bf16-mixed", "16-mixed", "32-true")
BF16_MIN_GAIN = 1.10  # bf16 autocast must make the step at least this much faster to be chosen on a CPU
PROBE_BATCH = 128
_CHOSEN: dict[str, dict] = {}  # this process's decisions (also handed to child processes through the environment)


def cpu_bf16_path() -> str:
    """The CPU's fastest bf16 matmul path: 'amx', 'avx512bf16', or 'none'."""
    if torch.cpu._is_amx_tile_supported():
        return "amx"
    return "avx512bf16" if torch.cpu._is_avx512_bf16_supported() else "none"


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), read once."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def choose_precision(accelerator: str = "auto", precision: str = "auto") -> str:
    """`precision` unless it is 'auto': then by the hardware alone, bf16 autocast where it runs bf16 natively (CUDA
    with bf16, CPUs with AMX or AVX512-BF16), fp16 with a gradient scaler on older GPUs, else fp32. On a CPU,
    `measured_precision` refines this for a given encoder."""
    if precision != "auto":
        return precision
    if accelerator_for(accelerator) == "cuda" and torch.cuda.is_available():
        # native bf16 only (Ampere and later): emulated bf16 on a V100 or T4 is slow, and fp16 with a scaler is not
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    if accelerator_for(accelerator) == "cpu" and cpu_bf16_path() != "none":
        return "bf16-mixed"
    return "32-true"


def probe_seconds(spec, batch: int = PROBE_BATCH, rounds: int = 3) -> dict:
    """Seconds per image of the encoder's training forward and backward, fp32 and bf16 autocast, timed in turns
    (the fastest of `rounds` each). The batch shrinks so that one fp32 step takes about half a second at most, and
    never exceeds `batch` (the run's own): the probe needs no more memory than the step it measures."""
    from .encoders import build_encoder

    side = spec.image_size or 32
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():  # callers may be in no_grad
        torch.manual_seed(0)
        model = build_encoder(spec).to(memory_format=torch.channels_last).train()

        def step(n: int, bf16: bool) -> float:
            x = torch.rand(n, spec.in_channels, side, side).contiguous(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = model(x)
            y.float().square().mean().backward()
            model.zero_grad(set_to_none=True)
            return (time.perf_counter() - t0) / n

        first = min(16, batch)
        step(first, False)  # warm-up
        n = int(max(first, min(batch, 0.5 / max(step(first, False), 1e-9))))
        step(n, True)  # bf16 kernels are created on their first call
        times = {False: [], True: []}
        for _ in range(rounds):
            for bf16 in (False, True):
                times[bf16].append(step(n, bf16))
    return {"fp32": min(times[False]), "bf16": min(times[True]), "batch": n}


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(os.environ.get("SELFSUP_PRECISION_CACHE") or Path(base) / "selfsup" / "precision.json").expanduser()


def _key(spec) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    enc = {k: v for k, v in spec.to_dict().items() if k != "value_range"}
    return f"{cpu_name()} | {cores} cores | torch {torch.__version__} | {json.dumps(enc, sort_keys=True)}"


def _read_json(source) -> dict:
    """A JSON object from a file path or a string; {} when absent, unreadable or not an object."""
    try:
        found = json.loads(source.read_text() if isinstance(source, Path) else (source or "{}"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def measured_precision(spec, batch: int = PROBE_BATCH) -> dict:
    """{'precision', 'reason'} for training or running `spec`'s encoder on this CPU with --precision auto."""
    if cpu_bf16_path() == "none":
        return {"precision": "32-true", "reason": "auto: fp32, this CPU has no native bf16 (AMX or AVX512-BF16)"}
    key = _key(spec)
    if key in _CHOSEN:
        return _CHOSEN[key]
    path = _cache_path()
    handed, cached = _read_json(os.environ.get("SELFSUP_PRECISION_CHOSEN")), _read_json(path)  # from a parent; cached
    found = handed.get(key) or cached.get(key)
    if found is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # processes started by torchrun or SLURM
        found = {"precision": "32-true", "reason": "auto: fp32, because this is one of several processes started "
                 "together and none measured bf16 for this encoder here (a one-process run measures and caches it)"}
    if found is None:
        t = probe_seconds(spec, min(batch, PROBE_BATCH))
        gain = t["fp32"] / t["bf16"]
        chosen = "bf16-mixed" if gain >= BF16_MIN_GAIN else "32-true"
        found = {"precision": chosen, "bf16_speedup": round(gain, 3), "probe": t, "date": time.strftime("%Y-%m-%d"),
                 "reason": f"auto: {'bf16 autocast' if chosen.startswith('bf16') else 'fp32'}, because bf16 ran "
                           f"{gain:.2f}x fp32 for this encoder on this CPU (bf16 needs {BF16_MIN_GAIN:.2f}x); "
                           f"measured {time.strftime('%Y-%m-%d')}, cached in {path}"}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, cached | {key: found})
        except (OSError, SelfsupError):
            pass  # an unwritable cache only means probing again next time
    _CHOSEN[key] = found
    os.environ["SELFSUP_PRECISION_CHOSEN"] = json.dumps(_CHOSEN)
    return found


ACCELERATORS = ("auto", "cpu", "cuda", "gpu")


def accelerator_for(asked: str = "auto") -> str:
    """'cuda' or 'cpu': what `asked` means here ('auto': a GPU where torch sees one). Apple's mps is not offered:
    torch's mps has no float64 and several of the methods' ops fall back to the CPU there."""
    from .errors import ConfigError

    if asked not in ACCELERATORS:
        raise ConfigError(f"unknown accelerator {asked!r}; choose one of: {', '.join(ACCELERATORS)}"
                          + (" (mps is not supported; use cpu)" if asked == "mps" else ""))
    return "cuda" if asked in ("cuda", "gpu") or (asked == "auto" and torch.cuda.is_available()) else "cpu"


def eval_device(asked: str | None = "auto", accelerator: str = "auto") -> torch.device:
    """Where evaluation runs: `asked` ('cpu', 'cuda', 'cuda:1'), or ('auto' or None) the device the run's
    `accelerator` means: on a GPU machine, baselines, fine-tuning and semi-supervised training run there too."""
    if asked and asked != "auto":
        try:
            return torch.device(asked)
        except RuntimeError:
            from .errors import ConfigError

            raise ConfigError(f"unknown device {asked!r}; give auto, cpu, cuda or cuda:N") from None
    return torch.device(accelerator_for(accelerator))


def on_cpu(accelerator: str) -> bool:
    return accelerator_for(accelerator) == "cpu"


def resolve_precision(accelerator: str, precision: str, spec=None, batch: int = PROBE_BATCH) -> dict:
    """{'precision', 'reason'}: what was asked for, or the measured choice on a CPU, or the hardware rule."""
    if precision != "auto":
        return {"precision": precision, "reason": f"--precision {precision}"}
    if spec is not None and on_cpu(accelerator):
        return measured_precision(spec, batch)
    chosen = choose_precision(accelerator, precision)
    return {"precision": chosen, "reason": f"auto: {chosen} by the hardware rule (bf16 where it runs natively)"}


def autocast_for(device: torch.device, precision: str = "auto", encoder=None):
    """The autocast context for evaluation code that runs outside Fabric (bf16 where chosen, else nothing).

    With `encoder` (one that carries its `spec`), 'auto' on a CPU is the measured choice for that encoder."""
    spec = getattr(encoder, "spec", None)
    return _autocast(device, resolve_precision(device.type, precision, spec)["precision"])


def _autocast(device: torch.device, chosen: str):
    """The autocast context of a resolved precision: bf16 or fp16 autocast, or nothing for fp32."""
    if chosen.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if chosen.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


class TrainStep:
    """Autocast, backward and optimizer step for evaluation's own training (fine-tuning, semi-supervised): under
    fp16 autocast (`16-mixed`, the choice on GPUs without native bf16) the loss is scaled and the gradients
    unscaled before the step, which a scaled step that overflowed skips; small gradients would underflow to 0
    in fp16 without it."""

    def __init__(self, device: torch.device, encoder=None, precision: str = "auto"):
        self.device = device  # the precision is resolved once here, not at every step
        self.chosen = resolve_precision(device.type, precision, getattr(encoder, "spec", None))["precision"]
        self.scaler = torch.amp.GradScaler(device.type) if self.chosen.startswith("16") else None

    def autocast(self):
        return _autocast(self.device, self.chosen)

    def step(self, loss, optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


def make_fabric(accelerator: str = "auto", devices: int = 1, num_nodes: int = 1, precision: str = "auto",
                launch: bool = True, spec=None, batch: int = PROBE_BATCH):
    """A Fabric for these settings, launched (processes started) unless `launch` is False. `spec`: the encoder it
    will train, for a measured choice of precision on a CPU (recorded as `fabric.precision_choice`)."""
    from lightning.fabric import Fabric

    from . import threads

    kind = accelerator_for(accelerator)
    if kind == "cpu":
        threads.start()  # before the engine, which would set torch's threads its own way; a GPU run is left alone
    for name in ("lightning.fabric", "lightning.pytorch"):  # the chosen precision goes into summary.json instead
        logging.getLogger(name).setLevel(logging.WARNING)
    choice = resolve_precision(accelerator, precision, spec, batch)
    if kind == "cuda":  # TF32 matmuls and convolutions, cuDNN's autotuner (fixed shapes)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    fabric = Fabric(accelerator=kind, devices=devices, num_nodes=num_nodes, precision=choice["precision"],
                    strategy=strategy_for(devices, num_nodes))
    fabric.precision_choice = choice
    if launch:
        fabric.launch()
    return fabric


def engine_facts(fabric) -> dict:
    """What summary.json says about the engine: precision and why, device, processes, threads and why."""
    from . import threads

    return {"precision": str(fabric.strategy.precision.precision),
            "precision_reason": getattr(fabric, "precision_choice", {}).get("reason", "the engine the caller made"),
            "device": str(fabric.device), "world_size": fabric.world_size, "threads": threads.THREADS.summary()}


def check_engine(cfg, device_type: str | None = None) -> None:
    """Settings the engine cannot honour, said before any process starts."""
    from .errors import ConfigError

    on_cpu = device_type == "cpu" if device_type else (cfg.accelerator == "cpu" or not torch.cuda.is_available())
    if cfg.sync_batchnorm and cfg.devices * cfg.num_nodes > 1 and on_cpu:
        raise ConfigError("--sync-batchnorm needs GPUs (torch's SyncBatchNorm has no CPU kernel); drop it on CPU")


def fabric_for(cfg, spec=None) -> "object":
    """The engine a PretrainConfig asks for (its accelerator, devices, nodes and precision), launched. `spec`: the
    encoder it will train (`factory.encoder_spec`), which --precision auto measures on a CPU."""
    check_engine(cfg)
    return make_fabric(cfg.accelerator, cfg.devices, cfg.num_nodes, cfg.precision, spec=spec, batch=cfg.batch_size)


def agree(fabric, maxima: dict, sums: dict | None = None) -> dict[str, float]:
    """Every process's named values (floats or 0-dim tensors), the largest of each of `maxima` and the total of
    each of `sums`, in one collective. float32 on the device (mps has no float64; steps stay exact below 2**24).

    This is where the training loop waits for the device: it reads the result on the host."""
    sums = sums or {}
    names, ops = [*maxima, *sums], ["max"] * len(maxima) + ["sum"] * len(sums)
    vec = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=fabric.device)
                       for v in [*maxima.values(), *sums.values()]])  # (k,)
    if fabric.world_size > 1:
        import torch.distributed as dist

        parts = [torch.empty_like(vec) for _ in range(fabric.world_size)]
        dist.all_gather(parts, vec)
        vec = torch.stack(parts)  # (world, k)
    rows = vec.reshape(-1, len(names)).cpu()
    return {name: float(rows[:, i].max() if op == "max" else rows[:, i].sum())
            for i, (name, op) in enumerate(zip(names, ops))}


def sync_batchnorm(asked: bool | None, method, world_size: int, device_type: str) -> bool:
    """Whether BatchNorm runs over the global batch: as asked, else (None) on several GPU processes for the methods
    whose papers do so (`method.global_batchnorm`)."""
    if world_size <= 1:
        return False
    return bool(asked) if asked is not None else device_type == "cuda" and method.global_batchnorm


def strategy_for(devices: int, num_nodes: int):
    """Data parallel on several processes without re-broadcasting buffers on every forward: every process updates
    its buffers (EMA followers, MoCo's queue, DINO's centre) identically from gathered values already."""
    if devices * num_nodes <= 1:
        return "auto"
    from lightning.fabric.strategies import DDPStrategy

    return DDPStrategy(broadcast_buffers=False)
