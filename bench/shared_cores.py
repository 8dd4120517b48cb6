"""Two `selfsup pretrain` runs on the same cores: each alone, both together, before and after selfsup decides its threads.

Policies (the environment each run gets):
  torch    SELFSUP_THREADS=torch: torch's default threads (every core), OpenMP's default wait policy
  passive  as torch, with OMP_WAIT_POLICY=PASSIVE (fair when shared, slower alone)
  auto     selfsup decides its threads from the cores and the busy processes on them (selfsup/threads.py)
For each policy: one run alone, then two runs started together, each for the same wall clock.
img/s of a run = images it saw / its training seconds (summary.json). Writes bench/results/shared-cores-<tag>-<case>.json.

    python bench/shared_cores.py [--seconds 40] [--case small_cnn|resnet18] [--policies torch,auto]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import device_tag, machine, write  # noqa: E402

CASES = {  # the demo's network on MNIST, and ResNet-18 on CIFAR-10 (or random colour images when it is absent)
    "small_cnn": ["--dataset", "mnist", "--backbone", "small_cnn", "--backbone-args", "width=16", "--batch-size", "256"],
    "resnet18": ["--dataset", "cifar10", "--backbone", "resnet18", "--batch-size", "64"],
}
POLICIES = {"torch": {"SELFSUP_THREADS": "torch"}, "passive": {"SELFSUP_THREADS": "torch", "OMP_WAIT_POLICY": "PASSIVE"},
            "auto": {}}


def start(case: str, seconds: float, policy: str, out: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SELFSUP_THREADS", "OMP_WAIT_POLICY")}
    cmd = [sys.executable, "-m", "selfsup", "pretrain", *CASES[case], "--minutes", str(seconds / 60), "--out", str(out),
           "--monitor-seconds", "0", "--checkpoint-minutes", "1000"]
    return subprocess.Popen(cmd, env=env | POLICIES[policy], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen, out: Path) -> dict:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"selfsup pretrain failed ({proc.returncode}): {err.strip()[-500:]}")
    s = json.loads((out / "summary.json").read_text())
    return {"img_per_s": s["img_per_s"], "steps": s["steps"], "threads": s.get("threads"), "precision": s["precision"]}


def measure(case: str, seconds: float, policy: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        alone = result(start(case, seconds, policy, Path(tmp) / "alone"), Path(tmp) / "alone")
        procs = [start(case, seconds, policy, Path(tmp) / f"both{i}") for i in range(2)]
        both = [result(p, Path(tmp) / f"both{i}") for i, p in enumerate(procs)]
    total = sum(b["img_per_s"] for b in both)
    return {"alone": alone, "together": both, "together_total_img_per_s": round(total, 1),
            "together_share_of_alone": round(total / alone["img_per_s"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=40.0, help="wall clock of every run")
    ap.add_argument("--case", default="small_cnn", choices=sorted(CASES))
    ap.add_argument("--policies", default="torch,passive,auto")
    ap.add_argument("--name", default=None, help="result file suffix (default: the case)")
    args = ap.parse_args()
    results = {}
    for policy in args.policies.split(","):
        results[policy] = measure(args.case, args.seconds, policy)
        r = results[policy]
        each = " + ".join(f"{b['img_per_s']:.1f}" for b in r["together"])
        print(f"{policy:8s} alone {r['alone']['img_per_s']:8.1f} img/s | together {each} = "
              f"{r['together_total_img_per_s']:.1f} ({r['together_share_of_alone']:.0%} of alone)", flush=True)
    path = write(f"shared-cores-{device_tag()}-{args.name or args.case}.json",
                 {"machine": machine(), "case": args.case, "args": CASES[args.case], "seconds": args.seconds,
                  "policies": POLICIES, "results": results})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
