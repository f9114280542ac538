"""A folder of class folders of images, read exactly as torchvision's ImageFolder reads it.

`root/train/<class>/...` and `root/val/<class>/...` give both splits;
otherwise `root/<class>/...` (or `root/train/<class>/...` alone) is one pool
that is split by data.val_fraction. Beside `root/train/`, an optional
`root/test/<class>/...` is a test split, read only by `finetune evaluate --split test`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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


def list_images(paths: Sequence[Path]) -> list[Path]:
    """The files given, and the images under the folders given (recursively, in sorted
    order, by extension), in the order given."""
    found = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        for folder, _, files in sorted(os.walk(path, followlinks=True)):
            found += [Path(folder) / f for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
    return found


def imagefolder_splits(root: Path) -> Splits:
    """Read root's class folders, with their own val split when root has train/ and val/."""
    train_dir, val_dir = root / "train", root / "val"
    if not train_dir.is_dir():
        train_dir = root
    classes, class_to_idx = find_classes(train_dir)
    train = _samples(train_dir, class_to_idx)
    if train_dir == root or not val_dir.is_dir():
        return Splits(train, None, classes)
    return Splits(train, _other_split(val_dir, train_dir, class_to_idx), classes)


def imagefolder_test(root: Path) -> Samples | None:
    """The samples of `root/test/` (None without `root/train/` and `root/test/`)."""
    train_dir, test_dir = root / "train", root / "test"
    if not (train_dir.is_dir() and test_dir.is_dir()):
        return None
    _, class_to_idx = find_classes(train_dir)
    return _other_split(test_dir, train_dir, class_to_idx)


def _other_split(directory: Path, train_dir: Path, class_to_idx: dict[str, int]) -> Samples:
    """The samples of a split folder beside `train_dir`, which must hold the same classes."""
    classes, _ = find_classes(directory)
    if classes != sorted(class_to_idx):
        raise DataError(
            f"{directory} must hold the same class folders as {train_dir}; "
            f"only in train: {sorted(set(class_to_idx) - set(classes))}, "
            f"only in {directory.name}: {sorted(set(classes) - set(class_to_idx))}"
        )
    return _samples(directory, class_to_idx)


def _samples(directory: Path, class_to_idx: dict[str, int]) -> Samples:
    instances = make_dataset(directory, class_to_idx)
    labels = np.array([label for _, label in instances], dtype=np.int64)
    source = FileImages([path for path, _ in instances], directory)
    return Samples(source, np.arange(len(instances)), labels)
