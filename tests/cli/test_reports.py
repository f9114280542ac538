"""The pieces of a run's report: scores, results.csv, pictures, TensorBoard events, and the
one-line hints when matplotlib or tensorboardX is missing."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from cli.config import Config
from cli.reports import plots
from cli.reports.metrics import ClassScores, Scores, sample_losses, top_k_accuracy
from cli.reports.results import MetricsLog, write_results_csv
from cli.reports.run_report import best_epoch
from cli.training.run_folder import RunFolder

# 7 images of 3 classes; the predictions (argmax) are 0 1 | 1 1 | 2 0 2.
LABELS = np.array([0, 0, 1, 1, 2, 2, 2])
PREDICTED = np.array([0, 1, 1, 1, 2, 0, 2])


def log_probs_for(
    predicted: np.ndarray, classes: int, second: np.ndarray | None = None
) -> np.ndarray:
    """Log-probabilities whose best class is `predicted` (p=0.6) and second best `second`."""
    second = (predicted + 1) % classes if second is None else second
    probs = np.full((len(predicted), classes), 0.1 / max(classes - 2, 1))
    probs[np.arange(len(predicted)), second] = 0.3
    probs[np.arange(len(predicted)), predicted] = 0.6
    return np.log(probs / probs.sum(axis=1, keepdims=True))


def test_scores_of_a_hand_computed_confusion_matrix() -> None:
    scores = Scores.compute(log_probs_for(PREDICTED, 3), LABELS)
    np.testing.assert_array_equal(scores.confusion, [[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    assert scores.images == 7 and scores.accuracy == pytest.approx(5 / 7)
    classes = scores.classes
    np.testing.assert_allclose(classes.precision, [1 / 2, 2 / 3, 2 / 2])
    np.testing.assert_allclose(classes.recall, [1 / 2, 2 / 2, 2 / 3])
    np.testing.assert_allclose(classes.f1, [1 / 2, 4 / 5, 4 / 5])
    averages = classes.averages()
    assert averages["macro"]["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert averages["macro"]["f1"] == pytest.approx((1 / 2 + 4 / 5 + 4 / 5) / 3)
    assert averages["weighted"]["recall"] == pytest.approx((2 * 1 / 2 + 2 * 1 + 3 * 2 / 3) / 7)
    assert averages["weighted"]["precision"] == pytest.approx((2 * 1 / 2 + 2 * 2 / 3 + 3) / 7)


def test_undefined_ratios_are_nan_and_count_as_zero_where_sklearn_counts_them() -> None:
    # Class 3 has no images and is never predicted; class 2 is never predicted.
    confusion = np.array([[2, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    classes = ClassScores.from_confusion(confusion)
    assert np.isnan(classes.precision[2]) and classes.recall[2] == 0 and classes.f1[2] == 0
    assert np.isnan(classes.precision[3]) and np.isnan(classes.recall[3])
    assert np.isnan(classes.f1[3])
    macro = classes.averages()["macro"]
    assert macro["precision"] == pytest.approx((2 / 4 + 1 / 2 + 0) / 3)  # over classes 0-2
    assert macro["recall"] == pytest.approx((1 + 1 / 2 + 0) / 3)


def test_top_k_accuracy_and_losses() -> None:
    second = np.array([1, 0, 2, 0, 1, 2, 0])  # the label is second best for images 1 and 5
    log_probs = log_probs_for(PREDICTED, 4, second)
    assert top_k_accuracy(log_probs, LABELS, 1) == pytest.approx(5 / 7)
    assert top_k_accuracy(log_probs, LABELS, 2) == pytest.approx(7 / 7)
    scores = Scores.compute(log_probs, LABELS)
    assert scores.top_k == 4 and scores.top_k_accuracy == 1.0  # k is capped by the classes
    plain = sample_losses(log_probs, LABELS)
    np.testing.assert_allclose(plain, -log_probs[np.arange(7), LABELS])
    smoothed = sample_losses(log_probs, LABELS, 0.1)
    np.testing.assert_allclose(smoothed, 0.9 * plain - 0.1 * log_probs.mean(axis=1))
    assert scores.loss == pytest.approx(plain.mean())


def test_smoothed_losses_match_torch(torch) -> None:
    log_probs = log_probs_for(PREDICTED, 3)
    logits = torch.tensor(log_probs)
    expected = torch.nn.functional.cross_entropy(
        logits, torch.tensor(LABELS), label_smoothing=0.2, reduction="none"
    )
    np.testing.assert_allclose(sample_losses(log_probs, LABELS, 0.2), expected.numpy())


# ------------------------------------------------------------------ the run folder's files

STEPS = [
    {"step": 1, "epoch": 1, "batch": 1, "batches": 2, "loss": 2.0, "acc": 0.25, "lr": 0.1},
    {"step": 2, "epoch": 1, "batch": 2, "batches": 2, "loss": 1.5, "acc": 0.5, "lr": 0.1},
]


def epoch_row(epoch: int, val_acc: float | None) -> dict:
    return {
        "epoch": epoch,
        "train_loss": 1.0 / epoch,
        "train_acc": 0.5 + epoch / 10,
        "val_loss": None if val_acc is None else 1.2 / epoch,
        "val_acc": val_acc,
        "lr": 0.1 / epoch,
        "time": 1.5,
        "images_per_s": 10.25,
    }


def test_results_csv_holds_the_epoch_rows_of_metrics_jsonl(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    rows = [STEPS[0], epoch_row(1, 0.5), STEPS[1], epoch_row(2, None), epoch_row(3, 0.75)]
    for row in rows:
        folder.append_metrics(row)
    with open(write_results_csv(folder), newline="") as f:
        table = list(csv.DictReader(f))
    epochs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    epochs = [row for row in epochs if "step" not in row]
    assert len(table) == len(epochs) == 3
    for line, row in zip(table, epochs, strict=True):
        assert list(line) == list(row)
        for key, value in row.items():
            assert line[key] == ("" if value is None else str(value)), key
            if value is not None:
                assert float(line[key]) == value


def test_best_epoch_is_the_first_with_the_highest_validation_accuracy() -> None:
    assert best_epoch([epoch_row(1, 0.5), epoch_row(2, 0.75), epoch_row(3, 0.75)]) == 2
    assert best_epoch([epoch_row(1, None), epoch_row(2, None)]) == 2  # training accuracy
    assert best_epoch([]) is None


def assert_picture(path: Path, min_width: int, min_height: int) -> None:
    """A PNG of at least this size with some variety of colour (not blank)."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width >= min_width and image.height >= min_height, image.size
        pixels = np.asarray(image.convert("L"))
    assert (pixels < 128).mean() > 0.01 and (pixels > 200).mean() > 0.3


def test_curves_picture(tmp_path: Path) -> None:
    epochs = [epoch_row(1, 0.5), epoch_row(2, 0.75), epoch_row(3, 0.5)]
    path = plots.curves(epochs, STEPS, 2, "run: resnet18", tmp_path / "curves.png")
    assert_picture(path, 1200, 400)


@pytest.mark.parametrize("classes", [3, 100])
def test_confusion_pictures_grow_with_the_classes(tmp_path: Path, classes: int) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 3, (classes, classes)) + np.diag(rng.integers(5, 20, classes))
    names = [f"class {i}" for i in range(classes)]
    for normalized in (False, True) if classes < 100 else (True,):
        path = tmp_path / f"{normalized}.png"
        plots.confusion(matrix, names, normalized, "Confusion matrix", path)
        side = 500 if classes == 3 else 2000  # 100 classes: about 22 pixels a cell, or more
        assert_picture(path, side, side)


def test_gallery_picture(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tiles = [
        plots.Tile(
            Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)),
            true="cat",
            predicted="dog" if i % 2 else "cat",
            probability=0.8,
            loss=2.5 - i / 10,
        )
        for i in range(6)
    ] + [plots.Tile(Image.fromarray(rng.random((8, 8), dtype=np.float32)), "a", "b", 0.5, 0.1)]
    path = plots.gallery(tiles, "Highest-loss images", tmp_path / "mistakes.png")
    assert_picture(path, 1000, 600)  # 4 columns, 2 rows


def read_events(directory: Path) -> list:
    """Every event in the TFRecord files under `directory` (length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for file in sorted(directory.glob("events.out.tfevents.*")):
        data = file.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            events.append(Event.FromString(data[at + 12 : at + 12 + length]))
            at += 12 + length + 4
    return events


def test_tensorboard_events_read_back(tmp_path: Path) -> None:
    config = Config.from_dict({"run": {"tensorboard": True}})
    picture = plots.confusion(np.eye(2, dtype=int), ["a", "b"], False, "m", tmp_path / "m.png")
    with MetricsLog(RunFolder(tmp_path), config, Console()) as log:
        for row in [*STEPS, epoch_row(1, 0.5)]:
            log.record(row)
        log.events.image("confusion_matrix", picture, 1)
    scalars, images = {}, {}
    for event in read_events(tmp_path / "tensorboard"):
        for value in event.summary.value:
            if value.HasField("image"):
                images[value.tag] = (event.step, value.image)
            else:
                scalars[value.tag, event.step] = value.simple_value
    assert scalars["train_step/loss", 1] == 2.0 and scalars["train_step/loss", 2] == 1.5
    assert scalars["train_step/lr", 2] == pytest.approx(0.1)
    assert scalars["epoch/val_acc", 1] == 0.5 and scalars["epoch/train_loss", 1] == 1.0
    assert ("epoch/val_loss", 1) in scalars and ("train_step/epoch", 1) not in scalars
    step, image = images["confusion_matrix"]
    with Image.open(picture) as png:
        assert (step, image.width, image.height) == (1, png.width, png.height)
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "metrics.jsonl").is_file()


HIDE = "import sys; sys.modules[{name!r}] = None; "


@pytest.mark.parametrize(
    ("module", "code", "hint"),
    [
        (
            "matplotlib",
            "from cli.reports.plots import matplotlib_or_hint as f; from rich.console import "
            "Console; assert not f('pictures', Console())",
            "pictures skipped: matplotlib is not installed (pip install 'finetune[plots]')",
        ),
        (
            "tensorboardX",
            "from cli.reports.tensorboard import Events; from rich.console import Console; "
            "from pathlib import Path; assert Events.open(Path('.'), Console()) is None",
            "TensorBoard events skipped: tensorboardX is not installed "
            "(pip install 'finetune[tensorboard]')",
        ),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(module: str, code: str, hint: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", HIDE.format(name=module) + code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hint


def test_report_of_a_run_whose_images_are_gone(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    data = {"dataset": "imagefolder", "root": str(images)}
    config = Config.from_dict({"model": {"num_classes": 1}, "data": data})
    folder = RunFolder(tmp_path / "run")
    folder.start(config, ["a"])
    for row in (STEPS[0], epoch_row(1, 0.5)):
        folder.append_metrics(row)
    (folder.path / "best.safetensors").write_bytes(b"not read")
    images.rename(tmp_path / "moved")
    result = CliRunner().invoke(app, ["report", str(folder.path)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "mistakes.png skipped: the validation images cannot be read" in result.output
    assert f"wrote results.csv, curves.png in {folder.path}" in result.output
    assert_picture(folder.path / "curves.png", 1200, 400)
