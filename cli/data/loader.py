"""Batches from a dataset, decoded by a thread pool ahead of the consumer.

Shuffling and augmentation are pure functions of (seed, epoch, index): the
order of epoch e is a permutation drawn from (seed, e), and sample i draws its
augmentation from (seed, e, i) whatever batch it lands in. So any epoch, or
the rest of one, can be replayed exactly after a resume.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing

import numpy as np

from cli.data.dataset import ImageDataset
from cli.data.sampler import BalancedSampler

Batch = tuple[np.ndarray, np.ndarray]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator sample `index` draws its augmentation from in `epoch`."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, index)))


def epoch_order(size: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of sample indices for `epoch`."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch,))).permutation(size)


class DataLoader:
    """Iterate `(images float32 (N, 3, H, W), labels int64 (N,))` batches.

    Call `set_epoch(e)` before each epoch (and `start_batch` to resume inside
    one). With `num_workers` > 0, batches are decoded by that many threads,
    up to `2 * num_workers` batches ahead; Pillow and NumPy release the GIL
    while they work. Images the dataset skips (unreadable, with
    on_bad_image=skip) leave their batch short. A `sampler` gives each epoch's
    order instead of the shuffle.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
        sampler: BalancedSampler | None = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.sampler = sampler
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch to iterate next, from its batch `start_batch` on."""
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        """Batches in a full epoch."""
        rounding = math.floor if self.drop_last else math.ceil
        return rounding(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        epoch, chunks = self.epoch, self._chunks()
        if self.num_workers == 0:
            batches: Iterator[Batch | None] = (self._load(chunk, epoch) for chunk in chunks)
        else:
            batches = self._prefetch(chunks, epoch)
        with closing(batches):
            for batch in batches:
                if batch is not None:
                    yield batch

    def _chunks(self) -> Iterator[np.ndarray]:
        """The sample indices of each remaining batch of the epoch."""
        size = len(self.dataset)
        if self.sampler is not None:
            order = self.sampler.order(self.epoch)
        else:
            order = epoch_order(size, self.seed, self.epoch) if self.shuffle else np.arange(size)
        for batch in range(self.start_batch, len(self)):
            yield order[batch * self.batch_size : (batch + 1) * self.batch_size]

    def _prefetch(self, chunks: Iterator[np.ndarray], epoch: int) -> Iterator[Batch | None]:
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="finetune-data")
        pending: deque[Future[Batch | None]] = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(self._load, chunk, epoch))
                if len(pending) > 2 * self.num_workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _load(self, indices: np.ndarray, epoch: int) -> Batch | None:
        random = not self.dataset.deterministic
        items = [
            self.dataset.get(int(i), sample_rng(self.seed, epoch, int(i)) if random else None)
            for i in indices
        ]
        items = [item for item in items if item is not None]
        if not items:
            return None
        images = np.stack([image for image, _ in items])
        labels = np.array([label for _, label in items], dtype=np.int64)
        return images, labels
