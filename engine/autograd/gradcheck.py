"""Finite-difference checks of analytical gradients (``gradcheck``) and of their gradients."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class GradcheckError(RuntimeError):
    """An analytical Jacobian disagrees with the numerical one."""


def _as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, list | tuple) else (x,)


def _differentiable(inputs: tuple) -> list[int]:
    from engine.tensor import Tensor

    return [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]


def _float_outputs(fn: Callable, inputs: tuple) -> tuple:
    return tuple(o for o in _as_tuple(fn(*inputs)) if o.is_floating_point())


def numerical_jacobians(fn: Callable, inputs: tuple, eps: float) -> list[list[np.ndarray]]:
    """``J[i][j]``: d output j / d input i by central differences, shape (in numel, out numel)."""
    diff = _differentiable(inputs)
    outs = _float_outputs(fn, inputs)
    jac = [[np.zeros((inputs[i].numel(), o.numel())) for o in outs] for i in diff]
    for row, i in enumerate(diff):
        data = inputs[i]._data
        for k, index in enumerate(np.ndindex(data.shape)):
            orig = data[index].copy()
            data[index] = orig + eps
            plus = [o._data.astype(np.float64).ravel() for o in _float_outputs(fn, inputs)]
            data[index] = orig - eps
            minus = [o._data.astype(np.float64).ravel() for o in _float_outputs(fn, inputs)]
            data[index] = orig
            for j in range(len(outs)):
                jac[row][j][k] = (plus[j] - minus[j]) / (2 * eps)
    return jac


def analytical_jacobians(fn: Callable, inputs: tuple) -> list[list[np.ndarray]]:
    """``J[i][j]`` from backward passes with one-hot output gradients, same layout as numerical."""
    from engine.autograd import grad
    from engine.tensor import Tensor

    diff = _differentiable(inputs)
    outs = _float_outputs(fn, inputs)
    jac = [[np.zeros((inputs[i].numel(), o.numel())) for o in outs] for i in diff]
    for j, out in enumerate(outs):
        if not out.requires_grad:
            continue
        for k in range(out.numel()):
            one_hot = np.zeros(out.numel(), out._data.dtype)
            one_hot[k] = 1
            grads = grad(
                out,
                [inputs[i] for i in diff],
                Tensor._make(one_hot.reshape(out.shape)),
                retain_graph=True,
                allow_unused=True,
            )
            for row, g in enumerate(grads):
                if g is not None:
                    jac[row][j][:, k] = g._data.astype(np.float64).ravel()
    return jac


def gradcheck(
    fn: Callable[..., Any],
    inputs: Any,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    raise_exception: bool = True,
) -> bool:
    """Compare the analytical Jacobians of ``fn`` at ``inputs`` with central differences.

    Inputs should be float64 tensors; those with ``requires_grad=True`` are checked. Returns
    True on success; on a mismatch raises ``GradcheckError`` naming the output and input and
    showing both Jacobians (or returns False with ``raise_exception=False``).
    """
    inputs = _as_tuple(inputs)
    diff = _differentiable(inputs)
    if not diff:
        raise ValueError("gradcheck expects at least one input tensor to require gradient")
    for i in diff:
        if inputs[i]._data.dtype != np.float64:
            warnings.warn(
                f"Input #{i} requires gradient and is not a double precision floating point. "
                "This check will likely fail if all the inputs are not of double precision "
                "floating point. ",
                stacklevel=2,
            )
    numerical = numerical_jacobians(fn, inputs, eps)
    analytical = analytical_jacobians(fn, inputs)
    for row, i in enumerate(diff):
        for j, (num, ana) in enumerate(zip(numerical[row], analytical[row], strict=True)):
            if not np.allclose(ana, num, rtol=rtol, atol=atol):
                if not raise_exception:
                    return False
                raise GradcheckError(
                    f"Jacobian mismatch for output {j} with respect to input {i},\n"
                    f"numerical:{_show(num)}\nanalytical:{_show(ana)}\n"
                    f"max abs error {np.abs(ana - num).max():.3e}\n"
                )
    return True


def _show(jacobian: np.ndarray) -> str:
    from engine.tensor import Tensor

    return repr(Tensor._make(jacobian))


def gradgradcheck(
    fn: Callable[..., Any],
    inputs: Any,
    grad_outputs: Sequence[Any] | None = None,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    raise_exception: bool = True,
) -> bool:
    """``gradcheck`` of the backward pass itself: checks second derivatives of ``fn``."""
    from engine.autograd import grad
    from engine.random import generator
    from engine.tensor import Tensor

    inputs = _as_tuple(inputs)
    diff = _differentiable(inputs)
    if grad_outputs is None:
        outs = _float_outputs(fn, inputs)
        grad_outputs = [
            Tensor._make(generator().standard_normal(o.shape)).requires_grad_() for o in outs
        ]
    grad_outputs = tuple(grad_outputs)
    n = len(inputs)

    def first_derivatives(*args: Any) -> tuple:
        outs = _float_outputs(fn, args[:n])
        grads = grad(outs, [args[i] for i in diff], args[n:], create_graph=True, allow_unused=True)
        return tuple(g for g in grads if g is not None)

    return gradcheck(first_derivatives, inputs + grad_outputs, eps, atol, rtol, raise_exception)
