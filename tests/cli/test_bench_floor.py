"""The GEMM floor of `finetune bench --profile`: the convolutions' matrix products counted as
the engine runs them (im2col, one product per kernel offset, Winograd F(2x2) and F(4x4)), and
the floor from a rate."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from cli.bench.floor import count_products, floor, sgemm_gflops
from engine.nn import functional as F
from engine.nn.kernels import direct


def _conv_flops(shape: tuple, weight: tuple, dtype: type, backward: bool, **kw: int) -> int:
    x = engine.from_numpy(np.ones(shape, dtype)).requires_grad_()
    w = engine.from_numpy(np.ones(weight, dtype)).requires_grad_()
    with count_products() as products:
        y = F.conv2d(x, w, **kw)
        if backward:
            y.sum().backward()
    return products.flops


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "train"])
def test_im2col_products(backward: bool):
    """A strided conv: 2 * (N Ho Wo) * Cout * (kh kw Cin) per product, three in training."""
    flops = _conv_flops((2, 3, 8, 8), (4, 3, 3, 3), np.float32, backward, stride=2, padding=1)
    assert flops == (3 if backward else 1) * 2 * (2 * 4 * 4) * 4 * (3 * 3 * 3)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "train"])
def test_offset_products_skip_the_padding(backward: bool):
    """A wide 3x3 conv on 2x2 maps, one product per kernel offset: the centre offset reaches
    4 outputs an image, the edge ones 2, the corners 1 (16 of im2col's 36)."""
    cin = direct.MIN_CHANNELS
    flops = _conv_flops((2, cin, 2, 2), (4, cin, 3, 3), np.float32, backward, padding=1)
    assert flops == (3 if backward else 1) * 2 * (2 * 16) * 4 * cin


@pytest.mark.parametrize(("dtype", "side", "m"), [(np.float32, 8, 4), (np.float64, 8, 2)])
def test_winograd_products_are_the_reduced_ones(dtype: type, side: int, m: int):
    """(m+2)^2 products over channels per m x m block: float32 8x8 takes F(4x4), float64
    F(2x2)."""
    flops = _conv_flops((2, 3, side, side), (5, 3, 3, 3), dtype, True, padding=1)
    tiles = 2 * (side // m) ** 2
    assert flops == 3 * 2 * (m + 2) ** 2 * tiles * 3 * 5


def test_floor_and_rate():
    assert floor(3.0, 150.0, 40.0) == {"floor_ms": 20.0, "floor_ratio": 2.0}
    assert sgemm_gflops(size=64, repeats=1) > 0
