"""The loss's class weights from `schedule.class_weights`: "auto" is scikit-learn's "balanced"
(n_samples / (n_classes * count of the class)); a mapping weighs the classes it names and
leaves the others at 1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from cli.config import unknown_classes
from cli.errors import ConfigError


def class_weights(
    setting: str | Mapping[str, float] | None, class_names: Sequence[str], labels: np.ndarray
) -> np.ndarray | None:
    """One float32 weight per class (by label), or None for an unweighted loss."""
    if setting is None:
        return None
    if setting == "auto":
        counts = np.bincount(labels, minlength=len(class_names))
        missing = [name for name, count in zip(class_names, counts, strict=True) if not count]
        if missing:
            raise ConfigError(
                [
                    "schedule.class_weights: 'auto' needs training images of every class; "
                    f"none of {', '.join(map(repr, missing))}"
                ]
            )
        return (len(labels) / (len(class_names) * counts)).astype(np.float32)
    problem = unknown_classes(setting, class_names)
    if problem:
        raise ConfigError([f"schedule.class_weights: {problem}"])
    return np.array([setting.get(name, 1.0) for name in class_names], dtype=np.float32)
