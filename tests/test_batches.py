"""The batch source: shards, data order, and resuming mid-epoch."""
from itertools import islice

import numpy as np
import pytest
import torch

from selfsup.data.batches import Batches
from selfsup.errors import ConfigError, DataError

IMAGES = np.arange(200, dtype=np.uint8).reshape(200, 1, 1, 1)


def epoch_of(b: Batches) -> torch.Tensor:
    return torch.cat([x.flatten() for x in islice(iter(b), b.steps_per_epoch)])


def test_each_epoch_deals_the_ranks_disjoint_shards_anew():
    """Within an epoch the two processes see disjoint images, each once; the next epoch deals other shards, so over
    epochs each process sees images the other saw before (a fixed shard would keep them apart forever)."""
    ranks = [Batches(IMAGES, 16, torch.device("cpu"), 3, r, 2) for r in range(2)]
    per_epoch = []
    for epoch in range(2):
        seen = [epoch_of(b) for b in ranks]
        assert len(seen[0]) == len(seen[1]) == 6 * 16
        assert not set(seen[0].tolist()) & set(seen[1].tolist())
        assert len(set(seen[0].tolist())) == len(seen[0])
        assert set(seen[0].tolist()) <= set(ranks[0].shard(epoch).tolist())
        per_epoch.append(set(seen[0].tolist()))
    assert per_epoch[0] != per_epoch[1] and per_epoch[1] & set(ranks[1].shard(0).tolist())
    assert sorted(np.concatenate([b.shard(5) for b in ranks]).tolist()) == list(range(200))
    one = Batches(IMAGES, 16, torch.device("cpu"), 3, 0, 2)
    first = next(iter(one))
    one.epoch, one.epoch_step = 1, 0
    assert not torch.equal(first, next(iter(one)))  # a new order every epoch


def test_one_process_visits_every_image_each_epoch_in_a_seeded_order():
    b = Batches(IMAGES, 20, torch.device("cpu"), 0)
    a, again = epoch_of(b), epoch_of(Batches(IMAGES, 20, torch.device("cpu"), 0))
    assert sorted(a.tolist()) == list(range(200)) and torch.equal(a, again)
    assert not torch.equal(a, epoch_of(b))  # the next epoch


def test_resume_mid_epoch_continues_the_same_order():
    whole = Batches(IMAGES, 16, torch.device("cpu"), 5)
    stream = [x for x in islice(iter(whole), 20)]  # past the end of the first epoch (12 steps)
    first = Batches(IMAGES, 16, torch.device("cpu"), 5)
    list(islice(iter(first), 7))
    state = first.state_dict()
    assert state["epoch"] == 0 and state["epoch_step"] == 7
    second = Batches(IMAGES, 16, torch.device("cpu"), 5)
    assert second.load_state_dict(state) is True
    for got, want in zip(islice(iter(second), 13), stream[7:]):
        assert torch.equal(got, want)


def test_resume_on_other_data_or_batch_is_said():
    state = Batches(IMAGES, 16, torch.device("cpu"), 5).state_dict()
    with pytest.raises(DataError, match="trained on 200"):
        Batches(IMAGES[:100], 16, torch.device("cpu"), 5).load_state_dict(state)
    with pytest.warns(UserWarning, match="not exactly"):
        assert Batches(IMAGES, 8, torch.device("cpu"), 5).load_state_dict(state) is False
    with pytest.warns(UserWarning, match="only 100 images per process: training with batch 100"):
        assert Batches(IMAGES, 128, torch.device("cpu"), 5, 0, 2).batch_size == 100
    with pytest.raises(ConfigError, match="at least 2"):
        Batches(IMAGES[:3], 16, torch.device("cpu"), 5, 0, 2)
