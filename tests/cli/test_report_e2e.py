"""What a tiny training run leaves behind (results.csv, pictures, TensorBoard events), `finetune
report` with and without matplotlib, and `evaluate --json` agreeing with metrics.jsonl."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.training.run_folder import PICTURES
from tests.cli.test_reports import assert_picture, read_events
from tests.cli.test_train_e2e import finetune, plain_env, rows, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("report")
    config = write_config(work, run={"output_dir": "run", "plots": True, "tensorboard": True})
    done = finetune("train", str(config), cwd=work)
    assert done.returncode == 0, done.stderr
    assert f"wrote results.csv, {', '.join(PICTURES)} in run" in done.stdout
    return work / "run"


def test_the_pictures_of_a_run(run: Path) -> None:
    sizes = {
        "curves.png": (1200, 400),
        "confusion_matrix.png": (500, 500),
        "confusion_matrix_normalized.png": (500, 500),
        "mistakes.png": (1000, 600),  # 11 validation images: 4 columns, 3 rows
    }
    for name, (width, height) in sizes.items():
        assert_picture(run / name, width, height)


def test_results_csv_is_the_epoch_rows_of_metrics_jsonl(run: Path) -> None:
    epochs = [row for row in rows(run) if "step" not in row]
    with open(run / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [list(line) for line in table] == [list(row) for row in epochs]
    for line, row in zip(table, epochs, strict=True):
        assert {key: float(value) for key, value in line.items()} == row


def test_tensorboard_has_every_step_and_epoch_and_the_confusion_matrix(run: Path) -> None:
    tags: dict[str, list[int]] = {}
    for event in read_events(run / "tensorboard"):
        for value in event.summary.value:
            tags.setdefault(value.tag, []).append(event.step)
    assert tags["train_step/loss"] == list(range(1, 9))  # 16 images / 4, log_every 1
    assert tags["epoch/val_acc"] == [1, 2] and tags["epoch/lr"] == [1, 2]
    assert len(tags["confusion_matrix"]) == 1 and "confusion_matrix_normalized" in tags


def test_report_without_matplotlib_writes_the_csv_and_says_what_to_install(
    run: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.png", "results.csv"))
    hidden = "import sys; sys.modules['matplotlib'] = None; from cli.main import app; app()"
    done = subprocess.run(
        [sys.executable, "-c", hidden, "report", str(copy)],
        env={**plain_env(), "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        f"pictures ({', '.join(PICTURES)}) skipped: matplotlib is not installed "
        "(pip install 'finetune[plots]')"
    )
    assert lines[1] == f"wrote results.csv in {copy}"
    assert (copy / "results.csv").read_text() == (run / "results.csv").read_text()
    assert not list(copy.glob("*.png"))

    again = finetune("report", str(copy), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert all((copy / name).is_file() for name in PICTURES)


def test_evaluate_json_agrees_with_the_best_epoch(run: Path, tmp_path: Path) -> None:
    done = finetune("evaluate", str(run), "--json", str(tmp_path / "e.json"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "e.json").read_text())
    epochs = [row for row in rows(run) if "step" not in row]
    best = max(epochs, key=lambda row: row["val_acc"])
    assert report["accuracy"] == best["val_acc"]
    assert report["loss"] == pytest.approx(best["val_loss"], rel=1e-5)
    assert sum(map(sum, report["confusion_matrix"])) == report["images"]
