"""The batch source of a training run: data order, resume position and each process's shard of each epoch."""
from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import torch
from torch.profiler import record_function

from ..errors import ConfigError, DataError

ON_DEVICE_BYTES = 2**31  # a shard smaller than this is copied to the device once; larger ones are read per batch


class Batches:
    """Random batches of uint8 images (B, C, H, W) on the device, forever, epoch after epoch.

    Every epoch deals the images anew into `world` disjoint shards (a seeded permutation of the epoch, the same on
    every process), and process `rank` visits its shard of that epoch in a random order: over epochs each process
    sees every image, and its batches mix with every other. The images are on the device when they are under
    `on_device_bytes` (each process holds them all), else each batch is read from the array (a memory map stays on
    disk: a prepared folder's private memory does not grow with its size, and a process reads only its shard's
    rows of the epoch). Both give the same batches.
    """

    def __init__(self, images: np.ndarray, batch_size: int, device: torch.device, seed: int, rank: int = 0,
                 world: int = 1, on_device_bytes: int | None = None):
        self.n, self.device, self.seed, self.rank, self.world = len(images), device, seed, rank, world
        if self.n // world < 2:
            raise ConfigError(f"{self.n} image(s) for {world} process(es): every process needs at least 2; "
                              f"add images or use fewer --devices")
        if batch_size > self.n // world:  # a small dataset trains with what it has
            warnings.warn(f"only {self.n // world} images per process: training with batch {self.n // world} "
                          f"instead of --batch-size {batch_size}", stacklevel=2)
            batch_size = self.n // world
        self.batch_size = batch_size
        self.steps_per_epoch = (self.n // world) // batch_size  # equal on every process
        limit = ON_DEVICE_BYTES if on_device_bytes is None else on_device_bytes
        if self.n * int(np.prod(images.shape[1:])) < limit:
            self.images = torch.from_numpy(np.require(images, requirements=("C", "W"))).to(device)  # a copy of a map
        else:
            self.images = images  # read per batch: only the rows of this process's shards are ever touched
        self.epoch, self.epoch_step = 0, 0
        self._reader, self._perm = None, (-1, None, None)

    def shard(self, epoch: int) -> np.ndarray:
        """The images (indices, ascending) process `rank` owns in `epoch`: its part of the epoch's seeded deal."""
        if self.world == 1:
            return np.arange(self.n)
        deal = np.random.default_rng((self.seed, epoch)).permutation(self.n)
        return np.sort(deal[: (self.n // self.world) * self.world][self.rank::self.world])

    def order(self, epoch: int) -> torch.Tensor:
        """Indices into the images, in the order this process visits them in `epoch` (the same on every run with
        this seed): its shard of the epoch, shuffled."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        shard = torch.from_numpy(self.shard(epoch))
        return shard[torch.randperm(len(shard), generator=g)]

    def __iter__(self) -> Iterator[torch.Tensor]:
        ahead = None  # ((epoch, step), the read of that batch under way) on the disk path
        while True:
            while self.epoch_step < self.steps_per_epoch:
                with record_function("selfsup.data"):  # a profiler range (bench/throughput.py)
                    if isinstance(self.images, torch.Tensor):
                        x = self.images[self.positions(self.epoch, self.epoch_step, on_device=True)]
                    else:  # read the next batch while this one trains: the disk's latency is hidden
                        here = (self.epoch, self.epoch_step)
                        batch = ahead[1] if ahead is not None and ahead[0] == here else self._read_at(*here)
                        following = (self.epoch, self.epoch_step + 1) if self.epoch_step + 1 < self.steps_per_epoch \
                            else (self.epoch + 1, 0)
                        ahead = (following, self._read_at(*following))
                        x = batch.result().to(self.device, non_blocking=True)  # pinned on CUDA: an async copy
                self.epoch_step += 1
                yield x
            self.epoch, self.epoch_step = self.epoch + 1, 0

    def positions(self, epoch: int, step: int, on_device: bool = False) -> torch.Tensor:
        """Indices of the images of batch `step` of `epoch` (the epoch's order is kept for its next batches, and
        copied to the device once per epoch with `on_device`: no copy per step)."""
        if self._perm[0] != epoch:
            order = self.order(epoch)
            placed = order if self.device.type == "cpu" else order.pin_memory().to(self.device, non_blocking=True)
            self._perm = (epoch, order, placed)
        return self._perm[2 if on_device else 1][step * self.batch_size:(step + 1) * self.batch_size]

    def _read_at(self, epoch: int, step: int):
        """The read of batch `step` of `epoch`, started on the reader thread (a future of the uint8 tensor)."""
        if self._reader is None:
            from concurrent.futures import ThreadPoolExecutor

            self._reader = ThreadPoolExecutor(1, thread_name_prefix="selfsup-read")
        return self._reader.submit(self._staged, self.positions(epoch, step).numpy())

    def _staged(self, rows: np.ndarray) -> torch.Tensor:
        """The batch at `rows` as a tensor, in page-locked memory when it goes to a GPU (so that its copy there
        runs while the host goes on)."""
        x = torch.from_numpy(self.read(rows))
        return x.pin_memory() if self.device.type == "cuda" else x

    def read(self, rows: np.ndarray) -> np.ndarray:
        """Images at `rows`, in that order, read in ascending order (fast on a memory map)."""
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.images.shape[1:]), np.uint8)
        out[order] = self.images[rows[order]]
        return out

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "epoch_step": self.epoch_step, "images": self.n,
                "world_size": self.world, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> bool:
        """Continue where `state` stopped. True when the order goes on exactly; False (with a warning) when the
        number of processes, the batch size or the seed changed and only the epoch is kept."""
        if state["images"] != self.n:
            raise DataError(f"the data has {self.n} images but the checkpoint was trained on {state['images']}; "
                            f"resume on the same data")
        exact = all(state[k] == v for k, v in (("world_size", self.world), ("batch_size", self.batch_size),
                                                ("seed", self.seed)))
        self.epoch, self.epoch_step = state["epoch"], state["epoch_step"] if exact else 0
        if not exact:
            warnings.warn(f"resuming on {self.world} process(es) x batch {self.batch_size} instead of "
                          f"{state['world_size']} x {state['batch_size']}: training goes on, but not exactly as the "
                          f"uninterrupted run would", stacklevel=2)
        return exact
