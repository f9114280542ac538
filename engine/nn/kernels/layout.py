"""Channels-last helpers shared by the convolution and pooling kernels.

Activations have torch's NCHW shape but live in NHWC memory: ``nhwc`` and ``nchw`` switch
between the two views without copying. Sliding windows are ``as_strided`` views of a padded
NHWC array, so an im2col row is one strided copy with (kh, kw, C) innermost. ``cut_rows``
cuts output rows into blocks (the pieces a thread copies and multiplies, Winograd's chunks);
``row_blocks`` bounds the memory of Winograd's transformed tiles, block by block. A kernel
given an ``Epilogue`` applies it to each region of its output as it finishes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from engine.parallel import parallel_copyto

Pair = tuple[int, int]
Pads = tuple[int, int, int, int]  # top, bottom, left, right
Epilogue = Callable[[np.ndarray, slice, slice], None]  # work on a region of a kernel's NHWC
# output ``out[images, rows]`` (every column and channel: C-contiguous), called with it and its
# two slices as soon as it is final, on the thread that computed it, while in that thread's cache

BLOCK_BYTES = 8 << 20  # a block of ``row_blocks`` (Winograd's transformed tiles, kept or not)
BLOCKING_THRESHOLD = 16 << 20  # rows up to this size make one block
MIN_BLOCK_ROWS = 1024  # the weight gradient sums over a block's rows: fewer make a slow GEMM


def pair(value: int | tuple | list) -> Pair:
    """An int or a sequence of one or two ints, as a pair (callers check the length first)."""
    if isinstance(value, tuple | list):
        return int(value[0]), int(value[-1])
    return int(value), int(value)


def nhwc(x: np.ndarray) -> np.ndarray:
    """The NHWC view of an NCHW-shaped array (free; contiguous when the memory is NHWC)."""
    return x.transpose(0, 2, 3, 1)


def nchw(x: np.ndarray) -> np.ndarray:
    """The NCHW-shaped view of an NHWC array (free)."""
    return x.transpose(0, 3, 1, 2)


def channels_innermost(x: np.ndarray) -> np.ndarray:
    """``x`` (NHWC view) itself if its channels are contiguous, else an NHWC copy."""
    if x.strides[3] == x.itemsize or x.shape[3] == 1:
        return x
    return np.ascontiguousarray(x)


def pad_nhwc(x: np.ndarray, pads: Pads) -> np.ndarray:
    """Pad (or, for negative entries, crop) the H and W axes of an NHWC array.

    Returns ``x`` itself, with contiguous channels, when nothing is padded; otherwise a fresh
    C-contiguous array with zero borders (the interior is copied once).
    """
    top, bottom, left, right = pads
    h, w = x.shape[1], x.shape[2]
    x = x[:, max(-top, 0) : h - max(-bottom, 0), max(-left, 0) : w - max(-right, 0)]
    top, bottom, left, right = (max(p, 0) for p in pads)
    if not (top or bottom or left or right):
        return channels_innermost(x)
    n, h, w, c = x.shape
    out = np.empty((n, h + top + bottom, w + left + right, c), x.dtype)
    out[:, :top] = 0
    out[:, top + h :] = 0
    out[:, top : top + h, :left] = 0
    out[:, top : top + h, left + w :] = 0
    parallel_copyto(out[:, top : top + h, left : left + w], x)
    return out


def out_size(size: int, pad_total: int, kernel: int, stride: int, dilation: int) -> int:
    """Output length of a sliding window along one axis (floor mode)."""
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


class Window(NamedTuple):
    """Geometry of a 2-D sliding window: kernel, stride and dilation per axis."""

    kernel: Pair
    stride: Pair
    dilation: Pair


def windows(xp: np.ndarray, win: Window, out_hw: Pair, groups: int = 1) -> np.ndarray:
    """Read-only view ``(N, Ho, Wo, kh, kw, groups, C // groups)`` of the windows of ``xp``.

    ``xp`` is a padded NHWC array; window ``(ho, wo)`` starts at ``(ho * sh, wo * sw)``.
    """
    n, _, _, c = xp.shape
    sn, sh, sw, sc = xp.strides
    (kh, kw), (st_h, st_w), (dh, dw) = win
    return as_strided(
        xp,
        (n, *out_hw, kh, kw, groups, c // groups),
        (sn, sh * st_h, sw * st_w, sh * dh, sw * dw, sc * (c // groups), sc),
        writeable=False,
    )


class Block(NamedTuple):
    """Images ``n0:n1`` and output rows ``h0:h1`` of each: GEMM rows ``r0:r1``."""

    n0: int
    n1: int
    h0: int
    h1: int
    r0: int
    r1: int


def row_blocks(n: int, ho: int, wo: int, row_bytes: int) -> Iterator[Block]:
    """Cut ``n * ho * wo`` GEMM rows of ``row_bytes`` each into blocks of about ``BLOCK_BYTES``
    (and at least ``MIN_BLOCK_ROWS`` rows).

    One block when the whole matrix is under ``BLOCKING_THRESHOLD``; otherwise blocks of whole
    images, or of output rows of one image when an image alone is too large. Blocks are in
    order and their row ranges are contiguous.
    """
    rows = max(MIN_BLOCK_ROWS, BLOCK_BYTES // row_bytes)
    if n * ho * wo * row_bytes <= BLOCKING_THRESHOLD:
        rows = n * ho * wo
    return cut_rows(n, ho, wo, rows)


def cut_rows(n: int, ho: int, wo: int, rows: int) -> Iterator[Block]:
    """``n`` images of ``ho`` rows of ``wo`` in blocks of at most ``rows`` (or one output row of
    one image, if larger): whole images while one fits, else rows of one image, in order."""
    if n * ho * wo <= rows:
        yield Block(0, n, 0, ho, 0, n * ho * wo)
        return
    if ho * wo <= rows:
        step = rows // (ho * wo)
        for n0 in range(0, n, step):
            n1 = min(n, n0 + step)
            yield Block(n0, n1, 0, ho, n0 * ho * wo, n1 * ho * wo)
        return
    step = max(1, rows // wo)
    for i in range(n):
        for h0 in range(0, ho, step):
            h1 = min(ho, h0 + step)
            yield Block(i, i + 1, h0, h1, (i * ho + h0) * wo, (i * ho + h1) * wo)


def span(index: int, pad: int, stride: int, dilation: int, size: int, lo: int, hi: int):
    """Where kernel offset ``index`` of outputs ``lo:hi`` lands inside an unpadded axis.

    Output ``o`` reads input ``o * stride + index * dilation - pad``. Returns the input slice and
    the matching slice of outputs (relative to ``lo``), or ``None`` if all fall in the padding.
    """
    shift = index * dilation - pad
    first = max(lo, -(shift // stride))
    last = min(hi, (size - 1 - shift) // stride + 1)
    if first >= last:
        return None
    start = first * stride + shift
    return slice(start, start + (last - first - 1) * stride + 1, stride), slice(
        first - lo, last - lo
    )


def offsets(win: Window, pads: Pads, in_hw: Pair, out_rows: Pair, wo: int) -> Iterator[tuple]:
    """Each kernel offset ``(i, j)`` with the input rows and columns its outputs read.

    For output rows ``out_rows[0]:out_rows[1]`` and all ``wo`` columns, yields ``(i, j, rows,
    cols, out_rows, out_cols)``: slices of the unpadded input and the matching slices of those
    outputs; offsets that only read padding are skipped. This is how window gradients are
    scattered back without a padded buffer.
    """
    (kh, kw), (sh, sw), (dh, dw) = win
    for i in range(kh):
        rows = span(i, pads[0], sh, dh, in_hw[0], *out_rows)
        if rows is None:
            continue
        for j in range(kw):
            cols = span(j, pads[2], sw, dw, in_hw[1], 0, wo)
            if cols is not None:
                yield i, j, rows[0], cols[0], rows[1], cols[1]


def zero_outside(planes: np.ndarray, rows: slice, cols: slice) -> None:
    """Zero ``(N, H, W, C)`` ``planes`` outside rows ``rows`` and columns ``cols`` (where
    Winograd's tiles reach into the padding, or pooling's gradients were not written)."""
    for region in (
        np.s_[:, : rows.start],
        np.s_[:, rows.stop :],
        np.s_[:, rows, : cols.start],
        np.s_[:, rows, cols.stop :],
    ):
        if planes[region].size:
            planes[region] = 0
