"""Each global batch split into contiguous shards, one per process and micro-batch.

`data.batch_size` is the batch of the whole job. With P processes of k micro-batches each,
the images of a global batch (in the epoch's shuffled order) are cut into up to P*k
contiguous shards of near-equal size, the larger ones first; process p trains shards
p*k .. p*k+k-1, one after the other. Nothing is padded, dropped or counted twice, and the
split depends only on the batch's length, so one process with k micro-batches sees exactly
the shards that k processes would, and every process knows which shards are empty.

While BatchNorm trains a shard never holds one lone image (it cannot be normalised): a
batch of n images then uses at most n // 2 shards, and the others stay empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from cli.data import DataLoader
from cli.data.dataset import ImageDataset
from cli.data.sampler import BalancedSampler

Batch = tuple[np.ndarray, np.ndarray]


def shard_sizes(size: int, shards: int, min_size: int = 1) -> list[int]:
    """The sizes of `shards` contiguous shards of a batch of `size` images, each empty or of
    at least `min_size` images, as equal as possible, the larger first."""
    used = max(1, min(shards, size // min_size))
    base, extra = divmod(size, used)
    return [base + (i < extra) for i in range(used)] + [0] * (shards - used)


def shard_bounds(size: int, shards: int, min_size: int = 1) -> np.ndarray:
    """Where each shard starts, and where the last ends: `shards + 1` offsets into the batch."""
    return np.concatenate([[0], np.cumsum(shard_sizes(size, shards, min_size))])


@dataclass(frozen=True)
class Sharding:
    """Which shards of each global batch this process trains."""

    rank: int = 0
    processes: int = 1
    micro_batches: int = 1

    @property
    def shards(self) -> int:
        """Shards per global batch, over the whole job."""
        return self.processes * self.micro_batches

    def local(self, indices: np.ndarray, min_size: int = 1) -> list[np.ndarray]:
        """This process's shards of a global batch's sample `indices` (some may be empty)."""
        bounds = shard_bounds(len(indices), self.shards, min_size)
        first = self.rank * self.micro_batches
        return [
            indices[bounds[i] : bounds[i + 1]] for i in range(first, first + self.micro_batches)
        ]


@dataclass
class Step:
    """One global batch as this process sees it: the batch's length over all processes (in
    sample indices) and the images and labels of this process's non-empty shards."""

    size: int
    shards: list[Batch]


class ShardedLoader(DataLoader):
    """A DataLoader whose items are `Step`s: this process's shards of each global batch.

    `min_size` is 2 while BatchNorm trains on batch statistics, else 1; a shard left with
    fewer readable images is left out. Every process yields a Step for every global batch,
    even when all its shards are empty.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        sharding: Sharding,
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        sampler: BalancedSampler | None = None,
    ) -> None:
        super().__init__(dataset, batch_size, shuffle, seed, num_workers, sampler=sampler)
        self.sharding = sharding
        self.min_size = 1

    def __iter__(self) -> Iterator[Step]:  # type: ignore[override]
        return super().__iter__()  # type: ignore[return-value]

    def _load(self, indices: np.ndarray, epoch: int) -> Step:  # type: ignore[override]
        shards = self.sharding.local(indices, self.min_size)
        parts = [DataLoader._load(self, shard, epoch) for shard in shards if len(shard)]
        return Step(
            len(indices), [p for p in parts if p is not None and len(p[1]) >= self.min_size]
        )
