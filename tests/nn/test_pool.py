"""Pooling: finite-difference gradients, torch parity (ceil mode, padding, ties), errors."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.autograd import gradcheck
from engine.nn.kernels.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d

MAX_CASES = {
    "resnet-stem": {"kernel_size": 3, "stride": 2, "padding": 1},
    "ceil": {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
    "ceil-no-pad": {"kernel_size": 2, "ceil_mode": True},
    "overlap-s1": {"kernel_size": 3, "stride": 1, "padding": 1},
    "rect-dilated": {
        "kernel_size": (2, 3),
        "stride": (1, 2),
        "padding": (1, 1),
        "dilation": (2, 1),
    },
    "dilated-ceil": {"kernel_size": 2, "stride": 2, "dilation": 2, "ceil_mode": True},
    "default-stride-tuple": {"kernel_size": (3, 2), "stride": ()},
}

AVG_CASES = {
    "resnet-like": {"kernel_size": 3, "stride": 2, "padding": 1},
    "ceil-exclude-pad": {
        "kernel_size": 3,
        "stride": 2,
        "padding": 1,
        "ceil_mode": True,
        "count_include_pad": False,
    },
    "ceil-include-pad": {"kernel_size": (2, 3), "stride": (1, 2), "padding": 1, "ceil_mode": True},
    "divisor": {"kernel_size": 3, "padding": 1, "divisor_override": 5},
    "overlap-s1-exclude": {"kernel_size": 3, "stride": 1, "padding": 1, "count_include_pad": False},
    "2x2": {"kernel_size": 2},
}

ADAPTIVE_SIZES = {"1x1": 1, "2x3": (2, 3), "keep-w": (3, None), "upsample": (5, 7), "4x4": 4}

SHAPES = {"batch2-7x5": (2, 3, 7, 5), "batch1-8x8": (1, 2, 8, 8), "unbatched": (3, 6, 6)}


def _distinct(shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Values at least 0.01 apart, so finite differences never cross a tie of the maximum."""
    return rng.permutation(np.prod(shape)).reshape(shape) * 0.01 - 0.5


def _tensor(array: np.ndarray, channels_last: bool) -> engine.Tensor:
    if channels_last and array.ndim == 4:
        array = np.ascontiguousarray(array.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    return engine.from_numpy(array).requires_grad_()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("kwargs", MAX_CASES.values(), ids=MAX_CASES.keys())
def test_max_gradcheck(kwargs: dict, shape: tuple, channels_last: bool, rng) -> None:
    x = _tensor(_distinct(shape, rng), channels_last)
    assert gradcheck(lambda t: max_pool2d(t, **kwargs), (x,))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("kwargs", AVG_CASES.values(), ids=AVG_CASES.keys())
def test_avg_gradcheck(kwargs: dict, shape: tuple, channels_last: bool, rng) -> None:
    x = _tensor(rng.standard_normal(shape), channels_last)
    assert gradcheck(lambda t: avg_pool2d(t, **kwargs), (x,))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("size", ADAPTIVE_SIZES.values(), ids=ADAPTIVE_SIZES.keys())
def test_adaptive_gradcheck(size: int | tuple, shape: tuple, channels_last: bool, rng) -> None:
    x = _tensor(rng.standard_normal(shape), channels_last)
    assert gradcheck(lambda t: adaptive_avg_pool2d(t, size), (x,))


def _check_parity(torch, pool: str, args: tuple, kwargs: dict, x: np.ndarray, rng) -> None:
    """Outputs (values, and indices exactly) and the input gradient against torch, float32."""
    ours, theirs = _tensor(x, channels_last=True), torch.tensor(x, requires_grad=True)
    mine = globals()[pool](ours, *args, **kwargs)
    ref = getattr(torch.nn.functional, pool)(theirs, *args, **kwargs)
    mine, ref = (out if isinstance(out, tuple) else (out,) for out in (mine, ref))
    for a, b in zip(mine, ref, strict=True):
        assert a.shape == tuple(b.shape) and a.dtype.name == str(b.dtype).removeprefix("torch.")
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-6, atol=1e-6)
    gy = rng.standard_normal(mine[0].shape).astype(np.float32)
    mine[0].backward(engine.from_numpy(gy))
    ref[0].backward(torch.tensor(gy))
    assert ours.grad.dtype == engine.float32
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.torch
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("kwargs", MAX_CASES.values(), ids=MAX_CASES.keys())
def test_max_torch_parity(torch, kwargs: dict, shape: tuple, ties: bool, rng) -> None:
    x = rng.standard_normal(shape).astype(np.float32)
    x = np.round(x) if ties else x
    _check_parity(torch, "max_pool2d", (), {**kwargs, "return_indices": True}, x, rng)


@pytest.mark.torch
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("kwargs", AVG_CASES.values(), ids=AVG_CASES.keys())
def test_avg_torch_parity(torch, kwargs: dict, shape: tuple, rng) -> None:
    x = rng.standard_normal(shape).astype(np.float32)
    _check_parity(torch, "avg_pool2d", (), kwargs, x, rng)


@pytest.mark.torch
@pytest.mark.parametrize("shape", [*SHAPES.values(), (2, 512, 2, 2), (2, 8, 7, 7)])
@pytest.mark.parametrize("size", ADAPTIVE_SIZES.values(), ids=ADAPTIVE_SIZES.keys())
def test_adaptive_torch_parity(torch, size: int | tuple, shape: tuple, rng) -> None:
    x = rng.standard_normal(shape).astype(np.float32)
    _check_parity(torch, "adaptive_avg_pool2d", (size,), {}, x, rng)


@pytest.mark.torch
def test_max_pool_nan_propagates_like_torch(torch, rng) -> None:
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    x[0, 0, 1, 1] = x[0, 1, 3, 4] = np.nan
    _check_parity(torch, "max_pool2d", (3, 2, 1), {"return_indices": True}, x, rng)


def test_grad_fn_names_and_layout(rng) -> None:
    x = _tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32), channels_last=True)
    cases = [
        (max_pool2d(x, 3, 2, 1), "MaxPool2DWithIndicesBackward0"),
        (avg_pool2d(x, 2), "AvgPool2DBackward0"),
        (adaptive_avg_pool2d(x, 3), "AdaptiveAvgPool2DBackward0"),
        (adaptive_avg_pool2d(x, 1), "MeanBackward1"),
    ]
    for y, name in cases:
        assert y.grad_fn.name() == name and y.dtype == engine.float32
        assert y._data.transpose(0, 2, 3, 1).flags.c_contiguous


def test_indices_are_not_differentiable(rng) -> None:
    x = _tensor(rng.standard_normal((1, 1, 4, 4)), channels_last=False)
    out, indices = max_pool2d(x, 2, return_indices=True)
    assert out.requires_grad and not indices.requires_grad and indices.dtype == engine.int64


def test_no_grad_keeps_nothing(rng) -> None:
    x = _tensor(rng.standard_normal((1, 2, 6, 6)), channels_last=False)
    with engine.no_grad():
        y = max_pool2d(x, 3, 2, 1)
    assert y.grad_fn is None and not y.requires_grad


def test_backward_leaves_incoming_gradient_alone(rng) -> None:
    for pool in (
        lambda t: max_pool2d(t, 2),
        lambda t: avg_pool2d(t, 2),
        lambda t: adaptive_avg_pool2d(t, 1),
    ):
        x = _tensor(rng.standard_normal((1, 2, 4, 4)), channels_last=False)
        y = pool(x)
        gy = rng.standard_normal(y.shape)
        before = gy.copy()
        y.backward(engine.from_numpy(gy))
        np.testing.assert_array_equal(gy, before)
        assert not np.shares_memory(x.grad.numpy(), gy)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: max_pool2d(x, 3, padding=2), "pad should be at most half of effective kernel"),
        (lambda x: max_pool2d(x, 3, dilation=2, padding=2), "pad should be smaller than or equal"),
        (lambda x: avg_pool2d(x, 3, padding=2), "pad should be at most half of effective kernel"),
        (lambda x: max_pool2d(x[:, :, :2, :2], 3), r"Calculated output size: \(3x0x0\)"),
        (lambda x: avg_pool2d(x[:, :, :2, :2], 3), "Output size is too small"),
        (lambda x: max_pool2d(x, 0), "stride should not be zero"),
        (lambda x: max_pool2d(x, 3, stride=0), "stride should not be zero"),
        (lambda x: max_pool2d(x, (2, 2, 2)), "kernel_size must either be a single int"),
        (lambda x: max_pool2d(x, 2, stride=(1, 1, 1)), "stride must either be omitted"),
        (lambda x: max_pool2d(x[0, 0], 2), "Expected 3D or 4D"),
        (lambda x: avg_pool2d(x, 2, divisor_override=0), "divisor must be not zero"),
        (lambda x: adaptive_avg_pool2d(x[0, 0], 2), "Expected 3D or 4D tensor"),
    ],
)
def test_errors(call, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        call(engine.zeros(2, 3, 5, 5))
