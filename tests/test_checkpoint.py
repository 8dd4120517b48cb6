"""Checkpoints of format 1 (written before each part of a run saved its own slice) still load: for evaluation,
for `embed`, and to resume. The files in tests/data/format1 were written by that version of selfsup."""
import shutil
from pathlib import Path

import torch

from selfsup import checkpoint
from selfsup.config import PretrainConfig
from selfsup.data import load
from selfsup.evaluate import extract_features
from selfsup.factory import load_encoder
from selfsup.train import pretrain

OLD = Path(__file__).parent / "data" / "format1"


def test_format1_checkpoints_are_upgraded_on_reading():
    state = checkpoint.load(OLD / "simclr" / "checkpoints" / "last.pt")
    assert state["format"] == checkpoint.FORMAT and state["budget"]["step"] == 2 and state["final"]
    assert state["encoder"] == {"backbone": "small_cnn", "backbone_args": {"width": 4}, "in_channels": 1,
                                "image_size": 8, "value_range": (0.0, 1.0), "input_transform": None}
    assert state["batches"]["images"] == len(load("digits")) and len(state["run"]["history"]) >= 1


def test_format1_encoders_load_with_their_input_transform():
    encoder, cfg = load_encoder(OLD / "simclr")
    assert cfg.method == "simclr" and encoder.image_size == 8
    assert extract_features(encoder, load("digits", "test").images[:4]).shape == (4, 32)
    colour, cfg = load_encoder(OLD / "colorization")
    assert colour.spec.input_transform == "lightness" and colour.in_channels == 3 and colour.first_conv().in_channels == 1
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8).numpy()
    assert extract_features(colour, x).shape == (4, 32)


def test_a_format1_run_resumes(tmp_path):
    run = tmp_path / "simclr"
    shutil.copytree(OLD / "simclr", run)
    checkpoint.remove(run / "checkpoints" / "last.pt")  # as if it had stopped after step 1
    cfg = PretrainConfig.from_dict(checkpoint.load(run)["config"])
    path = pretrain(cfg.override(out=str(run)), load("digits"), show_progress=False, resume=True)
    state = torch.load(path, weights_only=False)
    assert state["format"] == checkpoint.FORMAT and state["budget"]["step"] == 2 and state["summary"]["resumed"]
