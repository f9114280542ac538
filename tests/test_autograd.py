"""Autograd: backward, accumulation, retain_grad, hooks, graph freeing, higher order, grad modes,
custom Functions, deep graphs, and every misuse error with torch's wording."""

from __future__ import annotations

import operator
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import engine
from engine.autograd import Function, FunctionCtx

# ------------------------------------------------------------------ the seed example


def test_seed_example_prints_like_torch(capsys: pytest.CaptureFixture[str]) -> None:
    a = engine.tensor([2.0, 3.0], requires_grad=True)
    b = engine.tensor([6.0, 4.0], requires_grad=True)
    Q = 3 * a**3 - b**2
    Q.backward(gradient=engine.tensor([1.0, 1.0]))
    print(9 * a**2 == a.grad)
    print(-2 * b == b.grad)
    assert capsys.readouterr().out == "tensor([True, True])\ntensor([True, True])\n"


def test_seed_example_requires_grad_propagates() -> None:
    x, y = engine.rand(5, 5), engine.rand(5, 5)
    z = engine.rand((5, 5), requires_grad=True)
    assert not (x + y).requires_grad
    assert (x + z).requires_grad


# ------------------------------------------------------------------ gradients and the graph


def _leaf(*values: float) -> engine.Tensor:
    return engine.tensor(list(values), requires_grad=True)


def test_leaf_gradients_accumulate_across_backward_calls() -> None:
    x = _leaf(1.0, 2.0)
    (x * x).sum().backward()
    (x * 3).sum().backward()
    assert x.grad.tolist() == [2 + 3, 4 + 3]
    x.grad = None
    (x * 3).sum().backward()
    assert x.grad.tolist() == [3, 3]


def test_non_leaf_grad_is_none_without_retain_grad() -> None:
    x = _leaf(1.0, 2.0)
    h = x * 2
    (h * h).sum().backward()
    assert h.grad is None and not h.retains_grad
    assert x.grad.tolist() == [8.0, 16.0]


def test_retain_grad_keeps_a_non_leaf_gradient() -> None:
    x = _leaf(1.0, 2.0)
    h = x * 2
    h.retain_grad()
    assert h.retains_grad
    (h * h).sum().backward()
    assert h.grad.tolist() == [4.0, 8.0] and h.grad.grad_fn is None
    assert x.grad.tolist() == [8.0, 16.0]


@pytest.mark.parametrize("non_leaf", [False, True], ids=["leaf", "non-leaf"])
def test_hook_replaces_the_gradient(non_leaf: bool) -> None:
    x = _leaf(1.0, 2.0)
    target = x * 1 if non_leaf else x
    seen = []

    def hook(grad: engine.Tensor) -> engine.Tensor:
        seen.append(grad.tolist())
        return grad * 10

    handle = target.register_hook(hook)
    (target * target).sum().backward(retain_graph=True)
    assert seen == [[2.0, 4.0]]
    assert x.grad.tolist() == [20.0, 40.0]
    handle.remove()
    x.grad = None
    (target * target).sum().backward()
    assert seen == [[2.0, 4.0]] and x.grad.tolist() == [2.0, 4.0]


def test_hook_returning_none_only_observes() -> None:
    x = _leaf(1.0, 2.0)
    h = x * 3
    seen = []
    h.register_hook(lambda g: seen.append(g.tolist()))
    h.sum().backward()
    assert seen == [[1.0, 1.0]] and x.grad.tolist() == [3.0, 3.0]


def test_hook_on_non_leaf_runs_before_retain_grad_stores() -> None:
    x = _leaf(1.0, 2.0)
    h = x * 2
    h.retain_grad()
    h.register_hook(lambda g: g * 10)
    (h * h).sum().backward()
    assert h.grad.tolist() == [40.0, 80.0] and x.grad.tolist() == [80.0, 160.0]


def _retained_grad_after_inplace(L: Any) -> tuple[list, list]:
    x = L.tensor([1.0, 2.0], requires_grad=True)
    y = x * 1
    y.retain_grad()
    y.mul_(3)
    (y * y).sum().backward()
    return y.grad.tolist(), x.grad.tolist()


def test_retain_grad_follows_an_inplace_change_to_the_latest_version() -> None:
    assert _retained_grad_after_inplace(engine) == ([6.0, 12.0], [18.0, 36.0])


@pytest.mark.torch
def test_retain_grad_after_inplace_parity(torch: Any) -> None:
    assert _retained_grad_after_inplace(torch) == _retained_grad_after_inplace(engine)


FREED_GRAPH = "Trying to backward through the graph a second time"


@pytest.mark.parametrize(
    "fn",
    [lambda x: x * x, lambda x: x.exp(), lambda x: x.sigmoid(), lambda x: x * 2],
    ids=["x*x", "exp", "sigmoid", "x*2"],
)
def test_graph_is_freed_after_backward(fn: Callable[[engine.Tensor], engine.Tensor]) -> None:
    y = fn(_leaf(1.0, 2.0)).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=FREED_GRAPH):
        y.backward()


def test_retain_graph_allows_a_second_backward() -> None:
    x = _leaf(1.0, 2.0)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert x.grad.tolist() == [4.0, 8.0]


def test_graph_saving_nothing_can_be_backwarded_twice() -> None:
    """Like torch: add and sum save no tensors, so nothing is freed."""
    x = _leaf(1.0, 2.0)
    y = (x + x).sum()
    y.backward()
    y.backward()
    assert x.grad.tolist() == [4.0, 4.0]


def test_detach_stops_the_gradient() -> None:
    x = _leaf(1.0, 2.0)
    (x * x.detach()).sum().backward()
    assert x.grad.tolist() == [1.0, 2.0]


def test_gradient_of_to_float64_comes_back_as_float32() -> None:
    x = _leaf(1.0, 2.0)
    y = x.to(engine.float64)
    assert y.dtype is engine.float64 and y.grad_fn.name() == "ToCopyBackward0"
    (y * y).sum().backward()
    assert x.grad.dtype is engine.float32 and x.grad.tolist() == [2.0, 4.0]


@pytest.mark.parametrize(
    ("shape_a", "shape_b"),
    [((3, 1), (1, 4)), ((2, 3, 4), (4,)), ((), (5,)), ((2, 1, 3), (4, 1)), ((1,), (2, 3))],
)
def test_broadcast_gradients_are_summed_back_to_input_shapes(
    shape_a: tuple, shape_b: tuple
) -> None:
    a = engine.ones(shape_a, requires_grad=True)
    b = engine.ones(shape_b, requires_grad=True)
    out = a * 2 + b * 3
    out.sum().backward()
    assert a.grad.shape == shape_a and b.grad.shape == shape_b
    np.testing.assert_array_equal(a.grad.numpy(), 2 * out.numel() / a.numel())
    np.testing.assert_array_equal(b.grad.numpy(), 3 * out.numel() / b.numel())


def _extreme_values(L: Any) -> tuple[list, list]:
    x = L.tensor([0.0, 1e20, -1.0], requires_grad=True)
    y = x.log() + x.exp() + x.sqrt() + 1 / x
    y.sum().backward()
    return y.tolist(), x.grad.tolist()


def test_inf_and_nan_come_out_silently() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values, grads = _extreme_values(engine)
    assert str(values) == str(grads) == "[nan, inf, nan]"


@pytest.mark.torch
def test_inf_and_nan_parity(torch: Any) -> None:
    assert str(_extreme_values(torch)) == str(_extreme_values(engine))


# ------------------------------------------------------------------ higher order


def test_second_derivative_of_cube_with_grad() -> None:
    x = _leaf(-1.0, 0.5, 2.0)
    (g,) = engine.autograd.grad((x**3).sum(), x, create_graph=True)
    assert g.requires_grad
    np.testing.assert_allclose(g.detach().numpy(), 3 * x.detach().numpy() ** 2)
    (gg,) = engine.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(gg.numpy(), 6 * x.detach().numpy())


def test_create_graph_gives_each_leaf_its_own_grad() -> None:
    a, b = _leaf(1.0, 2.0), _leaf(3.0, 4.0)
    (a + b).backward(engine.ones(2), create_graph=True)
    assert a.grad is not b.grad
    with engine.no_grad():
        a.grad.zero_()
    assert b.grad.tolist() == [1.0, 1.0]


def test_second_derivative_of_tanh_with_backward_create_graph() -> None:
    x = engine.tensor([-1.0, 0.3, 1.2], dtype=engine.float64, requires_grad=True)
    x.tanh().sum().backward(create_graph=True)
    first = x.grad
    x.grad = None
    first.sum().backward()
    t = np.tanh(x.detach().numpy())
    np.testing.assert_allclose(first.detach().numpy(), 1 - t**2)
    np.testing.assert_allclose(x.grad.numpy(), -2 * t * (1 - t**2))


@pytest.mark.parametrize("k", [0, 2])
def test_hessian_of_softmax_component(k: int, rng: np.random.Generator) -> None:
    """Row by row, the Hessian of softmax(x)[k] against its closed form."""
    x = engine.tensor(rng.standard_normal(4), requires_grad=True)
    (g,) = engine.autograd.grad(x.softmax(0)[k], x, create_graph=True)
    rows = [engine.autograd.grad(g[j], x, retain_graph=True)[0].numpy() for j in range(4)]
    s = np.exp(x.detach().numpy()) / np.exp(x.detach().numpy()).sum()
    e = np.eye(4)[k] - s  # d s_k / dx = s_k (e_k - s)
    expected = s[k] * (np.outer(e, e) - (np.diag(s) - np.outer(s, s)))
    np.testing.assert_allclose(np.stack(rows), expected, atol=1e-12)


# ------------------------------------------------------------------ autograd.grad


def test_grad_returns_gradients_without_touching_leaves_grad() -> None:
    x, w = _leaf(1.0, 2.0), _leaf(3.0, 4.0)
    h = x * w
    h.retain_grad()
    gx, gw = engine.autograd.grad(h, [x, w], grad_outputs=engine.tensor([1.0, 10.0]))
    assert gx.tolist() == [3.0, 40.0] and gw.tolist() == [1.0, 20.0]
    assert x.grad is None and w.grad is None
    assert h.grad.tolist() == [1.0, 10.0]  # as in torch, retain_grad stores what passes by


def test_grad_of_several_outputs_sums_them() -> None:
    x = _leaf(1.0, 2.0)
    (g,) = engine.autograd.grad([(x * x).sum(), (x * 3).sum()], x)
    assert g.tolist() == [5.0, 7.0]


def test_grad_with_respect_to_a_non_leaf() -> None:
    x = _leaf(1.0, 2.0)
    h = x * 2
    (g,) = engine.autograd.grad((h * h).sum(), h)
    assert g.tolist() == [4.0, 8.0]


def test_grad_applies_the_hooks_of_its_inputs() -> None:
    x = _leaf(1.0, 2.0)
    x.register_hook(lambda g: g * 10)
    h = x * 1
    h.register_hook(lambda g: g * 100)
    assert engine.autograd.grad((h * h).sum(), h)[0].tolist() == [200.0, 400.0]
    assert engine.autograd.grad((h * h).sum(), x)[0].tolist() == [2000.0, 4000.0]


def test_grad_runs_only_the_graph_up_to_its_inputs() -> None:
    """The graph behind an intermediate input is neither run nor freed, so backward still
    works through it afterwards; hooks behind it do not fire."""
    x = _leaf(1.0, 2.0)
    fired = []
    x.register_hook(lambda g: fired.append(g))
    y = x.exp()
    (g,) = engine.autograd.grad((y * y).sum(), y)
    np.testing.assert_allclose(g.numpy(), 2 * np.exp([1.0, 2.0]), rtol=1e-6)
    assert fired == []
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp([1.0, 2.0]), rtol=1e-6)


def test_gradient_of_another_dtype_is_cast_to_the_output_dtype() -> None:
    x = _leaf(1.0, 2.0)
    (x * 2).backward(engine.ones(2, dtype=engine.float64))
    assert x.grad.dtype is engine.float32 and x.grad.tolist() == [2.0, 2.0]


def test_grad_allow_unused_gives_none() -> None:
    x, unused = _leaf(1.0), _leaf(2.0)
    assert engine.autograd.grad((x * 2).sum(), [x, unused], allow_unused=True)[1] is None
    with pytest.raises(RuntimeError, match="index 1 appears to not have been used in the graph"):
        engine.autograd.grad((x * 2).sum(), [x, unused])


# ------------------------------------------------------------------ grad modes


def test_no_grad_records_nothing_and_restores() -> None:
    x = _leaf(1.0)
    with engine.no_grad():
        assert not engine.is_grad_enabled()
        y = x * 2
    assert engine.is_grad_enabled()
    assert not y.requires_grad and y.grad_fn is None


def test_grad_modes_nest() -> None:
    x = _leaf(1.0)
    with engine.no_grad():
        with engine.enable_grad():
            assert (x * 2).requires_grad
            with engine.set_grad_enabled(False):
                assert not (x * 2).requires_grad
            assert engine.is_grad_enabled()
        assert not engine.is_grad_enabled()
    assert engine.is_grad_enabled()


def test_grad_mode_is_restored_after_an_exception() -> None:
    with pytest.raises(ValueError), engine.no_grad():
        raise ValueError
    assert engine.is_grad_enabled()


@pytest.mark.parametrize(
    ("decorator", "records"),
    [
        (engine.no_grad(), False),
        (engine.enable_grad(), True),
        (engine.no_grad, False),  # without parentheses, as torch allows
        (engine.enable_grad, True),
    ],
    ids=["no_grad()", "enable_grad()", "no_grad", "enable_grad"],
)
def test_grad_modes_as_decorators(decorator: Callable[[Any], Any], records: bool) -> None:
    _assert_decorates(decorator, records)


def test_set_grad_enabled_as_a_decorator() -> None:
    _assert_decorates(engine.set_grad_enabled(False), records=False)  # switches, then restores
    assert engine.is_grad_enabled()


def _assert_decorates(decorator: Callable[[Any], Any], records: bool) -> None:
    @decorator
    def double(x: engine.Tensor) -> engine.Tensor:
        """Doc."""
        return x * 2

    assert double.__name__ == "double" and double.__doc__ == "Doc."
    x = _leaf(1.0)
    for outer in (engine.enable_grad, engine.no_grad):
        with outer():
            mode = engine.is_grad_enabled()
            assert double(x).requires_grad is records
            assert engine.is_grad_enabled() is mode


def test_set_grad_enabled_as_a_function_call() -> None:
    engine.set_grad_enabled(False)
    try:
        assert not (_leaf(1.0) * 2).requires_grad
    finally:
        engine.set_grad_enabled(True)
    assert (_leaf(1.0) * 2).requires_grad


# ------------------------------------------------------------------ deep and wide graphs


def test_ten_thousand_op_chain() -> None:
    x = engine.tensor(0.5, dtype=engine.float64, requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001 + x
    y.backward()
    # y_n = a y_{n-1} + x with y_0 = x: dy/dx = a^n + (a^n - 1) / (a - 1)
    a, n = 1.0001, 10_000
    np.testing.assert_allclose(x.grad.item(), a**n + (a**n - 1) / (a - 1), rtol=1e-10)


def test_wide_diamond_with_a_reused_non_leaf() -> None:
    x = _leaf(1.0, 2.0)
    h = x * x  # every branch reuses h; h's gradient must be complete before it flows to x
    branches = [h * float(i) for i in range(1000)]
    engine.stack(branches).sum().backward()
    total = sum(range(1000))
    assert x.grad.tolist() == [2 * 1.0 * total, 2 * 2.0 * total]


def test_deep_diamond_doubles_the_gradient_at_each_level() -> None:
    x = engine.tensor(1.0, dtype=engine.float64, requires_grad=True)
    h = x
    for _ in range(60):
        h = h * 1.0 + h  # each level uses h twice: a naive recursion would take 2**60 steps
    h.backward()
    assert x.grad.item() == 2.0**60


# ------------------------------------------------------------------ custom Functions


class ScaledSquareArgmax(Function):
    """k * x**2 (k a Python number) and the argmax of x, which is marked non-differentiable."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: engine.Tensor, k: float) -> tuple:
        ctx.save_for_backward(x)
        ctx.k = k
        index = x.argmax()
        ctx.mark_non_differentiable(index)
        return x * x * k, index

    @staticmethod
    def backward(ctx: FunctionCtx, grad: engine.Tensor, _grad_index: Any) -> tuple:
        (x,) = ctx.saved_tensors
        return grad * 2 * ctx.k * x, None


def test_custom_function() -> None:
    x = _leaf(1.0, 5.0, 2.0)
    y, index = ScaledSquareArgmax.apply(x, 3.0)
    assert y.grad_fn.name() == "ScaledSquareArgmaxBackward" and not y.is_leaf
    assert y.grad_fn.needs_input_grad == (True, False)
    assert index.item() == 1 and not index.requires_grad and index.grad_fn is None
    y.sum().backward()
    assert x.grad.tolist() == [6.0, 30.0, 12.0]


def _custom_function_node(L: Any) -> tuple:
    """The class names of a custom Function's ctx (inside forward) and grad_fn, and the names
    of a leaf's and of a built-in op's nodes."""
    seen = []

    class ScaledProduct(L.autograd.Function):
        @staticmethod
        def forward(ctx: Any, a: Any, b: Any) -> Any:
            seen.append(type(ctx).__name__)
            return a * b * 2

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return grad, grad

    x = L.tensor([1.0, 2.0], requires_grad=True)
    y = ScaledProduct.apply(x, x)
    leaf = (x * 2).grad_fn.next_functions[0][0]
    return (
        *seen,
        type(y.grad_fn).__name__,
        y.grad_fn.name(),
        type(leaf).__name__,
        leaf.name(),
        repr(y).split("grad_fn=")[1],
    )


def test_custom_function_nodes_are_named_as_torchs() -> None:
    assert _custom_function_node(engine) == (
        "ScaledProductBackward",
        "ScaledProductBackward",
        "ScaledProductBackward",
        "AccumulateGrad",
        "torch::autograd::AccumulateGrad",
        "<ScaledProductBackward>)",
    )


@pytest.mark.torch
def test_custom_function_node_names_parity(torch: Any) -> None:
    assert _custom_function_node(engine) == _custom_function_node(torch)


@pytest.mark.torch
def test_copy_slices_prints_as_torch(torch: Any) -> None:
    def written(L: Any) -> str:
        h = L.tensor([1.0, 2.0], requires_grad=True) * 1
        h[0] = 5.0
        return repr(h)

    assert written(engine) == written(torch) == "tensor([5., 2.], grad_fn=<CopySlices>)"


def test_custom_function_forward_records_no_graph() -> None:
    x = _leaf(1.0)
    with engine.no_grad():
        y, _ = ScaledSquareArgmax.apply(x, 2.0)
    assert not y.requires_grad and y.grad_fn is None


def test_custom_function_saved_tensor_is_version_checked() -> None:
    x = _leaf(1.0, 2.0)
    h = x * 1
    y, _ = ScaledSquareArgmax.apply(h, 2.0)
    h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


class Identity(Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: engine.Tensor) -> engine.Tensor:
        return x

    @staticmethod
    def backward(ctx: FunctionCtx, grad: engine.Tensor) -> engine.Tensor:
        return grad * 2


def test_custom_function_returning_its_input_leaves_the_input_a_leaf() -> None:
    x = _leaf(1.0, 2.0)
    y = Identity.apply(x)
    assert y is not x and x.is_leaf and x.grad_fn is None and y.grad_fn.name() == "IdentityBackward"
    y.sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]


class DoubleInPlace(Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: engine.Tensor) -> engine.Tensor:
        x.mul_(2)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx: FunctionCtx, grad: engine.Tensor) -> engine.Tensor:
        return grad * 2


def test_custom_function_marking_an_input_dirty_rebases_it() -> None:
    x = _leaf(1.0, 2.0)
    h = x * 1
    y = DoubleInPlace.apply(h)
    assert y is h and h._version == 2 and h.grad_fn.name() == "DoubleInPlaceBackward"  # as torch
    assert h.tolist() == [2.0, 4.0]
    h.sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]


class BroadcastGrad(Function):
    """Its backward returns a gradient broadcast beyond the input's shape: it is summed back."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: engine.Tensor) -> engine.Tensor:
        return x * 1

    @staticmethod
    def backward(ctx: FunctionCtx, grad: engine.Tensor) -> engine.Tensor:
        return grad.expand(3, 2)


def test_custom_function_gradient_is_summed_to_the_input_shape() -> None:
    x = _leaf(1.0, 2.0)
    BroadcastGrad.apply(x).sum().backward()
    assert x.grad.tolist() == [3.0, 3.0]


def test_graph_is_released_after_backward() -> None:
    """Saved intermediates die with the graph, without waiting for the cycle collector."""
    x = engine.ones(1000, requires_grad=True)
    h = x.exp()
    alive = weakref.ref(h)
    y = (h * h).sum()
    del h
    assert alive() is not None  # saved for y's backward
    y.backward()
    assert alive() is None


# ------------------------------------------------------------------ indexing and in-place ops


def test_basic_slice_gradient_is_zero_elsewhere() -> None:
    x = engine.ones(3, 4, requires_grad=True)
    (x[1:, ::2] * 5).sum().backward()
    expected = np.zeros((3, 4), np.float32)
    expected[1:, ::2] = 5
    np.testing.assert_array_equal(x.grad.numpy(), expected)


def test_repeated_integer_indices_accumulate() -> None:
    x = _leaf(1.0, 2.0, 3.0)
    (x[[0, 2, 0, 0]] * engine.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [1.0 + 3.0 + 4.0, 0.0, 2.0]


def test_boolean_mask_gradient() -> None:
    x = _leaf(-1.0, 2.0, 3.0)
    picked = x[x > 0]
    assert picked.tolist() == [2.0, 3.0]
    (picked * picked).sum().backward()
    assert x.grad.tolist() == [0.0, 4.0, 6.0]


def test_setitem_on_a_non_leaf_inside_the_graph() -> None:
    x, v = _leaf(1.0, 2.0, 3.0), engine.tensor(5.0, requires_grad=True)
    h = x * 2
    h[1:] = v
    assert h.tolist() == [2.0, 5.0, 5.0] and h._version == 1
    (h * h).sum().backward()
    assert x.grad.tolist() == [8.0, 0.0, 0.0]  # the overwritten places get no gradient
    assert v.grad.item() == 2 * 5.0 + 2 * 5.0


INPLACE_ON_NON_LEAF = {
    "add_": (lambda L, h: h.add_(1), [2.0, 2.0]),
    "mul_": (lambda L, h: h.mul_(3), [6.0, 6.0]),
    "*=": (lambda L, h: operator.imul(h, 3), [6.0, 6.0]),
    "mul_-tensor": (lambda L, h: h.mul_(L.tensor([2.0, 3.0])), [4.0, 6.0]),
    "clamp_": (lambda L, h: h.clamp_(max=2.5), [2.0, 0.0]),
    "relu_": (lambda L, h: h.relu_(), [2.0, 2.0]),
    "zero_": (lambda L, h: h.zero_(), [0.0, 0.0]),
    "fill_": (lambda L, h: h.fill_(7.0), [0.0, 0.0]),
    "copy_": (lambda L, h: h.copy_(L.ones(2)), [0.0, 0.0]),
}


def _grad_after_inplace_on_non_leaf(L: Any, inplace: Callable[[Any, Any], Any]) -> list:
    x = L.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2
    inplace(L, h)
    assert not h.is_leaf and h.requires_grad and h._version == 1
    h.sum().backward()
    return x.grad.tolist()


@pytest.mark.parametrize("name", INPLACE_ON_NON_LEAF)
def test_inplace_ops_on_non_leaves_are_differentiated(name: str) -> None:
    inplace, expected = INPLACE_ON_NON_LEAF[name]
    assert _grad_after_inplace_on_non_leaf(engine, inplace) == expected


@pytest.mark.torch
@pytest.mark.parametrize("name", INPLACE_ON_NON_LEAF)
def test_inplace_ops_on_non_leaves_parity(torch: Any, name: str) -> None:
    inplace, expected = INPLACE_ON_NON_LEAF[name]
    assert _grad_after_inplace_on_non_leaf(torch, inplace) == expected


def _inplace_on_row(L: Any) -> Any:
    x = L.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    h = x * 1
    h[0].mul_(3)
    (h * h).sum().backward()
    return x.grad


def _inplace_on_transpose(L: Any) -> Any:
    x = L.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    h = x * 1
    h.t().mul_(L.tensor([[1.0, 10.0], [1.0, 10.0]]))
    h.sum().backward()
    return x.grad


def _copy_into_a_slice_of_a_buffer(L: Any) -> Any:
    x = L.tensor([1.0, 2.0], requires_grad=True)
    buffer = L.zeros(4)
    buffer[1:3].copy_(x * 3)
    (buffer * buffer).sum().backward()
    return x.grad


def _zero_in_a_view_of_a_view(L: Any) -> Any:
    x = L.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    h = x * 1
    h.reshape(3, 2)[1:][0, 1].zero_()
    (h * h).sum().backward()
    return x.grad


VIEW_INPLACE = {
    "row-mul_": (_inplace_on_row, [[18.0, 36.0], [6.0, 8.0]]),
    "transpose-mul_": (_inplace_on_transpose, [[1.0, 1.0], [10.0, 10.0]]),
    "buffer-slice-copy_": (_copy_into_a_slice_of_a_buffer, [18.0, 36.0]),
    "view-of-view-zero_": (_zero_in_a_view_of_a_view, [[2.0, 4.0, 6.0], [0.0, 10.0, 12.0]]),
}


@pytest.mark.parametrize("name", VIEW_INPLACE)
def test_inplace_op_on_a_view_reaches_the_base_gradient(name: str) -> None:
    run, expected = VIEW_INPLACE[name]
    assert run(engine).tolist() == expected


@pytest.mark.torch
@pytest.mark.parametrize("name", VIEW_INPLACE)
def test_inplace_op_on_a_view_parity(torch: Any, name: str) -> None:
    run, expected = VIEW_INPLACE[name]
    assert run(torch).tolist() == expected


def _modify_an_input_backward_does_not_need(L: Any) -> list:
    x, w = L.tensor([1.0, 2.0], requires_grad=True), L.tensor([[1.0, 2.0], [3.0, 4.0]])
    h = x * 1
    y = (h * 2).sum() + (h / 4).sum() + (h @ w).sum()  # no gradient reads h
    h.add_(1)
    y.backward()
    return x.grad.tolist()


def test_modifying_an_input_that_backward_does_not_need_is_allowed() -> None:
    assert _modify_an_input_backward_does_not_need(engine) == [2.0 + 0.25 + 3.0, 2.0 + 0.25 + 7.0]


@pytest.mark.torch
def test_modifying_an_unneeded_input_parity(torch: Any) -> None:
    assert _modify_an_input_backward_does_not_need(torch) == (
        _modify_an_input_backward_does_not_need(engine)
    )


# ------------------------------------------------------------------ in-place ops under no_grad

INPLACE = {  # an in-place op on x = [1., -2.] and the values it leaves
    "+=": (lambda x: operator.iadd(x, 1), [2.0, -1.0]),
    "*=": (lambda x: operator.imul(x, 2), [2.0, -4.0]),
    "add_": (lambda x: x.add_(1), [2.0, -1.0]),
    "sub_": (lambda x: x.sub_(1), [0.0, -3.0]),
    "mul_": (lambda x: x.mul_(2), [2.0, -4.0]),
    "div_": (lambda x: x.div_(2), [0.5, -1.0]),
    "zero_": (lambda x: x.zero_(), [0.0, 0.0]),
    "fill_": (lambda x: x.fill_(3), [3.0, 3.0]),
    "copy_": (lambda x: x.copy_(x.detach() * 5), [5.0, -10.0]),
    "clamp_": (lambda x: x.clamp_(0.0, 1.5), [1.0, 0.0]),
    "relu_": (lambda x: x.relu_(), [1.0, 0.0]),
    "setitem": (lambda x: x.__setitem__(0, 7.0), [7.0, -2.0]),
}


def _assert_inplace_under_no_grad(L: Any, name: str) -> None:
    op, expected = INPLACE[name]
    x = L.tensor([1.0, -2.0], requires_grad=True)
    with L.no_grad():
        op(x)
    assert x.tolist() == expected
    assert x._version == 1 and x.requires_grad and x.is_leaf


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_on_a_leaf_is_allowed_under_no_grad(name: str) -> None:
    _assert_inplace_under_no_grad(engine, name)


@pytest.mark.torch
@pytest.mark.parametrize("name", INPLACE)
def test_inplace_on_a_leaf_under_no_grad_parity(torch: Any, name: str) -> None:
    _assert_inplace_under_no_grad(torch, name)


@pytest.mark.parametrize("name", [n for n in INPLACE if n != "setitem"])
def test_inplace_ops_return_the_tensor_itself(name: str) -> None:
    x = engine.tensor([1.0, -2.0])
    assert INPLACE[name][0](x) is x


# ------------------------------------------------------------------ misuse errors


def _backward_twice(L: Any) -> None:
    y = (L.tensor([1.0, 2.0], requires_grad=True) ** 2).sum()
    y.backward()
    y.backward()


def _modify_saved_input(L: Any) -> None:
    h = L.tensor([1.0, 2.0], requires_grad=True) * 1
    y = h * h
    h.add_(1)
    y.sum().backward()


def _modify_saved_output(L: Any) -> None:
    y = (L.tensor([1.0, 2.0], requires_grad=True) * 1).sigmoid()
    y.mul_(2)
    y.sum().backward()


def _modify_through_a_view(L: Any) -> None:
    h = L.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True) * 1
    row = h[0]
    y = h * h
    row.mul_(2)
    y.sum().backward()


def _modify_through_detach(L: Any) -> None:
    x = L.tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).exp()
    x.detach().zero_()
    y.sum().backward()


def _grads_seen_by_a_two_output_function(L: Any, materialize: bool) -> list:
    """A Function returning (2x, 3x) with only 2x used: what its backward receives."""
    seen = []

    class TwoOutputs(L.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            ctx.set_materialize_grads(materialize)
            return x * 2, x * 3

        @staticmethod
        def backward(ctx: Any, g2: Any, g3: Any) -> Any:
            seen.extend(None if g is None else g.tolist() for g in (g2, g3))
            return g2 * 2 + (0 if g3 is None else g3 * 3)

    x = L.tensor([1.0, 2.0], requires_grad=True)
    TwoOutputs.apply(x)[0].sum().backward()
    return [*seen, x.grad.tolist()]


@pytest.mark.parametrize("materialize", [True, False])
def test_set_materialize_grads(materialize: bool) -> None:
    unused = [0.0, 0.0] if materialize else None
    expected = [[1.0, 1.0], unused, [2.0, 2.0]]
    assert _grads_seen_by_a_two_output_function(engine, materialize) == expected


@pytest.mark.torch
@pytest.mark.parametrize("materialize", [True, False])
def test_set_materialize_grads_parity(torch: Any, materialize: bool) -> None:
    assert _grads_seen_by_a_two_output_function(torch, materialize) == (
        _grads_seen_by_a_two_output_function(engine, materialize)
    )


def _double_with_backward(L: Any, backward: Callable[..., Any]) -> Any:
    """A custom Function of library ``L``: x * 2 with the given backward."""

    class Double(L.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any) -> Any:
            return x * 2

    Double.backward = staticmethod(backward)
    return Double.apply(L.ones(2, requires_grad=True)).sum().backward()


def _set_requires_grad_of_non_leaf(L: Any) -> None:
    (L.tensor([1.0], requires_grad=True) * 2).requires_grad = False


MODIFIED = "one of the variables needed for gradient computation has been modified by an inplace"
MISUSES = {
    "backward-twice": (_backward_twice, [FREED_GRAPH]),
    "implicit-grad-non-scalar": (
        lambda L: (L.ones(2, requires_grad=True) * 2).backward(),
        ["grad can be implicitly created only for scalar outputs"],
    ),
    "backward-without-grad": (
        lambda L: L.ones(2).sum().backward(),
        ["element 0 of tensors does not require grad and does not have a grad_fn"],
    ),
    "requires-grad-of-non-leaf": (
        _set_requires_grad_of_non_leaf,
        ["you can only change requires_grad flags of leaf variables."],
    ),
    "numpy-of-requires-grad": (
        lambda L: L.ones(2, requires_grad=True).numpy(),
        ["Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy() instead."],
    ),
    **{
        f"inplace-leaf-{name}": (
            lambda L, op=op: op(L.tensor([1.0, -2.0], requires_grad=True)),
            ["a leaf Variable that requires grad is being used in an in-place operation."],
        )
        for name, (op, _) in INPLACE.items()
    },
    **{
        f"inplace-view-of-leaf-{name}": (
            lambda L, op=op: op(L.tensor([[1.0, -2.0]], requires_grad=True)[0]),
            ["a view of a leaf Variable that requires grad is being used in an in-place"],
        )
        for name, op in {"mul_": lambda v: v.mul_(2), "zero_": lambda v: v.zero_()}.items()
    },
    "saved-input-modified": (
        _modify_saved_input,
        [MODIFIED, "[torch.FloatTensor [2]]", "is at version 1; expected version 0 instead."],
    ),
    "saved-output-modified": (
        _modify_saved_output,
        [MODIFIED, "[torch.FloatTensor [2]]", "is at version 1; expected version 0 instead."],
    ),
    "saved-modified-through-view": (
        _modify_through_a_view,
        [MODIFIED, "[torch.FloatTensor [2, 2]]", "is at version 1; expected version 0 instead."],
    ),
    "saved-leaf-modified-through-detach": (
        _modify_through_detach,
        [MODIFIED, "[torch.FloatTensor [2]] is at version 1; expected version 0 instead."],
    ),
    "grad-unused-input": (
        lambda L: L.autograd.grad(
            L.ones(1, requires_grad=True).sum(), L.ones(1, requires_grad=True)
        ),
        ["appears to not have been used in the graph. Set allow_unused=True"],
    ),
    "grad-of-input-without-grad": (
        lambda L: L.autograd.grad(L.ones(1, requires_grad=True).sum(), L.ones(1)),
        ["One of the differentiated Tensors does not require grad"],
    ),
    "gradient-shape-mismatch": (
        lambda L: (L.ones(2, requires_grad=True) * 2).backward(L.ones(3)),
        ["Mismatch in shape: grad_output[0] has a shape of"],
    ),
    "function-returns-too-many-gradients": (
        lambda L: _double_with_backward(L, lambda ctx, g: (g * 2, g)),
        ["function DoubleBackward returned an incorrect number of gradients (expected 1, got 2)"],
    ),
    "function-returns-a-wrong-shape": (
        lambda L: _double_with_backward(L, lambda ctx, g: L.ones(3)),
        [
            "Function DoubleBackward returned an invalid gradient at index 0 - got [3] but "
            "expected shape compatible with [2]"
        ],
    ),
    "retain-grad-without-grad": (
        lambda L: L.ones(2).retain_grad(),
        ["can't retain_grad on Tensor that has requires_grad=False"],
    ),
    "hook-without-grad": (
        lambda L: L.ones(2).register_hook(lambda g: g),
        ["cannot register a hook on a tensor that doesn't require gradient"],
    ),
}


def _assert_misuse_raises(L: Any, name: str) -> None:
    misuse, phrases = MISUSES[name]
    with pytest.raises(RuntimeError) as info:
        misuse(L)
    for phrase in phrases:
        assert phrase in str(info.value)


@pytest.mark.parametrize("name", MISUSES)
def test_misuse_raises_torchs_words(name: str) -> None:
    _assert_misuse_raises(engine, name)


@pytest.mark.torch
@pytest.mark.parametrize("name", MISUSES)
def test_misuse_phrases_are_torchs(torch: Any, name: str) -> None:
    """The phrases expected above are what torch 2.13 says for the same code."""
    _assert_misuse_raises(torch, name)
