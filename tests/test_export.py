"""Exported encoders run without selfsup and give selfsup's features; the safetensors export round-trips exactly;
ResNet trunks carry torchvision's names (checked against torchvision's own list, kept in tests/data)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup import load_encoder
from selfsup.backbones import BACKBONES
from selfsup.cli import main
from selfsup.config import PretrainConfig
from selfsup.data import ImageSet
from selfsup.export import export, torchvision_names
from selfsup.train import pretrain

HERE = Path(__file__).parent

# Runs in a fresh interpreter where `import selfsup` fails: the exported files must stand on their own.
WITHOUT_SELFSUP = r"""
import sys
sys.modules["selfsup"] = None
import json, numpy as np, torch, onnxruntime
folder, x_path = sys.argv[1], sys.argv[2]
xs = np.load(x_path, allow_pickle=False)
meta = json.load(open(folder + "/encoder.json"))
out = {}
if meta["format"] == "torchscript":
    model = torch.jit.load(folder + "/encoder.torchscript.pt")
    for b in (1, 7):
        out[str(b)] = model(torch.from_numpy(xs[:b])).detach().numpy()
else:
    session = onnxruntime.InferenceSession(folder + "/encoder.onnx")
    for b in (1, 7):
        out[str(b)] = session.run(None, {"images": xs[:b]})[0]
np.savez(folder + "/features.npz", **out)
"""


def trained(tmp_path, method, channels, **kw):
    x = np.random.default_rng(0).integers(0, 256, (96, channels, 12, 12), dtype=np.uint8)
    cfg = PretrainConfig(dataset="random", method=method, steps=2, batch_size=32, monitor_seconds=0,
                         out=str(tmp_path / "run"), **kw)
    pretrain(cfg, ImageSet("random", x, np.zeros(96, np.int64)), show_progress=False)
    return tmp_path / "run"


CASES = {
    "simclr-small_cnn-grey": ("simclr", 1, dict(backbone_args={"width": 4})),
    "colorization-rgb": ("colorization", 3, dict(backbone_args={"width": 4})),  # the lightness transform inside
    "byol-resnet18-rgb": ("byol", 3, dict(backbone="resnet18", backbone_args={"width": 8})),
    "mae-vit_tiny-rgb": ("mae", 3, dict(backbone="vit_tiny", backbone_args={"depth": 1})),  # tokens, SDPA, positions
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exported_file_runs_without_selfsup_and_matches(tmp_path, case, fmt):
    method, channels, kw = CASES[case]
    run = trained(tmp_path, method, channels, **kw)
    out = tmp_path / fmt
    export(run, fmt, out)
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["input"]["shape"] == ["batch", channels, 12, 12] and meta["encoder"]["in_channels"] == channels
    xs = torch.rand(7, channels, 12, 12, generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "x.npy", xs.numpy())
    r = subprocess.run([sys.executable, "-c", WITHOUT_SELFSUP, str(out), str(tmp_path / "x.npy")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    got = np.load(out / "features.npz")
    encoder = load_encoder(run)
    with torch.no_grad():
        for b in (1, 7):
            want = encoder(xs[:b]).numpy()
            assert got[str(b)].shape == want.shape
            np.testing.assert_allclose(got[str(b)], want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
def test_safetensors_export_round_trips_exactly(tmp_path, case):
    method, channels, kw = CASES[case]
    run = trained(tmp_path, method, channels, **kw)
    export(run, "safetensors", tmp_path / "st")
    a, b = load_encoder(run), load_encoder(tmp_path / "st")
    assert a.spec == b.spec
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.rand(3, channels, 12, 12)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


TORCHVISION = json.loads((HERE / "data" / "torchvision_resnet_names.json").read_text())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_names_cover_every_trunk_parameter(name):
    """With the ImageNet stem the trunk is torchvision's to the letter: every name and shape but the classifier."""
    ours = BACKBONES.build(name, in_channels=3, stem="imagenet")
    theirs = {k: tuple(v) for k, v in TORCHVISION[name].items() if not k.startswith("fc.")}
    mapping = torchvision_names(ours)
    state = ours.state_dict()
    assert sorted(mapping.values()) == sorted(theirs)
    for k, tv in mapping.items():
        assert tuple(state[k].shape) == theirs[tv], (k, tv)


def test_a_resnet_export_writes_torchvision_names(tmp_path):
    from safetensors.torch import load_file

    run = trained(tmp_path, "simclr", 3, backbone="resnet18", backbone_args={"width": 8})
    written = export(run, "safetensors", tmp_path / "st")
    tv = load_file(written["torchvision"])
    assert "conv1.weight" in tv and "layer4.1.bn2.running_var" in tv and not any(k.startswith("fc.") for k in tv)


def test_export_errors_are_one_line(tmp_path, capsys):
    run = trained(tmp_path, "simclr", 1, backbone_args={"width": 4})
    assert main(["export", str(run), "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    assert "unknown export format 'tflite'" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    export(run, "onnx", tmp_path / "onnx")
    with pytest.raises(Exception, match="holds a onnx export"):
        load_encoder(tmp_path / "onnx")
