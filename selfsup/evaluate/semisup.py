"""Semi-supervised fine-tuning: the few labels, plus every unlabeled training image with a pseudo-label.

The pseudo-labels start from label propagation's class scores over the frozen encoder's kNN graph (`propagate`,
which reads only the few labels). Encoder and head (started as the linear probe, as in LP-FT) then train on
  - the labeled images under a weak view, with their labels, and
  - the unlabeled images under a strong view (the pretraining's augmentation), towards the round's target where it
    gives one, else the model's own prediction on a weak view of the same image where that is confident
    (FixMatch's consistency with a confidence threshold, Sohn et al. 2020), else nothing. That prediction is
    divided by the running mean of the model's predictions (distribution alignment, Berthelot et al. 2020), and each
    class's threshold follows how far the model has learned that class (FlexMatch, Zhang et al. 2021).
A round's targets are either the graph's class where its score is confident (`graph`, the default for 1 channel:
on digits the graph is far better than the probe), or class-balanced self-training's (`balanced`, Zou et al.
2018, the default for colour): the class of the product of the graph's scores and the model's probabilities, for
the same number of most certain images in each class, so that neither a weak graph nor a dominant class floods
the pseudo-labels. The step budget is split into rounds; each round after the first rebuilds the graph on the
encoder being trained (Iscen et al. 2019) and the targets with it.
Validation accuracy is checked before the first step and every `eval_every` steps; the last weights are kept
unless validation scores them clearly below the start (`keep="last"`: by more than two standard errors of the start's
accuracy on those images), or the best-scored ones (`keep="best"`).
The result is one encoder and head. With graph targets its test predictions are averaged with the vote of its own
predictions on the pool images nearest in its features (`NeighbourVote`; `neighbours`). No label outside the subset
is read.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..augment import augment, preset
from .. import threads
from ..engine import TrainStep
from ..neighbours import build_index, resolve, search, unit
from ..errors import ConfigError
from ..progress import Steps
from ..schedule import cosine
from .features import extract_features, inference_batch, prepare
from .finetune import Classifier, accuracy
from .propagate import LabelGraph, weighted_votes


POOL_EPOCHS = 250  # the default step budget's cap, in passes over the pool (`compare` and `eval` count every
# training image, the few held out for validation included, and record the budget they resolved): a folder of 200
# photos at a training side of 64 px would otherwise train 1,000 steps (1,280 passes, 13 minutes on 2 cores). On
# CIFAR-10 with a pool of 1,100 images, 1,000 steps (233 passes) beat 430 (100 passes) by 1.2 points (bench/README.md,
# "Semi-supervised training on a small pool"), so the cap sits above that; CIFAR-10 and MNIST use 5 and 6 passes


@dataclass
class SemisupConfig:
    steps: int | None = None  # the step budget over all rounds, supervised-from-scratch's too; None: 500 with graph
    # targets, 2,000 with balanced ones (of half the batch: the same images seen), fewer on a small pool (`POOL_EPOCHS`)
    rounds: int | None = None  # the graph is rebuilt on the encoder being trained at the start of every round after
    # the first; None: with graph targets one round per 500 steps, at least 2; with balanced ones, 1
    batch_size: int | None = None  # labeled images per step; None: 64 with graph targets, 32 with balanced ones (on
    # CIFAR-10, 2,000 steps of 32 beat 1,000 of 64 by +0.9 and +1.0 points on two label draws in the same time;
    # bench/README.md, "Half the batch, twice the steps")
    unlabeled_ratio: int = 4  # unlabeled images per labeled one in a step (FixMatch's mu)
    targets: str = "auto"  # graph: the graph's confident labels; balanced: per class, the `share` of the pool most
    # surely of it by graph x model (class-balanced self-training); auto: graph for 1 channel, balanced for colour
    graph_threshold: float = 0.5  # targets "graph": the graph's label is the target where its score reaches this
    share: float = 0.2  # targets "balanced": the share of the pool that gets a round's target, split evenly by class
    threshold: float = 0.95  # elsewhere, the model's own weak-view prediction where its confidence reaches this
    flex: bool = True  # FlexMatch's curriculum: each class's threshold scaled by how many pool images the model
    # already predicts into it with confidence `threshold` (Zhang et al. 2021)
    unlabeled_weight: float = 1.0
    align: bool = True  # distribution alignment (ReMixMatch): the model's own probabilities over the running mean
    # of its predictions, renormalised, before the threshold (both kinds of image: bench/README.md, "Alignment,
    # FlexMatch's thresholds and mirrored scoring")
    lr: float = 3e-3  # head; AdamW, cosine decay within each round
    encoder_lr_scale: float = 1.0  # the encoder's lr over the head's
    weight_decay: float = 0.05  # AdamW's, decoupled: on CIFAR-10 +1.2 and +0.4 points over none on two label draws,
    # on digits a tie (bench/README.md, "Weight decay in semi-supervised training")
    eval_every: int = 100
    keep: str = "last"  # last: the schedule's last weights unless validation scores them clearly below the start (the
    # probe); best: the weights validation scores best (100 validation images cannot rank weights a point apart)
    weak: str = "auto"  # auto: `supervised` for colour, `supervised-grey` for 1 channel
    strong: str = "auto"  # auto: the pretraining views, `simclr` for colour and `greyscale` for 1 channel
    shift: bool = True  # score validation and test over each image and its one-pixel translations (`probabilities`:
    # +0.1 to +0.3 points; bench/README.md, "Scoring over one-pixel shifts")
    neighbours: int | None = None  # test predictions: the classifier's probabilities averaged with the vote of its
    # own predictions on this many pool images nearest in its features (`NeighbourVote`); 0: the classifier alone;
    # None: 10 with graph targets (digits, where neighbourhoods hold one class), 0 with balanced ones (photographs)

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self, channels: int, pool: int | None = None) -> "SemisupConfig":
        """The same config with every `auto` and None made concrete for images of `channels` channels, a default
        budget capped for a `pool` of that many training images (`POOL_EPOCHS`; None: no cap). Chosen on
        validation splits (bench/README.md, "Semi-supervised targets by kind of image"): on digits the graph's
        labels are right far more often than the probe's, and a graph rebuilt every 500 steps won; on CIFAR-10 the
        graph is no better than the probe, and class-balanced targets from both in one round won. The encoder trains
        at the head's rate for both (on CIFAR-10 with alignment and FlexMatch's thresholds, 0.3 of it lost 1.3 and
        1.2 points on two label draws). The pool neighbours' vote goes with graph targets: it added a tenth of a point
        or more on digits every time, and on CIFAR-10 +0.44 and -0.26 on two draws ("The classifier and its pool
        neighbours")."""
        if self.targets not in ("auto", "graph", "balanced"):
            raise ConfigError(f"semisup targets must be auto, graph or balanced, got {self.targets!r}")
        targets = ("graph" if channels == 1 else "balanced") if self.targets == "auto" else self.targets
        graph = targets == "graph"
        batch = self.batch_size if self.batch_size is not None else (64 if graph else 32)
        if batch < 1:
            raise ConfigError(f"semisup batch_size must be at least 1, got {batch}")
        steps = self.steps if self.steps is not None else (500 if graph else 2000)
        if self.steps is None and pool:  # a small pool: no more unlabeled draws than POOL_EPOCHS passes over it
            steps = min(steps, math.ceil(POOL_EPOCHS * pool / (batch * self.unlabeled_ratio)))
        rounds = self.rounds if self.rounds is not None else (min(steps, max(2, steps // 500)) if graph else 1)
        if steps < 1:
            raise ConfigError(f"--semisup-steps must be at least 1, got {steps}")
        if not 1 <= rounds <= steps:
            raise ConfigError(f"semisup rounds must be between 1 and its steps ({steps}), got {rounds}")
        neighbours = self.neighbours if self.neighbours is not None else (10 if graph else 0)
        if neighbours < 0:
            raise ConfigError(f"semisup neighbours must be 0 (off) or more, got {neighbours}")
        if self.keep not in ("best", "last"):
            raise ConfigError(f"semisup keep must be best or last, got {self.keep!r}")
        return replace(self, targets=targets, steps=steps, rounds=rounds, neighbours=neighbours, batch_size=batch)

    def checked(self) -> "SemisupConfig":
        """This config, or a one-line ConfigError where it cannot run on either kind of image."""
        for channels in (1, 3):
            self.resolved(channels)
        return self


def graph_scores(encoder: nn.Module, pool_x: np.ndarray, labeled_at: np.ndarray, labeled_y: np.ndarray,
                 n_classes: int) -> torch.Tensor:
    """Label propagation's class scores (N_pool, C) over the kNN graph of the encoder's features of the pool, from
    the labels of the pool images at `labeled_at` alone."""
    graph = LabelGraph(extract_features(encoder, pool_x))
    return graph.spread(torch.as_tensor(labeled_at), torch.from_numpy(labeled_y), n_classes)


def confident(scores: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's class, and whether its score reaches `threshold`."""
    conf, cls = scores.max(1)
    return cls, conf >= threshold


def balanced(scores: torch.Tensor, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced self-training's targets (Zou et al. 2018): each row's class, and whether the row is among the
    `share * N / C` rows of its class with the highest score, so that no class floods the pseudo-labels."""
    conf, cls = scores.max(1)
    per_class = max(1, int(share * len(scores) / scores.shape[1]))
    keep = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    for c in range(scores.shape[1]):
        rows = torch.nonzero(cls == c).flatten()
        keep[rows[conf[rows].argsort(descending=True)[:per_class]]] = True
    return cls, keep


def flex_thresholds(learned: torch.Tensor, n_classes: int, threshold: float) -> torch.Tensor:
    """FlexMatch's per-class thresholds (C,) from each pool image's last confident class (-1: none yet): a class's
    learning effect is its count over the largest count, the images with none counted as one more class (the
    warm-up), mapped through x / (2 - x) and scaled by `threshold`. Classes the model rarely predicts with
    confidence get low thresholds, so that they gather pseudo-labels early."""
    counts = torch.bincount(learned + 1, minlength=n_classes + 1).float()  # counts[0]: images with no class yet
    effect = counts[1:] / counts.max()
    return threshold * effect / (2 - effect)


def step_threshold(cfg: "SemisupConfig", own: torch.Tensor, ui: torch.Tensor, learned: torch.Tensor, n_classes: int
                   ) -> float | torch.Tensor:
    """The confidence threshold of each unlabeled image of a step, from the model's weak-view probabilities `own`
    (B, C) of the pool images at `ui`: with `cfg.flex`, FlexMatch's threshold of its predicted class, after each
    image the model is sure of has its class recorded in `learned`; else the fixed `cfg.threshold`."""
    if not cfg.flex:
        return cfg.threshold
    conf, cls = own.max(1)
    sure = conf >= cfg.threshold
    learned[ui[sure]] = cls[sure]
    return flex_thresholds(learned, n_classes, cfg.threshold)[cls]


def pseudo_labels(target: tuple[torch.Tensor, torch.Tensor], own: torch.Tensor, threshold: float | torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of unlabeled images from the round's (classes, given) and the model's weak-view probabilities (B, C):
    the round's class where it gives one, else the model's where its probability reaches `threshold` (one number, or
    one per row). Returns (classes, mask), mask 1.0 where a target was given."""
    cls, given = target
    own_conf, own_label = own.max(1)
    return torch.where(given, cls, own_label), (given | (own_conf >= threshold)).float()


def product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two sources' class scores (N, C) multiplied and renormalised per row: high where both agree."""
    joint = a * b
    return joint / joint.sum(1, keepdim=True).clamp(min=1e-30)


def aligned(own: torch.Tensor, mean: torch.Tensor | None, momentum: float = 0.99
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Distribution alignment (Berthelot et al. 2020, ReMixMatch) towards uniform classes: the probabilities (B, C)
    divided by the running mean of the predictions, renormalised per row, and that running mean updated with this
    batch's. A class the model over-predicts is damped before the confidence threshold, one it neglects lifted."""
    batch = own.mean(0)
    mean = batch if mean is None else momentum * mean + (1 - momentum) * batch
    out = own / mean.clamp(min=1e-6)
    return out / out.sum(1, keepdim=True), mean


@torch.no_grad()
def pool_outputs(model: nn.Module, pool_x: np.ndarray, amp: TrainStep, batch_size: int | None = None,
                 features: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The model's features (N, D; None unless `features`) and class probabilities (N, C) of every pool image,
    unaugmented, in eval mode, from one pass."""
    device = next(model.parameters()).device
    batch_size = batch_size or inference_batch(device)
    feats, probs, was = [], [], model.training
    model.eval()
    with amp.autocast():
        for i in range(0, len(pool_x), batch_size):
            x = prepare(torch.from_numpy(np.ascontiguousarray(pool_x[i:i + batch_size])).to(device), model.encoder)
            f = model.encoder(x)
            feats += [f.float()] if features else []
            probs.append(model.head(f).float().softmax(1))
    model.train(was)
    return torch.cat(feats) if features else None, torch.cat(probs)


def pool_probabilities(model: nn.Module, pool_x: np.ndarray, amp: TrainStep, batch_size: int | None = None
                       ) -> torch.Tensor:
    """The model's class probabilities (N, C) of every pool image, unaugmented, in eval mode."""
    return pool_outputs(model, pool_x, amp, batch_size, features=False)[1]


class NeighbourVote(nn.Module):
    """A trained classifier whose class probabilities are averaged, for each image, with the vote of its own
    predictions on the `k` pool images nearest to it in the classifier's features (each weighted by exp(cosine
    similarity / t), as the kNN evaluation weighs its neighbours). The unlabeled pool smooths the predictions of
    its neighbourhood, a nonparametric view that errs differently from the head: on MNIST +0.11 to +0.15 points over
    the classifier alone on held-out images and +0.14 on the test split (3 seeds); on CIFAR-10, whose neighbourhoods
    are mixed, +0.44 and -0.26 on two draws (bench/README.md, "The classifier and its pool neighbours"). Its forward
    returns log-probabilities, so that `probabilities` and `accuracy` take it as they take the classifier; its
    memory is the pool's features. `queries`: how many images it will score, to choose the search (`resolve`)."""

    def __init__(self, model: nn.Module, pool_x: np.ndarray, k: int = 10, t: float = 0.07, queries: int = 10_000):
        super().__init__()
        self.model, self.encoder, self.k, self.t = model, model.encoder, k, t
        feats, probs = pool_outputs(model, pool_x, TrainStep(next(model.parameters()).device, model.encoder))
        self.bank, self.votes = unit(feats.cpu()), probs.cpu()  # searched on the CPU, as every search is
        self.method = resolve("auto", queries, len(self.bank))
        self.index = build_index(self.bank, queries) if self.method == "index" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder(x)
        own = self.model.head(f).float().softmax(1)
        sim, j = search(self.bank, f.float().cpu(), self.k, self.method, index=self.index)
        vote = weighted_votes(sim, j, self.votes, self.t)
        vote = (vote / vote.sum(1, keepdim=True).clamp(min=1e-30)).to(own.device)
        return ((own + vote) / 2).clamp(min=1e-30).log()


def round_targets(cfg: SemisupConfig, scores: torch.Tensor, model: nn.Module, pool_x: np.ndarray, amp: TrainStep
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """A round's (classes, given) over the pool: the graph's confident labels, or the class-balanced most certain
    by the product of the graph's scores and the model's probabilities (two views that err differently)."""
    if cfg.targets == "graph":
        return confident(scores, cfg.graph_threshold)
    return balanced(product(scores, pool_probabilities(model, pool_x, amp).to(scores.device)), cfg.share)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, amp: TrainStep) -> torch.Tensor:
    """Class probabilities of float images (B, C, H, W) in eval mode (running BatchNorm statistics), no gradient."""
    model.eval()
    with amp.autocast():
        p = model(x.contiguous(memory_format=torch.channels_last)).float().softmax(1)
    model.train()
    return p


def clearly_below(accuracy: float, start: float, n: int) -> bool:
    """Whether `accuracy` on `n` images is below `start` by more than two binomial standard errors of `start` (at
    least those of one image in n): on 100 validation images, about 10 points from 0.5 and 2 from 1.0."""
    return accuracy < start - 2 * math.sqrt(max(start * (1 - start), 1 / n) / n)


def train_semisup(encoder: nn.Module, pool_x: np.ndarray, labeled_at: np.ndarray, labeled_y: np.ndarray,
                  val_x: np.ndarray, val_y: np.ndarray, n_classes: int, cfg: SemisupConfig, seed: int = 0,
                  encoder_lr_scale: float | None = None, device: str | torch.device = "cpu",
                  scores: torch.Tensor | None = None, progress: str | None = None) -> tuple[nn.Module, dict]:
    """Train encoder + head on the pool of training images, of which those at `labeled_at` carry `labeled_y`;
    keep the weights that `cfg.keep` names (the last ones when there are no validation images). `scores`: the first
    round's graph scores, when the caller has them (see `graph_scores`). The head starts as the linear probe, from
    random weights too (0.956 against 0.934 for `nn.Linear`'s init at 10 MNIST labels per class). `progress`: a
    label for a progress line on stderr (None: silent)."""
    torch.manual_seed(seed)
    device = torch.device(device)
    labeled_at = np.asarray(labeled_at)
    model = Classifier(copy.deepcopy(encoder), n_classes).to(device).to(memory_format=torch.channels_last)
    model.init_head(pool_x[labeled_at], labeled_y)
    channels, size = pool_x.shape[1], getattr(encoder, "image_size", None)
    cfg = cfg.resolved(channels, len(pool_x))
    weak = replace(preset(cfg.weak, channels, method_default="supervised" if channels == 3 else "supervised-grey"), size=size)
    strong = replace(preset(cfg.strong, channels), size=size)
    g = torch.Generator(device).manual_seed(seed)
    amp = TrainStep(device, model.encoder)
    u = torch.from_numpy(np.ascontiguousarray(pool_x)).to(device)
    at = torch.from_numpy(labeled_at).long().to(device)
    y = torch.from_numpy(labeled_y).long().to(device)
    vx, vy = torch.from_numpy(np.ascontiguousarray(val_x)), torch.from_numpy(val_y)
    no_val = len(vy) == 0  # nothing to choose by: the last weights are kept
    best = (None, 0, None) if no_val else (accuracy(model, vx, vy, shift=cfg.shift), 0, copy.deepcopy(model.state_dict()))
    start = val = best[0]
    nb, nu = min(cfg.batch_size, len(at)), cfg.batch_size * cfg.unlabeled_ratio
    scale = cfg.encoder_lr_scale if encoder_lr_scale is None else encoder_lr_scale
    per_round = max(1, cfg.steps // cfg.rounds)
    step, used, mean_own = 0, [], None
    learned = torch.full((len(u),), -1, dtype=torch.long, device=device)  # each pool image's last confident class
    line = Steps(progress, cfg.steps)
    model.train()
    for r in range(cfg.rounds):
        if r > 0 or scores is None:
            scores = graph_scores(model.encoder, pool_x, labeled_at, labeled_y, n_classes)
        target = [t.to(device) for t in round_targets(cfg, scores.float(), model, pool_x, amp)]
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
            if cfg.align:
                own, mean_own = aligned(own, mean_own)
            views = torch.cat([augment(u[li], weak, g), augment(u[ui], strong, g)])
            with amp.autocast():
                logits = model(views.contiguous(memory_format=torch.channels_last)).float()
            lab, us = logits[:nb], logits[nb:]
            threshold = step_threshold(cfg, own, ui, learned, n_classes)
            pseudo, mask = pseudo_labels((target[0][ui], target[1][ui]), own, threshold)
            loss_u = (F.cross_entropy(us, pseudo, reduction="none") * mask).mean()
            loss = F.cross_entropy(lab, y[pick]) + cfg.unlabeled_weight * loss_u
            amp.step(loss, opt)
            used.append(mask.mean())  # on the device: read once, at the end
            line.update(step)
            if no_val:
                best = (None, step, None)
            elif step % cfg.eval_every == 0 or i == per_round:
                val = accuracy(model, vx, vy, shift=cfg.shift)
                if val >= best[0]:  # ties go to the later, better-trained weights
                    best = (val, step, copy.deepcopy(model.state_dict()))
    line.close()
    # 100 validation images cannot rank checkpoints a few points apart, only catch a run that went clearly wrong
    if cfg.keep == "last" and not no_val and not clearly_below(val, start, len(vy)):
        best = (val, step, None)
    if best[2] is not None:
        model.load_state_dict(best[2])
    return model.eval(), {"val_accuracy": best[0], "best_step": best[1], "steps_run": step,
                          "pseudo_label_share": round(float(torch.stack(used).mean()) if used else 0.0, 4)}
