"""Gradient clipping, as ``torch.nn.utils``: by total norm and by value, in place."""

from __future__ import annotations

import types
import warnings
from collections.abc import Iterable

import numpy as np

from engine.tensor import Tensor

TensorOrTensors = Tensor | Iterable[Tensor]

__all__ = ["clip_grad_norm_", "clip_grad_value_", "clip_grads_with_norm_", "get_total_norm"]


def get_total_norm(
    tensors: TensorOrTensors,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    """The ``norm_type``-norm of all ``tensors`` together, as if flattened into one vector.

    ``foreach`` is accepted for torch's signature; every path here is the same loop.
    """
    tensors = [tensors] if isinstance(tensors, Tensor) else list(tensors)
    norm_type = float(norm_type)
    if not tensors:
        return Tensor._make(np.zeros((), np.float32))
    norms = np.array([_vector_norm(t._data, norm_type) for t in tensors])
    total = _vector_norm(norms, norm_type)
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(
            f"The total norm of order {norm_type} for gradients from `parameters` is non-finite, "
            "so it cannot be clipped. To disable this error and scale the gradients by the "
            "non-finite norm anyway, set `error_if_nonfinite=False`"
        )
    return Tensor._make(np.asarray(total))


def clip_grads_with_norm_(
    parameters: TensorOrTensors,
    max_norm: float,
    total_norm: Tensor,
    foreach: bool | None = None,
) -> None:
    """Scale the gradients in place by ``min(max_norm / (total_norm + 1e-6), 1)``."""
    parameters = [parameters] if isinstance(parameters, Tensor) else parameters
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    norm = total_norm._data
    # max_norm / (norm + eps) in torch's arithmetic: a scalar divided by a tensor is the
    # tensor's reciprocal times the scalar.
    coef = np.minimum(np.reciprocal(norm + 1e-6) * float(max_norm), 1.0)
    for grad in grads:
        np.multiply(grad._data, coef, out=grad._data)
        grad._vc[0] += 1


def clip_grad_norm_(
    parameters: TensorOrTensors,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    """Scale the gradients of ``parameters`` in place so that their total norm is at most
    ``max_norm``; returns the total norm before clipping."""
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    else:
        is_generator = isinstance(parameters, types.GeneratorType)
        parameters = list(parameters)
        if is_generator and not parameters:
            warnings.warn(
                "`parameters` is an empty generator, no gradient clipping will occur.",
                stacklevel=2,
            )
    grads = [p.grad for p in parameters if p.grad is not None]
    total_norm = get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    clip_grads_with_norm_(parameters, max_norm, total_norm, foreach)
    return total_norm


def clip_grad_value_(
    parameters: TensorOrTensors, clip_value: float, foreach: bool | None = None
) -> None:
    """Clamp the gradients of ``parameters`` in place to ``[-clip_value, clip_value]``."""
    parameters = [parameters] if isinstance(parameters, Tensor) else parameters
    clip_value = float(clip_value)
    for p in parameters:
        if p.grad is not None:
            np.clip(p.grad._data, -clip_value, clip_value, out=p.grad._data)
            p.grad._vc[0] += 1


def _vector_norm(array: np.ndarray, ord: float) -> np.floating:
    """``torch.linalg.vector_norm`` of an array, in its dtype."""
    flat = array.ravel(order="K")
    if ord == 2.0:
        return np.sqrt(np.dot(flat, flat))
    magnitude = np.abs(flat)
    if ord == np.inf:
        return magnitude.max(initial=0)
    if ord == -np.inf:
        return magnitude.min(initial=np.inf)
    if ord == 0.0:
        return flat.dtype.type(np.count_nonzero(flat))
    if ord == 1.0:
        return magnitude.sum()
    return np.sum(magnitude**ord) ** (1 / ord)
