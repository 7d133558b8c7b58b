from types import SimpleNamespace

import pytest
import torch

from crack.errors import UserError
from crack.sampling import EpochShuffle, evaluation_sampler


def test_epoch_shuffle_depends_only_on_seed_and_epoch():
    epoch = 0
    sampler = EpochShuffle(50, seed=7, epoch=lambda: epoch)
    first = list(sampler)
    assert sorted(first) == list(range(50)) and first != sorted(first)
    torch.manual_seed(123)  # the global random state plays no part
    assert list(sampler) == first == list(EpochShuffle(50, seed=7, epoch=lambda: 0))
    epoch = 1
    assert list(sampler) != first
    assert list(EpochShuffle(50, seed=8, epoch=lambda: 0)) != first


def test_evaluation_sampler_gives_each_image_to_exactly_one_process():
    dataset = list(range(7))
    assert evaluation_sampler(dataset, None) is None
    assert evaluation_sampler(dataset, SimpleNamespace(world_size=1, global_rank=0)) is None
    shares = [
        list(evaluation_sampler(dataset, SimpleNamespace(world_size=2, global_rank=rank)))
        for rank in (0, 1)
    ]
    assert sorted(shares[0] + shares[1]) == dataset and [len(s) for s in shares] == [4, 3]
    with pytest.raises(UserError, match="every process needs one"):
        evaluation_sampler(dataset[:2], SimpleNamespace(world_size=4, global_rank=0))
