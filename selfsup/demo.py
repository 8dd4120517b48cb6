"""The main job: a small preset of `selfsup compare` on MNIST."""
from __future__ import annotations

from .compare import CompareConfig, run_compare
from .config import PretrainConfig
from .defaults import GREY
from .evaluate import FinetuneConfig, SemisupConfig

# The configuration chosen on the validation split by bench/label_efficiency.py (bench/README.md, "Label
# efficiency"); colour datasets start from `defaults.COLOUR` instead.
DEMO_PRETRAIN = GREY
DEMO_MINUTES = 3.0  # pretraining; with every evaluation and baseline the demo took 7:29-7:59 on a 2-core AVX512-BF16
# EPYC, and 10-11 minutes on a 2-core AVX2-only one, where everything runs in fp32 (bench/README.md, "The demo")
DEMO_EVALS = ("knn", "linear", "propagate", "finetune", "semisup")
# Semi-supervised training took half the demo's time at its library default (four unlabeled images per labeled
# one); two cost 35% less per run and held the pretrained encoder's accuracy on validation (bench/README.md, "The
# demo"). The from-scratch baseline gets the same. Both trained evaluations score each image alone: scoring over its
# one-pixel shifts as well (the library default) costs five passes over the 10,000 test images for each of twelve
# trained classifiers, about 50 s of the demo on a 2-core AVX2 CPU, for a tenth of a point on digits. For the same
# reason semisup's predictions are the classifier's alone, without its pool neighbours' vote (a pass over the 60,000
# pool images for each of six runs).
DEMO_SEMISUP = SemisupConfig(unlabeled_ratio=2, shift=False, neighbours=0)
DEMO_FINETUNE = FinetuneConfig(shift=False)


def demo_config(out: str = "runs/demo", methods: tuple[str, ...] = ("simclr",), minutes: float = DEMO_MINUTES,
                labels_per_class: tuple[int, ...] = (1, 10, 100), dataset: str = "mnist", seed: int = 0,
                base: PretrainConfig | None = None, finetune: FinetuneConfig | None = None,
                semisup: SemisupConfig | None = None) -> CompareConfig:
    """SimCLR against supervised-from-scratch and random-init; kNN, linear probe, label propagation, fine-tuning and
    semi-supervised training at 1, 10 and 100 labels per class."""
    return CompareConfig(dataset=dataset, methods=tuple(methods), baselines=("supervised", "random"),
                         labels_per_class=tuple(labels_per_class), evals=DEMO_EVALS,
                         minutes_per_method=minutes, seeds=(seed,), out=str(out),
                         pretrain=base, pretrain_args={"seed": seed}, finetune=finetune or DEMO_FINETUNE,
                         semisup=semisup or DEMO_SEMISUP)


def run_demo(out: str = "runs/demo", methods: tuple[str, ...] = ("simclr",), minutes: float = DEMO_MINUTES,
             labels_per_class: tuple[int, ...] = (1, 10, 100), dataset: str = "mnist", seed: int = 0,
             base: PretrainConfig | None = None, finetune: FinetuneConfig | None = None,
             semisup: SemisupConfig | None = None, show_progress: bool = True) -> dict:
    """Run the demo preset; writes OUT/results.json and OUT/report.html."""
    return run_compare(demo_config(out, methods, minutes, labels_per_class, dataset, seed, base, finetune, semisup),
                       show_progress)
