"""The thread count of the OpenBLAS library that NumPy loaded, through its C entry points.

NumPy has no API for it; the library is found among the files this process has mapped
(Linux) and its ``set_num_threads`` called by name, with the prefixes and suffixes that NumPy's
and SciPy's wheels give OpenBLAS's symbols (``scipy_openblas_set_num_threads64_``). Anywhere
else (another BLAS, another OS) nothing is found and nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

PREFIXES = ("scipy_openblas", "openblas")
SUFFIXES = ("64_", "")


@functools.cache
def _entry_points() -> tuple[Callable[[int], None], Callable[[], int]] | None:
    """OpenBLAS's ``set_num_threads`` and ``get_num_threads``, or None where not found."""
    np.ones((2, 2)) @ np.ones((2, 2))  # BLAS is loaded by now
    maps = Path("/proc/self/maps")
    if not maps.exists():
        return None
    paths = {
        line.split()[-1]
        for line in maps.read_text().splitlines()
        if "openblas" in line.rsplit("/", 1)[-1].lower() and ".so" in line
    }
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in PREFIXES:
            for suffix in SUFFIXES:
                setter = getattr(library, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(library, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, setter.restype = [ctypes.c_int], None
                    getter.argtypes, getter.restype = [], ctypes.c_int
                    return setter, getter
    return None


def set_blas_threads(count: int) -> bool:
    """Make OpenBLAS use ``count`` threads; False (and nothing done) where it is not found."""
    entry = _entry_points()
    if entry is None:
        return False
    entry[0](count)
    return True


def blas_threads() -> int | None:
    """OpenBLAS's thread count, or None where it is not found."""
    entry = _entry_points()
    return None if entry is None else int(entry[1]())
