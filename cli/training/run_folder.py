"""The run folder: resolved config, classes, metrics, weights and the resumable trainer state.

A run folder holds:

- `config.yaml`: the resolved config (defaults filled in, overrides applied);
- `classes.json`: the class names, indexed by label;
- `metrics.jsonl`: a row per `run.log_every` training steps (with "step") and per epoch;
- `results.csv`: the epoch rows of metrics.jsonl, one line per epoch;
- `last.safetensors`, `best.safetensors`: model state dicts with torchvision's key names;
- `trainer_state.safetensors`: everything a resume needs, in one file written in one
  atomic step: the model's state dict (under "model."), the optimizer's and
  scheduler's state dicts and the loop's position, best metric and RNG state
  (tensors under "optimizer." / "scheduler.", the rest as JSON in the metadata);
- `curves.png`, `confusion_matrix.png`, `confusion_matrix_normalized.png`, `mistakes.png`
  and `tensorboard/` (event files, with run.tensorboard): see cli.reports;
- `features/`: a linear probe's cached backbone features (cli.training.features), keyed by what
  they depend on, so starting over with --overwrite keeps them for reuse.

Every file is replaced atomically (engine.io.atomic: a synced temporary file,
then a rename), so a failed write (full disk, Ctrl-C pressed twice, kill -9)
leaves the previous version whole; the next start or resume deletes the
temporary files a killed write left. Metrics rows are appended, and a resume
drops a row a kill cut short along with the rows written after its checkpoint.

`last.safetensors` and `best.safetensors` are for people; a resume reads only
`trainer_state.safetensors`, so the weights and the optimizer state it restores
always belong together. The trainer state is written first, then `last` and
`best`, so a finished epoch is never lost: a resume rewrites those two from it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import yaml

import engine
from cli.config import Config, ModelConfig, config_to_dict, load_config
from cli.errors import ConfigError, FinetuneError
from cli.training.build import ARCHS
from engine import nn
from engine.io import load_state_dict_file, save_safetensors
from engine.io.atomic import remove_temporary_files, write_atomic

CONFIG = "config.yaml"
CLASSES = "classes.json"
METRICS = "metrics.jsonl"
LAST = "last.safetensors"
BEST = "best.safetensors"
TRAINER_STATE = "trainer_state.safetensors"
FEATURES = "features"
RESULTS = "results.csv"
CURVES = "curves.png"
CONFUSION = "confusion_matrix.png"
CONFUSION_NORMALIZED = "confusion_matrix_normalized.png"
MISTAKES = "mistakes.png"
PICTURES = (CURVES, CONFUSION, CONFUSION_NORMALIZED, MISTAKES)
TENSORBOARD = "tensorboard"
RUN_FILES = (CONFIG, CLASSES, METRICS, LAST, BEST, TRAINER_STATE, RESULTS, *PICTURES)
_FORMAT = "finetune.trainer_state.v1"
RESUMABLE_CHANGES = (
    "schedule.epochs",
    "run.log_every",
    "run.checkpoint_every",
    "run.plots",
    "run.tensorboard",
    "data.num_workers",
    "data.micro_batches",
    "dist.backend",
    "dist.timeout_s",
)


class RunFolderError(FinetuneError):
    """A run folder that cannot be used as asked; the message says what to do instead."""

    exit_code = 2


@dataclass
class Tally:
    """Sums over some training batches: loss (mean per batch times its size), hits, images, time."""

    loss: float = 0.0
    correct: int = 0
    images: int = 0
    seconds: float = 0.0

    def add(self, loss: float, correct: int, images: int, seconds: float = 0.0) -> None:
        self.loss += loss * images
        self.correct += correct
        self.images += images
        self.seconds += seconds

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.images, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.images, 1)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class TrainerState:
    """Where training stands, besides the model, optimizer and scheduler.

    `epoch` is the epoch in progress, counted from 0, and `batch` how many of
    its training batches are done; at an epoch boundary `epoch` is the number
    of epochs completed and `batch` is 0. `tally` sums the epoch so far. `best_score`
    is run.best_metric's value at `best_epoch`; `stage` is 1 once the backbone trains
    (schedule.unfreeze_at_epoch); early stopping's best value is `stopping_best`, and
    `stale_epochs` have not beaten it.
    """

    data_seed: int
    data_identity: str
    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    tally: Tally = field(default_factory=Tally)
    rng: dict[str, Any] = field(default_factory=dict)
    stage: int = 0
    stopping_best: float | None = None
    stale_epochs: int = 0
    stopped_early: bool = False

    def start_next_epoch(self) -> None:
        self.epoch, self.batch, self.tally = self.epoch + 1, 0, Tally()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainerState:
        data = dict(data)
        if "best_accuracy" in data:  # the name before run.best_metric
            data["best_score"] = data.pop("best_accuracy")
        return cls(**{**data, "tally": Tally(**data["tally"])})


@dataclass
class Checkpoint:
    """The state a resume restores, as the engine's state dicts plus the trainer state."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any] | None
    trainer: TrainerState


class RunFolder:
    """One training run's folder; see the module docstring for what it holds."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def for_new_run(cls, path: Path, overwrite: bool) -> RunFolder:
        """The folder for a new run; refuses one holding files unless `overwrite`.

        Nothing is written yet: call `start` once the run's inputs are known to be good.
        """
        folder = cls(path)
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"run.output_dir {path} is a file; choose a folder")
        if not overwrite and path.is_dir() and any(path.iterdir()):
            raise RunFolderError(
                f"the run folder {path} is not empty. To start over there, add --overwrite; "
                f"to continue that run, use finetune train --resume {path}; "
                "or choose another folder with run.output_dir=PATH"
            )
        return folder

    @classmethod
    def open(cls, path: Path) -> RunFolder:
        """An existing run folder, to read its config, classes and weights."""
        if not path.is_dir():
            raise RunFolderError(f"{path}: no such run folder")
        if not (path / CONFIG).is_file():
            raise RunFolderError(f"{path} is not a run folder: it has no {CONFIG}")
        return cls(path)

    @classmethod
    def for_resume(cls, path: Path) -> RunFolder:
        """An existing run folder holding a trainer state to continue from."""
        folder = cls(path)
        if not path.is_dir():
            raise RunFolderError(f"--resume {path}: no such run folder")
        if not (path / TRAINER_STATE).is_file():
            config = path / CONFIG if (path / CONFIG).is_file() else "CONFIG.yaml"
            raise RunFolderError(
                f"--resume {path}: no {TRAINER_STATE} there, so there is nothing to resume "
                "(a run saves it after its first epoch or when stopped with Ctrl-C). "
                f"To start the run again: finetune train {config} run.output_dir={path} "
                "--overwrite"
            )
        folder.remove_temporary_files()
        return folder

    def start(self, config: Config, class_names: list[str]) -> None:
        """Create the folder, clear files of an earlier run, and write the config and classes."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / TENSORBOARD, ignore_errors=True)
        self.remove_temporary_files()
        self.save_config(config)
        write_atomic(self.path / CLASSES, json.dumps(class_names) + "\n")

    def config(self, overrides: Sequence[str] = (), *, check_files: bool = False) -> Config:
        """The run's saved config with `overrides` applied; its output folder is this folder,
        wherever it is now. Its input files (data, weights) must exist only if `check_files`."""
        config = load_config(self.path / CONFIG, overrides, check_files=check_files)
        run = dataclasses.replace(config.run, output_dir=self.path)
        return dataclasses.replace(config, run=run)

    def resume_config(self, overrides: Sequence[str] = ()) -> Config:
        """The run's saved config, with the overrides a resume allows."""
        saved = self.config(check_files=True)
        config = self.config(overrides, check_files=True) if overrides else saved
        problems = [
            f"{key}: cannot change when resuming (the run's saved state fixes it); "
            f"only {', '.join(RESUMABLE_CHANGES)} can; start a new run to change the rest"
            for key in _changed_keys(config_to_dict(saved), config_to_dict(config))
            if key not in RESUMABLE_CHANGES
        ]
        fitted = saved.schedule.scheduler in ("cosine", "onecycle")
        if config.schedule.epochs != saved.schedule.epochs and fitted:
            problems.append(
                f"schedule.epochs: a {saved.schedule.scheduler} schedule is fitted to the number "
                "of epochs, so it cannot change when resuming"
            )
        if problems:
            raise ConfigError(problems)
        return config

    def class_names(self, num_classes: int) -> list[str]:
        """The run's class names, indexed by label; there must be `num_classes` of them."""
        path = self.path / CLASSES
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunFolderError(f"cannot read the class names in {path}: {exc}") from None
        if not isinstance(names, list) or len(names) != num_classes:
            raise RunFolderError(
                f"{path} should list the {num_classes} class names of the model, got {names!r}"
            )
        return [str(name) for name in names]

    def weights_path(self, weights: Path | None = None) -> Path:
        """`weights` if given, else the run's best.safetensors."""
        if weights is not None:
            return weights
        if not (self.path / BEST).is_file():
            raise RunFolderError(
                f"{self.path}: no {BEST} there (a run writes it after its first epoch); "
                "train longer, or pass --weights FILE"
            )
        return self.path / BEST

    def load_model(self, weights: Path | None = None) -> nn.Module:
        """The run's trained network in eval mode, with `weights` or else its best."""
        return load_trained_model(self.config().model, self.weights_path(weights))

    def remove_temporary_files(self) -> None:
        """Delete what writes killed midway left here and in the feature cache."""
        for directory in (self.path, self.path / FEATURES):
            if directory.is_dir():
                remove_temporary_files(directory)

    def restore_weights_files(self, state: TrainerState, weights: Mapping[str, Any]) -> None:
        """Rewrite the files for people from the state a resume starts from, `weights`
        being its model's: a kill after the trainer state was saved may have stopped their
        writes. `last` holds these weights, and so does `best` when it was their epoch."""
        self.save_weights(LAST, weights)
        if state.batch == 0 and state.best_epoch == state.epoch:
            self.save_weights(BEST, weights)

    def save_config(self, config: Config) -> None:
        text = yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
        write_atomic(self.path / CONFIG, text)

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        with open(self.path / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        """The complete rows of metrics.jsonl (none if it does not exist)."""
        path = self.path / METRICS
        if not path.exists():
            return []
        text = path.read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]  # without a row a kill cut short
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def keep_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """Drop the metrics rows `keep` rejects (those written after the checkpoint resumed
        from), and return the rows kept."""
        rows = [row for row in self.metrics() if keep(row)]
        write_atomic(self.path / METRICS, "".join(json.dumps(row) + "\n" for row in rows))
        return rows

    def save_weights(self, name: str, state_dict: Mapping[str, Any]) -> Path:
        """Save a model state dict as `name` (LAST or BEST) in the folder, atomically."""
        path = self.path / name
        save_safetensors(state_dict, path)
        return path

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write the trainer state file in one atomic step."""
        tensors: dict[str, np.ndarray] = {}
        for name, value in checkpoint.model.items():
            tensors[f"model.{name}"] = _array(value)
        state = {
            "optimizer": _pack(checkpoint.optimizer, "optimizer", tensors),
            "scheduler": _pack(checkpoint.scheduler, "scheduler", tensors),
            "trainer": dataclasses.asdict(checkpoint.trainer),
        }
        metadata = {"format": _FORMAT, "state": json.dumps(state)}
        save_safetensors(tensors, self.path / TRAINER_STATE, metadata=metadata)

    def load_checkpoint(self) -> Checkpoint:
        path = self.path / TRAINER_STATE
        try:
            with safetensors.safe_open(str(path), framework="numpy") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
            if metadata.get("format") != _FORMAT:
                raise ValueError(f"expected format {_FORMAT}, got {metadata.get('format')}")
            state = json.loads(metadata["state"])
            trainer = TrainerState.from_dict(state["trainer"])
        except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError) as exc:
            raise RunFolderError(
                f"{path} is unreadable or corrupt ({exc}); it cannot be resumed"
            ) from None
        model = {
            name.removeprefix("model."): engine.from_numpy(array)
            for name, array in tensors.items()
            if name.startswith("model.")
        }
        return Checkpoint(
            model=model,
            optimizer=_unpack(state["optimizer"], tensors),
            scheduler=_unpack(state["scheduler"], tensors),
            trainer=trainer,
        )


def load_trained_model(cfg: ModelConfig, weights: Path) -> nn.Module:
    """A trained network in eval mode: `cfg.arch` with `cfg.num_classes` outputs, exactly."""
    model = ARCHS[cfg.arch](num_classes=cfg.num_classes)
    try:
        model.load_state_dict(load_state_dict_file(weights))
    except RuntimeError as exc:
        raise FinetuneError(
            f"{weights} does not fit {cfg.arch} with {cfg.num_classes} classes: {exc}\n"
            "Pass the weights of a trained run (its best.safetensors), or the run folder itself"
        ) from None
    return model.eval()


def check_class_count(cfg: ModelConfig, class_names: Sequence[str]) -> None:
    """The model must have one output per class of the data."""
    if len(class_names) != cfg.num_classes:
        raise ConfigError(
            [
                f"model.num_classes: is {cfg.num_classes}, but the data has "
                f"{len(class_names)} classes; set model.num_classes={len(class_names)}"
            ]
        )


def _changed_keys(old: Any, new: Any, key: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            changed
            for name in old
            for changed in _changed_keys(old[name], new[name], f"{key}.{name}" if key else name)
        ]
    return [] if old == new else [key]


# A state dict as JSON plus named arrays: each tensor becomes {"$tensor": name} (an
# engine Tensor) or {"$array": name} (a NumPy array), and a dict with keys other
# than strings (the optimizer's per-parameter state) becomes {"$items": [[key, value]]}.


def _array(value: Any) -> np.ndarray:
    return value.detach().numpy() if isinstance(value, engine.Tensor) else np.asarray(value)


def _pack(value: Any, name: str, tensors: dict[str, np.ndarray]) -> Any:
    if isinstance(value, (engine.Tensor, np.ndarray)):
        tensors[name] = _array(value)
        return {"$tensor" if isinstance(value, engine.Tensor) else "$array": name}
    if isinstance(value, Mapping):
        if all(isinstance(key, str) for key in value):
            return {key: _pack(item, f"{name}.{key}", tensors) for key, item in value.items()}
        return {
            "$items": [[key, _pack(item, f"{name}.{key}", tensors)] for key, item in value.items()]
        }
    if isinstance(value, (list, tuple)):
        return [_pack(item, f"{name}.{i}", tensors) for i, item in enumerate(value)]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _unpack(value: Any, tensors: Mapping[str, np.ndarray]) -> Any:
    if isinstance(value, dict):
        if "$tensor" in value:
            return engine.from_numpy(np.array(tensors[value["$tensor"]]))
        if "$array" in value:
            return np.array(tensors[value["$array"]])
        if "$items" in value:
            return {key: _unpack(item, tensors) for key, item in value["$items"]}
        return {key: _unpack(item, tensors) for key, item in value.items()}
    if isinstance(value, list):
        return [_unpack(item, tensors) for item in value]
    return value
