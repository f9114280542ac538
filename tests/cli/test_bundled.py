"""Bundled configs: names, lookup by name from any folder, copying, and the `finetune config`
verbs (list, copy, validate) as a user meets them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli import bundled
from cli.config import load_config
from cli.errors import ConfigError
from tests.cli._run_cli import finetune
from tests.cli.test_main import assert_clean_failure

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NAMES = sorted(path.stem for path in CONFIGS.glob("*.yaml"))


def test_the_bundled_configs_are_the_repository_configs():
    assert bundled.names() == NAMES and "quickstart" in NAMES
    assert bundled.bundled_dir().resolve() == CONFIGS


@pytest.mark.parametrize("name", ["quickstart", "quickstart.yaml"])
def test_a_bundled_config_is_found_with_or_without_its_suffix(name: str):
    assert bundled.find(name) == bundled.bundled_dir() / "quickstart.yaml"
    assert bundled.find("nothing-like-it") is None


def test_a_file_comes_before_a_bundled_config_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert bundled.resolve(Path("quickstart")) == bundled.bundled_dir() / "quickstart.yaml"
    Path("quickstart.yaml").write_text("schedule: {epochs: 1}\n")
    assert bundled.resolve(Path("quickstart")) == Path("quickstart.yaml")
    assert bundled.resolve(Path("quickstart.yaml")) == Path("quickstart.yaml")
    assert bundled.resolve(Path("elsewhere/quickstart.yaml")) == Path("elsewhere/quickstart.yaml")
    assert bundled.resolve(Path("unknown")) == Path("unknown")


def test_a_bundled_config_loads_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("quickstart"), ["schedule.epochs=2"])
    expected = load_config(CONFIGS / "quickstart.yaml", ["schedule.epochs=2"])
    assert config.schedule.epochs == 2 and config.data == expected.data
    assert config.run.output_dir.parent == Path("runs")
    assert config.run.output_dir.name.startswith("quickstart-")


def test_a_bundled_configs_paths_are_looked_for_in_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(Path("resnet18-finetune"))
    root = next(p for p in caught.value.problems if "data.root" in p)
    assert root.startswith("resnet18-finetune.yaml (bundled): data.root: not found: data/my-images")
    assert str(tmp_path / "data" / "my-images") in root
    assert str(bundled.bundled_dir()) not in root
    (tmp_path / "data" / "my-images").mkdir(parents=True)
    config = load_config(Path("resnet18-finetune"), check_files=False)
    assert config.data.root == (tmp_path / "data" / "my-images").resolve()


def test_copy_into_the_current_folder_a_folder_or_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    original = (CONFIGS / "quickstart.yaml").read_text()
    assert bundled.copy("quickstart") == Path("quickstart.yaml")
    (tmp_path / "mine").mkdir()
    assert bundled.copy("quickstart.yaml", Path("mine")) == Path("mine/quickstart.yaml")
    assert bundled.copy("quickstart", Path("new/q.yaml")) == Path("new/q.yaml")
    for copied in ("quickstart.yaml", "mine/quickstart.yaml", "new/q.yaml"):
        assert (tmp_path / copied).read_text() == original
    with pytest.raises(bundled.BundledConfigError, match="already exists; add --overwrite"):
        bundled.copy("quickstart")
    Path("quickstart.yaml").write_text("edited\n")
    bundled.copy("quickstart", overwrite=True)
    assert Path("quickstart.yaml").read_text() == original


def test_config_list_names_every_bundled_config(tmp_path):
    done = finetune("config", "list", cwd=tmp_path, COLUMNS="200")
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in NAMES)
    assert "from scratch on the bundled 8x8 handwritten digits" in done.stdout


def test_config_copy_then_train_names_the_copy(tmp_path):
    done = finetune("config", "copy", "quickstart", "my.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "finetune train my.yaml" in done.stdout
    assert (tmp_path / "my.yaml").read_text() == (CONFIGS / "quickstart.yaml").read_text()
    again = finetune("config", "copy", "quickstart", "my.yaml", cwd=tmp_path)
    assert_clean_failure(again, 2, "my.yaml already exists")
    unknown = finetune("config", "copy", "quickstrat", cwd=tmp_path)
    assert_clean_failure(unknown, 2, "no bundled config named 'quickstrat'", "quickstart")


def test_config_validate_prints_the_resolved_config(tmp_path):
    done = finetune("config", "validate", "quickstart", "schedule.epochs=3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert done.stdout.startswith("# quickstart: valid\n")
    assert resolved["schedule"]["epochs"] == 3
    assert resolved["optim"]["weight_decay"] == 0.0  # a default, filled in
    assert resolved["data"]["image_size"] == 32  # from the file


def test_config_validate_reports_every_problem_at_once(tmp_path):
    done = finetune("config", "validate", "resnet18-finetune", "optim.lrr=1", cwd=tmp_path)
    assert_clean_failure(done, 2, "3 problems", "model.weights", "data.root", "optim.lrr")
    assert done.stdout == ""


def test_an_unknown_config_name_lists_the_bundled_ones(tmp_path):
    done = finetune("train", "quickstrat", cwd=tmp_path)
    assert_clean_failure(done, 2, "quickstrat: config file not found", ", ".join(NAMES))
