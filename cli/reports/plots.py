"""The run's pictures: training curves, confusion matrices and a gallery of the worst images.

matplotlib is optional (`finetune[plots]`): `matplotlib_or_hint()` imports it on first use and,
when it is missing, says in one line what is skipped. Figures are built with matplotlib's
object API (`Figure`, no pyplot), so nothing global changes and no window ever opens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console

PLOTS_HINT = "pip install 'finetune[plots]'"
DPI = 100
NUMBERED_CLASSES = 30  # beyond this many classes the matrix cells carry no numbers
GALLERY_COLUMNS = 4


def matplotlib_or_hint(skipped: str, console: Console) -> bool:
    """Whether matplotlib can be imported; if not, print one line saying `skipped` and the fix."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        console.print(
            f"{skipped} skipped: matplotlib is not installed ({PLOTS_HINT})",
            markup=False,
            soft_wrap=True,
        )
        return False
    return True


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=DPI, facecolor="white")
    return path


def _epoch_axis(ax: Any, title: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _log_scale_if_wide(ax: Any, values: Sequence[float], ratio: float) -> None:
    """A logarithmic y axis when the positive values span more than `ratio` times."""
    positive = [value for value in values if value > 0]
    if positive and max(positive) / min(positive) > ratio:
        ax.set_yscale("log")


def curves(
    epochs: Sequence[dict[str, Any]],
    steps: Sequence[dict[str, Any]],
    best_epoch: int | None,
    title: str,
    path: Path,
) -> Path:
    """Loss, accuracy and learning rate per epoch (training loss also per logged step), with
    the best epoch marked; from metrics.jsonl's epoch and step rows."""
    from matplotlib.ticker import PercentFormatter

    figure = _figure(15, 4.6)
    figure.suptitle(title)
    loss_ax, acc_ax, lr_ax = figure.subplots(1, 3)
    x = [row["epoch"] for row in epochs]
    if steps:
        at = [row["epoch"] - 1 + row["batch"] / row["batches"] for row in steps]
        loss = [row["loss"] for row in steps]
        loss_ax.plot(at, loss, color="C0", alpha=0.3, lw=1, label="train (per logged step)")
    for ax, key, label in ((loss_ax, "loss", "loss"), (acc_ax, "acc", "accuracy")):
        ax.plot(
            x, [row[f"train_{key}"] for row in epochs], "o-", color="C0", label=f"train {label}"
        )
        val = [(e, row[f"val_{key}"]) for e, row in zip(x, epochs, strict=True)]
        val = [(e, v) for e, v in val if v is not None]
        if val:
            ax.plot(*zip(*val, strict=True), "s-", color="C1", label=f"validation {label}")
    lr_ax.plot(x, [row["lr"] for row in epochs], "o-", color="C2")
    _log_scale_if_wide(lr_ax, [row["lr"] for row in epochs], 20)
    losses = [row[key] for row in epochs for key in ("train_loss", "val_loss")]
    _log_scale_if_wide(loss_ax, [value for value in losses if value is not None], 100)
    _epoch_axis(loss_ax, "Loss", "cross-entropy")
    _epoch_axis(acc_ax, "Accuracy", "accuracy")
    _epoch_axis(lr_ax, "Learning rate", "learning rate")
    acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    if best_epoch is not None:
        best = next(row for row in epochs if row["epoch"] == best_epoch)
        score = best["val_acc"] if best["val_acc"] is not None else best["train_acc"]
        for ax in (loss_ax, acc_ax, lr_ax):
            ax.axvline(best_epoch, color="C3", ls="--", lw=1)
        acc_ax.plot(
            [best_epoch],
            [score],
            "*",
            color="C3",
            ms=14,
            label=f"best epoch {best_epoch} ({score:.1%})",
        )
    loss_ax.legend()
    acc_ax.legend()
    return _save(figure, path)


def confusion(
    matrix: np.ndarray, class_names: Sequence[str], normalized: bool, title: str, path: Path
) -> Path:
    """The confusion matrix as a heat map, true classes down and predictions across, sized to the
    number of classes; row-normalised (recall on the diagonal) when `normalized`. Cells carry
    their numbers up to NUMBERED_CLASSES classes; beyond that the colour alone tells."""
    n = len(class_names)
    values = matrix.astype(np.float64)
    if normalized:
        totals = values.sum(axis=1, keepdims=True)
        values = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    cell = 0.6 if n <= 10 else (0.4 if n <= NUMBERED_CLASSES else 0.22)
    label_room = 0.08 * max(len(name) for name in class_names) + 1.2
    side = max(n * cell, 4.0)
    figure = _figure(side + label_room + 1.5, side + label_room + 0.8)
    ax = figure.subplots()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    figure.colorbar(
        image, ax=ax, shrink=0.8, label="fraction of the true class" if normalized else "images"
    )
    font = 10 if n <= 10 else (8 if n <= NUMBERED_CLASSES else 7)
    fits = max(len(name) for name in class_names) * font / 110 <= cell  # names across, in inches
    ax.set_xticks(range(n), class_names, rotation=0 if fits else 90, fontsize=font)
    ax.set_yticks(range(n), class_names, fontsize=font)
    heading = 12 if n <= NUMBERED_CLASSES else 16
    ax.set_xlabel("predicted class", fontsize=heading)
    ax.set_ylabel("true class", fontsize=heading)
    ax.set_title(title, fontsize=heading)
    if n <= NUMBERED_CLASSES:
        high = values.max() or 1
        for (row, column), value in np.ndenumerate(values):
            if matrix[row, column] == 0:
                continue
            text = f"{value:.2f}" if normalized else str(matrix[row, column])
            color = "white" if value > high / 2 else "black"
            ax.text(column, row, text, ha="center", va="center", fontsize=font, color=color)
    return _save(figure, path)


@dataclass(frozen=True)
class Tile:
    """One image of the gallery and what the model made of it."""

    image: Image.Image
    true: str
    predicted: str
    probability: float  # of the predicted class
    loss: float


def _rgb(image: Image.Image) -> np.ndarray:
    """8-bit RGB pixels; float ("F") images hold values in [0, 1]."""
    if image.mode == "F":
        gray = (np.clip(np.asarray(image), 0, 1) * 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def gallery(tiles: Sequence[Tile], title: str, path: Path) -> Path:
    """The images in a grid, true and predicted class under each (red when they differ)."""
    columns = min(GALLERY_COLUMNS, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    figure = _figure(2.8 * columns, 3.1 * rows + 0.5)
    figure.suptitle(title)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for ax, tile in zip(axes, tiles, strict=False):
        pixels = _rgb(tile.image)
        small = max(pixels.shape[:2]) < 96
        ax.imshow(pixels, interpolation="nearest" if small else "antialiased")
        ax.set_xticks([])
        ax.set_yticks([])
        wrong = tile.true != tile.predicted
        ax.set_xlabel(
            f"true: {tile.true}\npredicted: {tile.predicted} ({tile.probability:.0%})\n"
            f"loss {tile.loss:.2f}",
            color="C3" if wrong else "C2",
            fontsize=9,
        )
    for ax in axes[len(tiles) :]:
        ax.set_axis_off()
    return _save(figure, path)
