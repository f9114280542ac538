"""Batch normalisation as one fused op: per-channel statistics, affine map and backward.

The op can also add a residual and apply ReLU in the same pass (ResNet's ``relu(bn(x) + x0)``),
with backward masking the gradient on its way in.

All the work happens on a channels-last ``(N', L, C)`` view of the input (free for NHWC memory,
for NCHW-contiguous memory and for ``(N, C)`` matrices), walked in blocks of rows that stay in
cache. Per-channel constants are repeated over a small tile of rows, and a block is worked
through as a stack of such tiles (NumPy is twice as fast on two dense operands as on a
broadcast vector, and a tile of a few KB leaves the cache to the data). Squared deviations are
summed by ``einsum``, and channel sums in the same pass by a BLAS product with a ones vector,
or, when the blocks are spread over the threads, by ``einsum`` too (NumPy holds the GIL
through a matrix-vector product, so the threads' products would take turns); partial sums are
added in float64. Backward is ``dx = a*dy + b*x + c`` per channel, without materialising
x-hat. For data whose mean is large next to its spread, sums and affine maps subtract (an
estimate of) the mean first so as not to lose digits; elsewhere they save that pass.

Sync BatchNorm (torch's ``SyncBatchNorm``, for a batch split over processes): inside
``synced_batch_stats(sync)``, training-mode batch norm hands its per-channel moments to
``sync.moments`` and the sums of its backward to ``sync.sums``, which combine them over the
shards; the engine itself knows nothing of processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import numpy as np

from engine.autograd.function import Op
from engine.autograd.grad_mode import no_grad
from engine.parallel import parallel
from engine.tensor import Tensor

BLOCK_ELEMENTS = 1 << 18  # elements per block of rows: 1 MiB of float32, the fastest measured
MIN_BLOCK_ELEMENTS = 1 << 16  # ... down to this for small arrays
SPLIT_ELEMENTS = 1 << 19  # arrays from this size have their blocks spread over the threads:
# below ``parallel.MIN_ELEMENTS``, as batch norm's data mostly comes from memory (ResNet18's
# 16x256x14x14 layers, forward and backward: 7.8 -> 6.6 ms; 32x64x16x16: 5.9 -> 5.4 ms)
TILE_ELEMENTS = 1 << 12  # per-channel constants are repeated over this many elements; over a
# whole 1 MiB block (three such blocks beside the data overflow a 2 MiB L2), the affine maps of
# ResNet18's layers took 3-22% longer with data fresh from memory, as in a train step
FAR_FROM_ZERO = 8.0  # |mean| / std beyond which affine maps subtract the mean before scaling
NEAR_ZERO = 1.0  # |mean| / std up to which sums over x skip subtracting the mean first
SAMPLE_ELEMENTS = 1 << 14  # the first rows that tell whether the mean is near zero
R = TypeVar("R")


class StatsSync(Protocol):
    """Combines batch norm's per-channel numbers over the shards of one batch."""

    def moments(
        self, count: int, mean: np.ndarray, var: np.ndarray
    ) -> tuple[int, np.ndarray, np.ndarray]:
        """The whole batch's (count, mean, biased variance) from this shard's, in float64."""

    def sums(self, *sums: np.ndarray) -> tuple[np.ndarray, ...]:
        """Each per-channel sum over the whole batch, from this shard's."""


_sync: list[StatsSync] = []


@contextmanager
def synced_batch_stats(sync: StatsSync) -> Iterator[None]:
    """Training-mode batch norm inside normalises with the statistics ``sync`` combines (and
    its backward, wherever it runs, sums through ``sync`` too)."""
    _sync.append(sync)
    try:
        yield
    finally:
        _sync.pop()


def _channels_last(x: np.ndarray) -> np.ndarray:
    """The (N, *, C) view of an (N, C, *) array (``np.moveaxis(x, 1, -1)``, without its cost)."""
    return x.transpose(0, *range(2, x.ndim), 1)


def _dense(x: np.ndarray) -> np.ndarray:
    """``x`` if its ``(N', L, C)`` view is free (channels-last or channel-first), else a copy."""
    if _channels_last(x).flags.c_contiguous or (x.flags.c_contiguous and x.ndim > 2):
        return x
    return np.ascontiguousarray(x)


def _rows(x: np.ndarray) -> np.ndarray:
    """The ``(N', L, C)`` channels-last view of a ``_dense`` array ``x`` of shape (N, C, *)."""
    c = x.shape[1]
    last = _channels_last(x)
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


def _block_rows(rows: np.ndarray) -> int:
    """Rows per block of an ``(N', L, C)`` view: ``BLOCK_ELEMENTS``, or fewer for a small
    array, which then still has a few blocks to spread over the threads."""
    size = min(BLOCK_ELEMENTS, max(MIN_BLOCK_ELEMENTS, rows.size // 4))
    return min(rows.shape[1], max(1, size // rows.shape[2]))


def _tiled(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Per-channel ``values`` repeated over a tile of ``TILE_ELEMENTS // C`` rows (at least one)
    in ``dtype``, for ``_tile_pieces``."""
    c = len(values)
    return np.broadcast_to(values.astype(dtype), (max(1, TILE_ELEMENTS // c), c)).copy()


def _tile_pieces(tile_rows: int, *blocks: np.ndarray) -> Iterator[tuple[int, list[np.ndarray]]]:
    """The same ``(m, C)`` blocks in pieces that a ``(tile_rows, C)`` tile broadcasts against:
    the whole tiles' worth of rows as ``(m // tile_rows, tile_rows, C)`` views, then the rows
    left over; each with the number of tile rows it takes (``tile[:k]``)."""
    m, c = blocks[0].shape
    whole = m - m % tile_rows
    if whole:
        yield tile_rows, [b[:whole].reshape(-1, tile_rows, c) for b in blocks]
    if whole < m:
        yield m - whole, [b[whole:] for b in blocks]


def _blocks(*views: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """The same blocks of rows, ``(rows, C)`` matrices, of several ``(N', L, C)`` views."""
    n, length, c = views[0].shape
    step = max(1, _block_rows(views[0]))  # at least one row: an empty batch has no blocks
    return [
        tuple(v[i, start : start + step] for v in views)
        for i in range(n)
        for start in range(0, length, step)
    ]


def _split(rows: np.ndarray) -> bool:
    """Whether ``_each_block`` spreads the blocks of ``rows`` over the engine's threads."""
    return rows.size >= SPLIT_ELEMENTS


def _each_block(work: Callable[..., R], *views: np.ndarray) -> list[R]:
    """``work(*blocks)`` for the same blocks of rows of several ``(N', L, C)`` views, spread
    over the engine's threads (``_split``); the results in block order."""
    blocks = _blocks(*views)
    if not _split(views[0]):
        return [work(*block) for block in blocks]
    return parallel(lambda i: work(*blocks[i]), len(blocks))


def _centered_sums(
    rows: np.ndarray, shift: np.ndarray | None, other: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``sum(v)`` and ``sum(v * (x - shift))`` in float64, in one pass over ``x``.

    ``v`` is ``other`` (same shape as ``rows``) or, when None, ``x - shift`` itself: then the
    second sum is the sum of squared deviations from ``shift``. A None ``shift`` is zero.
    Blocks run on the engine's threads; their partial sums are added in block order.
    """
    ones = None if _split(rows) else np.ones(_block_rows(rows), rows.dtype)
    shift = None if shift is None else _tiled(shift, rows.dtype)

    def sum_block(x: np.ndarray, v: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        m = len(x)
        centered = x
        if shift is not None:
            centered = np.empty_like(x)
            for k, (source, target) in _tile_pieces(len(shift), x, centered):
                np.subtract(source, shift[:k], out=target)
        v = centered if v is None else v
        sums = np.einsum("mc->c", v) if ones is None else ones[:m] @ v
        return sums, np.einsum("mc,mc->c", v, centered)

    sums, dots = np.zeros(rows.shape[2]), np.zeros(rows.shape[2])
    views = (rows,) if other is None else (rows, other)
    for block_sums, block_dots in _each_block(sum_block, *views):
        sums += block_sums
        dots += block_dots
    return sums, dots


def _moments(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and biased variance, in float64, from one pass.

    When a sample of the first rows shows a mean large next to the spread, deviations are
    taken from the sample's mean, close to the true mean, so that the variance does not suffer
    cancellation; otherwise from zero, which saves a subtraction.
    """
    count = rows.shape[0] * rows.shape[1]
    if count == 0:  # an empty batch (torch's running statistics stay as they are)
        return np.zeros(rows.shape[2]), np.zeros(rows.shape[2])
    sample = rows[0, : max(2, SAMPLE_ELEMENTS // rows.shape[2])]
    shift = _center(sample.mean(0), 1.0 / sample.std(0), NEAR_ZERO)
    shift = None if shift is None else shift.astype(rows.dtype)
    sums, squares = _centered_sums(rows, shift)
    offset = sums / count
    return (offset if shift is None else shift + offset), squares / count - offset * offset


def _center(
    mean: np.ndarray, invstd: np.ndarray, limit: float = FAR_FROM_ZERO
) -> np.ndarray | None:
    """``mean`` if values sit far from zero next to their spread (``|mean| / std > limit``
    for some channel; a constant zero channel, 0 * inf, is not), else None.

    Far from zero, ``x * a + (c - mean * a)`` would lose digits to cancellation, so the affine
    maps compute ``(x - mean) * a + c`` and sums over ``x`` subtract the mean first; elsewhere
    they save that subtraction. (Callers run under the op's ``np.errstate``.)
    """
    return mean if np.any(np.abs(mean) * invstd > limit) else None


Term = tuple[np.ndarray | None, np.ndarray]  # per-channel center and coefficient


class Combination:
    """``target = sum((rows - center) * coef) + const + addend`` per channel, then ReLU if
    ``relu``, for ``(m, C)`` blocks: ``combination(target, *rows, addend)``, one block of rows
    per term, then the addend's if ``addend``. ``target`` may be one of the blocks.

    A ``None`` center is zero. Centering before scaling keeps the result accurate when the
    values sit far from zero next to their spread.
    """

    def __init__(
        self,
        dtype: np.dtype,
        terms: list[Term],
        const: np.ndarray | None = None,
        addend: bool = False,
        relu: bool = False,
    ) -> None:
        self.terms = [
            (None if center is None else _tiled(center, dtype), _tiled(coef, dtype))
            for center, coef in terms
        ]
        self.const = None if const is None else _tiled(const, dtype)
        self.addend = addend
        self.zeros = np.zeros_like(self.terms[0][1]) if relu else None

    def __call__(self, target: np.ndarray, *blocks: np.ndarray) -> None:
        for k, pieces in _tile_pieces(len(self.terms[0][1]), target, *blocks):
            self._piece(k, *pieces)

    def _piece(self, k: int, target: np.ndarray, *blocks: np.ndarray) -> None:
        scratch = np.empty_like(target) if len(self.terms) > 1 else None
        for i, (rows, (center, coef)) in enumerate(zip(blocks, self.terms, strict=False)):
            part = target if i == 0 else scratch
            if center is None:
                np.multiply(rows, coef[:k], out=part)
            else:
                np.subtract(rows, center[:k], out=part)
                part *= coef[:k]
            if i:
                target += part
        if self.const is not None:
            target += self.const[:k]
        if self.addend:
            target += blocks[-1]
        if self.zeros is not None:
            np.maximum(target, self.zeros[:k], out=target)  # a dense zero tile: twice as fast


def _combine(
    out: np.ndarray,
    terms: list[tuple[np.ndarray, np.ndarray | None, np.ndarray]],
    const: np.ndarray | None = None,
    addend: np.ndarray | None = None,
    relu: bool = False,
) -> None:
    """``Combination`` of ``(rows, center, coef)`` terms into the ``(N', L, C)`` view ``out``,
    block by block on the engine's threads."""
    combination = Combination(
        out.dtype, [term[1:] for term in terms], const, addend is not None, relu
    )
    views = [out, *(rows for rows, _, _ in terms)] + ([] if addend is None else [addend])
    _each_block(combination, *views)


def affine(
    mean: np.ndarray,
    var: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]:
    """Batch norm with these statistics as a per-channel affine map (float64): ``invstd`` and
    the ``center``, ``scale`` and ``const`` of ``(x - center) * scale + const`` (a None center
    is zero)."""
    invstd = 1.0 / np.sqrt(var + eps)
    scale = invstd if weight is None else invstd * weight
    center = _center(mean, invstd)
    if center is None:
        bias = -mean * scale if bias is None else bias - mean * scale
    return invstd, center, scale, bias


def eval_map(
    running_mean: np.ndarray,
    running_var: np.ndarray,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    eps: float,
    dtype: np.dtype,
    residual: bool = False,
    relu: bool = False,
) -> Combination:
    """Eval-mode ``batch_norm`` (then the residual added and ReLU, as the op's extras) as a
    ``Combination`` of one term, for blocks of rows: the numbers ``BatchNorm`` computes, to the
    bit, wherever the blocks are cut (the convolutions apply it to their outputs in cache)."""
    with np.errstate(all="ignore"):
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        _, center, scale, const = affine(mean, var, weight, bias, eps)
    return Combination(dtype, [(center, scale)], const, residual, relu)


def _relu_grad(grad: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``grad`` where ``out`` (a ReLU's output) is positive, else 0, as a fresh array laid out
    like ``out``: multiplying by the mask block by block beats masked assignment."""
    masked = np.empty_like(out)
    _each_block(
        lambda g, y, m: np.multiply(g, np.greater(y, 0), out=m),
        _rows(_like(out, grad)),
        _rows(out),
        _rows(masked),
    )
    return masked


class BatchNorm(Op):
    """``batch_norm`` of ``(input, weight, bias, running_mean, running_var, residual)``.

    In training, normalises with the batch statistics and leaves them in ``batch_mean`` and
    ``batch_var`` (biased) for the caller to update the running buffers; in eval, uses the
    running statistics, which makes it an affine map per channel. Then adds ``residual`` (if
    not None) and, with ``relu``, applies ReLU: the output's grad_fn is then named as torch
    names that last op.
    """

    differentiable = False
    backward_name = "NativeBatchNormBackward0"

    def __init__(
        self, training: bool, eps: float, relu: bool = False, sync: StatsSync | None = None
    ) -> None:
        self.training, self.eps, self.relu, self.sync = training, eps, relu, sync
        if relu:
            self.backward_name = "ReluBackward0"

    def forward(self, x, weight, bias, running_mean, running_var, residual) -> np.ndarray:  # noqa: ANN001
        x = _dense(x)
        rows = _rows(x)
        if self.training:
            self.count = rows.shape[0] * rows.shape[1]
            mean, var = _moments(rows)
            if self.sync is not None:
                self.count, mean, var = self.sync.moments(self.count, mean, var)
            self.batch_mean, self.batch_var = mean, var
        else:
            mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        invstd, center, scale, bias = affine(mean, var, weight, bias, self.eps)
        out = np.empty_like(x)
        addend = None if residual is None else _rows(_like(x, residual))
        _combine(_rows(out), [(rows, center, scale)], bias, addend, self.relu)
        if self.requires_grad:
            need_x = self.training or self.needs_input_grad[1]
            self.kept = [i for i, keep in ((0, need_x), (1, weight is not None)) if keep]
            self.save_inputs(*self.kept)
            self.save_arrays(mean, invstd)
            if self.relu:
                self.save_outputs(0)
        return out

    def backward(self, grad: np.ndarray) -> tuple:
        inputs = list(self.saved_tensors)
        if self.relu:
            grad = _relu_grad(grad, inputs.pop()._data)
        residual_grad = None
        if self.needs_input_grad[5]:  # the masked gradient is ours; an incoming one is not
            residual_grad = grad if self.relu else grad.copy(order="K")
        saved = dict(zip(self.kept, inputs, strict=True))
        mean, invstd = self.saved_arrays
        scale = invstd * saved[1]._data if 1 in saved else invstd
        need_x, need_w, need_b = self.needs_input_grad[:3]
        if 0 in saved:
            x = _dense(saved[0]._data)
            rows, grad = _rows(x), _like(x, grad)
            shift = _center(mean, invstd, NEAR_ZERO)
            sum_dy, dot = _centered_sums(rows, shift, _rows(grad))
            if shift is None:
                dot -= mean * sum_dy  # sum(dy * (x - mean)) from sum(dy * x)
        else:  # eval mode with a frozen weight: dx = dy * scale needs no x
            grad = _dense(grad)
            sum_dy = _centered_sums(_rows(grad), None)[0] if need_b else None
        grad_rows = _rows(grad)
        dx = None
        if need_x:
            dx = np.empty_like(grad)
            terms, const = [(grad_rows, None, scale)], None
            if self.training:
                total_dy, total_dot = (
                    (sum_dy, dot) if self.sync is None else self.sync.sums(sum_dy, dot)
                )
                coef_x = -scale * invstd * invstd * total_dot / self.count
                center = _center(mean, invstd)
                terms.append((rows, center, coef_x))
                const = -scale * total_dy / self.count
                if center is None:
                    const -= coef_x * mean
            _combine(_rows(dx), terms, const)
        dw = (dot * invstd).astype(grad.dtype) if need_w else None
        db = sum_dy.astype(grad.dtype) if need_b else None
        return dx, dw, db, None, None, residual_grad


def check_sizes(channels: int, **vectors: Tensor | None) -> None:
    """Raise torch's error for the first of ``vectors`` without ``channels`` elements."""
    for name, vector in vectors.items():
        if vector is not None and vector.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {vector.numel()}")


def _update_running(running: Tensor, batch: np.ndarray, momentum: float) -> None:
    """``running = (1 - momentum) * running + momentum * batch``, in place."""
    with no_grad():
        updated = (1.0 - momentum) * running._data.astype(np.float64) + momentum * batch
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
    *,
    residual: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """Batch normalisation over the channel axis 1 of an ``(N, C, *)`` input, as torch's.

    In training, normalises with the batch's biased variance and updates the running buffers
    in place with the unbiased one; in eval, normalises with the running statistics. The
    engine's extras: ``relu(batch_norm(...) + residual)`` in the same pass over memory, with
    ``residual`` (of the input's shape and dtype) and ``relu``.
    """
    if training:
        size = input.shape
        if size[0] * int(np.prod(size[2:])) == 1:
            raise ValueError(
                "Expected more than 1 value per channel when training, got input size "
                f"torch.Size({list(size)})"
            )
    elif running_mean is None:
        raise RuntimeError("running_mean must be defined in evaluation mode")
    elif running_var is None:
        raise RuntimeError("running_var must be defined in evaluation mode")
    check_sizes(  # in torch's order, so the first mismatch is named as torch names it
        input.shape[1], running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    if residual is not None and residual.shape != input.shape:
        raise RuntimeError(
            f"residual of shape {list(residual.shape)} does not match input {list(input.shape)}"
        )
    op = BatchNorm(training, eps, relu, _sync[-1] if training and _sync else None)
    out = op(input, weight, bias, running_mean, running_var, residual)
    if not training or op.count == 0:  # torch leaves the running statistics of no values
        return out
    if running_mean is not None:
        _update_running(running_mean, op.batch_mean, momentum)
    if running_var is not None:
        count = op.count
        _update_running(running_var, op.batch_var * (count / (count - 1)), momentum)
    return out
