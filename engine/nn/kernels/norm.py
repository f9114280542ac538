"""Batch normalisation as one fused op: per-channel statistics, affine map and backward.

All the work happens on a channels-last ``(N', L, C)`` view of the input (free for NHWC memory,
for NCHW-contiguous memory and for ``(N, C)`` matrices), walked in blocks of rows that stay in
cache. Channel sums are BLAS products with a ones vector; squared deviations are summed by
``einsum`` around the exact mean (two passes, no cancellation); partial sums are added in
float64. Backward is ``dx = a*dy + b*x + c`` per channel, without materialising x-hat.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engine.autograd.function import Op
from engine.autograd.grad_mode import no_grad
from engine.tensor import Tensor

BLOCK_ELEMENTS = 1 << 16  # elements per block of rows: 256 KiB of float32, well inside L2


def _dense(x: np.ndarray) -> np.ndarray:
    """``x`` if its ``(N', L, C)`` view is free (channels-last or channel-first), else a copy."""
    if np.moveaxis(x, 1, -1).flags.c_contiguous or (x.flags.c_contiguous and x.ndim > 2):
        return x
    return np.ascontiguousarray(x)


def _rows(x: np.ndarray) -> np.ndarray:
    """The ``(N', L, C)`` channels-last view of a ``_dense`` array ``x`` of shape (N, C, *)."""
    c = x.shape[1]
    last = np.moveaxis(x, 1, -1)
    if last.flags.c_contiguous:
        return last.reshape(1, -1, c)
    return last.reshape(x.shape[0], -1, c)


def _like(x: np.ndarray, other: np.ndarray) -> np.ndarray:
    """``other`` in the memory layout of ``x`` (copied only when the layouts differ)."""
    if other.strides == x.strides:
        return other
    out = np.empty_like(x)
    out[...] = other
    return out


def _blocks(*views: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """The same blocks of rows, ``(rows, C)`` matrices, of several ``(N', L, C)`` views."""
    n, length, c = views[0].shape
    step = max(1, BLOCK_ELEMENTS // c)
    for i in range(n):
        for start in range(0, length, step):
            yield tuple(v[i, start : start + step] for v in views)


def _channel_sum(rows: np.ndarray) -> np.ndarray:
    """Per-channel sum of a ``(N', L, C)`` view, in float64."""
    total = np.zeros(rows.shape[2])
    ones = np.ones(min(rows.shape[1], max(1, BLOCK_ELEMENTS // rows.shape[2])), rows.dtype)
    for (block,) in _blocks(rows):
        total += ones[: len(block)] @ block
    return total


def _centered_dot(rows: np.ndarray, mean: np.ndarray, other: np.ndarray | None) -> np.ndarray:
    """Per-channel ``sum(other * (x - mean))`` in float64; ``other=None`` means ``x - mean``."""
    total = np.zeros(rows.shape[2])
    mean = mean.astype(rows.dtype)
    views = (rows,) if other is None else (rows, other)
    for blocks in _blocks(*views):
        centered = np.subtract(blocks[0], mean, out=np.empty_like(blocks[0]))
        total += np.einsum("mc,mc->c", blocks[-1] if other is not None else centered, centered)
    return total


def _combine(out: np.ndarray, terms: list[tuple[np.ndarray, np.ndarray]], const=None) -> None:
    """``out = sum(array * coef for array, coef in terms) + const``, per channel, block by block."""
    cast = [(array, coef.astype(out.dtype)) for array, coef in terms]
    const = None if const is None else const.astype(out.dtype)
    for blocks in _blocks(out, *(array for array, _ in cast)):
        target, first = blocks[0], blocks[1]
        np.multiply(first, cast[0][1], out=target)
        for block, (_, coef) in zip(blocks[2:], cast[1:], strict=True):
            target += block * coef
        if const is not None:
            target += const


class BatchNorm(Op):
    """``batch_norm`` of ``(input, weight, bias, running_mean, running_var)``.

    In training, normalises with the batch statistics and leaves them in ``batch_mean`` and
    ``batch_var`` (biased) for the caller to update the running buffers; in eval, uses the
    running statistics, which makes it an affine map per channel.
    """

    differentiable = False
    backward_name = "NativeBatchNormBackward0"

    def __init__(self, training: bool, eps: float) -> None:
        self.training, self.eps = training, eps

    def forward(self, x, weight, bias, running_mean, running_var) -> np.ndarray:  # noqa: ANN001
        x = _dense(x)
        rows = _rows(x)
        if self.training:
            self.count = rows.shape[0] * rows.shape[1]
            mean = _channel_sum(rows) / self.count
            var = _centered_dot(rows, mean, None) / self.count
            self.batch_mean, self.batch_var = mean, var
        else:
            mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        invstd = 1.0 / np.sqrt(var + self.eps)
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        out = np.empty_like(x)
        _combine(_rows(out), [(rows, scale)], shift)
        if self.requires_grad:
            need_x = self.training or self.needs_input_grad[1]
            self.kept = [i for i, keep in ((0, need_x), (1, weight is not None)) if keep]
            self.save_inputs(*self.kept)
            self.save_arrays(mean, invstd)
        return out

    def backward(self, grad: np.ndarray) -> tuple:
        saved = dict(zip(self.kept, self.saved_tensors, strict=True))
        mean, invstd = self.saved_arrays
        scale = invstd * saved[1]._data if 1 in saved else invstd
        need_x, need_w, need_b = self.needs_input_grad[:3]
        if 0 in saved:
            x = _dense(saved[0]._data)
            grad = _like(x, grad)
            rows = _rows(x)
        else:  # eval mode with a frozen weight: dx = dy * scale needs no x
            grad = _dense(grad)
        grad_rows = _rows(grad)
        sum_dy = _channel_sum(grad_rows) if need_b or self.training else None
        dot = _centered_dot(rows, mean, grad_rows) if need_w or self.training else None
        dx = None
        if need_x:
            dx = np.empty_like(grad)
            terms, const = [(grad_rows, scale)], None
            if self.training:
                coef_x = -scale * invstd * invstd * dot / self.count
                terms.append((rows, coef_x))
                const = -scale * sum_dy / self.count - coef_x * mean
            _combine(_rows(dx), terms, const)
        dw = (dot * invstd).astype(grad.dtype) if need_w else None
        db = sum_dy.astype(grad.dtype) if need_b else None
        return dx, dw, db, None, None


def _check_sizes(input: Tensor, **vectors: Tensor | None) -> None:
    channels = input.shape[1]
    for name, vector in vectors.items():
        if vector is not None and vector.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {vector.numel()}")


def _update_running(running: Tensor, batch: np.ndarray, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * batch``, in place."""
    with no_grad():
        updated = (1.0 - momentum) * running._data + momentum * batch
        running.copy_(Tensor._make(updated.astype(running._data.dtype)))


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalisation over the channel axis 1 of an ``(N, C, *)`` input, as torch's.

    In training, normalises with the batch's biased variance and updates the running buffers
    in place with the unbiased one; in eval, normalises with the running statistics.
    """
    if training:
        size = input.shape
        if int(np.prod(size)) // size[1] == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got input size "
                f"torch.Size({list(size)})"
            )
    elif running_mean is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    elif running_var is None:
        raise RuntimeError("running_var must be defined in evaluation mode")
    _check_sizes(
        input, weight=weight, bias=bias, running_mean=running_mean, running_var=running_var
    )
    op = BatchNorm(training, eps)
    out = op(input, weight, bias, running_mean, running_var)
    if training and running_mean is not None:
        _update_running(running_mean, op.batch_mean, momentum)
    if training and running_var is not None:
        count = op.count
        _update_running(running_var, op.batch_var * (count / (count - 1)), momentum)
    return out
