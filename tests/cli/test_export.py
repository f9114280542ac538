"""`finetune export` on a run folder made with the run-folder API: the ONNX file run in
onnxruntime on the same images as the engine, its metadata enough to preprocess an image
without this project, the safetensors weights, and every refusal as one message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import safetensors
from PIL import Image
from typer.testing import CliRunner, Result

import engine
from cli.config import Config
from cli.data.transforms import make_transform
from cli.main import app
from cli.training.run_folder import BEST, LAST, RunFolder
from engine.models import resnet18
from tests.test_onnx import assert_close, randomise_batch_norms

ort = pytest.importorskip("onnxruntime")

CLASSES = ["cat", "dog", "fox"]
CONFIG = {
    "model": {"arch": "resnet18", "num_classes": 3},
    "data": {
        "dataset": "digits",
        "image_size": 24,
        "resize": 28,
        "mean": [0.4, 0.5, 0.6],
        "std": [0.2, 0.25, 0.3],
    },
}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose best and last weights differ, with BatchNorm statistics far from 0 and 1."""
    rng = np.random.default_rng(0)
    folder = RunFolder(tmp_path_factory.mktemp("export") / "run")
    folder.start(Config.from_dict(CONFIG), CLASSES)
    for name in (BEST, LAST):
        engine.manual_seed(len(name))
        folder.save_weights(name, randomise_batch_norms(resnet18(num_classes=3), rng).state_dict())
    return folder.path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Photos of different sizes and aspect ratios, so resize and crop matter."""
    rng = np.random.default_rng(1)
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (h, w) in enumerate([(40, 30), (29, 50), (28, 28), (64, 33)]):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def engine_logits(run_dir: Path, weights: str, images: list[Path]) -> np.ndarray:
    """The logits `finetune predict` computes: the run's eval transform and model."""
    folder = RunFolder.open(run_dir)
    transform = make_transform(folder.config().data, train=False)
    batch = np.stack([transform(Image.open(path).convert("RGB")) for path in images])
    with engine.no_grad():
        return folder.load_model(run_dir / weights)(engine.from_numpy(batch)).numpy()


def preprocess_from_metadata(path: Path, spec: dict) -> np.ndarray:
    """What a deployer writes from the file's metadata alone, with PIL and NumPy."""
    image = Image.open(path).convert(spec["color"])
    w, h = image.size
    scale = spec["resize"] / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
    _, height, width = spec["input_size"]
    left = int(round((image.size[0] - width) / 2))
    top = int(round((image.size[1] - height) / 2))
    pixels = np.asarray(image.crop((left, top, left + width, top + height)), np.float32)
    pixels = (pixels * spec["scale"] - spec["mean"]) / spec["std"]
    return pixels.transpose(2, 0, 1).astype(np.float32)


@pytest.mark.parametrize(("weights", "opset"), [("best", None), ("last", "13")])
def test_the_onnx_file_runs_in_onnxruntime_as_the_engine_does(
    run_dir: Path, images: list[Path], tmp_path: Path, weights: str, opset: str | None
):
    out = tmp_path / "model.onnx"
    args = ["export", str(run_dir), "--weights", weights, "--out", str(out)]
    result = invoke(*args, *(["--opset", opset] if opset else []))
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == int(opset or 17)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert json.loads(metadata["classes"]) == CLASSES
    spec = json.loads(metadata["preprocessing"])
    assert spec["input_size"] == [3, 24, 24] and spec["resize"] == 28
    assert spec["mean"] == [0.4, 0.5, 0.6] and spec["std"] == [0.2, 0.25, 0.3]

    batch = np.stack([preprocess_from_metadata(path, spec) for path in images])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"input": batch})
    expected = engine_logits(run_dir, f"{weights}.safetensors", images)
    assert_close(expected, logits)
    (single,) = session.run(["logits"], {"input": batch[:1]})  # any batch size
    assert_close(expected[:1], single)


def test_the_default_file_is_in_the_run_folder(run_dir: Path):
    result = invoke("export", str(run_dir))
    assert result.exit_code == 0, result.output
    assert (run_dir / "export" / "best.onnx").is_file()
    assert "export/best.onnx" in result.output


def test_safetensors_holds_the_torchvision_keyed_weights_alone(run_dir: Path, tmp_path: Path):
    out = tmp_path / "weights.safetensors"
    result = invoke("export", str(run_dir), "--format", "safetensors", "--weights", "last")
    assert result.exit_code == 0, result.output
    result = invoke("export", str(run_dir), "--format", "safetensors", "--out", str(out))
    assert result.exit_code == 0, result.output
    expected = RunFolder.open(run_dir).load_model().state_dict()
    with safetensors.safe_open(str(out), framework="numpy") as f:
        assert set(f.keys()) == set(expected)  # noqa: SIM118
        for name, value in expected.items():
            np.testing.assert_array_equal(f.get_tensor(name), value.numpy())
        metadata = f.metadata()
    assert json.loads(metadata["classes"]) == CLASSES and metadata["format"] == "pt"
    assert (run_dir / "export" / "last.safetensors").is_file()


def test_without_the_onnx_package_it_says_what_to_install(run_dir: Path, monkeypatch):
    monkeypatch.setattr("cli.export.find_spec", lambda name: None)
    result = invoke("export", str(run_dir))
    assert result.exit_code == 1
    assert "pip install 'finetune[onnx]'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--format", "safetensors", "--opset", "13"], 2, "--opset applies to --format onnx"),
        (["--opset", "7"], 2, "--opset 7: the installed onnx package writes opsets 13 to"),
        (["--format", "tflite"], 2, "tflite"),
    ],
)
def test_bad_options(run_dir: Path, args: list[str], code: int, needle: str):
    result = invoke("export", str(run_dir), *args)
    assert result.exit_code == code and needle in result.output, result.output


def test_a_run_without_those_weights(tmp_path: Path):
    folder = RunFolder(tmp_path / "run")
    folder.start(Config.from_dict(CONFIG), CLASSES)
    for weights, needle in [("best", "no best.safetensors"), ("last", "no last.safetensors")]:
        result = invoke("export", str(folder.path), "--weights", weights)
        assert result.exit_code == 2 and needle in result.output, result.output
    assert invoke("export", str(tmp_path / "nothing")).exit_code == 2
