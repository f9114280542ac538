"""Ops that rearrange elements: reshape/view, permute, transpose, cat, stack, clone."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.autograd.function import Op
from engine.ops.reduce import wrap_dim
from engine.tensor import Tensor


def infer_shape(shape: Sequence[int], numel: int) -> tuple[int, ...]:
    shape = tuple(int(n) for n in shape)
    if shape.count(-1) > 1:
        raise RuntimeError("only one dimension can be inferred")
    known = int(np.prod([n for n in shape if n != -1]))
    if -1 in shape:
        if known == 0 or numel % known:
            raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {numel}")
        shape = tuple(numel // known if n == -1 else n for n in shape)
    elif known != numel:
        raise RuntimeError(f"shape '{list(shape)}' is invalid for input of size {numel}")
    return shape


class Reshape(Op):
    """``reshape`` (a view when strides allow, else a copy) and ``view`` (a view or an error)."""

    def __init__(self, shape: Sequence[int], must_view: bool = False) -> None:
        self.shape, self.must_view = tuple(shape), must_view
        self.backward_name = "ViewBackward0"

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.in_shape = x.shape
        shape = infer_shape(self.shape, x.size)
        try:
            y = np.reshape(x, shape, copy=False)
        except ValueError:
            if self.must_view:
                raise RuntimeError(
                    "view size is not compatible with input tensor's size and stride (at least one "
                    "dimension spans across two contiguous subspaces). Use .reshape(...) instead."
                ) from None
            self.backward_name = "UnsafeViewBackward0"
            return np.reshape(x, shape)
        self.view_of = 0
        return y

    def backward(self, gy: Tensor) -> Tensor:
        return gy.reshape(self.in_shape)


class Permute(Op):
    view_of = 0

    def __init__(self, dims: Sequence[int]) -> None:
        self.dims = tuple(dims)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if len(self.dims) == x.ndim:
            self.dims = tuple(wrap_dim(d, x.ndim) for d in self.dims)
            if len(set(self.dims)) < x.ndim:
                raise RuntimeError("permute(): duplicate dims are not allowed.")
        else:
            raise RuntimeError(
                f"permute(sparse_coo): number of dimensions in the tensor input does not match the "
                f"length of the desired ordering of dimensions i.e. input.dim() = {x.ndim} is not "
                f"equal to len(dims) = {len(self.dims)}"
            )
        return x.transpose(self.dims)

    def backward(self, gy: Tensor) -> Tensor:
        return gy.permute(tuple(np.argsort(self.dims)))


class Transpose(Op):
    view_of = 0

    def __init__(self, dim0: int, dim1: int) -> None:
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.dim0, self.dim1 = wrap_dim(self.dim0, x.ndim), wrap_dim(self.dim1, x.ndim)
        return np.swapaxes(x, self.dim0, self.dim1)

    def backward(self, gy: Tensor) -> Tensor:
        return gy.transpose(self.dim0, self.dim1)


class Repeat(Op):
    """``repeat``: the tensor tiled ``sizes`` times along each dimension (new leading ones too);
    the gradient sums the tiles."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = tuple(sizes)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if len(self.sizes) < x.ndim:
            raise RuntimeError(
                "Number of dimensions of repeat dims can not be smaller than number of dimensions "
                "of tensor"
            )
        self.in_shape = x.shape
        return np.tile(x, self.sizes)

    def backward(self, gy: Tensor) -> Tensor:
        shape = (1,) * (len(self.sizes) - len(self.in_shape)) + self.in_shape
        tiles = tuple(n for pair in zip(self.sizes, shape, strict=True) for n in pair)
        summed = gy.reshape(tiles).sum(tuple(range(0, len(tiles), 2)))
        return summed.reshape(self.in_shape)


class Clone(Op):
    def forward(self, x: np.ndarray) -> np.ndarray:
        return x.copy()

    def backward(self, gy: Tensor) -> Tensor:
        return gy


class ToDtype(Op):
    """Cast to another floating dtype; the gradient is cast back."""

    backward_name = "ToCopyBackward0"

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.in_dtype = x.dtype
        return x.astype(self.dtype)

    def backward(self, gy: Tensor) -> Tensor:
        return ToDtype(self.in_dtype)(gy)


class Cat(Op):
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def forward(self, *xs: np.ndarray) -> np.ndarray:
        if not xs:
            raise ValueError("torch.cat(): expected a non-empty list of Tensors")
        self.dim = wrap_dim(self.dim, xs[0].ndim)
        for i, x in enumerate(xs[1:], 1):
            if x.ndim != xs[0].ndim:
                raise RuntimeError(
                    f"Tensors must have same number of dimensions: got {xs[0].ndim} and {x.ndim}"
                )
            for d, (want, got) in enumerate(zip(xs[0].shape, x.shape, strict=True)):
                if d != self.dim and want != got:
                    raise RuntimeError(
                        f"Sizes of tensors must match except in dimension {self.dim}. Expected "
                        f"size {want} but got size {got} for tensor number {i} in the list."
                    )
        self.sizes = [x.shape[self.dim] for x in xs]
        return np.concatenate(xs, axis=self.dim)

    def backward(self, gy: Tensor) -> tuple:
        grads, start = [], 0
        for size, need in zip(self.sizes, self.needs_input_grad, strict=True):
            index = [slice(None)] * gy.ndim
            index[self.dim] = slice(start, start + size)
            grads.append(gy[tuple(index)] if need else None)
            start += size
        return tuple(grads)


class Stack(Op):
    def __init__(self, dim: int) -> None:
        self.dim = dim

    def forward(self, *xs: np.ndarray) -> np.ndarray:
        if not xs:
            raise RuntimeError("stack expects a non-empty TensorList")
        self.dim = wrap_dim(self.dim, xs[0].ndim + 1)
        for i, x in enumerate(xs[1:], 1):
            if x.shape != xs[0].shape:
                raise RuntimeError(
                    f"stack expects each tensor to be equal size, but got {list(xs[0].shape)} at "
                    f"entry 0 and {list(x.shape)} at entry {i}"
                )
        return np.stack(xs, axis=self.dim)

    def backward(self, gy: Tensor) -> tuple:
        return tuple(
            gy.select(self.dim, i) if need else None for i, need in enumerate(self.needs_input_grad)
        )
