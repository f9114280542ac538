"""Find the flat ``{name: array}`` state dict inside a loaded checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.io.errors import WeightsError

# Keys under which training scripts commonly nest the model's state dict.
_NESTING_KEYS = ("state_dict", "model")


def extract_state_dict(checkpoint: dict, path: Path) -> dict[str, np.ndarray]:
    """Return ``checkpoint`` if it maps names to arrays, else the state dict nested in it."""
    state_dict = checkpoint
    if not all(isinstance(value, np.ndarray) for value in checkpoint.values()):
        nested = [checkpoint[key] for key in _NESTING_KEYS if isinstance(checkpoint.get(key), dict)]
        if nested:
            state_dict = nested[0]
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise _not_a_state_dict(path, f"key {name!r} is not a string")
        if not isinstance(value, np.ndarray):
            raise _not_a_state_dict(path, f"entry {name!r} is of type {type(value).__name__}")
    return dict(state_dict)


def _not_a_state_dict(path: Path, detail: str) -> WeightsError:
    return WeightsError(
        f"{path} is not a state dict of tensors ({detail}); pass a file holding "
        "model.state_dict(), or a checkpoint dict with it under 'state_dict' or 'model'"
    )
