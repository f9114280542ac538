"""A convolution and the eval-mode batch norm after it as one op, for outputs no gradient
goes through (evaluation, prediction, a frozen backbone): torch's inference fusion of
``Conv2d`` + ``BatchNorm2d`` (+ ``ReLU``).

Batch norm with running statistics is a per-channel affine map; here each thread applies it
(then the residual and ReLU, ResNet's ``relu(bn(conv(x)) + shortcut)``) to the outputs it has
just computed, while they are in its cache, instead of in a pass of its own over memory. The
numbers are those of ``conv2d`` then ``batch_norm`` to the bit: the same operations on the
same values, cut into other blocks.
"""

from __future__ import annotations

import numpy as np

from engine.autograd.grad_mode import is_grad_enabled
from engine.nn.kernels.conv import Convolution, conv_args, output_hw
from engine.nn.kernels.layout import nhwc
from engine.nn.kernels.norm import check_sizes, eval_map
from engine.tensor import Tensor


def conv2d_batch_norm(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    norm_weight: Tensor | None = None,
    norm_bias: Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    eps: float = 1e-5,
    residual: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    """``batch_norm(conv2d(input, weight, bias, ...), running_mean, running_var, norm_weight,
    norm_bias, training=False, eps=eps, residual=residual, relu=relu)`` of a 4-D ``input``,
    in one pass over the output. It has no backward: with grad mode on, no input may require
    grad."""
    tensors = (input, weight, bias, running_mean, running_var, norm_weight, norm_bias, residual)
    if is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise RuntimeError(
            "conv2d_batch_norm has no backward: call conv2d and batch_norm where gradients "
            "are needed"
        )
    if input.ndim != 4:
        raise RuntimeError(f"Expected 4D input to conv2d_batch_norm, got {list(input.shape)}")
    win, pads = conv_args(input, weight, bias, stride, padding, dilation, groups)
    channels = weight.shape[0]
    check_sizes(
        channels,
        running_mean=running_mean,
        running_var=running_var,
        weight=norm_weight,
        bias=norm_bias,
    )
    out_shape = [input.shape[0], channels, *output_hw(input.shape[2:4], win, pads)]
    if residual is not None and list(residual.shape) != out_shape:
        raise RuntimeError(
            f"residual of shape {list(residual.shape)} does not match output {out_shape}"
        )
    combination = eval_map(
        running_mean._data,
        running_var._data,
        None if norm_weight is None else norm_weight._data,
        None if norm_bias is None else norm_bias._data,
        eps,
        input._data.dtype,
        residual is not None,
        relu,
    )
    shortcut = None if residual is None else nhwc(residual._data)

    def normalize(region: np.ndarray, images: slice, rows: slice) -> None:
        target = region.reshape(-1, channels)  # a view: kernels hand over contiguous regions
        if shortcut is None:
            combination(target, target)
        else:
            combination(target, target, shortcut[images, rows].reshape(-1, channels))

    return Convolution(win.stride, pads, win.dilation, groups, normalize)(input, weight, bias)
