"""When the learning-rate scheduler steps: after every batch (onecycle), after every epoch, or
after every epoch on a metric of it (plateau)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.optim import lr_scheduler


def metric(row: dict[str, Any], name: str) -> float:
    """An epoch row's `name` ("val_loss", "val_acc"), or its training twin without validation."""
    value = row[name]
    return row[name.replace("val_", "train_")] if value is None else value


@dataclass
class Schedule:
    """The run's scheduler (or none), stepped as its kind needs."""

    scheduler: lr_scheduler.LRScheduler | None
    per_batch: bool = False
    monitor: str | None = None

    def after_batch(self) -> None:
        if self.scheduler is not None and self.per_batch:
            self.scheduler.step()

    def after_epoch(self, row: dict[str, Any]) -> None:
        if self.scheduler is None or self.per_batch:
            return
        if self.monitor is None:
            self.scheduler.step()
        else:
            self.scheduler.step(metric(row, self.monitor))

    def state_dict(self) -> dict[str, Any] | None:
        return None if self.scheduler is None else self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
