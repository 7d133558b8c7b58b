"""Which images each process sees, in which order: exact resumes and exact DDP evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence, Sized

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Sampler

from crack.errors import UserError


def derived_seed(*keys: int) -> int:
    """A 32-bit seed that depends on all of ``keys`` (e.g. seed, epoch, rank), none colliding."""
    return int(np.random.SeedSequence(keys).generate_state(1)[0])


class EpochShuffle(Sampler):
    """A random order of ``range(size)`` that depends only on ``(seed, epoch)``.

    With more than one of ``variants`` (orientations of an image, see
    `crack.preprocessing.Augmentation.variants`), it yields ``(index, variant)`` pairs, the
    variant drawn from the same ``(seed, epoch)``: every dataset, stored or not, then shows an
    image in the same orientation in the same epoch.

    ``torch``'s ``RandomSampler`` draws each epoch's order from the global random state, which a
    resumed run does not have, so it would see different batches than an uninterrupted one. The
    epoch is read when iteration starts (from the trainer) rather than set through ``set_epoch``:
    Lightning creates the first iterator of a run, and of a resumed run, before it calls
    ``set_epoch``.

    Under DDP Lightning wraps this sampler in a ``DistributedSamplerWrapper``, which gives each
    process its share of this same order.
    """

    def __init__(
        self, size: int, seed: int, epoch: Callable[[], int], variants: Sequence[int] = (0,)
    ) -> None:
        self.size = size
        self.seed = seed
        self.epoch = epoch
        self.variants = list(variants)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch()))
        order = torch.randperm(self.size, generator=generator).tolist()
        if len(self.variants) == 1:
            return iter(order)
        drawn = torch.randint(len(self.variants), (self.size,), generator=generator).tolist()
        return iter([(i, self.variants[drawn[i]]) for i in order])


def evaluation_sampler(dataset: Sized, trainer: L.Trainer | None) -> Sampler[int] | None:
    """Under DDP, each image of ``dataset`` on exactly one process; otherwise None (in order).

    Lightning's default ``DistributedSampler`` pads the processes' shares to equal length with
    repeated images, which would count them twice in the validation and test metrics. This one
    does not pad, so the shares may differ by one image; that is safe in evaluation, where DDP
    synchronises only on the first batch.
    """
    if trainer is None or trainer.world_size <= 1:
        return None
    if len(dataset) < trainer.world_size:
        raise UserError(
            f"{len(dataset)} evaluation images cannot be shared by {trainer.world_size} "
            "processes: every process needs one. Use fewer devices or a larger data.split."
        )
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
