"""An ONNX graph under construction: nodes and weights added in order, then one ModelProto."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BATCH = "batch"  # the symbolic name of the input's (and so the output's) dynamic first axis


class Graph:
    """Nodes in execution order and their float32 weights (initializers), with unique names.

    Every method that adds a node returns the name of the value it computes, so a converter
    reads like the forward it mirrors: ``y = g.node("Relu", [x], "layer1.0.relu")``.
    """

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set()

    def fresh(self, name: str) -> str:
        """`name`, or `name_1`, `name_2`, ... when taken (a module may be called twice)."""
        candidate, count = name, 0
        while candidate in self._used:
            count += 1
            candidate = f"{name}_{count}"
        self._used.add(candidate)
        return candidate

    def weight(self, name: str, array: np.ndarray) -> str:
        """Add a constant tensor, stored as contiguous float32."""
        name = self.fresh(name)
        data = np.ascontiguousarray(array, dtype=np.float32)
        self.initializers.append(numpy_helper.from_array(data, name))
        return name

    def node(self, op: str, inputs: Sequence[str], name: str, **attributes: Any) -> str:
        """Add an `op` node named `name` and return the name of its (single) output."""
        output = self.fresh(name)
        self.nodes.append(helper.make_node(op, list(inputs), [output], name=output, **attributes))
        return output

    def to_model(
        self,
        input_name: str,
        input_shape: Sequence[int],
        output: str,
        output_name: str,
        opset: int,
        metadata: Mapping[str, str],
    ) -> onnx.ModelProto:
        """The whole model, from a float32 input (batch, *input_shape) to the value `output`,
        renamed `output_name`; its shape comes from ONNX's shape inference, which also checks
        every node."""
        for node in self.nodes:
            node.output[:] = [output_name if name == output else name for name in node.output]
        shape = [BATCH, *input_shape]
        inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)]
        outputs = [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, None)]
        graph = helper.make_graph(self.nodes, "model", inputs, outputs, self.initializers)
        opsets = [helper.make_opsetid("", opset)]
        model = helper.make_model(
            graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets)
        )
        helper.set_model_props(model, dict(metadata))
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)
