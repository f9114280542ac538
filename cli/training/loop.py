"""The training loop: the seed's step (forward, loss, backward, step) over epochs and batches,
with validation, the best and last checkpoints, and Ctrl-C and NaN handling around it.

Ctrl-C finishes the current step, saves the partial state (weights, optimizer,
scheduler, position inside the epoch) and exits with code 130; resuming
continues from that very batch. A second Ctrl-C quits at once, leaving the
previous checkpoint intact.
"""

from __future__ import annotations

import functools
import math
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import numpy as np

import engine
from cli.config import Config
from cli.data.mixing import BatchMixing
from cli.errors import FinetuneError
from cli.training.build import Trainee
from cli.training.distributed import Job
from cli.training.progress import Row, Tracker
from cli.training.recipe import Recipe
from cli.training.reduction import StepReduction
from cli.training.run_folder import BEST, LAST, Checkpoint, RunFolder, Tally, TrainerState
from cli.training.sharding import ShardedLoader
from engine import nn
from engine.nn import functional as F
from engine.nn.utils import clip_grad_norm_

Forward = Callable[[engine.Tensor], engine.Tensor]
Inputs = tuple[Forward, ShardedLoader, ShardedLoader]


LONE_IMAGE = (
    "skipped a training batch of one image: BatchNorm cannot normalise a single image in "
    "training mode (a batch_size that leaves no lone last image avoids this)"
)


class Diverged(FinetuneError):
    """The loss became NaN or infinite."""

    shared = True


class Interrupted(FinetuneError):
    """Stopped by Ctrl-C after saving; the message says how to resume."""

    exit_code = 130
    shared = True


@dataclass
class Trainer:
    """The loop over epochs and batches, with its collaborators."""

    config: Config
    trainee: Trainee
    forward: Forward  # the model, or its head when training on cached features
    state: TrainerState
    folder: RunFolder
    train_loader: ShardedLoader
    val_loader: ShardedLoader
    tracker: Tracker
    stop: StopRequest
    history: list[Row]
    recipe: Recipe
    inputs: Callable[[], Inputs]  # forward and loaders for what trains now (see Recipe.enter)
    job: Job = field(default_factory=Job)

    def __post_init__(self) -> None:
        smoothing = self.config.schedule.label_smoothing
        self.criterion = functools.partial(
            F.cross_entropy, weight=self.trainee.class_weight, label_smoothing=smoothing
        )
        self.mixing = BatchMixing.from_config(
            self.config.data.augment, self.config.model.num_classes, self.state.data_seed
        )
        resumed = self.state.global_step > 0
        self.last_saved = self.position() if resumed else None
        self.use((self.forward, self.train_loader, self.val_loader))

    def use(self, inputs: Inputs) -> None:
        """Train `forward` on these loaders from now on (the backbone's unfreezing swaps them)."""
        self.forward, self.train_loader, self.val_loader = inputs
        self.reduction = StepReduction(self.job.comm, self.forward, self.job.sharding.shards)

    def fit(self) -> None:
        """Train the remaining epochs; validate, step the scheduler and save after each."""
        try:
            for epoch in range(self.state.epoch, self.config.schedule.epochs):
                if self.state.stopped_early:
                    break
                if self.recipe.enter(epoch):
                    self.use(self.inputs())
                self.train_loader.set_epoch(epoch, start_batch=self.state.batch)
                self.tracker.begin_epoch(len(self.train_loader))
                self.train_epoch()
                self.end_epoch(self.validate())
        except KeyboardInterrupt:  # the second Ctrl-C
            quit_now = Interrupted(f"quit at once. {self.kept(resumable=True)}")
            quit_now.shared = False  # maybe this process alone: the others must not wait
            raise quit_now from None

    def train_epoch(self) -> None:
        """The seed's step, for each remaining batch of the epoch: forward and backward on each
        of this process's shards, one sum over the processes (cli.training.reduction), step."""
        model, optimizer, reduction = self.forward, self.trainee.optimizer, self.reduction
        clip = self.config.schedule.grad_clip
        self.trainee.train_mode()
        self.train_loader.min_size = 2 if self.normalises_batches() else 1
        for batch in self.train_loader:
            optimizer.zero_grad()
            reduction.begin()
            with self.job.synced(batch.shards):
                for images, labels in batch.shards:
                    images, targets = self.mixing(
                        images, labels, self.state.epoch, self.state.batch
                    )
                    x, y = engine.from_numpy(images), engine.from_numpy(targets)
                    logits = model(x)
                    loss = self.criterion(logits, y)
                    (loss * (len(labels) / batch.size)).backward()
                    reduction.add(loss.item(), correct(logits, y), len(labels))
            step = reduction.reduce(batch.size, self.stop.requested)
            if step.images:
                self.check_finite(step.loss, "training")
                if clip is not None:
                    clip_grad_norm_(self.trainee.trainable, clip)
                optimizer.step()
                self.tracker.step(step.loss, step.correct, step.images)
                self.trainee.scheduler.after_batch()
            else:  # a lone image, which BatchNorm cannot normalise, or none readable
                self.tracker.skip(LONE_IMAGE)
            self.stop_if_requested(step.stop)

    def normalises_batches(self) -> bool:
        """Whether a BatchNorm layer trains on batch statistics (which one image cannot give)."""
        return any(
            isinstance(layer, nn.BatchNorm2d) and layer.training for layer in self.forward.modules()
        )

    def validate(self) -> tuple[float, float] | None:
        """Mean loss and accuracy on the validation images (None when there are none)."""
        if len(self.val_loader) == 0:
            return None
        model, tally = self.forward, Tally()
        self.trainee.model.eval()
        with engine.no_grad():
            for batch in self.val_loader:
                sums = np.zeros(4)  # loss sum, correct, images, stop: over the processes
                for images, labels in batch.shards:
                    x, y = engine.from_numpy(images), engine.from_numpy(labels)
                    logits = model(x)
                    loss = self.criterion(logits, y).item()
                    sums[:3] += (loss * len(labels), correct(logits, y), len(labels))
                sums[3] = self.stop.requested
                self.job.comm.allreduce(sums)
                tally.add(sums[0] / max(sums[2], 1), int(sums[1]), int(sums[2]))
                self.stop_if_requested(sums[3] > 0)
        self.check_finite(tally.mean_loss, "validation")
        return tally.mean_loss, tally.accuracy

    def end_epoch(self, val: tuple[float, float] | None) -> None:
        """Record the epoch, step the scheduler, keep the best weights, save when due."""
        row = self.tracker.end_epoch(val)
        self.history.append(row)
        self.trainee.scheduler.after_epoch(row)
        improved = self.recipe.is_best(row)
        self.recipe.end_epoch(row)
        state = self.state
        state.start_next_epoch()
        epochs = self.config.schedule.epochs
        due = state.epoch % self.config.run.checkpoint_every == 0 or state.epoch == epochs
        if due or state.stopped_early:
            self.save()
        if improved:
            self.folder.save_weights(BEST, self.trainee.model.state_dict())

    def save(self) -> None:
        """Write the trainer state (the point a resume starts from), then last.safetensors.

        In that order, a kill between the two loses nothing: a resume rewrites `last`
        (and `best`) from the trainer state (RunFolder.restore_weights_files).
        """
        weights = self.trainee.model.state_dict()
        self.state.rng = engine.get_rng_state()
        self.folder.save_checkpoint(
            Checkpoint(
                model=weights,
                optimizer=self.trainee.optimizer.state_dict(),
                scheduler=self.trainee.scheduler.state_dict(),
                trainer=self.state,
            )
        )
        self.folder.save_weights(LAST, weights)
        self.last_saved = self.position()

    def position(self) -> str:
        """Where the loop stands, in words."""
        state = self.state
        if state.batch == 0:
            return f"after epoch {state.epoch}"
        return f"epoch {state.epoch + 1}, batch {state.batch}/{len(self.train_loader)}"

    def kept(self, resumable: bool) -> str:
        """What the last checkpoint holds, and how to resume from it."""
        if self.last_saved is None:
            return "No checkpoint had been saved yet."
        path = self.folder.path
        kept = f"The last checkpoint ({self.last_saved}) in {path} is unchanged."
        return f"{kept} To continue from it: finetune train --resume {path}" if resumable else kept

    def check_finite(self, loss: float, during: str) -> None:
        """Stop with advice when the loss of a training step or of validation is NaN or inf."""
        if math.isfinite(loss):
            return
        state = self.state
        where = (
            f"epoch {state.epoch + 1}, batch {state.batch + 1}/{len(self.train_loader)} "
            f"(step {state.global_step + 1})"
            if during == "training"
            else f"validation after epoch {state.epoch + 1}"
        )
        lr, base = self.trainee.optimizer.param_groups[0]["lr"], self.config.optim.lr
        now = f", {lr:g} in this epoch" if lr != base else ""
        raise Diverged(
            f"the loss became {loss} at {where}; training stopped. {self.kept(resumable=False)} "
            f"Try a lower learning rate (optim.lr is {base:g}{now}), gradient clipping "
            "(schedule.grad_clip=1.0) or a warm-up (schedule.warmup_epochs=1)."
        )

    def stop_if_requested(self, requested: bool) -> None:
        """After Ctrl-C (on any process): save where the loop stands and stop."""
        if not requested:
            return
        self.tracker.display.note("Ctrl-C: saving the run so far (press Ctrl-C again to quit now)")
        self.save()
        path = self.folder.path
        raise Interrupted(
            f"stopped and saved ({self.position()}) in {path}. "
            f"To continue: finetune train --resume {path}"
        )

    def describe(self, resumed: bool) -> str:
        """A line saying what is about to happen."""
        path, epochs = self.folder.path, self.config.schedule.epochs
        if resumed and self.state.stopped_early:
            return f"{path} stopped early after epoch {self.state.epoch} (schedule.early_stopping)"
        if resumed and self.state.epoch >= epochs:
            return f"{path} has finished its {epochs} epochs (add more with schedule.epochs=N)"
        if resumed:
            return f"Resuming {path} from {self.position()}{self.job.describe()}"
        model, data = self.config.model, self.config.data
        return (
            f"Training {model.arch} on {len(self.train_loader.dataset)} images "
            f"({len(self.val_loader.dataset)} for validation), {model.num_classes} classes, "
            f"{len(self.train_loader)} batches per epoch of {data.batch_size}"
            f"{self.job.describe()}; run folder {path}"
        )


def correct(logits: engine.Tensor, labels: engine.Tensor) -> int:
    """How many rows of `logits` have their largest value at the label (for soft targets,
    at the target's largest value)."""
    labels = labels.argmax(dim=1) if labels.ndim == 2 else labels
    return int((logits.argmax(dim=1) == labels).sum().item())


class StopRequest:
    """Turns the first Ctrl-C into a request the loop honours between steps.

    The second Ctrl-C raises KeyboardInterrupt as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        self._previous = signal.signal(signal.SIGINT, self._request)
        return self

    def __exit__(self, *exc_info: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _request(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
