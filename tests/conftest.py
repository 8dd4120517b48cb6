import os

import numpy as np
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """An empty data root, so no test reads or writes the user's cache."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("SELFSUP_DATA", str(root))
    return root


@pytest.fixture
def rng():
    return np.random.default_rng(0)
