"""`finetune evaluate`: accuracy, loss, per-class precision and recall, and the confusion matrix.

The images are the validation split the config defines (the same split
training used, drawn from `run.seed`); the loss is training's criterion
(cross-entropy with `schedule.label_smoothing`), so a run folder's figures
match its `metrics.jsonl` for the epoch that gave `best.safetensors`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

import engine
from cli.config import load_config
from cli.data import DataLoader, build_datasets
from cli.errors import ConfigError, FinetuneError
from cli.training.run_folder import RunFolder, check_class_count, load_trained_model
from engine import nn
from engine.nn import functional as F

MAX_MATRIX_CLASSES = 20  # wider confusion matrices do not fit a terminal


def confusion_and_loss(
    model: nn.Module, loader: DataLoader, num_classes: int, smoothing: float
) -> tuple[np.ndarray, float]:
    """The confusion matrix (rows: true class, columns: predicted) and the mean loss."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    loss_sum = 0.0
    columns = ("evaluating", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("evaluating", total=len(loader))
        with engine.no_grad():
            for images, labels in loader:
                logits = model(engine.from_numpy(images))
                loss = F.cross_entropy(logits, engine.from_numpy(labels), label_smoothing=smoothing)
                loss_sum += loss.item() * len(labels)
                np.add.at(confusion, (labels, logits.argmax(dim=1).numpy()), 1)
                bar.advance(task)
    return confusion, loss_sum / max(int(confusion.sum()), 1)


def _ratio(numerator: int, denominator: int) -> str:
    return f"{numerator / denominator:.1%}" if denominator else "-"


def class_table(confusion: np.ndarray, class_names: list[str]) -> Table:
    """Precision and recall of each class, with how many images it has and got predicted."""
    table = Table(title="Per class")
    for column in ("class", "images", "predicted", "precision", "recall"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for k, name in enumerate(class_names):
        hits, actual, predicted = confusion[k, k], confusion[k].sum(), confusion[:, k].sum()
        figures = (str(actual), str(predicted), _ratio(hits, predicted), _ratio(hits, actual))
        table.add_row(escape(name), *figures)
    return table


def matrix_table(confusion: np.ndarray, class_names: list[str]) -> Table:
    """The confusion matrix, true classes down, predicted across, the diagonal in green."""
    table = Table(title="Confusion matrix")
    table.add_column("true \\ predicted")
    for name in class_names:
        table.add_column(escape(name), justify="right")
    for k, name in enumerate(class_names):
        cells = [
            f"[green]{n}[/]" if j == k else (f"[red]{n}[/]" if n else "[dim]0[/]")
            for j, n in enumerate(confusion[k])
        ]
        table.add_row(escape(name), *cells)
    return table


def evaluate(target: Path, weights: Path | None = None, console: Console | None = None) -> None:
    """Evaluate a run folder (its best weights) or a config (with `weights`) on the val split."""
    console = console or Console()
    if target.is_dir():
        folder = RunFolder.open(target)
        config, weights = folder.config(), folder.weights_path(weights)
    else:
        config = load_config(target, check_files=False)
        weights = weights or config.model.weights
        if weights is None:
            raise ConfigError([f"{target}: model.weights is not set; pass --weights FILE"])
    _, val_set, class_names = build_datasets(config.data, config.run.seed)
    check_class_count(config.model, class_names)
    if len(val_set) == 0:
        raise FinetuneError(
            "no validation images: set data.val_fraction above 0 or add a val/ folder"
        )
    model = load_trained_model(config.model, weights)
    data = config.data
    loader = DataLoader(val_set, data.batch_size, False, config.run.seed, data.num_workers)
    smoothing = config.schedule.label_smoothing
    confusion, loss = confusion_and_loss(model, loader, len(class_names), smoothing)
    summary = Table(title="Evaluation", show_header=False)
    summary.add_row("weights", str(weights))
    summary.add_row("images", f"{int(confusion.sum()):,} (validation split)")
    summary.add_row("accuracy", _ratio(int(np.trace(confusion)), int(confusion.sum())))
    summary.add_row("loss", f"{loss:.4f} (cross-entropy, label smoothing {smoothing:g})")
    console.print(summary)
    console.print(class_table(confusion, class_names))
    if len(class_names) <= MAX_MATRIX_CLASSES:
        console.print(matrix_table(confusion, class_names))
    else:
        console.print(f"(confusion matrix left out: more than {MAX_MATRIX_CLASSES} classes)")
