"""Property-based tests: broadcasting, reductions and views over generated shapes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import engine

SETTINGS = settings(max_examples=40, deadline=None)
BINARY = {
    "add": (lambda a, b: a + b, lambda a, b, g: (g, g)),
    "sub": (lambda a, b: a - b, lambda a, b, g: (g, -g)),
    "mul": (lambda a, b: a * b, lambda a, b, g: (g * b, g * a)),
    "div": (lambda a, b: a / b, lambda a, b, g: (g / b, -g * a / b**2)),
}


def values(shape: tuple[int, ...], seed: int, positive: bool = False) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape)
    return np.abs(x) + 0.5 if positive else x


def sum_to(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reference for the adjoint of broadcasting: sum ``g`` down to ``shape``."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True)


@pytest.mark.parametrize("name", BINARY)
@SETTINGS
@given(
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4),
    seed=st.integers(0, 2**16),
)
def test_binary_op_gradients_are_summed_back_to_each_input(name, shapes, seed):
    op, grads = BINARY[name]
    shape_a, shape_b = shapes.input_shapes
    a_np, b_np = values(shape_a, seed), values(shape_b, seed + 1, positive=True)
    a = engine.tensor(a_np, requires_grad=True)
    b = engine.tensor(b_np, requires_grad=True)
    out = op(a, b)
    g_np = values(out.shape, seed + 2)
    out.backward(engine.tensor(g_np))
    expected_a, expected_b = grads(a_np, b_np, g_np)
    assert out.shape == shapes.result_shape
    np.testing.assert_allclose(a.grad.numpy(), sum_to(expected_a, shape_a), rtol=1e-10)
    np.testing.assert_allclose(b.grad.numpy(), sum_to(expected_b, shape_b), rtol=1e-10)


@SETTINGS
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=4, max_side=5),
    data=st.data(),
    keepdim=st.booleans(),
)
def test_sum_and_mean_over_any_dims_match_numpy_and_spread_the_gradient(shape, data, keepdim):
    dims = data.draw(st.lists(st.integers(-len(shape), len(shape) - 1), min_size=1, max_size=3))
    axes = tuple(sorted({d % len(shape) for d in dims}))
    x_np = values(shape, len(shape))
    x = engine.tensor(x_np, requires_grad=True)
    total = x.sum(tuple(dims), keepdim=keepdim)
    mean = x.mean(tuple(dims), keepdim=keepdim)
    np.testing.assert_allclose(total.detach().numpy(), x_np.sum(axes, keepdims=keepdim))
    np.testing.assert_allclose(mean.detach().numpy(), x_np.mean(axes, keepdims=keepdim))
    (total.sum() + mean.sum()).backward()
    count = np.prod([shape[a] for a in axes])
    np.testing.assert_allclose(x.grad.numpy(), np.full(shape, 1 + 1 / count))


@SETTINGS
@given(shape=hnp.array_shapes(min_dims=2, max_dims=4, max_side=5), data=st.data())
def test_permute_then_reshape_round_trips_values_and_gradients(shape, data):
    order = data.draw(st.permutations(range(len(shape))))
    x_np = values(shape, 7)
    x = engine.tensor(x_np, requires_grad=True)
    y = x.permute(*order).reshape(-1)
    np.testing.assert_array_equal(y.detach().numpy(), x_np.transpose(order).ravel())
    weights = np.arange(y.shape[0], dtype=np.float64)
    (y * engine.tensor(weights)).sum().backward()
    expected = weights.reshape(x_np.transpose(order).shape).transpose(np.argsort(order))
    np.testing.assert_array_equal(x.grad.numpy(), expected)


@SETTINGS
@given(
    size=st.integers(1, 8),
    index=st.lists(st.integers(0, 7), min_size=1, max_size=12),
)
def test_repeated_indices_accumulate_their_gradients(size, index):
    index = [i % size for i in index]
    x = engine.zeros(size, dtype=engine.float64, requires_grad=True)
    x[index].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.bincount(index, minlength=size))
