"""Class-balanced sampling (`data.sampler: balanced`), as torch's WeightedRandomSampler with
each image weighted by the inverse of its class's frequency.

Each epoch draws as many images as the dataset holds, with replacement, from a generator
seeded by (seed, epoch): so rare classes are seen about as often as common ones, and any
epoch can be replayed exactly after a resume.
"""

from __future__ import annotations

import numpy as np


class BalancedSampler:
    """The sample indices of each epoch, drawn in proportion to inverse class frequency."""

    def __init__(self, labels: np.ndarray, seed: int) -> None:
        labels = np.asarray(labels)
        counts = np.bincount(labels)
        weights = 1.0 / counts[labels]
        self.probabilities = weights / weights.sum()
        self.seed = seed

    def __len__(self) -> int:
        return len(self.probabilities)

    def order(self, epoch: int) -> np.ndarray:
        """The indices epoch `epoch` visits, in order (repeats included)."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(epoch,)))
        return rng.choice(len(self), size=len(self), replace=True, p=self.probabilities)
