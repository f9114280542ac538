"""``pad`` with torch's convention: pairs of (before, after) amounts from the last dim backwards.

Constant padding is one op whose gradient is the opposite padding (a crop), so it is
differentiable to any order; negative amounts crop. Reflect, replicate and circular padding
gather along each padded dim with an index vector, so their gradients are scatter-adds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.autograd.function import Op
from engine.tensor import Tensor

_GATHER_MODES = ("reflect", "replicate", "circular")


class ConstantPadNd(Op):
    """Pad (or crop, for negative amounts) each dim by ``widths[d] = (before, after)``."""

    def __init__(self, widths: Sequence[tuple[int, int]], value: float) -> None:
        self.widths, self.value = tuple(widths), value

    def forward(self, x: np.ndarray) -> np.ndarray:
        shape = tuple(n + lo + hi for n, (lo, hi) in zip(x.shape, self.widths, strict=True))
        if any(n < 0 for n in shape):
            raise RuntimeError("narrow(): length must be non-negative.")
        out = np.full(shape, self.value, dtype=x.dtype)
        out[_kept(shape, _negated(self.widths))] = x[_kept(x.shape, self.widths)]
        return out

    def backward(self, gy: Tensor) -> Tensor:
        return ConstantPadNd(_negated(self.widths), 0.0)(gy)


def _negated(widths: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    return [(-lo, -hi) for lo, hi in widths]


def _kept(shape: tuple[int, ...], widths: Sequence[tuple[int, int]]) -> tuple[slice, ...]:
    """The part of an array of ``shape`` that survives cropping by the negative ``widths``."""
    return tuple(
        slice(max(-lo, 0), n - max(-hi, 0)) for n, (lo, hi) in zip(shape, widths, strict=True)
    )


def _gather_index(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """Which input position each output position copies, along one padded dim."""
    positions = np.arange(-before, size + after)
    if mode == "circular":
        return positions % size
    if mode == "replicate":
        return np.clip(positions, 0, size - 1)
    period = 2 * (size - 1)
    folded = np.abs(positions) % period if period else np.zeros_like(positions)
    return np.where(folded < size, folded, period - folded)


def _check_gather_pad(input: Tensor, pad: Sequence[int], mode: str) -> None:
    dims = len(pad) // 2
    if input.ndim not in (dims + 1, dims + 2) or dims > 3:
        raise NotImplementedError(
            f"Padding size {len(pad)} is not supported for {input.ndim}D input tensor.\n"
            "Supported combinations for non-constant padding:\n"
            "  - 2D or 3D input: padding size = 2 (pads last dimension)\n"
            "  - 3D or 4D input: padding size = 4 (pads last 2 dimensions)\n"
            "  - 4D or 5D input: padding size = 6 (pads last 3 dimensions)"
        )
    for k in range(dims):
        dim = input.ndim - 1 - k
        before, after, size = pad[2 * k], pad[2 * k + 1], input.shape[dim]
        if mode == "reflect" and max(before, after) >= size:
            raise RuntimeError(
                "Argument #4: Padding size should be less than the corresponding input "
                f"dimension, but got: padding ({before}, {after}) at dimension {dim} of input "
                f"{list(input.shape)}"
            )
        if mode == "circular" and max(before, after) > size:
            raise RuntimeError("Padding value causes wrapping around more than once.")


def pad(
    input: Tensor, pad: Sequence[int], mode: str = "constant", value: float | None = None
) -> Tensor:
    """Pad ``input``: ``pad = (last_before, last_after, second_last_before, ...)``."""
    if len(pad) % 2:
        raise RuntimeError("Padding length must be divisible by 2")
    if len(pad) > 2 * input.ndim:
        raise RuntimeError(
            "Padding length should be less than or equal to two times the input dimension but "
            f"got padding length {len(pad)} and input of dimension {input.ndim}"
        )
    if mode == "constant":
        widths = [(0, 0)] * input.ndim
        for k in range(len(pad) // 2):
            widths[input.ndim - 1 - k] = (int(pad[2 * k]), int(pad[2 * k + 1]))
        return ConstantPadNd(widths, 0.0 if value is None else value)(input)
    if mode not in _GATHER_MODES:
        raise NotImplementedError(f"Unrecognised padding mode {mode}")
    if value is not None and value != 0:
        raise RuntimeError(f'Padding mode "{mode}" doesn\'t take in value argument')
    _check_gather_pad(input, pad, mode)
    out = input
    for k in range(len(pad) // 2):
        dim = input.ndim - 1 - k
        index = _gather_index(input.shape[dim], int(pad[2 * k]), int(pad[2 * k + 1]), mode)
        out = out[(slice(None),) * dim + (index,)]
    return out
