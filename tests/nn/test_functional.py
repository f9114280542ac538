"""``engine.nn.functional``: dropout, pad, linear, activations, softmax, flatten, one_hot and the
re-exported kernels, against torch and by finite differences."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import engine
from engine.autograd import gradcheck, gradgradcheck
from engine.nn import functional as F
from engine.nn.kernels import conv, pool


def float64(rng, *shape):
    return engine.from_numpy(rng.standard_normal(shape)).requires_grad_()


def assert_close(ours, theirs, rtol=1e-5, atol=1e-6):
    ours = ours.detach().numpy() if hasattr(ours, "detach") else ours
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- dropout


def test_gradcheck_dropout_with_a_fixed_mask(rng):
    def fn(x):
        engine.manual_seed(3)
        return F.dropout(x, 0.4)

    assert gradcheck(fn, (float64(rng, 4, 5),))
    assert gradgradcheck(fn, (float64(rng, 4, 5),))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_keeps_about_one_minus_p_and_scales_exactly(p):
    engine.manual_seed(0)
    x = engine.rand(200_000) + 0.5
    y = F.dropout(x, p).numpy()
    kept = y != 0
    sigma = np.sqrt(p * (1 - p) / x.numel())
    assert abs(kept.mean() - (1 - p)) < 5 * sigma
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[kept], x.numpy()[kept] * np.float32(1 / (1 - p)))


@pytest.mark.torch
@pytest.mark.parametrize("p", [0.3, 1 / 3, 0.9])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_scale_is_torchs(torch, p, dtype):
    ours = F.dropout(engine.ones(1000, dtype=getattr(engine, dtype)), p).numpy()
    theirs = torch.nn.functional.dropout(torch.ones(1000, dtype=getattr(torch, dtype)), p).numpy()
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(np.unique(ours[ours != 0]), np.unique(theirs[theirs != 0]))


def test_dropout_gradient_is_the_scaled_mask(rng):
    x = float64(rng, 50, 40)
    y = F.dropout(x, 0.25)
    y.sum().backward()
    mask = y.detach().numpy() / x.detach().numpy()
    np.testing.assert_allclose(x.grad.numpy(), mask)
    assert set(np.unique(x.grad.numpy())) == {0.0, 1 / 0.75}
    assert y.grad_fn.name() == "MulBackward0"


def test_dropout_identity_and_zeros():
    x = engine.ones(3, 4, requires_grad=True)
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    y = F.dropout(x, 1.0)
    y.sum().backward()
    assert not y.detach().numpy().any() and not x.grad.numpy().any()


def test_dropout_is_reproducible_under_manual_seed():
    x = engine.ones(1000)
    engine.manual_seed(7)
    first = F.dropout(x, 0.5).numpy()
    engine.manual_seed(7)
    np.testing.assert_array_equal(F.dropout(x, 0.5).numpy(), first)
    assert not np.array_equal(F.dropout(x, 0.5).numpy(), first)


def test_dropout_inplace_writes_into_its_input(rng):
    leaf = float64(rng, 6, 7)
    x = leaf * 1.0
    y = F.dropout(x, 0.5, inplace=True)
    assert y is x
    y.sum().backward()
    np.testing.assert_allclose(leaf.grad.numpy(), x.detach().numpy() / leaf.detach().numpy())


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_rejects_probabilities_outside_0_1(p):
    with pytest.raises(ValueError, match=f"has to be between 0 and 1, but got {p}"):
        F.dropout(engine.ones(3), p)


# ----------------------------------------------------------------------------- pad

PAD_CASES = [
    ((2, 3, 4), (1, 2), "constant", 0.0),
    ((2, 3, 4), (2, 0, 1, 1), "constant", 1.5),
    ((2, 3, 4), (-1, 2, 0, -1), "constant", 0.0),
    ((2, 3, 4), (1, 1, 1, 1, 1, 1), "constant", -2.0),
    ((2, 3, 5), (2, 3), "reflect", None),
    ((1, 2, 4, 5), (3, 1, 2, 3), "reflect", None),
    ((2, 3, 4), (3, 2), "replicate", None),
    ((2, 3, 4), (-1, 2), "replicate", None),
    ((1, 2, 3, 4), (1, 2, 3, 0), "replicate", None),
    ((1, 1, 2, 3, 4), (1, 1, 1, 1, 1, 1), "replicate", None),
    ((2, 3, 4), (2, 3), "circular", None),
    ((1, 2, 3, 4), (1, 2, 3, 0), "circular", None),
]


@pytest.mark.torch
@pytest.mark.parametrize(("shape", "pads", "mode", "value"), PAD_CASES)
def test_pad_matches_torch(torch, rng, shape, pads, mode, value):
    x = rng.standard_normal(shape).astype(np.float32)
    results = []
    for lib, functional in ((engine, F), (torch, torch.nn.functional)):
        xt = lib.from_numpy(x.copy()).requires_grad_()
        y = functional.pad(xt, pads, mode=mode, value=value)
        y.backward(lib.from_numpy(np.arange(y.numel(), dtype=np.float32).reshape(tuple(y.shape))))
        results.append((y, xt.grad))
    (y, g), (ty, tg) = results
    assert y.shape == tuple(ty.shape)
    assert_close(y, ty)
    assert_close(g, tg)
    if mode == "constant":
        assert y.grad_fn.name() == "ConstantPadNdBackward0"


@pytest.mark.parametrize(("shape", "pads", "mode", "value"), PAD_CASES[::2])
def test_gradcheck_pad(rng, shape, pads, mode, value):
    assert gradcheck(lambda x: F.pad(x, pads, mode, value), (float64(rng, *shape),))


def test_gradgradcheck_constant_pad(rng):
    assert gradgradcheck(lambda x: F.pad(x, (1, -1, 2, 0), value=3.0), (float64(rng, 2, 3, 3),))


PAD_ERRORS = [
    ((2, 3), (1,), "constant", RuntimeError, "Padding length must be divisible by 2"),
    ((2, 3), (1,) * 6, "constant", RuntimeError, "padding length 6 and input of dimension 2"),
    ((2, 3), (-2, -2), "constant", RuntimeError, "length must be non-negative"),
    ((1, 4, 3), (3, 3), "reflect", RuntimeError, r"padding \(3, 3\) at dimension 2"),
    ((4, 3), (1, 1, 1, 1), "reflect", NotImplementedError, "Padding size 4 is not supported"),
    ((1, 4, 3), (1, 1), "bogus", NotImplementedError, "Unrecognised padding mode bogus"),
    ((1, 2, 3), (4, 0), "circular", RuntimeError, "wrapping around more than once"),
]


@pytest.mark.parametrize(("shape", "pads", "mode", "kind", "message"), PAD_ERRORS)
def test_pad_errors_follow_torch(shape, pads, mode, kind, message):
    with pytest.raises(kind, match=message):
        F.pad(engine.zeros(*shape), pads, mode=mode)


def test_pad_value_only_for_constant_mode():
    with pytest.raises(RuntimeError, match='Padding mode "reflect" doesn\'t take in value'):
        F.pad(engine.zeros(1, 2, 3), (1, 1), mode="reflect", value=1.0)


# ----------------------------------------------------------------------------- linear


@pytest.mark.torch
@pytest.mark.parametrize("input_shape", [(4, 5), (2, 3, 5), (5,)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_matches_torch(torch, rng, input_shape, with_bias):
    arrays = [
        rng.standard_normal(input_shape).astype(np.float32),
        rng.standard_normal((3, 5)).astype(np.float32),
        rng.standard_normal(3).astype(np.float32) if with_bias else None,
    ]
    results = []
    for lib, functional in ((engine, F), (torch, torch.nn.functional)):
        x, w, b = (None if a is None else lib.from_numpy(a.copy()).requires_grad_() for a in arrays)
        y = functional.linear(x, w, b)
        (y * y).sum().backward()
        results.append([y] + [t.grad for t in (x, w, b) if t is not None])
    for ours, theirs in zip(*results, strict=True):
        assert_close(ours, theirs)


def test_gradcheck_and_gradgradcheck_linear(rng):
    inputs = (float64(rng, 3, 4), float64(rng, 2, 4), float64(rng, 2))
    assert gradcheck(F.linear, inputs)
    assert gradgradcheck(F.linear, inputs)


# ----------------------------------------------------------------------------- activations


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_gradcheck_softmax_family(rng, name, dim):
    assert gradcheck(lambda x: getattr(F, name)(x, dim), (float64(rng, 3, 4),))


@pytest.mark.torch
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("shape", [(5,), (2, 5), (2, 3, 4), (2, 3, 4, 2)])
def test_softmax_implicit_dim_warns_and_picks_torchs(torch, rng, name, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    with pytest.warns(UserWarning, match=f"Implicit dimension choice for {name}"):
        ours = getattr(F, name)(engine.from_numpy(x))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(torch.nn.functional, name)(torch.from_numpy(x))
    assert_close(ours, theirs)


def test_softmax_dtype_argument_casts_first(rng):
    x = engine.from_numpy(rng.standard_normal((2, 3)).astype(np.float32))
    assert F.softmax(x, 1, dtype=engine.float64).dtype is engine.float64
    assert F.log_softmax(x, 1, dtype=engine.float64).dtype is engine.float64


def test_relu_sigmoid_tanh(rng):
    data = rng.standard_normal((3, 4))
    x = engine.from_numpy(data.copy())
    np.testing.assert_array_equal(F.relu(x).numpy(), np.maximum(data, 0))
    np.testing.assert_allclose(F.sigmoid(x).numpy(), 1 / (1 + np.exp(-data)))
    np.testing.assert_allclose(F.tanh(x).numpy(), np.tanh(data))
    np.testing.assert_array_equal(x.numpy(), data)
    assert F.relu(x, inplace=True) is x
    np.testing.assert_array_equal(x.numpy(), np.maximum(data, 0))
    y = engine.from_numpy(data.copy())
    assert F.relu_(y) is y and (y.numpy() >= 0).all()


def test_flatten(rng):
    x = engine.zeros(2, 3, 4, 5)
    assert F.flatten(x).shape == (120,)
    assert F.flatten(x, 1).shape == (2, 60)
    assert F.flatten(x, 1, 2).shape == (2, 12, 5)


# ----------------------------------------------------------------------------- one_hot


@pytest.mark.torch
@pytest.mark.parametrize("num_classes", [-1, 6])
def test_one_hot_matches_torch(torch, num_classes):
    labels = np.array([[0, 3], [2, 4]])
    ours = F.one_hot(engine.from_numpy(labels), num_classes)
    theirs = torch.nn.functional.one_hot(torch.from_numpy(labels), num_classes)
    assert ours.dtype is engine.int64
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


@pytest.mark.parametrize(
    ("labels", "num_classes", "message"),
    [
        (engine.tensor([0, 3]), 2, "Class values must be smaller than num_classes."),
        (engine.tensor([0, -1]), 3, "Class values must be non-negative."),
        (engine.tensor([0.0, 1.0]), 3, "only applicable to index tensor of type LongTensor"),
        (engine.zeros(0, dtype=engine.int64), -1, "Can not infer total number of classes"),
    ],
)
def test_one_hot_errors_follow_torch(labels, num_classes, message):
    with pytest.raises(RuntimeError, match=message):
        F.one_hot(labels, num_classes)


# ----------------------------------------------------------------------------- re-exports


def test_convolution_and_pooling_are_the_kernels():
    assert F.conv2d is conv.conv2d
    assert F.max_pool2d is pool.max_pool2d
    assert F.avg_pool2d is pool.avg_pool2d
    assert F.adaptive_avg_pool2d is pool.adaptive_avg_pool2d
