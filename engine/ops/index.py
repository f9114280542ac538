"""Indexing with gradients: basic indexing gives views, advanced indexing gathers a copy."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.autograd.function import Op
from engine.tensor import Tensor


def to_numpy_index(key: Any) -> Any:
    """Replace tensors inside an index by their arrays."""
    if isinstance(key, tuple):
        return tuple(to_numpy_index(k) for k in key)
    if isinstance(key, Tensor):
        return key._data
    if isinstance(key, list):
        return np.asarray(key)
    return key


def is_basic(key: Any) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return all(k is None or k is Ellipsis or isinstance(k, int | slice) for k in parts)


def _basic_name(key: Any) -> str:
    """torch's grad_fn name for basic indexing: that of the last select, slice or unsqueeze."""
    parts = key if isinstance(key, tuple) else (key,)
    for k in reversed(parts):
        if k is None:
            return "UnsqueezeBackward0"
        if isinstance(k, int):
            return "SelectBackward0"
        if isinstance(k, slice) and k != slice(None):
            return "SliceBackward0"
    return "AliasBackward0" if Ellipsis in parts else "SliceBackward0"


def torch_index_error(exc: IndexError, ndim: int) -> IndexError:
    """NumPy's indexing error in torch's words (``dimension``, not ``axis``)."""
    text = str(exc)
    if text.startswith("too many indices"):
        return IndexError(f"too many indices for tensor of dimension {ndim}")
    return IndexError(text.replace(" for axis ", " for dimension "))


def indexed(x: np.ndarray, key: Any) -> np.ndarray:
    """``x[key]``, raising torch's IndexError for an index out of range."""
    try:
        return x[key]
    except IndexError as exc:
        raise torch_index_error(exc, x.ndim) from None


class Index(Op):
    def __init__(self, key: Any) -> None:
        self.key = key
        self.basic = is_basic(key)
        if self.basic:
            self.view_of = 0
        self.backward_name = _basic_name(key) if self.basic else "IndexBackward0"

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.shape, self.dtype = x.shape, x.dtype
        if self.basic:  # with an Ellipsis NumPy returns a 0-d view, not a scalar copy
            parts = self.key if isinstance(self.key, tuple) else (self.key,)
            return indexed(x, parts if Ellipsis in parts else (*parts, Ellipsis))
        return indexed(x, self.key)

    def backward(self, gy: Tensor) -> Tensor:
        return IndexAdd(self.key, self.shape, self.basic)(gy)


class IndexAdd(Op):
    """Scatter-add a gradient into zeros of the indexed tensor's shape (repeats accumulate)."""

    def __init__(self, key: Any, shape: tuple[int, ...], basic: bool) -> None:
        self.key, self.shape, self.basic = key, shape, basic

    def forward(self, g: np.ndarray) -> np.ndarray:
        out = np.zeros(self.shape, g.dtype)
        if self.basic:
            out[self.key] = g
        else:
            np.add.at(out, self.key, g)
        return out

    def backward(self, gg: Tensor) -> Tensor:
        return Index(self.key)(gg)


class IndexPut(Op):
    """``x[key] = value`` out of place: the gradient skips overwritten places for ``x``."""

    backward_name = "IndexPutBackward0"

    def __init__(self, key: Any) -> None:
        self.key = key

    def forward(self, x: np.ndarray, value: np.ndarray) -> np.ndarray:
        self.value_shape = np.shape(value)
        out = x.copy()
        out[self.key] = value
        return out

    def backward(self, gy: Tensor) -> tuple:
        from engine.ops.elementwise import sum_to

        gx = gv = None
        if self.needs_input_grad[0]:
            mask = np.ones(gy.shape, gy._data.dtype)
            mask[self.key] = 0
            gx = gy * Tensor._make(mask)
        if self.needs_input_grad[1]:
            gv = sum_to(gy[self.key], self.value_shape)
        return gx, gv
