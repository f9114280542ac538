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
from typing import NamedTuple

import numpy as np

from engine._dtype import scalar_type_name
from engine.autograd.function import Op
from engine.ops.elementwise import broadcast_to, sum_to
from engine.tensor import Tensor

REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")


class Reduction(NamedTuple):
    """How per-row losses become the output: kept in ``shape`` (``"none"``), summed, or summed
    and divided by ``denominator`` (``"mean"``)."""

    kind: str
    denominator: float
    shape: tuple[int, ...]

    def apply(self, rows: np.ndarray) -> np.ndarray:
        if self.kind == "none":
            return rows.reshape(self.shape)
        total = rows.sum()
        if self.kind == "sum":
            return total
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(total / rows.dtype.type(self.denominator))

    def row_scale(self, grad: np.ndarray) -> np.ndarray:
        """The gradient with respect to each row's loss, as a column (0 for a 0 denominator)."""
        if self.kind == "mean":
            grad = grad / grad.dtype.type(self.denominator) if self.denominator else grad * 0
        return grad.reshape(-1, 1)


def _weighted_nll(coef: np.ndarray, logp: np.ndarray, reduction: Reduction) -> np.ndarray:
    """``-sum_c Q_ic * logp_ic`` per row, reduced."""
    return reduction.apply(-np.einsum("mc,mc->m", coef, logp))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return shifted


class SoftmaxCrossEntropy(Op):
    """``(scores (M, C), target distribution (M, C), class weight (C,) or None)`` -> loss.

    The target distribution and class weight may require grad (probability targets).
    """

    differentiable = False

    def __init__(self, reduction: Reduction, backward_name: str) -> None:
        self.reduction, self.backward_name = reduction, backward_name

    def forward(self, x: np.ndarray, dist: np.ndarray, weight: np.ndarray | None) -> np.ndarray:
        logp = _log_softmax(x)
        coef = dist if weight is None else dist * weight
        self.save_arrays(logp, coef, dist, weight)
        return _weighted_nll(coef, logp, self.reduction)

    def backward(self, grad: np.ndarray) -> tuple:
        logp, coef, dist, weight = self.saved_arrays
        scale = self.reduction.row_scale(grad).astype(logp.dtype)
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
    """``(log-probabilities (M, C))`` -> loss, with the coefficient rows ``Q`` fixed.

    Linear in its input, so its backward is written with tensor ops: differentiable twice.
    """

    def __init__(self, coef: np.ndarray, reduction: Reduction) -> None:
        self.coef, self.reduction = coef, reduction

    def forward(self, logp: np.ndarray) -> np.ndarray:
        return _weighted_nll(self.coef.astype(logp.dtype, copy=False), logp, self.reduction)

    def backward(self, grad: Tensor) -> Tensor:
        if self.reduction.kind == "mean":
            denominator = self.reduction.denominator
            grad = grad / float(denominator) if denominator else grad * 0.0
        coef = Tensor._make(-self.coef.astype(grad._data.dtype, copy=False))
        return grad.reshape(-1, 1) * coef


def _as_rows(input: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``(M, C)`` rows of scores with the class dim last, and the shape of one loss per row."""
    if input.ndim == 1:
        return input.reshape(1, -1), ()
    if input.ndim == 2:
        return input, input.shape[:1]
    moved = input.permute(0, *range(2, input.ndim), 1)
    return moved.reshape(-1, input.shape[1]), moved.shape[:-1]


def _check_class_targets(input: Tensor, target: Tensor) -> None:
    """Shapes and dtype of class-index targets, with torch's messages.

    Accepted: ``(C,)`` scores with a 0-d target, ``(N, C)`` with ``(N,)``, and
    ``(N, C, d1, ...)`` with ``(N, d1, ...)``; int64 or uint8.
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


def _class_weight(weight: Tensor | None, classes: int) -> np.ndarray | None:
    if weight is None:
        return None
    if weight.shape != (classes,):
        raise RuntimeError(
            f"weight tensor should be defined either for all {classes} classes or no classes but "
            f"got weight tensor of shape: {list(weight.shape)}"
        )
    return weight._data


def _class_index_rows(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    smoothing: float,
) -> tuple[Tensor, np.ndarray, Reduction]:
    """Scores as ``(M, C)`` rows, their coefficient rows ``Q`` and the reduction (see the module
    docstring), for class-index targets."""
    _check_reduction(reduction)
    if weight is not None and weight.requires_grad:
        raise RuntimeError(
            "The function 'nll_loss_forward' is not differentiable with respect to argument "
            "'weight'. This input cannot have requires_grad True."
        )
    _check_class_targets(input, target)
    rows, shape = _as_rows(input)
    classes = rows.shape[1]
    weight_data = _class_weight(weight, classes)
    labels = target._data.reshape(-1).astype(np.int64)
    kept = labels != ignore_index
    bad = kept & ((labels < 0) | (labels >= classes))
    if bad.any():
        raise IndexError(f"Target {labels[bad][0]} is out of bounds.")
    picked = np.where(kept, labels, 0)
    dtype = rows._data.dtype
    coef = np.full((len(labels), classes), smoothing / classes, dtype)
    coef[np.arange(len(labels)), picked] += dtype.type(1.0 - smoothing)
    coef *= kept[:, None]
    if weight_data is None:
        denominator = float(kept.sum())
    else:
        coef *= weight_data
        denominator = float(np.where(kept, weight_data[picked], 0).sum(dtype=np.float64))
    return rows, coef, Reduction(reduction, denominator, shape)


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of class-index targets given log-probabilities, as torch's."""
    rows, coef, how = _class_index_rows(input, target, weight, ignore_index, reduction, 0.0)
    return NllLoss(coef, how)(rows)


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
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing:g}")
    if target.is_floating_point() and target.shape == input.shape:
        return _cross_entropy_probabilities(
            input, target, weight, ignore_index, reduction, label_smoothing
        )
    rows, coef, how = _class_index_rows(
        input, target, weight, ignore_index, reduction, label_smoothing
    )
    name = "AddBackward0" if label_smoothing > 0 else "NllLossBackward0"
    return SoftmaxCrossEntropy(how, name)(rows, coef, None)


def _cross_entropy_probabilities(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    smoothing: float,
) -> Tensor:
    _check_reduction(reduction)
    if ignore_index >= 0:
        raise RuntimeError("ignore_index is not supported for floating point target")
    rows, shape = _as_rows(input)
    dist, _ = _as_rows(target)
    _class_weight(weight, rows.shape[1])
    if smoothing > 0:
        dist = dist * (1.0 - smoothing) + smoothing / rows.shape[1]
    name = "DivBackward1" if reduction == "mean" else "NegBackward0"
    how = Reduction(reduction, rows.shape[0], shape)
    return SoftmaxCrossEntropy(how, name)(rows, dist, weight)


class MseLoss(Op):
    """Mean squared error of two tensors broadcast together; differentiable to any order."""

    def __init__(self, reduction: str) -> None:
        self.kind = reduction

    def forward(self, x: np.ndarray, target: np.ndarray) -> np.ndarray:
        self.save_inputs(0, 1)
        diff = x - target
        self.shapes, self.size = (x.shape, np.shape(target)), diff.size
        return Reduction(self.kind, diff.size, diff.shape).apply(diff * diff)

    def backward(self, grad: Tensor) -> tuple:
        x, target = self.saved_tensors
        diff = x - target
        if self.kind == "mean":
            grad = grad / float(self.size)
        slope = broadcast_to(grad, diff.shape) * diff * 2.0
        need_x, need_target = self.needs_input_grad
        return (
            sum_to(slope, self.shapes[0]) if need_x else None,
            sum_to(-slope, self.shapes[1]) if need_target else None,
        )


def _check_pointwise(input: Tensor, target: Tensor, reduction: str) -> None:
    """A valid reduction; torch's warning when the target only broadcasts to the input."""
    _check_reduction(reduction)
    if target.shape != input.shape:
        warnings.warn(
            f"Using a target size (torch.Size({list(target.shape)})) that is different to the "
            f"input size (torch.Size({list(input.shape)})). This will likely lead to incorrect "
            "results due to broadcasting. Please ensure they have the same size.",
            stacklevel=3,
        )


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Squared error ``(input - target)**2``, averaged (``"mean"``), summed or kept per element."""
    _check_pointwise(input, target, reduction)
    return MseLoss(reduction)(input, target)


def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Absolute error ``|input - target|``, averaged (``"mean"``), summed or kept per element."""
    _check_pointwise(input, target, reduction)
    error = (input - target).abs()
    return error if reduction == "none" else error.sum() if reduction == "sum" else error.mean()
