"""Neural-network layers, as ``torch.nn``: ``Module``, ``Parameter``, the layers, and the
``functional``, ``init`` and ``utils`` submodules."""

from engine.nn import functional, init, utils
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
