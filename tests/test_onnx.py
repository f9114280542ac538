"""engine.onnx: engine models as ONNX, run in onnxruntime, against the engine's own forward.

BatchNorm layers get random running statistics and affine parameters first, so folding them
into the convolutions is exercised, not a near-identity.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import engine
from engine import nn
from engine.models import resnet18, resnet50
from engine.onnx import MIN_OPSET, ExportError, to_onnx

ort = pytest.importorskip("onnxruntime")


def randomise_batch_norms(model: nn.Module, rng: np.random.Generator) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            for name, value in [
                ("running_mean", rng.normal(0, 0.2, c)),
                ("running_var", rng.uniform(0.5, 2.0, c)),
                ("weight", rng.uniform(0.5, 1.5, c)),
                ("bias", rng.normal(0, 0.2, c)),
            ]:
                tensor = getattr(module, name)
                if tensor is not None:
                    with engine.no_grad():
                        tensor.copy_(engine.from_numpy(value.astype(np.float32)))
    return model.eval()


def run_both(model: nn.Module, x: np.ndarray, **options) -> tuple[np.ndarray, np.ndarray]:
    """(engine output, onnxruntime output of the exported model) on the batch `x`."""
    proto = to_onnx(model, x.shape[1:], **options)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with engine.no_grad():
        expected = model(engine.from_numpy(x)).numpy()
    return expected, session.run(None, {"input": x})[0]


def assert_close(expected: np.ndarray, actual: np.ndarray) -> None:
    """Within 1e-4 of the output's scale (float32 round-off differs between the two)."""
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("arch", [resnet18, resnet50], ids=["resnet18", "resnet50"])
def test_a_resnet_runs_in_onnxruntime_as_in_the_engine(arch, rng):
    engine.manual_seed(0)
    model = randomise_batch_norms(arch(num_classes=5), rng)
    x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)
    assert_close(*run_both(model, x))


def test_batchnorm_is_folded_into_the_convolutions(rng):
    proto = to_onnx(randomise_batch_norms(resnet18(num_classes=3), rng), (3, 32, 32))
    ops = {node.op_type for node in proto.graph.node}
    assert ops == {"Conv", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    assert sum(node.op_type == "Conv" for node in proto.graph.node) == 20


def test_the_batch_axis_is_dynamic_and_metadata_is_kept(rng):
    model = randomise_batch_norms(resnet18(num_classes=4), rng)
    metadata = {"classes": '["a", "b", "c", "d"]'}
    proto = to_onnx(model, (3, 32, 32), metadata=metadata, output_name="logits")
    (output,) = proto.graph.output
    dims = output.type.tensor_type.shape.dim
    assert output.name == "logits" and dims[0].dim_param == "batch" and dims[1].dim_value == 4
    assert {p.key: p.value for p in proto.metadata_props} == metadata
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 6):
        x = rng.normal(size=(batch, 3, 32, 32)).astype(np.float32)
        assert session.run(None, {"input": x})[0].shape == (batch, 4)


@pytest.mark.parametrize("opset", [MIN_OPSET, 17])
def test_layers_outside_a_resnet(opset, rng):
    engine.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding="valid", bias=True),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding="same", dilation=2, groups=2),
        nn.AvgPool2d(2, count_include_pad=False),
        nn.BatchNorm2d(8),  # after a pool: on its own, not folded
        nn.MaxPool2d(2, stride=1, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Identity(),
        nn.Linear(8, 3, bias=False),
    )
    model = randomise_batch_norms(model, rng)
    x = rng.normal(size=(2, 3, 17, 17)).astype(np.float32)
    assert_close(*run_both(model, x, opset=opset))


def test_a_module_it_cannot_convert_is_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), nn.MSELoss()))
    with pytest.raises(ExportError, match=r"cannot export 1\.1 \(MSELoss\) to ONNX; supported"):
        to_onnx(model, (3, 8, 8))
    with pytest.raises(ValueError, match="opset 7 is not in"):
        to_onnx(model, (3, 8, 8), opset=7)
