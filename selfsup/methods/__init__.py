"""Methods: one `nn.Module` each, built by composition, with `loss(views) -> Tensor`.

Protocol (no base class):
- `n_views`: how many augmented views `loss` takes;
- `backbone`: the encoder that evaluation uses, with `out_dim` and `in_channels`;
- `loss(views) -> Tensor`;
optional:
- `after_step(progress)`: called after each optimizer step (an EMA target, a schedule);
- `metrics`: a dict of floats that `loss` updates (pretext accuracy), logged by the loop;
- `last_embedding`: the embeddings `loss` last made, for the collapse monitor;
- `default_augment`: the augmentation preset used when the config says `auto`;
- `input_channels(data_channels)`: the conv net's input channels, when they differ from the data's
  (then the constructor also receives `data_channels`).
"""
from ..registry import Registry

METHODS: Registry = Registry("method")

from . import byol, colorization, rotation, simclr, simsiam  # noqa: E402,F401  (each registers itself)

__all__ = ["METHODS"]
