"""torchvision's ResNets rebuilt from torch.nn layers: the reference for parity tests and for
`finetune bench --vs-torch` (torchvision is not installed). Imports nothing; torch is passed in."""

from __future__ import annotations

ARCHS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3])}
ARCHS["resnet50"] = ("bottleneck", [3, 4, 6, 3])


def torch_resnet(torch, arch: str, num_classes: int = 1000):  # noqa: ANN001, ANN201
    """torchvision's ResNet rebuilt from torch.nn layers (torchvision is not installed)."""
    tnn = torch.nn
    kind, layers = ARCHS[arch]

    def conv(cin: int, cout: int, k: int, stride: int = 1):  # noqa: ANN202
        return tnn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)

    class BasicBlock(tnn.Module):
        expansion = 1

        def __init__(self, cin: int, planes: int, stride: int, downsample) -> None:  # noqa: ANN001
            super().__init__()
            self.conv1 = conv(cin, planes, 3, stride)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = conv(planes, planes, 3)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.downsample = downsample

        def forward(self, x):  # noqa: ANN001, ANN202
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class Bottleneck(tnn.Module):
        expansion = 4

        def __init__(self, cin: int, planes: int, stride: int, downsample) -> None:  # noqa: ANN001
            super().__init__()
            self.conv1 = conv(cin, planes, 1)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = conv(planes, planes, 3, stride)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.conv3 = conv(planes, planes * 4, 1)
            self.bn3 = tnn.BatchNorm2d(planes * 4)
            self.relu = tnn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):  # noqa: ANN001, ANN202
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    block = BasicBlock if kind == "basic" else Bottleneck

    class ResNet(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU(inplace=True)
            self.maxpool = tnn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            cin = 64
            for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
                stride = 1 if i == 0 else 2
                cout = planes * block.expansion
                down = None
                if stride != 1 or cin != cout:
                    down = tnn.Sequential(conv(cin, cout, 1, stride), tnn.BatchNorm2d(cout))
                blocks = [block(cin, planes, stride, down)]
                blocks += [block(cout, planes, 1, None) for _ in range(count - 1)]
                setattr(self, f"layer{i + 1}", tnn.Sequential(*blocks))
                cin = cout
            self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
            self.fc = tnn.Linear(512 * block.expansion, num_classes)

        def forward(self, x):  # noqa: ANN001, ANN202
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    torch.manual_seed(0)
    model = ResNet()
    with torch.no_grad():  # non-trivial BatchNorm state, so that copying it is tested
        for module in model.modules():
            if isinstance(module, tnn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model
