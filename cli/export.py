"""`finetune export`: a run's trained model as one file that works without this project.

`--format onnx` writes an ONNX model (engine.onnx: BatchNorm folded, a dynamic batch axis)
that onnxruntime and other runtimes run without torch; `--format safetensors` writes the
state dict alone, with torchvision's key names, for torchvision's `resnet18().load_state_dict`.
Both carry in their metadata what a user needs to feed the model: the class names and the
evaluation preprocessing (resize, center crop, mean, std), as JSON strings. By default the
file goes to RUN/export/{best,last}.{onnx,safetensors}.
"""

from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

from rich.console import Console

from cli import __version__
from cli.config import Config
from cli.errors import FinetuneError
from cli.training.run_folder import BEST, LAST, RunFolder, RunFolderError
from engine import nn
from engine.io import save_safetensors

Format = Literal["onnx", "safetensors"]
Weights = Literal["best", "last"]
SUFFIXES = {"onnx": ".onnx", "safetensors": ".safetensors"}
ONNX_HINT = "pip install 'finetune[onnx]'"


class ExportUsageError(FinetuneError):
    """Options that do not go together, or an opset the onnx package cannot write."""

    exit_code = 2


def export(
    run_dir: Path,
    fmt: Format = "onnx",
    weights: Weights = "best",
    opset: int | None = None,
    out: Path | None = None,
    console: Console | None = None,
) -> Path:
    """Write the run's `weights` (best or last) in format `fmt` to `out`; the path written."""
    if fmt != "onnx" and opset is not None:
        raise ExportUsageError("--opset applies to --format onnx only")
    if fmt == "onnx" and find_spec("onnx") is None:
        raise FinetuneError(f"--format onnx needs the onnx package: {ONNX_HINT}")
    folder = RunFolder.open(run_dir)
    config = folder.config()
    metadata = describe(config, folder.class_names(config.model.num_classes))
    model = folder.load_model(_weights_file(folder, weights))
    out = out or folder.path / "export" / f"{weights}{SUFFIXES[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        _write_onnx(model, config, metadata, opset, out)
    else:
        save_safetensors(model.state_dict(), out, metadata={"format": "pt", **metadata})
    message = f"exported {folder.path} ({weights}) to {out}"
    (console or Console()).print(message, markup=False, soft_wrap=True)
    return out


def _weights_file(folder: RunFolder, weights: Weights) -> Path:
    if weights == "best":
        return folder.weights_path()
    if not (folder.path / LAST).is_file():
        raise RunFolderError(
            f"{folder.path}: no {LAST} there (a run writes it after its first epoch); "
            f"train longer, or export {BEST} with --weights best"
        )
    return folder.path / LAST


def describe(config: Config, class_names: list[str]) -> dict[str, str]:
    """The file's metadata: class names and the preprocessing the model expects, as JSON."""
    data = config.data
    preprocessing = {
        "input_size": [3, data.image_size, data.image_size],
        "resize": data.resize,
        "interpolation": "bilinear",
        "crop": "center",
        "mean": list(data.mean),
        "std": list(data.std),
        "color": "RGB",
        "scale": 1 / 255,
        "layout": "NCHW",
        "description": (
            f"resize the shorter side to {data.resize} (bilinear), center-crop "
            f"{data.image_size}x{data.image_size}, RGB pixels times 1/255, minus mean, over std, "
            "as a float32 NCHW batch; the output is one logit per class (softmax for "
            "probabilities)"
        ),
    }
    return {
        "classes": json.dumps(class_names),
        "preprocessing": json.dumps(preprocessing),
        "arch": config.model.arch,
        "producer": f"finetune {__version__}",
    }


def _write_onnx(
    model: nn.Module, config: Config, metadata: dict[str, str], opset: int | None, out: Path
) -> None:
    import engine.onnx
    from engine.io.atomic import write_atomic

    opset = engine.onnx.DEFAULT_OPSET if opset is None else opset
    if not engine.onnx.MIN_OPSET <= opset <= engine.onnx.max_opset():
        raise ExportUsageError(
            f"--opset {opset}: the installed onnx package writes opsets "
            f"{engine.onnx.MIN_OPSET} to {engine.onnx.max_opset()}"
        )
    size = config.data.image_size
    proto = engine.onnx.to_onnx(
        model, (3, size, size), opset=opset, metadata=metadata, output_name="logits"
    )
    proto.producer_name, proto.producer_version = "finetune", __version__
    write_atomic(out, proto.SerializeToString())
