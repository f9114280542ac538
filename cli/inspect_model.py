"""`finetune inspect-model`: the module tree, parameters under the freeze rules, shapes and MACs.

The model is built as `finetune train` builds it (`cli.training.build.build_model`: weights,
freeze rules, new head), from a config's model section or from an architecture
name. Output shapes and MACs come from one forward pass of a zero image under
no_grad, recorded by forward hooks on the leaf modules.

MACs are multiply-accumulates of the conv and linear layers, the measure behind
torchvision's "GFLOPS" figures (ResNet-18 at 224x224: 1.81); FLOPs counting the
multiply and the add separately are twice as many. BatchNorm, ReLU, pooling
and the residual additions are not counted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

import engine
from cli.config import ModelConfig, load_config
from cli.training.build import build_model
from engine import nn

DEFAULT_INPUT_SIZE = 224
DEFAULT_NUM_CLASSES = 1000  # torchvision's, when there is no config


@dataclass
class LayerCall:
    """One call of a leaf module during the forward pass."""

    name: str
    kind: str
    shape: tuple[int, ...]
    macs: int


def model_settings(
    config: Path | None, arch: str | None, num_classes: int | None, input_size: int | None
) -> tuple[ModelConfig, int]:
    """The model section to build and the input size: the config's, with the options on top."""
    if config is None:
        cfg, size = ModelConfig(num_classes=DEFAULT_NUM_CLASSES), DEFAULT_INPUT_SIZE
    else:
        loaded = load_config(config, check_files=False)
        cfg, size = loaded.model, loaded.data.image_size
    given = {"arch": arch, "num_classes": num_classes}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in given.items() if v is not None})
    return cfg, input_size or size


def trace(model: nn.Module, input_size: int) -> list[LayerCall]:
    """Run a 1x3xHxW zero image through `model` in eval mode and record every leaf call."""
    calls: list[LayerCall] = []
    handles = [
        module.register_forward_hook(_recorder(name, calls))
        for name, module in model.named_modules()
        if name and next(module.children(), None) is None
    ]
    model.eval()
    try:
        with engine.no_grad():
            model(engine.zeros(1, 3, input_size, input_size))
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _recorder(name: str, calls: list[LayerCall]) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple, output: engine.Tensor) -> None:
        calls.append(
            LayerCall(name, type(module).__name__, tuple(output.shape), _macs(module, output))
        )

    return hook


def _macs(module: nn.Module, output: engine.Tensor) -> int:
    """Multiply-accumulates of a conv or linear layer for this output; 0 for other layers."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters), counted in values."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def parameter_table(model: nn.Module) -> Table:
    """Every parameter, grouped by top-level block, trainable or frozen, with the totals."""
    table = Table(title="Parameters", show_footer=True)
    total, trainable = count_parameters(model)
    table.add_column("parameter", footer="total")
    table.add_column("shape")
    table.add_column("count", justify="right", footer=f"{total:,}")
    table.add_column("status", footer=f"{trainable:,} trainable, {total - trainable:,} frozen")
    blocks = list(model.named_children())
    for index, (block_name, block) in enumerate(blocks):
        for name, param in block.named_parameters(prefix=block_name):
            status = "[green]trainable[/]" if param.requires_grad else "[dim]frozen[/]"
            shape = "×".join(map(str, param.shape))
            table.add_row(name, shape, f"{param.numel():,}", status)
        if index < len(blocks) - 1 and next(block.parameters(), None) is not None:
            table.add_section()
    return table


def layer_table(calls: list[LayerCall], input_size: int) -> Table:
    """Output shape and MACs of each leaf call, with the total."""
    total = sum(call.macs for call in calls)
    table = Table(
        title=f"Layers (input 1×3×{input_size}×{input_size})",
        caption="MACs: multiply-accumulates of conv and linear layers (FLOPs ≈ 2 × MACs)",
        show_footer=True,
    )
    table.add_column("layer", footer="total")
    table.add_column("type")
    table.add_column("output shape")
    table.add_column("MACs", justify="right", footer=f"{total:,}")
    for call in calls:
        macs = f"{call.macs:,}" if call.macs else "-"
        table.add_row(call.name, call.kind, "×".join(map(str, call.shape)), macs)
    return table


def inspect_model(
    config: Path | None,
    arch: str | None,
    num_classes: int | None,
    input_size: int | None,
    console: Console | None = None,
) -> None:
    """Print the module tree as torch prints it, the parameter table and the layer table."""
    console = console or Console()
    cfg, size = model_settings(config, arch, num_classes, input_size)
    model = build_model(cfg)
    console.out(repr(model), highlight=False)
    console.print(parameter_table(model))
    calls = trace(model, size)
    console.print(layer_table(calls, size))
    total = sum(call.macs for call in calls)
    params, trainable = count_parameters(model)
    console.print(
        f"{cfg.arch}: {params:,} parameters ({trainable:,} trainable), "
        f"{total / 1e9:.2f} GMACs = {2 * total / 1e9:.2f} GFLOPs per {size}×{size} image "
        f"({math.ceil(params * 4 / 2**20)} MiB of float32 weights)",
        highlight=False,
    )
