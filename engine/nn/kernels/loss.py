"""Losses: cross-entropy (fused log-softmax + NLL), NLL, mean squared and absolute error.

Cross-entropy and NLL share one formulation. Every row ``i`` of the ``(M, C)`` scores gets a
coefficient row ``Q_i`` and a loss ``-sum_c Q_ic * logp_ic``; the mean reduction divides the
sum by ``denominator``. Class-index targets give ``Q_i = w * ((1 - s) * onehot(t_i) + s / C)``
(zero for ignored rows) and the denominator ``sum of w[t_i]`` over the rows kept; probability
targets give ``Q_i = w * ((1 - s) * target_i + s / C)`` and the row count. This reproduces
torch's weight, ignore_index and label_smoothing rules, and the gradient of the logits is
``r_i * (softmax_i * sum(Q_i) - Q_i)`` with ``r_i`` the reduction's scale of row ``i``.
"""

from __future__ import annotations

import warnings

import numpy as np

from engine._dtype import scalar_type_name
from engine.autograd.function import Op
from engine.ops.elementwise import broadcast_to, sum_to
from engine.tensor import Tensor

REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")


def _reduce(rows: np.ndarray, reduction: str, denominator: float) -> np.ndarray:
    if reduction == "none":
        return rows
    total = rows.sum()
    if reduction == "sum":
        return total
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(total / rows.dtype.type(denominator))


def _row_scale(grad: np.ndarray, reduction: str, denominator: float) -> np.ndarray:
    """The gradient of the reduced loss with respect to each row's loss, as a column."""
    if reduction == "none":
        return grad.reshape(-1, 1)
    if reduction == "mean":
        grad = grad / grad.dtype.type(denominator) if denominator else np.zeros_like(grad)
    return grad.reshape(1, 1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return shifted


class SoftmaxCrossEntropy(Op):
    """``(scores (M, C), target distribution (M, C), class weight (C,) or None)`` -> loss.

    The target distribution and class weight may require grad (probability targets).
    """

    differentiable = False

    def __init__(self, reduction: str, denominator: float, backward_name: str) -> None:
        self.reduction, self.denominator = reduction, denominator
        self.backward_name = backward_name

    def forward(self, x: np.ndarray, dist: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
        logp = _log_softmax(x)
        coef = dist if weight is None else dist * weight
        self.save_arrays(logp, coef, dist, weight)
        return _reduce(-np.einsum("mc,mc->m", coef, logp), self.reduction, self.denominator)

    def backward(self, grad: np.ndarray) -> tuple:
        logp, coef, dist, weight = self.saved_arrays
        scale = _row_scale(grad, self.reduction, self.denominator).astype(logp.dtype)
        need_x, need_dist, need_weight = self.needs_input_grad
        dx = ddist = dweight = None
        if need_x:
            dx = np.exp(logp)
            dx *= coef.sum(axis=1, keepdims=True)
            dx -= coef
            dx *= scale
        if need_dist:
            ddist = -scale * logp if weight is None else -scale * logp * weight
        if need_weight:
            dweight = -(scale * dist * logp).sum(axis=0)
        return dx, ddist, dweight


class NllLoss(Op):
    """``(log-probabilities (M, C))`` -> loss, with the coefficient rows ``Q`` fixed."""

    def __init__(self, coef: np.ndarray, reduction: str, denominator: float) -> None:
        self.coef, self.reduction, self.denominator = coef, reduction, denominator

    def forward(self, logp: np.ndarray) -> np.ndarray:
        coef = self.coef.astype(logp.dtype, copy=False)
        return _reduce(-np.einsum("mc,mc->m", coef, logp), self.reduction, self.denominator)

    def backward(self, grad: Tensor) -> Tensor:
        if self.reduction == "mean":
            grad = grad / float(self.denominator) if self.denominator else grad * 0.0
        column = grad.reshape(-1, 1)
        return column * Tensor._make(-self.coef.astype(grad._data.dtype, copy=False))


def _rows_and_classes(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    """Scores as ``(M, C)`` rows and class-index targets as ``(M,)``, with the per-row shape.

    Accepts ``(C,)`` with a 0-d target, ``(N, C)`` with ``(N,)``, and ``(N, C, d1, ...)`` with
    ``(N, d1, ...)``, checking shapes and dtype with torch's messages.
    """
    if (target.ndim > 1 and input.ndim <= 2) or target.ndim > max(input.ndim - 1, 1):
        raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
    if input.ndim >= 2 and target.ndim >= 1 and input.shape[0] != target.shape[0]:
        raise ValueError(
            f"Expected input batch_size ({input.shape[0]}) to match target batch_size "
            f"({target.shape[0]})."
        )
    if input.ndim > 2 and target.shape != input.shape[:1] + input.shape[2:]:
        expected = list(input.shape[:1] + input.shape[2:])
        raise RuntimeError(f"Expected target size {expected}, got {list(target.shape)}")
    if target._data.dtype not in (np.int64, np.uint8):
        raise RuntimeError(
            "expected target dtype to be Long or Byte, but got "
            + scalar_type_name(target._data.dtype)
        )
    rows, shape = _as_rows(input)
    return rows, target.reshape(-1), shape


def _as_rows(input: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``(M, C)`` rows of scores with the class dim last, and the shape of one loss per row."""
    if input.ndim == 1:
        return input.reshape(1, -1), ()
    if input.ndim == 2:
        return input, input.shape[:1]
    moved = input.permute(0, *range(2, input.ndim), 1)
    return moved.reshape(-1, input.shape[1]), moved.shape[:-1]


def _unflatten(loss: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Per-row losses (reduction ``"none"``) back in the shape of the input without classes."""
    return loss if loss.ndim == 0 or loss.shape == shape else loss.reshape(shape)


def _class_weight(weight: Tensor | None, classes: int) -> np.ndarray | None:
    if weight is None:
        return None
    if weight.shape != (classes,):
        raise RuntimeError(
            f"weight tensor should be defined either for all {classes} classes or no classes but "
            f"got weight tensor of shape: {list(weight.shape)}"
        )
    return weight._data


def _class_coefficients(
    target: np.ndarray,
    classes: int,
    weight: np.ndarray | None,
    ignore_index: int,
    smoothing: float,
    dtype: np.dtype,
) -> tuple[np.ndarray, float]:
    """The rows ``Q`` and mean denominator for class-index targets (see the module docstring)."""
    kept = target != ignore_index
    bad = kept & ((target < 0) | (target >= classes))
    if bad.any():
        raise IndexError(f"Target {target[bad][0]} is out of bounds.")
    picked = np.where(kept, target, 0)
    dist = np.zeros((len(target), classes), dtype)
    dist[np.arange(len(target)), picked] = 1.0 - smoothing
    dist += dtype.type(smoothing / classes)
    dist *= kept[:, None]
    row_weight = kept.astype(np.float64) if weight is None else np.where(kept, weight[picked], 0)
    coef = dist if weight is None else dist * weight
    return coef, float(row_weight.sum(dtype=np.float64))


def _check_weight_frozen(weight: Tensor | None) -> None:
    if weight is not None and weight.requires_grad:
        raise RuntimeError(
            "The function 'nll_loss_forward' is not differentiable with respect to argument "
            "'weight'. This input cannot have requires_grad True."
        )


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of class-index targets given log-probabilities, as torch's."""
    _check_reduction(reduction)
    _check_weight_frozen(weight)
    rows, classes, shape = _rows_and_classes(input, target)
    n_classes = rows.shape[1]
    coef, denominator = _class_coefficients(
        classes._data,
        n_classes,
        _class_weight(weight, n_classes),
        ignore_index,
        0.0,
        rows._data.dtype,
    )
    loss = NllLoss(coef, reduction, denominator)(rows)
    return _unflatten(loss, shape)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy of class-index or class-probability targets with raw scores, as torch's.

    The class dim is 1 (or 0 for an unbatched ``(C,)`` input). Probability targets have the
    input's shape and a floating dtype.
    """
    _check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing:g}")
    if target.is_floating_point() and target.shape == input.shape:
        return _cross_entropy_probabilities(
            input, target, weight, ignore_index, reduction, label_smoothing
        )
    _check_weight_frozen(weight)
    rows, classes, shape = _rows_and_classes(input, target)
    n_classes = rows.shape[1]
    coef, denominator = _class_coefficients(
        classes._data,
        n_classes,
        _class_weight(weight, n_classes),
        ignore_index,
        label_smoothing,
        rows._data.dtype,
    )
    name = "AddBackward0" if label_smoothing > 0 else "NllLossBackward0"
    loss = SoftmaxCrossEntropy(reduction, denominator, name)(rows, coef, None)
    return _unflatten(loss, shape)


def _cross_entropy_probabilities(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    smoothing: float,
) -> Tensor:
    if ignore_index >= 0:
        raise RuntimeError("ignore_index is not supported for floating point target")
    rows, shape = _as_rows(input)
    dist, _ = _as_rows(target)
    _class_weight(weight, rows.shape[1])
    if smoothing > 0:
        dist = dist * (1.0 - smoothing) + smoothing / rows.shape[1]
    name = "DivBackward1" if reduction == "mean" else "NegBackward0"
    loss = SoftmaxCrossEntropy(reduction, rows.shape[0], name)(rows, dist, weight)
    return _unflatten(loss, shape)


class MseLoss(Op):
    """Mean squared error of two tensors broadcast together; differentiable to any order."""

    def __init__(self, reduction: str) -> None:
        self.reduction = reduction

    def forward(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        self.save_inputs(0, 1)
        diff = x - target
        self.shapes, self.size = (x.shape, np.shape(target)), diff.size
        return _reduce(diff * diff, self.reduction, diff.size)

    def backward(self, grad: Tensor) -> tuple:
        x, target = self.saved_tensors
        diff = x - target
        if self.reduction == "mean":
            grad = grad / float(self.size)
        slope = broadcast_to(grad, diff.shape) * diff * 2.0
        need_x, need_target = self.needs_input_grad
        return (
            sum_to(slope, self.shapes[0]) if need_x else None,
            sum_to(-slope, self.shapes[1]) if need_target else None,
        )


def _warn_broadcast(input: Tensor, target: Tensor) -> None:
    if target.shape != input.shape:
        warnings.warn(
            f"Using a target size (torch.Size({list(target.shape)})) that is different to the "
            f"input size (torch.Size({list(input.shape)})). This will likely lead to incorrect "
            "results due to broadcasting. Please ensure they have the same size.",
            stacklevel=3,
        )


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Squared error ``(input - target)**2``, averaged (``"mean"``), summed or kept per element."""
    _check_reduction(reduction)
    _warn_broadcast(input, target)
    return MseLoss(reduction)(input, target)


def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Absolute error ``|input - target|``, averaged (``"mean"``), summed or kept per element."""
    _check_reduction(reduction)
    _warn_broadcast(input, target)
    error = (input - target).abs()
    return error if reduction == "none" else error.sum() if reduction == "sum" else error.mean()
