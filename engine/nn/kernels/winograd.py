"""Winograd's minimal filtering for 3x3 stride-1 convolutions: F(2x2, 3x3) and F(4x4, 3x3).

Each m x m block of outputs comes from an (m+2) x (m+2) tile of the input padded by one. Taken
into a transformed domain of (m+2)^2 points (input tiles by ``Scheme.input``, 3x3 kernels by
``Scheme.weight``), the convolution becomes (m+2)^2 independent matrix products over channels;
``Scheme.output`` brings their results back to m x m blocks (Lavin and Gray, 2016): 2.25 times
fewer multiplications than direct for m = 2, 4 times for m = 4. The transforms are small
constant matrices applied as matrix products, so BLAS does all the arithmetic, and backward
uses their transposes. F(4x4) rounds more (its transforms reach 8 and 1/15), within float32
parity; float64 convolutions always take F(2x2), whose transforms are exact in binary.

Arrays are channels-last: NHWC images, and tiles tile-major, ``(T, P, C)`` for T tiles of P
points. A tile's window is m+2 runs of (m+2)*C contiguous input values, so gathering tiles
copies long runs (point-major planes copied runs of C: 256 bytes for 64 channels), and each
transform is one small product per tile, which OpenBLAS runs faster than one long product
summing over P. A side that is no multiple of m is computed up to the next multiple (as if the
input were padded further with zeros) and cropped. Inputs are worked through in blocks of tile
rows (``layout.row_blocks``; a block's transformed tiles are what forward keeps for the weight
gradient), and each block in chunks (``CHUNK_BYTES``) that one thread takes from the gather
through the transforms and products to the output while they are in cache: a chunk's input
rows are first copied with the zeros of the padding around them, a small copy in cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

from engine.nn.kernels.layout import (
    Block,
    Epilogue,
    Pair,
    Window,
    channels_innermost,
    cut_rows,
    row_blocks,
    zero_outside,
)
from engine.parallel import matmul, parallel


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
# at batch 64, 31 against 25 at batch 32. With chunked tiles, against one product per kernel
# offset (``direct``) at 64 tiles: 34.5 against 33.4 ms (7x7, 512 channels), 9.7 against 10.6
# (4x4, 256 channels)
MAX_COVER_F4 = 8 / 7  # F(4x4) on a side that is no multiple of 4 computes ceil(s/4)*4 outputs
# and crops: 14x14 as 16x16 took 36 ms forward and backward where F(2x2) took 41 (ResNet18's
# layer3 at 224x224, batch 16)

CHUNK_BYTES = 2 << 20  # tiles of a chunk (input or output side, the larger): forward and
# backward of ResNet18's 64-channel 56x56 layer (batch 16) took 45.4, 39.0, 35.5, 36.3 and 37.0
# ms with 0.25, 0.5, 1, 2 and 4 MiB; 128 channels 30.8 to 18.8 (best at 4), 256 40.8 to 23.4
MIN_CHUNK_TILES = 64  # fewer make slow products (2 MiB are 28 tiles of 512 channels: 57 ms
# where 64 tiles took 44, batch 32 at 7x7)

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


def _chunks(blk: Block, tw: int, tile_bytes: int) -> list[Block]:
    """The chunks of a block, relative to it: tile rows of about ``CHUNK_BYTES`` of tiles, at
    least ``MIN_CHUNK_TILES`` tiles, and at most half the block's (fixed numbers, not the
    thread count's: the products' bits depend on their sizes)."""
    tiles = max(MIN_CHUNK_TILES, CHUNK_BYTES // tile_bytes)
    tiles = min(tiles, -(-(blk.r1 - blk.r0) // 2))
    return list(cut_rows(blk.n1 - blk.n0, blk.h1 - blk.h0, tw, tiles))


def _windows(
    maps: np.ndarray, blk: Block, ch: Block, cols: int, side: int, step: int, pad: int
) -> np.ndarray:
    """``(T, side*side, C)``: copies of the ``side`` x ``side`` windows, ``step`` apart, of the
    NHWC ``maps`` padded by ``pad``, one a tile of chunk ``ch`` of block ``blk`` (``cols``
    tiles a row), with zeros where they reach past the maps."""
    part = maps[blk.n0 + ch.n0 : blk.n0 + ch.n1]
    n, h, w, c = part.shape
    rows, top = ch.h1 - ch.h0, step * (blk.h0 + ch.h0) - pad
    region = np.empty((n, step * (rows - 1) + side, step * (cols - 1) + side, c), maps.dtype)
    first, last, width = max(top, 0), min(h, top + region.shape[1]), min(w, region.shape[2] - pad)
    inside_rows, inside_cols = slice(first - top, last - top), slice(pad, pad + width)
    region[:, inside_rows, inside_cols] = part[:, first:last, :width]
    zero_outside(region, inside_rows, inside_cols)
    sn, sh, sw, sc = region.strides
    shape, strides = (n, rows, cols, side, side, c), (sn, step * sh, step * sw, sh, sw, sc)
    tiles = np.empty(shape, maps.dtype)
    tiles[...] = as_strided(region, shape, strides, writeable=False)
    return tiles.reshape(-1, side * side, c)


def _input_tiles(
    scheme: Scheme, x: np.ndarray, blk: Block, ch: Block, tw: int, out: np.ndarray | None = None
) -> np.ndarray:
    """The transformed input tiles ``(T, P, C)`` of chunk ``ch`` of block ``blk`` of the NHWC
    ``x``, padded by one (and past its bottom and right edges by as many zeros as the tiles
    reach), into ``out`` if given."""
    taps = _windows(x, blk, ch, tw, scheme.m + 2, scheme.m, 1)
    return np.matmul(scheme.input.astype(x.dtype), taps, out=out)


def _put_outputs(
    scheme: Scheme, out: np.ndarray, t: np.ndarray, blk: Block, ch: Block
) -> tuple[slice, slice]:
    """Write the m x m blocks of outputs of chunk ``ch`` of block ``blk`` from their transformed
    ``t`` ``(T, P, Cout)`` (blocks that reach past the output's bottom or right edge are
    cropped); return the images and rows of ``out`` written."""
    m, (h, w, c) = scheme.m, out.shape[1:]
    n, rows, top = ch.n1 - ch.n0, ch.h1 - ch.h0, scheme.m * (blk.h0 + ch.h0)
    cols = len(t) // (n * rows)
    blocks = np.matmul(scheme.output.astype(t.dtype), t).reshape(n, rows, cols, m, m, c)
    blocks = blocks.transpose(0, 1, 3, 2, 4, 5)  # (n, rows, m, cols, m, C): NHWC order
    images, written = slice(blk.n0 + ch.n0, blk.n0 + ch.n1), slice(top, min(h, top + m * rows))
    target = out[images, written]
    if target.shape[1:3] == (m * rows, m * cols):
        target.reshape(n, rows, m, cols, m, c)[...] = blocks
        return images, written
    whole = np.empty(blocks.shape, t.dtype)
    whole[...] = blocks
    target[...] = whole.reshape(n, m * rows, m * cols, c)[:, : target.shape[1], :w]
    return images, written


def _in_chunks(work: Callable[[Block], None], blk: Block, tw: int, tile_bytes: int) -> None:
    """``work(chunk)`` for each chunk of a block, the chunks spread over the engine's threads."""
    chunks = _chunks(blk, tw, tile_bytes)
    parallel(lambda i: work(chunks[i]), len(chunks))


def weights(weight: np.ndarray, flipped: bool = False) -> np.ndarray:
    """An OIHW 3x3 weight as ``(9, Cin, Cout)`` kernels; ``flipped``: rotated by 180 degrees
    as ``(9, Cout, Cin)``, the kernels of the input gradient."""
    if flipped:
        return weight[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(9, *weight.shape[:2])
    return weight.transpose(2, 3, 1, 0).reshape(9, weight.shape[1], weight.shape[0])


def conv(
    scheme: Scheme,
    x: np.ndarray,
    w9: np.ndarray,
    keep: bool = False,
    epilogue: Epilogue | None = None,
) -> tuple[np.ndarray, Tiles | None]:
    """The stride-1 correlation of the NHWC ``x``, padded by one, with ``(9, Cin, Cout)``
    kernels: an NHWC output of the input's height and width (``epilogue`` applied to each
    chunk's outputs); with ``keep``, also the transformed input tiles of each block."""
    x = channels_innermost(x)
    n, out_hw, (cin, cout) = x.shape[0], x.shape[1:3], w9.shape[1:]
    u = _apply(scheme.weight, w9)
    out = np.empty((n, *out_hw, cout), x.dtype)
    tw = _covered(scheme, out_hw[1]) // scheme.m
    kept = [] if keep else None
    for blk in _blocks(scheme, n, out_hw, cin, x.itemsize):
        v = np.empty((blk.r1 - blk.r0, scheme.points, cin), x.dtype) if keep else None

        def chunk(ch: Block, blk: Block = blk, v: np.ndarray | None = v) -> None:
            tiles = _input_tiles(scheme, x, blk, ch, tw, None if v is None else v[ch.r0 : ch.r1])
            products = np.matmul(tiles.transpose(1, 0, 2), u)  # (P, T, Cout)
            images, rows = _put_outputs(scheme, out, products.transpose(1, 0, 2), blk, ch)
            if epilogue is not None:
                epilogue(out[images, rows], images, rows)

        _in_chunks(chunk, blk, tw, scheme.points * max(cin, cout) * x.itemsize)
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
    tw = _covered(scheme, x.shape[2]) // scheme.m
    cin = x.shape[3]
    for blk in _blocks(scheme, x.shape[0], x.shape[1:3], cin, x.itemsize):
        v = np.empty((blk.r1 - blk.r0, scheme.points, cin), x.dtype)

        def chunk(ch: Block, blk: Block = blk, v: np.ndarray = v) -> None:
            _input_tiles(scheme, x, blk, ch, tw, v[ch.r0 : ch.r1])

        _in_chunks(chunk, blk, tw, scheme.points * cin * x.itemsize)
        yield v


def weight_grad(
    scheme: Scheme, kept: Iterable[np.ndarray], gy: np.ndarray, channels: int
) -> np.ndarray:
    """The gradient of the kernels of ``conv``, as ``(9, Cout, Cin)``, from that of its output
    ``gy`` (NHWC) and the input tiles of its ``channels`` inputs (kept, or from ``tiles``)."""
    m, gu, cout = scheme.m, None, gy.shape[3]
    gy = channels_innermost(gy)
    tw = _covered(scheme, gy.shape[2]) // m
    blocks = _blocks(scheme, gy.shape[0], gy.shape[1:3], channels, gy.itemsize)
    for blk, v in zip(blocks, kept, strict=True):
        g = np.empty((blk.r1 - blk.r0, scheme.points, cout), gy.dtype)

        def chunk(ch: Block, blk: Block = blk, g: np.ndarray = g) -> None:
            grads = _windows(gy, blk, ch, tw, m, m, 0)  # (T, m*m, Cout)
            np.matmul(scheme.output.T.astype(gy.dtype), grads, out=g[ch.r0 : ch.r1])

        _in_chunks(chunk, blk, tw, scheme.points * max(channels, cout) * gy.itemsize)
        block = matmul(g.transpose(1, 2, 0), v.transpose(1, 0, 2))  # (P, Cout, Cin)
        gu = block if gu is None else np.add(gu, block, out=gu)
    return _apply(scheme.weight.T, gu)
