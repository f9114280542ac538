"""Read ``torch.save`` zip checkpoints without torch, through a restricted unpickler.

A ``.pth`` file is a zip archive holding ``<name>/data.pkl`` (the pickled
object), ``<name>/data/<key>`` (one raw storage per key) and
``<name>/byteorder``. The unpickler resolves only the few globals needed to
rebuild tensors and ordered dicts; any other global raises WeightsError
before it can be called, so a hostile pickle never executes code.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from engine.io.dtypes import bfloat16_to_float32
from engine.io.errors import WeightsError, corrupt, unreadable

# torch storage class -> NumPy dtype of its raw elements; bfloat16 is read as uint16.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(np.uint16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class _StorageType(NamedTuple):
    """Stands in for a ``torch.<X>Storage`` class inside the pickle."""

    name: str
    dtype: np.dtype


def read_checkpoint(path: Path, wrap: Callable[[np.ndarray], Any] = lambda a: a) -> dict:
    """Unpickle the zip checkpoint ``path``; each tensor becomes ``wrap(ndarray)``."""
    try:
        with zipfile.ZipFile(path) as archive:
            prefix = _record_prefix(archive, path)
            byteorder = "little"  # as torch assumes for files without the record
            if f"{prefix}byteorder" in archive.namelist():
                byteorder = archive.read(f"{prefix}byteorder").decode("ascii")
            if byteorder not in ("little", "big"):
                raise corrupt(path, f"unknown byte order {byteorder!r}")
            pickled = archive.read(f"{prefix}data.pkl")
            unpickler = _RestrictedUnpickler(pickled, path, archive, prefix, byteorder, wrap)
            obj = unpickler.load()
    except WeightsError:
        raise
    except OSError as exc:
        raise unreadable(path, exc) from exc
    except Exception as exc:  # any other failure while decoding untrusted bytes
        raise corrupt(path, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise WeightsError(
            f"{path} holds a {type(obj).__name__}, not a dict; "
            "save a state dict with torch.save(model.state_dict(), path)"
        )
    return obj


def _record_prefix(archive: zipfile.ZipFile, path: Path) -> str:
    """Return the folder (``"archive/"``) under which torch stored the records."""
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
    if len(pickles) != 1 or pickles[0].count("/") != 1:
        raise WeightsError(
            f"{path} is a zip file but not a torch checkpoint (no single data.pkl); "
            "pass a file written by torch.save"
        )
    return pickles[0][: -len("data.pkl")]


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can build tensors, dicts and plain values, and nothing else."""

    def __init__(
        self,
        pickled: bytes,
        path: Path,
        archive: zipfile.ZipFile,
        prefix: str,
        byteorder: str,
        wrap: Callable[[np.ndarray], Any],
    ) -> None:
        super().__init__(io.BytesIO(pickled))
        self._path = path
        self._archive = archive
        self._prefix = prefix
        self._order = "<" if byteorder == "little" else ">"
        self._wrap = wrap
        self._storages: dict[tuple[str, str], np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        other_storage = module == "torch" and name.endswith("Storage")
        if other_storage or (module, name) == ("torch._utils", "_rebuild_tensor_v3"):
            raise WeightsError(
                f"{self._path} holds a tensor of a dtype that is not supported ({module}.{name}); "
                "supported are float64/32/16, bfloat16, int64/32/16/8, uint8 and bool; "
                "convert the tensors to float32 in torch and save again"
            )
        raise WeightsError(
            f"refusing to load {self._path}: it references `{module}.{name}`, which is not "
            "a tensor; only state dicts saved with torch.save are accepted"
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        """Return the storage that ``pid = ("storage", type, key, location, numel)`` names."""
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and _is_count(pid[4])
        ):
            raise corrupt(self._path, f"unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        cache_key = (key, storage_type.name)
        if cache_key not in self._storages:
            self._storages[cache_key] = self._read_storage(storage_type, key, numel)
        return self._storages[cache_key]

    def _read_storage(self, storage_type: _StorageType, key: str, numel: int) -> np.ndarray:
        raw = self._archive.read(f"{self._prefix}data/{key}")
        dtype = storage_type.dtype
        if len(raw) < numel * dtype.itemsize:
            raise corrupt(self._path, f"storage {key} holds {len(raw)} bytes, needs more")
        stored = np.frombuffer(raw, dtype=dtype.newbyteorder(self._order), count=numel)
        array = stored.astype(dtype, copy=False)
        return bfloat16_to_float32(array) if storage_type.name == "BFloat16Storage" else array

    def _rebuild_tensor(
        self,
        storage: Any,
        storage_offset: Any,
        size: Any,
        stride: Any,
        requires_grad: Any,
        backward_hooks: Any,
        metadata: Any = None,
    ) -> Any:
        """Mirror ``torch._utils._rebuild_tensor_v2``: a strided view, copied contiguous."""
        if not (
            isinstance(storage, np.ndarray)
            and _is_count(storage_offset)
            and isinstance(size, tuple)
            and isinstance(stride, tuple)
            and len(size) == len(stride)
            and all(_is_count(n) for n in size + stride)
        ):
            raise corrupt(self._path, "malformed tensor record")
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if storage_offset > storage.size or (math.prod(size) > 0 and last >= storage.size):
            raise corrupt(self._path, "tensor extends past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            storage[storage_offset:],
            shape=size,
            strides=tuple(s * storage.itemsize for s in stride),
            writeable=False,
        )
        return self._wrap(view.copy())


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
    """Mirror ``torch._utils._rebuild_parameter``: a loaded parameter is plain data."""
    return data


def _is_count(value: Any) -> bool:
    """True for a non-negative int (bools excluded)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
