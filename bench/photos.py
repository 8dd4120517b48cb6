"""Folders of ordinary photos, written for benchmarks and for trying selfsup as a person would, and what selfsup
costs on them: the first decode's speed and the private memory of pretraining.

    python bench/photos.py write --out /tmp/photos/flat --n 300 --megapixels 1,4
    python bench/photos.py write --out /tmp/photos/classes --n 600 --megapixels 0.2,0.6 --classes
    python bench/photos.py measure --n 5000 --megapixels 12,12 --minutes 1

The photos are CIFAR-10 images (the JPEG copy in ../shared/data, else random textures) upscaled to phone sizes with
a little sensor grain, at 4:3, 3:4, 16:9 and 1:1, saved as JPEG quality 90; OUT-truth.csv beside the folder says
what a person labeling each photo would answer (its CIFAR-10 class). `write` adds what a real folder has:
a few exact copies, re-encoded, resized, cropped and colour-shifted copies, and a few broken files (a truncated
JPEG, a text file named .jpg, an empty file). `measure` writes such a flat folder, then times `selfsup data info`,
the first decode (`selfsup pretrain` reads and decodes it) and samples the pretraining process's private memory
(Private_Clean + Private_Dirty in /proc/PID/smaps_rollup, children included) every 0.2 s. `--unique 500` makes 500
photos and fills the folder with byte copies under other names: a decode costs the same whatever the photo
shows, and 5,000 distinct 12-megapixel photos take half an hour to write on 2 cores. The files were just written,
so they are read from the page cache: the figures are decode speed, not disk speed.
Writes bench/results/photos-<device_tag>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RATIOS = [(4, 3), (3, 4), (16, 9), (1, 1)]


def sources(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """n source images (n, 32, 32, 3) uint8 with labels, from the CIFAR-10 copy where it is here."""
    rng = np.random.default_rng(seed)
    try:
        sys.path.insert(0, str(SHARED))
        from cifar10 import load  # noqa: PLC0415

        x, y, names = load("train")
        idx = rng.choice(len(x), n, replace=len(x) < n)
        return x[idx].transpose(0, 2, 3, 1), y[idx], names
    except (ImportError, OSError):
        x = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8).repeat(4, 1).repeat(4, 2)
        return x, rng.integers(0, 10, n), [f"class{i}" for i in range(10)]


def photo(src: np.ndarray, megapixels: float, ratio: tuple[int, int], seed: int):
    from PIL import Image

    w = int(round((megapixels * 1e6 * ratio[0] / ratio[1]) ** 0.5))
    h = int(round(w * ratio[1] / ratio[0]))
    im = Image.fromarray(src).resize((w, h), Image.BICUBIC)
    grain = np.random.default_rng(seed).normal(0, 4, (h // 8 + 1, w // 8 + 1, 1))
    noise = np.asarray(Image.fromarray(np.uint8(np.clip(grain + 128, 0, 255)[..., 0])).resize((w, h)))
    a = np.asarray(im, np.int16) + (noise[..., None].astype(np.int16) - 128)
    return Image.fromarray(np.uint8(np.clip(a, 0, 255)))


def _write_one(task) -> str:
    i, src, mp, ratio, path, seed = task
    photo(src, mp, ratio, seed + i).save(path, "JPEG", quality=90)
    return path


def write_folder(out: Path, n: int, megapixels: tuple[float, float], classes: bool = False, seed: int = 0,
                 extras: bool = True, workers: int | None = None, unique: int | None = None) -> dict:
    """Write n photos (flat, or in class subfolders), plus planted copies and broken files. Returns what it wrote.
    `unique`: only that many are made; the rest are byte copies under other names (for speed benches, where a
    decode costs the same whatever the photo shows)."""
    out.mkdir(parents=True, exist_ok=True)
    x, y, names = sources(n, seed)
    rng = np.random.default_rng(seed)
    tasks = []
    for i in range(n):
        folder = out / names[y[i]] if classes else out
        folder.mkdir(exist_ok=True)
        tasks.append((i, x[i], float(rng.uniform(*megapixels)), RATIOS[rng.integers(len(RATIOS))],
                      str(folder / f"IMG_{i:05d}.jpg"), seed))
    made = tasks[:unique] if unique else tasks
    with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        paths = list(pool.map(_write_one, made, chunksize=4))
    for t in tasks[len(made):]:
        Path(t[4]).write_bytes(Path(paths[t[0] % len(made)]).read_bytes())
        paths.append(t[4])
    truth = out.parent / f"{out.name}-truth.csv"  # what a person labeling each photo would say, for trying selfsup
    truth.write_text("path,label\n" + "".join(f"{Path(p).relative_to(out).as_posix()},{names[y[i]]}\n"
                                                for i, p in enumerate(paths)))
    planted = {}
    if extras:
        from PIL import Image, ImageEnhance

        for kind, j in zip(("exact", "reencoded", "resized", "cropped", "colour"), range(5)):
            src = Path(paths[j])
            im = Image.open(src).convert("RGB")
            dst = src.with_name(f"copy_{kind}_{src.name}")
            if kind == "exact":
                dst.write_bytes(src.read_bytes())
            elif kind == "reencoded":
                im.save(dst, "JPEG", quality=60)
            elif kind == "resized":
                im.resize((im.width // 2, im.height // 2)).save(dst, "JPEG", quality=85)
            elif kind == "cropped":
                dx, dy = im.width // 20, im.height // 20
                im.crop((dx, dy, im.width - dx, im.height - dy)).save(dst, "JPEG", quality=90)
            else:
                ImageEnhance.Brightness(ImageEnhance.Color(im).enhance(1.4)).enhance(1.15).save(dst, "JPEG", quality=90)
            planted[str(dst.relative_to(out))] = str(src.relative_to(out))
        folder = Path(paths[0]).parent
        data = Path(paths[1]).read_bytes()
        (folder / "broken_truncated.jpg").write_bytes(data[: len(data) // 3])
        (folder / "broken_text.jpg").write_text("this is not an image\n")
        (folder / "broken_empty.jpg").write_bytes(b"")
    return {"photos": n, "megapixels": list(megapixels), "classes": classes, "planted_copies": planted,
            "broken": 3 if extras else 0, "bytes": sum(Path(p).stat().st_size for p in paths)}


def private_mb(pid: int) -> float:
    """Private memory (MB) of a process and its children, from smaps_rollup."""
    total = 0
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def timed(cmd: list[str], env: dict) -> dict:
    t0, peak = time.perf_counter(), 0.0
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while proc.poll() is None:
        peak = max(peak, private_mb(proc.pid))
        time.sleep(0.2)
    out = proc.stdout.read()
    return {"cmd": " ".join(cmd), "seconds": round(time.perf_counter() - t0, 1), "peak_private_mb": round(peak),
            "exit": proc.returncode, "tail": out[-1500:]}


def measure(args) -> None:
    root = Path(args.dir or tempfile.mkdtemp(prefix="selfsup-photos-"))
    folder = root / "flat"
    mp = tuple(float(v) for v in args.megapixels.split(","))
    t0 = time.perf_counter()
    wrote = write_folder(folder, args.n, mp, unique=args.unique) if not folder.exists() else \
        {"photos": args.n, "reused": True}
    subprocess.run(["sync"], check=False)
    wrote["write_seconds"] = round(time.perf_counter() - t0, 1)
    env = os.environ | {"SELFSUP_DATA": str(root / "data")}
    exe = str(Path(sys.executable).parent / "selfsup")
    info = timed([exe, "data", "info", f"folder:{folder}"], env)
    code = ("import time; from selfsup.data import load; t = time.perf_counter(); "
            f"d = load('folder:{folder}', 'train'); print('decoded', len(d), d.size, round(time.perf_counter() - t, 2))")
    decode = timed([sys.executable, "-c", code], env)
    seconds = float(decode["tail"].split()[-1]) if "decoded" in decode["tail"] else None
    train = timed([exe, "pretrain", "--dataset", f"folder:{folder}", "--method", "simclr", "--minutes",
                   str(args.minutes), "--out", str(root / "run"), "--overwrite", "--monitor-seconds", "0"], env)
    metrics = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()] \
        if (root / "run" / "metrics.jsonl").exists() else []
    files = sum(1 for _ in folder.iterdir())
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "folder": wrote, "files": files,
              "info": info, "decode": decode, "first_decode_seconds": seconds,
              "first_decode_photos_per_s": round(files / seconds, 1) if seconds else None, "pretrain": train,
              "steps": metrics[-1].get("step") if metrics else None,
              "img_per_s": metrics[-1].get("img_per_s") if metrics else None}
    write(f"photos-{device_tag()}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1)[:3000])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("--out", required=True)
    w.add_argument("--n", type=int, default=300)
    w.add_argument("--megapixels", default="1,4")
    w.add_argument("--classes", action="store_true")
    w.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("measure")
    m.add_argument("--n", type=int, default=5000)
    m.add_argument("--megapixels", default="12,12")
    m.add_argument("--minutes", type=float, default=1.0)
    m.add_argument("--unique", type=int, default=500, help="photos made; the others are byte copies")
    m.add_argument("--dir", help="where the folder goes (default: a new temporary folder); reused if there")
    args = p.parse_args()
    if args.cmd == "write":
        print(json.dumps(write_folder(Path(args.out), args.n, tuple(float(v) for v in args.megapixels.split(",")),
                                      args.classes, args.seed), indent=1))
    else:
        measure(args)


if __name__ == "__main__":
    main()
