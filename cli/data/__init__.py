"""Datasets for training: the bundled digits, ImageFolder, CIFAR-10 and .npz arrays.

`build_datasets(cfg.data, seed)` reads the data the config names, keeps the
listed classes, splits off validation images when the data has no split of
its own, caps the training set, and attaches torchvision-style transforms.
"""

from __future__ import annotations

import numpy as np

from cli.config import DataConfig
from cli.data.cifar10 import cifar10_splits
from cli.data.dataset import ImageDataset, Samples, Splits
from cli.data.digits import digits_splits
from cli.data.imagefolder import imagefolder_splits, imagefolder_test
from cli.data.loader import DataLoader
from cli.data.npz import npz_splits
from cli.data.splits import select_classes, stratified_split, subsample
from cli.data.transforms import make_transform
from cli.errors import DataError

__all__ = ["DataLoader", "ImageDataset", "build_datasets", "build_split"]


def _read_splits(cfg: DataConfig) -> Splits:
    """The samples of the configured dataset, before class selection and splitting."""
    try:
        if cfg.dataset == "digits":
            return digits_splits()
        readers = {"imagefolder": imagefolder_splits, "cifar10": cifar10_splits, "npz": npz_splits}
        return readers[cfg.dataset](cfg.root)
    except OSError as exc:
        raise DataError(f"cannot read {cfg.dataset} data at {cfg.root}: {exc}") from None


def _choose(cfg: DataConfig, seed: int) -> tuple[dict[str, Samples | None], list[str]]:
    """The samples of each split ("train", "val", "test"; None where the data has no test
    split) after class selection, the validation split and the training cap."""
    train, val, class_names = _read_splits(cfg)
    test = imagefolder_test(cfg.root) if cfg.dataset == "imagefolder" else None
    if cfg.classes is not None:
        train, val, test = (
            None if samples is None else select_classes(samples, class_names, cfg.classes)
            for samples in (train, val, test)
        )
        class_names = list(cfg.classes)
    rng = np.random.default_rng(seed)
    if val is None:
        train, val = stratified_split(train, cfg.val_fraction, rng)
    if cfg.limit is not None:
        train = subsample(train, cfg.limit, rng)
    return {"train": train, "val": val, "test": test}, class_names


def build_datasets(cfg: DataConfig, seed: int) -> tuple[ImageDataset, ImageDataset, list[str]]:
    """(train, val, class names). Splits and the training cap are drawn from `seed`."""
    splits, class_names = _choose(cfg, seed)
    train = _dataset(cfg, splits["train"], class_names, train=True)
    return train, _dataset(cfg, splits["val"], class_names, train=False), class_names


def _dataset(
    cfg: DataConfig, samples: Samples, class_names: list[str], train: bool
) -> ImageDataset:
    return ImageDataset(samples, class_names, make_transform(cfg, train=train), cfg.on_bad_image)


def build_split(cfg: DataConfig, seed: int, split: str) -> tuple[ImageDataset, list[str]]:
    """One split ("train", "val" or "test") with the evaluation transform, and the class names;
    the same images training saw (or held out) for that seed."""
    splits, class_names = _choose(cfg, seed)
    samples = splits[split]
    if samples is None:
        fix = (
            f"add {cfg.root}/test/<class>/... beside {cfg.root}/train/"
            if cfg.dataset == "imagefolder"
            else "only an ImageFolder (data.dataset=imagefolder) has one"
        )
        raise DataError(f"the {cfg.dataset} data has no {split} split: {fix}; or use val")
    return _dataset(cfg, samples, class_names, train=False), class_names
