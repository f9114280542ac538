"""`finetune inspect-model`: torch's module tree, parameter counts under the freeze rules, and
output shapes and MACs per layer."""

from __future__ import annotations

from pathlib import Path

import yaml
from _run_cli import finetune, words
from typer.testing import CliRunner, Result

from cli.main import app
from engine.models import resnet18


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["inspect-model", *args], env={"COLUMNS": "200"})


def write_config(folder: Path, **model: object) -> Path:
    config = {
        "model": {"arch": "resnet18", "num_classes": 10, **model},
        "data": {"dataset": "digits", "image_size": 32, "resize": 32},
    }
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_tree_and_totals_through_the_real_command(tmp_path: Path) -> None:
    result = finetune("inspect-model", "--arch", "resnet18", "--num-classes", "10", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(repr(resnet18(num_classes=10)) + "\n")
    summary = words(result.stdout)
    assert "total 11,181,642 11,181,642 trainable, 0 frozen" in summary
    assert "conv1.weight 64×3×7×7 9,408 trainable" in summary
    assert "layer4.1.bn2 BatchNorm2d 1×512×7×7 -" in summary
    assert "fc Linear 1×10 5,120" in summary
    assert "1.81 GMACs = 3.63 GFLOPs per 224×224 image" in summary


def test_freeze_rules_from_a_config(tmp_path: Path) -> None:
    config = write_config(tmp_path, freeze=["*"], unfreeze=["fc.*"])
    result = invoke(str(config))
    assert result.exit_code == 0, result.output
    summary = words(result.stdout)
    assert "total 11,181,642 5,130 trainable, 11,176,512 frozen" in summary
    assert "layer1.0.conv1.weight 64×64×3×3 36,864 frozen" in summary
    assert "fc.weight 10×512 5,120 trainable" in summary
    assert "Layers (input 1×3×32×32)" in summary  # the config's data.image_size


def test_options_override_the_config(tmp_path: Path) -> None:
    result = invoke(str(write_config(tmp_path)), "--num-classes", "3", "--input-size", "64")
    assert result.exit_code == 0, result.output
    summary = words(result.stdout)
    assert "(fc): Linear(in_features=512, out_features=3, bias=True)" in result.stdout
    assert "conv1 Conv2d 1×64×32×32" in summary
    assert "fc Linear 1×3 1,536" in summary


def test_missing_weights_file_is_a_config_error(tmp_path: Path) -> None:
    result = invoke(str(write_config(tmp_path, weights="weights/nowhere.safetensors")))
    assert result.exit_code == 2
    message = words(result.output)
    assert "model.weights" in message and "nowhere.safetensors" in message


def test_unknown_arch_is_a_usage_error() -> None:
    result = invoke("--arch", "resnet19")
    assert result.exit_code == 2
    assert "resnet19" in words(result.output)
