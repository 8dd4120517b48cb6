"""Run under `torchrun --nproc_per_node 2` (gloo, CPU) by tests/test_distributed.py; not collected by pytest.

For each method whose loss couples the processes (Barlow Twins' and VICReg's batch statistics, MoCo's gathered keys
and queue, DINO's centre): one step on a fixed global batch split over the processes; the loss averaged over ranks,
the data-parallel gradients and the state the step leaves (queue, centre), for comparison with one process on the
whole batch. Then a few steps with different data on each rank: DINO's teacher and MoCo's key encoders must be
identical on every rank.
"""
import sys
from pathlib import Path

import torch
from lightning.fabric import Fabric

sys.path.insert(0, str(Path(__file__).parent))
from distributed_common import (COUPLED, GLOBAL_BATCH, coupled_views, leave, make_coupled,  # noqa: E402
                                method_state)
from selfsup.engine import strategy_for  # noqa: E402


def main(out: Path) -> None:
    fabric = Fabric(accelerator="cpu", devices=2, strategy=strategy_for(2, 1), precision="32-true")  # as pretrain
    fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    n = GLOBAL_BATCH // world
    mine = slice(rank * n, (rank + 1) * n)
    results = {}
    for name in COUPLED:
        method = make_coupled(name)
        model, opt = fabric.setup(method, torch.optim.SGD(method.parameters(), lr=0.1))
        model.mark_forward_method("loss")
        loss = model.loss([v[mine] for v in coupled_views(name)])
        fabric.backward(loss)
        grads = {k: p.grad.clone() for k, p in method.named_parameters() if p.grad is not None}
        opt.step()
        method.after_optimizer_step(0.5)
        results[name] = {"loss": fabric.all_reduce(loss.detach(), reduce_op="mean"), "grads": grads,
                         "state": method_state(name, method)}

    for name, follower in (("dino", "teacher"), ("mocov2", "key_encoder"), ("mocov3", "key_encoder")):
        method = make_coupled(name)
        model, opt = fabric.setup(method, torch.optim.SGD(method.parameters(), lr=0.05))
        model.mark_forward_method("loss")
        g = torch.Generator().manual_seed(100 + rank)  # every rank sees other images
        for step in range(3):
            views = [torch.rand(8, 1, 8, 8, generator=g) for _ in range(2)]
            views += [torch.rand(8, 1, 4, 4, generator=g) for _ in range(2)] if name == "dino" else []
            loss = model.loss(views)
            opt.zero_grad()
            fabric.backward(loss)
            opt.step()
            method.after_optimizer_step((step + 1) / 3)
        flat = torch.cat([p.detach().flatten() for p in getattr(method, follower).parameters()])
        results[name]["followers"] = fabric.all_gather(flat).cpu()  # (world, P); a collective on every rank
        results[name]["follower_grads"] = [p.grad for p in getattr(method, follower).parameters() if p.grad is not None]
    if rank == 0:
        torch.save({"world": world, "results": results}, out / "methods.pt")
    leave(fabric)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
