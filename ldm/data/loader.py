"""A training loader whose every random draw is a function of (seed, epoch, position).

Each sample index travels with its own seed, so crops, flips, scales and noise do not depend
on the global RNG, on the number of workers, or on how far a prefetching loader ran ahead.
The loader also tells Lightning how far an epoch got (state_dict / load_state_dict), so a run
resumed from a mid-epoch checkpoint sees exactly the batches an uninterrupted run would.
Under DDP it shards by rank itself (main.py turns Lightning's sampler replacement off).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads nearby integers over 63 bits


def mix_seed(*values: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() is salted per process)."""
    h = 0
    for v in values:
        h = ((h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * _MIX + 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


class SeededSampler(Sampler):
    """Yields (index, sample_seed) pairs: a per-epoch permutation (or the plain order), sharded by rank."""

    def __init__(self, n: int, seed: int, shuffle: bool) -> None:
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start = 0  # positions of this rank's shard already consumed (mid-epoch resume)

    def _shard(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        rank, world = self._shard()
        return len(range(rank, self.n, world))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(self.n)
        rank, world = self._shard()
        positions = list(range(rank, self.n, world))
        for pos in positions[self.start :]:
            yield int(order[pos]), mix_seed(self.seed, self.epoch, pos)


class ResumableLoader(DataLoader):
    """DataLoader over a SeededSampler that counts the batches it handed out.

    Each iter() starts the next epoch (Lightning stops a sized loader by its length, so a
    generator is not always run to exhaustion); after load_state_dict, the first iter()
    continues the saved epoch where it stopped.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool, **kwargs: Any) -> None:
        self.seeded_sampler = SeededSampler(len(dataset), seed, shuffle)
        super().__init__(dataset, batch_size=batch_size, sampler=self.seeded_sampler, **kwargs)
        self.epoch = 0
        self.yielded = 0
        self._next: tuple[int, int] = (0, 0)  # (epoch, batches to skip) of the next iter()

    def __iter__(self) -> Iterator[Any]:
        self.epoch, skip = self._next
        self._next = (self.epoch + 1, 0)
        self.seeded_sampler.epoch = self.epoch
        self.seeded_sampler.start = skip * int(self.batch_size or 1)
        self.yielded = skip
        for batch in super().__iter__():
            self.yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        # Lightning reads this when it writes a checkpoint, after the batch in hand was trained on.
        if self.yielded >= len(self):
            return {"epoch": self.epoch + 1, "consumed_batches": 0}
        return {"epoch": self.epoch, "consumed_batches": self.yielded}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._next = (int(state["epoch"]), int(state["consumed_batches"]))
