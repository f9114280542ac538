"""`finetune report`: write a run's results.csv and pictures again, e.g. after the run was
trained without matplotlib or with run.plots=false."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from cli.data import build_datasets
from cli.errors import DataError
from cli.reports.run_report import RunReport
from cli.training.run_folder import RunFolder


def report(run_dir: Path, console: Console | None = None) -> list[Path]:
    """Write the report of the run in `run_dir`; return the files written."""
    console = console or Console()
    folder = RunFolder.open(run_dir)
    config = folder.config()
    class_names = folder.class_names(config.model.num_classes)
    try:
        _, val_set, _ = build_datasets(config.data, config.run.seed)
    except DataError as exc:  # moved or deleted: the csv and the curves need no images
        val_set = exc
    return RunReport(folder, config, class_names, val_set).write(console)
