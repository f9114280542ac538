"""Matrix products with batch broadcasting."""

from __future__ import annotations

import numpy as np

from engine.autograd.function import Op
from engine.ops.elementwise import sum_to
from engine.tensor import Tensor


class MatMul(Op):
    backward_name = "MmBackward0"

    def forward(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.ndim == 0 or b.ndim == 0:
            raise RuntimeError(
                "both arguments to matmul need to be at least 1D, but they are "
                f"{a.ndim}D and {b.ndim}D"
            )
        inner = b.shape[0 if b.ndim == 1 else -2]
        if a.shape[-1] != inner:
            rows, cols = a.shape[-2] if a.ndim > 1 else 1, b.shape[-1] if b.ndim > 1 else 1
            raise RuntimeError(
                f"mat1 and mat2 shapes cannot be multiplied ({rows}x{a.shape[-1]} and "
                f"{inner}x{cols})"
            )
        self.save_inputs(0, 1)
        self.backward_name = {(1, 1): "DotBackward0", (2, 1): "MvBackward0"}.get(
            (a.ndim, b.ndim), "MmBackward0"
        )
        return np.matmul(a, b)

    def backward(self, gy: Tensor) -> tuple:
        a, b = self.saved_tensors
        a2 = a.unsqueeze(0) if a.ndim == 1 else a
        b2 = b.unsqueeze(-1) if b.ndim == 1 else b
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        g = gy.reshape(batch + (a2.shape[-2], b2.shape[-1]))  # the product of a2 and b2
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = sum_to(g @ b2.transpose(-1, -2), a2.shape).reshape(a.shape)
        if self.needs_input_grad[1]:
            gb = sum_to(a2.transpose(-1, -2) @ g, b2.shape).reshape(b.shape)
        return ga, gb
