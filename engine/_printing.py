"""Format arrays exactly as torch prints tensors under its default print options."""

from __future__ import annotations

import math

import numpy as np

PRECISION = 4
THRESHOLD = 1000
EDGEITEMS = 3
LINEWIDTH = 80
PREFIX = "tensor("
_DTYPES_NEVER_SHOWN = ("int64", "bool")


class _Formatter:
    """Picks one notation and one column width for every element shown."""

    def __init__(self, values: np.ndarray) -> None:
        self.floating = values.dtype.kind == "f"
        self.int_mode = True
        self.sci_mode = False
        self.width = 1
        flat = values.reshape(-1)
        if not self.floating:
            self.width = max(len(str(v)) for v in flat.tolist())
            return
        # Notation and width are decided by the nonzero finite values only.
        finite = flat[np.isfinite(flat) & (flat != 0)].astype(np.float64)
        if finite.size == 0:
            return
        lo, hi = np.abs(finite).min(), np.abs(finite).max()
        self.int_mode = bool(np.all(finite == np.ceil(finite)))
        self.sci_mode = bool(hi / lo > 1000.0 or hi > 1.0e8 or lo < 1.0e-4)
        self.width = max(len(self._text(v)) for v in finite.tolist())

    def _text(self, value: float | int | bool) -> str:
        """Render one value without padding."""
        if not self.floating:
            return str(value)
        if self.sci_mode:
            return f"{value:.{PRECISION}e}"
        if self.int_mode:
            # A trailing dot marks integral floats; nan and inf get none.
            return f"{value:.0f}" + ("" if math.isinf(value) or math.isnan(value) else ".")
        return f"{value:.{PRECISION}f}"

    def format(self, value: float | int | bool) -> str:
        """Render one value right-aligned to the common width."""
        return self._text(value).rjust(self.width)


def _edges(array: np.ndarray) -> np.ndarray:
    """Keep only the leading and trailing EDGEITEMS entries along each long axis."""
    for axis, size in enumerate(array.shape):
        if size > 2 * EDGEITEMS:
            keep = [*range(EDGEITEMS), *range(size - EDGEITEMS, size)]
            array = np.take(array, keep, axis=axis)
    return array


def _layout(array: np.ndarray, indent: int, summarize: bool, formatter: _Formatter) -> str:
    """Lay out the nested brackets; ``indent`` is the column of the opening bracket."""
    if array.ndim == 0:
        return formatter.format(array.item())
    size = array.shape[0]
    elided = summarize and size > 2 * EDGEITEMS
    indices = [*range(EDGEITEMS), None, *range(size - EDGEITEMS, size)] if elided else range(size)
    if array.ndim == 1:
        items = [" ..." if i is None else formatter.format(array[i].item()) for i in indices]
        per_line = max(1, (LINEWIDTH - indent) // (formatter.width + 2))
        lines = [", ".join(items[i : i + per_line]) for i in range(0, len(items), per_line)]
        return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"
    blocks = [
        "..." if i is None else _layout(array[i], indent + 1, summarize, formatter) for i in indices
    ]
    separator = "," + "\n" * (array.ndim - 1) + " " * (indent + 1)
    return "[" + separator.join(blocks) + "]"


def _close(text: str, suffixes: list[str]) -> str:
    """Append the suffixes, wrapping onto a new line when the current one would get too long."""
    # Lengths are measured as torch spells them, so line breaks fall where torch puts them.
    line_length = len(text) - text.rfind("\n") + 1
    parts = [text]
    for suffix in suffixes:
        length = len(suffix.replace("engine.", "torch."))
        if line_length + length + 2 > LINEWIDTH:
            parts.append(",\n" + " " * len(PREFIX) + suffix)
            line_length = len(PREFIX) + length
        else:
            parts.append(", " + suffix)
            line_length += length + 2
    return "".join(parts) + ")"


def format_tensor(
    array: np.ndarray, *, dtype_name: str, default_float: bool, suffixes: list[str]
) -> str:
    """Return the repr torch would print for a tensor holding ``array``.

    ``default_float`` says whether the array's dtype is the default float dtype;
    ``suffixes`` are extra fields such as ``"requires_grad=True"``, appended last.
    """
    dtype = f"dtype=engine.{dtype_name}"
    if array.size == 0:
        # Nothing to infer the dtype from, so only the default float dtype goes unnamed.
        extras = [] if array.ndim == 1 else [f"size={tuple(array.shape)}"]
        extras += [] if default_float else [dtype]
        return _close(PREFIX + "[]", [*extras, *suffixes])
    summarize = array.size > THRESHOLD
    formatter = _Formatter(_edges(array) if summarize else array)
    body = _layout(array, len(PREFIX), summarize, formatter)
    shown = not default_float and dtype_name not in _DTYPES_NEVER_SHOWN
    return _close(PREFIX + body, [dtype, *suffixes] if shown else suffixes)
