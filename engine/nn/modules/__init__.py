"""The layers of ``engine.nn``, one family per file."""

from engine.nn.modules.activation import ReLU
from engine.nn.modules.batchnorm import BatchNorm2d
from engine.nn.modules.container import ModuleDict, ModuleList, Sequential
from engine.nn.modules.conv import Conv2d
from engine.nn.modules.dropout import Dropout
from engine.nn.modules.linear import Flatten, Identity, Linear
from engine.nn.modules.loss import CrossEntropyLoss, MSELoss
from engine.nn.modules.module import Module
from engine.nn.modules.pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

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
    "ReLU",
    "Sequential",
]
