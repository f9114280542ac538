"""The package as `pip install finetune` leaves it: a wheel built from this tree, installed into
a new virtual environment, used from a folder that is not the checkout.

The new environment has no pip and no dependencies of its own: a .pth file adds this
environment's site-packages after its own. A path line in a .pth file does not run the .pth
files of the folder it adds, so an editable install of the checkout stays out of sight, and
PYTHONPATH is cleared: `cli` and `engine` can only come from the wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FINETUNE_DEBUG")}
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, ROOT, cwd=out)
    (found,) = out.glob("finetune-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtual environment with the wheel installed; its bin folder."""
    home = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", home, cwd=home)
    python = home / "bin" / "python"
    purelib = run(
        python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=home
    )
    ours = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    Path(purelib.stdout.strip(), "outer.pth").write_text("\n".join(sorted(ours)) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps"]
    run(*pip, "--no-index", wheel, cwd=home)
    return home / "bin"


def test_the_wheel_holds_every_bundled_config_and_the_bench_workers(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"cli/configs/{path.name}" for path in (ROOT / "configs").glob("*.yaml")}
    assert configs and configs <= names
    assert {"cli/bench/worker.py", "cli/bench/torch_worker.py", "cli/data/digits.csv.gz"} <= names


def test_the_installed_package_lists_trains_and_exports_a_bundled_config(venv, tmp_path):
    imports = "import cli, engine; print(cli.__file__, engine.__file__)"
    where = run(venv / "python", "-c", imports, cwd=tmp_path)
    assert str(ROOT) not in where.stdout and str(venv.parent) in where.stdout
    listed = run(venv / "finetune", "config", "list", cwd=tmp_path)
    assert "quickstart" in listed.stdout and "resnet18-linear-probe" in listed.stdout
    tiny = ["data.limit=32", "data.image_size=16", "data.resize=16", "data.val_fraction=0.05"]
    run(venv / "finetune", "train", "quickstart", "schedule.epochs=1", *tiny, cwd=tmp_path)
    (folder,) = (tmp_path / "runs").glob("quickstart-*")
    assert (folder / "best.safetensors").is_file() and (folder / "config.yaml").is_file()
    run(venv / "finetune", "export", folder, "--out", "digits.onnx", cwd=tmp_path)
    assert (tmp_path / "digits.onnx").stat().st_size > 1e6


def test_the_installed_package_runs_the_bench_and_finds_its_torch_worker(venv: Path, tmp_path):
    assert "--vs-torch" in run(venv / "finetune", "bench", "--help", cwd=tmp_path).stdout
    find = "import importlib.util as u; print(u.find_spec('cli.bench.torch_worker').origin)"
    origin = run(venv / "python", "-c", find, cwd=tmp_path).stdout.strip()
    assert origin.startswith(str(venv.parent)) and origin.endswith("torch_worker.py")
