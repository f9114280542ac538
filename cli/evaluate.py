"""`finetune evaluate`: loss, top-1 and top-5 accuracy, per-class precision, recall and F1,
their macro and weighted averages, and the confusion matrix, on one split of the data.

The images are the split the config defines (validation by default: the same split
training used, drawn from `run.seed`), or an ImageFolder given with `--data`; the loss is
training's criterion (cross-entropy with `schedule.label_smoothing`), so a run folder's
figures match its `metrics.jsonl` for the epoch that gave `best.safetensors`. `--json`
writes every figure the tables show (the format is in the README), `--csv` the per-class
table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.config import Config, load_config
from cli.data import build_split
from cli.errors import ConfigError, FinetuneError
from cli.reports.files import write_csv, write_json
from cli.reports.metrics import Scores
from cli.reports.predictions import predict_dataset
from cli.training.run_folder import RunFolder, check_class_count, load_trained_model

SPLITS = ("val", "test", "train")
SPLIT_NAMES = {"val": "validation split", "test": "test split", "train": "training split"}
MAX_MATRIX_CLASSES = 20  # wider confusion matrices do not fit a terminal
JSON_FORMAT = "finetune.evaluate.v1"


@dataclass(frozen=True)
class Evaluation:
    """What was evaluated, on which images, and the scores."""

    weights: Path
    data: str  # the dataset, or the folder given with --data
    split: str  # val, test, train, or "all" for every image of a --data folder
    class_names: list[str]
    smoothing: float
    scores: Scores
    skipped: dict[str, str]  # unreadable images left out (data.on_bad_image=skip), by path

    def to_json(self) -> dict[str, Any]:
        """Every figure of the tables, as plain data (NaN where a ratio is undefined)."""
        scores, classes = self.scores, self.scores.classes
        return {
            "format": JSON_FORMAT,
            "weights": str(self.weights),
            "data": self.data,
            "split": self.split,
            "images": scores.images,
            "skipped": [{"path": path, "error": error} for path, error in self.skipped.items()],
            "loss": scores.loss,
            "label_smoothing": self.smoothing,
            "accuracy": scores.accuracy,
            "top5_accuracy": scores.top_k_accuracy,
            "top_k": scores.top_k,
            "classes": self.class_names,
            "per_class": [
                {
                    "class": name,
                    "images": int(classes.images[k]),
                    "predicted": int(classes.predicted[k]),
                    "precision": float(classes.precision[k]),
                    "recall": float(classes.recall[k]),
                    "f1": float(classes.f1[k]),
                }
                for k, name in enumerate(self.class_names)
            ],
            **classes.averages(),
            "confusion_matrix": scores.confusion.tolist(),
        }

    def csv_rows(self) -> list[list[Any]]:
        """The per-class table, then its macro and weighted averages."""
        classes = self.scores.classes
        rows: list[list[Any]] = [
            [
                name,
                int(classes.images[k]),
                int(classes.predicted[k]),
                *(_number(getattr(classes, key)[k]) for key in ("precision", "recall", "f1")),
            ]
            for k, name in enumerate(self.class_names)
        ]
        images, predicted = int(classes.images.sum()), int(classes.predicted.sum())
        for name, average in classes.averages().items():
            rows.append([f"{name} avg", images, predicted, *average.values()])
        return rows


CSV_HEADER = ("class", "images", "predicted", "precision", "recall", "f1")


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def evaluate(
    target: Path,
    split: str = "val",
    data: Path | None = None,
    overrides: Sequence[str] = (),
    weights: Path | None = None,
    json_file: Path | None = None,
    csv_file: Path | None = None,
    console: Console | None = None,
) -> Evaluation:
    """Evaluate a run folder (its best weights) or a config (with `weights`) on a split."""
    console = console or Console()
    config, weights, run_classes = _what_to_evaluate(target, overrides, weights)
    config, split = _on_folder(config, data, split)
    read = "train" if split == "all" else split  # a --data pool is all "train" (val_fraction 0)
    dataset, class_names = build_split(config.data, config.run.seed, read)
    check_class_count(config.model, class_names)
    if run_classes is not None and class_names != run_classes:
        raise FinetuneError(
            f"the data's classes {class_names} are not the run's {run_classes} "
            f"({target / 'classes.json'}); the folders must be named as when it trained"
        )
    if len(dataset) == 0:
        fix = "; set data.val_fraction above 0 or add a val/ folder" if split == "val" else ""
        raise FinetuneError(f"no images in the {SPLIT_NAMES.get(split, split)}{fix}")
    model = load_trained_model(config.model, weights)
    predictions = predict_dataset(model, dataset, config.data.batch_size, config.data.num_workers)
    smoothing = config.schedule.label_smoothing
    evaluation = Evaluation(
        weights=weights,
        data=str(config.data.root) if config.data.root else config.data.dataset,
        split=split,
        class_names=class_names,
        smoothing=smoothing,
        scores=Scores.compute(predictions.log_probs, predictions.labels, smoothing),
        skipped=dataset.skip_reasons,
    )
    show(evaluation, console)
    if json_file is not None:
        write_json(json_file, evaluation.to_json())
    if csv_file is not None:
        write_csv(csv_file, CSV_HEADER, evaluation.csv_rows())
    return evaluation


def _what_to_evaluate(
    target: Path, overrides: Sequence[str], weights: Path | None
) -> tuple[Config, Path, list[str] | None]:
    """The config, the weights and (for a run folder) the run's class names."""
    if target.is_dir():
        folder = RunFolder.open(target)
        config = folder.config(overrides)
        return config, folder.weights_path(weights), folder.class_names(config.model.num_classes)
    config = load_config(target, overrides, check_files=False)
    weights = weights or config.model.weights
    if weights is None:
        raise ConfigError([f"{target}: model.weights is not set; pass --weights FILE"])
    return config, weights, None


def _on_folder(config: Config, data: Path | None, split: str) -> tuple[Config, str]:
    """With --data DIR: the ImageFolder at DIR, its `split` when it has train/ (and val/,
    test/), else every image in it (split "all")."""
    if data is None:
        return config, split
    pool = not (data / "train").is_dir()
    replaced = dataclasses.replace(
        config.data,
        dataset="imagefolder",
        root=data.resolve(),
        **({"val_fraction": 0.0, "limit": None} if pool else {}),
    )
    return dataclasses.replace(config, data=replaced), "all" if pool else split


def show(evaluation: Evaluation, console: Console) -> None:
    """The summary, the per-class table and (up to MAX_MATRIX_CLASSES) the confusion matrix."""
    scores, names = evaluation.scores, evaluation.class_names
    where = "every image" if evaluation.split == "all" else SPLIT_NAMES[evaluation.split]
    summary = Table(title="Evaluation", show_header=False)
    summary.add_row("weights", escape(str(evaluation.weights)))
    summary.add_row("data", escape(evaluation.data))
    summary.add_row("images", f"{scores.images:,} ({where})")
    summary.add_row("accuracy", f"{scores.accuracy:.1%}")
    summary.add_row(f"top-{scores.top_k} accuracy", f"{scores.top_k_accuracy:.1%}")
    summary.add_row(
        "loss", f"{scores.loss:.4f} (cross-entropy, label smoothing {evaluation.smoothing:g})"
    )
    if evaluation.skipped:
        summary.add_row("skipped", f"{len(evaluation.skipped)} unreadable image(s)")
    console.print(summary)
    console.print(class_table(evaluation))
    if len(names) <= MAX_MATRIX_CLASSES:
        console.print(matrix_table(scores.confusion, names))
    else:
        console.print(
            f"(confusion matrix left out: {len(names)} classes are too wide for a terminal; "
            "--json FILE has it, and finetune report RUN draws it)"
        )


def _percent(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.1%}"


def class_table(evaluation: Evaluation) -> Table:
    """Precision, recall and F1 of each class, with how many images it has and got predicted;
    then the macro and weighted averages."""
    table = Table(title="Per class")
    for column in CSV_HEADER:
        table.add_column(column, justify="left" if column == "class" else "right")
    classes = evaluation.scores.classes
    for k, name in enumerate(evaluation.class_names):
        ratios = (classes.precision[k], classes.recall[k], classes.f1[k])
        counts = (str(classes.images[k]), str(classes.predicted[k]))
        table.add_row(escape(name), *counts, *map(_percent, ratios))
    table.add_section()
    for name, average in classes.averages().items():
        table.add_row(f"{name} avg", "", "", *map(_percent, average.values()))
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
