"""The fine-tuning recipe through `finetune train`, on the tiny config of test_train_e2e: a head
stage on cached features, the unfreeze, early stopping, plateau, class weights and the
balanced sampler in one run, and a resume across the unfreeze that matches it bit for bit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _run_cli import finetune

from cli.training.run_folder import RunFolder
from tests.cli.test_train_e2e import assert_identical, rows, weights, write_config

pytestmark = pytest.mark.slow

RECIPE = {
    "model": {"freeze": ["*"], "new_head": True, "bn": "eval"},
    "data": {"sampler": "balanced", "cache_features": True},
    "schedule": {
        "epochs": 5,
        "scheduler": "plateau",
        "plateau_patience": 0,
        "unfreeze_at_epoch": 1,
        "class_weights": {"0": 2.0},
        "early_stopping": {"metric": "val_acc", "patience": 2, "min_delta": 1.0},
    },
    "run": {"best_metric": "val_loss"},
}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recipe")


@pytest.fixture(scope="module")
def straight(work: Path) -> subprocess.CompletedProcess:
    """Epoch 1 trains the head, then everything; early stopping ends the run after epoch 4
    (min_delta 1.0: no epoch after the first of a stage improves, patience 2)."""
    config = write_config(work, "recipe.yaml", **RECIPE)
    return finetune("train", str(config), "run.output_dir=straight", cwd=work)


def test_the_recipe_runs_its_stages_and_stops_early(work: Path, straight):
    assert straight.returncode == 0, straight.stderr
    out = straight.stdout
    assert "computing the backbone's features" in out  # the head stage, on cached features
    assert "from epoch 2, every parameter trains (backbone at 0.1 x the head's lr)" in out
    assert "no val_acc improvement for 2 epoch(s); stopping after epoch 4" in out
    run = work / "straight"
    epochs = [row for row in rows(run) if "step" not in row]
    assert [row["epoch"] for row in epochs] == [1, 2, 3, 4]
    state = RunFolder(run).load_checkpoint().trainer
    assert state.stopped_early and state.stage == 1 and state.epoch == 4
    best = min(epochs, key=lambda row: row["val_loss"])
    assert state.best_epoch == best["epoch"] and state.best_score == best["val_loss"]
    before = weights(run / "best.safetensors")
    assert (run / "best.safetensors").exists() and before.keys() == weights(
        run / "last.safetensors"
    ).keys()

    again = finetune("train", "--resume", str(run), cwd=work)
    assert again.returncode == 0, again.stderr
    assert "stopped early after epoch 4" in again.stdout
    assert_identical(weights(run / "best.safetensors"), before)


def test_resumes_across_the_unfreeze_and_early_stopping_epochs_match_the_straight_run(
    work: Path, straight
):
    """Stopped after the head stage, then after an epoch without improvement, then resumed."""
    config = write_config(work, "recipe.yaml", **RECIPE)
    first = finetune("train", str(config), "run.output_dir=part", "schedule.epochs=1", cwd=work)
    assert first.returncode == 0, first.stderr
    assert "every parameter trains" not in first.stdout
    run = work / "part"
    assert RunFolder(run).load_checkpoint().trainer.stage == 0
    second = finetune("train", "--resume", str(run), "schedule.epochs=3", cwd=work)
    assert second.returncode == 0, second.stderr
    state = RunFolder(run).load_checkpoint().trainer
    assert (state.stage, state.stale_epochs, state.stopped_early) == (1, 1, False)
    done = finetune("train", "--resume", str(run), "schedule.epochs=5", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "stopping after epoch 4" in done.stdout
    for name in ("last.safetensors", "best.safetensors"):
        assert_identical(weights(run / name), weights(work / "straight" / name))
    assert [row["epoch"] for row in rows(run) if "step" not in row] == [1, 2, 3, 4]


def test_onecycle_moves_the_learning_rate_every_step(tmp_path: Path):
    config = write_config(tmp_path, schedule={"epochs": 1, "scheduler": "onecycle"})
    done = finetune("train", str(config), "run.output_dir=run", "optim.lr=0.05", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lrs = [row["lr"] for row in rows(tmp_path / "run") if "step" in row]
    assert len(lrs) == 4 and len(set(lrs)) == 4
    assert max(lrs) == pytest.approx(0.05) and lrs[-1] < 0.05 / 25
