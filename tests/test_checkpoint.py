"""Checkpoints of format 1 (written before each part of a run saved its own slice) still load: for evaluation,
for `embed`, and to resume. The files in tests/data/format1 were written by that version of selfsup."""
import shutil
from pathlib import Path

import pytest
import torch

from selfsup import checkpoint
from selfsup.config import PretrainConfig
from selfsup.data import load
from selfsup.evaluate import extract_features
from selfsup.factory import encoder_and_config
from selfsup.train import pretrain

OLD = Path(__file__).parent / "data" / "format1"


def test_format1_checkpoints_are_upgraded_on_reading():
    state = checkpoint.load(OLD / "simclr" / "checkpoints" / "last.pt")
    assert state["format"] == checkpoint.FORMAT and state["budget"]["step"] == 2 and state["final"]
    assert state["encoder"] == {"backbone": "small_cnn", "backbone_args": {"width": 4}, "in_channels": 1,
                                "image_size": 8, "value_range": (0.0, 1.0), "input_transform": None}
    assert state["batches"]["images"] == len(load("digits")) and len(state["run"]["history"]) >= 1


def test_format1_encoders_load_with_their_input_transform():
    encoder, cfg = encoder_and_config(OLD / "simclr")
    assert cfg.method == "simclr" and encoder.image_size == 8
    assert extract_features(encoder, load("digits", "test").images[:4]).shape == (4, 32)
    colour, cfg = encoder_and_config(OLD / "colorization")
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


# --- Hostile and malformed files: nothing runs, every failure is one line ---------------------------------------

class RunsCode:
    """Unpickling this calls os.system: a file that carries it must never be loaded."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def one_line(capsys, argv):
    from selfsup.cli import main

    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    import pickle

    made = tmp_path / "pwned"
    zipped = tmp_path / "evil.pt"
    torch.save({"config": {}, "method": {}, "x": RunsCode(made)}, zipped)  # torch's zip format
    plain = tmp_path / "evil-plain.pt"
    plain.write_bytes(pickle.dumps({"config": {}, "method_state": RunsCode(made)}))  # a bare pickle
    for path, says in ((zipped, "it asks for"), (plain, "a raw pickle")):
        line = one_line(capsys, ["eval", "--checkpoint", str(path)])
        assert "never loads such files" in line and says in line, line
        assert not made.exists()


def test_a_dataset_pickle_that_would_run_code_is_refused(tmp_path):
    import gzip
    import pickle

    from selfsup.data import load
    from selfsup.errors import DataError

    made = tmp_path / "pwned"
    (tmp_path / "mnist").mkdir()
    with gzip.open(tmp_path / "mnist" / "mnist.pkl.gz", "wb") as f:
        pickle.dump(RunsCode(made), f)
    with pytest.raises(DataError, match="not a readable mnist.pkl.gz"):
        load("mnist", "train", tmp_path)
    assert not made.exists()


def malformed(tmp_path) -> dict:
    good = checkpoint.load(OLD / "simclr" / "checkpoints" / "last.pt")
    old = torch.load(OLD / "simclr" / "checkpoints" / "last.pt", weights_only=False)
    return {
        "missing in_channels": ({k: v for k, v in old.items() if k != "in_channels"}, "damaged selfsup checkpoint (no 'in_channels')"),
        "a state dict alone": (good["method"], "holds only weights (a state dict of"),
        "another project's file": ({"model": good["method"], "epoch": 3}, "not a selfsup checkpoint (it holds epoch, model)"),
        "config of the wrong type": (good | {"config": ["simclr"]}, "damaged selfsup checkpoint (config is a list)"),
        "a list": ([1, 2, 3], "not a selfsup checkpoint (it holds list)"),
    }


def test_every_malformed_checkpoint_is_one_line(tmp_path, capsys):
    for i, (name, (content, message)) in enumerate(malformed(tmp_path).items()):
        path = tmp_path / f"bad-{i}.pt"
        torch.save(content, path)
        assert message in one_line(capsys, ["eval", "--checkpoint", str(path)]), name
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "is empty" in one_line(capsys, ["embed", "--checkpoint", str(empty), "--out", str(tmp_path / "m.png")])
