"""``Conv2d``: 2-D convolution (cross-correlation) over (N, C, H, W) input."""

from __future__ import annotations

from collections.abc import Sequence

from engine.creation import empty
from engine.nn import functional as F
from engine.nn.modules.linear import reset_fan_in_uniform
from engine.nn.modules.module import Module
from engine.nn.parameter import Parameter
from engine.tensor import Tensor

IntPair = int | tuple[int, int]
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _pair(value: IntPair) -> tuple[int, int]:
    return tuple(value) if isinstance(value, Sequence) else (value, value)


class Conv2d(Module):
    """``weight`` has shape (out_channels, in_channels // groups, kH, kW); sizes given as an int
    are stored as pairs, as torch does. ``padding`` may also be ``"valid"`` or ``"same"``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: IntPair | str = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if groups <= 0:
            raise ValueError("groups must be a positive integer")
        if in_channels % groups != 0:
            raise ValueError("in_channels must be divisible by groups")
        if out_channels % groups != 0:
            raise ValueError("out_channels must be divisible by groups")
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding_mode must be one of {set(PADDING_MODES)}, but got "
                f"padding_mode='{padding_mode}'"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(
                    f"Invalid padding string {padding!r}, should be one of {{'valid', 'same'}}"
                )
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            self.padding = padding
        else:
            self.padding = _pair(padding)
        # channels-last memory (O, kH, kW, I) under torch's shape: the convolution's weight
        # matrix and weight gradient are then views, never copies
        weight = empty(out_channels, *self.kernel_size, in_channels // groups)
        self.weight = Parameter(weight.permute(0, 3, 1, 2))
        if bias:
            self.bias = Parameter(empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_fan_in_uniform(self.weight, self.bias)

    def _pad_amounts(self) -> tuple[int, int, int, int]:
        """``F.pad``'s (left, right, top, bottom) for the padding modes other than zeros."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size, strict=True)]
            (top, left) = (t // 2 for t in totals)
            return (left, totals[1] - left, top, totals[0] - top)
        pad_h, pad_w = self.padding
        return (pad_w, pad_w, pad_h, pad_h)

    def forward(self, input: Tensor) -> Tensor:
        if self.padding_mode != "zeros":
            input = F.pad(input, self._pad_amounts(), mode=self.padding_mode)
            padding = (0, 0)
        else:
            padding = self.padding
        return F.conv2d(
            input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0, 0):
            text += f", padding={self.padding}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text
