"""Read and encode safetensors files as NumPy arrays, with torch's dtype names."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy

from engine.io.atomic import write_atomic
from engine.io.dtypes import bfloat16_to_float32
from engine.io.errors import WeightsError, corrupt, unreadable

# safetensors dtype code -> little-endian NumPy dtype; BF16 is widened to float32.
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
_SAVABLE = {dtype.newbyteorder("=") for code, dtype in _DTYPES.items() if code != "BF16"}


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read every tensor of the safetensors file ``path`` as a writable array, by name."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise unreadable(path, exc) from exc
    try:
        entries = safetensors.deserialize(data)
    except safetensors.SafetensorError as exc:
        raise corrupt(path, exc) from exc
    arrays = {}
    for name, entry in sorted(entries, key=lambda item: item[0]):
        code = entry["dtype"]
        if code not in _DTYPES:
            raise WeightsError(
                f"{path}: tensor {name!r} has dtype {code}, which is not supported; "
                f"supported dtypes are {', '.join(_DTYPES)}; convert it to float32 and save again"
            )
        array = np.frombuffer(entry["data"], dtype=_DTYPES[code]).reshape(entry["shape"])
        arrays[name] = bfloat16_to_float32(array) if code == "BF16" else array
    return arrays


def write_arrays(
    path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> None:
    """Atomically write ``arrays`` to ``path`` as safetensors.torch.save_file would."""
    for name, array in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"cannot save {path}: state dict keys must be strings, got {name!r}")
        if array.dtype.newbyteorder("=") not in _SAVABLE:
            raise WeightsError(
                f"cannot save {path}: tensor {name!r} has dtype {array.dtype}, which "
                "safetensors files for torch cannot hold; convert it to float32"
            )
    contiguous = {name: np.asarray(array, order="C") for name, array in arrays.items()}
    meta = None if metadata is None else dict(metadata)
    try:
        write_atomic(path, safetensors.numpy.save(contiguous, metadata=meta))
    except OSError as exc:
        raise WeightsError(
            f"cannot write weights file {path}: {exc.strerror or exc}; "
            "any previous file there is unchanged; check the directory and free disk space"
        ) from exc
