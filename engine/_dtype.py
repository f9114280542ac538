"""Tensor dtypes: torch's names over NumPy's dtypes."""

from __future__ import annotations

import builtins
import numbers
from typing import Any

import numpy as np


class dtype:  # noqa: N801 - named like torch.dtype
    """A tensor element type, printed as ``engine.float32``."""

    __slots__ = ("name", "numpy", "is_floating_point", "itemsize")

    def __init__(self, name: str, numpy_dtype: type) -> None:
        self.name = name
        self.numpy = np.dtype(numpy_dtype)
        self.is_floating_point = self.numpy.kind == "f"
        self.itemsize = self.numpy.itemsize

    def __repr__(self) -> str:
        return f"engine.{self.name}"

    def __reduce__(self) -> str:
        return self.name


float16 = dtype("float16", np.float16)
float32 = dtype("float32", np.float32)
float64 = dtype("float64", np.float64)
uint8 = dtype("uint8", np.uint8)
int8 = dtype("int8", np.int8)
int16 = dtype("int16", np.int16)
int32 = dtype("int32", np.int32)
int64 = dtype("int64", np.int64)
bool_ = dtype("bool", np.bool_)

half, float, double = float16, float32, float64  # noqa: A001 - torch's aliases
short, int, long = int16, int32, int64  # noqa: A001

_BY_NUMPY = {
    d.numpy: d for d in (float16, float32, float64, uint8, int8, int16, int32, int64, bool_)
}
_default_float = float32
_SCALAR_TYPE_NAMES = {
    "float16": "Half",
    "float32": "Float",
    "float64": "Double",
    "uint8": "Byte",
    "int8": "Char",
    "int16": "Short",
    "int32": "Int",
    "int64": "Long",
    "bool": "Bool",
}


def scalar_type_name(np_dtype: np.dtype) -> str:
    """torch's C++ name of a dtype, as its error messages print it (``Long``, ``Float``...)."""
    return _SCALAR_TYPE_NAMES[np.dtype(np_dtype).name]


def get_default_dtype() -> dtype:
    return _default_float


def set_default_dtype(d: dtype) -> None:
    """Set the dtype that Python floats and ``zeros``/``randn``... produce (float32 or float64)."""
    global _default_float
    if d not in (float32, float64):
        raise TypeError(f"only floating-point types are supported as the default type, got {d}")
    _default_float = d


def from_numpy_dtype(np_dtype: np.dtype) -> dtype:
    try:
        return _BY_NUMPY[np.dtype(np_dtype)]
    except KeyError:
        raise TypeError(f"can't convert np.ndarray of type {np.dtype(np_dtype)}") from None


def to_numpy_dtype(d: dtype | np.dtype | type | str | None) -> np.dtype | None:
    """Accept an engine dtype, a NumPy dtype, Python's float/int/bool, or None."""
    if d is None or isinstance(d, np.dtype):
        return d
    if isinstance(d, dtype):
        return d.numpy
    if d is builtins.float:
        return np.dtype(np.float64)
    if d is builtins.int:
        return np.dtype(np.int64)
    if d is builtins.bool:
        return np.dtype(np.bool_)
    return from_numpy_dtype(np.dtype(d)).numpy


_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2}


def promote_types(a: np.dtype, b: np.dtype) -> np.dtype:
    """``torch.promote_types``: a higher category wins outright (int64 with float16 -> float16)."""
    ca, cb = _CATEGORY[a.kind], _CATEGORY[b.kind]
    if ca != cb:
        return a if ca > cb else b
    return np.promote_types(a, b)


def can_cast(source: np.dtype, target: np.dtype) -> bool:
    """Whether an in-place op may write a ``source`` result into ``target`` (torch's canCast:
    never down a category, float to int or int to bool)."""
    return _CATEGORY[np.dtype(source).kind] <= _CATEGORY[np.dtype(target).kind]


def result_type(*operands: Any) -> np.dtype:
    """The dtype torch computes in for arrays (tensors' data) and Python scalars.

    Tensors with dimensions decide; 0-d tensors, then Python scalars, count only when of a
    higher category (bool < int < float). A Python float counts as the default dtype, an int
    as int64: float32 tensor * 2.5 is float32, int64 tensor * 2.5 is float32.
    """
    groups: list[np.dtype | None] = [None, None, None]  # dimensioned, 0-d, Python scalars
    for x in operands:
        if isinstance(x, np.ndarray):
            group, d = (0 if x.ndim else 1), x.dtype
        elif isinstance(x, builtins.bool | np.bool_):
            group, d = 2, np.dtype(np.bool_)
        elif isinstance(x, numbers.Integral):
            group, d = 2, np.dtype(np.int64)
        else:
            group, d = 2, _default_float.numpy
        groups[group] = d if groups[group] is None else promote_types(groups[group], d)
    result = None
    for d in groups:
        if d is not None and (result is None or _CATEGORY[d.kind] > _CATEGORY[result.kind]):
            result = d if result is None else promote_types(result, d)
    return result
