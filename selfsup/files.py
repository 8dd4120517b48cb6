"""Writing files so that a crash never leaves a half-written one that passes for good, and hashing them."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, IO


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (a no-op where the platform cannot open directories)."""
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


def write_error(path: Path, e: OSError):
    """One line for a write the disk refused (full, over quota, read-only, over a size limit)."""
    from .errors import SelfsupError

    return SelfsupError(f"cannot write {path} ({e.strerror or e}); free some space or choose another output "
                        f"directory; the file as it was before is intact")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    Readers see the old file or the whole new one, never a part; the temporary file is removed on any failure,
    and a refused write (a full disk) is one SelfsupError line."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except Exception as e:  # noqa: BLE001 - a writer (torch's zip writer) may wrap the refused write in its own error
        refused = next((c for c in _chain(e) if isinstance(c, OSError)), None)
        if refused is None:
            raise
        raise write_error(path, refused) from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _chain(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: str | Path, obj: Any) -> Path:
    """JSON, indented, written atomically; values JSON cannot hold are written as their str()."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """A JSON file selfsup wrote; a missing or damaged one is a one-line error."""
    from .errors import SelfsupError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SelfsupError(f"cannot read {path} ({getattr(e, 'strerror', None) or e}); is it a selfsup output?") from None


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def append_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Append rows, one JSON object a line; after a torn last line (a killed writer) the new rows start a line of
    their own. A refused write is one SelfsupError line."""
    path = Path(path)
    try:
        torn = path.exists() and path.stat().st_size > 0 and _last_byte(path) != b"\n"
        with open(path, "a") as f:
            f.write(("\n" if torn else "") + "".join(json.dumps(r) + "\n" for r in rows))
    except OSError as e:
        raise write_error(path, e) from None


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (a run killed while writing) is dropped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class DirLock:
    """An exclusive lock on a directory for one live process (fcntl.flock on DIR/.lock, holding its pid).

    The system drops it when the process ends, however it ends, so a crash never leaves it behind."""

    def __init__(self, folder: str | Path):
        self.path, self.fd = Path(folder) / ".lock", None

    def acquire(self) -> "DirLock":
        import fcntl

        from .errors import ConfigError

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"another selfsup process (pid {holder}) is using {self.path.parent}; wait for it to "
                              f"finish, stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the lock
            self.fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
