"""Models and data shared by the 2-process worker and the single-process reference in test_distributed.py."""
import os
import sys

import torch
from torch import nn

from selfsup.backbones import small_cnn
from selfsup.config import PretrainConfig
from selfsup.methods.byol import BYOL
from selfsup.methods.simclr import SimCLR

GLOBAL_BATCH = 16
SGD_CONFIG = PretrainConfig(optimizer="sgd", lr=0.1, weight_decay=0.0)  # a step that is lr x gradient: scale errors show


def make_simclr() -> SimCLR:
    torch.manual_seed(0)
    return SimCLR(small_cnn(in_channels=1, width=8), proj_hidden=32, proj_dim=16, temperature=0.5)


def make_byol() -> BYOL:
    torch.manual_seed(1)
    return BYOL(small_cnn(in_channels=1, width=8), proj_hidden=32, proj_dim=16, pred_hidden=32, tau_base=0.9)


def frozen_bn(model: nn.Module) -> nn.Module:
    """BatchNorm on its running statistics: then each sample's features do not depend on which process holds the
    rest of the batch, and the only coupling across processes is the loss (what the gradient test is about).
    Training-mode BN over a split batch differs by design; --sync-batchnorm is the GPU answer to that."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def global_views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.rand(GLOBAL_BATCH, 1, 8, 8, generator=g), torch.rand(GLOBAL_BATCH, 1, 8, 8, generator=g)


# The methods whose loss couples processes (batch statistics, gathered keys, the centre), small enough to compare.
COUPLED = {
    "barlowtwins": dict(proj_hidden=32, proj_dim=16),
    "vicreg": dict(proj_hidden=32, proj_dim=16),
    "mocov2": dict(proj_hidden=32, proj_dim=16, queue_size=48, temperature=0.5),
    "mocov3": dict(proj_hidden=32, proj_dim=16, pred_hidden=32, temperature=0.5),
    "dino": dict(out_dim=32, hidden=32, bottleneck=16, local_crops=2, freeze_last_layer=0.0, clip_grad=0.0),
}


def make_coupled(name: str):
    from selfsup.methods import METHODS

    torch.manual_seed(2)
    return frozen_bn(METHODS.build(name, small_cnn(in_channels=1, width=8), **COUPLED[name]))


def coupled_views(name: str) -> list[torch.Tensor]:
    """The global batch's views for `name`: two 8x8 views, and for DINO two 4x4 local crops besides."""
    g = torch.Generator().manual_seed(11)
    views = [torch.rand(GLOBAL_BATCH, 1, 8, 8, generator=g) for _ in range(2)]
    return views + ([torch.rand(GLOBAL_BATCH, 1, 4, 4, generator=g) for _ in range(2)] if name == "dino" else [])


def method_state(name: str, method) -> dict:
    """What a step leaves behind that the other processes must agree on."""
    if name == "mocov2":
        return {"queue": method.queue.clone(), "queue_ptr": method.queue_ptr.clone()}
    if name == "dino":
        return {"center": method.center.clone()}
    return {}


def leave(fabric) -> None:
    """End a worker once every process has written what it must: past one more barrier, exit at once, without
    tearing gloo down. Teardown races gloo's own thread: the process group's destructor joins that thread while
    holding the GIL, and the thread may still be freeing the last collective's tensors, which needs the GIL. That
    deadlock hung about one run in 25 here (gdb: ~ProcessGroupGloo joining pt_gloo_runloop, which waits in
    take_gil); left to interpreter exit instead, the same teardown aborts."""
    fabric.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
