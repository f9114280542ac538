"""Matrix products with batch broadcasting."""

from __future__ import annotations

import math

import numpy as np

from engine.autograd.function import Op
from engine.ops.elementwise import check_broadcastable, sum_to
from engine.parallel import matmul
from engine.tensor import Tensor


def _matmul_node_name(a_ndim: int, b_ndim: int) -> str:
    """The last node torch's matmul records for these input ranks (it is a composite op)."""
    named = {(1, 1): "DotBackward0", (2, 1): "MvBackward0", (1, 2): "SqueezeBackward4"}
    named[2, 2] = "MmBackward0"
    if (a_ndim, b_ndim) in named:
        return named[a_ndim, b_ndim]
    # a matrix times a batch is computed transposed, then copied; the rest are reshaped
    return "CloneBackward0" if a_ndim == 2 else "UnsafeViewBackward0"


def _check_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    """Raise torch's error (worded by the kernel torch would run) for shapes matmul refuses."""
    k, inner = a[-1], b[0 if len(b) == 1 else -2]
    if len(b) > 2:
        batch = b[:-2]
        if len(a) > 2:
            check_broadcastable(a[:-2], b[:-2])
            batch = np.broadcast_shapes(a[:-2], b[:-2])
        if k != inner:
            n = math.prod(batch)
            raise RuntimeError(
                "Expected size for first two dimensions of batch2 tensor to be: "
                f"[{n}, {k}] but got: [{n}, {inner}]."
            )
    elif k != inner:
        rows = math.prod(a[:-1])
        if len(a) == len(b) == 1:
            raise RuntimeError(
                f"inconsistent tensor size, expected tensor [{k}] and src [{inner}] to have the "
                f"same number of elements, but got {k} and {inner} elements respectively"
            )
        if len(b) == 1:
            raise RuntimeError(
                f"size mismatch, got input ({rows}), mat ({rows}x{k}), vec ({inner})"
            )
        raise RuntimeError(
            f"mat1 and mat2 shapes cannot be multiplied ({rows}x{k} and {inner}x{b[-1]})"
        )


class MatMul(Op):
    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.ndim == 0 or b.ndim == 0:
            raise RuntimeError(
                "both arguments to matmul need to be at least 1D, but they are "
                f"{a.ndim}D and {b.ndim}D"
            )
        _check_shapes(a.shape, b.shape)
        need_a, need_b = self.needs_input_grad
        self.save_inputs(0 if need_b else None, 1 if need_a else None)  # each needs the other
        self.shapes = (a.shape, b.shape)
        self.backward_name = _matmul_node_name(a.ndim, b.ndim)
        return matmul(a, b)

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.saved_tensors
        a_shape, b_shape = self.shapes
        a2_shape = (1, *a_shape) if len(a_shape) == 1 else a_shape  # vectors as matrices
        b2_shape = (*b_shape, 1) if len(b_shape) == 1 else b_shape
        batch = np.broadcast_shapes(a2_shape[:-2], b2_shape[:-2])
        g = gy.reshape(batch + (a2_shape[-2], b2_shape[-1]))  # the product of the matrices
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = sum_to(g @ b.reshape(b2_shape).transpose(-1, -2), a2_shape).reshape(a_shape)
        if self.needs_input_grad[1]:
            gb = sum_to(a.reshape(a2_shape).transpose(-1, -2) @ g, b2_shape).reshape(b_shape)
        return ga, gb


class Addmm(Op):
    """``bias + a @ b`` for matrices, as ``torch.addmm`` (``linear`` with a bias on 2-d input)."""

    def forward(self, bias: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        _check_shapes(a.shape, b.shape)
        _, need_a, need_b = self.needs_input_grad
        self.save_inputs(None, 1 if need_b else None, 2 if need_a else None)
        self.bias_shape = bias.shape
        return np.add(matmul(a, b), bias)

    def backward(self, gy: Tensor) -> tuple:
        _, a, b = self.saved_tensors
        need_bias, need_a, need_b = self.needs_input_grad
        return (
            sum_to(gy, self.bias_shape) if need_bias else None,
            gy @ b.t() if need_a else None,
            a.t() @ gy if need_b else None,
        )
