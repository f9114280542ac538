"""Convolution as one matrix product per kernel offset, over the inputs that offset reads.

im2col multiplies every output's whole window, the padding's zeros included: a 3x3 window on
the 2x2 maps of ResNet18's layer4 (64x64 images) reads padding at 5 of its 9 offsets, on the
4x4 maps of layer3 at 31% of them. Here each kernel offset ``(i, j)`` multiplies the rectangle
of inputs it reads, ``(M, Cin)``, by its ``(Cin, Cout)`` kernel and adds the product into the
rectangle of outputs it reaches: only real inputs are multiplied, and no im2col matrix is
built. The input gradient is the same sum with input and output swapped (``dY @ W`` at each
offset, added where that offset read), the weight gradient one product per offset,
``dY^T @ X``.

Forward and the input gradient go through in blocks of images (``BLOCK_BYTES`` of input or
output each, and at least two), a block a thread when blocks have enough outputs
(``MIN_BLOCK_OUTPUTS``), else split by channels of their result, a range a thread; either way
each output adds the offsets in the same order, so results do not depend on the thread count.
The offsets of the weight gradient are pieces of their own. Arrays are channels-last: NHWC
maps, and the weight as ``(Cout, kh, kw, Cin)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from engine.nn.kernels.layout import Epilogue, Pads, Pair, Window, channels_innermost, offsets
from engine.parallel import in_ranges, parallel, ranges

MIN_CHANNELS = 128  # narrower inputs make products too small: ResNet18's stride-2 3x3 conv
# of 64 channels took 1.04-1.24 times im2col's time forward and backward (batch 16 at 224x224,
# 32 at 64x64; caches flushed), its convs of 128 to 512 channels 0.85-0.94, those on 2x2 maps 0.7
BLOCK_BYTES = 8 << 20  # images of one block: at most this much of input or output
MIN_BLOCK_OUTPUTS = 256  # blocks with fewer output positions split by channels instead: on 2x2
# maps (batch 32, 512 channels) each thread's products were too small and both read all of the
# weights (1.73 ms by channels, 2.33 by images); 7x7 (batch 16) 10.4 -> 9.7, 128 -> 256 channels
# stride 2 at 28x28 9.1 -> 7.1 by images


class Tap(NamedTuple):
    """A kernel offset with the inputs it reads and the outputs they reach (H and W slices)."""

    i: int
    j: int
    rows: slice
    cols: slice
    out_rows: slice
    out_cols: slice

    @property
    def outputs(self) -> int:
        """The output positions of one image that this offset reaches."""
        return (self.out_rows.stop - self.out_rows.start) * (
            self.out_cols.stop - self.out_cols.start
        )


Kernel = Callable[[Tap, slice], np.ndarray]  # an offset's kernel, for a range of its result


def fits(win: Window, groups: int, in_channels: int) -> bool:
    """Whether a convolution goes through here: a window larger than 1x1 (whose im2col is no
    more than a copy), one group and at least ``MIN_CHANNELS`` inputs."""
    return groups == 1 and win.kernel != (1, 1) and in_channels >= MIN_CHANNELS


def taps(win: Window, pads: Pads, in_hw: Pair, out_hw: Pair) -> list[Tap]:
    """The offsets that read any input, the one reaching the most outputs first (with padding
    that keeps the size, all of them: its product is written, the others added)."""
    found = [Tap(*tap) for tap in offsets(win, pads, in_hw, (0, out_hw[0]), out_hw[1])]
    return sorted(found, key=lambda tap: -tap.outputs)


def product_flops(win: Window, pads: Pads, in_shape: tuple, out_hw: Pair, cout: int) -> int:
    """The floating-point operations of the products of forward (and of each gradient)."""
    n, h, w, cin = in_shape
    reached = sum(tap.outputs for tap in taps(win, pads, (h, w), out_hw))
    return 2 * n * reached * cin * cout


def _kernels(weight: np.ndarray) -> np.ndarray:
    """The OIHW ``weight`` as ``(Cout, kh, kw, Cin)``: free for a channels-last weight."""
    return channels_innermost(weight.transpose(0, 2, 3, 1))


def _image_blocks(n: int, image_bytes: int, at_least: int = 1) -> list[slice]:
    """Images in blocks of at most ``BLOCK_BYTES`` (or one image), ``at_least`` of them when
    there are as many images."""
    step = max(1, min(BLOCK_BYTES // max(1, image_bytes), -(-n // at_least)))
    return [slice(n0, min(n, n0 + step)) for n0 in range(0, n, step)]


def _thread_blocks(n: int, image_bytes: int, out_hw: Pair) -> list[slice] | None:
    """Blocks of images for the threads to take, every output channel of each (at least two,
    each of ``MIN_BLOCK_OUTPUTS`` output positions), or None: split by channels instead."""
    blocks = _image_blocks(n, image_bytes, 2)
    smallest = min(block.stop - block.start for block in blocks)
    enough = len(blocks) > 1 and smallest * out_hw[0] * out_hw[1] >= MIN_BLOCK_OUTPUTS
    return blocks if enough else None


def _gathered(maps: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """``maps[:, rows, cols]`` as an ``(M, C)`` matrix (a view when that is whole)."""
    return np.ascontiguousarray(maps[:, rows, cols]).reshape(-1, maps.shape[3])


def _sum_products(
    src: np.ndarray, dst: np.ndarray, moves: list, kernel: Kernel, channels: slice
) -> None:
    """``dst[..., channels]``: for each ``(tap, source rectangle, target rectangle)`` of
    ``moves``, in order, the source rectangle of ``src`` times ``kernel(tap, channels)``,
    added at the target rectangle (zeros where none reaches)."""
    target = dst[..., channels]
    for k, (tap, (rows, cols), (to_rows, to_cols)) in enumerate(moves):
        region = target[:, to_rows, to_cols]
        product = (_gathered(src, rows, cols) @ kernel(tap, channels)).reshape(region.shape)
        if k == 0 and region.shape == target.shape:
            region[...] = product
            continue
        if k == 0:
            target[...] = 0
        region += product


def conv(
    x: np.ndarray,
    weight: np.ndarray,
    win: Window,
    pads: Pads,
    out_hw: Pair,
    epilogue: Epilogue | None = None,
) -> np.ndarray:
    """The correlation of the NHWC ``x`` with the OIHW ``weight``: the NHWC output, with
    ``epilogue`` applied to each thread's block of images (split by channels: to the whole)."""
    x, w = channels_innermost(x), _kernels(weight)
    n, h, wd, _ = x.shape
    out = np.empty((n, *out_hw, w.shape[0]), x.dtype)
    moves = [(tap, tap[2:4], tap[4:6]) for tap in taps(win, pads, (h, wd), out_hw)]
    image_bytes = max(x[0].nbytes, out[0].nbytes)

    def columns(channels: slice, blocks: list[slice]) -> None:
        for images in blocks:
            _sum_products(x[images], out[images], moves, lambda t, c: w[c, t.i, t.j].T, channels)

    def block(images: slice) -> None:
        columns(slice(None), [images])
        if epilogue is not None:
            epilogue(out[images], images, slice(None))

    halves = _thread_blocks(n, image_bytes, out_hw)
    if halves is not None:
        parallel(lambda i: block(halves[i]), len(halves))
    else:
        blocks = _image_blocks(n, image_bytes)
        in_ranges(out.shape[3], lambda channels: columns(channels, blocks))
        if epilogue is not None:
            epilogue(out, slice(None), slice(None))
    return out


def gradients(
    x: np.ndarray,
    gy: np.ndarray,
    weight: np.ndarray,
    win: Window,
    pads: Pads,
    need_x: bool = True,
    need_w: bool = True,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The NHWC input gradient and the ``(Cout, kh*kw*Cin)`` weight gradient (each None unless
    asked for) of ``conv`` from the NHWC output gradient ``gy``, in one spread of pieces over
    the threads: the input gradient's blocks of images (or ranges of channels) first, then the
    weight's offsets."""
    x, gy, w = channels_innermost(x), channels_innermost(gy), _kernels(weight)
    n, h, wd, cin = x.shape
    cout, kh, kw, _ = w.shape
    found = taps(win, pads, (h, wd), gy.shape[1:3])
    image_bytes = max(x[0].nbytes, gy[0].nbytes)
    blocks, halves = _image_blocks(n, image_bytes), _thread_blocks(n, image_bytes, gy.shape[1:3])
    gx = np.empty_like(x) if need_x else None
    gw = None
    if need_w:
        gw = (np.empty if len(found) == kh * kw else np.zeros)((cout, kh, kw, cin), x.dtype)
    moves = [(tap, tap[4:6], tap[2:4]) for tap in found]

    def input_columns(channels: slice, blocks: list[slice] = blocks) -> None:
        for images in blocks:
            _sum_products(gy[images], gx[images], moves, lambda t, c: w[:, t.i, t.j, c], channels)

    def kernel_grad(tap: Tap) -> None:
        target = gw[:, tap.i, tap.j]
        for k, images in enumerate(blocks):
            grad = _gathered(gy[images], tap.out_rows, tap.out_cols).T
            inputs = _gathered(x[images], tap.rows, tap.cols)
            if k == 0:
                np.matmul(grad, inputs, out=target)
            else:
                target += grad @ inputs

    pieces: list[Callable[[], None]] = []
    if need_x and halves is not None:
        pieces += [
            lambda i=i: input_columns(slice(None), halves[i : i + 1]) for i in range(len(halves))
        ]
    elif need_x:
        pieces += [lambda part=part: input_columns(part) for part in ranges(cin)]
    if need_w:
        pieces += [lambda tap=tap: kernel_grad(tap) for tap in found]
    parallel(lambda k: pieces[k](), len(pieces))
    return gx, None if gw is None else gw.reshape(cout, -1)
