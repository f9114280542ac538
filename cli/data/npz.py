"""Arrays in an .npz file: x_train, y_train, x_val, y_val and optional class names.

Images are NHWC or NCHW with 1 or 3 channels (or NHW), uint8 in 0..255 or
floats; floats whose maximum is at most 1 are taken as 0..1 and scaled by 255.
Everything is brought to uint8 NHWC (NHW for one channel) so all datasets share
one image path. Loaded without pickle: object arrays are refused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cli.data.dataset import ArrayImages, Samples, Splits
from cli.errors import DataError

KEYS = ("x_train", "y_train", "x_val", "y_val")


def npz_splits(path: Path) -> Splits:
    """Read the four arrays and the class names (default "0".."k-1")."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [key for key in KEYS if key not in arrays]
            if missing:
                raise DataError(f"{path}: missing arrays {missing}; expected {list(KEYS)}")
            x_train, y_train, x_val, y_val = (arrays[key] for key in KEYS)
            names = arrays["classes"].tolist() if "classes" in arrays else None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    train = _samples(path, "train", x_train, y_train)
    val = _samples(path, "val", x_val, y_val)
    top = int(max(train.labels.max(initial=0), val.labels.max(initial=0)))
    names = [str(name) for name in names] if names is not None else [str(i) for i in range(top + 1)]
    if top >= len(names):
        raise DataError(f"{path}: label {top} but only {len(names)} class names")
    return Splits(train, val, names)


def _samples(path: Path, split: str, x: np.ndarray, y: np.ndarray) -> Samples:
    images = _as_uint8_images(x, f"{path}: x_{split}")
    if y.ndim != 1 or len(y) != len(images) or not np.issubdtype(y.dtype, np.integer):
        wanted = f"{len(images)} integer labels"
        raise DataError(f"{path}: y_{split} must be {wanted}, got {y.dtype} {y.shape}")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: y_{split} has negative labels")
    source = ArrayImages(images, f"npz:{path}:{split}")
    return Samples(source, np.arange(len(y)), y.astype(np.int64))


def _as_uint8_images(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 4 and x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        x = x.transpose(0, 2, 3, 1)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] != 3):
        wanted = "images NHWC, NCHW or NHW with 1 or 3 channels"
        raise DataError(f"{what}: expected {wanted}, got {x.shape}")
    if np.issubdtype(x.dtype, np.floating):
        x = x * 255 if x.size and x.max() <= 1 else x
        x = np.clip(np.round(x), 0, 255)
    elif not np.issubdtype(x.dtype, np.integer) or (x.size and (x.min() < 0 or x.max() > 255)):
        raise DataError(f"{what}: expected uint8 values 0..255 or floats, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.uint8)
