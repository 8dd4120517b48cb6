"""The pretraining loop: one explicit loop over parts that own their state (see docs/architecture.md).

The loop never waits on the device between sync points. About every SYNC_SECONDS the processes agree,
in one collective, on the clock, stop signals, checkpoint timing, the loss and the non-finite counters;
logging, checkpoints and stopping happen only there.
"""
from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import record_function

from . import threads
from .augment import at_side, augment, view_for
from .backbones import fit_to_data
from .budget import Budget
from .config import PretrainConfig
from .data import ImageSet, load_for, with_data_side
from .data.batches import Batches
from .engine import agree, check_engine, engine_facts, fabric_for, sync_batchnorm
from .errors import ConfigError, Interrupted
from .factory import build_method, encoder_spec, load_state_into
from .monitor import OnlineKNN, method_stats
from .optim import NonFiniteGuard, clip_unscaled, load_optimizer_state, make_optimizer, set_lr
from .run import ProgressLine, RandomStreams, RunDir, StopSignals, SyncState
from .schedule import cosine, side_at, warmup_cosine

SYNC_SECONDS = 2.0  # target time between sync points (logging resolution)


@dataclass(kw_only=True)
class Parts:
    """Everything a run is made of; each part with state saves and restores its own slice of the checkpoint."""

    cfg: PretrainConfig
    fabric: object
    run: RunDir
    method: torch.nn.Module
    model: torch.nn.Module  # the method behind the engine's wrapper (autocast, DDP)
    optimizer: torch.optim.Optimizer
    batches: Batches
    budget: Budget
    guard: NonFiniteGuard
    streams: RandomStreams
    views: list
    side: int  # the views' full side; progressive resolution (cfg.side_start) grows towards it
    memory: torch.memory_format
    monitor: OnlineKNN | None
    bar: ProgressLine
    sync: SyncState | None = None

    def stateful(self) -> dict:
        return {"method": self.method, "optimizer": self.optimizer, "precision": self.fabric.strategy.precision,
                "batches": self.batches, "budget": self.budget, "guard": self.guard, "rng": self.streams,
                "run": self.run}

    def checkpoint(self, final: bool, summary: dict | None = None) -> dict:
        state = {name: part.state_dict() for name, part in self.stateful().items()}  # every process: rng gathers
        return state | {"format": 2, "config": self.cfg.to_dict(), "encoder": self.method.encoder_spec.to_dict(),
                        "final": final} | ({"summary": summary} if summary else {})

    def restore(self, state: dict) -> None:
        load_state_into(self.method, state, self.cfg, self.run.resumed_from)
        exact = self.batches.load_state_dict(state["batches"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        for name in ("precision", "budget", "guard"):
            if state.get(name) is not None:
                self.stateful()[name].load_state_dict(state[name])
        if exact:
            self.streams.load_state_dict(state["rng"])


def build(cfg: PretrainConfig, data: ImageSet, fabric, run: RunDir, show_progress: bool) -> Parts:
    spec = encoder_spec(cfg, data.channels, data.side)
    if run.saved is not None and run.saved["encoder"]["in_channels"] != data.channels:
        raise ConfigError(f"checkpoint {run.resumed_from} was trained on {run.saved['encoder']['in_channels']}-channel "
                          f"images but {cfg.dataset} has {data.channels}; resume on the same data")
    method = build_method(cfg, spec)
    if run.saved is None:
        fit_to_data(method, data.images)  # whitening, from a fixed sample: the same on every process
    memory = torch.channels_last if cfg.channels_last else torch.contiguous_format
    sync_bn = sync_batchnorm(cfg.sync_batchnorm, method, fabric.world_size, fabric.device.type)
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method) if sync_bn else method
    wrapped = fabric.setup_module(model.to(memory_format=memory))  # placed first: the optimizer's state is made
    optimizer = make_optimizer(model, cfg)                            # beside the weights it will update
    wrapped.mark_forward_method("loss")  # `loss` runs through DDP's forward (its gradient hooks)
    batches = Batches(data.images, cfg.batch_size, fabric.device, cfg.seed, fabric.global_rank, fabric.world_size)
    method.steps_per_epoch = batches.steps_per_epoch
    parts = Parts(
        cfg=cfg, fabric=fabric, run=run, method=model, model=wrapped, optimizer=fabric.setup_optimizers(optimizer),
        batches=batches, budget=Budget(cfg, batches.steps_per_epoch), memory=memory,
        guard=NonFiniteGuard(optimizer, fabric.device, cfg.skip_nonfinite, getattr(fabric.strategy.precision, "scaler", None)),
        streams=RandomStreams(torch.Generator(fabric.device).manual_seed(cfg.seed * 7919 + fabric.global_rank), fabric),
        views=method.views(view_for(cfg, data.channels, method)), side=spec.image_size, bar=ProgressLine(show_progress and fabric.is_global_zero),
        monitor=OnlineKNN(data.images, data.labels, cfg.monitor_per_class, cfg.seed)
        if cfg.monitor_seconds > 0 and fabric.is_global_zero else None)
    method.generator = parts.streams.generator  # masks and holes differ across processes, and resume exactly
    if run.saved is not None:
        parts.restore(run.saved)
    return parts


def pretrain(cfg: PretrainConfig, data: ImageSet | None = None, show_progress: bool = True,
             resume: bool | tuple = False, overwrite: bool = False, fabric=None) -> Path:
    """Pretrain `cfg.method` on `cfg.dataset`; returns the final checkpoint path (OUT/checkpoints/last.pt).

    resume: continue exactly from the newest readable checkpoint in `cfg.out` (every part's state and every random
    stream), or from the (path, state) that `resumable` already read. overwrite: replace a run already in `cfg.out`.
    fabric: the engine the program created at its entry point (default: one made from `cfg`, launched here)."""
    cfg.validate()
    run = RunDir(cfg.out, resume, overwrite, cfg.checkpoint_steps, cfg.checkpoint_minutes, cfg.keep_checkpoints,
                 cfg.logger)
    cfg = with_data_side(cfg, data := data if data is not None else load_for(cfg))  # photos: the side for the device
    fabric = fabric or fabric_for(cfg, encoder_spec(cfg, data.channels, data.side))
    check_engine(cfg, fabric.device.type)
    run.start(fabric, cfg.to_dict())
    try:
        return train(cfg, data, fabric, run, show_progress)
    finally:
        run.release()


def train(cfg: PretrainConfig, data: ImageSet, fabric, run: RunDir, show_progress: bool) -> Path:
    fabric.seed_everything(cfg.seed, verbose=False)
    p = build(cfg, data, fabric, run, show_progress)
    if p.monitor is not None and p.monitor.enabled and run.saved is None:
        run.log({"step": 0, "seconds": 0.0, "knn_acc": p.monitor(p.method.backbone)})  # where random init starts
    now = time.perf_counter()  # skipped steps of a resumed run were reported before
    p.sync = SyncState(next=p.budget.step + 1, step=p.budget.step, t=now, monitor=now, bad=float(p.guard.bad))
    p.model.train()
    with StopSignals() as signals:
        for x in p.batches:
            progress = p.budget.progress()
            set_lr(p.optimizer, warmup_cosine(progress, cfg.lr, cfg.warmup), None if cfg.weight_decay_end is None
                   else cosine(progress, cfg.weight_decay, cfg.weight_decay_end))  # DINO's rising weight decay
            with record_function("selfsup.augment"):  # the ranges name the phases for torch.profiler (bench/)
                views = [augment(x, v, p.streams.generator).contiguous(memory_format=p.memory)  # progressive side
                         for v in at_side(p.views, side_at(progress, p.side, cfg.side_start, cfg.side_ramp), p.side)]
            with record_function("selfsup.forward"), fabric.autocast():  # the wrapper alone autocasts under DDP only
                loss = p.model.loss(views)
            p.optimizer.zero_grad(set_to_none=True)
            with record_function("selfsup.backward"):
                fabric.backward(loss)
            if p.method.clip_grad > 0:
                clip_unscaled(p.method, p.guard.optimizer, p.guard.scaler)
            p.method.before_optimizer_step(progress)
            p.guard.check(loss, p.budget.step + 1)  # a step with non-finite gradients is not applied
            with record_function("selfsup.optimizer"):
                p.optimizer.step()
            p.budget.step += 1
            threads.poll()
            p.budget.images_seen += x.shape[0] * fabric.world_size
            p.method.after_optimizer_step(p.budget.progress())
            if p.budget.step >= p.sync.next or run.step_due(p.budget.step) or p.budget.progress() >= 1:
                if sync_point(p, signals):
                    break
    p.bar.close()
    return finish(p)


def sync_point(p: Parts, signals: StopSignals) -> bool:
    """Agree, stop on a non-finite run, log, checkpoint, stop on a signal. True when the budget is spent."""
    fabric, run, b, cfg = p.fabric, p.run, p.budget, p.cfg
    window = time.perf_counter() - p.sync.t
    worst, totals = p.guard.counters(p.method, p.sync.bad)
    a = agree(fabric, {"elapsed": b.elapsed(), "window": window, "stop": signals.received or 0,
                       "time_due": run.time_due(), **worst}, totals)
    elapsed, window, stop, bad = a["elapsed"], a["window"], a["stop"], a["bad"]
    b.sync(elapsed)
    p.guard.settle(a, b.step, p.sync.bad, p.optimizer.param_groups[0]["lr"], str(fabric.strategy.precision.precision),
                   run, fabric.is_global_zero)
    steps, done = b.step - p.sync.step, b.progress() >= 1
    if fabric.is_global_zero:
        stats = {"step": b.step, "epoch": p.batches.epoch, "progress": round(b.progress(), 4),
                 "loss": a["loss_sum"] / max(a["loss_n"], 1), "img_per_s": steps * p.batches.batch_size * fabric.world_size / window,
                 "lr": p.optimizer.param_groups[0]["lr"], "seconds": round(elapsed, 2)}
        stats |= method_stats(p.method)
        if p.monitor is not None and p.monitor.enabled and (time.perf_counter() - p.sync.monitor >= cfg.monitor_seconds or done):
            stats["knn_acc"] = p.monitor(p.method.backbone)
            p.sync.monitor = time.perf_counter()
        run.log(stats)
        p.bar.update(b.progress(), stats)
    every = max(1, min(1000, round(SYNC_SECONDS * steps / max(window, 1e-6))))  # the same on every process
    p.sync.t, p.sync.step, p.sync.next, p.sync.bad = time.perf_counter(), b.step, b.step + every, bad
    if stop or ((a["time_due"] or run.step_due(b.step)) and not done):
        run.save(p.checkpoint(final=False), b.step, final=False)
    if stop:
        p.bar.close()
        raise Interrupted(f"{signal.Signals(int(stop)).name} at step {b.step}: saved {run.last_good}; continue with "
                          f"`selfsup pretrain --resume {run.out}`", int(stop))
    return done


def finish(p: Parts) -> Path:
    """The final checkpoint (last.pt) with the run's summary; summary.json beside it."""
    b, fabric, run = p.budget, p.fabric, p.run
    seconds, logged = b.elapsed(), [h for h in run.history if "loss" in h]
    summary = {"steps": b.step, "epochs": round(b.images_seen / p.batches.n, 3), "images_seen": b.images_seen,
               "seconds": round(seconds, 2), "img_per_s": round(b.images_seen / seconds, 1),
               "final_loss": logged[-1]["loss"] if logged else None, "skipped_batches": int(p.guard.bad),
               "resumed": run.resumed_from is not None, **engine_facts(fabric),
               "method_metrics": {k: round(logged[-1][k], 4) for k in p.method.metrics if logged and k in logged[-1]}}
    path = run.save(p.checkpoint(final=True, summary=summary), b.step, final=True) or run.out / "checkpoints" / "last.pt"
    run.finish(summary)
    fabric.barrier()
    return path
