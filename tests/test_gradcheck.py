"""The gradient checker itself: it passes correct gradients and catches wrong ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import engine
from engine.autograd import Function, FunctionCtx, GradcheckError, gradcheck, gradgradcheck

MISMATCH_00 = "Jacobian mismatch for output 0 with respect to input 0"


class Cube(Function):
    """x ** 3 with a hand-written backward; ``scale`` corrupts the gradient of the input."""

    scale = 1.0

    @staticmethod
    def forward(ctx: FunctionCtx, x: engine.Tensor) -> engine.Tensor:
        ctx.save_for_backward(x)
        return x * x * x

    @classmethod
    def backward(cls, ctx: FunctionCtx, grad: engine.Tensor) -> engine.Tensor:
        (x,) = ctx.saved_tensors
        return grad * 3 * x * x * cls.scale


class WrongCube(Cube):
    scale = 1.1


class CubeDetachedBackward(Cube):
    """Right first derivative, but its backward cuts the graph, so the second derivative is 0."""

    @staticmethod
    def backward(ctx: FunctionCtx, grad: engine.Tensor) -> engine.Tensor:
        (x,) = ctx.saved_tensors
        return grad * 3 * x.detach() * x.detach()


class MulWrongInOther(Function):
    """a * b whose gradient in b is wrong (it forgets a)."""

    @staticmethod
    def forward(ctx: FunctionCtx, a: engine.Tensor, b: engine.Tensor) -> engine.Tensor:
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx: FunctionCtx, grad: engine.Tensor) -> tuple[engine.Tensor, engine.Tensor]:
        a, b = ctx.saved_tensors
        return grad * b, grad


def _leaf(rng: np.random.Generator, *shape: int, dtype: Any = engine.float64) -> engine.Tensor:
    return engine.tensor(rng.uniform(0.5, 1.5, shape), dtype=dtype, requires_grad=True)


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(Cube.apply, id="custom-function"),
        pytest.param(lambda x: (x * x.exp()).sum(), id="scalar-output"),
        pytest.param(lambda x: (x.tanh(), x * 2), id="two-outputs"),
    ],
)
def test_passes_correct_gradients(fn: Any, rng: np.random.Generator) -> None:
    assert gradcheck(fn, (_leaf(rng, 3, 2),)) is True


def test_checks_only_tensors_that_require_grad(rng: np.random.Generator) -> None:
    x, w = _leaf(rng, 4), engine.tensor(rng.standard_normal(4))
    assert gradcheck(lambda x, w, k: (x * w) ** k, (x, w, 3))


def test_leaves_the_inputs_unchanged(rng: np.random.Generator) -> None:
    x = _leaf(rng, 2, 3)
    before = x.detach().numpy().copy()
    gradcheck(lambda x: x.log(), (x,))
    np.testing.assert_array_equal(x.detach().numpy(), before)
    assert x.grad is None


def test_raises_on_a_wrong_gradient(rng: np.random.Generator) -> None:
    with pytest.raises(GradcheckError, match=MISMATCH_00):
        gradcheck(WrongCube.apply, (_leaf(rng, 3),))


def test_names_the_input_whose_gradient_is_wrong(rng: np.random.Generator) -> None:
    a, b = _leaf(rng, 3), _leaf(rng, 3)
    assert gradcheck(MulWrongInOther.apply, (a, b.detach()))  # only a is checked: its grad is right
    with pytest.raises(GradcheckError, match="output 0 with respect to input 1"):
        gradcheck(MulWrongInOther.apply, (a, b))


def test_names_the_output_whose_gradient_is_wrong(rng: np.random.Generator) -> None:
    with pytest.raises(GradcheckError, match="output 1 with respect to input 0"):
        gradcheck(lambda x: (x * 2, WrongCube.apply(x)), (_leaf(rng, 3),))


def test_returns_false_without_raising(rng: np.random.Generator) -> None:
    assert gradcheck(WrongCube.apply, (_leaf(rng, 3),), raise_exception=False) is False


def test_the_tolerance_decides(rng: np.random.Generator) -> None:
    """WrongCube is 10% off: a relative tolerance above that lets it pass."""
    assert gradcheck(WrongCube.apply, (_leaf(rng, 3),), rtol=0.2, raise_exception=False)


def test_warns_on_float32_inputs(rng: np.random.Generator) -> None:
    x = _leaf(rng, 3, dtype=engine.float32)
    with pytest.warns(UserWarning, match="Input #0 requires gradient and is not a double"):
        gradcheck(lambda x: x * 2, (x,), eps=1e-2, atol=1e-3)


def test_needs_an_input_that_requires_grad() -> None:
    with pytest.raises(ValueError, match="at least one input tensor to require gradient"):
        gradcheck(lambda x: x * 2, (engine.ones(3, dtype=engine.float64),))


def test_gradgradcheck_passes_correct_second_derivatives(rng: np.random.Generator) -> None:
    engine.manual_seed(0)
    assert gradgradcheck(Cube.apply, (_leaf(rng, 3),))


def test_gradgradcheck_catches_a_wrong_second_derivative(rng: np.random.Generator) -> None:
    x = _leaf(rng, 3)
    assert gradcheck(CubeDetachedBackward.apply, (x,))  # the first derivative is right
    engine.manual_seed(0)
    with pytest.raises(GradcheckError, match=MISMATCH_00):
        gradgradcheck(CubeDetachedBackward.apply, (x,))
    assert gradgradcheck(CubeDetachedBackward.apply, (x,), raise_exception=False) is False
