"""Weights I/O: safetensors in and out, torch ``.pth`` checkpoints in, without torch.

Every failure raises :class:`WeightsError` with a message naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engine.io.errors import WeightsError
from engine.io.paths import checked_file, detect_format
from engine.io.safetensors_file import read_arrays, write_arrays
from engine.io.state_dict import extract_state_dict
from engine.io.torch_pickle import read_checkpoint

__all__ = [
    "WeightsError",
    "load_safetensors",
    "load_state_dict_file",
    "load_torch_checkpoint",
    "save_safetensors",
]


def load_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """Load a safetensors file as ``{name: Tensor}``; bfloat16 becomes float32."""
    path = checked_file(path)
    if detect_format(path) != "safetensors":
        raise WeightsError(f"{path} is not a safetensors file; use load_state_dict_file for .pth")
    return _to_tensors(read_arrays(path))


def save_safetensors(
    state_dict: Mapping[str, Any],
    path: str | os.PathLike,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Atomically save Tensors or NumPy arrays to ``path`` as safetensors.torch.save_file would.

    On failure the previous file at ``path``, if any, is left intact.
    """
    arrays = {name: _to_numpy(name, value) for name, value in state_dict.items()}
    write_arrays(Path(path), arrays, metadata)


def load_torch_checkpoint(path: str | os.PathLike) -> dict:
    """Load a ``torch.save`` checkpoint (zip, or the legacy pre-1.6 layout) without torch; its
    tensors become Tensors.

    Only tensors, ordered dicts and plain Python values are rebuilt; any other
    object in the pickle raises WeightsError before it is created.
    """
    path = checked_file(path)
    if detect_format(path) not in ("zip", "legacy"):
        raise WeightsError(f"{path} is not a torch.save checkpoint; use load_safetensors")
    from engine import from_numpy

    return read_checkpoint(path, wrap=from_numpy)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load ``{name: Tensor}`` from a safetensors file or a torch ``.pth``, by content.

    A ``.pth`` may hold the state dict itself or nest it under ``"state_dict"``
    or ``"model"``.
    """
    path = checked_file(path)
    if detect_format(path) == "safetensors":
        return _to_tensors(read_arrays(path))
    return _to_tensors(extract_state_dict(read_checkpoint(path), path))


def _to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    from engine import from_numpy

    return {name: from_numpy(array) for name, array in arrays.items()}


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        return value.detach().numpy()
    raise TypeError(f"cannot save {name!r}: expected a Tensor or numpy array, got {type(value)}")
