"""Element-wise ops with NumPy broadcasting; gradients are summed back to each input's shape."""

from __future__ import annotations

import numpy as np

from engine.autograd.function import Op
from engine.tensor import Tensor


def _sum_to_shape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if x.shape == shape:
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1
    )
    return x.sum(axis=axes, keepdims=True).reshape(shape)


class SumTo(Op):
    """Sum a broadcast gradient back to ``shape``: the adjoint of broadcasting."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.in_shape = x.shape
        return _sum_to_shape(x, self.shape)

    def backward(self, gy: Tensor) -> Tensor:
        return broadcast_to(gy, self.in_shape)


class BroadcastTo(Op):
    backward_name = "ExpandBackward0"
    view_of = 0

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.in_shape = x.shape
        return np.broadcast_to(x, self.shape)

    def backward(self, gy: Tensor) -> Tensor:
        return sum_to(gy, self.in_shape)


def sum_to(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    return x if x.shape == tuple(shape) else SumTo(tuple(shape))(x)


def broadcast_to(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    return x if x.shape == tuple(shape) else BroadcastTo(tuple(shape))(x)


def check_broadcastable(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    """Raise torch's error for shapes that do not broadcast (naming the rightmost clash)."""
    for i in range(1, min(len(a), len(b)) + 1):
        if a[-i] != b[-i] and 1 not in (a[-i], b[-i]):
            raise RuntimeError(
                f"The size of tensor a ({a[-i]}) must match the size of tensor b ({b[-i]}) at "
                f"non-singleton dimension {max(len(a), len(b)) - i}"
            )


class _Binary(Op):
    """Remembers the input shapes so each gradient can be summed back to its input."""

    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.shapes = (np.shape(a), np.shape(b))
        try:
            return self.compute(a, b)
        except ValueError:
            check_broadcastable(*self.shapes)
            raise

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def reduce(self, grads: tuple[Tensor | None, Tensor | None]) -> tuple:
        return tuple(
            sum_to(g, shape) if g is not None and need else None
            for g, shape, need in zip(grads, self.shapes, self.needs_input_grad, strict=True)
        )


class Add(_Binary):
    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.add(a, b)

    def backward(self, gy: Tensor) -> tuple:
        return self.reduce((gy, gy))


class Sub(_Binary):
    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.subtract(a, b)

    def backward(self, gy: Tensor) -> tuple:
        return self.reduce((gy, -gy if self.needs_input_grad[1] else None))


class Mul(_Binary):
    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        need_a, need_b = self.needs_input_grad
        self.save_inputs(0 if need_b else None, 1 if need_a else None)  # each needs the other
        return np.multiply(a, b)

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.saved_tensors
        need_a, need_b = self.needs_input_grad
        return self.reduce((gy * b if need_a else None, gy * a if need_b else None))


class Div(_Binary):
    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.save_inputs(0 if self.needs_input_grad[1] else None, 1)
        return np.true_divide(a, b)

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.saved_tensors
        need_a, need_b = self.needs_input_grad
        return self.reduce((gy / b if need_a else None, -gy * a / (b * b) if need_b else None))


class Pow(_Binary):
    """``a ** b`` for two tensors (the exponent may be a 0-d constant)."""

    backward_name = "PowBackward1"

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.save_inputs(0, 1)
        self.save_outputs(0)
        return np.power(a, b)

    def backward(self, gy: Tensor) -> tuple:
        a, b, y = self.saved_tensors
        need_a, need_b = self.needs_input_grad
        ga = gy * b * a ** (b - 1) if need_a else None
        gb = gy * y * log(where_positive(a)) if need_b else None
        return self.reduce((ga, gb))


class Where(_Binary):
    def __init__(self, condition: np.ndarray) -> None:
        self.condition = condition

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(self.condition, a, b)

    def backward(self, gy: Tensor) -> tuple:
        keep = Tensor._make(self.condition.astype(gy._data.dtype))
        return self.reduce((gy * keep, gy * (1 - keep)))


class Maximum(_Binary):
    """Element-wise max (``largest``) or min of two tensors; ties share the gradient equally."""

    def __init__(self, largest: bool) -> None:
        self.largest = largest
        self.backward_name = "MaximumBackward0" if largest else "MinimumBackward0"

    def compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.maximum(a, b) if self.largest else np.minimum(a, b)
        if self.requires_grad:
            wins = a > b if self.largest else a < b
            self.save_arrays((wins + 0.5 * (a == b)).astype(out.dtype))
        return out

    def backward(self, gy: Tensor) -> tuple:
        share = Tensor._make(self.saved_arrays[0])
        return self.reduce((gy * share, gy * (1 - share)))


class PowScalar(Op):
    backward_name = "PowBackward0"

    def __init__(self, exponent: float) -> None:
        self.exponent = exponent

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.save_inputs(0)
        return np.power(x, x.dtype.type(self.exponent) if x.dtype.kind == "f" else self.exponent)

    def backward(self, gy: Tensor) -> Tensor:
        (x,) = self.saved_tensors
        c = self.exponent
        if c == 0:
            return gy * 0.0
        return gy * c * x ** (c - 1) if c != 2 else gy * 2.0 * x


def where_positive(x: Tensor) -> Tensor:
    """``x`` where positive, else 1: keeps ``log`` finite where ``a ** b`` has no slope in b.
    Differentiable in ``x``, so the gradient of ``a ** b`` in b can itself be differentiated."""
    return Where(x._data > 0)(x, Tensor._make(np.ones((), x._data.dtype)))


class Neg(Op):
    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.negative(x)

    def backward(self, gy: Tensor) -> Tensor:
        return -gy


class Exp(Op):
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.save_outputs(0)
        return np.exp(x)

    def backward(self, gy: Tensor) -> Tensor:
        (y,) = self.saved_tensors
        return gy * y


class Log(Op):
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.save_inputs(0)
        return np.log(x)

    def backward(self, gy: Tensor) -> Tensor:
        (x,) = self.saved_tensors
        return gy / x


class Sqrt(Op):
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.save_outputs(0)
        return np.sqrt(x)

    def backward(self, gy: Tensor) -> Tensor:
        (y,) = self.saved_tensors
        return gy / (y * 2.0)


class Reciprocal(Op):
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.save_outputs(0)
        return np.reciprocal(x)

    def backward(self, gy: Tensor) -> Tensor:
        (y,) = self.saved_tensors
        return -gy * y * y


class Rsqrt(Op):
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.save_outputs(0)
        return np.reciprocal(np.sqrt(x))

    def backward(self, gy: Tensor) -> Tensor:
        (y,) = self.saved_tensors
        return gy * y * y * y * -0.5


class Abs(Op):
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.save_inputs(0)
        return np.abs(x)

    def backward(self, gy: Tensor) -> Tensor:
        (x,) = self.saved_tensors
        return gy * Tensor._make(np.sign(x._data))


class Sign(Op):
    """-1, 0 or 1; flat almost everywhere, so its gradient is zero (as torch's)."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.sign(x)

    def backward(self, gy: Tensor) -> Tensor:
        return gy * 0.0


class Clamp(Op):
    """Clamp to [min, max]; the gradient passes where the input was inside the range."""

    backward_name = "ClampBackward1"

    def __init__(self, lo: float | None, hi: float | None) -> None:
        self.lo, self.hi = lo, hi

    def forward(self, x: np.ndarray) -> np.ndarray:
        if self.requires_grad:
            inside = np.ones(x.shape, dtype=x.dtype)
            if self.lo is not None:
                inside *= x >= self.lo
            if self.hi is not None:
                inside *= x <= self.hi
            self.save_arrays(inside)
        return np.clip(x, self.lo, self.hi)

    def backward(self, gy: Tensor) -> Tensor:
        (inside,) = self.saved_arrays
        return gy * Tensor._make(inside)


class Relu(Op):
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.save_outputs(0)
        return np.maximum(x, 0)

    def backward(self, gy: Tensor) -> Tensor:
        (y,) = self.saved_tensors
        return gy * Tensor._make((y._data > 0).astype(y._data.dtype))


class Sigmoid(Op):
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.save_outputs(0)
        with np.errstate(over="ignore"):
            return np.reciprocal(1 + np.exp(-x))

    def backward(self, gy: Tensor) -> Tensor:
        (y,) = self.saved_tensors
        return gy * y * (1 - y)


class Tanh(Op):
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.save_outputs(0)
        return np.tanh(x)

    def backward(self, gy: Tensor) -> Tensor:
        (y,) = self.saved_tensors
        return gy * (1 - y * y)


def log(x: Tensor) -> Tensor:
    return Log()(x)
