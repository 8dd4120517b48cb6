"""Recipes: packaged `selfsup compare` configurations, one per experiment selfsup grew from, in two sizes.

`selfsup recipes` lists them; `selfsup compare --recipe NAME [--size cpu|gpu]` runs one, and any flag given
beside it overrides the recipe's value. The `cpu` size fits about 15 minutes on a 2-core CPU for the whole
pipeline (pretraining and every evaluation); the `gpu` size is the full-length protocol. docs/experiments.md
puts each source's published number beside what the recipe measured.

Each recipe starts from the measured defaults for its kind of image (`selfsup.defaults`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from .compare import CompareConfig
from .config import PretrainConfig
from .defaults import COLOUR, COLOUR_SMALL_CNN, GREY
from .errors import ConfigError
from .evaluate import FinetuneConfig
from .registry import Registry

# The full-length protocol on a GPU: ResNet-18 with the small stem at the batch size papers use on CIFAR.
GPU_CHANGES = {"backbone": "resnet18", "backbone_args": {"stem": "small"}, "batch_size": 512, "checkpoint_minutes": 10.0,
               "side_start": 1.0}  # the papers' protocol: full-size views throughout


@dataclass(frozen=True)
class Recipe:
    """A documented experiment: what it reproduces, the source's numbers, and a compare configuration per size."""

    name: str
    dataset: str
    summary: str  # one line for `selfsup recipes`
    source: str  # the source's setup and published result, in words
    published: dict[str, float]  # the source's numbers, by row name
    build: Callable[[str], CompareConfig]  # size ("cpu" or "gpu") -> configuration
    sizes: tuple[str, ...] = ("cpu", "gpu")

    def config(self, size: str = "cpu", out: str | None = None) -> CompareConfig:
        if size not in self.sizes:
            raise ConfigError(f"recipe {self.name} has sizes {', '.join(self.sizes)}, not {size!r}")
        cc = self.build(size)
        return replace(cc, out=out or f"runs/{self.name}-{size}")


RECIPES: Registry = Registry("recipe", sort=False)


def _add(recipe: Recipe) -> None:
    RECIPES.register(recipe.name, recipe.summary)(lambda: recipe)


def get(name: str) -> Recipe:
    return RECIPES.get(name)()


def _cc(dataset: str, methods: tuple[str, ...], evals: tuple[str, ...], labels: tuple[int, ...], size: str,
        base: PretrainConfig, cpu_minutes: float, gpu_epochs: float) -> CompareConfig:
    """Methods against supervised training and random weights; the cpu size a wall-clock budget, the gpu size
    ResNet-18 for an epoch budget with a longer fine-tuning."""
    if size == "cpu":
        pre, minutes, ft = base, cpu_minutes, FinetuneConfig(steps=300)
    else:
        pre = base.override(**GPU_CHANGES).with_budget(epochs=gpu_epochs)
        minutes, ft = None, FinetuneConfig(steps=2000, patience=10)
    return CompareConfig(dataset=dataset, methods=methods, baselines=("supervised", "random"), labels_per_class=labels,
                         evals=evals, minutes_per_method=minutes, pretrain=pre, finetune=ft,
                         paper_settings=size == "gpu")  # on a GPU each method trains as its paper does


_add(Recipe(
    "rotation-mnist", "mnist",
    "rotation prediction on MNIST, then fine-tuning with 1/10/100 labels per class against training from scratch",
    "RotNet-style pretext (Gidaris et al. 2018) on MNIST; the source reached 39% pretext accuracy and never ran "
    "the fine-tuning phase.",
    {"rotation pretext accuracy": 0.39},
    lambda size: _cc("mnist", ("rotation",), ("knn", "linear", "finetune"), (1, 10, 100), size,
                     GREY.override(method="rotation", method_args={}), cpu_minutes=5, gpu_epochs=50)))

_add(Recipe(
    "simclr-cifar10", "cifar10",
    "SimCLR on CIFAR-10, linear probe on frozen features (plus kNN, propagation, fine-tuning) against baselines",
    "SimCLR (Chen et al. 2020) on CIFAR-10 with a linear probe; the source reported 33.3% linear accuracy, "
    "with a loss that contrasted each feature with itself.",
    {"simclr linear": 0.333},
    lambda size: _cc("cifar10", ("simclr",), ("knn", "linear", "propagate", "finetune"), (10, 100), size,
                     COLOUR, cpu_minutes=8, gpu_epochs=200)))

_add(Recipe(
    "colorization-cifar10", "cifar10",
    "colorization on CIFAR-10, fine-tuned with 10 labels per class against the same network from scratch",
    "Colorization (Zhang et al. 2016) on CIFAR-10, fine-tuned with 10 labels per class; the source reported "
    "21% against 11.2% for the same network trained from scratch.",
    {"colorization finetune@10": 0.21, "supervised finetune@10": 0.112},
    lambda size: _cc("cifar10", ("colorization",), ("knn", "linear", "finetune"), (10, 100), size,
                     COLOUR_SMALL_CNN.override(method="colorization", method_args={}), cpu_minutes=8, gpu_epochs=100)))

_add(Recipe(
    "byol-stl10", "stl10",
    "BYOL on STL-10 train + unlabeled (at 48 px on a CPU), fine-tuned on the labels against supervised training",
    "BYOL (Grill et al. 2020) on STL-10's train and unlabeled splits, fine-tuned on the labeled train split; "
    "the source reported 48.1% against 50.4% for supervised training, after one epoch.",
    {"byol finetune": 0.481, "supervised finetune": 0.504},
    lambda size: _cc("stl10", ("byol",), ("knn", "linear", "finetune"), (10, 100), size,
                     COLOUR_SMALL_CNN.override(method="byol", method_args={}, image_size=48 if size == "cpu" else None),
                     cpu_minutes=8, gpu_epochs=100)))

_add(Recipe(
    "cifar100-compare", "cifar100",
    "supervised vs BYOL vs SimSiam vs random weights on CIFAR-100: linear evaluation and an embedding map for each",
    "Supervised, BYOL (Grill et al. 2020), SimSiam (Chen & He 2021) and random weights on CIFAR-100 with linear "
    "evaluation and interactive embedding maps; the source reported 59.1% / 31.6% / 24.3% / 16.1%.",
    {"supervised": 0.591, "byol linear": 0.316, "simsiam linear": 0.243, "random-init linear": 0.161},
    lambda size: _cc("cifar100", ("byol", "simsiam"), ("knn", "linear", "finetune"), (10, 100), size,
                     COLOUR_SMALL_CNN.override(method_args={}), cpu_minutes=4, gpu_epochs=200)))
