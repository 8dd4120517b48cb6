"""Semi-supervised fine-tuning: the few labels, plus every unlabeled training image with a pseudo-label.

The pseudo-labels start as label propagation's class scores over the frozen encoder's kNN graph (`propagate`,
which reads only the few labels). Encoder and head (started as the linear probe, as in LP-FT) then train on
  - the labeled images under a weak view, with their labels, and
  - the unlabeled images under a strong view (the pretraining's augmentation), towards the graph's class where
    its score is confident, else the model's own prediction on a weak view of the same image where that is
    confident (FixMatch's consistency with a confidence threshold, Sohn et al. 2020), else nothing.
The step budget is split into rounds; each round after the first rebuilds the graph on the encoder being
trained (Iscen et al. 2019), whose features by then follow the classes more closely than the pretrained ones.
Validation accuracy is checked before the first step and every `eval_every` steps; the best weights are kept.
The result is one encoder and head, with no graph needed at test time. No label outside the subset is read.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import augment, preset
from .. import threads
from ..engine import TrainStep
from ..schedule import cosine
from .features import extract_features
from .finetune import Classifier, accuracy
from .propagate import LabelGraph


@dataclass
class SemisupConfig:
    steps: int = 500  # the step budget over all rounds; supervised-from-scratch gets the same
    rounds: int = 2  # the graph is rebuilt on the encoder being trained at the start of every round after the first
    batch_size: int = 64  # labeled images per step
    unlabeled_ratio: int = 4  # unlabeled images per labeled one in a step (FixMatch's mu)
    graph_threshold: float = 0.5  # the graph's label is the target where its score reaches this
    threshold: float = 0.95  # elsewhere, the model's own weak-view prediction where its confidence reaches this
    unlabeled_weight: float = 1.0
    lr: float = 3e-3  # head; AdamW, cosine decay within each round
    encoder_lr_scale: float = 1.0
    weight_decay: float = 0.0
    eval_every: int = 100
    weak: str = "auto"  # auto: `supervised` for colour, `supervised-grey` for 1 channel
    strong: str = "auto"  # auto: the pretraining views, `simclr` for colour and `greyscale` for 1 channel

    def to_dict(self) -> dict:
        return asdict(self)


def graph_scores(encoder: nn.Module, pool_x: np.ndarray, labeled_at: np.ndarray, labeled_y: np.ndarray,
                 n_classes: int) -> torch.Tensor:
    """Label propagation's class scores (N_pool, C) over the kNN graph of the encoder's features of the pool, from
    the labels of the pool images at `labeled_at` alone."""
    graph = LabelGraph(extract_features(encoder, pool_x))
    return graph.spread(torch.as_tensor(labeled_at), torch.from_numpy(labeled_y), n_classes)


def pseudo_labels(graph: torch.Tensor, own: torch.Tensor, graph_threshold: float, threshold: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of unlabeled images from the graph's class scores and the model's weak-view probabilities (both
    (B, C)): the graph's class where its score reaches `graph_threshold`, else the model's where its probability
    reaches `threshold`. Returns (classes, mask), mask 1.0 where a target was given."""
    graph_conf, graph_label = graph.max(1)
    own_conf, own_label = own.max(1)
    from_graph = graph_conf >= graph_threshold
    return torch.where(from_graph, graph_label, own_label), (from_graph | (own_conf >= threshold)).float()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, amp: TrainStep) -> torch.Tensor:
    """Class probabilities of float images (B, C, H, W) in eval mode (running BatchNorm statistics), no gradient."""
    model.eval()
    with amp.autocast():
        p = model(x.contiguous(memory_format=torch.channels_last)).float().softmax(1)
    model.train()
    return p


def train_semisup(encoder: nn.Module, pool_x: np.ndarray, labeled_at: np.ndarray, labeled_y: np.ndarray,
                  val_x: np.ndarray, val_y: np.ndarray, n_classes: int, cfg: SemisupConfig, seed: int = 0,
                  encoder_lr_scale: float | None = None, device: str | torch.device = "cpu",
                  scores: torch.Tensor | None = None) -> tuple[nn.Module, dict]:
    """Train encoder + head on the pool of training images, of which those at `labeled_at` carry `labeled_y`;
    keep the weights with the best validation accuracy (the last ones when there are no validation images). `scores`: the first round's graph scores, when the
    caller has them (see `graph_scores`). The head starts as the linear probe, from random weights too (0.956
    against 0.934 for `nn.Linear`'s init at 10 MNIST labels per class)."""
    torch.manual_seed(seed)
    device = torch.device(device)
    labeled_at = np.asarray(labeled_at)
    model = Classifier(copy.deepcopy(encoder), n_classes).to(device).to(memory_format=torch.channels_last)
    model.init_head(pool_x[labeled_at], labeled_y)
    channels, size = pool_x.shape[1], getattr(encoder, "image_size", None)
    weak = replace(preset(cfg.weak, channels, method_default="supervised" if channels == 3 else "supervised-grey"), size=size)
    strong = replace(preset(cfg.strong, channels), size=size)
    g = torch.Generator(device).manual_seed(seed)
    amp = TrainStep(device, model.encoder)
    u = torch.from_numpy(np.ascontiguousarray(pool_x)).to(device)
    at = torch.from_numpy(labeled_at).long().to(device)
    y = torch.from_numpy(labeled_y).long().to(device)
    vx, vy = torch.from_numpy(np.ascontiguousarray(val_x)), torch.from_numpy(val_y)
    no_val = len(vy) == 0  # nothing to choose by: the last weights are kept
    best = (None, 0, None) if no_val else (accuracy(model, vx, vy), 0, copy.deepcopy(model.state_dict()))
    nb, nu = min(cfg.batch_size, len(at)), cfg.batch_size * cfg.unlabeled_ratio
    scale = cfg.encoder_lr_scale if encoder_lr_scale is None else encoder_lr_scale
    per_round = max(1, cfg.steps // cfg.rounds)
    step, used = 0, []
    model.train()
    for r in range(cfg.rounds):
        if r > 0 or scores is None:
            scores = graph_scores(model.encoder, pool_x, labeled_at, labeled_y, n_classes)
        z = scores.float().to(device)
        opt = torch.optim.AdamW([{"params": model.head.parameters(), "lr": cfg.lr},
                                 {"params": model.encoder.parameters(), "lr": cfg.lr * scale}],
                                weight_decay=cfg.weight_decay)
        base_lrs = [gr["lr"] for gr in opt.param_groups]
        for i in range(1, per_round + 1):
            threads.poll()
            step += 1
            for group, lr in zip(opt.param_groups, base_lrs):
                group["lr"] = cosine(i / per_round, lr, 0.0)
            pick = torch.randint(0, len(at), (nb,), generator=g, device=device)
            li = at[pick]
            ui = torch.randint(0, len(u), (nu,), generator=g, device=device)
            own = predict(model, augment(u[ui], weak, g), amp)  # the model's own view of the image, as it would test
            views = torch.cat([augment(u[li], weak, g), augment(u[ui], strong, g)])
            with amp.autocast():
                logits = model(views.contiguous(memory_format=torch.channels_last)).float()
            lab, us = logits[:nb], logits[nb:]
            pseudo, mask = pseudo_labels(z[ui], own, cfg.graph_threshold, cfg.threshold)
            loss_u = (F.cross_entropy(us, pseudo, reduction="none") * mask).mean()
            loss = F.cross_entropy(lab, y[pick]) + cfg.unlabeled_weight * loss_u
            amp.step(loss, opt)
            used.append(mask.mean())  # on the device: read once, at the end
            if no_val:
                best = (None, step, None)
            elif step % cfg.eval_every == 0 or i == per_round:
                val = accuracy(model, vx, vy)
                if val >= best[0]:  # ties go to the later, better-trained weights
                    best = (val, step, copy.deepcopy(model.state_dict()))
    if best[2] is not None:
        model.load_state_dict(best[2])
    return model.eval(), {"val_accuracy": best[0], "best_step": best[1], "steps_run": step,
                          "pseudo_label_share": round(float(torch.stack(used).mean()) if used else 0.0, 4)}
