"""The run folder: trainer-state round trips, atomic writes under failure, metrics truncation,
refusing used folders, and which config changes a resume accepts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

import engine
from cli.config import ScheduleConfig, load_config
from cli.errors import ConfigError
from cli.training.build import build_scheduler
from cli.training.run_folder import (
    LAST,
    TRAINER_STATE,
    Checkpoint,
    RunFolder,
    RunFolderError,
    TrainerState,
    check_class_count,
)
from engine import nn, optim
from engine.io import WeightsError
from engine.io.atomic import write_atomic


def stepped(optimizer_class: type, **options: float) -> tuple[nn.Module, optim.Optimizer]:
    """A small model and its optimizer after two steps, so the optimizer has state."""
    engine.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = optimizer_class(model.parameters(), lr=0.1, **options)
    for _ in range(2):
        optimizer.zero_grad()
        model(engine.randn(5, 3)).sum().backward()
        optimizer.step()
    return model, optimizer


def flat(state: object) -> list:
    """Everything in a state dict, tensors as arrays, in a comparable form."""
    if isinstance(state, dict):
        return sorted((repr(k), flat(v)) for k, v in state.items())
    if isinstance(state, (list, tuple)):
        return [flat(v) for v in state]
    if isinstance(state, engine.Tensor):
        return [state.numpy().dtype.str, state.numpy().tolist()]
    return [state]


@pytest.mark.parametrize(
    ("optimizer_class", "options"),
    [(optim.SGD, {"momentum": 0.9, "nesterov": True}), (optim.Adam, {}), (optim.AdamW, {})],
)
def test_the_trainer_state_round_trips(tmp_path: Path, optimizer_class: type, options: dict):
    model, optimizer = stepped(optimizer_class, **options)
    scheduler = build_scheduler(
        ScheduleConfig(epochs=6, scheduler="cosine", warmup_epochs=2), optimizer
    )
    scheduler.step()
    engine.manual_seed(7)
    engine.randn(3)
    trainer = TrainerState(data_seed=3, data_identity="abc", epoch=1, batch=2, global_step=9)
    trainer.tally.add(0.5, 3, 4, 1.25)
    trainer.rng = engine.get_rng_state()
    folder = RunFolder(tmp_path)
    saved = Checkpoint(model.state_dict(), optimizer.state_dict(), scheduler.state_dict(), trainer)
    folder.save_checkpoint(saved)

    loaded = folder.load_checkpoint()
    assert flat(loaded.model) == flat(saved.model)
    assert flat(loaded.optimizer) == flat(saved.optimizer)
    assert loaded.scheduler == saved.scheduler
    assert loaded.trainer == trainer
    # The loaded state restores a fresh optimizer to the same next step.
    fresh_model, fresh_optimizer = stepped(optimizer_class, **options)
    fresh_model.load_state_dict(loaded.model)
    fresh_optimizer.load_state_dict(loaded.optimizer)
    x = engine.randn(5, 3)
    for m, o in ((model, optimizer), (fresh_model, fresh_optimizer)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    assert flat(fresh_model.state_dict()) == flat(model.state_dict())


def fail_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    model, optimizer = stepped(optim.SGD, momentum=0.9)
    folder = RunFolder(tmp_path)
    checkpoint = Checkpoint(model.state_dict(), optimizer.state_dict(), None, TrainerState(0, ""))
    folder.save_checkpoint(checkpoint)
    folder.save_weights(LAST, model.state_dict())
    before = {name: (tmp_path / name).read_bytes() for name in (TRAINER_STATE, LAST)}

    fail_replace(monkeypatch)
    checkpoint.trainer.epoch = 1
    with pytest.raises(WeightsError, match="No space left"):
        folder.save_checkpoint(checkpoint)
    with pytest.raises(WeightsError, match="No space left"):
        folder.save_weights(LAST, model.state_dict())
    with pytest.raises(OSError):
        write_atomic(tmp_path / "config.yaml", "new")
    monkeypatch.undo()

    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no temporary files
    assert folder.load_checkpoint().trainer.epoch == 0


def test_resuming_drops_metrics_rows_written_after_the_checkpoint(tmp_path: Path):
    folder = RunFolder(tmp_path)
    for row in [{"step": 1, "epoch": 1}, {"epoch": 1}, {"step": 2, "epoch": 2}, {"epoch": 2}]:
        folder.append_metrics(row)
    kept = folder.keep_metrics(lambda row: row.get("step", 0) <= 1 and row["epoch"] <= 1)
    assert kept == folder.metrics() == [{"step": 1, "epoch": 1}, {"epoch": 1}]


def test_a_metrics_row_torn_by_a_kill_is_dropped(tmp_path: Path):
    folder = RunFolder(tmp_path)
    folder.append_metrics({"step": 1, "epoch": 1})
    with open(tmp_path / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 2, "ep')
    assert folder.keep_metrics(lambda row: True) == [{"step": 1, "epoch": 1}]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1, "epoch": 1}\n'


def test_a_used_folder_is_refused(tmp_path: Path):
    RunFolder.for_new_run(tmp_path / "new", overwrite=False)  # a missing folder is fine
    (tmp_path / "empty").mkdir()
    RunFolder.for_new_run(tmp_path / "empty", overwrite=False)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "anything").write_text("")
    with pytest.raises(RunFolderError, match="--overwrite") as refused:
        RunFolder.for_new_run(tmp_path / "used", overwrite=False)
    assert refused.value.exit_code == 2
    RunFolder.for_new_run(tmp_path / "used", overwrite=True)


def saved_run(tmp_path: Path, **schedule: object) -> RunFolder:
    config = {"schedule": {"epochs": 2, **schedule}, "run": {"output_dir": "run"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    folder.start(load_config(tmp_path / "c.yaml"), ["a", "b"])
    return folder


def test_a_resume_may_train_longer(tmp_path: Path):
    folder = saved_run(tmp_path)
    config = folder.resume_config(["schedule.epochs=5", "data.num_workers=0"])
    assert config.schedule.epochs == 5 and config.run.output_dir == folder.path
    folder.save_config(config)
    assert folder.resume_config() == config


def test_a_resume_refuses_changes_that_break_exactness(tmp_path: Path):
    folder = saved_run(tmp_path)
    with pytest.raises(ConfigError) as refused:
        folder.resume_config(["optim.lr=0.5", "data.augment=[horizontal_flip]"])
    assert {p.split(":")[0] for p in refused.value.problems} == {"optim.lr", "data.augment"}
    (tmp_path / "cosine").mkdir()
    cosine = saved_run(tmp_path / "cosine", scheduler="cosine")
    with pytest.raises(ConfigError, match="cosine"):
        cosine.resume_config(["schedule.epochs=4"])


def test_reading_a_run_goes_through_the_run_folder(tmp_path: Path):
    folder = saved_run(tmp_path)
    (tmp_path / "moved").mkdir()
    moved = RunFolder.open(folder.path.rename(tmp_path / "moved" / "run"))
    assert moved.config().run.output_dir == moved.path  # wherever the folder is now
    assert moved.class_names(2) == ["a", "b"]
    with pytest.raises(RunFolderError, match="should list the 3 class names"):
        moved.class_names(3)
    with pytest.raises(RunFolderError, match="no best.safetensors"):
        moved.weights_path()
    assert moved.weights_path(tmp_path / "w.safetensors") == tmp_path / "w.safetensors"
    with pytest.raises(RunFolderError, match="not a run folder"):
        RunFolder.open(tmp_path)
    with pytest.raises(ConfigError, match="set model.num_classes=3"):
        check_class_count(moved.config().model, ["a", "b", "c"])
