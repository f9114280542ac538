"""Engine modules as ONNX nodes, in eval mode: one converter per module type.

A convolution followed by its BatchNorm becomes one Conv with the BatchNorm's running
statistics folded into its weight and bias (computed in float64), as deployers expect. The
ResNet converters mirror `engine.models.resnet`'s forward methods; a Sequential converts its
children in order. Converters match a module's exact type, so a subclass with another forward
is refused rather than exported wrongly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine import nn
from engine.models.resnet import BasicBlock, Bottleneck, ResNet
from engine.nn.kernels.layout import pair
from engine.onnx.graph import Graph
from engine.tensor import Tensor


class ExportError(RuntimeError):
    """A module the ONNX exporter cannot convert; the message names it."""


def array(tensor: Tensor) -> np.ndarray:
    """A parameter or buffer as a float64 NumPy array in torch's (NCHW) shape."""
    return np.array(tensor.detach().numpy(), dtype=np.float64)


def emit(g: Graph, module: nn.Module, x: str, name: str) -> str:
    """Add `module` (called `name` in the model) applied to the value `x`; its output."""
    convert = CONVERTERS.get(type(module))
    if convert is None:
        supported = ", ".join(sorted(cls.__name__ for cls in CONVERTERS))
        raise ExportError(
            f"cannot export {name or 'the model'} ({type(module).__name__}) to ONNX; "
            f"supported modules: {supported}"
        )
    return convert(g, module, x, name)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def conv(g: Graph, layer: nn.Conv2d, x: str, name: str, bn: nn.BatchNorm2d | None = None) -> str:
    """A Conv node; with `bn`, the BatchNorm that follows folded into it."""
    if layer.padding_mode != "zeros":
        raise ExportError(f"cannot export {name}: padding_mode {layer.padding_mode!r}")
    weight = array(layer.weight)
    bias = array(layer.bias) if layer.bias is not None else np.zeros(layer.out_channels)
    if bn is not None:
        scale, shift = _affine(bn, name)
        weight, bias = weight * scale[:, None, None, None], bias * scale + shift
    left, right, top, bottom = layer._pad_amounts()
    inputs = [x, g.weight(f"{name}.weight", weight)]
    if layer.bias is not None or bn is not None:
        inputs.append(g.weight(f"{name}.bias", bias))
    return g.node(
        "Conv",
        inputs,
        name,
        kernel_shape=list(layer.kernel_size),
        strides=list(layer.stride),
        pads=[top, left, bottom, right],
        dilations=list(layer.dilation),
        group=layer.groups,
    )


def _affine(bn: nn.BatchNorm2d, name: str) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm in eval mode as y = x * scale + shift, per channel."""
    if bn.running_mean is None:
        raise ExportError(f"cannot export {name}: a BatchNorm without running statistics")
    scale = 1 / np.sqrt(array(bn.running_var) + bn.eps)
    shift = -array(bn.running_mean) * scale
    if bn.weight is not None:
        scale, shift = scale * array(bn.weight), shift * array(bn.weight) + array(bn.bias)
    return scale, shift


def batch_norm(g: Graph, bn: nn.BatchNorm2d, x: str, name: str) -> str:
    """A BatchNorm on its own (no convolution before it), with its running statistics."""
    scale, shift = _affine(bn, name)
    shape = (-1, 1, 1)
    y = g.node("Mul", [x, g.weight(f"{name}.scale", scale.reshape(shape))], f"{name}.mul")
    return g.node("Add", [y, g.weight(f"{name}.shift", shift.reshape(shape))], name)


def sequential(g: Graph, seq: nn.Sequential, x: str, name: str) -> str:
    children = list(seq.named_children())
    i = 0
    while i < len(children):
        child_name, child = children[i]
        following = children[i + 1][1] if i + 1 < len(children) else None
        if type(child) is nn.Conv2d and type(following) is nn.BatchNorm2d:
            x = conv(g, child, x, _join(name, child_name), following)
            i += 2
        else:
            x = emit(g, child, x, _join(name, child_name))
            i += 1
    return x


def _conv_bn_relu(g: Graph, owner: nn.Module, index: int, x: str, name: str) -> str:
    """relu(bn{index}(conv{index}(x))) of a block or the stem, with the BatchNorm folded."""
    layer, bn = getattr(owner, f"conv{index}"), getattr(owner, f"bn{index}")
    return emit(
        g, owner.relu, conv(g, layer, x, _join(name, f"conv{index}"), bn), _join(name, "relu")
    )


def basic_block(g: Graph, block: BasicBlock, x: str, name: str) -> str:
    out = _conv_bn_relu(g, block, 1, x, name)
    out = conv(g, block.conv2, out, _join(name, "conv2"), block.bn2)
    return _residual(g, block, x, out, name)


def bottleneck(g: Graph, block: Bottleneck, x: str, name: str) -> str:
    out = _conv_bn_relu(g, block, 2, _conv_bn_relu(g, block, 1, x, name), name)
    out = conv(g, block.conv3, out, _join(name, "conv3"), block.bn3)
    return _residual(g, block, x, out, name)


def _residual(g: Graph, block: BasicBlock | Bottleneck, x: str, out: str, name: str) -> str:
    """relu(out + shortcut), the shortcut through the block's downsample if it has one."""
    if block.downsample is not None:
        x = emit(g, block.downsample, x, _join(name, "downsample"))
    return emit(g, block.relu, g.node("Add", [out, x], _join(name, "add")), _join(name, "relu"))


def resnet(g: Graph, model: ResNet, x: str, name: str) -> str:
    x = _conv_bn_relu(g, model, 1, x, name)
    x = emit(g, model.maxpool, x, _join(name, "maxpool"))
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        x = emit(g, getattr(model, layer), x, _join(name, layer))
    x = emit(g, model.avgpool, x, _join(name, "avgpool"))
    x = g.node("Flatten", [x], _join(name, "flatten"), axis=1)
    return emit(g, model.fc, x, _join(name, "fc"))


def relu(g: Graph, module: nn.ReLU, x: str, name: str) -> str:
    return g.node("Relu", [x], name)


def _pool_geometry(module: nn.MaxPool2d | nn.AvgPool2d) -> dict[str, object]:
    ph, pw = pair(module.padding)
    return {
        "kernel_shape": list(pair(module.kernel_size)),
        "strides": list(pair(module.stride)),
        "pads": [ph, pw, ph, pw],
        "ceil_mode": int(module.ceil_mode),
    }


def max_pool(g: Graph, pool: nn.MaxPool2d, x: str, name: str) -> str:
    if pool.return_indices:
        raise ExportError(f"cannot export {name}: MaxPool2d with return_indices")
    return g.node("MaxPool", [x], name, dilations=list(pair(pool.dilation)), **_pool_geometry(pool))


def avg_pool(g: Graph, pool: nn.AvgPool2d, x: str, name: str) -> str:
    if pool.divisor_override is not None:
        raise ExportError(f"cannot export {name}: AvgPool2d with divisor_override")
    geometry = _pool_geometry(pool)
    return g.node(
        "AveragePool", [x], name, count_include_pad=int(pool.count_include_pad), **geometry
    )


def adaptive_avg_pool(g: Graph, pool: nn.AdaptiveAvgPool2d, x: str, name: str) -> str:
    if pair(pool.output_size) != (1, 1):
        raise ExportError(f"cannot export {name}: AdaptiveAvgPool2d to {pool.output_size}, only 1")
    return g.node("GlobalAveragePool", [x], name)


def flatten(g: Graph, module: nn.Flatten, x: str, name: str) -> str:
    if module.end_dim != -1:
        raise ExportError(f"cannot export {name}: Flatten with end_dim {module.end_dim}")
    return g.node("Flatten", [x], name, axis=module.start_dim)


def linear(g: Graph, fc: nn.Linear, x: str, name: str) -> str:
    inputs = [x, g.weight(f"{name}.weight", array(fc.weight))]
    if fc.bias is not None:
        inputs.append(g.weight(f"{name}.bias", array(fc.bias)))
    return g.node("Gemm", inputs, name, transB=1)


def passthrough(g: Graph, module: nn.Module, x: str, name: str) -> str:
    """Identity, and Dropout (which does nothing in eval mode)."""
    return x


Converter = Callable[[Graph, nn.Module, str, str], str]
CONVERTERS: dict[type, Converter] = {
    ResNet: resnet,
    BasicBlock: basic_block,
    Bottleneck: bottleneck,
    nn.Sequential: sequential,
    nn.Conv2d: conv,
    nn.BatchNorm2d: batch_norm,
    nn.ReLU: relu,
    nn.MaxPool2d: max_pool,
    nn.AvgPool2d: avg_pool,
    nn.AdaptiveAvgPool2d: adaptive_avg_pool,
    nn.Flatten: flatten,
    nn.Linear: linear,
    nn.Identity: passthrough,
    nn.Dropout: passthrough,
}
