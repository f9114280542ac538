"""Export an engine model to ONNX, for onnxruntime and other runtimes without torch or this
project (needs the ``onnx`` package).

``to_onnx(model, (3, 224, 224))`` gives the model as an ``onnx.ModelProto`` in eval mode:
BatchNorm folded into the convolutions, a dynamic batch axis, checked by ONNX's shape
inference; ``onnx.save`` or ``SerializeToString`` writes it. ``metadata`` goes into the
file's ``metadata_props`` (string keys and values). Supported: the ResNets of
``engine.models`` and Sequential stacks of the usual layers (see ``engine.onnx.convert``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx

from engine.nn import Module
from engine.onnx.convert import ExportError, emit
from engine.onnx.graph import Graph

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "ExportError", "max_opset", "to_onnx"]

DEFAULT_OPSET = 17
MIN_OPSET = 13


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    return onnx.defs.onnx_opset_version()


def to_onnx(
    model: Module,
    input_shape: Sequence[int],
    *,
    opset: int = DEFAULT_OPSET,
    metadata: Mapping[str, str] | None = None,
    input_name: str = "input",
    output_name: str = "output",
) -> onnx.ModelProto:
    """`model` as ONNX, for float32 inputs of shape (batch, *input_shape), e.g. (3, 224, 224).

    Raises ExportError for a module it cannot convert and ValueError for an opset outside
    MIN_OPSET..max_opset().
    """
    if not MIN_OPSET <= opset <= max_opset():
        raise ValueError(f"opset {opset} is not in {MIN_OPSET}..{max_opset()}")
    g = Graph()
    g.fresh(input_name)
    output = emit(g, model, input_name, "")
    return g.to_model(input_name, input_shape, output, output_name, opset, metadata or {})
