"""`finetune train`: the seed's training loop, with the run folder, progress and resume around it.

Exact resume: every random draw derives from `run.seed` (the engine's
generator, seeded before the model is built and saved in each checkpoint) or
from (seed, epoch, sample) in the data loader, so a run stopped after any step
and resumed ends with the same weights, bit for bit, as one never stopped.

The loop itself, Ctrl-C and NaN handling are in cli.training.loop.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
from rich.console import Console

import engine
from cli.config import Config, load_config
from cli.data import ImageDataset, build_datasets
from cli.data.mixing import mixes_batches
from cli.data.sampler import BalancedSampler
from cli.errors import ConfigError, DataError
from cli.reports.results import MetricsLog
from cli.reports.run_report import RunReport
from cli.terminal import ProgressMode, make_console
from cli.training.build import Trainee, build
from cli.training.class_weights import class_weights
from cli.training.distributed import Bystander, Job, agree, check_backend, connect
from cli.training.features import Features, cached_features, head_only
from cli.training.loop import Inputs, StopRequest, Trainer
from cli.training.progress import Row, Tracker, open_display
from cli.training.recipe import Recipe
from cli.training.run_folder import (
    BEST,
    CONFIG,
    FEATURES,
    TRAINER_STATE,
    Checkpoint,
    RunFolder,
    RunFolderError,
    TrainerState,
    check_class_count,
)
from cli.training.sharding import ShardedLoader, Sharding


def train(
    config_path: Path | None,
    overrides: Sequence[str] = (),
    *,
    resume: Path | None = None,
    overwrite: bool = False,
    progress: ProgressMode = "auto",
) -> None:
    """Train as the config says, or continue the run in the folder `resume`.

    When resuming, `overrides` apply to the run's saved config and may only
    change what does not break an exact continuation (e.g. schedule.epochs).
    """
    job = Job(connect())
    if job.comm.rank == 0:  # rank 0 alone reads, checks and writes the run folder
        config, folder, source = _open(config_path, overrides, resume, overwrite)
        job.comm = check_backend(config.dist, job.comm)
        trainee, (train_set, val_set, class_names) = prepare(config, source)
        start, history = _begin(config, folder, resume, trainee, train_set, class_names)
        job.comm.broadcast((config, source, start, history))
    else:
        config, source, start, history = job.comm.broadcast(None)
        folder = Bystander(config.run.output_dir)
        trainee, (train_set, val_set, class_names) = prepare(config, source)
        _load(trainee, start)
    state = start.trainer
    agree(job.comm, _state_arrays(trainee), "the weights, buffers and optimizer state")
    job.sharding = Sharding(job.comm.rank, job.comm.size, config.data.micro_batches)
    job.sync_batchnorm = config.dist.batchnorm == "sync"
    console = make_console(progress, quiet=job.comm.rank > 0)
    recipe = Recipe(config, trainee, state, note=lambda text: console.print(text, markup=False))
    recipe.enter(state.epoch)

    def inputs() -> Inputs:
        return _inputs(config, trainee, train_set, val_set, state.data_seed, folder, console, job)

    forward, *loaders = inputs()
    with (
        open_display(config.schedule.epochs, console) as display,
        MetricsLog(folder, config, console, writes=job.comm.rank == 0) as log,
    ):
        recipe.note = display.note
        tracker = Tracker(
            state,
            display,
            record=log.record,
            lr=lambda: trainee.optimizer.param_groups[0]["lr"],
            log_every=config.run.log_every,
        )
        with StopRequest() as stop, job.comm.watchdog(config.dist.timeout_s) or nullcontext():
            trainer = Trainer(
                config,
                trainee,
                forward,
                state,
                folder,
                *loaders,
                tracker,
                stop,
                history,
                recipe,
                inputs,
                job,
            )
            display.note(trainer.describe(resumed=resume is not None))
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                trainer.fit()  # overflow shows as a NaN or inf loss, reported with advice
    display.summary(history, state.best_epoch, folder.path / BEST)
    skipped = job.comm.gather([path for data in (train_set, val_set) for path in data.skipped])
    if job.comm.rank == 0:  # each process read its own shards
        _report_skipped(list(dict.fromkeys(path for part in skipped for path in part)))
        if config.run.plots:
            RunReport(folder, config, class_names, val_set).write(console)


def _open(
    config_path: Path | None, overrides: Sequence[str], resume: Path | None, overwrite: bool
) -> tuple[Config, RunFolder, Path]:
    """The run's config, its folder (checked, not yet written) and the config's file."""
    if resume is None:
        config = load_config(config_path, overrides)
        return config, RunFolder.for_new_run(config.run.output_dir, overwrite), config_path
    folder = RunFolder.for_resume(resume)
    return folder.resume_config(overrides), folder, folder.path / CONFIG


def prepare(
    config: Config, source: Path
) -> tuple[Trainee, tuple[ImageDataset, ImageDataset, list[str]]]:
    """The model, optimizer, scheduler and loss weights, and the datasets, checked against the
    config; problems name the config file `source`."""
    with _naming_the_file(source):
        datasets = build_datasets(config.data, config.run.seed)
        train_set, _, class_names = datasets
        engine.manual_seed(config.run.seed)
        trainee = build(config, math.ceil(len(train_set) / config.data.batch_size))
        _check_data(config, train_set, class_names)
        weight = class_weights(config.schedule.class_weights, class_names, train_set.labels)
        trainee.class_weight = None if weight is None else engine.from_numpy(weight)
    return trainee, datasets


def _begin(
    config: Config,
    folder: RunFolder,
    resume: Path | None,
    trainee: Trainee,
    train_set: ImageDataset,
    class_names: list[str],
) -> tuple[Checkpoint, list[Row]]:
    """Start the run folder, or restore the run saved there: the state every process starts
    from (rank 0 sends it to the others), and the epochs' metrics so far."""
    identity = hashlib.sha256(train_set.identity().encode()).hexdigest()
    if resume is None:
        folder.start(config, class_names)
        state, history = TrainerState(data_seed=config.run.seed, data_identity=identity), []
    else:
        state, history = _restore(folder, trainee, identity)
        folder.save_config(config)  # with the epochs a resume may add
    start = Checkpoint(
        model=trainee.model.state_dict(),
        optimizer=trainee.optimizer.state_dict(),
        scheduler=trainee.scheduler.state_dict(),
        trainer=state,
    )
    return start, history


def _report_skipped(skipped: list[str]) -> None:
    """Name the unreadable images that `data.on_bad_image: skip` left out of the run."""
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
    job: Job,
) -> Inputs:
    """What the loop calls on each batch, and the training and validation loaders: the model
    on images or, when only the head trains, the head on features cached in the run folder
    (cli.training.features; computed before the progress display opens, with a bar of their own;
    in a job of several processes by rank 0, which sends them to the others)."""
    data = config.data

    sampler = BalancedSampler(train_set.labels, seed) if data.sampler == "balanced" else None

    def loader(dataset: ImageDataset | Features, shuffle: bool) -> ShardedLoader:
        return ShardedLoader(
            dataset,
            data.batch_size,
            job.sharding,
            shuffle,
            seed,
            data.num_workers,
            sampler=sampler if shuffle else None,
        )

    model = trainee.model
    mixed = mixes_batches(data.augment)  # the backbone then sees blends, not single images
    if not (data.cache_features and not mixed and head_only(trainee, train_set)):
        return model, loader(train_set, True), loader(val_set, False)
    features = None
    if job.comm.rank == 0:
        splits = {"train": train_set, "val": val_set}
        features = cached_features(config, model, splits, folder.path / FEATURES, console)
    train_set, val_set = job.comm.broadcast(features)
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
        _load(trainee, checkpoint)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise RunFolderError(
            f"{folder.path / TRAINER_STATE} does not fit the model and optimizer of "
            f"{folder.path / CONFIG}: {exc}"
        ) from None
    state = checkpoint.trainer
    folder.restore_weights_files(state, trainee.model.state_dict())
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


def _load(trainee: Trainee, checkpoint: Checkpoint) -> None:
    """Put a checkpoint's model, optimizer, scheduler and random state in place."""
    trainee.model.load_state_dict(checkpoint.model)
    trainee.optimizer.load_state_dict(checkpoint.optimizer)
    trainee.scheduler.load_state_dict(checkpoint.scheduler)
    if checkpoint.trainer.rng:
        engine.set_rng_state(checkpoint.trainer.rng)


def _state_arrays(trainee: Trainee) -> list[np.ndarray]:
    """The model's weights and buffers and the optimizer's state, as arrays."""
    arrays = [value.numpy() for value in trainee.model.state_dict().values()]
    for state in trainee.optimizer.state_dict()["state"].values():
        arrays += [v.numpy() for v in state.values() if isinstance(v, engine.Tensor)]
    return arrays
