"""What the loop asks at epoch boundaries: when the backbone unfreezes, which epoch is the
best, and when to stop early.

The run has two stages when schedule.unfreeze_at_epoch is set: the head (what model.freeze
leaves trainable, on cached features when eligible), then every parameter. Early stopping
ends the stage it is in, as a fastai user's EarlyStoppingCallback ends each `fit` of
`fine_tune`: in the head stage the backbone unfreezes at once, in the last stage the run
stops. Its counter starts again when the backbone unfreezes. All of it lives in the
TrainerState, so a resumed run takes the same decisions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cli.config import Config
from cli.training.build import Trainee
from cli.training.progress import Row
from cli.training.run_folder import TrainerState
from cli.training.schedule import metric


def improved(value: float, best: float | None, name: str, min_delta: float = 0.0) -> bool:
    """Whether `value` of metric `name` beats `best` by more than `min_delta`."""
    if best is None:
        return True
    return value < best - min_delta if name.endswith("loss") else value > best + min_delta


@dataclass
class Recipe:
    """The stage, the best epoch and early stopping of one run, kept in its TrainerState."""

    config: Config
    trainee: Trainee
    state: TrainerState
    note: Callable[[str], None]

    def enter(self, epoch: int) -> bool:
        """Unfreeze the backbone if `epoch` is in the second stage; True when this changed what
        trains (so the loop needs the full model on images from now on)."""
        at = self.config.schedule.unfreeze_at_epoch
        if at is not None and epoch >= at and self.state.stage == 0:
            self.next_stage(epoch + 1)
        if self.state.stage == 1 and not self.trainee.unfrozen:
            self.trainee.unfreeze()
            return True
        return False

    def next_stage(self, first_epoch: int) -> None:
        """From epoch `first_epoch` (counted from 1) on, every parameter trains."""
        optim = self.config.optim
        scale = (
            f"layer_decay {optim.layer_decay:g}"
            if optim.layer_decay is not None
            else f"{optim.backbone_lr_scale:g} x the head's lr"
        )
        self.note(f"from epoch {first_epoch}, every parameter trains (backbone at {scale})")
        self.state.stage = 1
        self.state.stopping_best, self.state.stale_epochs = None, 0

    def is_best(self, row: Row) -> bool:
        """Record `row` as the best epoch if it beats the best so far under run.best_metric."""
        name = self.config.run.best_metric
        value = metric(row, name)
        if not improved(value, self.state.best_score, name):
            return False
        self.state.best_score, self.state.best_epoch = value, row["epoch"]
        return True

    def end_epoch(self, row: Row) -> None:
        """Count the epochs without improvement; end the stage when patience runs out."""
        rule = self.config.schedule.early_stopping
        if rule is None:
            return
        state, value = self.state, metric(row, rule.metric)
        if improved(value, state.stopping_best, rule.metric, rule.min_delta):
            state.stopping_best, state.stale_epochs = value, 0
            return
        state.stale_epochs += 1
        if state.stale_epochs < rule.patience:
            return
        stalled = f"no {rule.metric} improvement for {rule.patience} epoch(s)"
        if self.config.schedule.unfreeze_at_epoch is not None and state.stage == 0:
            self.note(f"early stopping: {stalled}; ending the head stage")
            self.next_stage(row["epoch"] + 1)
        else:
            state.stopped_early = True
            self.note(f"early stopping: {stalled}; stopping after epoch {row['epoch']}")
