"""Winograd's minimal filtering for 3x3 stride-1 convolutions: F(2x2, 3x3) and F(4x4, 3x3).

Each m x m block of outputs comes from an (m+2) x (m+2) tile of the input padded by one. Taken
into a transformed domain of (m+2)^2 points (input tiles by ``Scheme.input``, 3x3 kernels by
``Scheme.weight``), the convolution becomes (m+2)^2 independent matrix products over channels;
``Scheme.output`` brings their results back to m x m blocks (Lavin and Gray, 2016): 2.25 times
fewer multiplications than direct for m = 2, 4 times for m = 4. The transforms are small
constant matrices applied as matrix products, so BLAS does all the arithmetic, and backward
uses their transposes. F(4x4) rounds more (its transforms reach 8 and 1/15), within float32
parity; float64 convolutions always take F(2x2), whose transforms are exact in binary. Arrays
are channels-last: NHWC images, tiles as ``(P, T, C)`` for P points and T tiles. Tiles are
gathered straight from the unpadded input, with zeros where they reach into the padding (a
padded copy of the input would cost a pass over memory each time). A side that is no multiple
of m is computed up to the next multiple (as if the input were padded further with zeros) and
cropped. Large inputs are worked through in blocks of tile rows (``layout.row_blocks``) that
stay in cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np

from engine.nn.kernels.layout import (
    Block,
    Pair,
    Window,
    channels_innermost,
    row_blocks,
    span,
    zero_outside,
)
from engine.parallel import matmul, parallel_ranges


class Scheme(NamedTuple):
    """F(m x m, 3x3): the 2-D transforms of flattened tiles, kernels and output blocks."""

    m: int  # output block side; input tiles are m + 2 a side
    input: np.ndarray  # ((m+2)^2, (m+2)^2): a flattened input tile to the transformed domain
    weight: np.ndarray  # ((m+2)^2, 9): a flattened 3x3 kernel to the transformed domain
    output: np.ndarray  # (m^2, (m+2)^2): back to a flattened m x m block of outputs

    @property
    def points(self) -> int:
        return (self.m + 2) ** 2


def _scheme(bt: list, g: list, at: list) -> Scheme:
    bt, g, at = np.array(bt, float), np.array(g, float), np.array(at, float)
    return Scheme(len(at), np.kron(bt, bt), np.kron(g, g), np.kron(at, at))


F2 = _scheme(
    [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
    [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
    [[1, 1, 1, 0], [0, 1, -1, -1]],
)
F4 = _scheme(  # points 0, -1, 1, 1/2, -2 and infinity: 2-4x less round-off than 0, +-1, +-2
    [
        [1, -3 / 2, -2, 3 / 2, 1, 0],
        [0, 1, -5 / 2, 1 / 2, 1, 0],
        [0, -1, 1 / 2, 5 / 2, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 1 / 2, -1, -1 / 2, 1, 0],
        [0, 1, -3 / 2, -2, 3 / 2, 1],
    ],
    [
        [1, 0, 0],
        [-1 / 3, 1 / 3, -1 / 3],
        [1 / 3, 1 / 3, 1 / 3],
        [-16 / 15, -8 / 15, -4 / 15],
        [1 / 15, -2 / 15, 4 / 15],
        [0, 0, 1],
    ],
    [
        [1, 1, 1, 1, 1, 0],
        [0, -1, 1, 1 / 2, -2, 0],
        [0, 1, 1, 1 / 4, 4, 0],
        [0, -1, 1, 1 / 8, -8, 1],
    ],
)

MIN_SIZE = 6  # smaller outputs have too few tiles: F(2x2) on ResNet18's 4x4 layer3 (batch 32,
# 64x64) took 10.4 ms forward and backward where im2col took 9.2
MIN_SIZE_F4 = 8  # F(4x4) on 4x4 outputs (one tile an image) was 30-50% slower than F(2x2)
MIN_TILES_F4 = 96  # ... unless the batch has this many tiles: ResNet18's 7x7 layer4 (224x224)
# forward and backward took 57 ms with F(4x4) where im2col took 93 at batch 32, 50.5 against
# 77 at batch 24 (96 tiles), 39 against 39 at batch 16; its 4x4 one (128x128) 35 against 51
# at batch 64, 31 against 25 at batch 32
MAX_COVER_F4 = 8 / 7  # F(4x4) on a side that is no multiple of 4 computes ceil(s/4)*4 outputs
# and crops: 14x14 as 16x16 took 36 ms forward and backward where F(2x2) took 41 (ResNet18's
# layer3 at 224x224, batch 16)

Tiles = list[np.ndarray]  # the transformed input tiles of each block, kept for backward


def fits(
    win: Window, pads: tuple, n: int, out_hw: Pair, groups: int, dtype: np.dtype = np.float32
) -> Scheme | None:
    """The scheme that computes a convolution of ``n`` images here, if any: 3x3, stride 1, no
    dilation, padding 1, one group. F(4x4) when the dtype is not float64 and both sides are
    multiples of 4 or close enough above one (``MAX_COVER_F4``) to crop, and at least
    ``MIN_SIZE_F4`` or the batch has ``MIN_TILES_F4`` tiles (F(4x4) took 25-45% less time
    than F(2x2) on ResNet18's 8x8 to 56x56 layers, one thread); else F(2x2) when both sides
    are even and at least ``MIN_SIZE``."""
    if not (win == Window((3, 3), (1, 1), (1, 1)) and pads == (1, 1, 1, 1) and groups == 1):
        return None
    if (
        np.dtype(dtype) != np.float64
        and all(_covered(F4, s) <= MAX_COVER_F4 * s for s in out_hw)
        and (min(out_hw) >= MIN_SIZE_F4 or tile_count(F4, n, out_hw) >= MIN_TILES_F4)
    ):
        return F4
    if all(s % 2 == 0 and s >= MIN_SIZE for s in out_hw):
        return F2
    return None


def _covered(scheme: Scheme, size: int) -> int:
    """The outputs that ``scheme`` computes along a side of ``size``: whole blocks of m."""
    return -(-size // scheme.m) * scheme.m


def tile_count(scheme: Scheme, n: int, out_hw: Pair) -> int:
    """The tiles of ``n`` images of ``out_hw`` outputs."""
    return n * _covered(scheme, out_hw[0]) * _covered(scheme, out_hw[1]) // scheme.m**2


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix @ points`` over the first axis of ``points`` (any trailing shape)."""
    flat = points.reshape(points.shape[0], -1)
    return matmul(matrix.astype(points.dtype), flat).reshape(matrix.shape[0], *points.shape[1:])


def _blocks(scheme: Scheme, n: int, out_hw: Pair, channels: int, itemsize: int) -> Iterator[Block]:
    """Blocks of tile rows (m output rows each) of ``n`` images of ``channels`` inputs."""
    th, tw = (_covered(scheme, s) // scheme.m for s in out_hw)
    return row_blocks(n, th, tw, scheme.points * channels * itemsize)


def _input_tiles(scheme: Scheme, x: np.ndarray, blk: Block) -> np.ndarray:
    """The transformed tiles ``(P, T, C)`` of one block of the NHWC ``x``, padded by one (and
    past its bottom and right edges by as many zeros as the tiles reach)."""
    m, side = scheme.m, scheme.m + 2
    (_, h, w, c), tw = x.shape, _covered(scheme, x.shape[2]) // m
    part = x[blk.n0 : blk.n1]
    taps = np.empty((scheme.points, blk.n1 - blk.n0, blk.h1 - blk.h0, tw, c), x.dtype)

    def gather(a: int, b: int) -> None:
        target = taps[side * a + b]
        rows, cols = span(a, 1, m, 1, h, blk.h0, blk.h1), span(b, 1, m, 1, w, 0, tw)
        if rows is None or cols is None:
            target.fill(0)
            return
        (source_rows, tile_rows), (source_cols, tile_cols) = rows, cols
        target[:, tile_rows, tile_cols] = part[:, source_rows, source_cols]
        zero_outside(target, tile_rows, tile_cols)

    _each_offset(side, gather, taps.size)
    return _apply(scheme.input, taps).reshape(scheme.points, -1, c)


def _output_block(scheme: Scheme, out: np.ndarray, t: np.ndarray, blk: Block) -> None:
    """Write the m x m blocks of outputs of one block from their transformed ``t`` (blocks
    that reach past the output's bottom or right edge are cropped)."""
    m = scheme.m
    part = out[blk.n0 : blk.n1, m * blk.h0 : m * blk.h1]
    n, c = part.shape[0], part.shape[3]
    blocks = _apply(scheme.output, t).reshape(m, m, n, blk.h1 - blk.h0, -1, c)

    def scatter(a: int, b: int) -> None:
        target = part[:, a::m, b::m]
        target[...] = blocks[a, b, :, : target.shape[1], : target.shape[2]]

    _each_offset(m, scatter, blocks.size)


def _output_phases(part: np.ndarray, m: int, tiles_hw: Pair) -> np.ndarray:
    """``(m*m, N, th, tw, C)``: the NHWC ``part`` split by position in its m x m blocks, for
    ``tiles_hw`` blocks (zeros where they reach past its bottom or right edge)."""
    n, c = part.shape[0], part.shape[3]
    phases = np.empty((m * m, n, *tiles_hw, c), part.dtype)

    def gather(a: int, b: int) -> None:
        source, target = part[:, a::m, b::m], phases[m * a + b]
        h, w = source.shape[1:3]
        target[:, :h, :w] = source
        zero_outside(target, slice(0, h), slice(0, w))

    _each_offset(m, gather, phases.size)
    return phases


def _each_offset(side: int, copy: Callable[[int, int], None], elements: int) -> None:
    """``copy(a, b)`` for each offset of a ``side`` x ``side`` grid (a pass over ``elements``
    values in all), the offsets spread over the engine's threads."""

    def run(offsets: slice) -> None:
        for k in range(offsets.start, offsets.stop):
            copy(*divmod(k, side))

    parallel_ranges(side * side, run, elements)


def weights(weight: np.ndarray, flipped: bool = False) -> np.ndarray:
    """An OIHW 3x3 weight as ``(9, Cin, Cout)`` kernels; ``flipped``: rotated by 180 degrees
    as ``(9, Cout, Cin)``, the kernels of the input gradient."""
    if flipped:
        return weight[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(9, *weight.shape[:2])
    return weight.transpose(2, 3, 1, 0).reshape(9, weight.shape[1], weight.shape[0])


def conv(
    scheme: Scheme, x: np.ndarray, w9: np.ndarray, keep: bool = False
) -> tuple[np.ndarray, Tiles | None]:
    """The stride-1 correlation of the NHWC ``x``, padded by one, with ``(9, Cin, Cout)``
    kernels: an NHWC output of the input's height and width; with ``keep``, also the
    transformed input tiles of each block."""
    x = channels_innermost(x)
    n, out_hw = x.shape[0], x.shape[1:3]
    u = _apply(scheme.weight, w9)
    out = np.empty((n, *out_hw, w9.shape[2]), x.dtype)
    kept = [] if keep else None
    for blk in _blocks(scheme, n, out_hw, x.shape[3], x.itemsize):
        v = _input_tiles(scheme, x, blk)
        _output_block(scheme, out, matmul(v, u), blk)
        if kept is not None:
            kept.append(v)
    return out, kept


def input_grad(scheme: Scheme, gy: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The NHWC input gradient: the NHWC ``gy``, padded by one, convolved with the flipped
    weight."""
    return conv(scheme, gy, weights(weight, flipped=True))[0]


def tiles(scheme: Scheme, x: np.ndarray) -> Iterator[np.ndarray]:
    """The transformed input tiles of each block of the NHWC ``x``, as ``conv`` keeps them:
    for a weight gradient whose tiles were too large to keep."""
    x = channels_innermost(x)
    for blk in _blocks(scheme, x.shape[0], x.shape[1:3], x.shape[3], x.itemsize):
        yield _input_tiles(scheme, x, blk)


def weight_grad(
    scheme: Scheme, kept: Iterable[np.ndarray], gy: np.ndarray, channels: int
) -> np.ndarray:
    """The gradient of the kernels of ``conv``, as ``(9, Cout, Cin)``, from that of its output
    ``gy`` (NHWC) and the input tiles of its ``channels`` inputs (kept, or from ``tiles``)."""
    m, gu = scheme.m, None
    tw = _covered(scheme, gy.shape[2]) // m
    blocks = _blocks(scheme, gy.shape[0], gy.shape[1:3], channels, gy.itemsize)
    for blk, v in zip(blocks, kept, strict=True):
        part = gy[blk.n0 : blk.n1, m * blk.h0 : m * blk.h1]
        grads = _output_phases(part, m, (blk.h1 - blk.h0, tw))
        gt = _apply(scheme.output.T, grads).reshape(scheme.points, -1, gy.shape[3])
        block = matmul(gt.transpose(0, 2, 1), v)
        gu = block if gu is None else np.add(gu, block, out=gu)
    return _apply(scheme.weight.T, gu)
