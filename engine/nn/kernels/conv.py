"""2-D convolution as im2col + GEMM on channels-last memory, forward and backward together.

Forward: the padded NHWC input is cut into windows (one strided copy, (kh, kw, C) innermost)
and multiplied by the weight as a ``(Cout, kh*kw*Cin)`` matrix; the ``(N*Ho*Wo, Cout)`` result
is NHWC memory, returned as an NCHW-shaped view. Backward: weight gradient ``dY^T @ cols``;
input gradient either as a stride-1 convolution of the padded ``dY`` with the flipped weight
(small channel counts) or as ``dY @ W`` scattered back with one slice-add per kernel offset.
The im2col rows are never built whole: each thread copies a piece of them (``PIECE_BYTES``)
and multiplies it while it is in its cache; up to ``KEEP_BYTES`` of them are kept for the
weight gradient, larger ones are copied again, piece by piece, in backward.
3x3 stride-1, padding-1 convolutions go through Winograd's F(2x2, 3x3) or F(4x4, 3x3)
instead (``winograd``), forward and both gradients, keeping its transformed input tiles the
same way (up to ``WINOGRAD_KEEP_BYTES``); other wide ones (``direct.fits``) through one product
per kernel offset (``direct``), which skips the padding. Whatever the kernel, the thread that
finishes a region of the output adds the bias there and applies the op's epilogue, if any
(``conv_norm``'s eval-mode batch norm), while the region is in its cache.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from engine.autograd.function import Op
from engine.nn.kernels import direct, winograd
from engine.nn.kernels.layout import (
    Block,
    Epilogue,
    Pads,
    Pair,
    Window,
    cut_rows,
    nchw,
    nhwc,
    offsets,
    out_size,
    pad_nhwc,
    pair,
    windows,
)
from engine.parallel import (
    matmul,
    parallel,
    side_by_side,
)
from engine.tensor import Tensor

FLIPPED_MAX_CHANNELS = 256  # below this many output channels, stride-1 dX uses the flipped conv
KEEP_BYTES = 32 << 20  # im2col matrices up to this size are kept for backward, larger are rebuilt
PIECE_BYTES = 2 << 20  # im2col rows that one thread copies and multiplies at once: conv1 at
# 16x224 forward took 23.1, 20.9, 21.8 and 21.5 ms with 0.5, 1, 2 and 4 MiB pieces, cut block by
# block; 19.3 with 2 MiB over the whole matrix (22.6 with each block's copy and product split)
WINOGRAD_KEEP_BYTES = 16 << 20  # the same for Winograd tiles, which are cheaper to rebuild
SIDE_BY_SIDE_ELEMENTS = 1 << 18  # outputs up to this size get both gradients side by side,
# one a thread: the train step at batch 32, 64x64 (layer2 to layer4) took 0.95 of the time; at
# 16x224, layer3 (802K elements) was slower that way, layer4 (401K) no faster over whole steps,
# and the two together raised peak RSS by 27 MB


def weight_matrix(weight: np.ndarray) -> np.ndarray:
    """``(Cout, kh*kw*Cin/groups)`` with (kh, kw, C) per row; free for a channels-last weight."""
    return weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _windows(xp: np.ndarray, win: Window, out_hw: Pair, groups: int) -> list[np.ndarray]:
    """Each group's windows of the padded NHWC ``xp``, ``(N, Ho, Wo, kh, kw, C/groups)``
    views: the im2col rows, not copied."""
    view = windows(xp, win, out_hw, groups)
    return [view[..., g, :] for g in range(groups)]


def _pieces(n: int, ho: int, wo: int, row_bytes: int) -> list[Block]:
    """The pieces of ``n * ho * wo`` rows that one thread takes at a time: about
    ``PIECE_BYTES``, and at most half of them (fixed numbers, not the thread count's)."""
    rows = min(max(1, PIECE_BYTES // row_bytes), -(-n * ho * wo // 2))
    return list(cut_rows(n, ho, wo, rows))


def _window_pieces(source: np.ndarray) -> list[Block]:
    """``_pieces`` of a group's windows ``(N, Ho, Wo, kh, kw, C/groups)``."""
    return _pieces(*source.shape[:3], math.prod(source.shape[3:]) * source.itemsize)


def _rows(source: np.ndarray, pc: Block, into: np.ndarray | None = None) -> np.ndarray:
    """The im2col rows ``(r1 - r0, K)`` of piece ``pc`` of a group's windows: a view where
    they are contiguous (kept rows, or a 1x1 stride-1 input), else a copy (into ``into``)."""
    part = source[pc.n0 : pc.n1, pc.h0 : pc.h1]
    if into is not None:
        rows = into[pc.n0 : pc.n1, pc.h0 : pc.h1]
        rows[...] = part
        part = rows
    return np.ascontiguousarray(part).reshape(pc.r1 - pc.r0, -1)


def _matmul_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    if out.flags.c_contiguous:
        matmul(a, b, out=out)
    else:
        out[...] = matmul(a, b)


def _products(
    source: np.ndarray,
    wt: np.ndarray,
    out: np.ndarray,
    into: np.ndarray | None,
    finish: Callable[[Block], None] | None = None,
) -> None:
    """``out = rows @ wt`` for one group's im2col rows, one thread a piece, which then
    ``finish``es the piece."""
    pieces = _window_pieces(source)

    def piece(i: int) -> None:
        pc = pieces[i]
        _matmul_into(_rows(source, pc, into), wt, out[pc.r0 : pc.r1])
        if finish is not None:
            finish(pc)

    parallel(piece, len(pieces))


def _products_t(source: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """``gy^T @ rows`` for one group's im2col rows, one thread a piece, the pieces' partial
    products added in piece order (whatever the thread count)."""
    pieces = _window_pieces(source)

    def piece(i: int) -> np.ndarray:
        pc = pieces[i]
        return np.matmul(gy[pc.r0 : pc.r1].T, _rows(source, pc))

    partials = parallel(piece, len(pieces))
    total = partials[0]
    for partial in partials[1:]:
        total += partial
    return total


def gemm_conv(
    xp: np.ndarray,
    wmat: np.ndarray,
    win: Window,
    out_hw: Pair,
    groups: int,
    keep: bool = False,
    epilogue: Epilogue | None = None,
) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Correlate the padded NHWC ``xp`` with ``wmat``: the ``(N, Ho, Wo, Cout)`` result.

    The im2col rows are copied and multiplied in pieces (``_pieces``), one thread a piece,
    while they are in its cache; with one group, that thread then applies ``epilogue`` to the
    piece's outputs (with more, it is applied to the whole at the end). With ``keep``, also
    returns each group's im2col rows when they add up to at most ``KEEP_BYTES`` (``None``
    above: backward copies them again).
    """
    n, (ho, wo) = xp.shape[0], out_hw
    cout, k = wmat.shape
    cog = cout // groups
    out = np.empty((n * ho * wo, cout), xp.dtype)
    maps = out.reshape(n, ho, wo, cout)
    finish = None
    if epilogue is not None and groups == 1:

        def finish(pc: Block) -> None:
            images, rows = slice(pc.n0, pc.n1), slice(pc.h0, pc.h1)
            epilogue(maps[images, rows], images, rows)

    keep = keep and n * ho * wo * k * xp.itemsize <= KEEP_BYTES
    kept = []
    for g, source in enumerate(_windows(xp, win, out_hw, groups)):
        into = None
        if keep and not source.flags.c_contiguous:
            into = np.empty(source.shape, xp.dtype)
        gs = slice(g * cog, (g + 1) * cog)
        _products(source, wmat[gs].T, out[:, gs], into, finish)
        kept.append(source if into is None else into)
    if epilogue is not None and groups > 1:
        epilogue(maps, slice(None), slice(None))
    return maps, kept if keep else None


def weight_grad(sources: list[np.ndarray], gy2d: np.ndarray, groups: int) -> np.ndarray:
    """``dY^T @ cols`` as ``(Cout, kh*kw*Cin/groups)`` from each group's im2col rows (kept,
    or windows to copy again)."""
    cog = gy2d.shape[1] // groups
    return np.concatenate(
        [_products_t(source, gy2d[:, g * cog : (g + 1) * cog]) for g, source in enumerate(sources)]
    )


def col2im_add(
    gx: np.ndarray, dcols: np.ndarray, blk: Block, win: Window, pads: Pads, channels: slice
) -> None:
    """Add the window gradients ``dcols`` (block, Wo, kh, kw, C) into the NHWC ``gx``."""
    spans = offsets(win, pads, gx.shape[1:3], (blk.h0, blk.h1), dcols.shape[2])
    part = gx[blk.n0 : blk.n1]
    for i, j, rows, cols, out_rows, out_cols in spans:
        target = part[:, rows, cols, channels]
        np.add(target, dcols[:, out_rows, out_cols, i, j], out=target)


def input_grad_col2im(
    gy2d: np.ndarray,
    wmat: np.ndarray,
    in_shape: tuple,
    win: Window,
    pads: Pads,
    out_hw: Pair,
    groups: int,
) -> np.ndarray:
    """``dY @ W`` scattered back to the input: an NHWC ``(N, H, W, C)`` array. Pieces of about
    ``PIECE_BYTES`` of window gradients are multiplied and scattered by one thread while in its
    cache; the pieces of one image (whose windows overlap) go one after another on one thread,
    so every input gradient is summed in the same order whatever the thread count."""
    n, h, w, c = in_shape
    (ho, wo), (kh, kw) = out_hw, win.kernel
    cout, k = wmat.shape
    cog, cg = cout // groups, c // groups
    gx = np.zeros((n, h, w, c), gy2d.dtype)
    work: list[list[Block]] = []
    for pc in _pieces(n, ho, wo, k * gy2d.itemsize):
        if work and work[-1][-1].n0 == pc.n0:  # more rows of the same image
            work[-1].append(pc)
        else:
            work.append([pc])

    def scatter(i: int) -> None:
        for pc in work[i]:
            for g in range(groups):
                outs = slice(g * cog, (g + 1) * cog)
                dcols = np.matmul(gy2d[pc.r0 : pc.r1, outs], wmat[outs])
                dcols = dcols.reshape(pc.n1 - pc.n0, pc.h1 - pc.h0, wo, kh, kw, cg)
                col2im_add(gx, dcols, pc, win, pads, slice(g * cg, (g + 1) * cg))

    parallel(scatter, len(work))
    return gx


def input_grad_flipped(
    gy: np.ndarray, weight: np.ndarray, in_hw: Pair, win: Window, pads: Pads, groups: int
) -> np.ndarray:
    """Stride-1 input gradient: the padded NHWC ``gy`` correlated with the flipped weight."""
    cout, cg, kh, kw = weight.shape
    (dh, dw), cog = win.dilation, cout // groups
    reach_h, reach_w = dh * (kh - 1), dw * (kw - 1)
    gyp = pad_nhwc(gy, (reach_h - pads[0], reach_h - pads[1], reach_w - pads[2], reach_w - pads[3]))
    # (groups, kh, kw, cog, cg): for a channels-last weight, a permutation of contiguous rows
    flipped = weight.reshape(groups, cog, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 3, 4, 1, 2)
    rows = np.ascontiguousarray(flipped).reshape(groups, kh * kw * cog, cg)
    wmat = rows.transpose(0, 2, 1).reshape(groups * cg, kh * kw * cog)  # a view for one group
    return gemm_conv(gyp, wmat, win._replace(stride=(1, 1)), in_hw, groups)[0]


def gradients_side_by_side(
    weight_grad: Callable[[], np.ndarray], input_grad: Callable[[], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """A convolution's weight and input gradients, one a thread (``parallel.side_by_side``); a
    function of its own so that ``finetune bench --profile`` can time the pair."""
    gw, gx = side_by_side(weight_grad, input_grad)
    return gw, gx


class Convolution(Op):
    """``conv2d`` of an NCHW-shaped input (any memory layout) with an OIHW weight.

    Keeps for backward: the input and weight (version-checked), the im2col matrix when at most
    ``KEEP_BYTES`` (the Winograd tiles: ``WINOGRAD_KEEP_BYTES``), and the weight matrix when dX
    goes through col2im. The bias is added to each piece of the output as it is done, and then
    ``epilogue`` applied, if given (for outputs that no gradient goes through).
    """

    differentiable = False
    backward_name = "ConvolutionBackward0"

    def __init__(
        self,
        stride: Pair,
        pads: Pads,
        dilation: Pair,
        groups: int,
        epilogue: Epilogue | None = None,
    ) -> None:
        self.stride, self.pads, self.dilation, self.groups = stride, pads, dilation, groups
        self.epilogue = epilogue

    def forward(self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        n, _, h, w = x.shape
        cout, _, kh, kw = weight.shape
        self.win = Window((kh, kw), self.stride, self.dilation)
        self.in_shape, self.cout = (n, h, w, x.shape[1]), cout
        self.out_hw = output_hw((h, w), self.win, self.pads)
        need_x, need_w, _ = self.needs_input_grad
        scheme = winograd.fits(self.win, self.pads, n, self.out_hw, self.groups, x.dtype)
        self.winograd = scheme
        self.direct = not scheme and direct.fits(self.win, self.groups, x.shape[1])
        col2im = need_x and not (scheme or self.direct or self._flipped(cout))
        wmat = None if (scheme or self.direct) and not col2im else weight_matrix(weight)
        keep = self.requires_grad and need_w
        self.empty = x.size == 0  # no images (or no input channels): torch's zeros
        finish = self._finish(bias)
        if self.empty:
            out, kept = np.zeros((n, *self.out_hw, cout), x.dtype), None
            if finish is not None:
                finish(out, slice(None), slice(None))
        elif scheme:
            tiles = winograd.tile_count(scheme, n, self.out_hw)
            keep = keep and scheme.points * tiles * x.shape[1] * x.itemsize <= WINOGRAD_KEEP_BYTES
            out, kept = winograd.conv(scheme, nhwc(x), winograd.weights(weight), keep, finish)
        elif self.direct:
            out = direct.conv(nhwc(x), weight, self.win, self.pads, self.out_hw, finish)
            kept = None
        else:
            xp = pad_nhwc(nhwc(x), self.pads)
            out, kept = gemm_conv(xp, wmat, self.win, self.out_hw, self.groups, keep, finish)
        self.save_inputs(0, 1)
        self.save_arrays(kept, wmat if col2im else None)
        self.weight_channels_last = weight.transpose(0, 2, 3, 1).flags.c_contiguous
        return nchw(out)

    def _finish(self, bias: np.ndarray | None) -> Epilogue | None:
        """What is done to each region of the output once the kernel has computed it: the
        bias added, then ``self.epilogue``."""
        if bias is None:
            return self.epilogue

        def finish(region: np.ndarray, images: slice, rows: slice) -> None:
            region += bias
            if self.epilogue is not None:
                self.epilogue(region, images, rows)

        return finish

    def product_flops(self) -> tuple[int, int, int]:
        """Floating-point operations of the matrix products of forward, the input gradient
        and the weight gradient (Winograd's: the products in the transformed domain); the
        transforms, copies and additions around them are not counted."""
        n, h, w, cin = self.in_shape
        (ho, wo), (kh, kw) = self.out_hw, self.win.kernel
        dense = 2 * n * ho * wo * self.cout * kh * kw * cin // self.groups
        if self.winograd:
            tiles = winograd.tile_count(self.winograd, n, self.out_hw)
            reduced = 2 * self.winograd.points * tiles * cin * self.cout
            return reduced, reduced, reduced
        if self.direct:
            reached = direct.product_flops(
                self.win, self.pads, self.in_shape, self.out_hw, self.cout
            )
            return reached, reached, reached
        flipped = 2 * n * h * w * cin * kh * kw * self.cout // self.groups
        return dense, flipped if self._flipped(self.cout) else dense, dense

    def _flipped(self, cout: int) -> bool:
        return self.stride == (1, 1) and cout < FLIPPED_MAX_CHANNELS

    def backward(self, gy: np.ndarray) -> tuple:
        """The gradients of the input, weight and bias. A small convolution's passes and
        products are too small to split over the threads well, so its weight and input
        gradients run side by side instead (``SIDE_BY_SIDE_ELEMENTS``)."""
        need_x, need_w, need_b = self.needs_input_grad
        cout = gy.shape[1]
        gy_nhwc = nhwc(gy)
        gy2d = gy_nhwc.reshape(-1, cout)
        gb = np.ones(gy2d.shape[0], gy.dtype) @ gy2d if need_b else None
        if self.empty:
            x, weight = self.saved_tensors
            gw = np.zeros_like(weight._data) if need_w else None
            gx = np.zeros_like(x._data) if need_x else None
        elif self.direct:
            x, weight = self.saved_tensors
            gx, gw = direct.gradients(
                nhwc(x._data), gy_nhwc, weight._data, self.win, self.pads, need_x, need_w
            )
            gx = None if gx is None else nchw(gx)
            gw = None if gw is None else self._weight_layout(gw)
        elif need_x and need_w and gy.size <= SIDE_BY_SIDE_ELEMENTS:
            gw, gx = gradients_side_by_side(
                lambda: self._weight_grad(gy_nhwc, gy2d), lambda: self._input_grad(gy_nhwc, gy2d)
            )
        else:
            gw = self._weight_grad(gy_nhwc, gy2d) if need_w else None
            gx = self._input_grad(gy_nhwc, gy2d) if need_x else None
        return gx, gw, gb

    def _weight_grad(self, gy_nhwc: np.ndarray, gy2d: np.ndarray) -> np.ndarray:
        x, _ = self.saved_tensors
        kept, _ = self.saved_arrays
        cout = gy2d.shape[1]
        if self.winograd:
            if kept is None:
                kept = winograd.tiles(self.winograd, nhwc(x._data))
            cin = self.in_shape[3]
            gw9 = winograd.weight_grad(self.winograd, kept, gy_nhwc, cin)  # rows of Cin
            gw = np.ascontiguousarray(gw9.transpose(1, 0, 2)).reshape(cout, -1)
        else:
            if kept is None:
                xp = pad_nhwc(nhwc(x._data), self.pads)
                kept = _windows(xp, self.win, self.out_hw, self.groups)
            gw = weight_grad(kept, gy2d, self.groups)
        return self._weight_layout(gw)

    def _input_grad(self, gy_nhwc: np.ndarray, gy2d: np.ndarray) -> np.ndarray:
        _, weight = self.saved_tensors
        _, wmat = self.saved_arrays
        if self.winograd:
            gx = winograd.input_grad(self.winograd, gy_nhwc, weight._data)
        elif wmat is None:
            gx = input_grad_flipped(
                gy_nhwc, weight._data, self.in_shape[1:3], self.win, self.pads, self.groups
            )
        else:
            gx = input_grad_col2im(
                gy2d, wmat, self.in_shape, self.win, self.pads, self.out_hw, self.groups
            )
        return nchw(gx)

    def _weight_layout(self, gw: np.ndarray) -> np.ndarray:
        """The weight gradient in torch's shape, in the same memory layout as the weight."""
        cout, (kh, kw), cg = gw.shape[0], self.win.kernel, self.in_shape[3] // self.groups
        gw = gw.reshape(cout, kh, kw, cg).transpose(0, 3, 1, 2)
        return gw if self.weight_channels_last else np.ascontiguousarray(gw)


_SCALAR_NAMES = {"float32": "Float", "float64": "Double", "float16": "Half"}


def _conv_pads(padding: int | tuple | str, win: Window) -> Pads:
    """torch's ``padding`` argument as (top, bottom, left, right); "same" may be asymmetric."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding != "same":
            raise RuntimeError(f"Invalid padding string: '{padding}'")
        if win.stride != (1, 1):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        (kh, kw), (dh, dw) = win.kernel, win.dilation
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = _conv_pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise RuntimeError("negative padding is not supported")
    return ph, ph, pw, pw


def _conv_pair(value: int | tuple | list, name: str) -> Pair:
    if isinstance(value, tuple | list) and len(value) not in (1, 2):
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of 2 values to match the "
            f"convolution dimensions, but got {name}={list(value)}"
        )
    return pair(value)


def _check_conv(
    x: Tensor, weight: Tensor, bias: Tensor | None, win: Window, pads: Pads, groups: int
) -> None:
    """Raise torch's errors for inconsistent shapes, dtypes and hyper-parameters."""
    if min(win.stride) <= 0:
        raise RuntimeError("non-positive stride is not supported")
    if min(win.dilation) <= 0:
        raise RuntimeError("non-positive dilation is not supported")
    if groups <= 0:
        raise RuntimeError("non-positive groups is not supported")
    xs, ws = list(x.shape), list(weight.shape)
    if weight.ndim != 4:
        raise RuntimeError(f"Expected a 4D weight for conv2d, but got weight of size: {ws}")
    if ws[0] % groups:
        raise RuntimeError(
            f"Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, "
            f"but got weight of size [{ws}] instead"
        )
    if xs[1] != ws[1] * groups:
        raise RuntimeError(
            f"Given groups={groups}, weight of size {ws}, expected input{xs} to have "
            f"{ws[1] * groups} channels, but got {xs[1]} channels instead"
        )
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != ws[0]):
        raise RuntimeError(
            f"Given weight of size {ws}, expected bias to be 1-dimensional with {ws[0]} "
            f"elements, but got bias of size {list(bias.shape)} instead"
        )
    if weight.dtype != x.dtype:
        raise RuntimeError(
            f"expected scalar type {_scalar_name(x)} but found {_scalar_name(weight)}"
        )
    if bias is not None and bias.dtype != x.dtype:
        raise RuntimeError(
            f"Input type ({_scalar_name(x).lower()}) and bias type "
            f"({_scalar_name(bias).lower()}) should be the same"
        )
    padded = (xs[2] + pads[0] + pads[1], xs[3] + pads[2] + pads[3])
    reach = tuple(d * (k - 1) + 1 for k, d in zip(win.kernel, win.dilation, strict=True))
    if padded[0] < reach[0] or padded[1] < reach[1]:
        raise RuntimeError(
            f"Calculated padded input size per channel: ({padded[0]} x {padded[1]}). Kernel "
            f"size: ({reach[0]} x {reach[1]}). Kernel size can't be greater than actual input size"
        )


def _scalar_name(t: Tensor) -> str:
    return _SCALAR_NAMES.get(t._data.dtype.name, t._data.dtype.name)


def output_hw(in_hw: Pair, win: Window, pads: Pads) -> Pair:
    """The height and width of a convolution's output."""
    return (
        out_size(in_hw[0], pads[0] + pads[1], win.kernel[0], win.stride[0], win.dilation[0]),
        out_size(in_hw[1], pads[2] + pads[3], win.kernel[1], win.stride[1], win.dilation[1]),
    )


ConvArgs = tuple[Window, Pads]  # a convolution's checked geometry


def conv_args(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int | tuple[int, int],
    padding: int | tuple[int, int] | str,
    dilation: int | tuple[int, int],
    groups: int,
) -> ConvArgs:
    """The window and pads of a 4-D ``conv2d`` call, after torch's checks."""
    kernel = tuple(weight.shape[2:4]) if weight.ndim == 4 else (1, 1)
    win = Window(kernel, _conv_pair(stride, "stride"), _conv_pair(dilation, "dilation"))
    pads = _conv_pads(padding, win)
    _check_conv(input, weight, bias, win, pads, groups)
    return win, pads


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> Tensor:
    """``torch.nn.functional.conv2d`` of (N, C, H, W) or (C, H, W) by weight (O, C/groups, kh, kw).

    The result has torch's NCHW shape over channels-last (NHWC) memory.
    """
    if input.ndim == 3:
        return conv2d(input.unsqueeze(0), weight, bias, stride, padding, dilation, groups).squeeze(
            0
        )
    if input.ndim != 4:
        raise RuntimeError(
            "Expected 3D (unbatched) or 4D (batched) input to conv2d, but got input of size: "
            f"{list(input.shape)}"
        )
    win, pads = conv_args(input, weight, bias, stride, padding, dilation, groups)
    return Convolution(win.stride, pads, win.dilation, groups)(input, weight, bias)
