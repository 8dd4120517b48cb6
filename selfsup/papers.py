"""Each method's optimisation as its paper trains it, for GPU-scale runs (`compare --recipe NAME --size gpu`).

On a 2-core CPU every method starts from one measured setup (AdamW, `selfsup.defaults`): at a batch of 256 and a
few thousand steps, the papers' large-batch settings (LARS at batch 4096, learning rates scaled for it, weight
decays tuned for hundreds of epochs) are not what trains best, and docs/methods.md gives each difference and its
reason. At GPU scale the papers' settings are the default: `paper_config` applies them to a run.

Learning rates are the papers' base rates, scaled linearly with the global batch (lr = base * batch / 256), as
every one of these papers does. Method arguments are the papers' where they differ from selfsup's defaults.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import PretrainConfig


@dataclass(frozen=True)
class PaperSetting:
    source: str
    optimizer: str  # adamw, sgd or lars
    lr_per_256: float  # the base learning rate at a global batch of 256
    weight_decay: float
    method_args: dict = field(default_factory=dict)
    weight_decay_end: float | None = None  # a cosine from weight_decay to this over the budget


PAPERS: dict[str, PaperSetting] = {
    "simclr": PaperSetting("Chen et al. 2020, appendix B.9 (CIFAR-10)", "lars", 0.3, 1e-6, {"temperature": 0.5}),
    "byol": PaperSetting("Grill et al. 2020, appendix C", "lars", 0.2, 1.5e-6, {"tau_base": 0.996, "asymmetric": True}),
    "simsiam": PaperSetting("Chen & He 2021, appendix D (CIFAR-10)", "sgd", 0.03, 5e-4),
    "mocov2": PaperSetting("Chen et al. 2020 (MoCo v2), on the MoCo v1 schedule", "sgd", 0.03, 1e-4,
                           {"tau": 0.999, "temperature": 0.2, "queue_size": 65536}),
    "mocov3": PaperSetting("Chen, Xie & He 2021, ResNet-50: LARS, temperature 1.0", "lars", 0.3, 1.5e-6,
                           {"temperature": 1.0, "tau_base": 0.99}),
    "barlowtwins": PaperSetting("Zbontar et al. 2021, section 4 (lambda 5.1e-3)", "lars", 0.2, 1.5e-6,
                                {"off_diagonal_weight": 0.0051}),
    "vicreg": PaperSetting("Bardes et al. 2022, section 4.1 (25 / 25 / 1)", "lars", 0.2, 1e-6,
                           {"covariance_weight": 1.0}),
    "dino": PaperSetting("Caron et al. 2021, ViT-S/16", "adamw", 5e-4, 0.04,
                         {"tau_base": 0.996, "clip_grad": 3.0, "clip_per_parameter": True, "head_activation": "gelu",
                          "asymmetric": True}, weight_decay_end=0.4),
    "mae": PaperSetting("He et al. 2022, appendix A.1 (beta2 0.95 not offered: 0.999)", "adamw", 1.5e-4, 0.05,
                        {"mask_ratio": 0.75}),
    "rotation": PaperSetting("Gidaris et al. 2018 (SGD 0.1 at batch 128)", "sgd", 0.2, 5e-4),
    "colorization": PaperSetting("Zhang et al. 2016 (Adam 3e-5, weight decay 1e-3)", "adamw", 3e-5, 1e-3),
}


# Where a paper trains a ViT otherwise than a ResNet
PAPERS_VIT: dict[str, PaperSetting] = {
    "mocov3": PaperSetting("Chen, Xie & He 2021, ViT: AdamW, temperature 0.2", "adamw", 1.5e-4, 0.1,
                           {"temperature": 0.2, "tau_base": 0.99}),
}


def paper_config(cfg: PretrainConfig) -> PretrainConfig:
    """`cfg` trained as its method's paper does: its optimizer, weight decay, base learning rate scaled to the
    global batch, and method arguments (those `cfg` sets itself win)."""
    paper = (PAPERS_VIT.get(cfg.method) if cfg.backbone.startswith("vit") else None) or PAPERS.get(cfg.method)
    if paper is None:  # a method registered from outside: its own settings
        return cfg
    known = _accepted(cfg.method)
    args = {k: v for k, v in paper.method_args.items() if k in known} | dict(cfg.method_args)
    batch = cfg.batch_size * cfg.devices * cfg.num_nodes
    return PretrainConfig.from_dict(cfg.to_dict() | {"optimizer": paper.optimizer, "weight_decay": paper.weight_decay,
                                                     "weight_decay_end": paper.weight_decay_end,
                                                     "lr": paper.lr_per_256 * batch / 256, "method_args": args})


OPTIMISATION = ("optimizer", "lr", "weight_decay", "weight_decay_end")


def method_defaults(cfg: PretrainConfig, unset: set[str]) -> PretrainConfig:
    """`cfg` with the optimisation fields in `unset` (those neither a flag nor a config file gave) taken from the
    method's own defaults for the device: its paper's on a GPU, its measured CPU setting (`cpu_settings` of the
    method, e.g. DINO's lr 1e-3) on a CPU. Fields the user set are kept."""
    from .engine import accelerator_for
    from .methods import METHODS

    unset = unset & set(OPTIMISATION)
    if not unset:
        return cfg
    if accelerator_for(cfg.accelerator) == "cuda":
        own = paper_config(cfg).to_dict()
    else:
        own = cfg.to_dict() | dict(getattr(METHODS.get(cfg.method), "cpu_settings", {}))
    return PretrainConfig.from_dict(cfg.to_dict() | {k: own[k] for k in unset})


def _accepted(method: str) -> set[str]:
    """The constructor arguments a registered method takes."""
    import inspect

    from .methods import METHODS

    return set(inspect.signature(METHODS.get(method).__init__).parameters) - {"self", "backbone"}
