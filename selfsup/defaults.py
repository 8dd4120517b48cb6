"""The pretraining setups chosen by measurement, by kind of image (bench/README.md, "Colour recipe" and
"Label efficiency"). `selfsup demo` and `selfsup compare` start from them when no --config is given."""
from __future__ import annotations

from .config import PretrainConfig

# Digits and other 1-channel images: SimCLR at temperature 1.0 on a width-16 small_cnn, AdamW 4e-3, batch 256,
# the `greyscale` augmentation preset.
GREY = PretrainConfig(method="simclr", method_args={"temperature": 1.0}, backbone="small_cnn",
                      backbone_args={"width": 16}, lr=4e-3)
# Colour photographs, for SimCLR: chosen at a fixed wall clock on a validation split of CIFAR-10 (bench/README.md,
# "A backbone for the budget"): the whitening backbone at width 32, its views growing from half the side to the
# full side over the first half of the budget; the decoupled contrastive loss ("The contrastive loss").
COLOUR = PretrainConfig(method="simclr", method_args={"temperature": 0.2, "decoupled": True}, backbone="whiten_cnn",
                        backbone_args={"width": 32}, lr=2e-3, side_start=0.5, side_ramp=0.5)
# Colour photographs for the other methods: BYOL on the whitening backbone fell to near random weights where it
# learns on small_cnn (4 minutes on CIFAR-10, same page), so a comparison with any other method shares this one.
COLOUR_SMALL_CNN = PretrainConfig(method="simclr", method_args={"temperature": 0.2}, backbone="small_cnn",
                                  backbone_args={"width": 32}, lr=2e-3)


def for_channels(channels: int, methods: tuple[str, ...] | None = None) -> PretrainConfig:
    """The measured starting point for images with `channels` channels, shared by every method in `methods`
    (None: the setup's own method alone)."""
    if channels != 3:
        return GREY
    return COLOUR if methods is None or set(methods) <= {COLOUR.method} else COLOUR_SMALL_CNN
