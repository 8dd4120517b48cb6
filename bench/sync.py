"""What waiting on the device at every step costs: the training loop with and without a per-step host sync.

Modes, each the library's own `pretrain` on the same config, data and steps, alternated over --rounds:
  selfsup        today's loop: the host reads the device only at sync points (about every 2 s);
  item-per-step  the same loop plus one `loss.item()` per step (what the loop did before);
  before         the loop as it was before sync points (git commit --before, run from an exported copy):
                 `loss.item()` every step and, on several processes, two all-reduces per step.
img/s is the median over the run's logged windows after its warm-up steps.
Writes bench/results/sync-<device_tag>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402

ROOT = Path(__file__).parent.parent
CASES = {  # name: (PretrainConfig fields, steps, warm-up steps left out)
    "small_cnn-w16-mnist": (dict(dataset="mnist", backbone_args={"width": 16}, batch_size=256, lr=4e-3,
                                 method_args={"temperature": 1.0}), 400, 50),
    "resnet18-32px-random": (dict(dataset="random32", backbone="resnet18", batch_size=64), 60, 15),
}

RUNNER = r"""
import json, sys, tempfile, numpy as np, torch
from pathlib import Path
from selfsup.config import PretrainConfig
from selfsup.data import ImageSet, load
fields, steps, warmup, per_step_item = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
if fields["dataset"] == "random32":
    x = np.random.default_rng(0).integers(0, 256, (4096, 3, 32, 32), dtype=np.uint8)
    data = ImageSet("random32", x, np.full(4096, -1, np.int64))
else:
    data = load(fields["dataset"], "train").subset(np.arange(20000))
if per_step_item:
    import selfsup.optim as optim
    real = optim.NonFiniteGuard.check
    def check(self, loss, step):
        loss.item()  # the host waits for the device, every step
        return real(self, loss, step)
    optim.NonFiniteGuard.check = check
from selfsup.train import pretrain
with tempfile.TemporaryDirectory() as out:
    cfg = PretrainConfig(**fields | {"steps": steps, "out": out, "monitor_seconds": 0, "checkpoint_minutes": 1e9})
    pretrain(cfg, data, show_progress=False)
    hist = [json.loads(l) for l in open(Path(out) / "metrics.jsonl")]
    late = [h["img_per_s"] for h in hist if h.get("step", 0) > warmup and "img_per_s" in h]
    print(json.dumps({"img_per_s": float(np.median(late)), "windows": len(late)}))
"""


def run_one(tree: Path, fields: dict, steps: int, warmup: int, per_step_item: bool) -> dict:
    env = os.environ | {"PYTHONPATH": str(tree)}
    r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(fields), str(steps), str(warmup),
                        "1" if per_step_item else "0"], capture_output=True, text=True, env=env, timeout=900)
    if r.returncode:
        raise SystemExit(f"a run failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="48b6208", help="git commit of the loop with a per-step sync")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of every mode")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every case's steps and warm-up")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "selfsup"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
        for case in args.cases.split(","):
            fields, steps, warmup = CASES[case]
            steps, warmup = round(steps * args.scale), round(warmup * args.scale)
            modes = {"selfsup": (ROOT, False), "item-per-step": (ROOT, True), "before": (before, False)}
            got = {m: [] for m in modes}
            for r in range(args.rounds):
                for mode, (tree, item) in modes.items():
                    got[mode].append(run_one(tree, fields, steps, warmup, item)["img_per_s"])
                    print(f"{case} round {r} {mode}: {got[mode][-1]:.0f} img/s", flush=True)
            med = {m: statistics.median(v) for m, v in got.items()}
            results[case] = {"config": fields, "steps": steps, "warmup": warmup, "img_per_s": got, "median": med,
                             "gain_over_item_per_step": round(med["selfsup"] / med["item-per-step"], 3),
                             "gain_over_before": round(med["selfsup"] / med["before"], 3)}
    write(f"sync-{device_tag()}.json", {"command": "python " + " ".join(sys.argv), "machine": machine(),
                                        "cases": results})


if __name__ == "__main__":
    main()
