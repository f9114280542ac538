"""Read ``torch.save`` checkpoints without torch, through a restricted unpickler.

Two layouts exist. The zip archive (torch >= 1.6) holds ``<name>/data.pkl`` (the pickled
object), ``<name>/data/<key>`` (one raw storage per key) and ``<name>/byteorder``. The legacy
file (``_use_new_zipfile_serialization=False``, and every file before 1.6) is a sequence of
pickles: a magic number, a protocol version, system info, the object, the list of storage
keys; then each storage's element count (int64) and raw bytes. Either way the unpickler
resolves only the few globals needed to rebuild tensors and ordered dicts; any other global
raises WeightsError before it can be called, so a hostile pickle never executes code.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

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
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"


class _StorageType(NamedTuple):
    """Stands in for a ``torch.<X>Storage`` class inside the pickle."""

    name: str
    dtype: np.dtype


# (storage type, key, element count) -> the storage's elements, or None while only scanning
StorageSource = Callable[[_StorageType, str, int], "np.ndarray | None"]


def read_checkpoint(path: Path, wrap: Callable[[np.ndarray], Any] = lambda a: a) -> dict:
    """Unpickle the checkpoint ``path`` (zip or legacy); each tensor becomes ``wrap(ndarray)``."""
    try:
        with path.open("rb") as f:
            zipped = f.read(4) == _ZIP_MAGIC
        obj = _read_zip(path, wrap) if zipped else _read_legacy(path, wrap)
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


def _read_zip(path: Path, wrap: Callable[[np.ndarray], Any]) -> Any:
    with zipfile.ZipFile(path) as archive:
        prefix = _record_prefix(archive, path)
        byteorder = "little"  # as torch assumes for files without the record
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii")
        if byteorder not in ("little", "big"):
            raise corrupt(path, f"unknown byte order {byteorder!r}")
        order = "<" if byteorder == "little" else ">"

        def storage(storage_type: _StorageType, key: str, numel: int) -> np.ndarray:
            raw = archive.read(f"{prefix}data/{key}")
            return _decode(raw, storage_type, numel, order, path, key)

        pickled = io.BytesIO(archive.read(f"{prefix}data.pkl"))
        return _RestrictedUnpickler(pickled, path, storage, wrap).load()


def _read_legacy(path: Path, wrap: Callable[[np.ndarray], Any]) -> Any:
    """Read the legacy layout: the object's pickle is read twice, first only to learn each
    storage's type and size (its data follows the pickle), then to build the tensors."""
    with path.open("rb") as f:
        if _plain(f, path) != LEGACY_MAGIC:
            raise WeightsError(
                f"{path} is neither a safetensors file nor a torch checkpoint; "
                "pass a file written by safetensors or by torch.save"
            )
        if (protocol := _plain(f, path)) != LEGACY_PROTOCOL:
            raise corrupt(path, f"unsupported legacy protocol {protocol!r}")
        sys_info = _plain(f, path)
        order = (
            "<" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else ">"
        )
        start = f.tell()
        found: dict[str, tuple[_StorageType, int]] = {}

        def scan(storage_type: _StorageType, key: str, numel: int) -> None:
            found[key] = (storage_type, numel)

        _RestrictedUnpickler(f, path, scan, wrap, legacy=True).load()
        storages = {}
        for key in _plain(f, path):
            if key not in found:
                raise corrupt(path, f"storage {key!r} is not used by any tensor")
            storage_type, numel = found[key]
            count = int(np.frombuffer(f.read(8), order + "i8")[0])
            if count != numel:
                raise corrupt(path, f"storage {key} holds {count} elements, expected {numel}")
            raw = f.read(numel * storage_type.dtype.itemsize)
            storages[key] = _decode(raw, storage_type, numel, order, path, key)
        f.seek(start)
        source = lambda storage_type, key, numel: storages[key]  # noqa: E731
        return _RestrictedUnpickler(f, path, source, wrap, legacy=True).load()


def _plain(f: BinaryIO, path: Path) -> Any:
    """One pickle of plain values (the legacy header and key list): no global is allowed."""

    def no_storage(storage_type: _StorageType, key: str, numel: int) -> None:
        raise corrupt(path, "unexpected storage in a legacy header")

    return _RestrictedUnpickler(f, path, no_storage, lambda a: a, plain=True).load()


def _decode(
    raw: bytes, storage_type: _StorageType, numel: int, order: str, path: Path, key: str
) -> np.ndarray:
    """A storage's elements from its raw bytes in the file's byte ``order``."""
    dtype = storage_type.dtype
    if len(raw) < numel * dtype.itemsize:
        raise corrupt(path, f"storage {key} holds {len(raw)} bytes, needs more")
    stored = np.frombuffer(raw, dtype=dtype.newbyteorder(order), count=numel)
    array = stored.astype(dtype, copy=False)
    return bfloat16_to_float32(array) if storage_type.name == "BFloat16Storage" else array


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
        file: BinaryIO,
        path: Path,
        storage: StorageSource,
        wrap: Callable[[np.ndarray], Any],
        legacy: bool = False,
        plain: bool = False,
    ) -> None:
        super().__init__(file)
        self._path = path
        self._storage = storage
        self._wrap = wrap
        self._legacy = legacy  # persistent ids carry view metadata
        self._plain = plain  # no global at all
        self._storages: dict[tuple[str, str], np.ndarray | None] = {}

    def find_class(self, module: str, name: str) -> Any:
        found = None if self._plain else self._tensor_global(module, name)
        if found is None:
            raise WeightsError(
                f"refusing to load {self._path}: it references `{module}.{name}`, which is not "
                "a tensor; only state dicts saved with torch.save are accepted"
            )
        return found

    def _tensor_global(self, module: str, name: str) -> Any:
        """What a pickle of tensors may reference by this name, or None."""
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
        return None

    def persistent_load(self, pid: Any) -> np.ndarray | None:
        """Return the storage that ``pid = ("storage", type, key, location, numel)`` names
        (legacy files add view metadata: None, or (view key, offset, size) into the storage)."""
        if not (
            isinstance(pid, tuple)
            and len(pid) == (6 if self._legacy else 5)
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and _is_count(pid[4])
        ):
            raise corrupt(self._path, f"unexpected persistent id {pid!r}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        cache_key = (key, storage_type.name)
        if cache_key not in self._storages:
            self._storages[cache_key] = self._storage(storage_type, key, numel)
        storage = self._storages[cache_key]
        view = pid[5] if self._legacy else None
        if view is None or storage is None:
            return storage
        if not (isinstance(view, tuple) and len(view) == 3 and all(map(_is_count, view[1:]))):
            raise corrupt(self._path, f"unexpected storage view {view!r}")
        return storage[view[1] : view[1] + view[2]]

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
        """Mirror ``torch._utils._rebuild_tensor_v2``: a strided view, copied contiguous (None
        while scanning a legacy file, before its storages are read)."""
        if storage is None:
            return None
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
