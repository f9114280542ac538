"""`finetune bench` end to end on tiny workloads (batch 2 of 32x32 images, 256x256 for the
profile; one round of one step): the table, the profile and the JSON, --vs-torch, and usage
errors. No timing is checked."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
from _run_cli import finetune
from PIL import Image
from test_main import assert_clean_failure

from cli.bench import cases, runner
from cli.bench.profile import TARGETS

TINY = ["--size", "2x32", "--rounds", "1", "--steps", "1", "--warmup", "1"]  # size first
FIGURES = {"version", "steps_ms", "round_ms", "ms_per_step", "images_per_s", "peak_rss_mib"}


def image_folder(root: Path) -> Path:
    """Two class folders of two small JPEGs each."""
    for index in range(4):
        folder = root / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), (index * 60, 90, 30)).save(folder / f"{index}.jpg")
    return root


def test_every_workload_with_the_profile_and_json(tmp_path: Path):
    out = tmp_path / "bench.json"
    loader = image_folder(tmp_path / "images")
    # 256x256: layer1's gradients (2 x 64 x 64x64) are large enough to run one after another,
    # layer3's and layer4's small enough to run side by side: every category of the profile is
    # timed
    args = ["--size", "2x256", *TINY[2:], "--profile", "--json", str(out), "--loader", str(loader)]
    done = finetune("bench", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert "engine ms/step" in table and "images/s" in table and "torch ms" not in table
    for workload in ("train", "frozen", "eval"):
        assert f"| {workload} " in table
    assert "| loader   |    32 | 224x224 |" in table
    assert "conv weight-grad" in table and "optimizer step" in table and "| step " in table

    data = json.loads(out.read_text())
    assert data["settings"] == {
        "rounds": 1,
        "warmup": 1,
        "steps": 1,
        "profile": True,
        "vs_torch": False,
        "loader_images": str(loader),
    }
    assert data["machine"]["cpus"] >= 1
    rows = {row["workload"]: row for row in data["results"]}
    assert list(rows) == ["train", "frozen", "eval", "loader"]
    for row in rows.values():
        engine = row["engine"]
        assert engine.keys() >= FIGURES and "torch" not in row
        assert len(engine["steps_ms"]) == 1 and len(engine["steps_ms"][0]) == 1
        assert engine["ms_per_step"].keys() == {"median", "min", "max"}
        assert engine["images_per_s"] > 0 and engine["peak_rss_mib"] > 0
    assert (rows["train"]["batch"], rows["train"]["size"]) == (2, 256)
    assert rows["loader"]["engine"]["images"] == 4 and "profile" not in rows["loader"]["engine"]
    profile = rows["train"]["engine"]["profile"]
    assert profile["missing"] == []  # every timed op is still where the profiler looks
    assert list(profile["ms"]) == [*TARGETS, "other"]
    timed = {c: ms for c, ms in profile["ms"].items() if c != "other" and "unfused" not in c}
    assert all(ms > 0 for ms in timed.values()), timed
    assert rows["eval"]["engine"]["profile"]["ms"]["conv weight-grad"] == 0
    assert "| GEMM floor " in table and "| step / floor " in table
    floors = {name: rows[name]["engine"]["profile"] for name in ("train", "frozen", "eval")}
    assert all(f["sgemm_gflops"] > 0 and f["floor_ms"] > 0 for f in floors.values())
    assert floors["train"]["gemm_gflop"] > 2 * floors["eval"]["gemm_gflop"] > 0
    assert floors["frozen"]["gemm_gflop"] == pytest.approx(floors["eval"]["gemm_gflop"])


@pytest.mark.torch
@pytest.mark.skipif(find_spec("torch") is None, reason="torch is not installed")
def test_vs_torch(tmp_path: Path):
    out = tmp_path / "bench.json"
    done = finetune(
        "bench", *TINY, "--workload", "train", "--vs-torch", "--json", str(out), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "torch ms/step" in done.stdout and "engine/torch" in done.stdout
    (row,) = json.loads(out.read_text())["results"]
    assert row["torch"].keys() >= FIGURES and row["torch"]["version"].startswith("torch ")
    assert row["ratio"]["rounds"] == [row["engine"]["round_ms"][0] / row["torch"]["round_ms"][0]]


def test_vs_torch_without_torch(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(runner, "find_spec", lambda name: None)
    with pytest.raises(runner.BenchError, match="needs torch in this Python environment"):
        runner.check_torch()


@pytest.mark.parametrize(
    ("values", "batch", "expected"),
    [
        (None, None, [(32, 64), (16, 224)]),
        (None, 8, [(8, 64), (8, 224)]),
        (["32x64,16x224"], None, [(32, 64), (16, 224)]),
        (["4x32", "96"], None, [(4, 32), (32, 96)]),
        (["96"], 8, [(8, 96)]),
    ],
)
def test_sizes(values: list[str] | None, batch: int | None, expected: list[tuple[int, int]]):
    assert cases.parse_sizes(values, batch) == expected


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--size", "0x32"], ["--size", "'0x32' is not BATCHxPIXELS"]),
        (["--size", "2x16"], ["--size", "at least 32 pixels"]),
        (["--size", "big"], ["--size", "'big'"]),
        (["--workload", "train,fly"], ["--workload", "unknown workload 'fly'"]),
        (["--rounds", "0"], ["--rounds", "greater than or equal to 1"]),
        (["--steps", "0"], ["--steps"]),
        (["--json", "no/such/folder/bench.json"], ["--json", "no folder no/such/folder"]),
        (["--loader", "no/such/folder"], ["--loader", "does not exist"]),
        (["--workload", "eval", "--loader", "."], ["--loader", "needs the loader workload"]),
    ],
)
def test_bad_options(args: list[str], needles: list[str], tmp_path: Path):
    assert_clean_failure(finetune("bench", *args, cwd=tmp_path, COLUMNS="200"), 2, *needles)


def test_a_failing_worker_is_one_clear_message(tmp_path: Path):
    done = finetune("bench", "--workload", "loader", "--loader", ".", *TINY, cwd=tmp_path)
    assert_clean_failure(done, 1, "the engine worker for loader failed", "class folder")


def test_the_bench_does_not_import_torch():
    check = (
        "import sys, cli.main, cli.bench.runner, cli.bench.worker; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
