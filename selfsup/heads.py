"""The one head builder every method uses, and its presets."""
from __future__ import annotations

from torch import nn


def mlp(dims: tuple[int, ...], bn: bool = True, last_bn: bool = False, last_bias: bool = True,
        act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers through `dims`, with BatchNorm + `act` (ReLU) between them; `last_bn` adds an affine-free BN at
    the end."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(a, b, bias=(last and last_bias and not last_bn) or (not last and not bn)))
        if not last:
            layers += [nn.BatchNorm1d(b)] if bn else []
            layers.append(act(inplace=True) if act is nn.ReLU else act())
        elif last_bn:
            layers.append(nn.BatchNorm1d(b, affine=False))
    return nn.Sequential(*layers)


def projection(in_dim: int, hidden: int = 512, out: int = 128) -> nn.Sequential:
    """SimCLR's projector: 2 layers to a small space where the contrastive loss is taken."""
    return mlp((in_dim, hidden, out))
