"""A folder of class folders of images, read exactly as torchvision's ImageFolder reads it.

`root/train/<class>/...` and `root/val/<class>/...` give both splits;
otherwise `root/<class>/...` (or `root/train/<class>/...` alone) is one pool
that is split by data.val_fraction.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cli.data.dataset import FileImages, Samples, Splits
from cli.errors import DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def find_classes(directory: Path) -> tuple[list[str], dict[str, int]]:
    """Class names (the sorted sub-folder names) and their indices."""
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise DataError(f"Couldn't find any class folder in {directory}.")
    return classes, {name: index for index, name in enumerate(classes)}


def make_dataset(directory: Path, class_to_idx: dict[str, int]) -> list[tuple[Path, int]]:
    """(path, class index) of every image, classes in name order, files walked in sorted order."""
    instances = []
    found = set()
    for name in sorted(class_to_idx):
        class_dir = directory / name
        if not class_dir.is_dir():
            continue
        for folder, _, files in sorted(os.walk(class_dir, followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMG_EXTENSIONS):
                    instances.append((Path(folder) / file, class_to_idx[name]))
                    found.add(name)
    empty = set(class_to_idx) - found
    if empty:
        raise DataError(
            f"Found no valid file for the classes {', '.join(sorted(empty))}. "
            f"Supported extensions are: {', '.join(IMG_EXTENSIONS)}"
        )
    return instances


def imagefolder_splits(root: Path) -> Splits:
    """Read root's class folders, with their own val split when root has train/ and val/."""
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir():
        train_dir = root
    classes, class_to_idx = find_classes(train_dir)
    train = _samples(train_dir, class_to_idx)
    if train_dir == root or not val_dir.is_dir():
        return Splits(train, None, classes)
    val_classes, _ = find_classes(val_dir)
    if val_classes != classes:
        raise DataError(
            f"{val_dir} must hold the same class folders as {train_dir}; "
            f"only in train: {sorted(set(classes) - set(val_classes))}, "
            f"only in val: {sorted(set(val_classes) - set(classes))}"
        )
    return Splits(train, _samples(val_dir, class_to_idx), classes)


def _samples(directory: Path, class_to_idx: dict[str, int]) -> Samples:
    instances = make_dataset(directory, class_to_idx)
    labels = np.array([label for _, label in instances], dtype=np.int64)
    source = FileImages([path for path, _ in instances], directory)
    return Samples(source, np.arange(len(instances)), labels)
