"""Winograd's F(2x2, 3x3) for 3x3 stride-1 convolutions: 2.25 times fewer multiplications.

Each 2x2 block of outputs comes from a 4x4 tile of the input padded by one. Taken into a
16-point transformed domain (input tiles by ``INPUT``, 3x3 kernels by ``WEIGHT``), the
convolution becomes 16 independent matrix products over channels; ``OUTPUT`` brings their
results back to 2x2 blocks (Lavin and Gray, 2016). The transforms are small constant
matrices applied as matrix products, so BLAS does all the arithmetic, and backward uses
their transposes. Arrays are channels-last: NHWC images of even height and width, tiles as
``(16, T, C)`` for T tiles. Large inputs are worked through in blocks of tiles
(``layout.row_blocks``) that stay in cache.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from engine.nn.kernels.layout import Block, Pair, Window, pad_nhwc, row_blocks

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
INPUT = np.kron(_BT, _BT)  # (16, 16): a flattened 4x4 input tile to the transformed domain
WEIGHT = np.kron(_G, _G)  # (16, 9): a flattened 3x3 kernel to the transformed domain
OUTPUT = np.kron(_AT, _AT)  # (4, 16): back to a flattened 2x2 block of outputs

MIN_SIZE = 4  # smaller outputs have too few tiles for efficient matrix products

Tiles = list[np.ndarray]  # the transformed input tiles of each block, kept for backward


def fits(win: Window, pads: tuple, out_hw: Pair, groups: int) -> bool:
    """Whether a convolution is one that F(2x2, 3x3) computes here: 3x3, stride 1, no
    dilation, padding 1, one group, an even output of at least ``MIN_SIZE`` a side."""
    return (
        win == Window((3, 3), (1, 1), (1, 1))
        and pads == (1, 1, 1, 1)
        and groups == 1
        and all(size % 2 == 0 and size >= MIN_SIZE for size in out_hw)
    )


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``matrix @ points`` over the first axis of ``points`` (any trailing shape)."""
    flat = points.reshape(points.shape[0], -1)
    return (matrix.astype(points.dtype) @ flat).reshape(matrix.shape[0], *points.shape[1:])


def _blocks(n: int, out_hw: Pair, channels: int, itemsize: int) -> Iterator[Block]:
    """Blocks of tile rows (two output rows each) of ``n`` images of ``channels`` inputs."""
    return row_blocks(n, out_hw[0] // 2, out_hw[1] // 2, 16 * channels * itemsize)


def _input_tiles(xp: np.ndarray, blk: Block) -> np.ndarray:
    """The transformed 4x4 tiles ``(16, T, C)`` of one block of the padded ``xp``."""
    tw, c = (xp.shape[2] - 2) // 2, xp.shape[3]
    part = xp[blk.n0 : blk.n1, 2 * blk.h0 : 2 * blk.h1 + 2]
    th = blk.h1 - blk.h0
    taps = np.empty((16, blk.n1 - blk.n0, th, tw, c), xp.dtype)
    for a in range(4):
        for b in range(4):
            taps[4 * a + b] = part[:, a : a + 2 * th : 2, b : b + 2 * tw : 2]
    return _apply(INPUT, taps).reshape(16, -1, c)


def _output_block(out: np.ndarray, m: np.ndarray, blk: Block) -> None:
    """Write the 2x2 blocks of outputs of one block from their transformed ``m``."""
    part = out[blk.n0 : blk.n1, 2 * blk.h0 : 2 * blk.h1]
    n, h, w, c = part.shape
    blocks = _apply(OUTPUT, m).reshape(2, 2, n, h // 2, w // 2, c)
    for a in range(2):
        for b in range(2):
            part[:, a::2, b::2] = blocks[a, b]


def weights(weight: np.ndarray, flipped: bool = False) -> np.ndarray:
    """An OIHW 3x3 weight as ``(9, Cin, Cout)`` kernels; ``flipped``: rotated by 180 degrees
    as ``(9, Cout, Cin)``, the kernels of the input gradient."""
    if flipped:
        return weight[:, :, ::-1, ::-1].transpose(2, 3, 0, 1).reshape(9, *weight.shape[:2])
    return weight.transpose(2, 3, 1, 0).reshape(9, weight.shape[1], weight.shape[0])


def conv(xp: np.ndarray, w9: np.ndarray, keep: bool = False) -> tuple[np.ndarray, Tiles | None]:
    """The stride-1 correlation of the NHWC ``xp`` (padded by one) with ``(9, Cin, Cout)``
    kernels, NHWC; with ``keep``, also the transformed input tiles of each block."""
    n, hp, wp, _ = xp.shape
    u = _apply(WEIGHT, w9)
    out = np.empty((n, hp - 2, wp - 2, w9.shape[2]), xp.dtype)
    kept = [] if keep else None
    for blk in _blocks(n, (hp - 2, wp - 2), xp.shape[3], xp.itemsize):
        v = _input_tiles(xp, blk)
        _output_block(out, np.matmul(v, u), blk)
        if kept is not None:
            kept.append(v)
    return out, kept


def input_grad(gy: np.ndarray, weight: np.ndarray, pads: tuple) -> np.ndarray:
    """The NHWC input gradient: the padded NHWC ``gy`` convolved with the flipped weight."""
    out, _ = conv(pad_nhwc(gy, pads), weights(weight, flipped=True))
    return out


def weight_grad(kept: Tiles, gy: np.ndarray) -> np.ndarray:
    """The gradient of the kernels of ``conv``, as ``(9, Cout, Cin)``, from that of its output
    ``gy`` (NHWC) and the input tiles ``conv`` kept."""
    gu = None
    blocks = _blocks(gy.shape[0], gy.shape[1:3], kept[0].shape[2], gy.itemsize)
    for blk, v in zip(blocks, kept, strict=True):
        part = gy[blk.n0 : blk.n1, 2 * blk.h0 : 2 * blk.h1]
        n, h, w, c = part.shape
        grads = np.empty((4, n, h // 2, w // 2, c), gy.dtype)
        for a in range(2):
            for b in range(2):
                grads[2 * a + b] = part[:, a::2, b::2]
        gm = _apply(OUTPUT.T, grads).reshape(16, -1, c)
        block = np.matmul(gm.transpose(0, 2, 1), v)
        gu = block if gu is None else np.add(gu, block, out=gu)
    return _apply(WEIGHT.T, gu)
