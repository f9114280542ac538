"""CIFAR-10 in its "python version" layout: pickled batches in cifar-10-batches-py/.

The batches are unpickled by a loader that builds only plain containers and
numpy arrays and refuses every other object, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from cli.data.dataset import ArrayImages, Samples, Splits
from cli.errors import DataError

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles containers, numbers, strings and numpy arrays; nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _unpickle(path: Path) -> dict[bytes, Any]:
    try:
        with path.open("rb") as file:
            batch = _ArrayUnpickler(file, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 batch file missing: {path}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    if not isinstance(batch, dict):
        raise DataError(f"cannot read CIFAR-10 batch {path}: expected a dict")
    return batch


def _images_and_labels(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    batches = [_unpickle(path) for path in paths]
    try:
        data = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[b"labels"], dtype=np.int64) for b in batches])
        images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    except (KeyError, ValueError, TypeError) as exc:
        where = ", ".join(p.name for p in paths)
        raise DataError(f"not CIFAR-10 batches ({where} in {paths[0].parent}): {exc}") from None
    if len(images) != len(labels):
        raise DataError(f"CIFAR-10 batches in {paths[0].parent}: images and labels differ in count")
    return images, labels


def cifar10_splits(root: Path) -> Splits:
    """data_batch_1..5 for training, test_batch for validation, names from batches.meta."""
    if (root / FOLDER).is_dir():
        root = root / FOLDER
    names = [name.decode() for name in _unpickle(root / "batches.meta").get(b"label_names", [])]
    train_x, train_y = _images_and_labels([root / name for name in TRAIN_BATCHES])
    val_x, val_y = _images_and_labels([root / "test_batch"])
    if len(names) <= max(train_y.max(), val_y.max()):
        raise DataError(f"{root / 'batches.meta'}: label_names does not cover the labels")
    return Splits(
        Samples(ArrayImages(train_x, f"cifar10:{root}/train"), np.arange(len(train_y)), train_y),
        Samples(ArrayImages(val_x, f"cifar10:{root}/test"), np.arange(len(val_y)), val_y),
        names,
    )
