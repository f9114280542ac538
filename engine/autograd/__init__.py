"""Reverse-mode automatic differentiation, as ``torch.autograd``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine.autograd.backward import run_backward
from engine.autograd.function import Function, FunctionCtx, Op
from engine.autograd.grad_mode import enable_grad, is_grad_enabled, no_grad, set_grad_enabled
from engine.autograd.gradcheck import GradcheckError, gradcheck, gradgradcheck

if TYPE_CHECKING:
    from engine.tensor import Tensor

__all__ = [
    "Function",
    "FunctionCtx",
    "GradcheckError",
    "Op",
    "backward",
    "enable_grad",
    "grad",
    "gradcheck",
    "gradgradcheck",
    "is_grad_enabled",
    "no_grad",
    "set_grad_enabled",
]


def _as_tuple(x: Tensor | Sequence[Tensor] | None) -> tuple:
    from engine.tensor import Tensor

    if x is None:
        return ()
    return (x,) if isinstance(x, Tensor) else tuple(x)


def backward(
    tensors: Tensor | Sequence[Tensor],
    grad_tensors: Tensor | Sequence[Tensor | None] | None = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> None:
    """Accumulate the gradients of ``tensors`` into the ``.grad`` of the leaves of their graph."""
    outputs = _as_tuple(tensors)
    grads = _as_tuple(grad_tensors) or (None,) * len(outputs)
    retain = create_graph if retain_graph is None else retain_graph
    run_backward(outputs, grads, retain, create_graph)


def grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    grad_outputs: Tensor | Sequence[Tensor | None] | None = None,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[Tensor | None, ...]:
    """The gradients of ``outputs`` with respect to ``inputs``; no ``.grad`` is touched."""
    outs, ins = _as_tuple(outputs), _as_tuple(inputs)
    grads = _as_tuple(grad_outputs) or (None,) * len(outs)
    for i, x in enumerate(ins):
        if not x.requires_grad:
            raise RuntimeError(
                f"One of the differentiated Tensors does not require grad (input {i})"
            )
    retain = create_graph if retain_graph is None else retain_graph
    result = run_backward(outs, grads, retain, create_graph, inputs=ins)
    unused = [i for i, g in enumerate(result) if g is None]
    if unused and not allow_unused:
        raise RuntimeError(
            f"The differentiated Tensor at index {unused[0]} appears to not have been used in the "
            "graph. Set allow_unused=True if this is the desired behavior."
        )
    return tuple(result)
