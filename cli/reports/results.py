"""Where the training loop's metrics rows go: metrics.jsonl, results.csv and TensorBoard.

`results.csv` holds the epoch rows of metrics.jsonl, one line per epoch, rewritten after
every epoch so it is current even when a run stops early.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from cli.config import Config
from cli.reports.files import write_csv
from cli.reports.tensorboard import Events
from cli.training.run_folder import RESULTS, RunFolder


def epoch_rows(folder: RunFolder) -> list[dict[str, Any]]:
    """The epoch rows of the run's metrics.jsonl (its other rows are logged steps)."""
    return [row for row in folder.metrics() if "step" not in row]


def write_results_csv(folder: RunFolder) -> Path:
    """results.csv from metrics.jsonl: a column per key of the epoch rows, in their order."""
    rows = epoch_rows(folder)
    header = list(dict.fromkeys(key for row in rows for key in row))
    return write_csv(folder.path / RESULTS, header, ([row.get(k) for k in header] for row in rows))


class MetricsLog:
    """The Tracker's `record`: appends each row to metrics.jsonl, refreshes results.csv after
    each epoch, and adds the numbers to TensorBoard when `run.tensorboard` is on. Only the
    process that `writes` the run folder (MPI rank 0) does any of this."""

    def __init__(
        self, folder: RunFolder, config: Config, console: Console, writes: bool = True
    ) -> None:
        self.folder = folder
        self.writes = writes
        tensorboard = writes and config.run.tensorboard
        self.events = Events.open(folder.path, console) if tensorboard else None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.events is not None:
            self.events.close()

    def record(self, row: dict[str, Any]) -> None:
        if not self.writes:
            return
        self.folder.append_metrics(row)
        if "step" not in row:
            write_results_csv(self.folder)
        if self.events is not None:
            self.events.record(row)
