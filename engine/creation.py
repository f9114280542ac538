"""Functions that make tensors: from data, filled, random, ranges, and joins."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from engine import _dtype
from engine.ops.elementwise import Where
from engine.ops.shape import Stack
from engine.random import generator
from engine.tensor import Tensor, _shape_args, cat, promote

__all__ = [
    "tensor",
    "as_tensor",
    "from_numpy",
    "zeros",
    "ones",
    "full",
    "empty",
    "eye",
    "arange",
    "linspace",
    "rand",
    "randn",
    "randint",
    "randperm",
    "zeros_like",
    "ones_like",
    "full_like",
    "rand_like",
    "randn_like",
    "empty_like",
    "cat",
    "stack",
    "where",
]


def _float_dtype(dtype: Any) -> np.dtype:
    return _dtype.to_numpy_dtype(dtype) or _dtype.get_default_dtype().numpy


def _size(size: tuple) -> tuple[int, ...]:
    """Sizes given as varargs or one sequence, with torch's error for a negative one."""
    shape = _shape_args(size)
    for n in shape:
        if n < 0:
            raise RuntimeError(
                f"Trying to create tensor with negative dimension {n}: {list(shape)}"
            )
    return shape


def _leaf(array: np.ndarray, requires_grad: bool) -> Tensor:
    t = Tensor._make(array)
    if requires_grad:
        t.requires_grad = True
    return t


def tensor(data: Any, dtype: Any = None, requires_grad: bool = False, device: Any = None) -> Tensor:
    """A new tensor that copies ``data`` (a list, scalar, NumPy array or tensor)."""
    if isinstance(data, Tensor):
        array = data._data.copy()
    elif isinstance(data, np.ndarray | np.generic):
        array = np.array(data)
    else:
        if isinstance(data, Sequence) and data and isinstance(data[0], Tensor):
            data = [t.tolist() for t in data]
        array = np.array(data)
        if array.dtype == np.float64:
            array = array.astype(_dtype.get_default_dtype().numpy)
    target = _dtype.to_numpy_dtype(dtype)
    if target is not None and array.dtype != target:
        array = array.astype(target)
    return _leaf(array, requires_grad)


def as_tensor(data: Any, dtype: Any = None) -> Tensor:
    if isinstance(data, Tensor) and dtype is None:
        return data
    if isinstance(data, np.ndarray) and dtype is None:
        return from_numpy(data)
    return tensor(data, dtype=dtype)


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor that shares memory with ``array``."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(array).__name__})")
    _dtype.from_numpy_dtype(array.dtype)
    return Tensor._make(array)


def zeros(*size: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    if any(n < 0 for n in _shape_args(size)):
        raise RuntimeError("zeros: Dimension size must be non-negative.")
    return _leaf(np.zeros(_shape_args(size), _float_dtype(dtype)), requires_grad)


def ones(*size: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _leaf(np.ones(_size(size), _float_dtype(dtype)), requires_grad)


def empty(*size: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _leaf(np.empty(_size(size), _float_dtype(dtype)), requires_grad)


def full(
    size: Sequence[int], fill_value: Any, dtype: Any = None, requires_grad: bool = False
) -> Tensor:
    if dtype is None and isinstance(fill_value, bool):
        dtype = _dtype.bool_
    elif dtype is None and isinstance(fill_value, int):
        dtype = _dtype.int64
    return _leaf(np.full(_size((size,)), fill_value, _float_dtype(dtype)), requires_grad)


def eye(n: int, m: int | None = None, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _leaf(np.eye(n, m, dtype=_float_dtype(dtype)), requires_grad)


def arange(
    start: float,
    end: float | None = None,
    step: float = 1,
    dtype: Any = None,
    requires_grad: bool = False,
) -> Tensor:
    if end is None:
        start, end = 0, start
    integral = all(isinstance(v, int) for v in (start, end, step))
    target = _dtype.to_numpy_dtype(dtype) or (
        np.dtype(np.int64) if integral else _float_dtype(None)
    )
    if step == 0:
        raise RuntimeError("step must be nonzero")
    if (end - start) * step < 0:
        raise RuntimeError("upper bound and lower bound inconsistent with step sign")
    return _leaf(np.arange(start, end, step).astype(target), requires_grad)


def linspace(
    start: float, end: float, steps: int, dtype: Any = None, requires_grad: bool = False
) -> Tensor:
    return _leaf(np.linspace(start, end, steps).astype(_float_dtype(dtype)), requires_grad)


def rand(*size: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _leaf(generator().random(_size(size)).astype(_float_dtype(dtype)), requires_grad)


def randn(*size: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    array = generator().standard_normal(_size(size)).astype(_float_dtype(dtype))
    return _leaf(array, requires_grad)


def randint(
    low: int, high: int | None = None, size: Sequence[int] = (), dtype: Any = None
) -> Tensor:
    if high is None:
        low, high = 0, low
    target = _dtype.to_numpy_dtype(dtype) or np.dtype(np.int64)
    return Tensor._make(generator().integers(low, high, _size((size,))).astype(target))


def randperm(n: int) -> Tensor:
    return Tensor._make(generator().permutation(n).astype(np.int64))


def _like(fill: Any, x: Tensor, dtype: Any, requires_grad: bool) -> Tensor:
    target = _dtype.to_numpy_dtype(dtype) or x._data.dtype
    return fill(x.shape, dtype=_dtype.from_numpy_dtype(target), requires_grad=requires_grad)


def zeros_like(x: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _like(zeros, x, dtype, requires_grad)


def ones_like(x: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _like(ones, x, dtype, requires_grad)


def empty_like(x: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _like(empty, x, dtype, requires_grad)


def rand_like(x: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _like(rand, x, dtype, requires_grad)


def randn_like(x: Tensor, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    return _like(randn, x, dtype, requires_grad)


def full_like(x: Tensor, fill_value: Any, dtype: Any = None, requires_grad: bool = False) -> Tensor:
    target = _dtype.to_numpy_dtype(dtype) or x._data.dtype
    return _leaf(np.full(x.shape, fill_value, target), requires_grad)


def stack(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    return Stack(dim)(*tensors)


def where(condition: Tensor, x: Any, y: Any) -> Tensor:
    """``x`` where ``condition`` holds, else ``y`` (differentiable in x and y)."""
    return Where(condition._data.astype(bool))(*promote(x, y))
