"""`finetune train` end to end, in a subprocess, on a tiny config (16 digits at 16x16, resnet18).

Pins the run folder's contents, exact resume (after an epoch and after Ctrl-C
mid-epoch), the NaN stop, the run-folder refusal, both output modes and
kill -9 at every file write.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import yaml
from _run_cli import COMMAND, Started, finetune, plain_env, start

from cli.training.run_folder import RunFolder
from engine.io import load_safetensors
from engine.models import resnet18

pytestmark = pytest.mark.slow

TINY = {
    "model": {"arch": "resnet18", "num_classes": 2},
    "data": {
        "dataset": "digits",
        "classes": ["0", "1"],
        "val_fraction": 0.03,
        "limit": 16,
        "image_size": 16,
        "resize": 16,
        "mean": [0.3, 0.3, 0.3],
        "std": [0.3, 0.3, 0.3],
        "batch_size": 4,
        "num_workers": 0,
    },
    "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
    "schedule": {"epochs": 2, "scheduler": "step", "step_size": 1, "gamma": 0.5},
    "run": {"seed": 3, "log_every": 1, "plots": False},  # pictures: tests/cli/test_report_e2e.py
}
RUN_FILES = {
    "config.yaml",
    "classes.json",
    "metrics.jsonl",
    "last.safetensors",
    "best.safetensors",
    "trainer_state.safetensors",
    "results.csv",
}


def write_config(folder: Path, name: str = "tiny.yaml", **sections: dict) -> Path:
    config = {key: {**TINY[key], **sections.get(key, {})} for key in TINY}
    path = folder / name
    path.write_text(yaml.safe_dump(config))
    return path


def weights(path: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(path))


def assert_identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name, strict=True)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def straight(work: Path) -> subprocess.CompletedProcess:
    """Two epochs in one go: the run the others must reproduce."""
    config = write_config(work, "straight.yaml", run={"output_dir": "straight"})
    return finetune("train", str(config), cwd=work)


@pytest.fixture(scope="module")
def first_epoch(work: Path) -> Path:
    """The same run stopped after its first epoch (schedule.epochs=1)."""
    config = write_config(work, "first.yaml", run={"output_dir": "first"})
    done = finetune("train", str(config), "schedule.epochs=1", cwd=work)
    assert done.returncode == 0, done.stderr
    return work / "first"


def test_a_run_writes_its_folder(work: Path, straight: subprocess.CompletedProcess):
    assert straight.returncode == 0, straight.stderr
    run = work / "straight"
    assert {p.name for p in run.iterdir()} == RUN_FILES
    assert json.loads((run / "classes.json").read_text()) == ["0", "1"]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.01 and saved["model"]["freeze"] == []

    epochs = [row for row in rows(run) if "step" not in row]
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert [row["lr"] for row in epochs] == [0.01, 0.005]
    keys = {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "time", "images_per_s"}
    assert all(keys <= row.keys() for row in epochs)
    steps = [row for row in rows(run) if "step" in row]
    assert [row["step"] for row in steps] == list(range(1, 9))  # 16 images / 4, log_every 1

    expected = resnet18(num_classes=2).state_dict()
    for name in ("last.safetensors", "best.safetensors"):
        loaded = load_safetensors(run / name)
        assert loaded.keys() == expected.keys()
        assert all(loaded[k].shape == expected[k].shape for k in expected)
    best_epoch = max(epochs, key=lambda row: row["val_acc"])["epoch"]
    assert f"best epoch: {best_epoch}" in straight.stdout


def test_weights_load_in_torch(work: Path, straight: subprocess.CompletedProcess, torch):
    import safetensors.torch

    state = safetensors.torch.load_file(str(work / "straight" / "last.safetensors"))
    assert state["fc.weight"].shape == torch.Size([2, 512])
    assert state["bn1.num_batches_tracked"].dtype == torch.int64
    assert state["layer4.1.bn2.running_var"].dtype == torch.float32
    assert len(state) == 122  # resnet18's state dict: 62 params, 60 BatchNorm buffers


def test_output_without_a_terminal_is_plain_lines(straight: subprocess.CompletedProcess):
    out = straight.stdout
    assert "epoch 1/2 batch 1/4" in out and "epoch 2/2 batch 4/4" in out
    assert "epoch 2/2  train loss" in out and "Training summary" in out
    assert "\x1b[" not in out and "━" not in out.split("Training summary")[0]


def test_resume_after_an_epoch_matches_the_straight_run(
    work: Path, straight: subprocess.CompletedProcess, first_epoch: Path
):
    run = work / "resumed"
    shutil.copytree(first_epoch, run)
    done = finetune("train", "--resume", str(run), "schedule.epochs=2", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "Resuming" in done.stdout
    assert_identical(weights(run / "last.safetensors"), weights(work / "straight/last.safetensors"))
    assert_identical(weights(run / "best.safetensors"), weights(work / "straight/best.safetensors"))
    assert [row["epoch"] for row in rows(run) if "step" not in row] == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["schedule"]["epochs"] == 2


def interrupt_after_first_step(
    command: list[str], cwd: Path, env: dict[str, str], run: Path, timeout: float = 300
) -> tuple[subprocess.CompletedProcess, str, str]:
    """Start `command`, press Ctrl-C once the run folder has a metrics row, and wait for the
    end; fail with the child's output if it ends before."""
    training = Started(command, cwd, env)
    training.wait_until(lambda out, err: bool(RunFolder(run).metrics()), timeout)
    training.process.send_signal(signal.SIGINT)
    done = training.finish(timeout)
    return done, done.stdout, done.stderr


def test_ctrl_c_saves_mid_epoch_and_resume_matches(
    work: Path, straight: subprocess.CompletedProcess
):
    config = write_config(work, "interrupted.yaml", run={"output_dir": "interrupted"})
    run = work / "interrupted"
    command = [*COMMAND, "train", str(config), "data.num_workers=2"]
    interrupted, stdout, stderr = interrupt_after_first_step(command, work, plain_env(), run)
    assert interrupted.returncode == 130, stdout + stderr
    assert "finetune train --resume" in stderr and "Traceback" not in stderr
    stopped = RunFolder(run).load_checkpoint().trainer
    assert 1 <= stopped.global_step < 8  # stopped inside the run, not at its end

    done = finetune("train", "--resume", str(run), "data.num_workers=2", cwd=work)
    assert done.returncode == 0, done.stderr
    assert_identical(weights(run / "last.safetensors"), weights(work / "straight/last.safetensors"))
    assert [row["step"] for row in rows(run) if "step" in row] == list(range(1, 9))
    assert [row["epoch"] for row in rows(run) if "step" not in row] == [1, 2]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(work: Path, first_epoch: Path):
    # lr 0.01 in epoch 1, then 1e28: the first steps of epoch 2 blow the weights up.
    config = write_config(work, "nan.yaml", schedule={"gamma": 1e30}, run={"output_dir": "nan"})
    done = finetune("train", str(config), cwd=work)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "epoch 2" in done.stderr and "optim.lr" in done.stderr
    assert "grad_clip" in done.stderr and "unchanged" in done.stderr
    run = work / "nan"
    # The weights after epoch 1 are those of the 1-epoch run: the schedule only changes lr later.
    assert_identical(weights(run / "last.safetensors"), weights(first_epoch / "last.safetensors"))
    assert RunFolder(run).load_checkpoint().trainer.epoch == 1


def test_a_used_run_folder_is_refused_unless_overwrite(
    work: Path, straight: subprocess.CompletedProcess
):
    config = write_config(work, "again.yaml", run={"output_dir": "straight"})
    before = (work / "straight/last.safetensors").read_bytes()
    refused = finetune("train", str(config), cwd=work)
    assert refused.returncode == 2
    assert "--overwrite" in refused.stderr and "--resume straight" in refused.stderr
    assert (work / "straight/last.safetensors").read_bytes() == before

    run = work / "reused"
    shutil.copytree(work / "straight", run)
    (run / "notes.txt").write_text("mine")
    done = finetune(
        "train",
        str(config),
        f"run.output_dir={run}",
        "schedule.epochs=1",
        "--overwrite",
        cwd=work,
        FORCE_COLOR="1",
    )
    assert done.returncode == 0, done.stderr
    assert "Training summary" in done.stdout and "\x1b[" in done.stdout
    # Colours, but no live bars: FORCE_COLOR (as in CI) does not mean someone watches.
    assert "batch 4/4" in done.stdout and "━" not in done.stdout.split("Training summary")[0]
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    assert [row["epoch"] for row in rows(run) if "step" not in row] == [1]


def test_a_frozen_backbone_trains_its_new_head_on_cached_features(work: Path, first_epoch: Path):
    # Transfer: the 1-epoch run's weights, everything frozen but a new 3-class head.
    # One image per batch, so that both runs compute each image's features by the very same
    # arithmetic: the cache in index order, the uncached run in shuffled batches. With larger
    # batches the features would depend, at float32 round-off, on an image's batch mates (the
    # matrix products' blocking and threading vary with the batch), so the heads would differ
    # in their last bits on some machines and thread counts.
    config = write_config(
        work,
        "transfer.yaml",
        model={
            "num_classes": 3,
            "weights": str(first_epoch / "best.safetensors"),
            "freeze": ["*"],
            "bn": "eval",
        },
        data={"classes": ["2", "3", "4"], "batch_size": 1},
    )
    for cache in ("true", "false"):
        done = finetune(
            "train",
            str(config),
            f"data.cache_features={cache}",
            f"run.output_dir=transfer-{cache}",
            cwd=work,
        )
        assert done.returncode == 0, done.stderr
        assert ("computing the backbone's features" in done.stdout) == (cache == "true")
    before = weights(first_epoch / "best.safetensors")
    cached, uncached = (weights(work / f"transfer-{c}/last.safetensors") for c in ("true", "false"))
    assert cached["fc.weight"].shape == (3, 512)
    assert_identical(cached, uncached)
    frozen = [name for name in before if not name.startswith("fc.")]
    assert_identical({k: before[k] for k in frozen}, {k: cached[k] for k in frozen})


def test_new_head_replaces_a_head_that_already_fits(work: Path, first_epoch: Path):
    # The 1-epoch run's head has 2 outputs; a 2-class transfer keeps it unless new_head is set.
    config = write_config(
        work,
        "same-size.yaml",
        model={"num_classes": 2, "weights": str(first_epoch / "best.safetensors"), "freeze": ["*"]},
        data={"classes": ["2", "3"]},
        schedule={"epochs": 1},
    )
    kept = finetune("train", str(config), "run.output_dir=kept", cwd=work)
    assert kept.returncode == 2 and "every parameter is frozen" in kept.stderr.lower()
    done = finetune("train", str(config), "model.new_head=true", "run.output_dir=new", cwd=work)
    assert done.returncode == 0, done.stderr
    before = weights(first_epoch / "best.safetensors")
    after = weights(work / "new/last.safetensors")
    assert after["fc.weight"].shape == before["fc.weight"].shape
    assert not np.array_equal(after["fc.weight"], before["fc.weight"])


def test_clipping_smoothing_and_adamw_with_warm_up_run(work: Path):
    config = write_config(work, "options.yaml", run={"output_dir": "options"})
    options = [
        "schedule.grad_clip=0.5",
        "schedule.label_smoothing=0.1",
        "schedule.scheduler=cosine",
        "schedule.warmup_epochs=1",
        "optim.name=adamw",
        "optim.weight_decay=0.01",
    ]
    done = finetune("train", str(config), *options, "--progress", "bars", cwd=work)
    assert done.returncode == 0, done.stderr
    assert "━" in done.stdout and "batch 4/4" not in done.stdout  # bars, even into a pipe
    epochs = [row for row in rows(work / "options") if "step" not in row]
    assert [row["lr"] for row in epochs] == [0.005, 0.01]  # warm-up from lr / 2, then cosine


@pytest.fixture
def folder_with_a_corrupt_image(tmp_path: Path) -> Path:
    """An ImageFolder of two classes of tiny PNGs, one of them a truncated file."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for label in ("circle", "square"):
        (root / label).mkdir(parents=True)
        for i in range(8):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    (root / "square" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_an_unreadable_image_stops_or_is_skipped(tmp_path, folder_with_a_corrupt_image, policy):
    config = write_config(
        tmp_path,
        data={
            "dataset": "imagefolder",
            "root": str(folder_with_a_corrupt_image),
            "classes": None,
            "limit": None,
            "val_fraction": 0.25,
            "on_bad_image": policy,
        },
        schedule={"epochs": 1},
        run={"output_dir": "run"},
    )
    done = finetune("train", str(config), cwd=tmp_path)
    broken = str(folder_with_a_corrupt_image / "square" / "broken.png")
    assert "Traceback" not in done.stderr
    assert broken in done.stderr
    if policy == "stop":
        assert done.returncode == 1
        assert "data.on_bad_image=skip" in done.stderr
    else:
        assert done.returncode == 0, done.stderr
        assert "skipped 1 unreadable image" in done.stderr


def test_a_lone_last_image_is_passed_over_in_training_with_a_note(tmp_path):
    config = write_config(tmp_path, data={"batch_size": 5}, schedule={"epochs": 1})
    done = finetune("train", str(config), "run.output_dir=run", cwd=tmp_path)  # 16 = 3 x 5 + 1
    assert done.returncode == 0, done.stderr
    assert "skipped a training batch of one image" in done.stdout


PAUSED = "FINETUNE_TEST_PAUSE_IN_WRITE: paused"


def kill_in_write(*args: str, cwd: Path, write: str) -> None:
    """Run `finetune ARGS` and SIGKILL it inside the write `write` (NAME or NAME:N, the N-th
    write of that file), its temporary file complete and not yet renamed."""
    training = start(*args, cwd=cwd, FINETUNE_TEST_PAUSE_IN_WRITE=write)
    training.wait_until(lambda out, err: PAUSED in err)
    training.process.send_signal(signal.SIGKILL)
    assert training.finish().returncode == -signal.SIGKILL


def test_a_run_killed_at_any_moment_resumes_or_says_how_to_start_again(
    work: Path, straight: subprocess.CompletedProcess
):
    config = write_config(work, "killed.yaml", run={"output_dir": "killed"})
    run = work / "killed"
    resume = ("train", "--resume", "killed")

    def temporaries() -> list[str]:
        return sorted(path.name.split(".")[1] for path in run.glob(".*.tmp"))

    # Killed before an epoch was saved: there is nothing to resume, and the message says
    # how to start again; starting again removes what the killed write left.
    fresh = ("train", str(config), "--overwrite")
    for write in ("config.yaml", "classes.json", "trainer_state.safetensors"):
        kill_in_write(*fresh, cwd=work, write=write)
        assert temporaries() == [write.split(".")[0]]
        refused = finetune(*resume, cwd=work)
        assert refused.returncode == 2, refused.stderr
        assert "nothing to resume" in refused.stderr and "Traceback" not in refused.stderr
        again = re.search(
            r"finetune train (\S+) (run.output_dir=killed --overwrite)", refused.stderr
        )
        saved = again[1] != "CONFIG.yaml"  # the run's own config, once it was written
        assert saved == (write != "config.yaml")
        fresh = ("train", again[1] if saved else str(config), *again[2].split())

    # Killed after the trainer state of epoch 1, before best.safetensors: the resume
    # rewrites best from it, and stops mid-epoch 2.
    kill_in_write(*fresh, cwd=work, write="best.safetensors")
    assert not (run / "best.safetensors").exists()
    training = start(*resume, cwd=work)
    training.wait_until(lambda out, err: "epoch 2/2 batch 2/4" in out)
    training.process.send_signal(signal.SIGKILL)
    training.finish()
    assert temporaries() == []
    state = weights(run / "trainer_state.safetensors")
    best = {f"model.{name}": array for name, array in weights(run / "best.safetensors").items()}
    assert_identical(best, {name: state[name] for name in best})

    # Killed while a resume drops the metrics rows of the lost epoch, then in the trainer
    # state of epoch 2, with a metrics row torn by the kill, then in last.safetensors after it.
    kill_in_write(*resume, cwd=work, write="metrics.jsonl")
    kill_in_write(*resume, cwd=work, write="trainer_state.safetensors")
    with open(run / "metrics.jsonl", "a") as metrics:
        metrics.write('{"step": 9, "epo')
    kill_in_write(*resume, cwd=work, write="last.safetensors:2")  # the first is at the resume

    done = finetune(*resume, cwd=work)
    assert done.returncode == 0, done.stderr
    assert "has finished its 2 epochs" in done.stdout
    reference = work / "straight"
    for name in ("last.safetensors", "best.safetensors"):
        assert_identical(weights(run / name), weights(reference / name))
    timeless = [
        {k: v for k, v in row.items() if k not in {"time", "images_per_s"}} for row in rows(run)
    ]
    assert timeless == [
        {k: v for k, v in row.items() if k not in {"time", "images_per_s"}}
        for row in rows(reference)
    ]
    assert temporaries() == []
