"""The command line as a user meets it: --version, --help, and every input error as one
message on stderr with the right exit code and no traceback. Runs the real CLI in a subprocess;
nothing here trains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from _run_cli import finetune

from cli.main import app

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GOOD = {
    "model": {"arch": "resnet18", "num_classes": 2},
    "data": {"dataset": "digits", "classes": ["0", "1"], "image_size": 16, "resize": 16},
    "schedule": {"epochs": 1},
}


def write_config(folder: Path, text: str | None = None, **sections: dict) -> Path:
    path = folder / "run.yaml"
    keys = GOOD.keys() | sections.keys()
    config = {key: {**GOOD.get(key, {}), **sections.get(key, {})} for key in keys}
    path.write_text(yaml.safe_dump(config) if text is None else text)
    return path


def assert_clean_failure(done: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    """Failed with `code`, saying each needle on stderr, without a traceback."""
    assert done.returncode == code, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    for needle in needles:
        assert needle in done.stderr, f"{needle!r} not in:\n{done.stderr}"


def test_version(tmp_path: Path):
    done = finetune("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("finetune 0.")


def verbs() -> list[list[str]]:
    """Every command as typed: ["train"], ..., and ["weights"], ["weights", "fetch"], ..."""

    def name(command: typer.models.CommandInfo) -> str:
        return command.name or command.callback.__name__.replace("_", "-")

    found = [[name(command)] for command in app.registered_commands]
    for group in app.registered_groups:
        found.append([group.name])
        found += [[group.name, name(c)] for c in group.typer_instance.registered_commands]
    return found


def test_top_level_help_lists_the_verbs(tmp_path: Path):
    done = finetune("--help", cwd=tmp_path)
    assert done.returncode == 0
    assert all(words[0] in done.stdout for words in verbs())


@pytest.mark.parametrize("words", verbs(), ids=" ".join)
def test_every_verb_has_examples_in_its_help(words: list[str], tmp_path: Path):
    done = finetune(*words, "--help", cwd=tmp_path, COLUMNS="200")
    assert done.returncode == 0, done.stderr
    assert "Example" in done.stdout and f"finetune {' '.join(words)}" in done.stdout


def test_the_cli_does_not_import_torch(tmp_path: Path):
    check = "import sys, cli.main, cli.train; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("optim.lrr=0.1", ["optim.lrr", "unknown key", "did you mean 'lr'"]),
        ("schedule.epochs=two", ["schedule.epochs", "expected an integer"]),
        ("model.weights=missing.safetensors", ["model.weights", "missing.safetensors"]),
        ("data.dataset=imagefolder", ["data.root", "required"]),
    ],
)
def test_config_errors_name_the_key_and_file(override: str, needles: list[str], tmp_path: Path):
    config = write_config(tmp_path)
    done = finetune("train", str(config), override, cwd=tmp_path)
    assert_clean_failure(done, 2, "run.yaml", *needles)
    assert not (tmp_path / "runs").exists()  # nothing started


def test_a_missing_data_root_is_a_config_error(tmp_path: Path):
    config = write_config(tmp_path, data={"dataset": "imagefolder", "root": "no/such/folder"})
    assert_clean_failure(finetune("train", str(config), cwd=tmp_path), 2, "data.root", "no/such")


def test_all_config_problems_are_reported_at_once(tmp_path: Path):
    config = write_config(tmp_path, optim={"name": "sgdd"}, schedule={"epochs": 0})
    done = finetune("train", str(config), "run.seed=-1", cwd=tmp_path)
    assert_clean_failure(done, 2, "optim.name", "schedule.epochs", "run.seed", "3 problems")


def test_a_missing_config_file(tmp_path: Path):
    assert_clean_failure(finetune("train", "nope.yaml", cwd=tmp_path), 2, "nope.yaml", "not found")


def test_a_corrupt_weights_file(tmp_path: Path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    config = write_config(tmp_path, model={"weights": "bad.safetensors"})
    done = finetune("train", str(config), cwd=tmp_path)
    assert_clean_failure(done, 2, "model.weights", "bad.safetensors", "corrupt")


def test_weights_of_another_model(tmp_path: Path):
    config = write_config(tmp_path, model={"weights": str(FIXTURES / "tiny_model.safetensors")})
    done = finetune("train", str(config), cwd=tmp_path)
    assert_clean_failure(done, 2, "run.yaml", "model.weights", "does not fit resnet18")


def test_freeze_patterns_that_match_nothing(tmp_path: Path):
    config = write_config(tmp_path, model={"freeze": ["layr4.*"]})
    done = finetune("train", str(config), cwd=tmp_path)
    assert_clean_failure(done, 2, "model.freeze[0]", "'layr4.*' matches no parameter")


def test_param_groups_that_match_nothing(tmp_path: Path):
    config = write_config(tmp_path, optim={"groups": [{"params": ["head.*"], "lr": 0.1}]})
    done = finetune("train", str(config), cwd=tmp_path)
    assert_clean_failure(done, 2, "optim.groups[0].params", "match no trainable parameter")


def test_num_classes_must_match_the_data(tmp_path: Path):
    config = write_config(tmp_path, model={"num_classes": 10})
    done = finetune("train", str(config), cwd=tmp_path)
    assert_clean_failure(done, 2, "model.num_classes", "set model.num_classes=2")


def test_a_traceback_with_finetune_debug(tmp_path: Path):
    config = write_config(tmp_path, model={"freeze": ["layr4.*"]})
    done = finetune("train", str(config), cwd=tmp_path, FINETUNE_DEBUG="1")
    assert done.returncode != 0 and "Traceback" in done.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train"], "CONFIG.yaml"),
        (["train", "--resume", "run", "run.yaml"], "drop CONFIG.yaml"),
        (["train", "--resume", "run", "--overwrite"], "--overwrite"),
        (["train", "--resume", "elsewhere"], "no such run folder"),
    ],
)
def test_usage_errors(args: list[str], needle: str, tmp_path: Path):
    (tmp_path / "run").mkdir()
    write_config(tmp_path)
    assert_clean_failure(finetune(*args, cwd=tmp_path, COLUMNS="200"), 2, needle)


def fake_run(tmp_path: Path) -> Path:
    """A run folder with a config and an unreadable trainer state."""
    run = tmp_path / "run"
    run.mkdir()
    config = {key: dict(value) for key, value in GOOD.items()}
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "run": {"output_dir": "run"}}))
    (run / "trainer_state.safetensors").write_bytes(b"garbage")
    return run


def test_resume_refuses_overrides_that_would_break_exactness(tmp_path: Path):
    run = fake_run(tmp_path)
    done = finetune("train", "--resume", str(run), "optim.lr=0.1", cwd=tmp_path)
    assert_clean_failure(done, 2, "optim.lr", "cannot change when resuming", "schedule.epochs")


def test_resume_from_a_corrupt_trainer_state(tmp_path: Path):
    run = fake_run(tmp_path)
    done = finetune("train", "--resume", str(run), cwd=tmp_path)
    assert_clean_failure(done, 2, "trainer_state.safetensors", "corrupt")


def test_resume_of_a_folder_without_a_trainer_state(tmp_path: Path):
    (tmp_path / "run").mkdir()
    done = finetune("train", "--resume", "run", cwd=tmp_path)
    assert_clean_failure(done, 2, "nothing to resume")
