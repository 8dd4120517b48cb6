"""The optimizer of a pretraining run, and the guard that keeps a non-finite step from touching the weights.

The guard works on the device: a step whose gradients (averaged over processes, so the same on every one)
hold a NaN or inf is passed to the fused optimizer as `found_inf`, which leaves weights and moments as they
were. The loop reads the guard's counters only when it synchronises anyway (the log interval).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .config import PretrainConfig
from .errors import TrainingError


def make_optimizer(method, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD over the method's parameter groups, fused (one kernel, and skip-on-inf support)."""
    groups = method.param_groups(cfg.weight_decay)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, fused=True)
        for g in opt.param_groups:  # a zero buffer makes the first step what SGD would do without one, and lets
            for p in g["params"]:   # a skipped first step leave the buffer defined
                opt.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return opt
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load moments and hyperparameters, keeping how this optimizer runs (fused): a checkpoint of an unfused
    optimizer (an older selfsup) would otherwise switch the skip-on-inf path off."""
    kinds = [{k: g[k] for k in ("fused", "foreach", "capturable", "differentiable") if k in g}
             for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kind in zip(optimizer.param_groups, kinds):
        group.update(kind)
        for p in group["params"]:
            s = optimizer.state.get(p, {})
            if torch.is_tensor(s.get("step")) and kind.get("fused"):
                s["step"] = s["step"].to(p.device, torch.float32)  # the fused kernel wants it beside the weights


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class NonFiniteGuard:
    """Counts non-finite steps on the device and keeps them from being applied.

    `allowed`: how many bad steps to skip before the run must stop. With a gradient scaler (16-bit precision)
    the scaler skips steps itself; the guard then only counts non-finite losses.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, allowed: int, scaler=None):
        self.optimizer, self.allowed, self.scaler = optimizer, allowed, scaler
        self.bad = torch.zeros((), device=device)  # bad steps so far
        self.stop_step = torch.zeros((), device=device)  # the first step past the allowance (0: none)
        self.stop_loss = torch.zeros((), device=device)
        self.loss_sum = torch.zeros((), device=device)  # finite losses since the last read
        self.loss_n = torch.zeros((), device=device)

    @torch.no_grad()
    def check(self, loss: Tensor, step: int) -> None:
        """After backward, before the optimizer step: mark the step for skipping if its gradients are not finite."""
        finite_loss = torch.isfinite(loss.detach().float())
        if self.scaler is None:
            found = torch.zeros((), device=self.bad.device)
            grads = [p.grad for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones((), device=found.device))
            self.optimizer.found_inf = found  # read by the fused step: 1 leaves weights and moments untouched
            bad = found > 0
        else:
            bad = ~finite_loss
        self.bad += bad
        past = bad & (self.bad == self.allowed + 1)
        self.stop_step = torch.where(past, torch.full_like(self.stop_step, step), self.stop_step)
        self.stop_loss = torch.where(past, loss.detach().float(), self.stop_loss)
        self.loss_sum += torch.where(finite_loss, loss.detach().float(), 0.0)
        self.loss_n += finite_loss

    def counters(self) -> list[Tensor]:
        """What the loop agrees on at a sync point: [bad, stop_step, stop_loss, loss_sum, loss_n]."""
        out = [self.bad, self.stop_step, self.stop_loss, self.loss_sum.clone(), self.loss_n.clone()]
        self.loss_sum.zero_()
        self.loss_n.zero_()
        return out

    def state_dict(self) -> dict:
        return {"bad": int(self.bad)}

    def load_state_dict(self, state: dict) -> None:
        self.bad.fill_(state.get("bad", 0))


def nonfinite_error(step: int, loss: float, lr: float, precision: str, last_good, out) -> TrainingError:
    kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved before it"
    return TrainingError(
        f"loss became {loss} at step {step} (lr {lr:.2g}, precision {precision}); likely the learning rate is too "
        f"high (lower --lr) or {precision} overflowed (try --precision 32-true); {kept}, continue it with "
        f"--resume {out}, or pass --skip-nonfinite N to skip up to N bad batches")
