"""`finetune evaluate` and `finetune predict` on a run folder made with the run-folder API.

The run's model has a zero `fc.weight` and `fc.bias = [1, 0]`, so whatever the image it
outputs the logits [1, 0]: every prediction is class "0" with probability e / (e + 1), and
every figure of the evaluation follows from the class counts of the validation split.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _run_cli import finetune, words
from PIL import Image
from typer.testing import CliRunner, Result

import engine
from cli.config import Config
from cli.data import build_datasets
from cli.main import app
from cli.training.run_folder import BEST, RunFolder
from engine.io import save_safetensors
from engine.models import resnet18

CONFIG = {
    "model": {"arch": "resnet18", "num_classes": 2},
    "data": {
        "dataset": "digits",
        "classes": ["0", "1"],
        "val_fraction": 0.1,
        "image_size": 16,
        "resize": 16,
        "mean": [0.3, 0.3, 0.3],
        "std": [0.3, 0.3, 0.3],
        "batch_size": 16,
        "num_workers": 0,
    },
    "run": {"seed": 0},
}
P_FIRST = math.e / (math.e + 1)  # softmax([1, 0])[0]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def constant_model() -> engine.nn.Module:
    engine.manual_seed(0)
    model = resnet18(num_classes=2)
    with engine.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(engine.tensor([1.0, 0.0]))
    return model


@pytest.fixture(scope="module")
def config() -> Config:
    return Config.from_dict(CONFIG)


@pytest.fixture(scope="module")
def val_counts(config: Config) -> list[int]:
    _, val, _ = build_datasets(config.data, config.run.seed)
    return np.bincount(val.labels, minlength=2).tolist()


@pytest.fixture
def run_dir(tmp_path: Path, config: Config) -> Path:
    folder = RunFolder(tmp_path / "run")
    folder.start(config, ["0", "1"])
    folder.save_weights(BEST, constant_model().state_dict())
    return folder.path


def digit_png(path: Path, index: int) -> Path:
    from cli.data.digits import load_digits

    images, _ = load_digits()
    Image.fromarray((images[index] * 255).round().astype(np.uint8)).save(path)
    return path


def test_evaluate_a_run_folder_through_the_real_command(
    run_dir: Path, val_counts: list[int]
) -> None:
    result = finetune("evaluate", str(run_dir))
    assert result.returncode == 0, result.stderr
    zeros, ones = val_counts
    total = zeros + ones
    loss = (zeros * -math.log(P_FIRST) + ones * -math.log(1 - P_FIRST)) / total
    report = words(result.stdout)
    assert f"images {total} (validation split)" in report
    assert f"accuracy {zeros / total:.1%}" in report
    assert f"loss {loss:.4f}" in report
    assert f"0 {zeros} {total} {zeros / total:.1%} 100.0%" in report  # class 0: all predicted
    assert f"1 {ones} 0 - 0.0%" in report  # class 1: never predicted, precision undefined
    assert f"0 {zeros} 0 1 {ones} 0" in report  # the confusion matrix rows


def test_evaluate_a_config_with_weights(
    tmp_path: Path, run_dir: Path, val_counts: list[int]
) -> None:
    config = run_dir / "config.yaml"
    result = invoke("evaluate", str(config), "--weights", str(run_dir / BEST))
    assert result.exit_code == 0, result.output
    zeros, ones = val_counts
    assert f"accuracy {zeros / (zeros + ones):.1%}" in words(result.stdout)


def test_evaluate_a_config_without_weights_says_how(run_dir: Path) -> None:
    result = invoke("evaluate", str(run_dir / "config.yaml"))
    assert result.exit_code == 2
    assert "--weights" in words(result.output)


def test_evaluate_weights_of_another_model_is_refused(tmp_path: Path, run_dir: Path) -> None:
    save_safetensors(resnet18(num_classes=5).state_dict(), tmp_path / "other.safetensors")
    result = invoke("evaluate", str(run_dir), "--weights", str(tmp_path / "other.safetensors"))
    assert result.exit_code == 1
    message = words(result.output)
    assert "does not fit resnet18 with 2 classes" in message and "fc.weight" in message


def test_evaluate_a_run_without_best_weights(run_dir: Path) -> None:
    (run_dir / BEST).unlink()
    result = invoke("evaluate", str(run_dir))
    assert result.exit_code == 2
    assert "no best.safetensors" in words(result.output)


def test_predict_prints_top_k_per_image(tmp_path: Path, run_dir: Path) -> None:
    images = [digit_png(tmp_path / f"digit{i}.png", i) for i in range(2)]
    result = invoke("predict", str(run_dir), *map(str, images), "--top-k", "5")
    assert result.exit_code == 0, result.output
    report = words(result.stdout)
    assert "Top 2 of 2 classes" in report  # k is capped at the number of classes
    for image in images:
        assert f"{image} 0 {P_FIRST:.1%} 1 {1 - P_FIRST:.1%}" in report


def test_predict_names_an_unreadable_image(tmp_path: Path, run_dir: Path) -> None:
    good = digit_png(tmp_path / "good.png", 0)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    result = invoke("predict", str(run_dir), str(good), str(bad))
    assert result.exit_code == 1
    message = words(result.output)
    assert f"cannot read image {bad}" in message
    assert "Traceback" not in result.output


def test_predict_names_a_missing_image(tmp_path: Path, run_dir: Path) -> None:
    result = invoke("predict", str(run_dir), str(tmp_path / "missing.png"))
    assert result.exit_code == 1
    assert f"cannot read image {tmp_path / 'missing.png'}" in words(result.output)


def test_predict_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    result = invoke("predict", str(tmp_path), str(digit_png(tmp_path / "d.png", 0)))
    assert result.exit_code == 2
    assert "not a run folder" in words(result.output)
