"""The config layer: defaults, overrides, every kind of problem, round trips, shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.config import Config, HorizontalFlipOptions, config_to_dict, load_config
from cli.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return caught.value.problems


def test_empty_config_gives_the_documented_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.model.arch == "resnet18" and cfg.model.weights is None
    assert cfg.model.num_classes == 10 and cfg.model.freeze == () and cfg.model.bn == "train"
    assert cfg.data.dataset == "digits" and cfg.data.val_fraction == 0.2
    assert (cfg.data.image_size, cfg.data.resize) == (224, 256)
    assert cfg.data.mean == (0.485, 0.456, 0.406) and cfg.data.std == (0.229, 0.224, 0.225)
    assert cfg.data.augment == ()
    assert cfg.data.on_bad_image == "stop" and cfg.data.cache_features and cfg.data.limit is None
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.01, 0.9)
    assert cfg.optim.betas == (0.9, 0.999) and cfg.optim.eps == 1e-8 and cfg.optim.groups == ()
    assert (cfg.schedule.epochs, cfg.schedule.scheduler) == (10, "none")
    assert cfg.schedule.grad_clip is None
    assert cfg.run.seed == 0 and cfg.run.log_every == 10 and cfg.run.checkpoint_every == 1


def test_null_output_dir_becomes_a_timestamped_folder_named_after_the_config(tmp_path):
    cfg = load_config(write(tmp_path, "run: {seed: 1}\n", name="mine.yaml"))
    assert cfg.run.output_dir.parent == Path("runs")
    assert cfg.run.output_dir.name.startswith("mine-")
    assert len(cfg.run.output_dir.name) == len("mine-YYYYmmdd-HHMMSS")


def test_values_are_typed_and_ints_are_accepted_as_floats(tmp_path):
    text = """
optim: {name: adamw, lr: 1, betas: [0.8, 0.99], eps: 1e-6}
data: {classes: ["0", "1"], augment: {hflip: true}, limit: 50}
schedule: {label_smoothing: 1e-1, grad_clip: 5}
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.eps == 1e-6 and cfg.schedule.label_smoothing == 0.1
    assert cfg.optim.betas == (0.8, 0.99) and cfg.data.classes == ("0", "1")
    assert cfg.data.augment == (HorizontalFlipOptions(),)
    assert cfg.data.limit == 50 and cfg.schedule.grad_clip == 5.0


def test_param_groups_and_single_pattern_shorthand(tmp_path):
    text = """
model: {freeze: "*", unfreeze: [layer4.*, fc.*]}
optim:
  groups:
    - params: fc.*
      lr: 0.1
    - {params: [layer3.*, layer4.*], weight_decay: 0.0001}
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.model.freeze == ("*",) and cfg.model.unfreeze == ("layer4.*", "fc.*")
    first, second = cfg.optim.groups
    assert first.params == ("fc.*",) and first.lr == 0.1 and first.momentum is None
    assert second.params == ("layer3.*", "layer4.*") and second.weight_decay == 0.0001


def test_dotted_overrides_are_parsed_as_yaml(tmp_path):
    path = write(tmp_path, "optim: {lr: 0.1}\n")
    cfg = load_config(
        path,
        ["optim.lr=0.001", "data.augment.hflip=true", "model.freeze=[layer1.*]", "run.seed=7"],
    )
    assert cfg.optim.lr == 0.001 and cfg.data.augment == (HorizontalFlipOptions(),)
    assert cfg.model.freeze == ("layer1.*",) and cfg.run.seed == 7


def test_unknown_keys_are_reported_with_a_suggestion(tmp_path):
    path = write(tmp_path, "optim: {lrr: 0.1}\noptimizer: {}\n")
    found = problems(path)
    assert f"{path}: optim.lrr: unknown key; did you mean 'lr'?" in found
    assert f"{path}: optimizer: unknown key; did you mean 'optim'?" in found


def test_wrong_types_name_the_file_the_key_and_the_value(tmp_path):
    path = write(tmp_path, "optim: {lr: abc}\nschedule: {epochs: 2.5}\ndata: {classes: [0]}\n")
    found = problems(path)
    assert f"{path}: optim.lr: expected a number, got 'abc'" in found
    assert f"{path}: schedule.epochs: expected an integer, got 2.5" in found
    assert f'{path}: data.classes[0]: expected a string, got 0 (quote it: "0")' in found


def test_booleans_are_not_numbers_and_sections_must_be_mappings(tmp_path):
    path = write(tmp_path, "run: {seed: true}\noptim: 3\n")
    found = problems(path)
    assert f"{path}: run.seed: expected an integer, got True" in found
    assert f"{path}: optim: expected a mapping of keys, got 3" in found


def test_bad_choices_list_the_allowed_ones(tmp_path):
    path = write(tmp_path, "model: {arch: resnet19}\noptim: {name: SGD}\n")
    found = problems(path)
    assert (
        f"{path}: model.arch: expected one of 'resnet18', 'resnet34', 'resnet50', "
        "got 'resnet19'; did you mean 'resnet18'?"
    ) in found
    assert any("optim.name" in p and "did you mean 'sgd'?" in p for p in found)


def test_out_of_range_and_inconsistent_values(tmp_path):
    text = """
optim: {lr: -1, momentum: 1.5, betas: [0.9]}
data: {val_fraction: 1, image_size: 300, augment: {scale: [0.9, 0.1]}}
schedule: {epochs: 2, warmup_epochs: 2}
"""
    path = write(tmp_path, text)
    found = problems(path)
    assert f"{path}: optim.lr: must be > 0, got -1.0" in found
    assert f"{path}: optim.momentum: must be >= 0 and < 1, got 1.5" in found
    assert f"{path}: optim.betas: expected a list of 2 items, got 1: [0.9]" in found
    assert f"{path}: data.val_fraction: must be >= 0 and < 1, got 1.0" in found
    assert f"{path}: data.augment.scale: expected [min, max], got [0.9, 0.1]" in found
    assert f"{path}: schedule.warmup_epochs: must be less than schedule.epochs (2)" in found


def test_cross_field_rules(tmp_path):
    text = "data: {dataset: imagefolder, image_size: 300, classes: ['a', 'a']}\n"
    path = write(tmp_path, text)
    found = problems(path, ["optim.nesterov=true", "optim.name=adam"])
    assert f"{path}: data.root: required for dataset 'imagefolder'" in found
    assert f"{path}: data.resize: must be >= data.image_size (300), got 256" in found
    assert f"{path}: data.classes: listed more than once: 'a'" in found
    assert any(p.startswith(f"{path}: optim.nesterov: needs optim.name 'sgd'") for p in found)


def test_missing_files_name_the_places_searched(tmp_path):
    path = write(tmp_path, "model: {weights: nothere.safetensors}\n")
    (found,) = problems(path)
    assert found.startswith(f"{path}: model.weights: not found: nothere.safetensors")
    assert str(tmp_path / "nothere.safetensors") in found


def test_paths_resolve_next_to_the_config_then_in_the_cwd(tmp_path, monkeypatch):
    config_dir, cwd = tmp_path / "configs", tmp_path / "work"
    (config_dir / "images").mkdir(parents=True)
    (cwd / "weights").mkdir(parents=True)
    (cwd / "weights" / "w.safetensors").write_bytes(b"")
    monkeypatch.chdir(cwd)
    text = "model: {weights: weights/w.safetensors}\ndata: {dataset: imagefolder, root: images}\n"
    cfg = load_config(write(config_dir, text))
    assert cfg.model.weights == (cwd / "weights" / "w.safetensors").resolve()
    assert cfg.data.root == (config_dir / "images").resolve()


def test_root_kind_must_fit_the_dataset(tmp_path):
    (tmp_path / "folder").mkdir()
    path = write(tmp_path, "data: {dataset: npz, root: folder}\n")
    (found,) = problems(path)
    assert "data.root: dataset 'npz' needs an .npz file" in found


def test_check_files_false_skips_existence_checks(tmp_path):
    path = write(tmp_path, "model: {weights: later.safetensors}\n")
    cfg = load_config(path, check_files=False)
    assert cfg.model.weights == tmp_path / "later.safetensors"


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "model:\n  arch: resnet18\n bad: [\n")
    (found,) = problems(path)
    assert found.startswith(f"{path}: invalid YAML at line ")


def test_missing_config_file_and_non_mapping_config(tmp_path):
    (found,) = problems(tmp_path / "absent.yaml")
    assert found.startswith(f"{tmp_path / 'absent.yaml'}: config file not found; ")
    assert "a bundled config's name: digits-pretrain, digits-transfer, quickstart" in found
    (found,) = problems(write(tmp_path, "- just\n- a list\n"))
    assert "expected a mapping of sections (model, data, optim, schedule, run" in found


def test_all_problems_are_reported_at_once(tmp_path):
    path = write(tmp_path, "model: {arch: vgg}\noptim: {lr: fast}\nrun: {sed: 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["schedule.epochs=0", "oops"])
    found = caught.value.problems
    assert len(found) == 5
    assert "override 'oops': expected key=value, e.g. optim.lr=0.001" in found
    assert (
        f"{path}: schedule.epochs: must be >= 1, got 0 (set by override 'schedule.epochs=0')"
        in found
    )
    message = str(caught.value)
    assert message.startswith("5 problems in the config:")
    assert all(f"  - {p}" in message for p in found)


def test_override_typos_and_bad_override_values(tmp_path):
    path = write(tmp_path, "optim: {lr: 0.1}\n")
    found = problems(path, ["optim.lrr=0.2", "optim.lr.x=1", "data.mean=[1,"])
    assert (
        f"{path}: optim.lrr: unknown key; did you mean 'lr'? (set by override 'optim.lrr=0.2')"
        in found
    )
    assert "override 'optim.lr.x=1': optim.lr is not a section" in found
    assert any(p.startswith("override 'data.mean=[1,': invalid YAML value") for p in found)


def test_missing_required_group_key(tmp_path):
    path = write(tmp_path, "optim: {groups: [{lr: 0.1}]}\n")
    assert problems(path) == [f"{path}: optim.groups[0].params: missing required key"]


def test_dict_round_trip_for_resume(tmp_path):
    (tmp_path / "images").mkdir()
    text = "data: {dataset: imagefolder, root: images}\noptim: {groups: [{params: fc.*}]}\n"
    cfg = load_config(write(tmp_path, text))
    plain = config_to_dict(cfg)
    assert plain["data"]["root"] == str((tmp_path / "images").resolve())
    assert plain["data"]["mean"] == [0.485, 0.456, 0.406]
    assert plain["optim"]["groups"] == [
        {"params": ["fc.*"], "lr": None, "momentum": None, "weight_decay": None}
    ]
    assert Config.from_dict(plain) == cfg


def test_from_dict_reports_problems_under_its_source():
    with pytest.raises(ConfigError) as caught:
        Config.from_dict({"optim": {"lr": "x"}}, source="runs/a/config.yaml")
    assert caught.value.problems == ["runs/a/config.yaml: optim.lr: expected a number, got 'x'"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path, check_files=False)
    assert cfg.model.num_classes >= 1


def test_quickstart_runs_offline_on_the_digits():
    cfg = load_config(CONFIGS / "quickstart.yaml")
    assert cfg.data.dataset == "digits" and cfg.model.weights is None
    assert cfg.data.image_size == cfg.data.resize == 32
