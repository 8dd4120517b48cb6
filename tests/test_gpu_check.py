"""bench/gpu_check.py, the script a GPU machine runs first, runs its dry version here: every method, precision and
optimizer through the loop, evaluation and compare on the device `eval_device` chooses (the CPU here)."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_gpu_check_runs_dry_on_a_cpu(tmp_path):
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out),
                        "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads(out.read_text())
    names = set(report["checks"])
    from selfsup.methods import METHODS

    assert {f"loop/{m}" for m in METHODS.names()} == {"/".join(n.split("/")[:2]) for n in names if n.startswith("loop/")}
    assert {n.split("/")[2] for n in names if n.startswith("loop/")} == {"bf16-mixed", "16-mixed", "32-true"}
    assert {"eval-on-device", "compare-on-device"} <= names and not report["failed"]
    assert report["checks"]["eval-on-device"]["device"] == "cpu"


def test_the_gpu_check_refuses_a_machine_without_a_gpu_unless_dry():
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "--dry-run" in r.stderr
