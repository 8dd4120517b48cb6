"""The optimizer of a pretraining run, and the guard that keeps a non-finite step from touching the weights.

The guard works on the device: a step whose gradients (averaged over processes, so the same on every one)
hold a NaN or inf is passed to the fused optimizer as `found_inf`, which leaves weights and moments as they
were. The loop reads the guard's counters only when it synchronises anyway (the log interval).
"""
from __future__ import annotations

import sys

import torch
from torch import Tensor

from .config import PretrainConfig
from .errors import TrainingError


class LARS(torch.optim.Optimizer):
    """LARS (You, Gitman & Ginsburg 2017), as SimCLR, BYOL, Barlow Twins and VICReg train at large batch: SGD with
    momentum whose step for each weight tensor is scaled by the trust ratio eta * ||w|| / ||g + wd w||. Groups with
    `lars_adapt` False (biases and norms, as in those papers) get neither the ratio nor weight decay.

        g <- grad + wd * w;  q <- eta * ||w|| / ||g|| (1 where either norm is 0);  mu <- m * mu + q * g;  w <- w - lr * mu

    A step that the non-finite guard marks (`found_inf`, as the fused optimizers read it) leaves weights and
    momentum as they were, on the device."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta,
                                  "lars_adapt": True})

    @torch.no_grad()
    def step(self, closure=None):
        found = getattr(self, "found_inf", None)
        for group in self.param_groups:
            adapt = group["lars_adapt"] and group["weight_decay"] > 0
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if adapt:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    q = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm.clamp(min=1e-30), 1.0)
                    g = g * q
                mu = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                new_mu = mu * group["momentum"] + g
                new_p = p - group["lr"] * new_mu
                if found is not None:
                    new_mu, new_p = torch.where(found > 0, mu, new_mu), torch.where(found > 0, p, new_p)
                mu.copy_(new_mu)
                p.copy_(new_p)


def make_optimizer(method, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """AdamW or Nesterov SGD over the method's parameter groups, fused (one kernel, and skip-on-inf support), or
    LARS (biases and norms neither adapted nor decayed)."""
    groups = method.param_groups(cfg.weight_decay)
    if cfg.optimizer == "lars":
        return LARS([g | {"lars_adapt": g["weight_decay"] > 0} for g in groups], lr=cfg.lr, momentum=0.9)
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


@torch.no_grad()
def clip_gradients(params, max_norm: float, per_parameter: bool = False) -> None:
    """Scale gradients so that their global L2 norm (or, `per_parameter`, each parameter's, as DINO's code does) is
    at most `max_norm`. On the device, without a host read."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    if per_parameter:
        torch._foreach_mul_(grads, [(max_norm / (n + 1e-6)).clamp(max=1.0) for n in norms])
    else:
        total = torch.linalg.vector_norm(torch.stack(norms))
        torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))


def clip_unscaled(method, optimizer: torch.optim.Optimizer, scaler=None) -> None:
    """The method's gradient clipping (`method.clip_grad`, global or per parameter) on true gradients: a 16-bit
    run's scaler unscales them first, and its step then knows they are unscaled."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    clip_gradients(method.parameters(), method.clip_grad, method.clip_per_parameter)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """This step's learning rate, and weight decay (where given) on the groups that decay at all."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        if weight_decay is not None and group["weight_decay"] > 0:
            group["weight_decay"] = weight_decay


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

    def counters(self, method, reported: float) -> tuple[dict, dict]:
        """What the processes agree on at a sync point: the largest (bad, stop_step, stop_loss, and `unhealthy`:
        weights or buffers of `method` went non-finite since `reported` bad steps) and the totals (loss_sum,
        loss_n, then zeroed here)."""
        unhealthy = float(self.bad) > reported and not all(
            torch.isfinite(t).all() for t in method.state_dict().values() if t.is_floating_point())  # NaN in BN stats
        worst = {"bad": self.bad, "stop_step": self.stop_step, "stop_loss": self.stop_loss, "unhealthy": unhealthy}
        totals = {"loss_sum": self.loss_sum.clone(), "loss_n": self.loss_n.clone()}
        self.loss_sum.zero_()
        self.loss_n.zero_()
        return worst, totals

    def settle(self, agreed: dict, step: int, reported: float, lr: float, precision: str, run, loud: bool) -> None:
        """From the agreed counters: stop the run past the allowance or with non-finite weights (TrainingError),
        else warn (where `loud`) of steps skipped since `reported`."""
        if agreed["stop_step"] > 0 or agreed["unhealthy"]:
            at, loss = (int(agreed["stop_step"]), agreed["stop_loss"]) if agreed["stop_step"] > 0 else (step, float("nan"))
            raise nonfinite_error(at, loss, lr, precision, run.last_good, run.out)
        if agreed["bad"] > reported and loud:
            print(f"warning: {int(agreed['bad'] - reported)} step(s) with non-finite gradients skipped by step {step} "
                  f"({int(agreed['bad'])} of --skip-nonfinite {self.allowed})", file=sys.stderr, flush=True)

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
