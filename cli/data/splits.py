"""Choosing samples: keep some classes, split off a validation set, cap the training set."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cli.data.dataset import Samples
from cli.errors import DataError


def select_classes(samples: Samples, class_names: Sequence[str], wanted: Sequence[str]) -> Samples:
    """Keep the samples of the `wanted` classes, relabelled 0..k-1 in the order listed."""
    unknown = [name for name in wanted if name not in class_names]
    if unknown:
        raise DataError(
            f"data.classes: no class {', '.join(map(repr, unknown))} in this dataset; "
            f"its classes are {', '.join(map(repr, class_names))}"
        )
    new_label = np.full(len(class_names), -1, dtype=np.int64)
    new_label[[list(class_names).index(name) for name in wanted]] = np.arange(len(wanted))
    kept = samples.take(new_label[samples.labels] >= 0)
    return Samples(kept.source, kept.positions, new_label[kept.labels])


def stratified_split(
    samples: Samples, val_fraction: float, rng: np.random.Generator
) -> tuple[Samples, Samples]:
    """(train, val): a random `val_fraction` of each class (rounded) goes to val; order is kept."""
    is_val = np.zeros(len(samples), dtype=bool)
    for label in np.unique(samples.labels):
        members = np.flatnonzero(samples.labels == label)
        is_val[rng.permutation(members)[: round(len(members) * val_fraction)]] = True
    return samples.take(~is_val), samples.take(is_val)


def subsample(samples: Samples, limit: int, rng: np.random.Generator) -> Samples:
    """At most `limit` samples, chosen at random, in their original order."""
    if len(samples) <= limit:
        return samples
    return samples.take(np.sort(rng.choice(len(samples), size=limit, replace=False)))
