"""ResNet-18/34/50 with torchvision's module tree, names, initialisation and forward.

Because names and shapes are torchvision's, its state dicts load unchanged and ours load back
into torchvision.
"""

from __future__ import annotations

import os

from engine import nn
from engine.autograd.grad_mode import is_grad_enabled
from engine.io import load_state_dict_file
from engine.nn import functional as F
from engine.tensor import Tensor


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def conv_norm_relu(
    conv: nn.Module,
    norm: nn.Module,
    relu: nn.Module,
    x: Tensor,
    shortcut: Tensor | None = None,
    downsample: nn.Module | None = None,
) -> Tensor:
    """``relu(norm(conv(x)) + shortcut)``, the shortcut taken through ``downsample`` if given
    (no sum when ``shortcut`` is None), modules called in torchvision's order.

    Plain modules without hooks go through fused kernels with the same numbers: batch norm,
    the sum and ReLU in one pass; in eval mode where no gradient goes through, the convolution
    too (``conv2d_batch_norm``, as is the downsample's convolution and batch norm).
    """
    if not (_plain(relu, nn.ReLU) and _fusable(conv, norm, x)):
        return norm_relu(norm, relu, conv(x), shortcut, downsample)
    if shortcut is not None and downsample is not None:
        shortcut = _downsample(downsample, shortcut)
    if shortcut is not None and is_grad_enabled() and shortcut.requires_grad:
        return norm_relu(norm, relu, conv(x), shortcut)
    return _conv_norm(conv, norm, x, shortcut, relu=True)


def norm_relu(
    norm: nn.Module,
    relu: nn.Module,
    x: Tensor,
    shortcut: Tensor | None = None,
    downsample: nn.Module | None = None,
) -> Tensor:
    """``relu(norm(x) + shortcut)``, as ``conv_norm_relu`` after the convolution: one fused
    kernel, with the same numbers, when ``norm`` and ``relu`` are a plain ``BatchNorm2d`` and
    ``ReLU`` without hooks."""
    fused = _plain(norm, nn.BatchNorm2d) and _plain(relu, nn.ReLU)
    out = None if fused else norm(x)
    if shortcut is not None and downsample is not None:
        shortcut = downsample(shortcut)
    if fused:
        return norm(x, residual=shortcut, relu=True)
    return relu(out if shortcut is None else out + shortcut)


def _plain(module: nn.Module, cls: type) -> bool:
    return type(module) is cls and not module._forward_hooks and not module._forward_pre_hooks


def _fusable(conv: nn.Module, norm: nn.Module, x: Tensor) -> bool:
    """Whether ``norm(conv(x))`` can be one ``conv2d_batch_norm``: a plain ``Conv2d`` with zero
    padding and a plain ``BatchNorm2d`` normalising with its running statistics, a 4-D input,
    and no gradient to go through them."""
    if not (_plain(conv, nn.Conv2d) and conv.padding_mode == "zeros" and x.ndim == 4):
        return False
    if not _plain(norm, nn.BatchNorm2d) or norm.training or norm.running_mean is None:
        return False
    tensors = (x, conv.weight, conv.bias, norm.weight, norm.bias)
    return not (is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


def _downsample(downsample: nn.Module, x: Tensor) -> Tensor:
    """The shortcut through ``downsample``; one fused kernel when it is torchvision's plain
    ``Sequential`` of a convolution and a batch norm that ``_fusable`` allows."""
    parts = list(downsample.children())
    if _plain(downsample, nn.Sequential) and len(parts) == 2 and _fusable(*parts, x):
        return _conv_norm(*parts, x)
    return downsample(x)


def _conv_norm(
    conv: nn.Conv2d,
    norm: nn.BatchNorm2d,
    x: Tensor,
    shortcut: Tensor | None = None,
    relu: bool = False,
) -> Tensor:
    return F.conv2d_batch_norm(
        x,
        conv.weight,
        conv.bias,
        norm.running_mean,
        norm.running_var,
        norm.weight,
        norm.bias,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        eps=norm.eps,
        residual=shortcut,
        relu=relu,
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = conv_norm_relu(self.conv1, self.bn1, self.relu, x)
        return conv_norm_relu(self.conv2, self.bn2, self.relu, out, x, self.downsample)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4, with a shortcut (ResNet-50 and up)."""

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = conv_norm_relu(self.conv1, self.bn1, self.relu, x)
        out = conv_norm_relu(self.conv2, self.bn2, self.relu, out)
        return conv_norm_relu(self.conv3, self.bn3, self.relu, out, x, self.downsample)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(nn.Module):
    """Stem (7x7 conv, max pool), four stages of ``layers[i]`` blocks, global pool, linear head.

    Convolutions get kaiming_normal_(fan_out, relu), BatchNorm weight 1 and bias 0; with
    ``zero_init_residual`` the last BatchNorm of each block starts at 0, as in torchvision.
    """

    def __init__(
        self,
        block: Block,
        layers: list[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.constant_(module.bn3.weight, 0)
                elif isinstance(module, BasicBlock):
                    nn.init.constant_(module.bn2.weight, 0)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(conv_norm_relu(self.conv1, self.bn1, self.relu, x))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


def _resnet(
    block: Block,
    layers: list[int],
    weights: str | os.PathLike | None,
    num_classes: int,
) -> ResNet:
    """Build, then load ``weights`` (a torchvision state dict in safetensors or ``.pth``)
    strictly: a head of another size raises torch's size-mismatch error."""
    model = ResNet(block, layers, num_classes=num_classes)
    if weights is not None:
        model.load_state_dict(load_state_dict_file(weights))
    return model


def resnet18(*, weights: str | os.PathLike | None = None, num_classes: int = 1000) -> ResNet:
    return _resnet(BasicBlock, [2, 2, 2, 2], weights, num_classes)


def resnet34(*, weights: str | os.PathLike | None = None, num_classes: int = 1000) -> ResNet:
    return _resnet(BasicBlock, [3, 4, 6, 3], weights, num_classes)


def resnet50(*, weights: str | os.PathLike | None = None, num_classes: int = 1000) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, num_classes)
