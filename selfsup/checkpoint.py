"""Checkpoints: written atomically with a checksum beside them, rotated, and loaded back with the config that made them.

A run directory holds `checkpoints/step-NNNNNNNNN.pt` (the last K periodic ones) and, once training has
finished, `checkpoints/last.pt`. Each file has a `.sha256` sidecar; a file whose bytes do not match it,
or that cannot be unpickled, is skipped in favour of the previous one with a warning.
"""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import SelfsupError
from .files import atomic_write, file_digest, fsync_dir

STEP_FILE = re.compile(r"^step-(\d+)\.pt$")
FORMAT = 2  # version 1 (before parts saved their own state) is upgraded on reading


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save to a temporary file, fsync, rename; then its sha256 beside it. A crash never leaves a corrupt file
    that passes for a good one: the old sidecar is removed first, and a file without one is checked by unpickling."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.unlink(missing_ok=True)
    atomic_write(path, lambda f: torch.save(state, f))
    digest = file_digest(path)
    atomic_write(sidecar, lambda f: f.write(f"{digest}  {path.name}\n".encode()))
    fsync_dir(path.parent)
    return path


def save_rotating(folder: str | Path, state: dict[str, Any], step: int, keep: int) -> Path:
    """Save `step-NNNNNNNNN.pt` in `folder` and delete all but the newest `keep` of them."""
    folder = Path(folder)
    path = save(folder / f"step-{step:09d}.pt", state)
    for old in step_files(folder)[keep:]:
        remove(old)
    return path


def remove(path: Path) -> None:
    """Delete a checkpoint and its sha256 sidecar."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".sha256").unlink(missing_ok=True)


def step_files(folder: Path) -> list[Path]:
    """Periodic checkpoints in `folder`, newest first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def candidates(run: str | Path) -> list[Path]:
    """Every checkpoint of a run directory, newest first: last.pt (written when training finished), then step-*.pt."""
    folder = Path(run) / "checkpoints"
    last = [folder / "last.pt"] if (folder / "last.pt").exists() else []
    return last + step_files(folder)


def verify(path: Path) -> None:
    """Raise SelfsupError if `path` does not match its sha256 sidecar."""
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.exists():
        expected = sidecar.read_text().split()[:1]
        if expected and expected[0] != file_digest(path):
            raise SelfsupError(f"checkpoint {path} fails its sha256 check (truncated or corrupt)")


def _numpy_arrays() -> list:
    """The globals a pickled numpy array of plain numbers needs (the numpy random state in format-1 checkpoints).
    An array of Python objects would need more, and stays refused."""
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def safe_load(path: Path) -> Any:
    """torch.load that never runs code from the file: tensors, numbers, strings and containers only
    (weights_only), plus numpy arrays of numbers. Every failure is one SelfsupError line."""
    if path.stat().st_size == 0:
        raise SelfsupError(f"{path} is empty (a crash while it was written?); use an earlier checkpoint")
    try:
        with torch.serialization.safe_globals(_numpy_arrays()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a raw pickle's protocol note; the refusal below says what matters
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it asks for {found.group(1)}" if found else "a raw pickle, not torch's checkpoint format"
        raise SelfsupError(f"{path} holds more than tensors and plain values ({what}); selfsup never loads such files, "
                           f"since unpickling them can run code: use a checkpoint written by `selfsup pretrain`") from None
    except Exception as e:  # noqa: BLE001 - any other failure to read means the same thing to the user
        raise SelfsupError(f"checkpoint {path} is unreadable ({type(e).__name__}); it may be truncated, use an earlier one") from None


def check(state: Any, path: Path) -> dict[str, Any]:
    """A loaded file as a selfsup checkpoint of today's format, or one line that says what it is instead."""
    if isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SelfsupError(f"{path} holds only weights (a state dict of {len(state)} tensors), not a selfsup checkpoint; "
                           f"load them yourself into selfsup.encoders.build_encoder(spec) with load_state_dict")
    if not isinstance(state, dict) or not ("method" in state or "method_state" in state) or "config" not in state:
        keys = ", ".join(sorted(map(str, state))[:6]) if isinstance(state, dict) else type(state).__name__
        raise SelfsupError(f"{path} is not a selfsup checkpoint (it holds {keys}); pass a run directory or a .pt "
                           f"written by `selfsup pretrain`")
    try:
        state = upgrade(state) if state.get("format", 1) < FORMAT else state
        for key, kind in (("config", dict), ("encoder", dict), ("method", dict)):
            if not isinstance(state[key], kind):
                raise TypeError(f"{key} is a {type(state[key]).__name__}")
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise SelfsupError(f"{path} is a damaged selfsup checkpoint ({'no ' if isinstance(e, KeyError) else ''}{e}); "
                           f"use another checkpoint of the run") from None
    return state


def _read(path: Path) -> dict[str, Any]:
    verify(path)
    return check(safe_load(path), path)


def latest(run: str | Path) -> tuple[Path, dict[str, Any]]:
    """The newest readable checkpoint of a run directory; corrupt ones are skipped with a warning."""
    found = candidates(run)
    if not found:
        raise SelfsupError(f"no checkpoint in {Path(run) / 'checkpoints'}; pass a run directory made by `selfsup pretrain`")
    for i, path in enumerate(found):
        try:
            return path, _read(path)
        except SelfsupError as e:
            fallback = f"falling back to {found[i + 1].name}" if i + 1 < len(found) else "no earlier checkpoint is left"
            warnings.warn(f"{e}; {fallback}", stacklevel=2)
    raise SelfsupError(f"every checkpoint in {Path(run) / 'checkpoints'} is corrupt; start the run again without --resume")


def read(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(the checkpoint file, its contents) for a .pt file or a run directory (its newest readable checkpoint)."""
    path = Path(path)
    if path.is_dir():
        return latest(path)
    if not path.exists():
        raise SelfsupError(f"no checkpoint at {path}; pass a .pt file or a run directory made by `selfsup pretrain`")
    return path, _read(path)


def load(path: str | Path) -> dict[str, Any]:
    return read(path)[1]


def upgrade(old: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint of format 1 (one flat dict) in today's layout, where each part of the run has its own slice."""
    from .encoders import EncoderSpec
    from .methods import METHODS

    cfg, channels, order = old["config"], old["in_channels"], old.get("data_order", {})
    method = METHODS.get(cfg["method"])
    cfg = cfg | {"method_args": method.legacy_args(cfg.get("method_args", {}), 1)}
    encoder = EncoderSpec(cfg["backbone"], cfg.get("backbone_args", {}), channels, old.get("image_size"),
                          method.input_transform(channels))
    new = {"format": FORMAT, "config": cfg, "method": old["method_state"], "final": old.get("final", False),
           "encoder": encoder.to_dict(), "optimizer": old.get("optimizer"), "precision": {}, "rng": old.get("rng"),
           "batches": {k: order.get(k) for k in ("seed", "epoch", "epoch_step", "images", "world_size", "batch_size")},
           "budget": {"step": old.get("step", 0), "images_seen": old.get("images_seen", 0),
                      "progress": old.get("progress", 0.0), "seconds": old.get("seconds", 0.0)},
           "guard": {"bad": old.get("skipped", 0)}, "run": {"history": old.get("history", [])}}
    return new | ({"summary": old["summary"]} if "summary" in old else {})
