"""`python -m build` makes a wheel and an sdist; the wheel, installed in a fresh venv after torch, gives a
working `selfsup` with its type hints."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv(tmp_path):
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp_path / "dist"), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel, = (tmp_path / "dist").glob("selfsup-*.whl")
    assert len(list((tmp_path / "dist").glob("selfsup-*.tar.gz"))) == 1
    names = zipfile.ZipFile(wheel).namelist()
    assert "selfsup/py.typed" in names and any(n.endswith("licenses/LICENSE") for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in meta and "Version: " in meta
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    import torch

    subprocess.run(pip + [f"torch=={torch.__version__.split('+')[0]}"], check=True, timeout=600)  # torch first
    subprocess.run(pip + [str(wheel)], check=True, timeout=600)
    r = subprocess.run([str(venv / "bin" / "selfsup"), "methods"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "simclr" in r.stdout, r.stderr[-2000:]
