"""``batch_norm``: finite-difference checks in float64, parity with torch in float32 (outputs,
every gradient, running statistics), memory layouts, blocking, accuracy and errors."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.autograd import gradcheck
from engine.nn import functional as F
from engine.nn.kernels import norm

SHAPES = {
    "nchw": (3, 2, 3, 2),
    "nhwc": (3, 2, 3, 2),
    "strided": (3, 2, 3, 4),
    "matrix": (5, 3),
    "sequence": (2, 3, 4),
}
LAYOUTS = list(SHAPES)
AFFINE = ["trainable", "frozen", "none"]


def make_input(rng, layout, dtype=np.float64, shift=0.5, spread=2.0, shape=None):
    """An input of ``SHAPES[layout]``: "nhwc" has torch's NCHW shape over channels-last memory,
    "strided" is every other column of an NCHW array (neither layout)."""
    data = (rng.standard_normal(shape or SHAPES[layout]) * spread + shift).astype(dtype)
    if layout == "nhwc":
        data = np.ascontiguousarray(data.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if layout == "strided":
        data = data[..., ::2]
    return data


def channel_params(rng, channels, dtype=np.float64):
    """Weight, bias, running mean and running variance arrays."""
    return (
        rng.standard_normal(channels).astype(dtype),
        rng.standard_normal(channels).astype(dtype),
        rng.standard_normal(channels).astype(dtype),
        (rng.random(channels) + 0.5).astype(dtype),
    )


def assert_close(ours, theirs, what="", rtol=1e-5, atol=1e-5):
    ours = ours.detach().numpy() if hasattr(ours, "detach") else ours
    theirs = theirs.detach().numpy() if hasattr(theirs, "detach") else theirs
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=what)


@pytest.fixture(params=[None, 40], ids=["one-block", "small-blocks"])
def block(request, monkeypatch):
    """The default block size, then tiny blocks (several per image, partial last blocks, each
    a stack of whole tiles of constants and the rows left over) spread over the threads as large
    arrays are, with their channel sums taken that way."""
    if request.param is not None:
        monkeypatch.setattr(norm, "BLOCK_ELEMENTS", request.param)
        monkeypatch.setattr(norm, "TILE_ELEMENTS", 6)
        monkeypatch.setattr(norm, "SPLIT_ELEMENTS", 0)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_gradcheck(rng, block, layout, training, affine):
    x = engine.from_numpy(make_input(rng, layout)).requires_grad_()
    weight, bias, mean, var = (engine.from_numpy(a) for a in channel_params(rng, x.shape[1]))
    params = (weight.requires_grad_(), bias.requires_grad_()) if affine else (None, None)

    def fn(x, weight, bias):
        return F.batch_norm(x, mean, var, weight, bias, training=training)

    assert gradcheck(fn, (x, *params))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_far_from_zero(rng, training):
    """Data whose mean is 50 spreads: the affine maps subtract the mean before scaling."""
    x = engine.from_numpy(make_input(rng, "nhwc", shift=50.0, spread=1.0)).requires_grad_()
    weight, bias, _, var = (engine.from_numpy(a) for a in channel_params(rng, x.shape[1]))
    mean = engine.full((x.shape[1],), 50.0, dtype=engine.float64)
    weight.requires_grad_()
    bias.requires_grad_()

    def fn(x, weight, bias):
        return F.batch_norm(x, mean, var, weight, bias, training=training)

    assert gradcheck(fn, (x, weight, bias))


def test_gradcheck_eval_with_frozen_weight_and_trainable_bias(rng):
    x = engine.from_numpy(make_input(rng, "nhwc")).requires_grad_()
    weight, bias, mean, var = (engine.from_numpy(a) for a in channel_params(rng, x.shape[1]))
    bias.requires_grad_()
    assert gradcheck(lambda x, b: F.batch_norm(x, mean, var, weight, b), (x, bias))


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "alone"])
def test_gradcheck_fused_relu(rng, block, layout, training, residual):
    """``relu(batch_norm(x) + r)`` as one op: gradients of x, weight, bias and the residual."""
    x = engine.from_numpy(make_input(rng, layout)).requires_grad_()
    weight, bias, mean, var = (engine.from_numpy(a) for a in channel_params(rng, x.shape[1]))
    r = engine.from_numpy(make_input(rng, "nhwc", shape=x.shape)).requires_grad_()

    def fn(x, weight, bias, r):
        return F.batch_norm(
            x, mean, var, weight, bias, training, residual=r if residual else None, relu=True
        )

    assert gradcheck(fn, (x, weight.requires_grad_(), bias.requires_grad_(), r))


def fused_reference(functional, x, residual, *args):
    """``relu(batch_norm(x, *args) + residual)`` with separate ops (torch's or the engine's)."""
    out = functional.batch_norm(x, *args)
    return functional.relu(out if residual is None else out + residual)


@pytest.mark.torch
@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("residual", [True, False], ids=["residual", "alone"])
def test_fused_relu_matches_torch(torch, rng, block, layout, training, residual):
    data = make_input(rng, layout, np.float32, shape=(4, 3, 5, 6))
    extra = make_input(rng, layout, np.float32, shape=data.shape) if residual else None
    params = channel_params(rng, 3, np.float32)
    grad = rng.standard_normal(data.shape).astype(np.float32)
    results = []
    for lib in (engine, torch):
        x = lib.from_numpy(data.copy()).requires_grad_()
        r = None if extra is None else lib.from_numpy(extra.copy()).requires_grad_()
        weight, bias, mean, var = (lib.from_numpy(a.copy()) for a in params)
        weight.requires_grad_()
        bias.requires_grad_()
        args = (mean, var, weight, bias, training, 0.1)
        if lib is engine:
            out = F.batch_norm(x, *args, residual=r, relu=True)
            assert out.grad_fn.name() == "ReluBackward0"
        else:
            out = fused_reference(torch.nn.functional, x, r, *args)
        out.backward(lib.from_numpy(grad))
        grads = [x.grad, weight.grad, bias.grad] + ([] if r is None else [r.grad])
        results.append([out, *grads, mean, var])
    for ours, theirs in zip(*results, strict=True):
        assert_close(ours, theirs)


def test_fused_relu_gives_the_numbers_of_separate_ops(rng):
    """Bit for bit: the same float32 operations in the same order, in one pass."""
    data = make_input(rng, "nhwc", np.float32, shape=(4, 3, 5, 6))
    extra = make_input(rng, "nhwc", np.float32, shape=data.shape)
    grad = rng.standard_normal(data.shape).astype(np.float32)
    params = channel_params(rng, 3, np.float32)
    results = []
    for fused in (True, False):
        x, r = (engine.from_numpy(a.copy()).requires_grad_() for a in (data, extra))
        weight, bias, mean, var = (engine.from_numpy(a.copy()) for a in params)
        weight.requires_grad_()
        args = (mean, var, weight, bias, True)
        if fused:
            out = F.batch_norm(x, *args, residual=r, relu=True)
        else:
            out = fused_reference(F, x, r, *args)
        out.backward(engine.from_numpy(grad))
        results.append([out.detach(), x.grad, r.grad, weight.grad, mean, var])
    for ours, separate in zip(*results, strict=True):
        np.testing.assert_array_equal(ours.numpy(), separate.numpy())


def test_fused_relu_checks_the_residual_shape():
    with pytest.raises(RuntimeError, match="residual of shape \\[2, 3\\] does not match"):
        F.batch_norm(engine.zeros(2, 4), None, None, training=True, residual=engine.zeros(2, 3))


def run(lib, functional, steps, params, grad, affine="trainable", training=True):
    """Batch-norm each ``(input, momentum)`` of ``steps`` in turn with ``lib`` (engine or
    torch), then backward the last.

    Returns the output, the gradients and the running buffers, by name.
    """
    weight, bias, mean, var = (lib.from_numpy(a.copy()) for a in params)
    if affine == "trainable":
        weight.requires_grad_()
        bias.requires_grad_()
    if affine == "none":
        weight = bias = None
    for x, momentum in steps:
        x = lib.from_numpy(x).requires_grad_()
        out = functional.batch_norm(x, mean, var, weight, bias, training, momentum)
    out.backward(lib.from_numpy(grad))
    results = {"out": out, "x.grad": x.grad, "running_mean": mean, "running_var": var}
    if affine == "trainable":
        results.update({"weight.grad": weight.grad, "bias.grad": bias.grad})
    return results


def compare_with_torch(torch, steps, params, grad, **kwargs):
    ours = run(engine, F, steps, params, grad, **kwargs)
    theirs = run(torch, torch.nn.functional, steps, params, grad, **kwargs)
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert value.dtype is engine.float32, key
        assert_close(value, theirs[key], key)
    return ours


@pytest.mark.torch
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", AFFINE)
def test_matches_torch(torch, rng, block, layout, training, affine):
    x = make_input(rng, layout, np.float32)
    params = channel_params(rng, x.shape[1], np.float32)
    grad = rng.standard_normal(x.shape).astype(np.float32)
    ours = compare_with_torch(torch, [(x, 0.1)], params, grad, affine=affine, training=training)
    assert ours["out"].grad_fn.name() == "NativeBatchNormBackward0"


@pytest.mark.torch
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("schedule", ["momentum-0.1", "cumulative"])
def test_running_stats_match_torch_over_steps(torch, rng, steps, schedule):
    """Momentum 0.1, and the 1/k factors with which BatchNorm2d(momentum=None) averages."""
    params = channel_params(rng, 4, np.float32)
    grad = rng.standard_normal((6, 4, 5, 3)).astype(np.float32)
    sequence = [
        (
            make_input(rng, "nhwc", np.float32, k, k + 1.0, grad.shape),
            0.1 if schedule == "momentum-0.1" else 1.0 / (k + 1),
        )
        for k in range(steps)
    ]
    compare_with_torch(torch, sequence, params, grad)


@pytest.mark.torch
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_empty_batch_matches_torch(torch, rng, block, training):
    """No values: an empty output, zero weight and bias gradients, running buffers left alone."""
    x = np.zeros((0, 3, 4, 2), np.float32)
    compare_with_torch(torch, [(x, 0.1)], channel_params(rng, 3, np.float32), x, training=training)


def test_data_far_from_zero_keeps_float32_accuracy(rng):
    """A mean 10^4 times the spread: neither the variance nor the output may cancel away.

    The bound is what float32 inputs allow: their spacing near 100 is 7.6e-6, 7.6e-4 of the
    spread. (torch's own channels-last kernel is off by 4e-3 here.)
    """
    data = make_input(rng, "nhwc", np.float32, shift=100.0, spread=0.01, shape=(8, 3, 16, 16))
    x = engine.from_numpy(data).requires_grad_()
    var = engine.zeros(3)
    out = F.batch_norm(x, engine.zeros(3), var, training=True, momentum=1.0)
    exact = data.astype(np.float64)
    mean, biased = exact.mean(axis=(0, 2, 3), keepdims=True), exact.var(axis=(0, 2, 3))
    n = exact.size // 3
    np.testing.assert_allclose(var.numpy(), biased * n / (n - 1), rtol=1e-5)
    expected = (exact - mean) / np.sqrt(biased + 1e-5)[:, None, None]
    np.testing.assert_allclose(out.detach().numpy(), expected, atol=8e-4)
    grad = rng.standard_normal(data.shape)
    out.backward(engine.from_numpy(grad.astype(np.float32)))
    x64 = engine.from_numpy(exact).requires_grad_()
    F.batch_norm(x64, None, None, training=True).backward(engine.from_numpy(grad))
    np.testing.assert_allclose(x.grad.numpy(), x64.grad.numpy(), rtol=1e-4, atol=1e-2)


def test_output_and_gradient_keep_the_input_layout_and_dtype(rng):
    x = engine.from_numpy(make_input(rng, "nhwc", np.float32)).requires_grad_()
    weight, bias, mean, var = (engine.from_numpy(a) for a in channel_params(rng, 2, np.float32))
    out = F.batch_norm(x, mean, var, weight, bias, training=True)
    assert out.dtype is engine.float32 and out._data.strides == x._data.strides
    out.backward(engine.ones(out.shape))  # a C-contiguous (NCHW) gradient
    assert x.grad.dtype is engine.float32 and x.grad._data.strides == x._data.strides


def test_gradient_layout_does_not_change_the_result(rng):
    data = make_input(rng, "nhwc")
    grad = rng.standard_normal(data.shape)
    weight, bias, mean, var = (engine.from_numpy(a) for a in channel_params(rng, 2))
    weight.requires_grad_()
    grads = []
    for g in (grad, np.ascontiguousarray(grad.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)):
        x = engine.from_numpy(data).requires_grad_()
        F.batch_norm(x, mean, var, weight, bias, training=True).backward(engine.from_numpy(g))
        grads.append((x.grad.numpy(), weight.grad.numpy()))
        weight.grad = None
    for a, b in zip(grads[0], grads[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_running_buffers_are_updated_in_place_with_unbiased_variance(rng):
    data = make_input(rng, "matrix")
    mean, var = engine.zeros(3, dtype=engine.float64), engine.ones(3, dtype=engine.float64)
    arrays, versions = (mean._data, var._data), (mean._version, var._version)
    F.batch_norm(engine.from_numpy(data), mean, var, training=True, momentum=0.25)
    assert mean._data is arrays[0] and var._data is arrays[1]
    assert mean._version > versions[0] and var._version > versions[1]
    np.testing.assert_allclose(mean.numpy(), 0.25 * data.mean(axis=0))
    np.testing.assert_allclose(var.numpy(), 0.75 + 0.25 * data.var(axis=0, ddof=1))


def test_eval_leaves_running_buffers_alone(rng):
    data = make_input(rng, "nchw")
    _, _, mean, var = (engine.from_numpy(a) for a in channel_params(rng, 2))
    before = (mean.numpy().copy(), var.numpy().copy())
    F.batch_norm(engine.from_numpy(data), mean, var, training=False)
    np.testing.assert_array_equal(mean.numpy(), before[0])
    np.testing.assert_array_equal(var.numpy(), before[1])


def test_training_without_running_buffers_uses_batch_statistics(rng):
    data = make_input(rng, "matrix")
    out = F.batch_norm(engine.from_numpy(data), None, None, training=True, eps=0.0)
    np.testing.assert_allclose(out.numpy(), (data - data.mean(0)) / data.std(0), atol=1e-12)


def test_is_differentiable_once(rng):
    x = engine.from_numpy(make_input(rng, "nchw")).requires_grad_()
    out = F.batch_norm(x, None, None, training=True)
    (grad,) = engine.autograd.grad((out * out).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()


def test_errors_follow_torch():
    expected = (
        r"more than 1 value per channel when training, got input size torch.Size\(\[1, 3, 1, 1"
    )
    with pytest.raises(ValueError, match=expected):
        F.batch_norm(engine.zeros(1, 3, 1, 1), engine.zeros(3), engine.ones(3), training=True)
    with pytest.raises(RuntimeError, match="running_mean must be defined in evaluation mode"):
        F.batch_norm(engine.zeros(2, 3), None, None)
    with pytest.raises(RuntimeError, match="running_mean should contain 3 elements not 4"):
        F.batch_norm(engine.zeros(2, 3), engine.zeros(4), engine.ones(4), training=True)
    with pytest.raises(RuntimeError, match="weight should contain 3 elements not 2"):
        F.batch_norm(engine.zeros(2, 3), None, None, engine.ones(2), training=True)


def test_a_layer_of_the_wrong_width_is_named_as_torch_names_it(torch):
    """Every per-channel vector has the wrong size: torch names running_mean first."""
    messages = []
    for lib in (engine, torch):
        layer = lib.nn.BatchNorm2d(4)
        with pytest.raises(RuntimeError) as caught:
            layer(lib.ones(2, 3, 5, 5))
        messages.append(str(caught.value))
    assert messages[0] == messages[1] == "running_mean should contain 3 elements not 4"
