"""A run's report: results.csv and the pictures, written at the end of training and by
`finetune report RUN`.

The curves come from metrics.jsonl; the confusion matrices and the gallery of mistakes
from one pass of best.safetensors over the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console

from cli.config import Config
from cli.data import ImageDataset
from cli.errors import DataError
from cli.reports import plots
from cli.reports.metrics import Scores, sample_losses
from cli.reports.predictions import Predictions, predict_dataset
from cli.reports.results import epoch_rows, write_results_csv
from cli.reports.tensorboard import Events
from cli.training.run_folder import (
    BEST,
    CONFUSION,
    CONFUSION_NORMALIZED,
    CURVES,
    MISTAKES,
    PICTURES,
    RunFolder,
    load_trained_model,
)

GALLERY_SIZE = 16
THUMBNAIL = 256  # pixels; larger images are shrunk before they go into the gallery


def best_epoch(epochs: list[dict[str, Any]]) -> int | None:
    """The epoch whose weights are best.safetensors: the first with the highest validation
    accuracy (training accuracy when there is no validation split), as the loop chooses it."""
    if not epochs:
        return None
    scores = [row["train_acc"] if row["val_acc"] is None else row["val_acc"] for row in epochs]
    return epochs[int(np.argmax(scores))]["epoch"]


@dataclass
class RunReport:
    """Everything the report reads: the run folder, its config and class names, the
    validation split (with the run's evaluation transform), or why it cannot be read."""

    folder: RunFolder
    config: Config
    class_names: list[str]
    val_set: ImageDataset | DataError

    def write(self, console: Console) -> list[Path]:
        """Write results.csv and, with matplotlib, the pictures; say which, and return them."""
        written = [write_results_csv(self.folder)]
        if plots.matplotlib_or_hint("pictures (" + ", ".join(PICTURES) + ")", console):
            written += self.curves()
            written += self.from_predictions(console)
        names = ", ".join(path.name for path in written)
        console.print(
            f"wrote {names} in {self.folder.path}", markup=False, highlight=False, soft_wrap=True
        )
        return written

    def from_predictions(self, console: Console) -> list[Path]:
        """The confusion matrices and the mistakes, from best.safetensors on the val split."""
        best, val_set = self.folder.path / BEST, self.val_set
        why_not = None
        if not best.is_file():
            why_not = f"no {BEST} yet"
        elif isinstance(val_set, DataError):
            why_not = f"the validation images cannot be read: {val_set}"
        elif not len(val_set):
            why_not = "no validation images"
        if why_not:
            skipped = f"{CONFUSION}, {CONFUSION_NORMALIZED}, {MISTAKES}"
            console.print(f"{skipped} skipped: {why_not}", markup=False, soft_wrap=True)
            return []
        model = load_trained_model(self.config.model, best)
        data = self.config.data
        predictions = predict_dataset(model, self.val_set, data.batch_size, data.num_workers)
        if not len(predictions.labels):
            return []
        return [*self.confusion_matrices(predictions), self.mistakes(predictions)]

    def curves(self) -> list[Path]:
        folder = self.folder
        rows = folder.metrics()
        epochs = [row for row in rows if "step" not in row]
        if not epochs:
            return []
        steps = [row for row in rows if "step" in row]
        title = f"{folder.path.name}: {self.config.model.arch}, {len(self.class_names)} classes"
        return [plots.curves(epochs, steps, best_epoch(epochs), title, folder.path / CURVES)]

    def confusion_matrices(self, predictions: Predictions) -> list[Path]:
        scores = Scores.compute(predictions.log_probs, predictions.labels)
        where = f"validation split, {scores.images} images, {BEST}"
        paths = [
            plots.confusion(
                scores.confusion,
                self.class_names,
                normalized=normalized,
                title=f"{title}\n({where}; accuracy {scores.accuracy:.1%})",
                path=self.folder.path / name,
            )
            for name, normalized, title in (
                (CONFUSION, False, "Confusion matrix"),
                (CONFUSION_NORMALIZED, True, "Confusion matrix, normalised by true class"),
            )
        ]
        if self.config.run.tensorboard:
            self._add_to_tensorboard(paths)
        return paths

    def mistakes(self, predictions: Predictions) -> Path:
        """The validation images with the highest loss, the worst first."""
        smoothing = self.config.schedule.label_smoothing
        losses = sample_losses(predictions.log_probs, predictions.labels, smoothing)
        worst = np.argsort(-losses, kind="stable")[:GALLERY_SIZE]
        probabilities = predictions.probabilities
        source, positions = self.val_set.samples.source, self.val_set.samples.positions
        tiles = []
        for i in worst:
            image = source.load(int(positions[predictions.indices[i]]))
            image.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.BILINEAR)
            guess = int(probabilities[i].argmax())
            tiles.append(
                plots.Tile(
                    image=image,
                    true=self.class_names[predictions.labels[i]],
                    predicted=self.class_names[guess],
                    probability=float(probabilities[i, guess]),
                    loss=float(losses[i]),
                )
            )
        title = f"Validation images with the highest loss ({BEST}); red: misclassified"
        return plots.gallery(tiles, title, self.folder.path / MISTAKES)

    def _add_to_tensorboard(self, paths: list[Path]) -> None:
        events = Events.open(self.folder.path, Console(stderr=True))
        if events is None:
            return
        step = best_epoch(epoch_rows(self.folder)) or 0
        for path in paths:
            events.image(path.stem, path, step)
        events.close()
