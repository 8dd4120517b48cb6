"""Run under `torchrun --nproc_per_node 2` (gloo, CPU) by tests/test_distributed.py; not collected by pytest.

1. SimCLR on a fixed global batch split over the processes: the loss averaged over ranks, the
   data-parallel gradients and the weights after one step of the training loop's optimizer (guarded, fused),
   for comparison with one process on the whole batch.
2. BYOL trained a few steps with different data on each rank: the target network on every rank.
"""
import sys
from pathlib import Path

import torch
from lightning.fabric import Fabric

sys.path.insert(0, str(Path(__file__).parent))
from distributed_common import (GLOBAL_BATCH, SGD_CONFIG, frozen_bn, global_views, leave,  # noqa: E402
                                make_byol, make_simclr)
from selfsup.engine import strategy_for  # noqa: E402
from selfsup.optim import NonFiniteGuard, make_optimizer  # noqa: E402


def main(out: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy_for(2, 1), precision="32-true")  # as pretrain
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    n = GLOBAL_BATCH // world
    mine = slice(rank * n, (rank + 1) * n)

    method = frozen_bn(make_simclr())
    raw = make_optimizer(method, SGD_CONFIG)
    model, opt = fabric.setup(method, raw)
    model.mark_forward_method("loss")
    v1, v2 = global_views()
    loss = model.loss([v1[mine], v2[mine]])
    fabric.backward(loss)
    NonFiniteGuard(raw, fabric.device, 0).check(loss, 1)  # the loop's path: guard, then the fused step
    grads = {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}
    opt.step()
    mean_loss = fabric.all_reduce(loss.detach(), reduce_op="mean")
    if rank == 0:
        weights = {k: p.detach().clone() for k, p in method.named_parameters()}
        torch.save({"loss": mean_loss, "grads": grads, "weights": weights, "world": world}, out / "simclr.pt")

    byol = make_byol()
    opt = torch.optim.SGD(byol.parameters(), lr=0.05, momentum=0.9)
    model, opt = fabric.setup(byol, opt)
    model.mark_forward_method("loss")
    g = torch.Generator().manual_seed(100 + rank)  # every rank sees other images
    for step in range(4):
        x1, x2 = torch.rand(8, 1, 8, 8, generator=g), torch.rand(8, 1, 8, 8, generator=g)
        loss = model.loss([x1, x2])
        opt.zero_grad()
        fabric.backward(loss)
        opt.step()
        byol.after_optimizer_step((step + 1) / 4)
    target = torch.cat([p.detach().flatten() for p in byol.target.parameters()])
    online = torch.cat([p.detach().flatten() for p in byol.backbone.parameters()])
    targets, onlines = fabric.all_gather(target), fabric.all_gather(online)  # (world, P) each; a collective
    if rank == 0:
        torch.save({"targets": targets.cpu(), "onlines": onlines.cpu(), "tau": float(byol.target.tau),
                    "ema_steps": int(byol.target.steps)}, out / "byol.pt")
    leave(fabric)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
