"""Cost against dataset size: preparing a folder, training from disk and from RAM, feature extraction, kNN and
label propagation at 10k, 100k and 1M points, each with its peak private memory; and the measurements behind the
choices (the JPEG decoder, the nearest-neighbour library, the index's accuracy against exact search on MNIST).

    python bench/scale.py                          # every part (about 40 minutes on 2 cores)
    python bench/scale.py --parts prepare train    # some parts: decoders prepare train features search ann mnist

Each measurement runs in its own process, so its peak private memory (anonymous RSS: what the process holds
itself, not the page cache of a memory map it reads) is its own. Needs ../shared/data (the CIFAR-10 copy) for
the folder and training parts, and MNIST (`selfsup data fetch mnist`) for the accuracy part. Scratch files go to
--work (default /tmp/selfsup-scale): a 1M-image memory map takes 3 GB. Writes bench/results/scale.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg75"
SIZES = (10_000, 100_000, 1_000_000)


# ---- child side: one measurement, its peak private memory -------------------------------------------------------

def anon_mb(pid: str = "self") -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # a child that just ended
        pass
    return 0.0


def tree_anon_mb() -> float:
    """Anonymous RSS of this process and its child processes (prepare's decoding workers)."""
    kids = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            kids |= set((task / "children").read_text().split())
        except OSError:
            pass
    return anon_mb() + sum(anon_mb(k) for k in kids)


class Peak:
    """The largest anonymous RSS of this process and its children seen, sampled every 20 ms on a thread."""

    def __init__(self):
        self.mb, self.stop = tree_anon_mb(), False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            self.mb = max(self.mb, tree_anon_mb())
            time.sleep(0.02)

    def done(self) -> float:
        self.stop = True
        self.thread.join()
        return round(max(self.mb, tree_anon_mb()), 1)


def clustered(n: int, dim: int = 128, classes: int = 100, seed: int = 0):
    """Synthetic features: `classes` Gaussian clusters in `dim` dimensions, noisy enough to overlap."""
    import torch

    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(12345))
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y]
    for i in range(0, n, 100_000):  # in place, in blocks: no second (n, dim) temporary
        x[i:i + 100_000] += 2.0 * torch.randn(min(100_000, n - i), dim, generator=g)
    return x, y


def child(spec: dict) -> dict:
    part = spec["part"]
    if part == "prepare":
        from selfsup.data.prepare import prepare

        t0 = time.perf_counter()
        peak = Peak()
        os.environ["SELFSUP_DATA"] = spec["root"]
        prepare(spec["folder"], spec.get("size"), workers=spec.get("workers"), progress=False, log=lambda *_: None)
        s = time.perf_counter() - t0
        return {"seconds": round(s, 2), "img_per_s": round(spec["files"] / s), "peak_private_mb": peak.done()}
    if part == "train":
        return train_child(spec)
    if part == "features":
        from selfsup.backbones import BACKBONES
        from selfsup.evaluate.features import extract_features

        images = np.memmap(spec["images"], np.uint8, "r", shape=(spec["n"], 3, 32, 32))
        enc = BACKBONES.get("small_cnn")(in_channels=3, width=32, image_size=32)
        extract_features(enc, images[:2048])  # warm-up
        peak = Peak()
        t0 = time.perf_counter()
        f = extract_features(enc, images)
        s = time.perf_counter() - t0
        return {"n": spec["n"], "dim": f.shape[1], "seconds": round(s, 2), "img_per_s": round(spec["n"] / s),
                "peak_private_mb": peak.done()}
    if part == "search":
        return search_child(spec)
    if part == "ann":
        return ann_child(spec)
    raise ValueError(part)


def train_child(spec: dict) -> dict:
    from selfsup.config import PretrainConfig
    from selfsup.data import ImageSet
    from selfsup.data import batches as batches_mod
    from selfsup.train import pretrain

    peak = Peak()
    images = np.memmap(spec["images"], np.uint8, "r", shape=(spec["n"], 3, 32, 32))
    if spec["where"] == "disk":
        batches_mod.ON_DEVICE_BYTES = 0  # read every batch from the memory map, whatever its size
    data = ImageSet("bench", images, np.full(spec["n"], -1, np.int64))
    with tempfile.TemporaryDirectory() as out:
        cfg = PretrainConfig(dataset="bench", method="simclr", backbone="small_cnn", backbone_args={"width": 32},
                             batch_size=256, steps=spec["steps"], out=out, monitor_per_class=0, monitor_seconds=0,
                             checkpoint_minutes=0, seed=0)
        path = pretrain(cfg, data, show_progress=False)
        import torch

        summary = torch.load(path, weights_only=False)["summary"]
    return {"n": spec["n"], "where": spec["where"], "steps": summary["steps"], "img_per_s": summary["img_per_s"],
            "seconds": summary["seconds"], "peak_private_mb": peak.done()}


def search_child(spec: dict) -> dict:
    """kNN evaluation (10,000 queries against N labeled points) and label propagation (a graph over N points,
    1,000 labels, 10,000 queries voting), both on clustered 128-d features."""
    import torch

    from selfsup.evaluate.knn import knn_predict
    from selfsup.evaluate.propagate import LabelGraph

    n, method = spec["n"], spec["method"]
    x, y = clustered(n)
    q, qy = clustered(10_000, seed=1)
    peak = Peak()
    t0 = time.perf_counter()
    acc_knn = (knn_predict(x, y, q, method=method) == qy).float().mean().item()
    t_knn = time.perf_counter() - t0
    labeled = torch.cat([torch.nonzero(y == c).flatten()[:10] for c in range(100)])
    t0 = time.perf_counter()
    graph = LabelGraph(x, method=method)
    t_graph = time.perf_counter() - t0
    acc_prop = (graph.predict(labeled, y[labeled], q, 100) == qy).float().mean().item()
    t_prop = time.perf_counter() - t0
    return {"n": n, "dim": 128, "method": method, "knn_seconds": round(t_knn, 2), "knn_acc": round(acc_knn, 4),
            "graph_seconds": round(t_graph, 2), "propagation_seconds": round(t_prop, 2),
            "propagation_acc": round(acc_prop, 4), "peak_private_mb": peak.done()}


def ann_child(spec: dict) -> dict:
    """One library's kNN graph (k = 10) of N clustered points: seconds, peak memory, recall against exact search
    on 1,000 sampled rows."""
    import torch

    lib = spec["lib"]
    x = torch.load(spec["features"])[0] if "features" in spec else clustered(spec["n"])[0]
    n = len(x)
    x = torch.nn.functional.normalize(x, dim=1)
    k = 10
    rows = np.random.default_rng(0).choice(n, 1000, replace=False)
    s = x[rows] @ x.T
    s[torch.arange(1000), torch.from_numpy(rows)] = -3
    truth = s.topk(k, dim=1).indices.numpy()
    del s
    xb = x.numpy()
    threads = torch.get_num_threads()
    peak = Peak()
    t0 = time.perf_counter()
    if lib == "faiss-ivf":
        from selfsup.neighbours import search

        idx = search(x, None, k, "index")[1].numpy()
    elif lib == "faiss-hnsw":
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(128, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = 40, 64
        index.add(xb)
        idx = index.search(xb, k + 1)[1][:, 1:]
    elif lib == "usearch":
        from usearch.index import Index

        index = Index(ndim=128, metric="cos", dtype="f32", connectivity=16, expansion_add=64, expansion_search=64)
        index.add(np.arange(n), xb, threads=threads)
        idx = index.search(xb, k + 1, threads=threads).keys[:, 1:]
    elif lib == "exact":
        from selfsup.neighbours import search

        idx = search(x, None, k, "exact")[1].numpy()
    else:
        raise ValueError(lib)
    seconds = time.perf_counter() - t0
    rec = float(np.mean([len(set(idx[r]) & set(truth[i])) / k for i, r in enumerate(rows)]))
    return {"n": n, "features": "MNIST, SimCLR 2 min" if "features" in spec else "clustered", "lib": lib,
            "seconds": round(seconds, 2), "recall_at_10": round(rec, 4),
            "peak_private_mb": peak.done()}


# ---- parent side ----------------------------------------------------------------------------------------------

def drop_caches() -> bool:
    """Empty the page cache (root only), so the next reads come from the disk; False where not allowed."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def run_child(spec: dict, timeout: float = 3600) -> dict:
    print(f"  {spec}", flush=True)
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode != 0:
        print(r.stderr[-3000:])
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"} | spec
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"    {out}", flush=True)
    return out


def cifar_arrays():
    train = [np.load(SHARED / f"train-{i}.npz") for i in range(1, 6)]
    test = np.load(SHARED / "test.npz")
    x = np.concatenate([t["x_train"] for t in train])
    y = np.concatenate([t["y_train"] for t in train])
    return x, y, test["x_test"], test["y_test"], [str(c) for c in train[0]["class_names"]]


def write_cifar_folder(root: Path, quality: int = 90) -> Path:
    """CIFAR-10 (the JPEG copy in ../shared/data) as train/CLASS/*.jpg and test/CLASS/*.jpg."""
    from PIL import Image

    if (root / "done").exists():
        return root
    x, y, xt, yt, names = cifar_arrays()
    for split, images, labels in (("train", x, y), ("test", xt, yt)):
        for c in names:
            (root / split / c).mkdir(parents=True, exist_ok=True)
        for i, (a, c) in enumerate(zip(images, labels)):
            Image.fromarray(a.transpose(1, 2, 0)).save(root / split / names[c] / f"{i:05d}.jpg", quality=quality)
    (root / "done").touch()
    return root


def write_generated_folder(root: Path, n: int, side: int, seed: int = 0) -> Path:
    """n JPEGs of side x side px in 100 class folders: CIFAR-10 images enlarged, shifted, flipped and tinted."""
    from PIL import Image

    if (root / "done").exists():
        return root
    x = cifar_arrays()[0]
    rng = np.random.default_rng(seed)
    for c in range(100):
        (root / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = x[rng.integers(len(x))].transpose(1, 2, 0)
        if rng.random() < 0.5:
            a = a[:, ::-1]
        im = Image.fromarray(np.ascontiguousarray(a))
        if side != 32:
            im = im.resize((side + int(rng.integers(0, side // 4)), side), Image.BICUBIC)
        tint = rng.uniform(0.8, 1.2, 3)
        im = Image.fromarray(np.clip(np.asarray(im) * tint, 0, 255).astype(np.uint8))
        im.save(root / f"c{i % 100:02d}" / f"{i:07d}.jpg", quality=90)
    (root / "done").touch()
    return root


def generated_map(path: Path, n: int, seed: int = 0) -> Path:
    """A (n, 3, 32, 32) uint8 memory map of CIFAR-10 images flipped, shifted and tinted (the 1M-image dataset)."""
    if path.exists() and path.stat().st_size == n * 3072:
        return path
    x = cifar_arrays()[0]
    rng = np.random.default_rng(seed)
    out = np.memmap(path, np.uint8, "w+", shape=(n, 3, 32, 32))
    for i in range(0, n, 50_000):
        m = min(50_000, n - i)
        a = x[rng.integers(0, len(x), m)]
        a = np.where(rng.random(m)[:, None, None, None] < 0.5, a[..., ::-1], a)
        a = np.roll(a, int(rng.integers(-3, 4)), axis=-1)
        out[i:i + m] = np.clip(a * rng.uniform(0.85, 1.15, (m, 3, 1, 1)), 0, 255).astype(np.uint8)
    out.flush()
    return path


def decoders(work: Path) -> list[dict]:
    """Per-core decode speed of each library on CIFAR-10 JPEGs (32 px, kept at 32) and on generated 128 px JPEGs
    (to 64 px), read from a warm page cache."""
    import io

    from PIL import Image

    folders = [(write_cifar_folder(work / "cifar10-jpg") / "train" / "cat", 32),
               (write_generated_folder(work / "gen128", 2000, 128), 64)]
    libs = {}

    def pillow(data, s):
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
            return np.asarray(im if im.size == (s, s) else im.resize((s, s), Image.BILINEAR))

    def pillow_draft(data, s):
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (s, s))
            im = im.convert("RGB")
            return np.asarray(im if im.size == (s, s) else im.resize((s, s), Image.BILINEAR))

    libs["Pillow"], libs["Pillow + draft (DCT scaling)"] = pillow, pillow_draft
    try:
        import simplejpeg

        def sj(data, s):
            a = simplejpeg.decode_jpeg(data, "RGB", min_height=s, min_width=s)
            return a if a.shape[:2] == (s, s) else np.asarray(Image.fromarray(a).resize((s, s), Image.BILINEAR))

        libs[f"simplejpeg {simplejpeg.__version__}"] = sj
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(1)

        def cv(data, s):
            a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            return a if a.shape[:2] == (s, s) else cv2.resize(a, (s, s), interpolation=cv2.INTER_AREA)

        libs[f"OpenCV {cv2.__version__}"] = cv
    except ImportError:
        pass
    rows = []
    for folder, side in folders:
        files = sorted(p for p in folder.rglob("*.jpg"))[:2000]
        blobs = [p.read_bytes() for p in files]
        for name, fn in libs.items():
            best = 0.0
            for _ in range(3):
                t0 = time.perf_counter()
                for b in blobs:
                    fn(b, side)
                best = max(best, len(blobs) / (time.perf_counter() - t0))
            rows.append({"files": folder.name, "to_px": side, "decoder": name, "img_per_s_per_core": round(best)})
            print(f"  {rows[-1]}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--parts", nargs="+", default=["decoders", "prepare", "train", "features", "mnist", "ann", "search"])
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "selfsup-scale"))
    ap.add_argument("--generated", type=int, default=200_000, help="JPEGs in the larger generated folder")
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--ann-sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--name", default="scale")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = Path(__file__).parent / "results" / f"{args.name}.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result |= {"command": "python bench/scale.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d"),
               "machine": machine()}
    if "decoders" in args.parts:
        print("decoders", flush=True)
        result["decoders"] = decoders(work)
    if "prepare" in args.parts:
        print("prepare", flush=True)
        rows = []
        cifar = write_cifar_folder(work / "cifar10-jpg")
        gen = write_generated_folder(work / f"gen32-{args.generated}", args.generated, 32)
        big = write_generated_folder(work / "gen128", 2000, 128)
        for name, folder, files, size in (("CIFAR-10 JPEG folder (32 px)", cifar, 60_000, None),
                                         (f"generated, {args.generated:,} JPEGs of 32 px", gen, args.generated, None),
                                         ("generated, 2,000 JPEGs of 128-159 x 128 px, to 64 px", big, 2000, 64)):
            root = work / "prepared-root"
            for cache in ("cold", "warm", "again"):  # cold: page cache emptied first; again: the unchanged folder
                if cache != "again":
                    subprocess.run(["rm", "-rf", str(root)], check=True)
                if cache == "cold" and not drop_caches():
                    continue
                r = run_child({"part": "prepare", "folder": str(folder), "root": str(root), "files": files,
                               "size": size})
                rows.append({"dataset": name, "files": files, "cache": cache} | r)
        result["prepare"] = rows
    if "train" in args.parts:
        print("train", flush=True)
        cifar = generated_map(work / "cifar50k.u8", 50_000)
        million = generated_map(work / "gen1m.u8", 1_000_000)
        rows = []
        warm = lambda f: subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)  # noqa: E731
        warm(cifar)
        for _ in range(2):  # alternating, twice: the machine's speed drifts
            for where in ("ram", "disk"):
                rows.append(run_child({"part": "train", "images": str(cifar), "n": 50_000, "where": where,
                                       "steps": args.train_steps}) | {"cache": "warm"})
        for cache in ("warm", "cold"):
            if cache == "cold" and not drop_caches():
                continue
            if cache == "warm":
                warm(million)
            rows.append(run_child({"part": "train", "images": str(million), "n": 1_000_000, "where": "disk",
                                   "steps": args.train_steps}) | {"cache": cache})
        result["train"] = rows
    if "features" in args.parts:
        print("features", flush=True)
        million = generated_map(work / "gen1m.u8", 1_000_000)
        result["features"] = [run_child({"part": "features", "images": str(million), "n": n})
                              for n in args.sizes if n <= 1_000_000]
    if "mnist" in args.parts:
        print("mnist", flush=True)
        result["mnist"] = mnist_agreement(work)
    if "ann" in args.parts:
        print("ann", flush=True)
        libs = ("faiss-ivf", "faiss-hnsw", "usearch")
        rows = []
        if (work / "mnist-feats.pt").exists():  # real features, from the mnist part
            rows += [run_child({"part": "ann", "features": str(work / "mnist-feats.pt"), "lib": lib})
                     for lib in ("exact",) + libs]
        rows += [run_child({"part": "ann", "n": n, "lib": lib}) for n in args.ann_sizes
                 for lib in (("exact",) if n <= 100_000 else ()) + libs]
        result["ann"] = rows
    if "search" in args.parts:
        print("search", flush=True)
        rows = []
        for n in args.sizes:
            rows.append(run_child({"part": "search", "n": n, "method": "auto"}))
            if n <= 100_000:
                rows.append(run_child({"part": "search", "n": n, "method": "exact"}))
        result["search"] = rows
    write(path.name, result)


def mnist_agreement(work: Path) -> dict:
    """kNN and label propagation on MNIST with exact search and with the index, on the features of an encoder
    pretrained for 2 minutes (SimCLR, the MNIST recipe)."""
    import torch

    from selfsup import defaults
    from selfsup.data import load
    from selfsup.evaluate import extract_features, label_subset, unlabeled_pool, validation_split
    from selfsup.evaluate.knn import knn_accuracy
    from selfsup.evaluate.propagate import LabelGraph
    from selfsup.factory import encoder_and_config
    from selfsup.train import pretrain

    train, test = load("mnist", "train"), load("mnist", "test")
    cfg = defaults.for_channels(1).override(dataset="mnist", minutes=2.0, steps=None, out=str(work / "mnist-run"),
                                            monitor_seconds=0)
    encoder, _ = encoder_and_config(pretrain(cfg, train, show_progress=False))
    f, tf = extract_features(encoder, train.images), extract_features(encoder, test.images)
    torch.save((f, tf), work / "mnist-feats.pt")
    ty = torch.from_numpy(test.labels)
    y = torch.from_numpy(train.labels)
    out = {"encoder": "simclr, MNIST recipe, 2 minutes", "rows": []}
    val = validation_split(train.labels, 10)
    pool = unlabeled_pool(len(train), None, val)
    for method in ("exact", "index"):
        t0 = time.perf_counter()
        knn = knn_accuracy(f, y, tf, ty, method=method)  # every training label: 60,000 points searched
        t_knn = time.perf_counter() - t0
        t0 = time.perf_counter()
        graph = LabelGraph(f[pool], method=method)
        accs = []
        for seed in range(3):
            idx = label_subset(train.labels, 10, seed, val)
            at = torch.from_numpy(np.searchsorted(pool, idx))
            accs.append((graph.predict(at, y[idx], tf, 10) == ty).float().mean().item())
        out["rows"].append({"search": method, "knn_all_labels": round(knn, 4), "knn_seconds": round(t_knn, 2),
                            "propagation_10_per_class": [round(a, 4) for a in accs],
                            "propagation_seconds": round(time.perf_counter() - t0, 2)})
        print(f"  {out['rows'][-1]}", flush=True)
    return out


if __name__ == "__main__":
    main()
