"""lightly's SimCLR, as its documentation gives it, on selfsup's network: the peer side of bench/peers.py.

Runs in its own virtual environment (torch 2.14.1, torchvision 0.29.1, lightly; see DEVELOPERS.md), with the
selfsup checkout on PYTHONPATH for the backbone only. Per lightly's docs and its CIFAR-10 benchmark:
SimCLRTransform(input_size=side, cj_strength=0.5, gaussian_blur=0.0) applied per image in a DataLoader with a
worker per core, SimCLRProjectionHead(out_dim, 512, 128), NTXentLoss(), SGD(lr=0.06), fp32. Grey images are
given to it as RGB (its transform normalises three channels), so its network's first layer takes 3 channels.

    python bench/peer_lightly.py --images X.npy --backbone small_cnn --backbone-args '{"width": 16}'
        --batch 256 (--steps N --warmup W | --seconds S --save backbone.pt) --out result.json
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform

from selfsup.backbones import BACKBONES


class Images(Dataset):
    def __init__(self, x: np.ndarray, transform):
        self.x, self.transform = x, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        img = self.x[i].transpose(1, 2, 0)
        img = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).convert("RGB")
        return self.transform(img)


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, SimCLRProjectionHead(backbone.out_dim, 512, 128)

    def forward(self, x):
        return self.head(self.backbone(x))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", required=True)
    ap.add_argument("--backbone", default="small_cnn")
    ap.add_argument("--backbone-args", default="{}")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--save", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    x = np.load(args.images, mmap_mode="r")
    side = x.shape[2]
    torch.manual_seed(0)
    backbone = BACKBONES.build(args.backbone, **json.loads(args.backbone_args) | {"in_channels": 3, "image_size": side})
    model = SimCLR(backbone)
    transform = SimCLRTransform(input_size=side, cj_strength=0.5, gaussian_blur=0.0)
    loader = DataLoader(Images(x, transform), batch_size=args.batch, shuffle=True, drop_last=True,
                        num_workers=os.cpu_count(), persistent_workers=True)
    criterion, opt = NTXentLoss(), torch.optim.SGD(model.parameters(), lr=0.06)
    step, timed, t_start, t0 = 0, 0.0, time.perf_counter(), None
    done = False
    while not done:
        for views in loader:
            if step == args.warmup:
                t0 = time.perf_counter()  # the clock starts after the warm-up steps (workers started, kernels made)
            x0, x1 = views[0], views[1]
            loss = criterion(model(x0), model(x1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if args.steps is not None and step >= args.warmup + args.steps:
                done = True
            if args.seconds is not None and time.perf_counter() - t_start >= args.seconds:
                done = True
            if done:
                break
    if t0 is not None:
        timed = time.perf_counter() - t0
    result = {"steps": step, "loss": float(loss), "seconds": round(time.perf_counter() - t_start, 2),
              "img_per_s": args.batch * (step - args.warmup) / timed if timed else None,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        import lightly

        result["lightly"] = lightly.__version__
    except AttributeError:
        pass
    if args.save:
        torch.save(backbone.state_dict(), args.save)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
