"""`mpiexec -n 2 finetune train` end to end, on the tiny config of test_train_e2e.

Pins: 2 processes give the bits of 1 process with 2 micro-batches (and one metrics row per
step); sync BatchNorm matches one process to float32 round-off (float64: 1e-10, in
mpi_sync_batchnorm.py); a frozen backbone matches one process; a run stopped after an epoch
on 2 processes resumes on 1 exactly; Ctrl-C saves once and resumes exactly; a fault or a
hang on one rank ends the job quickly; dist.backend none under mpiexec is a config error.
Skipped without mpi4py or mpiexec.
"""

from __future__ import annotations

import importlib.util
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from cli.bench.cases import Settings
from cli.bench.ranks import bench_ranks
from tests.cli.test_train_e2e import (
    interrupt_after_first_step,
    plain_env,
    rows,
    weights,
    write_config,
)

MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
        reason="needs mpi4py and mpiexec (pip install 'finetune[mpi]')",
    ),
]
HERE = Path(__file__).parent
ROOT = HERE.parent.parent
LAUNCH = str(HERE / "mpi_launch.py")
DATA = {"limit": 12, "batch_size": 6, "val_fraction": 0.05}  # 2 steps per epoch


def env(**extra: str) -> dict[str, str]:
    variables = plain_env()
    variables.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return variables


def command(processes: int, *args: str) -> list[str]:
    if processes == 1:
        return [sys.executable, LAUNCH, *args]
    return [MPIEXEC, "-n", str(processes), sys.executable, LAUNCH, *args]


def finetune(processes: int, *args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        command(processes, *args),
        cwd=cwd,
        env=env(**extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def train(processes: int, work: Path, name: str, *overrides: str, **sections: dict) -> Path:
    config = write_config(
        work,
        f"{name}.yaml",
        data={**DATA, **sections.pop("data", {})},
        run={"output_dir": name},
        **sections,
    )
    done = finetune(processes, "train", str(config), *overrides, cwd=work)
    assert done.returncode == 0, done.stderr
    return work / name


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mpi")


@pytest.fixture(scope="module")
def two(work: Path) -> Path:
    """The uninterrupted 2-process run, 2 epochs."""
    return train(2, work, "two")


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_two_processes_equal_one_with_two_micro_batches(work: Path, two: Path):
    one = train(1, work, "micro", "data.micro_batches=2")
    assert_identical(weights(two / "last.safetensors"), weights(one / "last.safetensors"))
    steps = [row["step"] for row in rows(two) if "step" in row]
    assert steps == list(range(1, 5))  # one row per step: rank 0 alone writes
    assert rows(two) == [{**r, **_times(r, q)} for r, q in zip(rows(one), rows(two), strict=True)]


def _times(row: dict, other: dict) -> dict:
    """The fields of `other` that measure time, which no two runs share."""
    return {k: other[k] for k in ("images_per_s", "time") if k in row}


def assert_round_off(a: dict, b: dict, per_element: float, overall: float) -> None:
    """Every float within `per_element` (absolute), and all within `overall` in norm."""
    floats = [key for key in b if b[key].dtype.kind == "f"]
    for key in floats:
        assert np.abs(a[key] - b[key]).max() <= per_element, key
    difference = np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in floats))
    assert difference <= overall * np.sqrt(sum((b[k] ** 2).sum() for k in floats))


def test_sync_batchnorm_matches_one_process(work: Path):
    # An epoch of one step of 8 images (4 per process), float32: every weight within 1e-4,
    # all within 1e-5 in norm (with local BatchNorm the same runs differ by O(1)). Longer
    # runs of such tiny batches are ill-conditioned: BatchNorm biases, which are all gradient
    # here (sums of dy that nearly cancel), carry the first step's round-off into 1e-2
    # relative differences by the second. float64 is checked to 1e-10 below.
    args = {"data": {"batch_size": 8, "limit": 8}, "schedule": {"epochs": 1}}
    synced = train(2, work, "sync", "dist.batchnorm=sync", "optim.lr=0.001", **args)
    single = train(1, work, "single", "optim.lr=0.001", **args)
    a, b = weights(synced / "last.safetensors"), weights(single / "last.safetensors")
    assert_round_off(a, b, per_element=1e-4, overall=1e-5)


def test_sync_batchnorm_float64_to_1e_10():
    script = str(HERE / "mpi_sync_batchnorm.py")
    done = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, script],
        env=env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("largest relative difference") == 2


def test_frozen_backbone_matches_one_process(work: Path):
    frozen = {"freeze": ["*"], "unfreeze": ["fc.*"], "bn": "eval"}
    args = {"model": frozen, "schedule": {"epochs": 1}}  # features computed by rank 0, sent
    a = weights(train(2, work, "frozen2", **args) / "last.safetensors")
    b = weights(train(1, work, "frozen1", **args) / "last.safetensors")
    assert_round_off(a, b, per_element=1e-6, overall=1e-6)


def test_stopped_on_two_processes_resumed_on_one(work: Path, two: Path):
    run = train(2, work, "halves", schedule={"epochs": 1})
    done = finetune(
        1, "train", "--resume", str(run), "schedule.epochs=2", "data.micro_batches=2", cwd=work
    )
    assert done.returncode == 0, done.stderr
    assert_identical(weights(two / "last.safetensors"), weights(run / "last.safetensors"))


def test_ctrl_c_saves_once_and_resumes_exactly(work: Path, two: Path):
    config = write_config(work, "ctrl-c.yaml", data=DATA, run={"output_dir": "ctrl-c"})
    run = work / "ctrl-c"
    process, _, err = interrupt_after_first_step(
        command(2, "train", str(config)), work, env(), run, 60
    )
    assert process.returncode == 130, err
    assert err.count("stopped and saved") == 1 and "[rank" not in err
    done = finetune(2, "train", "--resume", str(run), cwd=work)
    assert done.returncode == 0, done.stderr
    assert_identical(weights(two / "last.safetensors"), weights(run / "last.safetensors"))


@pytest.mark.parametrize("fault", ["raise", "hang"])
def test_a_fault_on_one_rank_ends_the_job(work: Path, fault: str):
    config = write_config(work, f"{fault}.yaml", data=DATA, run={"output_dir": fault})
    start = time.monotonic()
    done = subprocess.run(
        command(2, "train", str(config), "dist.timeout_s=2"),
        cwd=work,
        env=env(FINETUNE_TEST_FAULT=fault),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert time.monotonic() - start < 30  # start-up included; the abort itself takes < 10 s
    expected = "injected fault" if fault == "raise" else "no word from the other processes"
    assert expected in done.stderr and "[rank" in done.stderr, done.stderr


def test_backend_none_under_mpiexec_is_a_config_error(work: Path):
    config = write_config(work, "none.yaml", data=DATA, run={"output_dir": "none"})
    done = finetune(2, "train", str(config), "dist.backend=none", cwd=work)
    assert done.returncode == 2, done.stderr
    assert "dist.backend: is 'none'" in done.stderr
    assert not (work / "none").exists()


def test_bench_ranks_times_the_step_over_two_processes():
    settings = Settings(rounds=1, warmup=0, steps=1, profile=False, vs_torch=False)
    (row,) = bench_ranks(2, [(4, 32)], settings, Console(file=io.StringIO()))
    assert (row["batch"], row["size"], row["ranks"]) == (4, 32, 2)
    assert row["ms_per_step"] > row["reduce_ms"] > 0 and 0 < row["reduce_share"] < 1
    assert row["buffer_mb"] > 40  # ResNet18's 11.7M gradients, as float32
    assert row["efficiency"] > 0


def test_mixup_and_cutmix_on_two_processes_equal_one_with_two_micro_batches(work: Path):
    augment = {"augment": ["horizontal_flip", {"mixup": {"alpha": 0.4}}, "cutmix"]}
    two = train(2, work, "two-mixed", "schedule.epochs=1", data=augment)
    one = train(1, work, "micro-mixed", "schedule.epochs=1", "data.micro_batches=2", data=augment)
    assert_identical(weights(two / "last.safetensors"), weights(one / "last.safetensors"))
