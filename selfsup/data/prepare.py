"""Prepared copies of image folders: decode once, in parallel, then read from a memory map every time after.

`selfsup data prepare folder:PATH [--image-size S]` writes, under $SELFSUP_DATA/prepared/NAME-KEY/Spx/:

- images.u8: every readable image as uint8 (N, C, S, S), the splits one after another (train, unlabeled, test),
  so a split, and train+unlabeled, is a slice of one memory map: no copy in memory, whatever N is;
- labels.npy (int64, -1 unlabeled), skipped.txt (each unreadable file and why);
- manifest.json, written last: the folder's fingerprint (every file's path, label, size and mtime), the size and
  colour, the split ranges, class names, and the sha256 of each shard of SHARD images.

The work goes shard by shard in worker processes (folder.decode_files's decoder, so the pixels equal the
in-memory path's), and each finished shard is appended to progress.jsonl after its bytes are on disk: an
interrupted run goes on from the last finished shard. Running it again on an unchanged folder checks the shards'
checksums and redoes only a damaged one; a changed folder (a file added, removed or modified) is prepared again.
Every command given `--dataset folder:PATH` reads the prepared copy at its size and refuses a stale one.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import read_json, write_json, write_text
from . import folder as fol

FORMAT = 2  # 2: photos turned upright by their EXIF orientation; flat folders read at any depth
SHARD = 4096  # images per shard: the unit of work, of resuming and of checksums


def home(root: Path, data_root: Path, labels: str | Path | None = None) -> Path:
    """Where the prepared copies of folder `root` live (one subfolder per image size); a labels file's splits are
    other splits, so they have a home of their own."""
    real = root.expanduser().resolve()
    key = str(real) + (f"\0{Path(labels).expanduser().resolve()}" if labels else "")
    return data_root / "prepared" / f"{real.name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"


def fingerprint(plan: fol.Plan) -> str:
    """A digest of every file's split, path, label, size and modification time: any change shows."""
    h = hashlib.sha256()
    for split, files in plan.files.items():
        for p, y in files:
            st = p.stat()
            h.update(f"{split}\0{p.relative_to(plan.root)}\0{y}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass
class Shard:
    split: str
    start: int  # files [start, end) of the split
    end: int


def shards_of(plan: fol.Plan) -> list[Shard]:
    return [Shard(s, i, min(i + SHARD, len(f))) for s, f in plan.files.items() for i in range(0, len(f), SHARD)]


def shard_paths(plan: fol.Plan, s: Shard) -> list[Path]:
    return [f for f, _ in plan.files[s.split][s.start:s.end]]  # the shard's slice only, not the whole split


def prepare(path: str | Path, size: int | None = None, data_root: Path | None = None, workers: int | None = None,
            progress: bool = True, log=print, labels: str | Path | None = None, accelerator: str = "auto") -> Path:
    """Prepare folder `path` for training at `size` px (default: folder.train_side's): its images are kept at
    folder.store_side. Returns the copy's directory."""
    if size is not None and size < 1:
        raise DataError(f"--image-size must be a positive number of pixels, got {size}")
    p = fol.plan(path, labels=labels)
    natural, colour = natural_size(p, data_root, labels, workers)
    size = fol.store_side(natural, size, accelerator)
    fp = fingerprint(p)
    base = home(p.root, _root(data_root), labels)
    out = base / f"{size}px"
    out.mkdir(exist_ok=True)
    shards = shards_of(p)
    c = 3 if colour else 1
    row = c * size * size
    manifest = out / "manifest.json"
    if manifest.exists():
        m = read_json(manifest)
        if m.get("format") == FORMAT and m.get("fingerprint") == fp:
            damaged = [i for i, s in enumerate(m["shards"]) if _digest(out / "images.u8", s["rows"], row) != s["sha256"]]
            if not damaged:
                log(f"folder:{p.root}: up to date ({m['images']:,} images at {size} px in {out})")
                return out
            log(f"folder:{p.root}: {len(damaged)} damaged shard(s) in {out}; decoding them again")
            _repair(p, out, m, damaged, shards, size, colour, row)
            return out
        log(f"folder:{p.root} changed since it was prepared ({m.get('files', '?')} files then, "
            f"{sum(len(f) for f in p.files.values())} now); preparing it again")
        manifest.unlink()
        for f in ("images.u8", "progress.jsonl"):
            (out / f).unlink(missing_ok=True)
    head = {"format": FORMAT, "fingerprint": fp, "size": size, "colour": colour, "shards": len(shards)}
    done = _resume(out / "progress.jsonl", head)
    if done:
        log(f"folder:{p.root}: resuming after {len(done)} of {len(shards)} shards")
    else:
        (out / "images.u8").unlink(missing_ok=True)
        write_text(out / "progress.jsonl", json.dumps(head) + "\n")
    cursor = done[-1]["rows"][1] if done else 0
    total = sum(len(f) for f in p.files.values())
    first_file = sum(shards[i].end - shards[i].start for i in range(len(done)))
    t0 = time.perf_counter()
    todo = shards[len(done):]
    tasks = [(shard_paths(p, s), size, colour) for s in todo]
    bar = _bar(total, first_file, progress)
    fd = os.open(out / "images.u8", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with open(out / "progress.jsonl", "a") as log_f:
            for i, (x, bad) in zip(range(len(done), len(shards)), fol.pool_map(fol._decode_task, tasks, workers)):
                data = x.tobytes()
                os.pwrite(fd, data, cursor * row)
                os.fsync(fd)  # the bytes are on disk before the shard is marked done
                rec = {"shard": i, "rows": [cursor, cursor + len(x)], "sha256": hashlib.sha256(data).hexdigest(),
                       "skipped": bad}
                log_f.write(json.dumps(rec) + "\n")
                log_f.flush()
                os.fsync(log_f.fileno())
                done.append(rec)
                cursor += len(x)
                bar.update(shards[i].end - shards[i].start)
        os.ftruncate(fd, cursor * row)
    finally:
        os.close(fd)
        bar.close()
    seconds = time.perf_counter() - t0
    m = _finish(p, out, fp, shards, done, size, colour, natural, cursor)
    log(f"folder:{p.root}: {m['images']:,} images at {size} px in {out} "
        f"({len(m['skipped_files'])} skipped; {total - first_file:,} decoded in {seconds:.1f} s, "
        f"{(total - first_file) / max(seconds, 1e-9):,.0f} img/s)")
    return out


def _root(data_root: Path | None) -> Path:
    from . import data_root as default_root

    return Path(data_root) if data_root else default_root()


def natural_size(p: fol.Plan, data_root: Path | None = None, labels: str | Path | None = None,
                 workers: int | None = None) -> tuple[int, bool]:
    """(the most common shorter side, has colour) of plan `p`'s folder, read from the headers once and kept beside
    its copies while the folder does not change."""
    base = home(p.root, _root(data_root), labels)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only data root: scan every time
        return fol.scan(p.reference, p.root, workers)
    return _scan(p, fingerprint(p), base, workers)


def _scan(p: fol.Plan, fp: str, base: Path, workers: int | None) -> tuple[int, bool]:
    """The folder's natural size and colour, kept beside its copies while the folder does not change."""
    cached = base / "scan.json"
    if cached.exists():
        try:
            s = json.loads(cached.read_text())
            if s.get("fingerprint") == fp:
                return s["natural_size"], s["colour"]
        except (OSError, ValueError, KeyError):
            pass
    natural, colour = fol.scan(p.reference, p.root, workers)
    try:
        write_json(cached, {"fingerprint": fp, "natural_size": natural, "colour": colour})
    except OSError:
        pass
    return natural, colour


def _resume(progress: Path, head: dict) -> list[dict]:
    """The shards finished by an interrupted run with the same folder, size and colour (a prefix, in order)."""
    if not progress.exists():
        return []
    lines = progress.read_text().splitlines()
    try:
        if not lines or json.loads(lines[0]) != head:
            return []
    except ValueError:
        return []
    done = []
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except ValueError:  # a line cut short by the interruption
            break
        if rec.get("shard") != len(done):
            break
        done.append(rec)
    return done


def _digest(images: Path, rows: list[int], row: int) -> str:
    h = hashlib.sha256()
    with open(images, "rb") as f:
        f.seek(rows[0] * row)
        left = (rows[1] - rows[0]) * row
        while left > 0:
            block = f.read(min(left, 1 << 24))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def _repair(p: fol.Plan, out: Path, m: dict, damaged: list[int], shards: list[Shard], size: int, colour: bool,
            row: int) -> None:
    fd = os.open(out / "images.u8", os.O_RDWR)
    try:
        for i in damaged:
            s, rec = shards[i], m["shards"][i]
            x, _ = fol._decode_task((shard_paths(p, s), size, colour))
            if len(x) != rec["rows"][1] - rec["rows"][0] or hashlib.sha256(x.tobytes()).hexdigest() != rec["sha256"]:
                raise DataError(f"shard {i} of {out} decodes differently now; delete {out} and prepare again")
            os.pwrite(fd, x.tobytes(), rec["rows"][0] * row)
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish(p: fol.Plan, out: Path, fp: str, shards: list[Shard], done: list[dict], size: int, colour: bool,
            natural: int, n: int) -> dict:
    labels, skipped, ranges = [], [], {}
    for s, rec in zip(shards, done):
        files = p.files[s.split][s.start:s.end]
        bad = {i: why for i, why in rec["skipped"]}
        labels += [y for i, (_, y) in enumerate(files) if i not in bad]
        skipped += [(str(files[i][0].relative_to(p.root)), why) for i, why in sorted(bad.items())]
        lo, hi = ranges.get(s.split, rec["rows"])
        ranges[s.split] = [min(lo, rec["rows"][0]), max(hi, rec["rows"][1])]
    if n == 0:
        raise DataError(f"none of the image files in {p.root} could be read; see {out / 'progress.jsonl'}")
    np.save(out / "labels.npy", np.array(labels, np.int64))
    write_text(out / "skipped.txt", "".join(f"{path}\t{why}\n" for path, why in skipped))
    m = {"format": FORMAT, "folder": str(p.root.resolve()), "layout": p.layout, "fingerprint": fp,
         "files": sum(len(f) for f in p.files.values()), "images": n, "size": size, "colour": colour,
         "channels": 3 if colour else 1, "natural_size": natural, "splits": ranges, "classes": p.classes,
         "skipped_files": [path for path, _ in skipped],
         "shards": [{"split": s.split, "files": [s.start, s.end], "rows": rec["rows"], "sha256": rec["sha256"]}
                    for s, rec in zip(shards, done)],
         "decoder": fol.decoder_versions()}
    write_json(out / "manifest.json", m)  # last: its presence marks a complete copy
    (out / "progress.jsonl").unlink(missing_ok=True)
    return m


def _bar(total: int, initial: int, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="prepare", disable=not show, file=sys.stderr,
                smoothing=0.1, mininterval=0.5, unit_scale=False, dynamic_ncols=True)


def find(path: str | Path, side: int, data_root: Path | None = None, labels: str | Path | None = None
         ) -> Path | None:
    """The complete prepared copy of folder `path` whose images are `side` px (folder.store_side), else None."""
    base = home(Path(path), _root(data_root), labels)
    copies = [read_json(f) | {"dir": f.parent} for f in sorted(base.glob("*px/manifest.json"))] if base.is_dir() else []
    found = [m["dir"] for m in copies if m.get("format") == FORMAT and m["size"] == side]
    return found[0] if found else None


def open_prepared(copy: Path, path: str | Path, splits: list[str], strict: bool = False,
                  labels: str | Path | None = None):
    """(images, labels, classes, relative paths) of `splits` from a prepared copy: a slice of the memory map where
    the splits are adjacent (train+unlabeled), else a copy. Refuses a copy of a folder that has changed since."""
    m = read_json(copy / "manifest.json")
    p = fol.plan(path, labels=labels)
    if fingerprint(p) != m["fingerprint"]:
        raise DataError(f"folder:{p.root} changed since it was prepared in {copy}; run "
                        f"`selfsup data prepare folder:{path}` again")
    missing = [s for s in splits if s not in m["splits"]]
    if missing:
        fol.plan(path, splits, labels)  # the layout's own one-line error
        raise DataError(f"folder:{p.root} has no {missing[0]} split")
    if strict and m["skipped_files"]:
        raise DataError(f"{len(m['skipped_files'])} unreadable image file(s) in {p.root}, first: "
                        f"{m['skipped_files'][0]} (listed in {copy / 'skipped.txt'}); remove them or drop --strict")
    if m["skipped_files"]:
        warnings.warn(f"skipped {len(m['skipped_files'])} unreadable image file(s) in {p.root} when it was prepared, "
                      f"first: {m['skipped_files'][0]} (all listed in {copy / 'skipped.txt'})", stacklevel=3)
    images = np.memmap(copy / "images.u8", np.uint8, "r", shape=(m["images"], m["channels"], m["size"], m["size"]))
    y = np.load(copy / "labels.npy")
    spans = [m["splits"][s] for s in splits]
    skipped = set(m["skipped_files"])
    paths = [q.relative_to(p.root).as_posix() for s in splits for q, _ in p.files[s]]
    paths = [q for q in paths if q not in skipped]
    if all(a[1] == b[0] for a, b in zip(spans, spans[1:])):  # adjacent: one slice
        lo, hi = spans[0][0], spans[-1][1]
        return images[lo:hi], y[lo:hi], m["classes"], paths
    return (np.concatenate([images[a:b] for a, b in spans]), np.concatenate([y[a:b] for a, b in spans]),
            m["classes"], paths)
