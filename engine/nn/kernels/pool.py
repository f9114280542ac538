"""Max, average and adaptive average pooling on channels-last memory, forward and backward.

The NHWC input is split by stride phase (``_phases``) so that, for each of the kh*kw kernel
offsets (never per output pixel), the inputs of all windows are one slice with long
contiguous rows; padding is never materialised, each offset covers only the windows that
read the input (``layout.offsets``). Gradients go offset by offset into phase planes (the
first offset to reach a plane writes, the others add) and are put back in place at the end.
Each pass works on ranges of images on the engine's threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from engine.autograd.function import Op
from engine.nn.kernels.layout import (
    Pads,
    Pair,
    Window,
    nchw,
    nhwc,
    offsets,
    pair,
    zero_outside,
)
from engine.parallel import parallel_ranges
from engine.tensor import Tensor


class PoolGeometry(NamedTuple):
    """A pooling window with its padding (bottom/right extended to reach ceil-mode windows)."""

    win: Window
    pads: Pads
    in_hw: Pair
    out_hw: Pair


def pool_out_size(size: int, kernel: int, pad: int, stride: int, dilation: int, ceil: bool) -> int:
    """torch's pooling output length: in ceil mode the last window must start inside the input
    or its left padding."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil else 0)) // stride
    out += 1
    if ceil and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _pool_pair(op: str, value: int | tuple | list, name: str, omittable: bool = False) -> Pair:
    if isinstance(value, tuple | list) and len(value) not in ((0, 1, 2) if omittable else (1, 2)):
        either = "either be omitted, a single int," if omittable else "either be a single int,"
        raise RuntimeError(f"{op}: {name} must {either} or a tuple of two ints")
    return pair(value)


def pool_geometry(
    op: str,
    shape: tuple,
    kernel_size: int | tuple,
    stride: int | tuple | None,
    padding: int | tuple,
    dilation: int | tuple,
    ceil_mode: bool,
) -> PoolGeometry:
    """Check torch's pooling arguments for an (N, C, H, W) input and derive the geometry."""
    kernel = _pool_pair(op, kernel_size, "kernel_size")
    empty = stride is None or (isinstance(stride, tuple | list) and not stride)
    step = kernel if empty else _pool_pair(op, stride, "stride", omittable=True)
    pad = _pool_pair(op, padding, "padding")
    dil = _pool_pair(op, dilation, "dilation")
    if min(step) == 0:
        raise RuntimeError("stride should not be zero")
    if min(kernel) <= 0:
        raise RuntimeError(
            f"kernel size should be greater than zero, but got kH: {kernel[0]} kW: {kernel[1]}"
        )
    if min(dil) <= 0:
        raise RuntimeError(
            f"dilation should be greater than zero, but got dilationH: {dil[0]} dilationW: {dil[1]}"
        )
    for k, p, d in zip(kernel, pad, dil, strict=True):
        if p > ((k - 1) * d + 1) // 2:
            raise RuntimeError(
                "pad should be at most half of effective kernel size, but got "
                f"pad={p}, kernel_size={k} and dilation={d}"
            )
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise RuntimeError(
            "pad should be smaller than or equal to half of kernel size, but got "
            f"padW = {pad[1]}, padH = {pad[0]}, kW = {kernel[1]}, kH = {kernel[0]}"
        )
    _, c, h, w = shape
    out_hw = tuple(
        pool_out_size(*args, ceil_mode) for args in zip((h, w), kernel, pad, step, dil, strict=True)
    )
    if min(out_hw) < 1:
        raise RuntimeError(
            f"Given input size: ({c}x{h}x{w}). Calculated output size: "
            f"({c}x{out_hw[0]}x{out_hw[1]}). Output size is too small"
        )
    reach = [
        (o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(out_hw, step, dil, kernel, strict=True)
    ]
    pads = (pad[0], reach[0] - h - pad[0], pad[1], reach[1] - w - pad[1])
    return PoolGeometry(Window(kernel, step, dil), pads, (h, w), out_hw)


def _phases(x: np.ndarray, stride: Pair) -> np.ndarray:
    """The NHWC ``x`` split by stride phase, ``(sh, sw, N, ceil(H/sh), ceil(W/sw), C)``: plane
    ``[a, b]`` holds rows ``a, a + sh, ...`` and columns ``b, b + sw, ...`` densely, so that the
    inputs of one kernel offset over all windows are a slice with long contiguous rows (a
    strided slice of ``x`` has runs of C values only, several times slower to work on)."""
    sh, sw = stride
    if (sh, sw) == (1, 1):
        return np.ascontiguousarray(x)[None, None]
    n, h, w, c = x.shape
    planes = np.empty((sh, sw, n, -(-h // sh), -(-w // sw), c), x.dtype)

    def split(images: slice) -> None:
        for a in range(sh):
            for b in range(sw):
                part = x[images, a::sh, b::sw]
                planes[a, b, images, : part.shape[1], : part.shape[2]] = part

    parallel_ranges(n, split, x.size)
    return planes


def _unphase(planes: np.ndarray, in_hw: Pair) -> np.ndarray:
    """The NHWC array of height and width ``in_hw`` that ``_phases`` split into ``planes``."""
    sh, sw, n, _, _, c = planes.shape
    if (sh, sw) == (1, 1):
        return planes[0, 0]
    x = np.empty((n, *in_hw, c), planes.dtype)

    def merge(images: slice) -> None:
        for a in range(sh):
            for b in range(sw):
                part = x[images, a::sh, b::sw]
                part[...] = planes[a, b, images, : part.shape[1], : part.shape[2]]

    parallel_ranges(n, merge, x.size)
    return x


def _plane_offsets(geo: PoolGeometry) -> Iterator[tuple[int, tuple, tuple]]:
    """Each kernel offset ``k`` (row-major) that reads some input: the slice of the phase
    planes holding the inputs it reads, and the slice of the outputs whose windows read them."""
    (sh, sw), kw = geo.win.stride, geo.win.kernel[1]
    spans = offsets(geo.win, geo.pads, geo.in_hw, (0, geo.out_hw[0]), geo.out_hw[1])
    for i, j, rows, cols, out_rows, out_cols in spans:
        q, p = rows.start // sh, cols.start // sw
        height, width = out_rows.stop - out_rows.start, out_cols.stop - out_cols.start
        plane = (rows.start % sh, cols.start % sw, slice(None))
        plane += (slice(q, q + height), slice(p, p + width))
        yield i * kw + j, plane, (slice(None), out_rows, out_cols)


def _reduce_windows(
    planes: np.ndarray, geo: PoolGeometry, ufunc: np.ufunc, start: float
) -> np.ndarray:
    """``ufunc`` folded over each window's inputs, from ``start`` (padding is left out)."""
    out = np.empty((planes.shape[2], *geo.out_hw, planes.shape[5]), planes.dtype)

    def fold(images: slice) -> None:
        part, inputs = out[images], planes[:, :, images]
        part.fill(start)
        for _, plane, outs in _plane_offsets(geo):
            target = part[outs]
            ufunc(target, inputs[plane], out=target)

    parallel_ranges(len(out), fold, planes.size)
    return out


def _first_maxima(
    planes: np.ndarray, out: np.ndarray, geo: PoolGeometry
) -> Iterator[tuple[int, tuple, tuple, np.ndarray]]:
    """For each kernel offset, the windows whose gradient it receives: its input is the first
    maximum of the window, or, in a window holding NaNs, the last NaN (torch's rule)."""
    taken, first = np.zeros(out.shape, bool), np.empty(out.shape, bool)
    last_nan = None
    if np.isnan(out).any():
        last_nan = np.full(out.shape, -1, np.int32)
        for k, plane, outs in _plane_offsets(geo):
            np.copyto(last_nan[outs], k, where=np.isnan(planes[plane]))
    spans = list(_plane_offsets(geo))
    for i, (k, plane, outs) in enumerate(spans):
        mask = first[outs]
        np.equal(planes[plane], out[outs], out=mask)
        if last_nan is not None:
            mask |= last_nan[outs] == k
        if i:  # and not taken by an earlier offset
            np.greater(mask, taken[outs], out=mask)
        if i + 1 < len(spans):
            taken[outs] |= mask
        yield k, plane, outs, mask


class MaxPool2DWithIndices(Op):
    """Max over each window; the first maximum (or a NaN) of a window gets the gradient.

    Keeps for backward the input's phase planes and the output, from which backward finds
    each window's maximum again (cheaper than tracking it in forward).
    """

    differentiable = False

    def __init__(self, geo: PoolGeometry, return_indices: bool) -> None:
        self.geo, self.return_indices = geo, return_indices

    def forward(self, x: np.ndarray) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        planes = _phases(nhwc(x), self.geo.win.stride)
        out = _reduce_windows(planes, self.geo, np.maximum, -np.inf)
        self.save_arrays(planes, out)
        if self.return_indices:
            arg = np.zeros(out.shape, np.int64)
            for k, _, outs, mask in _first_maxima(planes, out, self.geo):
                np.copyto(arg[outs], k, where=mask)
            return nchw(out), nchw(self._flat_indices(arg))
        return nchw(out)

    def _flat_indices(self, arg: np.ndarray) -> np.ndarray:
        """torch's indices: ``h * W + w`` of each maximum in its (unpadded) input plane."""
        (kh, kw), (sh, sw), (dh, dw) = self.geo.win
        i, j = np.divmod(arg, kw)
        ho, wo = self.geo.out_hw
        rows = np.arange(ho)[:, None, None] * sh - self.geo.pads[0] + i * dh
        cols = np.arange(wo)[:, None] * sw - self.geo.pads[2] + j * dw
        return rows * self.geo.in_hw[1] + cols

    def backward(self, gy: np.ndarray, _gi: np.ndarray | None = None) -> np.ndarray:
        planes, out = self.saved_arrays
        gy = nhwc(gy)
        grads = np.empty_like(planes)

        def route(images: slice) -> None:
            inputs, into = planes[:, :, images], grads[:, :, images]
            part = np.empty(out[images].shape, gy.dtype)
            written = np.zeros(into.shape[:2], bool)
            for _, plane, outs, mask in _first_maxima(inputs, out[images], self.geo):
                target = into[plane]
                if written[plane[:2]]:
                    routed = np.multiply(gy[images][outs], mask, out=part[outs])
                    np.add(target, routed, out=target)
                else:  # the first gradients into this phase plane: written, not added
                    np.multiply(gy[images][outs], mask, out=target)
                    zero_outside(into[plane[:2]], *plane[3:])
                    written[plane[:2]] = True
            for a, b in zip(*np.nonzero(~written), strict=True):
                into[a, b].fill(0)

        parallel_ranges(len(out), route, planes.size)
        return nchw(_unphase(grads, self.geo.in_hw))


def _avg_divisor(
    size: int, kernel: int, stride: int, pad: int, out: int, with_pad: bool
) -> np.ndarray:
    """Window sizes along one axis, as torch's avg_pool2d counts them."""
    start = np.arange(out) * stride - pad
    end = np.minimum(start + kernel, size + pad)
    if with_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


class AvgPool2D(Op):
    """Mean over each window (zero padding counted or not, or a fixed divisor)."""

    differentiable = False

    def __init__(self, geo: PoolGeometry, count_include_pad: bool, divisor: int | None) -> None:
        self.geo, self.count_include_pad, self.divisor_override = geo, count_include_pad, divisor

    def _divisor(self, dtype: np.dtype) -> np.ndarray:
        if self.divisor_override:
            return np.asarray(self.divisor_override, dtype)
        geo = self.geo
        rows, cols = (
            _avg_divisor(n, k, s, p, o, self.count_include_pad)
            for n, k, s, p, o in zip(
                geo.in_hw, geo.win.kernel, geo.win.stride, geo.pads[::2], geo.out_hw, strict=True
            )
        )
        return (rows[:, None, None] * cols[:, None]).astype(dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        out = _reduce_windows(_phases(nhwc(x), self.geo.win.stride), self.geo, np.add, 0.0)
        np.divide(out, self._divisor(x.dtype), out=out)
        return nchw(out)

    def backward(self, gy: np.ndarray) -> np.ndarray:
        gy = nhwc(gy) / self._divisor(gy.dtype)
        sh, sw = self.geo.win.stride
        h, w = self.geo.in_hw
        grads = np.empty((sh, sw, gy.shape[0], -(-h // sh), -(-w // sw), gy.shape[3]), gy.dtype)

        def spread(images: slice) -> None:
            into, part = grads[:, :, images], gy[images]
            into.fill(0)
            for _, plane, outs in _plane_offsets(self.geo):
                target = into[plane]
                np.add(target, part[outs], out=target)

        parallel_ranges(len(gy), spread, grads.size)
        return nchw(_unphase(grads, self.geo.in_hw))


def adaptive_matrix(out: int, size: int, dtype: np.dtype) -> np.ndarray:
    """``(out, size)`` averaging matrix: row ``o`` averages ``floor(o*size/out)`` to
    ``ceil((o+1)*size/out)``, torch's adaptive window."""
    o = np.arange(out)[:, None]
    start, end = (o * size) // out, -(-(o + 1) * size // out)
    index = np.arange(size)
    return ((index >= start) & (index < end)) / (end - start).astype(dtype)


class AdaptiveAvgPool2D(Op):
    """Adaptive average pooling as two small matrix products (one sum for a 1x1 output)."""

    differentiable = False

    def __init__(self, out_hw: Pair) -> None:
        self.out_hw = out_hw
        if out_hw == (1, 1):
            self.backward_name = "MeanBackward1"

    def forward(self, x: np.ndarray) -> np.ndarray:
        n, c, h, w = x.shape
        ho, wo = self.out_hw
        self.in_hw = (h, w)
        x = nhwc(x)
        if (ho, wo) == (1, 1):
            out = np.add.reduce(x.reshape(n, 1, h * w, c), axis=2, keepdims=True)
            return nchw(np.divide(out, x.dtype.type(h * w), out=out))
        rows = adaptive_matrix(ho, h, x.dtype) @ x.reshape(n, h, w * c)
        out = adaptive_matrix(wo, w, x.dtype) @ rows.reshape(n * ho, w, c)
        return nchw(out.reshape(n, ho, wo, c))

    def backward(self, gy: np.ndarray) -> np.ndarray:
        n, c, ho, wo = gy.shape
        h, w = self.in_hw
        gy = nhwc(gy)
        if (ho, wo) == (1, 1):
            gx = np.empty((n, h, w, c), gy.dtype)
            np.divide(gy, gy.dtype.type(h * w), out=gx)
            return nchw(gx)
        cols = adaptive_matrix(wo, w, gy.dtype).T @ gy.reshape(n * ho, wo, c)
        gx = adaptive_matrix(ho, h, gy.dtype).T @ cols.reshape(n, ho, w * c)
        return nchw(gx.reshape(n, h, w, c))


def _batched(op_name: str, x: Tensor) -> Tensor:
    if x.ndim not in (3, 4):
        raise RuntimeError(
            f"{op_name}: Expected 3D or 4D (batch mode) tensor for input, but got {list(x.shape)}"
        )
    return x if x.ndim == 4 else x.unsqueeze(0)


def _unbatched(like: Tensor, out: Tensor) -> Tensor:
    return out if like.ndim == 4 else out.squeeze(0)


def max_pool2d(
    input: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``torch.nn.functional.max_pool2d`` (padding counts as -inf)."""
    x = _batched("max_pool2d", input)
    geo = pool_geometry("max_pool2d", x.shape, kernel_size, stride, padding, dilation, ceil_mode)
    out = MaxPool2DWithIndices(geo, return_indices)(x)
    if return_indices:
        return _unbatched(input, out[0]), _unbatched(input, out[1])
    return _unbatched(input, out)


def avg_pool2d(
    input: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """``torch.nn.functional.avg_pool2d``."""
    if divisor_override is not None and divisor_override == 0:
        raise RuntimeError("divisor must be not zero")
    x = _batched("avg_pool2d", input)
    geo = pool_geometry("avg_pool2d", x.shape, kernel_size, stride, padding, 1, ceil_mode)
    return _unbatched(input, AvgPool2D(geo, count_include_pad, divisor_override)(x))


def adaptive_avg_pool2d(input: Tensor, output_size: int | tuple[int | None, int | None]) -> Tensor:
    """``torch.nn.functional.adaptive_avg_pool2d``; ``None`` in ``output_size`` keeps that size."""
    if input.ndim not in (3, 4):
        raise RuntimeError(
            f"adaptive_avg_pool2d(): Expected 3D or 4D tensor, but got {list(input.shape)}"
        )
    x = input if input.ndim == 4 else input.unsqueeze(0)
    sizes = output_size if isinstance(output_size, tuple | list) else (output_size,) * 2
    out_hw = tuple(int(x.shape[2 + i]) if s is None else int(s) for i, s in enumerate(sizes))
    return _unbatched(input, AdaptiveAvgPool2D(out_hw)(x))
