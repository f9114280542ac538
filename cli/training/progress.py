"""What the user sees while training, and the metrics rows behind it.

The loop reports each step and epoch to a `Tracker`, which keeps the tallies,
writes the metrics rows and passes them to a display: live bars when the
console is interactive (`Bars`; see cli.terminal), otherwise one plain line per
`run.log_every` batches and per epoch (`Lines`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cli.training.run_folder import Tally, TrainerState

Row = dict[str, Any]


def describe_step(row: Row, epochs: int) -> str:
    """A log row as one line: where, running loss and accuracy, lr, speed."""
    return (
        f"epoch {row['epoch']}/{epochs} batch {row['batch']}/{row['batches']}  "
        f"loss {row['loss']:.4f}  acc {row['acc']:.1%}  lr {row['lr']:.3g}  "
        f"{row['images_per_s']:.1f} img/s"
    )


def describe_epoch(row: Row, epochs: int) -> str:
    """An epoch row as one line: train and validation loss and accuracy, lr, time."""
    val = (
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.1%}"
        if row["val_loss"] is not None
        else "no validation images"
    )
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.1%}  {val}  lr {row['lr']:.3g}  "
        f"{row['time']:.1f}s  {row['images_per_s']:.1f} img/s"
    )


class Display:
    """Shows notes, epoch rows and the final summary; subclasses add the per-step view."""

    def __init__(self, console: Console, epochs: int) -> None:
        self.console = console
        self.epochs = epochs

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def begin_epoch(self, epoch: int, batches: int, done: int) -> None:
        """A new epoch (counted from 0) of `batches` batches, `done` of them already trained."""

    def step(self, row: Row) -> None:
        """After every training step: the epoch's running numbers."""

    def log(self, row: Row) -> None:
        """Every run.log_every steps: the numbers since the previous log row."""

    def end_epoch(self, row: Row) -> None:
        self.note(describe_epoch(row, self.epochs))

    def summary(self, rows: list[Row], best_epoch: int | None, best_file: Path | None) -> None:
        """A table of the epochs, the best one marked."""
        table = Table(title="Training summary", title_justify="left")
        for name in ("epoch", "train loss", "train acc", "val loss", "val acc", "lr", "time"):
            table.add_column(name, justify="right")
        for row in rows:
            best = row["epoch"] == best_epoch
            val = row["val_loss"] is not None
            table.add_row(
                f"{'* ' if best else ''}{row['epoch']}",
                f"{row['train_loss']:.4f}",
                f"{row['train_acc']:.1%}",
                f"{row['val_loss']:.4f}" if val else "-",
                f"{row['val_acc']:.1%}" if val else "-",
                f"{row['lr']:.3g}",
                f"{row['time']:.1f}s",
                style="bold green" if best else None,
            )
        self.console.print(table)
        if best_epoch is not None and best_file is not None:
            self.note(f"* best epoch: {best_epoch}, saved as {best_file}")


class Lines(Display):
    """Plain lines, for logs and pipes: one per log row and one per epoch."""

    def log(self, row: Row) -> None:
        self.note(describe_step(row, self.epochs))


class Bars(Display):
    """Live bars on a terminal: all epochs, and the current one with its running numbers."""

    def __init__(self, console: Console, epochs: int) -> None:
        super().__init__(console, epochs)
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
        )
        self.overall = self.bars.add_task("training", total=epochs, stats="")
        self.current: Any = None
        self.batches = 1

    def __enter__(self) -> Bars:
        self.bars.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bars.stop()

    def begin_epoch(self, epoch: int, batches: int, done: int) -> None:
        if self.current is not None:
            self.bars.remove_task(self.current)
        self.bars.update(self.overall, completed=epoch + done / batches)
        self.current = self.bars.add_task(
            f"epoch {epoch + 1}/{self.epochs}", total=batches, completed=done, stats=""
        )
        self.batches = batches

    def step(self, row: Row) -> None:
        stats = (
            f"loss {row['loss']:.4f} acc {row['acc']:.1%} lr {row['lr']:.3g} "
            f"{row['images_per_s']:.0f} img/s"
        )
        self.bars.update(self.current, completed=row["batch"], stats=stats)
        self.bars.update(self.overall, advance=1 / self.batches)

    def end_epoch(self, row: Row) -> None:
        self.bars.update(self.overall, completed=row["epoch"])
        super().end_epoch(row)


def open_display(epochs: int, console: Console) -> Display:
    """Bars when the console is interactive (cli.terminal), plain lines otherwise."""
    return Bars(console, epochs) if console.is_interactive else Lines(console, epochs)


class Tracker:
    """Turns the loop's steps into tallies in the trainer state, metrics rows and displays."""

    def __init__(
        self,
        state: TrainerState,
        display: Display,
        record: Callable[[Row], None],
        lr: Callable[[], float],
        log_every: int,
    ) -> None:
        self.state = state
        self.display = display
        self.record = record
        self.lr = lr
        self.log_every = log_every

    def begin_epoch(self, batches: int) -> None:
        self.batches = batches
        self.window = Tally()
        self.clock = time.perf_counter()
        self.display.begin_epoch(self.state.epoch, batches, self.state.batch)

    def step(self, loss: float, correct: int, images: int) -> None:
        """Count one training step: its batch's mean loss, correct predictions and size."""
        seconds = self._lap()
        state = self.state
        state.tally.add(loss, correct, images, seconds)
        self.window.add(loss, correct, images, seconds)
        state.batch += 1
        state.global_step += 1
        self.display.step(self._step_row(state.tally))
        if state.batch % self.log_every == 0 or state.batch == self.batches:
            row = self._step_row(self.window)
            self.record({"step": state.global_step, **row})
            self.display.log(row)
            self.window = Tally()

    def skip(self, reason: str) -> None:
        """Pass over a batch without a training step, saying why."""
        self.state.batch += 1
        self.display.note(f"note: {reason}")

    def end_epoch(self, val: tuple[float, float] | None) -> Row:
        """The epoch's row (recorded and shown), once training and validation are done."""
        tally = self.state.tally
        row = {
            "epoch": self.state.epoch + 1,
            "train_loss": tally.mean_loss,
            "train_acc": tally.accuracy,
            "val_loss": None if val is None else val[0],
            "val_acc": None if val is None else val[1],
            "lr": self.lr(),
            "time": tally.seconds + self._lap(),
            "images_per_s": tally.images_per_s,
        }
        self.record(row)
        self.display.end_epoch(row)
        return row

    def _lap(self) -> float:
        now = time.perf_counter()
        seconds, self.clock = now - self.clock, now
        return seconds

    def _step_row(self, tally: Tally) -> Row:
        return {
            "epoch": self.state.epoch + 1,
            "batch": self.state.batch,
            "batches": self.batches,
            "loss": tally.mean_loss,
            "acc": tally.accuracy,
            "lr": self.lr(),
            "images_per_s": tally.images_per_s,
        }
