"""The bundled UCI handwritten digits: 1,797 8x8 grayscale images of 0-9 (CC BY 4.0)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from cli.data.dataset import ArrayImages, Samples, Splits

DIGITS_FILE = Path(__file__).with_name("digits.csv.gz")
CLASS_NAMES = [str(digit) for digit in range(10)]


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Images as float32 (1797, 8, 8) in [0, 1] (the 0..16 pixel counts / 16), labels int64."""
    with gzip.open(DIGITS_FILE, "rt") as rows:
        table = np.loadtxt(rows, delimiter=",", dtype=np.float32)
    images = table[:, :64].reshape(-1, 8, 8) / 16
    return images, table[:, 64].astype(np.int64)


def digits_splits() -> Splits:
    """All the digits as one pool (they have no validation split of their own)."""
    images, labels = load_digits()
    samples = Samples(ArrayImages(images, "digits"), np.arange(len(labels)), labels)
    return Splits(samples, None, CLASS_NAMES)
