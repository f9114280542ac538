"""``Tensor``: a NumPy array with torch's autograd semantics and methods.

The array lives in ``_data``. Operators and methods build ops from ``engine.ops``; each op
records itself as the result's ``grad_fn`` when grad mode is on and an input requires grad.
Views share a version counter (``_vc``) with their base so that in-place changes to a tensor
saved for backward are caught.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from engine import _dtype
from engine.autograd.function import AccumulateGrad, HookDict, RemovableHandle, add_hook
from engine.autograd.grad_mode import is_grad_enabled, no_grad

Scalar = int | float | bool
Shape = tuple[int, ...]


def _shape_args(shape: tuple) -> tuple[int, ...]:
    """Sizes given as varargs or as one sequence, as torch accepts both."""
    if len(shape) == 1 and isinstance(shape[0], Sequence | np.ndarray):
        return tuple(int(n) for n in shape[0])
    return tuple(int(n) for n in shape)


class Tensor:
    __slots__ = (
        "_data",
        "_requires_grad",
        "grad",
        "grad_fn",
        "_output_nr",
        "_vc",
        "_hooks",
        "_post_hooks",
        "_accumulator",
        "_base",
        "__weakref__",
        "__dict__",
    )
    __array_ufunc__ = None  # make NumPy defer to our reflected operators

    def __init__(self, data: Any = None, requires_grad: bool = False) -> None:
        array = np.asarray([] if data is None else data)
        if array.dtype == np.float64 and not isinstance(data, np.ndarray):
            array = array.astype(_dtype.get_default_dtype().numpy)
        self._init(array)
        if requires_grad:
            self.requires_grad = True

    def _init(self, array: np.ndarray) -> None:
        self._data = array
        self._requires_grad = False
        self.grad: Tensor | None = None
        self.grad_fn = None
        self._output_nr = 0
        self._vc = [0]
        self._hooks: HookDict | None = None
        self._post_hooks: HookDict | None = None
        self._accumulator: AccumulateGrad | None = None
        self._base: Tensor | None = None  # the tensor whose storage this view shares

    @classmethod
    def _make(cls, array: Any) -> Tensor:
        """Wrap an array without copying (internal constructor)."""
        t = object.__new__(Tensor)
        t._init(array if type(array) is np.ndarray else np.asarray(array))
        return t

    # ----------------------------------------------------------------- attributes
    @property
    def shape(self) -> Shape:
        return self._data.shape

    def size(self, dim: int | None = None) -> Shape | int:
        return self._data.shape if dim is None else self._data.shape[dim]

    @property
    def dtype(self) -> _dtype.dtype:
        return _dtype.from_numpy_dtype(self._data.dtype)

    @property
    def ndim(self) -> int:
        return self._data.ndim

    def dim(self) -> int:
        return self._data.ndim

    def numel(self) -> int:
        return self._data.size

    def __len__(self) -> int:
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    @property
    def device(self) -> str:
        return "cpu"

    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if self.grad_fn is not None:
            if value:
                return
            raise RuntimeError(
                "you can only change requires_grad flags of leaf variables. If you want to use a "
                "computed variable in a subgraph that doesn't require differentiation use "
                "var_no_grad = var.detach()."
            )
        if value and self._data.dtype.kind != "f":
            raise RuntimeError(
                "only Tensors of floating point and complex dtype can require gradients"
            )
        self._requires_grad = bool(value)

    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        self.requires_grad = requires_grad
        return self

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def _version(self) -> int:
        return self._vc[0]

    @property
    def data(self) -> Tensor:
        """The same storage, detached from the graph (torch's ``.data``)."""
        return self.detach()

    @data.setter
    def data(self, value: Tensor) -> None:
        self._data = value._data

    @property
    def _backward_hooks(self) -> HookDict:
        if self._hooks is None:
            self._hooks = HookDict()
        return self._hooks

    @property
    def _post_accumulate_hooks(self) -> HookDict:
        if self._post_hooks is None:
            self._post_hooks = HookDict()
        return self._post_hooks

    def _grad_accumulator(self) -> AccumulateGrad:
        if self._accumulator is None:
            self._accumulator = AccumulateGrad(self)
        return self._accumulator

    def is_floating_point(self) -> bool:
        return self._data.dtype.kind == "f"

    # ----------------------------------------------------------------- conversion
    def numpy(self) -> np.ndarray:
        if self._requires_grad:
            raise RuntimeError(
                "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() "
                "instead."
            )
        return self._data

    def item(self) -> Scalar:
        if self._data.size != 1:
            raise RuntimeError(
                f"a Tensor with {self._data.size} elements cannot be converted to Scalar"
            )
        return self._data.item()

    def tolist(self) -> Any:
        return self._data.tolist()

    def __float__(self) -> float:
        return float(self.item())

    def __int__(self) -> int:
        return int(self.item())

    def __index__(self) -> int:
        if self._data.dtype.kind not in "iub" or self._data.size != 1:
            raise TypeError("only integer tensors of a single element can be converted to an index")
        return int(self.item())

    def __bool__(self) -> bool:
        if self._data.size != 1:
            raise RuntimeError("Boolean value of Tensor with more than one value is ambiguous")
        return bool(self._data.item())

    def __hash__(self) -> int:
        return id(self)

    def __iter__(self):  # noqa: ANN204
        if self._data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self._data.shape[0]))

    def __repr__(self) -> str:
        from engine._printing import format_tensor

        suffixes = []
        if self.grad_fn is not None:
            suffixes.append(f"grad_fn=<{type(self.grad_fn).__name__}>")
        elif self._requires_grad:
            suffixes.append("requires_grad=True")
        return format_tensor(
            self._data,
            dtype_name=self.dtype.name,
            default_float=self.dtype is _dtype.get_default_dtype(),
            suffixes=suffixes,
        )

    def __getstate__(self) -> dict:
        return {"data": self._data, "requires_grad": self._requires_grad}

    def __setstate__(self, state: dict) -> None:
        self._init(state["data"])
        self._requires_grad = state["requires_grad"]

    def to(self, dtype: Any = None, *args: Any, **kwargs: Any) -> Tensor:
        """Cast to ``dtype`` (device strings such as ``"cpu"`` are accepted and ignored)."""
        dtype = kwargs.get("dtype", dtype)
        if dtype is None or isinstance(dtype, str):
            return self
        if isinstance(dtype, Tensor):
            dtype = dtype.dtype
        target = _dtype.to_numpy_dtype(dtype)
        if target == self._data.dtype:
            return self
        if self._requires_grad and target.kind == "f":
            from engine.ops.shape import ToDtype

            return ToDtype(target)(self)
        return Tensor._make(self._data.astype(target))

    def type(self, dtype: Any) -> Tensor:
        return self.to(dtype)

    def float(self) -> Tensor:
        return self.to(_dtype.float32)

    def double(self) -> Tensor:
        return self.to(_dtype.float64)

    def half(self) -> Tensor:
        return self.to(_dtype.float16)

    def long(self) -> Tensor:
        return self.to(_dtype.int64)

    def int(self) -> Tensor:
        return self.to(_dtype.int32)

    def bool(self) -> Tensor:
        return self.to(_dtype.bool_)

    def cpu(self) -> Tensor:
        return self

    def type_as(self, other: Tensor) -> Tensor:
        return self.to(other.dtype)

    # ----------------------------------------------------------------- autograd
    def detach(self) -> Tensor:
        out = Tensor._make(self._data)
        out._vc = self._vc
        return out

    def detach_(self) -> Tensor:
        self.grad_fn, self._requires_grad = None, False
        return self

    def clone(self) -> Tensor:
        from engine.ops.shape import Clone

        return Clone()(self)

    def contiguous(self) -> Tensor:
        if self._data.flags.c_contiguous:
            return self
        return self.clone()

    def is_contiguous(self) -> bool:
        return bool(self._data.flags.c_contiguous)

    def retain_grad(self) -> None:
        if not self._requires_grad:
            raise RuntimeError("can't retain_grad on Tensor that has requires_grad=False")
        if self.grad_fn is not None:
            self.grad_fn.retain_grad(self)

    @property
    def retains_grad(self) -> bool:
        fn = self.grad_fn
        return fn is not None and self._output_nr in (fn._retained or {})

    def register_hook(self, hook: Callable[[Tensor], Tensor | None]) -> RemovableHandle:
        """Call ``hook(grad)`` when this tensor's gradient is computed; it may return a new one."""
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require gradient")
        if self.grad_fn is not None:
            return add_hook(self.grad_fn.output_hooks(self._output_nr), hook)
        return add_hook(self._backward_hooks, hook)

    def register_post_accumulate_grad_hook(self, hook: Callable[[Tensor], None]) -> RemovableHandle:
        if self.grad_fn is not None:
            raise RuntimeError(
                "post accumulate grad hooks cannot be registered on non-leaf tensors"
            )
        return add_hook(self._post_accumulate_hooks, hook)

    def backward(
        self,
        gradient: Tensor | None = None,
        retain_graph: bool | None = None,
        create_graph: bool = False,
    ) -> None:
        from engine.autograd import backward

        backward(self, gradient, retain_graph=retain_graph, create_graph=create_graph)

    # ----------------------------------------------------------------- operators
    def _operand(self, other: Any) -> Tensor:
        """Turn a Python or NumPy scalar (or array) into a tensor of a compatible dtype."""
        if isinstance(other, Tensor):
            return other
        array = np.asarray(other)
        if array.ndim == 0 and isinstance(other, numbers.Number):
            kind = self._data.dtype.kind
            if kind == "f" or (kind in "iu" and isinstance(other, numbers.Integral)):
                target = self._data.dtype if not isinstance(other, bool) or kind != "b" else None
                array = array.astype(target) if target is not None else array
            elif isinstance(other, numbers.Real) and not isinstance(other, numbers.Integral):
                array = array.astype(_dtype.get_default_dtype().numpy)
        return Tensor._make(array)

    def __add__(self, other: Any) -> Tensor:
        return ew.Add()(*promote(self, other))

    def __radd__(self, other: Any) -> Tensor:
        return ew.Add()(*promote(other, self))

    def __sub__(self, other: Any) -> Tensor:
        return ew.Sub()(*promote(self, other))

    def __rsub__(self, other: Any) -> Tensor:
        op = ew.Sub()
        op.backward_name = "RsubBackward1"
        return op(*promote(other, self))

    def __mul__(self, other: Any) -> Tensor:
        return ew.Mul()(*promote(self, other))

    def __rmul__(self, other: Any) -> Tensor:
        return ew.Mul()(*promote(other, self))

    def __truediv__(self, other: Any) -> Tensor:
        return ew.Div()(*promote(self, other, floating=True))

    def __rtruediv__(self, other: Any) -> Tensor:
        if isinstance(other, numbers.Number):  # as torch: other * self.reciprocal()
            return self.reciprocal() * other
        return ew.Div()(*promote(other, self, floating=True))

    def __pow__(self, exponent: Any) -> Tensor:
        if isinstance(exponent, numbers.Number):
            return ew.PowScalar(exponent)(self.to(_dtype.result_type(self._data, exponent)))
        return ew.Pow()(*promote(self, exponent))

    def __rpow__(self, base: Any) -> Tensor:
        op = ew.Pow()
        if isinstance(base, numbers.Number):
            op.backward_name = "PowBackward2"
        return op(*promote(base, self))

    def __matmul__(self, other: Tensor) -> Tensor:
        return linalg.MatMul()(self, self._operand(other))

    def __rmatmul__(self, other: Any) -> Tensor:
        return linalg.MatMul()(self._operand(other), self)

    def __neg__(self) -> Tensor:
        return ew.Neg()(self)

    def __pos__(self) -> Tensor:
        return self

    def __abs__(self) -> Tensor:
        return self.abs()

    def _compare(self, ufunc: np.ufunc, other: Any) -> Tensor:
        return Tensor._make(ufunc(self._data, self._operand(other)._data))

    def __eq__(self, other: Any) -> Tensor:  # type: ignore[override]
        return self._compare(np.equal, other)

    def __ne__(self, other: Any) -> Tensor:  # type: ignore[override]
        return self._compare(np.not_equal, other)

    def __lt__(self, other: Any) -> Tensor:
        return self._compare(np.less, other)

    def __le__(self, other: Any) -> Tensor:
        return self._compare(np.less_equal, other)

    def __gt__(self, other: Any) -> Tensor:
        return self._compare(np.greater, other)

    def __ge__(self, other: Any) -> Tensor:
        return self._compare(np.greater_equal, other)

    def __and__(self, other: Any) -> Tensor:
        return self._compare(np.bitwise_and, other)

    def __or__(self, other: Any) -> Tensor:
        return self._compare(np.bitwise_or, other)

    def __xor__(self, other: Any) -> Tensor:
        return self._compare(np.bitwise_xor, other)

    def __invert__(self) -> Tensor:
        return Tensor._make(np.invert(self._data))

    eq, ne, lt, le, gt, ge = __eq__, __ne__, __lt__, __le__, __gt__, __ge__
    add, sub, mul, div, pow, matmul, neg = (
        __add__,
        __sub__,
        __mul__,
        __truediv__,
        __pow__,
        __matmul__,
        __neg__,
    )
    mm = matmul

    def equal(self, other: Tensor) -> bool:
        return self.shape == other.shape and bool(np.array_equal(self._data, other._data))

    def allclose(self, other: Tensor, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
        return bool(np.allclose(self._data, other._data, rtol=rtol, atol=atol))

    # ----------------------------------------------------------------- element-wise
    def exp(self) -> Tensor:
        return ew.Exp()(self)

    def log(self) -> Tensor:
        return ew.Log()(self)

    def sqrt(self) -> Tensor:
        return ew.Sqrt()(self)

    def rsqrt(self) -> Tensor:
        return ew.Rsqrt()(self)

    def reciprocal(self) -> Tensor:
        return ew.Reciprocal()(self.to(_dtype.result_type(self._data, 1.0)))

    def abs(self) -> Tensor:
        return ew.Abs()(self)

    def clamp(self, min: float | None = None, max: float | None = None) -> Tensor:  # noqa: A002
        if min is None and max is None:
            raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
        return ew.Clamp(min, max)(self)

    clip = clamp

    def clamp_min(self, min: float) -> Tensor:  # noqa: A002
        op = ew.Clamp(min, None)
        op.backward_name = "ClampMinBackward0"
        return op(self)

    def relu(self) -> Tensor:
        return ew.Relu()(self)

    def sigmoid(self) -> Tensor:
        return ew.Sigmoid()(self)

    def tanh(self) -> Tensor:
        return ew.Tanh()(self)

    def square(self) -> Tensor:
        return self**2

    def sign(self) -> Tensor:
        return ew.Sign()(self)

    def softmax(self, dim: int) -> Tensor:
        return red.Softmax(dim)(self)

    def log_softmax(self, dim: int) -> Tensor:
        return red.LogSoftmax(dim)(self)

    # ----------------------------------------------------------------- reductions
    def sum(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        red_op = red.Sum(dim, keepdim)
        if dim is not None:
            red_op.backward_name = "SumBackward1"
        return red_op(self)

    def mean(self, dim: Any = None, keepdim: bool = False) -> Tensor:
        red_op = red.Mean(dim, keepdim)
        if dim is not None:
            red_op.backward_name = "MeanBackward1"
        return red_op(self)

    def amax(self, dim: Any = (), keepdim: bool = False) -> Tensor:
        return red.Amax(None if dim == () else dim, keepdim)(self)

    def amin(self, dim: Any = (), keepdim: bool = False) -> Tensor:
        return red.Amin(None if dim == () else dim, keepdim)(self)

    def max(self, dim: int | Tensor | None = None, keepdim: bool = False) -> Any:
        """``max()`` of all elements, ``max(dim)`` -> (values, indices), ``max(other)``."""
        if isinstance(dim, Tensor):
            return ew.Maximum(largest=True)(*promote(self, dim))
        if dim is None:
            op = red.Amax(None, False)
            op.backward_name = "MaxBackward1"
            return op(self)
        return MinMax(*red.MaxDim(dim, keepdim)(self))

    def min(self, dim: int | Tensor | None = None, keepdim: bool = False) -> Any:
        if isinstance(dim, Tensor):
            return ew.Maximum(largest=False)(*promote(self, dim))
        if dim is None:
            op = red.Amin(None, False)
            op.backward_name = "MinBackward1"
            return op(self)
        op = red.MaxDim(dim, keepdim, largest=False)
        op.backward_name = "MinBackward0"
        return MinMax(*op(self))

    def argmax(self, dim: int | None = None, keepdim: bool = False) -> Tensor:
        if dim is None:
            return Tensor._make(np.asarray(self._data.argmax(), dtype=np.int64))
        axis = red.wrap_dim(dim, self.ndim)
        return Tensor._make(self._data.argmax(axis=axis, keepdims=keepdim).astype(np.int64))

    def argmin(self, dim: int | None = None, keepdim: bool = False) -> Tensor:
        if dim is None:
            return Tensor._make(np.asarray(self._data.argmin(), dtype=np.int64))
        axis = red.wrap_dim(dim, self.ndim)
        return Tensor._make(self._data.argmin(axis=axis, keepdims=keepdim).astype(np.int64))

    def var(self, dim: Any = None, unbiased: bool = True, keepdim: bool = False) -> Tensor:
        return red.Var(dim, unbiased, keepdim)(self)

    def std(self, dim: Any = None, unbiased: bool = True, keepdim: bool = False) -> Tensor:
        return red.Std(dim, unbiased, keepdim)(self)

    def norm(self, p: float = 2, dim: Any = None, keepdim: bool = False) -> Tensor:
        return red.VectorNorm(p, dim, keepdim)(self)

    def all(self) -> Tensor:
        return Tensor._make(np.asarray(self._data.all()))

    def any(self) -> Tensor:
        return Tensor._make(np.asarray(self._data.any()))

    # ----------------------------------------------------------------- shape
    def reshape(self, *shape: Any) -> Tensor:
        return shp.Reshape(_shape_args(shape))(self)

    def view(self, *shape: Any) -> Tensor:
        if len(shape) == 1 and not isinstance(shape[0], Sequence | int):
            return self.to(shape[0])
        return shp.Reshape(_shape_args(shape), must_view=True)(self)

    def view_as(self, other: Tensor) -> Tensor:
        return self.view(other.shape)

    def reshape_as(self, other: Tensor) -> Tensor:
        return self.reshape(other.shape)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        if self.ndim == 0:
            return self.reshape(1)
        start, end = red.wrap_dim(start_dim, self.ndim), red.wrap_dim(end_dim, self.ndim)
        if start > end:
            raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
        shape = self.shape[:start] + (-1,) + self.shape[end + 1 :]
        return self.reshape(shape) if start < end else self

    def unflatten(self, dim: int, sizes: Sequence[int]) -> Tensor:
        dim = red.wrap_dim(dim, self.ndim)
        if -1 not in sizes and int(np.prod(sizes)) != self.shape[dim]:
            raise RuntimeError(
                f"unflatten: Provided sizes {list(sizes)} don't multiply up to the size of dim "
                f"{dim} ({self.shape[dim]}) in the input tensor"
            )
        return self.reshape(self.shape[:dim] + tuple(sizes) + self.shape[dim + 1 :])

    def permute(self, *dims: Any) -> Tensor:
        return shp.Permute(_shape_args(dims))(self)

    def transpose(self, dim0: int, dim1: int) -> Tensor:
        return shp.Transpose(dim0, dim1)(self)

    def t(self) -> Tensor:
        if self.ndim > 2:
            raise RuntimeError(
                f"t() expects a tensor with <= 2 dimensions, but self is {self.ndim}D"
            )
        op = shp.Transpose(0, -1)
        op.backward_name = "TBackward0"
        return op(self) if self.ndim == 2 else self

    @property
    def T(self) -> Tensor:  # noqa: N802
        return self.permute(tuple(reversed(range(self.ndim))))

    @property
    def mT(self) -> Tensor:  # noqa: N802
        return self.transpose(-2, -1)

    def squeeze(self, dim: int | None = None) -> Tensor:
        if dim is None:
            return self._view(tuple(n for n in self.shape if n != 1), "SqueezeBackward0")
        (dim,) = red.normalize_dims(dim, self.ndim)
        if self.ndim == 0 or self.shape[dim] != 1:
            return self._view(self.shape, "SqueezeBackward1")
        return self._view(self.shape[:dim] + self.shape[dim + 1 :], "SqueezeBackward1")

    def unsqueeze(self, dim: int) -> Tensor:
        (dim,) = red.normalize_dims(dim, self.ndim + 1)
        return self._view(self.shape[:dim] + (1,) + self.shape[dim:], "UnsqueezeBackward0")

    def _view(self, shape: Shape, backward_name: str) -> Tensor:
        """A view with another shape whose grad_fn is named as torch names the calling op."""
        op = shp.Reshape(shape, must_view=True)
        op.backward_name = backward_name
        return op(self)

    def expand(self, *sizes: Any) -> Tensor:
        sizes = _shape_args(sizes)
        lead = len(sizes) - self.ndim
        if lead < 0:
            raise RuntimeError(
                f"expand(torch.{_dtype.scalar_type_name(self._data.dtype)}Tensor"
                f"{{{list(self.shape)}}}, size={list(sizes)}): the number of sizes provided "
                f"({len(sizes)}) must be greater or equal to the number of dimensions in the "
                f"tensor ({self.ndim})"
            )
        shape = tuple(self.shape[i - lead] if n == -1 else n for i, n in enumerate(sizes))
        for i, n in enumerate(self.shape):
            if n != 1 and n != shape[lead + i]:
                raise RuntimeError(
                    f"The expanded size of the tensor ({shape[lead + i]}) must match the existing "
                    f"size ({n}) at non-singleton dimension {lead + i}.  Target sizes: "
                    f"{list(sizes)}.  Tensor sizes: {list(self.shape)}"
                )
        return ew.broadcast_to(self, shape)

    def expand_as(self, other: Tensor) -> Tensor:
        return self.expand(other.shape)

    def repeat(self, *sizes: Any) -> Tensor:
        return shp.Repeat(_shape_args(sizes))(self)

    def select(self, dim: int, index: int) -> Tensor:
        key = (slice(None),) * red.wrap_dim(dim, self.ndim) + (index,)
        return self[key]

    def chunk(self, chunks: int, dim: int = 0) -> list[Tensor]:
        size = -(-self.shape[red.wrap_dim(dim, self.ndim)] // chunks)
        return self.split(size, dim)

    def split(self, size: int, dim: int = 0) -> list[Tensor]:
        dim = red.wrap_dim(dim, self.ndim)
        prefix = (slice(None),) * dim
        parts = []
        for i in range(0, self.shape[dim], size):
            op = idx.Index(prefix + (slice(i, i + size),))
            op.backward_name = "SplitBackward0"
            parts.append(op(self))
        return parts

    # ----------------------------------------------------------------- indexing
    def __getitem__(self, key: Any) -> Tensor:
        return idx.Index(idx.to_numpy_index(key))(self)

    def __setitem__(self, key: Any, value: Any) -> None:
        key = idx.to_numpy_index(key)
        value = self._operand(value)
        target = idx.indexed(np.broadcast_to(np.zeros((), np.int8), self.shape), key).shape
        shape = value.shape[next((i for i, n in enumerate(value.shape) if n != 1), value.ndim) :]
        if shape != target[len(target) - len(shape) :]:
            value.detach().reshape(shape).expand(target)  # raises torch's error if it must
        if self._records_inplace(value):
            op = idx.IndexPut(key)
            if idx.is_basic(key):  # torch writes into a view of itself: CopySlices
                op.backward_name = "CopySlices"
            self._rebase(op(self, value))
        else:
            self._data[key] = value._data
            self._vc[0] += 1

    # ----------------------------------------------------------------- in place
    def _check_inplace(self) -> None:
        if not is_grad_enabled():
            return
        if self._requires_grad and self.grad_fn is None:
            raise RuntimeError(
                "a leaf Variable that requires grad is being used in an in-place operation."
            )
        base = self._base
        if base is not None and base._requires_grad and base.grad_fn is None:
            raise RuntimeError(
                "a view of a leaf Variable that requires grad is being used in an in-place "
                "operation."
            )

    def _check_no_overlap(self) -> None:
        """Refuse to compute in place into an expanded tensor, whose elements share memory."""
        if any(s == 0 and n > 1 for s, n in zip(self._data.strides, self.shape, strict=True)):
            raise RuntimeError(
                "unsupported operation: more than one element of the written-to tensor refers to "
                "a single memory location. Please clone() the tensor before performing the "
                "operation."
            )

    def _records_inplace(self, *others: Tensor) -> bool:
        """Whether an in-place op must go through the graph (else it just writes the array)."""
        self._check_inplace()
        return is_grad_enabled() and (
            self._requires_grad or any(isinstance(o, Tensor) and o._requires_grad for o in others)
        )

    def _rebase(self, result: Tensor) -> Tensor:
        """Write ``result`` into this tensor's storage and make its grad_fn this tensor's."""
        fn = result.grad_fn
        if fn is not None and fn._saved_tensors:  # the op saved the values about to be overwritten
            fn._saved_tensors = tuple(
                (self._snapshot(), 0) if t is self else (t, v) for t, v in fn._saved_tensors
            )
        base = self._base
        if base is not None and (base._requires_grad or result._requires_grad):
            # the base changes too: its new grad_fn puts the result into it (torch's CopySlices)
            op = idx.IndexPut(_view_positions(self._data, base._data))
            op.backward_name = "CopySlices"
            base._rebase(op(base, result))
        else:
            np.copyto(self._data, result._data, casting="unsafe")
            self._vc[0] += 1
        retains = self.retains_grad
        if retains:  # retain_grad follows the tensor to its latest version, as in torch
            del self.grad_fn._retained[self._output_nr]
        self.grad_fn, self._output_nr = result.grad_fn, result._output_nr
        self._requires_grad = result._requires_grad
        if retains:
            self.grad_fn.retain_grad(self)
        if result.grad_fn is not None and result.grad_fn._saved_tensors:
            result.grad_fn._saved_tensors = tuple(
                (self, self._vc[0]) if t is result else (t, v)
                for t, v in result.grad_fn._saved_tensors
            )
        return self

    def _snapshot(self) -> Tensor:
        """A copy of the current values that keeps this tensor's place in the graph."""
        t = Tensor._make(self._data.copy())
        t.grad_fn, t._output_nr = self.grad_fn, self._output_nr
        t._requires_grad = self._requires_grad
        return t

    def _inplace(self, ufunc: np.ufunc, other: Any, out_of_place: Callable[[], Tensor]) -> Tensor:
        self._check_no_overlap()
        other = self._operand(other)
        result = promote(self, other, floating=ufunc is np.true_divide)[0]._data.dtype
        if not _dtype.can_cast(result, self._data.dtype):
            raise RuntimeError(
                f"result type {_dtype.scalar_type_name(result)} can't be cast to the desired "
                f"output type {_dtype.scalar_type_name(self._data.dtype)}"
            )
        if self._records_inplace(other):
            return self._rebase(out_of_place())
        ufunc(self._data, other._data, out=self._data, casting="unsafe")
        self._vc[0] += 1
        return self

    def add_(self, other: Any, alpha: float = 1) -> Tensor:
        if alpha != 1:
            other = self._operand(other) * alpha
        return self._inplace(np.add, other, lambda: self + other)

    def sub_(self, other: Any, alpha: float = 1) -> Tensor:
        if alpha != 1:
            other = self._operand(other) * alpha
        return self._inplace(np.subtract, other, lambda: self - other)

    def mul_(self, other: Any) -> Tensor:
        return self._inplace(np.multiply, other, lambda: self * other)

    def div_(self, other: Any) -> Tensor:
        return self._inplace(np.true_divide, other, lambda: self / other)

    __iadd__, __isub__, __imul__, __itruediv__ = add_, sub_, mul_, div_

    def addcmul_(self, a: Tensor, b: Tensor, value: float = 1) -> Tensor:
        return self._add_named(a * b * value if value != 1 else a * b, "AddcmulBackward0")

    def addcdiv_(self, a: Tensor, b: Tensor, value: float = 1) -> Tensor:
        return self._add_named(a / b * value if value != 1 else a / b, "AddcdivBackward0")

    def lerp_(self, end: Tensor, weight: float) -> Tensor:
        return self._add_named((end - self) * weight, "LerpBackward0")

    def _add_named(self, other: Tensor, backward_name: str) -> Tensor:
        """``add_`` whose node is named after the fused op torch records."""
        op = ew.Add()
        op.backward_name = backward_name
        return self._inplace(np.add, other, lambda: op(*promote(self, other)))

    def copy_(self, src: Any) -> Tensor:
        src = self._operand(src)
        if self._records_inplace(src):
            return self._overwrite(src, "CopyBackwards")
        np.copyto(self._data, src._data, casting="unsafe")
        self._vc[0] += 1
        return self

    def _unary_inplace(self, out_of_place: Callable[[], Tensor]) -> Tensor:
        self._check_no_overlap()
        if self._records_inplace():
            return self._rebase(out_of_place())
        with no_grad():
            np.copyto(self._data, out_of_place()._data)
        self._vc[0] += 1
        return self

    def clamp_(self, min: float | None = None, max: float | None = None) -> Tensor:  # noqa: A002
        return self._unary_inplace(lambda: self.clamp(min, max))

    def relu_(self) -> Tensor:
        return self._unary_inplace(self.relu)

    def exp_(self) -> Tensor:
        return self._unary_inplace(self.exp)

    def sqrt_(self) -> Tensor:
        return self._unary_inplace(self.sqrt)

    def neg_(self) -> Tensor:
        return self._unary_inplace(self.__neg__)

    def _overwrite(self, src: Tensor, backward_name: str) -> Tensor:
        """Replace every value by ``src`` (broadcast) in the graph: the old values get a zero
        gradient, ``src`` the gradient of the places it filled."""
        op = ew.Where(np.zeros(self.shape, bool))
        op.backward_name = backward_name
        return self._rebase(op(self, src.to(self.dtype)))

    def _fill(self, values: np.ndarray | Scalar, backward_name: str) -> Tensor:
        """Overwrite with constants; inside the graph the old values get a zero gradient."""
        if self._records_inplace():
            constant = Tensor._make(np.asarray(values, self._data.dtype))
            return self._overwrite(constant, backward_name)
        self._data[...] = values
        self._vc[0] += 1
        return self

    def zero_(self) -> Tensor:
        return self._fill(0, "ZeroBackward0")

    def fill_(self, value: Scalar) -> Tensor:
        return self._fill(value, "FillBackward2")

    def normal_(self, mean: float = 0.0, std: float = 1.0) -> Tensor:
        return self._fill(_random.generator().normal(mean, std, self.shape), "NormalBackward0")

    def uniform_(self, a: float = 0.0, b: float = 1.0) -> Tensor:
        return self._fill(_random.generator().uniform(a, b, self.shape), "UniformBackward0")

    # ----------------------------------------------------------------- new tensors
    def new_zeros(self, *size: Any) -> Tensor:
        return Tensor._make(np.zeros(_shape_args(size), self._data.dtype))

    def new_ones(self, *size: Any) -> Tensor:
        return Tensor._make(np.ones(_shape_args(size), self._data.dtype))

    def new_tensor(self, data: Any) -> Tensor:
        return Tensor._make(np.array(data, dtype=self._data.dtype))


class MinMax(tuple):
    """``(values, indices)`` as torch's ``max(dim)`` returns them."""

    def __new__(cls, values: Tensor, indices: Tensor) -> MinMax:
        return super().__new__(cls, (values, indices))

    @property
    def values(self) -> Tensor:
        return self[0]

    @property
    def indices(self) -> Tensor:
        return self[1]


def _view_positions(view: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, ...]:
    """The index into ``base`` of each element of ``view``, an array sharing its memory."""

    def addresses(a: np.ndarray) -> np.ndarray:
        grid = np.indices(a.shape, sparse=True)
        return sum((g * s for g, s in zip(grid, a.strides, strict=True)), a.ctypes.data)

    base_addresses = np.broadcast_to(addresses(base), base.shape).ravel()
    order = np.argsort(base_addresses)
    flat = order[np.searchsorted(base_addresses, addresses(view), sorter=order)]
    return np.unravel_index(np.broadcast_to(flat, view.shape), base.shape)


def promote(*operands: Any, floating: bool = False) -> tuple[Tensor, ...]:
    """Operands (tensors, Python scalars, arrays) as tensors of the dtype torch computes in (see
    ``_dtype.result_type``); ``floating`` lifts an integer result to the default float, as true
    division does."""
    operands = tuple(
        o if isinstance(o, Tensor | numbers.Number) else Tensor._make(np.asarray(o))
        for o in operands
    )
    target = _dtype.result_type(*(o._data if isinstance(o, Tensor) else o for o in operands))
    if floating and target.kind != "f":
        target = _dtype.get_default_dtype().numpy
    return tuple(
        o.to(target) if isinstance(o, Tensor) else Tensor._make(np.asarray(o, target))
        for o in operands
    )


def cat(tensors: Sequence[Tensor], dim: int = 0) -> Tensor:
    return shp.Cat(dim)(*tensors)


from engine import random as _random  # noqa: E402
from engine.ops import elementwise as ew  # noqa: E402
from engine.ops import index as idx  # noqa: E402
from engine.ops import linalg  # noqa: E402
from engine.ops import reduce as red  # noqa: E402
from engine.ops import shape as shp  # noqa: E402
