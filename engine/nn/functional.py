"""The functional API, as ``torch.nn.functional``: torch's names and signatures over the kernels.

A facade: the math lives in ``engine.nn.kernels`` (conv, pooling, batch norm, losses, dropout,
pad) and in the tensor ops; what is here only routes arguments.
"""

from __future__ import annotations

import warnings

import numpy as np

from engine.nn.kernels.conv import conv2d
from engine.nn.kernels.conv_norm import conv2d_batch_norm
from engine.nn.kernels.dropout import dropout
from engine.nn.kernels.loss import cross_entropy, l1_loss, mse_loss, nll_loss
from engine.nn.kernels.norm import batch_norm
from engine.nn.kernels.pad import pad
from engine.nn.kernels.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from engine.ops.linalg import Addmm
from engine.tensor import Tensor

__all__ = [
    "adaptive_avg_pool2d",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "conv2d_batch_norm",
    "cross_entropy",
    "dropout",
    "flatten",
    "l1_loss",
    "linear",
    "log_softmax",
    "max_pool2d",
    "mse_loss",
    "nll_loss",
    "one_hot",
    "pad",
    "relu",
    "relu_",
    "sigmoid",
    "softmax",
    "tanh",
]


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias``; built from tensor ops, so differentiable to any order."""
    if bias is not None and input.ndim == 2:
        return Addmm()(bias, input, weight.t())
    if bias is not None and input.ndim > 2 and input.is_contiguous():  # as torch: folded rows
        rows = Addmm()(bias, input.reshape(-1, input.shape[-1]), weight.t())
        return rows.view(*input.shape[:-1], weight.shape[0])
    out = input @ weight.t()
    return out if bias is None else out + bias


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    return input.relu_() if inplace else input.relu()


def relu_(input: Tensor) -> Tensor:
    return input.relu_()


def sigmoid(input: Tensor) -> Tensor:
    return input.sigmoid()


def tanh(input: Tensor) -> Tensor:
    return input.tanh()


def _softmax_dim(name: str, ndim: int) -> int:
    """torch's implicit dim for softmax-like functions called without ``dim`` (deprecated)."""
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. Change the call to include "
        "dim=X as an argument.",
        stacklevel=3,
    )
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Tensor, dim: int | None = None, dtype: object = None) -> Tensor:
    x = input if dtype is None else input.to(dtype)
    return x.softmax(_softmax_dim("softmax", x.ndim) if dim is None else dim)


def log_softmax(input: Tensor, dim: int | None = None, dtype: object = None) -> Tensor:
    x = input if dtype is None else input.to(dtype)
    return x.log_softmax(_softmax_dim("log_softmax", x.ndim) if dim is None else dim)


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    return input.flatten(start_dim, end_dim)


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """Class indices (int64) to one-hot rows of ``num_classes`` (inferred as max + 1 if -1)."""
    labels = tensor._data
    if labels.dtype != np.int64:
        raise RuntimeError("one_hot is only applicable to index tensor of type LongTensor.")
    if num_classes == -1:
        if labels.size == 0:
            raise RuntimeError("Can not infer total number of classes from empty tensor.")
        num_classes = int(labels.max()) + 1
    if labels.size and labels.min() < 0:
        raise RuntimeError("Class values must be non-negative.")
    if labels.size and labels.max() >= num_classes:
        raise RuntimeError("Class values must be smaller than num_classes.")
    return Tensor._make((labels[..., None] == np.arange(num_classes)).astype(np.int64))
