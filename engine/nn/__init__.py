"""Neural-network layers, as ``torch.nn``: ``Module``, ``Parameter``, the layers, and the
``functional``, ``init`` and ``utils`` submodules."""

import importlib.util

from engine.nn import functional, init
from engine.nn.modules import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Identity,
    Linear,
    MaxPool2d,
    Module,
    ModuleDict,
    ModuleList,
    MSELoss,
    ReLU,
    Sequential,
)
from engine.nn.parameter import Parameter

if importlib.util.find_spec("engine.nn.utils") is not None:  # lands separately
    from engine.nn import utils

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Identity",
    "Linear",
    "MSELoss",
    "MaxPool2d",
    "Module",
    "ModuleDict",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "functional",
    "init",
    "utils",
]
