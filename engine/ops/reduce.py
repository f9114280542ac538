"""Reductions (sum, mean, max, amax) and the normalising exponentials (softmax, log_softmax)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine._dtype import scalar_type_name
from engine.autograd.function import Op
from engine.ops.elementwise import broadcast_to
from engine.tensor import Tensor

Dims = int | Sequence[int] | None


def normalize_dims(dim: Dims, ndim: int) -> tuple[int, ...]:
    """Turn ``dim`` (None, an int or a sequence, negatives allowed) into sorted positive axes."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out = []
    for d in dims:
        bound = max(ndim, 1)
        if not -bound <= d < bound:
            raise IndexError(
                f"Dimension out of range (expected to be in range of [{-bound}, {bound - 1}], "
                f"but got {d})"
            )
        out.append(d % bound)
    return tuple(sorted(set(out)))


def wrap_dim(dim: int, ndim: int) -> int:
    """``dim`` (negative allowed) as a position among ``ndim`` dims, or torch's IndexError."""
    return normalize_dims(int(dim), ndim)[0]


def expand_reduced(g: Tensor, axes: tuple[int, ...], keepdim: bool, shape: tuple) -> Tensor:
    """Broadcast the gradient of a reduction back over the reduced axes."""
    if not keepdim and axes and g.ndim < len(shape):
        g = g.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))
    return broadcast_to(g, shape)


class _Reduction(Op):
    def __init__(self, dim: Dims, keepdim: bool) -> None:
        self.dim, self.keepdim = dim, keepdim

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.shape = x.shape
        self.axes = normalize_dims(self.dim, x.ndim) if x.ndim else ()
        return self.reduce(x)

    def reduce(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Sum(_Reduction):
    def reduce(self, x: np.ndarray) -> np.ndarray:
        if x.dtype.kind in "biu":
            return x.sum(axis=self.axes, keepdims=self.keepdim, dtype=np.int64)
        return x.sum(axis=self.axes, keepdims=self.keepdim)

    def backward(self, gy: Tensor) -> Tensor:
        return expand_reduced(gy, self.axes, self.keepdim, self.shape)


class Mean(_Reduction):
    def reduce(self, x: np.ndarray) -> np.ndarray:
        if x.dtype.kind != "f":
            raise RuntimeError(
                "mean(): could not infer output dtype. Input dtype must be either a floating point "
                f"or complex dtype. Got: {scalar_type_name(x.dtype)}"
            )
        self.count = int(np.prod([x.shape[a] for a in self.axes]))
        return x.mean(axis=self.axes, keepdims=self.keepdim)

    def backward(self, gy: Tensor) -> Tensor:
        return expand_reduced(gy / float(self.count), self.axes, self.keepdim, self.shape)


class Amax(_Reduction):
    """Maximum over axes; the gradient is shared equally among tied maxima, as torch's amax."""

    def reduce(self, x: np.ndarray) -> np.ndarray:
        y = x.max(axis=self.axes, keepdims=True)
        if self.requires_grad:
            ties = (x == y).astype(x.dtype)
            ties /= ties.sum(axis=self.axes, keepdims=True)
            self.save_arrays(ties)
        return (
            y
            if self.keepdim
            else y.reshape([n for i, n in enumerate(x.shape) if i not in self.axes])
        )

    def backward(self, gy: Tensor) -> Tensor:
        (ties,) = self.saved_arrays
        return expand_reduced(gy, self.axes, self.keepdim, self.shape) * Tensor._make(ties)


class Amin(Amax):
    def reduce(self, x: np.ndarray) -> np.ndarray:
        return -super().reduce(-x)


class Var(_Reduction):
    """Variance over axes, divided by n - 1 (``unbiased``) or n."""

    def __init__(self, dim: Dims, unbiased: bool, keepdim: bool) -> None:
        super().__init__(dim, keepdim)
        self.ddof = int(unbiased)

    def reduce(self, x: np.ndarray) -> np.ndarray:
        self.save_inputs(0)
        self.count = int(np.prod([x.shape[a] for a in self.axes]))
        return x.var(axis=self.axes, ddof=self.ddof, keepdims=self.keepdim)

    def backward(self, gy: Tensor) -> Tensor:
        x = self.saved_tensors[0]
        g = expand_reduced(gy, self.axes, self.keepdim, self.shape)
        return g * (x - x.mean(self.axes, keepdim=True)) * (2.0 / (self.count - self.ddof))


class Std(Var):
    """Standard deviation; where it is zero the gradient is zero, as in torch."""

    def reduce(self, x: np.ndarray) -> np.ndarray:
        self.save_outputs(0)
        return np.sqrt(super().reduce(x))

    def backward(self, gy: Tensor) -> Tensor:
        from engine.ops.elementwise import Where

        y = self.saved_tensors[1]
        zero = Tensor._make(np.zeros((), y._data.dtype))
        return super().backward(Where(y._data == 0)(zero, gy / (y * 2.0)))


class VectorNorm(_Reduction):
    """The ``p``-norm over axes (``torch.linalg.vector_norm``). Where the norm is zero the
    gradient is the zero subgradient, as in torch, not 0/0."""

    backward_name = "LinalgVectorNormBackward0"

    def __init__(self, p: float, dim: Dims, keepdim: bool) -> None:
        super().__init__(dim, keepdim)
        self.p = float(p)

    def reduce(self, x: np.ndarray) -> np.ndarray:
        self.save_inputs(0)
        self.save_outputs(0)
        magnitude, p = np.abs(x), self.p
        if p == np.inf:
            return magnitude.max(axis=self.axes, keepdims=self.keepdim)
        if p == 1:
            return magnitude.sum(axis=self.axes, keepdims=self.keepdim)
        if p == 2:
            return np.sqrt((x * x).sum(axis=self.axes, keepdims=self.keepdim))
        return (magnitude**p).sum(axis=self.axes, keepdims=self.keepdim) ** (1 / p)

    def backward(self, gy: Tensor) -> Tensor:
        from engine.ops.elementwise import Where

        x, y = self.saved_tensors
        g = expand_reduced(gy, self.axes, self.keepdim, self.shape)
        norm = expand_reduced(y, self.axes, self.keepdim, self.shape)
        if self.p == 1:
            return g * x.sign()
        if self.p == np.inf:  # shared equally among the largest magnitudes
            ties = Tensor._make((np.abs(x._data) == norm._data).astype(x._data.dtype))
            return g * x.sign() * ties / ties.sum(self.axes, keepdim=True)
        zero = Tensor._make(np.zeros((), x._data.dtype))
        if self.p == 2:
            return g * x / Where(norm._data == 0)(zero + 1, norm)
        scale = x * x.abs() ** (self.p - 2) / norm ** (self.p - 1)
        return g * Where(x._data == 0)(zero, scale)


class MaxDim(Op):
    """``max(dim)``: values and indices; the gradient goes to the first maximum's index."""

    backward_name = "MaxBackward0"

    def __init__(self, dim: int, keepdim: bool, largest: bool = True) -> None:
        self.dim, self.keepdim, self.largest = dim, keepdim, largest

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.shape = x.shape
        (self.axis,) = normalize_dims(self.dim, x.ndim) if x.ndim else (0,)
        if x.ndim == 0:
            return x.copy(), np.zeros((), np.int64)
        idx = (x.argmax if self.largest else x.argmin)(axis=self.axis, keepdims=True)
        values = np.take_along_axis(x, idx, axis=self.axis)
        if not self.keepdim:
            values, idx = values.squeeze(self.axis), idx.squeeze(self.axis)
        self.save_arrays(idx if self.keepdim else np.expand_dims(idx, self.axis))
        return values, idx.astype(np.int64)

    def backward(self, gy: Tensor, _gidx: Tensor) -> Tensor:
        (idx,) = self.saved_arrays
        one_hot = np.zeros(self.shape, gy._data.dtype)
        np.put_along_axis(one_hot, idx, 1, axis=self.axis)
        return expand_reduced(gy, (self.axis,), self.keepdim, self.shape) * Tensor._make(one_hot)


class Softmax(Op):
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.dim = wrap_dim(self.dim, x.ndim)
        e = np.exp(x - x.max(axis=self.dim, keepdims=True))
        e /= e.sum(axis=self.dim, keepdims=True)
        self.save_outputs(0)
        return e

    def backward(self, gy: Tensor) -> Tensor:
        (y,) = self.saved_tensors
        return y * (gy - (gy * y).sum(self.dim, keepdim=True))


class LogSoftmax(Op):
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.dim = wrap_dim(self.dim, x.ndim)
        shifted = x - x.max(axis=self.dim, keepdims=True)
        shifted -= np.log(np.exp(shifted).sum(axis=self.dim, keepdims=True))
        self.save_outputs(0)
        return shifted

    def backward(self, gy: Tensor) -> Tensor:
        (y,) = self.saved_tensors
        return gy - y.exp() * gy.sum(self.dim, keepdim=True)
