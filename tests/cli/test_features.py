"""Cached backbone features (cli.training.features).

In process: the cache is reused when nothing changed and recomputed, saying why, when the
weights, the transform or the image files change; skipped images are remembered. Through the
real CLI: a cached linear probe, stopped and resumed on the reused cache, trains the same head
as an uncached one; a resumed or restarted run recomputes when the images or the weights file
change. Tiny data throughout: a 2-class ImageFolder of 20x20 images, seen at 16x16.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import yaml
from _run_cli import finetune
from PIL import Image
from rich.console import Console

import engine
from cli.config import Config
from cli.data import build_datasets
from cli.training.features import Features, backbone_digest, cached_features
from engine.io import save_safetensors
from engine.models import resnet18
from engine.nn import Module

PROBE = {
    "model": {
        "arch": "resnet18",
        "num_classes": 2,
        "freeze": ["*"],
        "unfreeze": ["fc.*"],
        "bn": "eval",
    },
    "data": {
        "dataset": "imagefolder",
        "val_fraction": 0.25,
        "image_size": 16,
        "resize": 16,
        "batch_size": 1,  # see test_cached_and_uncached_probes_train_the_same_head
        "num_workers": 0,
    },
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"epochs": 2},
    "run": {"seed": 0, "log_every": 1},
}


def image_folder(root: Path, per_class: int = 4, seed: int = 0) -> Path:
    """`root/<cat|dog>/<i>.png`: random 20x20 RGB images."""
    rng = np.random.default_rng(seed)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            add_image(root / name / f"{i}.png", rng)
    return root


def add_image(path: Path, rng: np.random.Generator) -> None:
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(path)


def probe_config(root: Path, **data: object) -> Config:
    sections = {**PROBE, "data": {**PROBE["data"], "root": str(root), **data}}
    return Config.from_dict(sections)


def run_cache(config: Config, model: Module, folder: Path) -> tuple[list[Features], str]:
    """The features cached_features gives for both splits, and what it printed."""
    train, val, _ = build_datasets(config.data, config.run.seed)
    out = io.StringIO()
    console = Console(file=out, width=300)
    features = cached_features(config, model, {"train": train, "val": val}, folder, console)
    return features, out.getvalue()


def cache_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.fixture
def model() -> Module:
    engine.manual_seed(0)
    return resnet18(num_classes=2)


# ------------------------------------------------------------------ in process


def test_the_weights_digest_follows_the_backbone_not_the_head():
    model = resnet18(num_classes=2)
    digest = backbone_digest(model)
    model.fc.weight.detach().numpy()[0, 0] += 1
    assert backbone_digest(model) == digest
    model.layer4[1].bn2.running_var.numpy()[0] += 1e-3
    assert backbone_digest(model) != digest


def test_features_are_cached_and_reused_when_nothing_changed(tmp_path: Path, model: Module):
    config, folder = probe_config(image_folder(tmp_path / "images")), tmp_path / "features"
    (train, val), said = run_cache(config, model, folder)
    assert "computing the backbone's features of the 6 train images" in said
    assert "data.cache_features=false" in said and "reusing" not in said
    files = cache_files(folder)
    assert [name.split("-")[0] for name in files] == ["train", "train", "val", "val"]
    assert isinstance(train.features, np.memmap) and train.features.shape == (6, 512)
    assert len(val) == 2 and val.get(0)[1] in (0, 1)

    (again, _), said = run_cache(config, model, folder)
    assert said.count("reusing cached features") == 2 and "computing" not in said
    assert cache_files(folder) == files
    np.testing.assert_array_equal(again.features, train.features)
    np.testing.assert_array_equal(again.labels, train.labels)


@pytest.mark.parametrize(
    "change",
    [{"image_size": 12}, {"mean": [0.5, 0.5, 0.5]}, {"std": [0.2, 0.2, 0.2]}],
    ids=["image_size", "mean", "std"],
)
def test_a_new_transform_recomputes_and_replaces_the_cache(
    tmp_path: Path, model: Module, change: dict
):
    root, folder = image_folder(tmp_path / "images"), tmp_path / "features"
    run_cache(probe_config(root), model, folder)
    before = cache_files(folder)
    (train, _), said = run_cache(probe_config(root, **change), model, folder)
    assert said.count("(transform changed since") == 2
    after = cache_files(folder)
    assert len(after) == 4 and not set(before) & set(after)  # the old files are gone
    assert train.features.shape == (6, 512)


@pytest.mark.parametrize("edit", ["add", "remove", "rewrite"])
def test_a_new_file_list_recomputes_the_cache(tmp_path: Path, model: Module, edit: str):
    root, folder = image_folder(tmp_path / "images"), tmp_path / "features"
    config = probe_config(root)
    run_cache(config, model, folder)
    image = root / "cat" / "0.png"
    if edit == "add":
        add_image(root / "cat" / "9.png", np.random.default_rng(1))
    elif edit == "remove":
        image.unlink()
    else:  # same name and list, new contents and time
        add_image(image, np.random.default_rng(2))
    (train, val), said = run_cache(config, model, folder)
    assert "(images changed since train-" in said
    assert len(train) + len(val) == {"add": 9, "remove": 7, "rewrite": 8}[edit]
    assert len(cache_files(folder)) == 4


def test_new_weights_recompute_the_cache(tmp_path: Path, model: Module):
    config, folder = probe_config(image_folder(tmp_path / "images")), tmp_path / "features"
    (before, _), _ = run_cache(config, model, folder)
    model.conv1.weight.detach().numpy()[0] *= 2
    (after, _), said = run_cache(config, model, folder)
    assert said.count("(weights changed since") == 2
    assert not np.array_equal(before.features, after.features)


def test_unreadable_images_skipped_are_remembered(tmp_path: Path, model: Module):
    root, folder = image_folder(tmp_path / "images"), tmp_path / "features"
    (root / "dog" / "broken.png").write_bytes(b"not a png")
    config = probe_config(root, on_bad_image="skip", val_fraction=0)
    for _ in range(2):  # computed, then reused
        (train, _), _ = run_cache(config, model, folder)
        broken = 8  # cat/0-3.png, then dog/0-3.png and broken.png, in name order
        assert train.get(broken) is None and train.get(broken - 1) is not None
        assert np.flatnonzero(train.labels < 0).tolist() == [broken]
    meta = json.loads(next(folder.glob("train-*.json")).read_text())
    assert meta["skipped"] == [broken]


# ------------------------------------------------------------- the real CLI


def train(work: Path, *args: str) -> subprocess.CompletedProcess:
    """`finetune train ...` in a subprocess, with plain output (no terminal); must succeed."""
    done = finetune("train", *args, cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def weights(path: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(path))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder, a weights file and a linear-probe config using them."""
    work = tmp_path_factory.mktemp("probe")
    image_folder(work / "images")
    engine.manual_seed(1)
    save_safetensors(resnet18(num_classes=2).state_dict(), work / "backbone.safetensors")
    model = {**PROBE["model"], "weights": "backbone.safetensors"}
    config = {**PROBE, "model": model, "data": {**PROBE["data"], "root": "images"}}
    (work / "probe.yaml").write_text(yaml.safe_dump(config))
    return work


@pytest.fixture(scope="module")
def one_epoch(work: Path) -> Path:
    """A cached linear probe stopped after its first epoch."""
    done = train(work, "probe.yaml", "schedule.epochs=1", "run.output_dir=cached")
    assert "computing the backbone's features" in done.stdout
    return work / "cached"


@pytest.mark.slow
def test_cached_and_uncached_probes_train_the_same_head(work: Path, one_epoch: Path):
    resumed = work / "resumed"
    shutil.copytree(one_epoch, resumed)
    done = train(work, "--resume", "resumed", "schedule.epochs=2")
    assert done.stdout.count("reusing cached features") == 2
    uncached = train(work, "probe.yaml", "data.cache_features=false", "run.output_dir=uncached")
    assert "features" not in uncached.stdout and not (work / "uncached/features").exists()

    # Bit for bit, on any machine: with one image per batch, each image's features come from
    # the same arithmetic in both runs (larger batches make them depend, at round-off, on the
    # image's batch mates, through the blocking and threading of the matrix products).
    cached = weights(resumed / "last.safetensors")
    plain = weights(work / "uncached/last.safetensors")
    assert cached.keys() == plain.keys()
    for name in cached:
        np.testing.assert_array_equal(cached[name], plain[name], err_msg=name, strict=True)
    after_one = weights(one_epoch / "last.safetensors")
    assert not np.array_equal(cached["fc.weight"], after_one["fc.weight"])  # epoch 2 trained


@pytest.mark.slow
def test_a_resumed_probe_recomputes_when_an_image_is_added(work: Path, one_epoch: Path):
    run = work / "grown"
    shutil.copytree(one_epoch, run)
    old = cache_files(run / "features")
    images = work / "images"
    try:
        add_image(images / "dog" / "extra.png", np.random.default_rng(3))
        done = train(work, "--resume", "grown", "schedule.epochs=2")
    finally:
        (images / "dog" / "extra.png").unlink()
    assert "(images changed since train-" in done.stdout
    assert not set(old) & set(cache_files(run / "features"))


@pytest.mark.slow
def test_a_new_weights_file_recomputes_and_an_unchanged_one_reuses(work: Path, one_epoch: Path):
    run = work / "restarted"
    shutil.copytree(one_epoch, run)
    again = train(
        work, "probe.yaml", "schedule.epochs=1", "run.output_dir=restarted", "--overwrite"
    )
    assert again.stdout.count("reusing cached features") == 2

    engine.manual_seed(2)
    save_safetensors(resnet18(num_classes=2).state_dict(), work / "other.safetensors")
    done = train(
        work,
        "probe.yaml",
        "model.weights=other.safetensors",
        "schedule.epochs=1",
        "run.output_dir=restarted",
        "--overwrite",
    )
    assert done.stdout.count("(weights changed since") == 2
