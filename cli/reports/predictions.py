"""A model's predictions over a dataset: the one inference pass that evaluate, predict,
report and the end of training share."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

import engine
from cli.data import DataLoader, ImageDataset
from cli.terminal import make_console
from engine import nn
from engine.nn import functional as F


@dataclass(frozen=True)
class Predictions:
    """Log-probabilities of the images that could be read, with where they are in the dataset."""

    indices: np.ndarray  # (N,) positions in the dataset
    labels: np.ndarray  # (N,) the dataset's labels of those images
    log_probs: np.ndarray  # (N, classes) float32

    @property
    def probabilities(self) -> np.ndarray:
        return np.exp(self.log_probs)


class _Numbered:
    """A dataset whose items carry their own index in place of the label."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset
        self.deterministic = dataset.deterministic

    def __len__(self) -> int:
        return len(self.dataset)

    def get(
        self, index: int, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, int] | None:
        item = self.dataset.get(index, rng)
        return None if item is None else (item[0], index)


def predict_dataset(
    model: nn.Module,
    dataset: ImageDataset,
    batch_size: int,
    num_workers: int = 0,
    description: str = "evaluating",
) -> Predictions:
    """Run `model` (already in eval mode) over `dataset` in order, batch by batch, with a
    progress bar on stderr where someone watches (cli.terminal). Images the dataset skips
    (unreadable; see ImageDataset) are left out of the result."""
    loader = DataLoader(_Numbered(dataset), batch_size, num_workers=num_workers)
    indices, rows = [], []
    columns = (description, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    stderr = make_console(stderr=True)
    progress = Progress(*columns, console=stderr, transient=True, disable=not stderr.is_interactive)
    with progress as bar:
        task = bar.add_task(description, total=len(loader))
        with engine.no_grad():
            for images, numbers in loader:
                logits = model(engine.from_numpy(images))
                rows.append(F.log_softmax(logits, dim=1).numpy())
                indices.append(numbers)
                bar.advance(task)
    found = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
    empty = np.zeros((0, len(dataset.class_names)), dtype=np.float32)
    log_probs = np.concatenate(rows) if rows else empty
    return Predictions(found, dataset.labels[found], log_probs)
