"""Checkpoints: written atomically with a checksum beside them, rotated, and loaded back with the config that made them.

A run directory holds `checkpoints/step-NNNNNNNNN.pt` (the last K periodic ones) and, once training has
finished, `checkpoints/last.pt`. Each file has a `.sha256` sidecar; a file whose bytes do not match it,
or that cannot be unpickled, is skipped in favour of the previous one with a warning.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import PretrainConfig
from .errors import ConfigError, SelfsupError

STEP_FILE = re.compile(r"^step-(\d+)\.pt$")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save(path: str | Path, state: dict[str, Any]) -> Path:
    """torch.save to a temporary file, fsync, rename; then its sha256 beside it. A crash never leaves a corrupt file
    that passes for a good one: the old sidecar is removed first, and a file without one is checked by unpickling."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.unlink(missing_ok=True)
    _write_atomic(path, lambda f: torch.save(state, f))
    digest = _digest(path)
    _write_atomic(sidecar, lambda f: f.write(f"{digest}  {path.name}\n".encode()))
    _fsync_dir(path.parent)
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
        if expected and expected[0] != _digest(path):
            raise SelfsupError(f"checkpoint {path} fails its sha256 check (truncated or corrupt)")


def _read(path: Path) -> dict[str, Any]:
    verify(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise SelfsupError(f"checkpoint {path} is unreadable ({type(e).__name__}); it may be truncated, use an earlier one") from None
    if not isinstance(state, dict) or "method_state" not in state or "config" not in state:
        raise SelfsupError(f"{path} is not a selfsup checkpoint (no method_state/config)")
    return state


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


def build_method(cfg: PretrainConfig, in_channels: int) -> nn.Module:
    from .backbones import BACKBONES
    from .methods import METHODS

    cls = METHODS.get(cfg.method)
    args, method_args = dict(cfg.backbone_args), dict(cfg.method_args)
    if hasattr(cls, "input_channels"):  # e.g. colorization: the conv net sees one channel of colour data
        args["in_channels"] = cls.input_channels(in_channels)
        method_args["data_channels"] = in_channels
    args.setdefault("in_channels", in_channels)
    return METHODS.build(cfg.method, BACKBONES.build(cfg.backbone, **args), **method_args)


def describe(cfg: PretrainConfig | dict) -> str:
    """`method/backbone` plus non-default backbone and method arguments, as a user would name the architecture."""
    c = cfg if isinstance(cfg, dict) else cfg.to_dict()
    extra = ",".join(f"{k}={v}" for k, v in sorted({**c.get("backbone_args", {}), **c.get("method_args", {})}.items()))
    return f"{c['method']}/{c['backbone']}" + (f"({extra})" if extra else "")


def load_state_into(method: nn.Module, state: dict[str, Any], wanted: PretrainConfig, path: str | Path) -> None:
    """Load a checkpoint's weights into `method`, or say which architecture the checkpoint holds and which was asked for."""
    saved = state["config"]
    reason = None
    if any(saved.get(k) != getattr(wanted, k) for k in ("method", "backbone", "backbone_args", "method_args")):
        reason = "different architecture"
    else:
        try:
            method.load_state_dict(state["method_state"])
        except RuntimeError as e:
            reason = str(e).splitlines()[0]
    if reason:
        raise ConfigError(f"checkpoint {path} holds {describe(saved)} but {describe(wanted)} was asked for "
                          f"({reason}); use a matching checkpoint or start a new run")


def load_encoder(path: str | Path) -> tuple[nn.Module, PretrainConfig]:
    """The pretrained backbone (on CPU, eval mode) and the config it was trained with."""
    return encoder_from(load(path))


def encoder_from(state: dict[str, Any]) -> tuple[nn.Module, PretrainConfig]:
    """The backbone and config of a loaded checkpoint."""
    cfg = PretrainConfig.from_dict(state["config"])
    method = build_method(cfg, state["in_channels"])
    try:
        method.load_state_dict(state["method_state"])
    except RuntimeError as e:
        raise ConfigError(f"checkpoint weights do not fit {describe(cfg)}: {str(e).splitlines()[0]}") from None
    return method.backbone.eval(), cfg
