"""Dropout: zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``."""

from __future__ import annotations

import numpy as np

from engine import random
from engine.tensor import Tensor


def dropout_mask(shape: tuple[int, ...], p: float, dtype: np.dtype) -> np.ndarray:
    """A Bernoulli(1 - p) mask from the global generator, already scaled by ``1 / (1 - p)``."""
    if p == 1:
        return np.zeros(shape, dtype)
    keep = random.generator().random(shape, dtype=np.float32) >= p
    return np.multiply(keep, dtype.type(1.0 / (1.0 - p)), dtype=dtype)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """As ``torch.nn.functional.dropout``: the input itself when not training or ``p == 0``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0:
        return input
    mask = Tensor._make(dropout_mask(input.shape, p, input._data.dtype))
    return input.mul_(mask) if inplace else input * mask
