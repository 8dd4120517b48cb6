"""The pretraining loop: one explicit loop; devices, precision and processes come from Lightning Fabric."""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .augment import augment, preset
from .config import PretrainConfig, write_json
from .data import ImageSet, load
from .errors import ConfigError
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

    def epoch(self, e: int):
        g = torch.Generator().manual_seed(self.seed * 100_003 + e)  # same order on every rank
        perm = torch.randperm(self.n, generator=g)[self.rank::self.world]
        for s in range(self.steps_per_epoch):
            idx = perm[s * self.batch_size:(s + 1) * self.batch_size]
            if isinstance(self.images, torch.Tensor):
                yield self.images[idx.to(self.device)]
            else:
                yield torch.from_numpy(self.images[np.sort(idx.numpy())]).to(self.device, non_blocking=True)


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


def pretrain(cfg: PretrainConfig, data: ImageSet | None = None, show_progress: bool = True) -> Path:
    """Pretrain `cfg.method` on `cfg.dataset`; returns the final checkpoint path (OUT/checkpoints/last.pt)."""
    cfg.validate()
    out = Path(cfg.out)
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot write to output directory {out} ({e.strerror}); choose another --out") from None
    fabric = make_fabric(cfg)
    fabric.launch()
    fabric.seed_everything(cfg.seed, verbose=False)
    data = data if data is not None else load(cfg.dataset, cfg.split, cfg.data_root)
    method = checkpoint.build_method(cfg, data.channels)
    view = preset(cfg.augment, data.channels, cfg.image_size, getattr(method, "default_augment", None))
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    method = method.to(memory_format=memory)
    optimizer = make_optimizer(method, cfg)
    model, optimizer = fabric.setup(method, optimizer)
    model.mark_forward_method("loss")  # `loss` runs through the engine's wrapper (autocast, DDP)
    gen = torch.Generator(fabric.device).manual_seed(cfg.seed * 7919 + fabric.global_rank)
    batches = Batches(data.images, cfg.batch_size, fabric.device, cfg.seed, fabric.global_rank, fabric.world_size)
    if fabric.is_global_zero:
        write_json(out / "config.json", cfg.to_dict())
        (out / "metrics.jsonl").write_text("")

    monitor = OnlineKNN(data, cfg.monitor_per_class, cfg.seed) if cfg.monitor_seconds > 0 and fabric.is_global_zero else None
    budget = Budget(cfg, batches.steps_per_epoch, time.perf_counter())
    bar = Progress(show_progress and fabric.is_global_zero)
    step, epoch, seen, progress = 0, 0, 0, 0.0
    window_loss, window_n, window_t = 0.0, 0, time.perf_counter()
    last_ckpt, history, warned = time.perf_counter(), [], False
    if monitor is not None and monitor.enabled:
        history.append({"step": 0, "seconds": 0.0, "knn_acc": monitor(method.backbone)})  # where random init starts
        if fabric.is_global_zero:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(history[-1]) + "\n")
    last_monitor = time.perf_counter()

    def state(final: bool) -> dict:
        return {"method_state": method.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "epoch": epoch,
                "progress": progress, "config": cfg.to_dict(), "in_channels": data.channels,
                "image_size": view.size or data.size[0], "final": final, "history": history}

    model.train()
    while progress < 1.0:
        for x in batches.epoch(epoch):
            views = [augment(x, view, gen).contiguous(memory_format=memory) for _ in range(method.n_views)]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(progress, cfg.lr, cfg.warmup)
            loss = model.loss(views)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            step += 1
            seen += x.shape[0] * fabric.world_size
            progress = budget.progress(step)
            if hasattr(method, "after_step"):
                method.after_step(progress)
            window_loss += loss.item()
            window_n += 1
            now = time.perf_counter()
            if now - window_t >= 2.0 or progress >= 1.0:
                stats = {"step": step, "epoch": epoch, "progress": round(progress, 4), "loss": window_loss / window_n,
                         "img_per_s": window_n * x.shape[0] * fabric.world_size / (now - window_t),
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
            if now - last_ckpt >= 60 * cfg.checkpoint_minutes and progress < 1.0:
                if fabric.is_global_zero:
                    checkpoint.save(out / "checkpoints" / "last.pt", state(final=False))
                last_ckpt = time.perf_counter()
            if progress >= 1.0:
                break
        epoch += 1
    bar.close()
    seconds = time.perf_counter() - budget.start
    summary = {"steps": step, "epochs": round(seen / len(data), 3), "images_seen": seen, "seconds": round(seconds, 2),
               "img_per_s": round(seen / seconds, 1), "final_loss": history[-1]["loss"] if history else None,
               "precision": str(fabric.strategy.precision.precision), "device": str(fabric.device)}
    path = out / "checkpoints" / "last.pt"
    if fabric.is_global_zero:
        checkpoint.save(path, state(final=True) | {"summary": summary})
        write_json(out / "summary.json", summary)
    fabric.barrier()
    return path
