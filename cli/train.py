"""`finetune train`: the seed's training loop, with the run folder, progress and resume around it.

Exact resume: every random draw derives from `run.seed` (the engine's
generator, seeded before the model is built and saved in each checkpoint) or
from (seed, epoch, sample) in the data loader, so a run stopped after any step
and resumed ends with the same weights, bit for bit, as one never stopped.

The loop itself, Ctrl-C and NaN handling are in cli.training.loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rich.console import Console

import engine
from cli.config import Config, load_config
from cli.data import DataLoader, ImageDataset, build_datasets
from cli.errors import ConfigError, DataError
from cli.training.build import Trainee, build
from cli.training.features import Features, cached_features, head_only
from cli.training.loop import Forward, StopRequest, Trainer
from cli.training.progress import Row, Tracker, open_display
from cli.training.run_folder import (
    BEST,
    CONFIG,
    FEATURES,
    TRAINER_STATE,
    RunFolder,
    RunFolderError,
    TrainerState,
    check_class_count,
)


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
        config, source = folder.resume_config(overrides), folder.path / CONFIG
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
    (cli.training.features; computed before the progress display opens, with a bar of their own)."""
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
    check_class_count(config.model, class_names)


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
