"""`finetune train`: the seed's training loop, with the run folder, progress and resume around it.

Exact resume: every random draw derives from `run.seed` (the engine's
generator, seeded before the model is built and saved in each checkpoint) or
from (seed, epoch, sample) in the data loader, so a run stopped after any step
and resumed ends with the same weights, bit for bit, as one never stopped.

Ctrl-C finishes the current step, saves the partial state (weights, optimizer,
scheduler, position inside the epoch) and exits with code 130; resuming
continues from that very batch. A second Ctrl-C quits at once, leaving the
previous checkpoint intact.
"""

from __future__ import annotations

import functools
import hashlib
import math
import signal
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from rich.console import Console

import engine
from cli.build import Trainee, build
from cli.checkpoint import (
    BEST,
    CONFIG,
    FEATURES,
    LAST,
    TRAINER_STATE,
    Checkpoint,
    RunFolder,
    RunFolderError,
    Tally,
    TrainerState,
)
from cli.config import Config, load_config
from cli.data import DataLoader, ImageDataset, build_datasets
from cli.errors import ConfigError, DataError, FinetuneError
from cli.features import Features, cached_features, head_only
from cli.progress import Row, Tracker, open_display
from engine import nn
from engine.nn import functional as F
from engine.nn.utils import clip_grad_norm_

Forward = Callable[[engine.Tensor], engine.Tensor]


LONE_IMAGE = (
    "skipped a training batch of one image: BatchNorm cannot normalise a single image in "
    "training mode (a batch_size that leaves no lone last image avoids this)"
)


class Diverged(FinetuneError):
    """The loss became NaN or infinite."""


class Interrupted(FinetuneError):
    """Stopped by Ctrl-C after saving; the message says how to resume."""

    exit_code = 130


def train(
    config_path: Path | None,
    overrides: Sequence[str] = (),
    *,
    resume: Path | None = None,
    overwrite: bool = False,
) -> None:
    """Train as the config says, or continue the run in the folder `resume`.

    When resuming, `overrides` apply to the run's saved config and may only
    change what does not break an exact continuation (e.g. schedule.epochs).
    """
    if resume is None:
        config = load_config(config_path, overrides)
        folder, source = RunFolder.for_new_run(config.run.output_dir, overwrite), config_path
    else:
        folder = RunFolder.for_resume(resume)
        config, source = folder.load_config(overrides), folder.path / CONFIG
    with _naming_the_file(source):
        engine.manual_seed(config.run.seed)
        trainee = build(config)
        train_set, val_set, class_names = build_datasets(config.data, config.run.seed)
        _check_data(config, train_set, class_names)
    identity = hashlib.sha256(train_set.identity().encode()).hexdigest()
    if resume is None:
        state, history = TrainerState(data_seed=config.run.seed, data_identity=identity), []
        folder.start(config, class_names)
    else:
        state, history = _restore(folder, trainee, identity)
        folder.save_config(config)  # with the epochs a resume may add
    console = Console()
    forward, *loaders = _inputs(
        config, trainee, train_set, val_set, state.data_seed, folder, console
    )
    with open_display(config.schedule.epochs, console) as display:
        tracker = Tracker(
            state,
            display,
            record=folder.append_metrics,
            lr=lambda: trainee.optimizer.param_groups[0]["lr"],
            log_every=config.run.log_every,
        )
        with StopRequest() as stop:
            trainer = Trainer(
                config, trainee, forward, state, folder, *loaders, tracker, stop, history
            )
            display.note(trainer.describe(resumed=resume is not None))
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                trainer.fit()  # overflow shows as a NaN or inf loss, reported with advice
    display.summary(history, state.best_epoch, folder.path / BEST)
    _report_skipped(train_set, val_set)


def _report_skipped(*datasets: ImageDataset) -> None:
    """Name the unreadable images that `data.on_bad_image: skip` left out of the run."""
    skipped = [path for dataset in datasets for path in dataset.skipped]
    if skipped:
        Console(stderr=True, soft_wrap=True).print(
            f"warning: skipped {len(skipped)} unreadable image(s) (data.on_bad_image=skip): "
            + ", ".join(skipped),
            markup=False,
        )


def _inputs(
    config: Config,
    trainee: Trainee,
    train_set: ImageDataset,
    val_set: ImageDataset,
    seed: int,
    folder: RunFolder,
    console: Console,
) -> tuple[Forward, DataLoader, DataLoader]:
    """What the loop calls on each batch, and the training and validation loaders: the model
    on images or, when only the head trains, the head on features cached in the run folder
    (cli.features; computed before the progress display opens, with a bar of their own)."""
    data = config.data

    def loader(dataset: ImageDataset | Features, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, data.batch_size, shuffle, seed, data.num_workers)

    model = trainee.model
    if not (data.cache_features and head_only(trainee, train_set)):
        return model, loader(train_set, True), loader(val_set, False)
    splits = {"train": train_set, "val": val_set}
    train_set, val_set = cached_features(config, model, splits, folder.path / FEATURES, console)
    return model.fc, loader(train_set, True), loader(val_set, False)


def _check_data(config: Config, train_set: ImageDataset, class_names: list[str]) -> None:
    if not len(train_set):
        where = f" at {config.data.root}" if config.data.root else ""
        raise DataError(f"no training images in the {config.data.dataset} data{where}")
    if len(class_names) != config.model.num_classes:
        raise ConfigError(
            [
                f"model.num_classes: is {config.model.num_classes}, but the data has "
                f"{len(class_names)} classes; set model.num_classes={len(class_names)}"
            ]
        )


@contextmanager
def _naming_the_file(path: Path) -> Iterator[None]:
    """Prefix the config problems found while building with the config file's name."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError([f"{path}: {problem}" for problem in exc.problems]) from None


def _restore(folder: RunFolder, trainee: Trainee, identity: str) -> tuple[TrainerState, list[Row]]:
    """Load the saved state into the freshly built trainee; drop metrics rows written after it.

    Warns when the training data's `identity` differs from the one saved.
    """
    checkpoint = folder.load_checkpoint()
    try:
        trainee.model.load_state_dict(checkpoint.model)
        trainee.optimizer.load_state_dict(checkpoint.optimizer)
        if trainee.scheduler is not None:
            trainee.scheduler.load_state_dict(checkpoint.scheduler)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise RunFolderError(
            f"{folder.path / TRAINER_STATE} does not fit the model and optimizer of "
            f"{folder.path / CONFIG}: {exc}"
        ) from None
    engine.set_rng_state(checkpoint.trainer.rng)
    state = checkpoint.trainer
    if state.data_identity != identity:
        Console(stderr=True, soft_wrap=True).print(
            "warning: the training images differ from when this run started, so the "
            "resumed run will not match an uninterrupted one",
            markup=False,
        )

    def saved(row: Row) -> bool:
        return row["step"] <= state.global_step if "step" in row else row["epoch"] <= state.epoch

    history = [row for row in folder.keep_metrics(saved) if "step" not in row]
    return state, history


@dataclass
class Trainer:
    """The loop over epochs and batches, with its collaborators."""

    config: Config
    trainee: Trainee
    forward: Forward  # the model, or its head when training on cached features
    state: TrainerState
    folder: RunFolder
    train_loader: DataLoader
    val_loader: DataLoader
    tracker: Tracker
    stop: StopRequest
    history: list[Row]

    def __post_init__(self) -> None:
        smoothing = self.config.schedule.label_smoothing
        self.criterion = functools.partial(F.cross_entropy, label_smoothing=smoothing)
        resumed = self.state.global_step > 0
        self.last_saved = self.position() if resumed else None

    def fit(self) -> None:
        """Train the remaining epochs; validate, step the scheduler and save after each."""
        try:
            for epoch in range(self.state.epoch, self.config.schedule.epochs):
                self.train_loader.set_epoch(epoch, start_batch=self.state.batch)
                self.tracker.begin_epoch(len(self.train_loader))
                self.train_epoch()
                self.end_epoch(self.validate())
        except KeyboardInterrupt:  # the second Ctrl-C
            raise Interrupted(f"quit at once. {self.kept(resumable=True)}") from None

    def train_epoch(self) -> None:
        """The seed's step, for each remaining batch of the epoch."""
        model, optimizer = self.forward, self.trainee.optimizer
        clip = self.config.schedule.grad_clip
        self.trainee.train_mode()
        for images, labels in self.train_loader:
            if len(labels) == 1 and self.normalises_batches():
                self.tracker.skip(LONE_IMAGE)
                continue
            x, y = engine.from_numpy(images), engine.from_numpy(labels)
            logits = model(x)
            loss = self.criterion(logits, y)
            self.check_finite(loss.item(), "training")
            optimizer.zero_grad()
            loss.backward()
            if clip is not None:
                clip_grad_norm_(self.trainee.trainable, clip)
            optimizer.step()
            self.tracker.step(loss.item(), correct(logits, y), len(labels))
            self.stop_if_requested()

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
            for images, labels in self.val_loader:
                x, y = engine.from_numpy(images), engine.from_numpy(labels)
                logits = model(x)
                tally.add(self.criterion(logits, y).item(), correct(logits, y), len(labels))
                self.stop_if_requested()
        self.check_finite(tally.mean_loss, "validation")
        return tally.mean_loss, tally.accuracy

    def end_epoch(self, val: tuple[float, float] | None) -> None:
        """Record the epoch, step the scheduler, keep the best weights, save when due."""
        row = self.tracker.end_epoch(val)
        self.history.append(row)
        if self.trainee.scheduler is not None:
            self.trainee.scheduler.step()
        state = self.state
        score = row["train_acc"] if val is None else row["val_acc"]
        if state.best_accuracy is None or score > state.best_accuracy:
            state.best_accuracy, state.best_epoch = score, row["epoch"]
            self.folder.save_weights(BEST, self.trainee.model.state_dict())
        state.start_next_epoch()
        epochs = self.config.schedule.epochs
        if state.epoch % self.config.run.checkpoint_every == 0 or state.epoch == epochs:
            self.save()

    def save(self) -> None:
        """Write last.safetensors, then the trainer state: the point a resume starts from."""
        weights = self.trainee.model.state_dict()
        scheduler = self.trainee.scheduler
        self.folder.save_weights(LAST, weights)
        self.state.rng = engine.get_rng_state()
        self.folder.save_checkpoint(
            Checkpoint(
                model=weights,
                optimizer=self.trainee.optimizer.state_dict(),
                scheduler=None if scheduler is None else scheduler.state_dict(),
                trainer=self.state,
            )
        )
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

    def stop_if_requested(self) -> None:
        """After Ctrl-C: save where the loop stands and stop."""
        if not self.stop.requested:
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
        if resumed and self.state.epoch >= epochs:
            return f"{path} has finished its {epochs} epochs (add more with schedule.epochs=N)"
        if resumed:
            return f"Resuming {path} from {self.position()}"
        model, data = self.config.model, self.config.data
        return (
            f"Training {model.arch} on {len(self.train_loader.dataset)} images "
            f"({len(self.val_loader.dataset)} for validation), {model.num_classes} classes, "
            f"{len(self.train_loader)} batches per epoch of {data.batch_size}; run folder {path}"
        )


def correct(logits: engine.Tensor, labels: engine.Tensor) -> int:
    """How many rows of `logits` have their largest value at the label."""
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
