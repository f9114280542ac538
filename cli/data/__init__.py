"""Datasets for training: the bundled digits, ImageFolder, CIFAR-10 and .npz arrays.

`build_datasets(cfg.data, seed)` reads the data the config names, keeps the
listed classes, splits off validation images when the data has no split of
its own, caps the training set, and attaches torchvision-style transforms.
"""

from __future__ import annotations

import numpy as np

from cli.config import DataConfig
from cli.data.cifar10 import cifar10_splits
from cli.data.dataset import ImageDataset, Splits
from cli.data.digits import digits_splits
from cli.data.imagefolder import imagefolder_splits
from cli.data.loader import DataLoader
from cli.data.npz import npz_splits
from cli.data.splits import select_classes, stratified_split, subsample
from cli.data.transforms import make_transform
from cli.errors import DataError

__all__ = ["DataLoader", "ImageDataset", "build_datasets"]


def _read_splits(cfg: DataConfig) -> Splits:
    """The samples of the configured dataset, before class selection and splitting."""
    try:
        if cfg.dataset == "digits":
            return digits_splits()
        readers = {"imagefolder": imagefolder_splits, "cifar10": cifar10_splits, "npz": npz_splits}
        return readers[cfg.dataset](cfg.root)
    except OSError as exc:
        raise DataError(f"cannot read {cfg.dataset} data at {cfg.root}: {exc}") from None


def build_datasets(cfg: DataConfig, seed: int) -> tuple[ImageDataset, ImageDataset, list[str]]:
    """(train, val, class names). Splits and the training cap are drawn from `seed`."""
    train, val, class_names = _read_splits(cfg)
    if cfg.classes is not None:
        train = select_classes(train, class_names, cfg.classes)
        val = None if val is None else select_classes(val, class_names, cfg.classes)
        class_names = list(cfg.classes)
    rng = np.random.default_rng(seed)
    if val is None:
        train, val = stratified_split(train, cfg.val_fraction, rng)
    if cfg.limit is not None:
        train = subsample(train, cfg.limit, rng)
    return (
        ImageDataset(train, class_names, make_transform(cfg, train=True), cfg.on_bad_image),
        ImageDataset(val, class_names, make_transform(cfg, train=False), cfg.on_bad_image),
        class_names,
    )
