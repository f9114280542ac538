"""conv2d_batch_norm: conv2d then eval-mode batch_norm (+ residual, + ReLU) in one op; the same
bits as the two apart on every convolution algorithm, torch's numbers, and its errors."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import engine
from engine.nn import functional as F
from engine.nn.kernels import conv, direct, winograd
from tests.nn.test_conv import use_tiny_blocks

# (batch, in channels, out channels, kernel, stride, padding, groups, bias, side)
SHAPES = {
    "7x7-s2": (2, 3, 8, 7, 2, 3, 1, False, 19),
    "3x3-s2": (2, 4, 6, 3, 2, 1, 1, True, 9),
    "1x1-s2": (3, 4, 6, 1, 2, 0, 1, False, 8),
    "3x3-g2": (2, 4, 6, 3, 1, 1, 2, True, 6),
    "winograd": (2, 4, 6, 3, 1, 1, 1, False, 8),
    "winograd-cropped": (2, 4, 6, 3, 1, 1, 1, True, 14),
}
KERNELS = {  # the kernel each path runs, and how to make it run there
    "im2col": ("gemm_conv", {}),
    "winograd": ("winograd.conv", {}),
    "direct-images": ("direct.conv", {"MIN_CHANNELS": 1, "MIN_BLOCK_OUTPUTS": 1}),
    "direct-channels": ("direct.conv", {"MIN_CHANNELS": 1, "MIN_BLOCK_OUTPUTS": 1 << 30}),
}


@pytest.fixture(params=["whole", "pieces"])
def pieces(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Outputs done in one piece a thread, and in many small ones (each normalised apart)."""
    if request.param == "pieces":
        use_tiny_blocks(monkeypatch, keep=False)
        monkeypatch.setattr(winograd, "MIN_CHUNK_TILES", 1)
        monkeypatch.setattr(winograd, "CHUNK_BYTES", 1)
        monkeypatch.setattr(direct, "BLOCK_BYTES", 1)


def _spy(monkeypatch: pytest.MonkeyPatch, path: str) -> list[int]:
    """Route the convolutions to ``path``; the list gets an entry each time its kernel runs."""
    name, settings = KERNELS[path]
    for setting, value in settings.items():
        monkeypatch.setattr(direct, setting, value)
    owner, attribute = {
        "gemm_conv": (conv, "gemm_conv"),
        "winograd.conv": (winograd, "conv"),
        "direct.conv": (direct, "conv"),
    }[name]
    calls: list[int] = []
    kernel = getattr(owner, attribute)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, counted)
    return calls


def _norm(rng: np.random.Generator, channels: int, dtype: type) -> list[engine.Tensor]:
    """Running mean and variance, weight and bias; some channels far from zero next to their
    spread, where batch norm centres before scaling."""
    mean = rng.standard_normal(channels)
    mean[0] = 50.0
    var = rng.uniform(0.5, 2.0, channels)
    values = (mean, var, rng.uniform(0.5, 1.5, channels), rng.standard_normal(channels))
    return [engine.tensor(v.astype(dtype)) for v in values]


def _case(
    shape: tuple, rng: np.random.Generator, dtype: type, channels_last: bool = True
) -> tuple[list[engine.Tensor], Callable[..., engine.Tensor], dict]:
    n, cin, cout, k, stride, padding, groups, bias, side = shape
    x = rng.standard_normal((n, cin, side, side)).astype(dtype)
    if channels_last:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    w = engine.tensor(rng.standard_normal((cout, cin // groups, k, k)).astype(dtype) * 0.3)
    b = engine.tensor(rng.standard_normal(cout).astype(dtype)) if bias else None
    conv_kwargs = {"stride": stride, "padding": padding, "groups": groups}

    def convolve(x: engine.Tensor) -> engine.Tensor:
        return F.conv2d(x, w, b, **conv_kwargs)

    return [engine.from_numpy(x), w, b], convolve, conv_kwargs


def _both(
    rng: np.random.Generator,
    shape: tuple,
    dtype: type = np.float32,
    residual: str | None = "nhwc",
    relu: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """conv2d then batch_norm, and conv2d_batch_norm, on the same inputs."""
    (x, w, b), convolve, conv_kwargs = _case(shape, rng, dtype)
    stats = _norm(rng, w.shape[0], dtype)
    with engine.no_grad():
        y = convolve(x)
        r = None
        if residual is not None:
            r = engine.tensor(rng.standard_normal(y.shape).astype(dtype))
            if residual == "nhwc":
                r = engine.from_numpy(
                    np.ascontiguousarray(r.numpy().transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
                )
        apart = F.batch_norm(y, *stats[:2], *stats[2:], False, residual=r, relu=relu)
        fused = F.conv2d_batch_norm(x, w, b, *stats, **conv_kwargs, residual=r, relu=relu)
    return apart.numpy(), fused.numpy()


@pytest.mark.parametrize(
    ("shape", "path"),
    [
        ("7x7-s2", "im2col"),
        ("3x3-s2", "im2col"),
        ("1x1-s2", "im2col"),
        ("3x3-g2", "im2col"),
        ("winograd", "winograd"),
        ("winograd-cropped", "winograd"),
        ("3x3-s2", "direct-images"),
        ("7x7-s2", "direct-channels"),
    ],
)
@pytest.mark.parametrize("residual", [None, "nhwc", "nchw"])
def test_the_bits_of_conv2d_then_batch_norm(
    monkeypatch: pytest.MonkeyPatch,
    pieces: None,
    shape: str,
    path: str,
    residual: str | None,
    rng: np.random.Generator,
) -> None:
    calls = _spy(monkeypatch, path)
    apart, fused = _both(rng, SHAPES[shape], residual=residual)
    assert len(calls) == 2  # the kernel ran for both
    np.testing.assert_array_equal(fused, apart)
    assert (fused == 0).any() and (fused > 0).any()  # ReLU cut some


@pytest.mark.parametrize("relu", [False, True])
def test_float64_and_no_relu(relu: bool, rng: np.random.Generator) -> None:
    apart, fused = _both(rng, SHAPES["3x3-s2"], np.float64, relu=relu)
    np.testing.assert_array_equal(fused, apart)
    assert fused.dtype == np.float64 and (fused < 0).any() != relu


def test_empty_batch(rng: np.random.Generator) -> None:
    apart, fused = _both(rng, (0, *SHAPES["3x3-s2"][1:]), residual=None)
    assert fused.shape == apart.shape == (0, 6, 5, 5)


@pytest.mark.torch
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_parity(torch, shape: str, rng: np.random.Generator) -> None:  # noqa: ANN001
    """``relu(bn(conv(x)) + residual)`` with torch's Conv2d and BatchNorm2d in eval mode."""
    (x, w, b), _, conv_kwargs = _case(SHAPES[shape], rng, np.float32, channels_last=False)
    stats = _norm(rng, w.shape[0], np.float32)
    with engine.no_grad():
        out_shape = F.conv2d(x, w, b, **conv_kwargs).shape
        r = rng.standard_normal(out_shape).astype(np.float32)
        residual = engine.tensor(r)
        got = F.conv2d_batch_norm(x, w, b, *stats, **conv_kwargs, residual=residual, relu=True)
    t = [None if v is None else torch.from_numpy(v.numpy()) for v in (x, w, b, *stats)]
    y = torch.nn.functional.conv2d(t[0], t[1], t[2], **conv_kwargs)
    y = torch.nn.functional.batch_norm(y, t[3], t[4], t[5], t[6], False)
    expected = torch.relu(y + torch.from_numpy(r))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_no_backward(rng: np.random.Generator) -> None:
    """With grad mode on, inputs that require grad raise; under no_grad they do not."""
    (x, w, b), _, conv_kwargs = _case(SHAPES["3x3-s2"], rng, np.float32)
    stats = _norm(rng, w.shape[0], np.float32)
    stats[2].requires_grad_()
    with pytest.raises(RuntimeError, match="conv2d_batch_norm has no backward"):
        F.conv2d_batch_norm(x, w, b, *stats, **conv_kwargs)
    with engine.no_grad():
        out = F.conv2d_batch_norm(x, w, b, *stats, **conv_kwargs)
    assert not out.requires_grad and out.grad_fn is None


def test_errors(rng: np.random.Generator) -> None:
    (x, w, b), _, conv_kwargs = _case(SHAPES["3x3-s2"], rng, np.float32)
    stats = _norm(rng, w.shape[0], np.float32)
    with pytest.raises(RuntimeError, match="running_var should contain 6 elements not 5"):
        F.conv2d_batch_norm(x, w, b, stats[0], stats[1][:5], **conv_kwargs)
    with pytest.raises(RuntimeError, match=r"residual of shape \[2, 6, 9, 9\] does not match"):
        F.conv2d_batch_norm(x, w, b, *stats, **conv_kwargs, residual=engine.zeros(2, 6, 9, 9))
    with pytest.raises(RuntimeError, match="Expected 4D input"):
        F.conv2d_batch_norm(x[0], w, b, *stats, **conv_kwargs)
    with pytest.raises(RuntimeError, match="expected input"):  # conv2d's own checks
        F.conv2d_batch_norm(x[:, :2], w, b, *stats, **conv_kwargs)
