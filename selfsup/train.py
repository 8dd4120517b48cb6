"""The pretraining loop: one explicit loop; devices, precision and processes come from Lightning Fabric."""
from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.profiler import record_function

from . import checkpoint
from .augment import augment, view_for
from .config import PretrainConfig, write_json
from .data import ImageSet, load
from .errors import ConfigError, DataError, Interrupted, SelfsupError, TrainingError
from .monitor import collapse_stats, is_collapsed


def auto_precision(accelerator: str) -> str:
    """bf16 autocast where the hardware runs it natively (CUDA with bf16, CPUs with AMX or AVX512-BF16), else fp32."""
    if accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    if accelerator in ("auto", "cpu") and (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()):
        return "bf16-mixed"
    return "32-true"


def make_fabric(cfg: PretrainConfig):
    import logging

    from lightning.fabric import Fabric

    for name in ("lightning.fabric", "lightning.pytorch"):  # the chosen precision goes into summary.json instead
        logging.getLogger(name).setLevel(logging.WARNING)
    precision = auto_precision(cfg.accelerator) if cfg.precision == "auto" else cfg.precision
    return Fabric(accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, precision=precision)


def lr_at(progress: float, base: float, warmup: float) -> float:
    """Linear warmup over the first `warmup` of the budget, then cosine decay to zero."""
    if progress < warmup:
        return base * progress / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-8, 1 - warmup))))


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]  # biases and norms
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class Batches:
    """Random batches of uint8 images on the device; each rank takes a disjoint shard of every epoch."""

    def __init__(self, images: np.ndarray, batch_size: int, device: torch.device, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.device = len(images), batch_size, device
        self.rank, self.world = rank, world
        self.steps_per_epoch = self.n // (batch_size * world)
        if self.steps_per_epoch < 1:
            raise ConfigError(f"batch size {batch_size} x {world} device(s) is more than the {self.n} images; lower --batch-size")
        on_device = images.nbytes < 2**31  # small sets live on the device; large ones are gathered per batch
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device) if on_device else images
        self.seed = seed

    def epoch(self, e: int, start: int = 0):
        """The batches of epoch `e` from batch `start` on (a resumed run starts mid-epoch)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + e)  # same order on every rank
        perm = torch.randperm(self.n, generator=g)[self.rank::self.world]
        for s in range(start, self.steps_per_epoch):
            idx = perm[s * self.batch_size:(s + 1) * self.batch_size]
            if isinstance(self.images, torch.Tensor):
                yield self.images[idx.to(self.device)]
            else:
                yield torch.from_numpy(self.images[np.sort(idx.numpy())]).to(self.device, non_blocking=True)


def labelled(batches, name: str):
    """The same batches, each fetch inside a profiler range called `name`."""
    it = iter(batches)
    while True:
        with record_function(name):
            x = next(it, None)
        if x is None:
            return
        yield x


class OnlineKNN:
    """kNN accuracy of the current encoder on a small labeled holdout of the pretraining split.

    The labels are read only here, to show representation quality during training; they never reach the loss.
    """

    def __init__(self, data: ImageSet, per_class: int, seed: int):
        from .data import few_labels

        self.enabled = False
        labels = data.labels
        if per_class < 1 or (labels >= 0).sum() == 0:
            return
        smallest = np.bincount(labels[labels >= 0]).min() if (labels >= 0).any() else 0
        per_class = min(per_class, int(smallest) // 2)
        if per_class < 1:
            return
        bank = few_labels(labels, per_class, seed + 1)
        queries = few_labels(labels, per_class, seed + 2, exclude=bank)
        self.bank_x, self.bank_y = data.images[bank], torch.from_numpy(labels[bank])
        self.query_x, self.query_y = data.images[queries], torch.from_numpy(labels[queries])
        self.enabled = True

    def __call__(self, encoder: torch.nn.Module) -> float:
        from .evaluate.features import extract_features
        from .evaluate.knn import knn_accuracy

        bank = extract_features(encoder, self.bank_x)
        return knn_accuracy(bank, self.bank_y, extract_features(encoder, self.query_x), self.query_y)


@dataclass
class Budget:
    """Progress in [0, 1] measured in epochs, steps or wall-clock minutes."""

    cfg: PretrainConfig
    steps_per_epoch: int
    start: float = 0.0

    def progress(self, step: int) -> float:
        c = self.cfg
        if c.minutes is not None:
            return min(1.0, (time.perf_counter() - self.start) / (60 * c.minutes))
        total = c.steps if c.steps is not None else max(1, math.ceil(c.epochs * self.steps_per_epoch))
        return min(1.0, step / total)


class Progress:
    """A tqdm bar in percent of the budget on a terminal; plain log lines otherwise."""

    def __init__(self, enabled: bool, every: float = 15.0):
        self.bar, self.every, self.last = None, every, 0.0
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}", file=sys.stderr)
        self.enabled = enabled

    def update(self, progress: float, stats: dict) -> None:
        if not self.enabled:
            return
        text = f"loss={stats['loss']:.4f} img/s={stats['img_per_s']:.0f}"
        if "embed_std_ratio" in stats:
            text += f" std*sqrt(d)={stats['embed_std_ratio']:.2f} rank={stats['effective_rank']:.0f}"
        text += "".join(f" {k}={stats[k]:.3f}" for k in ("knn_acc", "rotation_acc", "ab_l1", "hole_l1") if k in stats)
        if self.bar is not None:
            self.bar.n = round(100 * progress, 1)
            self.bar.set_postfix_str(text, refresh=True)
        elif time.perf_counter() - self.last >= self.every or progress >= 1:
            self.last = time.perf_counter()
            eta = stats["seconds"] * (1 - progress) / max(progress, 1e-9)
            print(f"[{100 * progress:5.1f}%] step {stats['step']} {text} eta {eta:.0f}s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopSignals:
    """Turn the first SIGINT/SIGTERM into a flag the loop checks after each step; a second one acts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def rng_state(gen: torch.Generator) -> dict:
    """Every random stream the loop draws from: torch (CPU and CUDA), numpy, python, and the augmentation generator."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "augment": gen.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    gen.set_state(state["augment"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather_objects(obj, world: int) -> list:
    """One object from every rank (the engine's collective); the plain list on a single process."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def resumable(out: str | Path) -> tuple[Path, dict]:
    """The newest readable checkpoint of an unfinished run: (path, state)."""
    path, state = checkpoint.latest(out)
    if state.get("final"):
        raise SelfsupError(f"the run in {out} already finished at step {state['step']}; nothing to resume "
                           f"(start a new --out to train longer)")
    return path, state


def _check_old_run(out: Path, overwrite: bool) -> list[Path]:
    """The checkpoints of an earlier run in `out`; an error unless the user asked to replace them."""
    old = checkpoint.candidates(out)
    if old and not overwrite:
        raise ConfigError(f"{out} already holds a run ({old[0].name}); continue it with --resume {out}, "
                          f"start over with --overwrite, or choose another --out")
    return old


def pretrain(cfg: PretrainConfig, data: ImageSet | None = None, show_progress: bool = True,
             resume: bool | tuple[Path, dict] = False, overwrite: bool = False) -> Path:
    """Pretrain `cfg.method` on `cfg.dataset`; returns the final checkpoint path (OUT/checkpoints/last.pt).

    resume: continue exactly from the newest readable checkpoint in `cfg.out` (weights, optimizer, EMA target,
    counters, data position and every random stream), or from the (path, state) that `resumable` already read.
    overwrite: replace a run already in `cfg.out`.
    """
    cfg.validate()
    out = Path(cfg.out)
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{time.time_ns()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to output directory {out} ({e.strerror}); choose another --out") from None
    resumed_from, saved = (resume if isinstance(resume, tuple) else resumable(out)) if resume else (None, None)
    old = [] if resume else _check_old_run(out, overwrite)  # on every process, before any of them deletes
    fabric = make_fabric(cfg)
    if cfg.sync_batchnorm and cfg.devices * cfg.num_nodes > 1 and fabric.device.type == "cpu":
        raise ConfigError("--sync-batchnorm needs GPUs (torch's SyncBatchNorm has no CPU kernel); drop it on CPU")
    fabric.launch()
    if old and fabric.is_global_zero:
        for p in old:
            checkpoint.remove(p)
    fabric.barrier()
    fabric.seed_everything(cfg.seed, verbose=False)
    data = data if data is not None else load(cfg.dataset, cfg.split, cfg.data_root, cfg.strict)
    method = checkpoint.build_method(cfg, data.channels)
    if saved is not None:
        if saved["in_channels"] != data.channels:
            raise ConfigError(f"checkpoint {resumed_from} was trained on {saved['in_channels']}-channel images but "
                              f"{cfg.dataset} has {data.channels}; resume on the same data")
        checkpoint.load_state_into(method, saved, cfg, resumed_from)
    if cfg.sync_batchnorm and fabric.world_size > 1:
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    view = view_for(cfg, data.channels, method)
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    method = method.to(memory_format=memory)
    optimizer = make_optimizer(method, cfg)
    model, optimizer = fabric.setup(method, optimizer)
    model.mark_forward_method("loss")  # `loss` runs through the engine's wrapper (autocast, DDP)
    gen = torch.Generator(fabric.device).manual_seed(cfg.seed * 7919 + fabric.global_rank)
    batches = Batches(data.images, cfg.batch_size, fabric.device, cfg.seed, fabric.global_rank, fabric.world_size)
    world, rank = fabric.world_size, fabric.global_rank

    step, epoch, epoch_step, seen, progress, skipped, history = 0, 0, 0, 0, 0.0, 0, []
    elapsed_before = 0.0
    if saved is not None:
        order = saved["data_order"]
        if order["images"] != len(data):
            raise DataError(f"{cfg.dataset} has {len(data)} images but the checkpoint was trained on {order['images']}; "
                            f"resume on the same data")
        optimizer.load_state_dict(saved["optimizer"])
        step, epoch, epoch_step, seen = saved["step"], order["epoch"], order["epoch_step"], saved["images_seen"]
        progress, skipped, history, elapsed_before = saved["progress"], saved["skipped"], saved["history"], saved["seconds"]
        if order["world_size"] != world or order["batch_size"] != cfg.batch_size:
            warnings.warn(f"resuming on {world} process(es) x batch {cfg.batch_size} instead of {order['world_size']} x "
                          f"{order['batch_size']}: training goes on, but not exactly as the uninterrupted run would", stacklevel=2)
        else:
            set_rng_state(saved["rng"][rank], gen)
    if fabric.is_global_zero:
        write_json(out / "config.json", cfg.to_dict())
        (out / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))

    monitor = OnlineKNN(data, cfg.monitor_per_class, cfg.seed) if cfg.monitor_seconds > 0 and fabric.is_global_zero else None
    budget = Budget(cfg, batches.steps_per_epoch, time.perf_counter() - elapsed_before)
    bar = Progress(show_progress and fabric.is_global_zero)
    window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
    last_ckpt, warned, last_good = time.perf_counter(), False, resumed_from
    if monitor is not None and monitor.enabled and saved is None:
        history.append({"step": 0, "seconds": 0.0, "knn_acc": monitor(method.backbone)})  # where random init starts
        with open(out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(history[-1]) + "\n")
    last_monitor = time.perf_counter()

    def agree(*values: float) -> list[float]:
        """The largest of each value over all ranks, so that every rank takes the same branch."""
        if world == 1:
            return list(values)
        t = fabric.all_reduce(torch.tensor(values, dtype=torch.float64, device=fabric.device), reduce_op="max")
        return t.tolist()

    def save(final: bool, extra: dict | None = None) -> Path | None:
        """Every rank takes part (the random states are gathered); rank 0 writes."""
        rngs = _gather_objects(rng_state(gen), world)
        if not fabric.is_global_zero:
            return None
        state = {"method_state": method.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "progress": progress, "images_seen": seen, "seconds": time.perf_counter() - budget.start,
                 "skipped": skipped, "rng": rngs, "config": cfg.to_dict(), "in_channels": data.channels,
                 "image_size": view.size or data.size[0], "final": final, "history": history,
                 "data_order": {"seed": cfg.seed, "epoch": epoch, "epoch_step": epoch_step, "images": len(data),
                                "world_size": world, "batch_size": cfg.batch_size}} | (extra or {})
        if final:
            return checkpoint.save(out / "checkpoints" / "last.pt", state)
        return checkpoint.save_rotating(out / "checkpoints", state, step, cfg.keep_checkpoints)

    def nonfinite_stop(value: float) -> TrainingError:
        kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved before it"
        precision = str(fabric.strategy.precision.precision)
        return TrainingError(
            f"loss became {value} at step {step + 1} (lr {optimizer.param_groups[0]['lr']:.2g}, precision {precision}); "
            f"likely the learning rate is too high (lower --lr) or {precision} overflowed (try --precision 32-true); "
            f"{kept}, continue it with --resume {out}, or pass --skip-nonfinite N to skip up to N bad batches")

    model.train()
    with StopSignals() as signals:
        while progress < 1.0:
            for x in labelled(batches.epoch(epoch, epoch_step), "selfsup.data"):
                with record_function("selfsup.augment"):  # the labels name the phases for torch.profiler (bench/)
                    views = [augment(x, view, gen).contiguous(memory_format=memory) for _ in range(method.n_views)]
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(progress, cfg.lr, cfg.warmup)
                with record_function("selfsup.forward"):
                    loss = model.loss(views)
                    value = loss.item()
                epoch_step += 1
                bad_here = not math.isfinite(value)
                if agree(float(bad_here))[0] > 0:
                    healthy = all(torch.isfinite(t).all() for t in method.state_dict().values() if t.is_floating_point())
                    if skipped >= cfg.skip_nonfinite or not healthy:
                        raise nonfinite_stop(value if bad_here else float("nan"))
                    skipped += 1
                    optimizer.zero_grad(set_to_none=True)
                    if fabric.is_global_zero:
                        print(f"warning: non-finite loss at step {step + 1}; skipped the batch "
                              f"({skipped} of --skip-nonfinite {cfg.skip_nonfinite})", file=sys.stderr, flush=True)
                    continue
                optimizer.zero_grad(set_to_none=True)
                with record_function("selfsup.backward"):
                    fabric.backward(loss)
                with record_function("selfsup.optimizer"):
                    optimizer.step()
                step += 1
                seen += x.shape[0] * world
                progress = budget.progress(step)
                if hasattr(method, "after_step"):
                    method.after_step(progress)
                window_loss += value
                window_n += 1
                now = time.perf_counter()
                if now - window_t >= 2.0 or progress >= 1.0:
                    stats = {"step": step, "epoch": epoch, "progress": round(progress, 4), "loss": window_loss / window_n,
                             "img_per_s": window_n * x.shape[0] * world / (now - window_t),
                             "lr": optimizer.param_groups[0]["lr"], "seconds": round(now - budget.start, 2)}
                    stats |= getattr(method, "metrics", {})
                    if monitor is not None and monitor.enabled and (now - last_monitor >= cfg.monitor_seconds or progress >= 1.0):
                        stats["knn_acc"] = monitor(method.backbone)
                        last_monitor = now = time.perf_counter()  # the monitor's time stays out of the next img/s window
                    z = getattr(method, "last_embedding", None)
                    if z is not None and z.shape[0] > 1:
                        stats |= collapse_stats(z)
                        if is_collapsed(stats) and not warned and fabric.is_global_zero:
                            warned = True
                            print(f"warning: embeddings have collapsed at step {step}: std {stats['embed_std']:.4f} vs "
                                  f"{stats['embed_std_ref']:.4f} (1/sqrt(d)); lower the learning rate or check the method's "
                                  f"settings", file=sys.stderr, flush=True)
                    history.append(stats)
                    bar.update(progress, stats)
                    if fabric.is_global_zero:
                        with open(out / "metrics.jsonl", "a") as f:
                            f.write(json.dumps(stats) + "\n")
                    window_loss, window_n, window_t = 0.0, 0, now
                due = (cfg.checkpoint_steps is not None and step % cfg.checkpoint_steps == 0) or \
                    now - last_ckpt >= 60 * cfg.checkpoint_minutes
                progress, stop, due = agree(progress, float(signals.received or 0), float(due))
                if stop or (due and progress < 1.0):
                    last_good = save(final=False) or last_good
                    last_ckpt = time.perf_counter()
                if stop:
                    bar.close()
                    name = signal.Signals(int(stop)).name
                    raise Interrupted(f"{name} at step {step}: saved {last_good}; continue with "
                                      f"`selfsup pretrain --resume {out}`", int(stop))
                if progress >= 1.0:
                    break
            else:
                epoch, epoch_step = epoch + 1, 0
    bar.close()
    seconds = time.perf_counter() - budget.start
    summary = {"steps": step, "epochs": round(seen / len(data), 3), "images_seen": seen, "seconds": round(seconds, 2),
               "img_per_s": round(seen / seconds, 1), "final_loss": history[-1]["loss"] if history else None,
               "skipped_batches": skipped, "resumed": resumed_from is not None,
               "precision": str(fabric.strategy.precision.precision), "device": str(fabric.device), "world_size": world}
    path = save(final=True, extra={"summary": summary}) or out / "checkpoints" / "last.pt"
    if fabric.is_global_zero:
        write_json(out / "summary.json", summary)
    fabric.barrier()
    return path
