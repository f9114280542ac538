"""Cached backbone features, for runs that train only the head (`data.cache_features`).

When nothing but `fc` trains, every BatchNorm layer is in eval mode and the
training transform draws no random numbers, the backbone maps each image to
the same features in every epoch. They are then computed once, in one
forward pass over the images, and the loop trains `fc` on them: each epoch
becomes a matrix product instead of a pass through the network.

The features live in the run folder as `features/<split>-<key>.npy` (float32,
one row per image, read memory-mapped) beside `<split>-<key>.json`, which
records what the key was computed from and which images were unreadable and
skipped. The key is a SHA-256 over what the features depend on: the
architecture, the backbone's weights, the transform and the images (file list
with sizes and times, or array bytes). A later run in the folder (`--resume`,
or `--overwrite` to start over) reuses a cache whose key matches, and
otherwise recomputes it, says what changed, and removes the old one. Labels
are not cached: they come from the dataset, whose images the key pins.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import engine
from cli.config import Config
from cli.data import DataLoader, ImageDataset
from cli.errors import FinetuneError
from cli.training.build import Trainee
from engine import nn
from engine.io.atomic import atomic_file, write_atomic


def head_only(trainee: Trainee, dataset: ImageDataset) -> bool:
    """Whether the backbone's output for each image stays the same for the whole run."""
    model = trainee.model
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    batchnorms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return (
        all(name.startswith("fc.") for name in trainable)
        and len(trainee.frozen_batchnorms) == len(batchnorms)
        and dataset.deterministic
    )


def backbone_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer outside `fc`: names, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if not name.startswith("fc."):
            array = np.ascontiguousarray(tensor.numpy())
            digest.update(f"{name} {array.dtype} {array.shape}\n".encode())
            digest.update(array.reshape(-1).view(np.uint8))
    return digest.hexdigest()


class Features:
    """Backbone features and labels, which the DataLoader reads as it reads images.

    A label of -1 marks an image that could not be read (data.on_bad_image=skip):
    `get` gives None for it, as the image dataset does, so batches match an uncached run.
    """

    deterministic = True

    def __init__(self, features: np.ndarray, labels: np.ndarray) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, index: int, rng: Any = None) -> tuple[np.ndarray, int] | None:
        label = int(self.labels[index])
        return None if label < 0 else (self.features[index], label)


class FeatureCacheError(FinetuneError):
    """The feature cache cannot be written (e.g. a full disk)."""


def cached_features(
    config: Config,
    model: nn.Module,
    splits: dict[str, ImageDataset],
    directory: Path,
    console: Console,
) -> list[Features]:
    """The features of each split's images, from `directory` when cached there, else computed
    and stored; the console says which, and why the features are cached at all."""
    _note(
        console,
        "Only the head trains (every other parameter is frozen, BatchNorm is in eval mode and "
        "the training transform is not random), so the backbone's features are computed once "
        f"per image and cached in {directory}; to turn this off: data.cache_features=false",
    )
    directory.mkdir(parents=True, exist_ok=True)
    data = config.data
    cache = FeatureCache(
        directory, console, data.batch_size, data.num_workers, config.run.log_every
    )
    weights = backbone_digest(model)
    return [
        cache.features(
            model, split, dataset, {"architecture": config.model.arch, "weights": weights}
        )
        for split, dataset in splits.items()
    ]


@dataclass
class FeatureCache:
    """One run folder's cached features: find, compute, store and clean up."""

    directory: Path
    console: Console
    batch_size: int
    num_workers: int
    log_every: int

    def features(
        self, model: nn.Module, split: str, dataset: ImageDataset, backbone: dict[str, str]
    ) -> Features:
        """The split's features: the cached file when its inputs match, else computed anew."""
        inputs = {
            **backbone,
            "transform": repr(dataset.transform),
            "images": dataset.samples.source.fingerprint(dataset.samples.positions),
        }
        key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
        path = self.directory / f"{split}-{key}.npy"
        shape = (len(dataset), model.fc.in_features)
        cached = _read(path, inputs, shape)
        if cached is not None:
            array, skipped = cached
            _note(self.console, f"reusing cached features {path}")
        else:
            why = self.why_recompute(split, path, inputs)
            _note(
                self.console,
                f"computing the backbone's features of the {len(dataset)} {split} images{why}",
            )
            array, skipped = self.compute(model, split, dataset, path, inputs)
            self.remove_others(split, path)
        labels = dataset.labels.copy()
        labels[skipped] = -1
        return Features(array, labels)

    def why_recompute(self, split: str, path: Path, inputs: dict[str, str]) -> str:
        """Why the split's earlier cache does not serve: what changed since (or that it is
        unreadable); empty when there is none."""
        by_age = sorted(self.directory.glob(f"{split}-*.npy"), key=lambda p: p.stat().st_mtime)
        earlier = path if path.exists() else (by_age[-1] if by_age else None)
        if earlier is None:
            return ""
        old = _meta(earlier.with_suffix(".json")).get("inputs")
        changed = [
            name for name in inputs if isinstance(old, dict) and old.get(name) != inputs[name]
        ]
        if not changed:
            return f" (the cached {earlier.name} is incomplete or unreadable)"
        return f" ({', '.join(changed)} changed since {earlier.name})"

    def compute(
        self,
        model: nn.Module,
        split: str,
        dataset: ImageDataset,
        path: Path,
        inputs: dict[str, str],
    ) -> tuple[np.ndarray, list[int]]:
        """Run the backbone over the images into `path` (atomically), with its .json beside it.

        Returns the features, memory-mapped, and the positions of the images skipped.
        """
        started = time.perf_counter()
        shape = (len(dataset), model.fc.in_features)
        loader = DataLoader(_Indexed(dataset), self.batch_size, num_workers=self.num_workers)
        try:
            with atomic_file(path) as file, self.progress(split, len(dataset)) as advance:
                written = _write_rows(file, shape, backbone_batches(model, loader), advance)
            skipped = np.flatnonzero(~written).tolist()
            meta = {"inputs": inputs, "skipped": skipped}
            write_atomic(path.with_suffix(".json"), json.dumps(meta) + "\n")
        except OSError as exc:
            raise FeatureCacheError(
                f"cannot write the feature cache {path}: {exc}. Free some space, or train "
                "without it: data.cache_features=false"
            ) from None
        seconds = time.perf_counter() - started
        _note(self.console, f"cached the features in {path} ({seconds:.1f}s)")
        return np.load(path, mmap_mode="r"), skipped

    def remove_others(self, split: str, path: Path) -> None:
        """Delete the split's caches under other keys, and temporary files left by a crash."""
        keep = {path.name, path.with_suffix(".json").name}
        for other in self.directory.iterdir():
            if other.name.lstrip(".").startswith(f"{split}-") and other.name not in keep:
                other.unlink(missing_ok=True)

    @contextlib.contextmanager
    def progress(self, split: str, total: int) -> Iterator[Callable[[int], None]]:
        """Yield `advance(images)`: a bar on an interactive console, else a line every
        `log_every` batches."""
        if self.console.is_interactive:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=self.console, transient=True) as bar:
                task = bar.add_task(f"{split} features", total=total)
                yield lambda images: bar.advance(task, images)
            return
        batches, done = 0, 0

        def advance(images: int) -> None:
            nonlocal batches, done
            batches, done = batches + 1, done + images
            if batches % self.log_every == 0 or done == total:
                _note(self.console, f"{split} features: {done}/{total} images")

        yield advance


def backbone_batches(
    model: nn.Module, loader: DataLoader
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(input of `model.fc`, labels) for each batch of the loader, computed in eval mode."""
    captured: list[np.ndarray] = []
    hook = model.fc.register_forward_pre_hook(lambda fc, args: captured.append(args[0].numpy()))
    model.eval()
    try:
        with engine.no_grad():
            for images, labels in loader:
                model(engine.from_numpy(images))
                yield captured.pop(), labels
    finally:
        hook.remove()


class _Indexed:
    """A dataset whose items carry their index instead of their label, to track skipped images."""

    deterministic = True

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def get(self, index: int, rng: Any = None) -> tuple[np.ndarray, int] | None:
        item = self.dataset.get(index)
        return None if item is None else (item[0], index)


def _write_rows(
    file: BinaryIO,
    shape: tuple[int, int],
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    advance: Callable[[int], None],
) -> np.ndarray:
    """Write (rows, row indices) batches, in index order, as a float32 .npy array of `shape`;
    rows no batch holds (skipped images) stay zero. Returns which rows were written.

    Plain writes rather than a writable memory map: a full disk then raises OSError
    instead of killing the process with SIGBUS.
    """
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
    np.lib.format.write_array_header_1_0(file, {**header, "shape": shape})
    written = np.zeros(shape[0], dtype=bool)
    start = 0
    for rows, indices in batches:
        block = np.zeros((indices[-1] + 1 - start, shape[1]), dtype=np.float32)
        block[indices - start] = rows
        file.write(block.data)
        written[indices] = True
        start += len(block)
        advance(len(block))
    if start < shape[0]:
        file.write(bytes(4 * shape[1] * (shape[0] - start)))
        advance(shape[0] - start)
    return written


def _meta(path: Path) -> dict[str, Any]:
    """A cache's .json, or {} when it is missing or unreadable."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _read(
    path: Path, inputs: dict[str, str], shape: tuple[int, int]
) -> tuple[np.ndarray, list[int]] | None:
    """The cached features at `path` and the images skipped, if made from `inputs`."""
    meta = _meta(path.with_suffix(".json"))
    if meta.get("inputs") != inputs:
        return None
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return None
    skipped = meta.get("skipped")
    if array.shape != shape or array.dtype != np.float32 or not isinstance(skipped, list):
        return None
    return array, skipped


def _note(console: Console, text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)
