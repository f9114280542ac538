"""The GEMM floor of a step, for `finetune bench --profile`: its matrix products alone, at the
SGEMM rate of this machine measured in the same process.

While `count_products()` is active, every convolution adds the floating-point operations of
the matrix products it runs (the engine's `Convolution.product_flops`: forward when called,
the input and weight gradients its backward computes; Winograd's reduced products as such).
`sgemm_gflops()` times NumPy's float32 matrix product of two `SGEMM_SIZE` squares. The rest
of the step (transforms, copies, BatchNorm, pooling, optimizer, autograd) is what the floor
leaves out; the fc layer's product is under 0.1% of the step's.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

SGEMM_SIZE = 2048
SGEMM_REPEATS = 3
CONVOLUTION = ("engine.nn.kernels.conv", "Convolution")


def sgemm_gflops(size: int = SGEMM_SIZE, repeats: int = SGEMM_REPEATS) -> float:
    """The engine's float32 matrix product of two `size` squares (NumPy's, split over the
    engine's threads when they drive BLAS), GFLOP/s: the best of `repeats` after one untimed
    product."""
    import numpy as np

    from engine.parallel import matmul

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    out = a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


@dataclass
class Products:
    """Floating-point operations of the convolutions' matrix products so far."""

    flops: int = 0


@contextmanager
def count_products() -> Iterator[Products]:
    """Count the convolutions' matrix products while active."""
    module, name = CONVOLUTION
    conv: Any = getattr(importlib.import_module(module), name)
    forward, backward = vars(conv)["forward"], vars(conv)["backward"]
    products = Products()

    def counted_forward(op: Any, *args: Any) -> Any:
        out = forward(op, *args)
        products.flops += op.product_flops()[0]
        return out

    def counted_backward(op: Any, *args: Any) -> Any:
        _, input_grad, weight_grad = op.product_flops()
        need_x, need_w = op.needs_input_grad[:2]
        products.flops += input_grad * bool(need_x) + weight_grad * bool(need_w)
        return backward(op, *args)

    conv.forward, conv.backward = counted_forward, counted_backward
    try:
        yield products
    finally:
        conv.forward, conv.backward = forward, backward


def floor(gemm_gflop: float, gflops: float, step_ms: float) -> dict[str, float]:
    """The floor in ms of a step of `gemm_gflop` at `gflops`, and the step's ratio to it."""
    floor_ms = gemm_gflop / gflops * 1e3
    return {"floor_ms": floor_ms, "floor_ratio": step_ms / floor_ms if floor_ms else 0.0}
