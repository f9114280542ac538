"""ResNets: torchvision's tree, names, sizes and init; forward, gradients, BatchNorm statistics
and weight loading against the torch reference in cli/bench/torch_resnet.py (torch.nn layers)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import engine
from cli.bench.torch_resnet import ARCHS, torch_resnet
from engine import nn
from engine.autograd import gradcheck
from engine.models import BasicBlock, Bottleneck, resnet18, resnet34, resnet50
from engine.nn import functional as F

BUILDERS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}


def torch_state_as_numpy(model) -> dict:  # noqa: ANN001
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def pair(torch, arch: str, num_classes: int = 1000):  # noqa: ANN001, ANN201
    """Our model and the torch reference, with the reference's weights copied into ours."""
    theirs = torch_resnet(torch, arch, num_classes)
    ours = BUILDERS[arch](num_classes=num_classes)
    ours.load_state_dict(torch_state_as_numpy(theirs))
    return ours, theirs


def images(rng: np.random.Generator, batch: int = 2) -> np.ndarray:
    """32x32 images: with a batch of 4, layer4's BatchNorm still averages over 4 values."""
    return rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)


def count(model) -> int:  # noqa: ANN001
    return sum(p.numel() for p in model.parameters())


def assert_close(got, expected, name: str = "", tol: float = 1e-4) -> None:  # noqa: ANN001
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol, err_msg=name)


# ------------------------------------------------------------------ structure
def test_resnet18_has_torchvisions_parameter_count():
    assert count(resnet18()) == 11_689_512
    assert count(resnet18(num_classes=10)) == 11_181_642


def _module_lists(lib, resnet):  # noqa: ANN001, ANN202
    """ModuleLists over ResNet blocks and layers: runs of identical children collapse."""
    nn_ = lib.nn
    r18, r50 = resnet("resnet18"), resnet("resnet50")
    linear = [nn_.Linear(4, 4) for _ in range(3)]
    return [
        nn_.ModuleList(list(r18.layer1)),
        nn_.ModuleList(list(r50.layer3)),
        nn_.ModuleList([r18.layer1, r18.layer1, r50.layer4]),
        nn_.ModuleList([*linear, nn_.ReLU(), nn_.Linear(4, 4), nn_.ReLU(), nn_.ReLU()]),
        nn_.ModuleList([nn_.ModuleList([nn_.Linear(2, 2)] * 2)] * 3),
        nn_.Sequential(nn_.ModuleList(linear), *linear),
        nn_.ModuleList([nn_.Sequential(r18.fc)]),
        nn_.ModuleList(),
    ]


@pytest.mark.torch
def test_module_list_repr_collapses_repeated_children_like_torch(torch):
    theirs = _module_lists(torch, lambda arch: torch_resnet(torch, arch))
    ours = _module_lists(engine, lambda arch: BUILDERS[arch]())
    for got, expected in zip(ours, theirs, strict=True):
        assert repr(got) == re.sub(r", bias=\w+, track", ", track", repr(expected))
    assert "(1-5): 5 x Bottleneck(" in repr(ours[1])


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_repr_matches_torch_line_for_line(torch, arch):
    expected = re.sub(r", bias=\w+, track", ", track", repr(torch_resnet(torch, arch)))
    got = repr(BUILDERS[arch]())
    assert got.splitlines() == expected.splitlines()
    assert "BatchNorm2d(64, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True)" in got


@pytest.mark.torch
@pytest.mark.parametrize("arch", list(ARCHS))
def test_state_dict_names_shapes_and_count_match_torch(torch, arch):
    ours, theirs = BUILDERS[arch](num_classes=7), torch_resnet(torch, arch, num_classes=7)
    got = [(k, tuple(v.shape), v.dtype.name) for k, v in ours.state_dict().items()]
    expected = [(k, tuple(v.shape), str(v.dtype)[6:]) for k, v in theirs.state_dict().items()]
    assert got == expected
    assert count(ours) == count(theirs)


def test_default_init_follows_torchvision():
    engine.manual_seed(0)
    model = resnet18()
    weight = model.layer3[0].conv1.weight.detach().numpy()
    std = (2 / (weight.shape[0] * 9)) ** 0.5  # kaiming_normal_, fan_out, relu
    assert abs(weight.std() / std - 1) < 0.02
    bn = model.layer1[1].bn2
    assert (bn.weight.detach().numpy() == 1).all() and (bn.bias.detach().numpy() == 0).all()
    bound = 1 / 512**0.5  # fc keeps Linear's default
    assert np.abs(model.fc.weight.detach().numpy()).max() <= bound
    assert isinstance(model.layer2[0].downsample, nn.Sequential)
    assert model.layer1[0].downsample is None and "downsample" not in model.layer1[0]._modules


def test_zero_init_residual_zeroes_the_last_norm_of_each_block():
    from engine.models.resnet import ResNet

    model = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=3, zero_init_residual=True)
    assert all((block.bn3.weight.detach().numpy() == 0).all() for block in model.layer2)
    assert (model.layer2[0].bn1.weight.detach().numpy() == 1).all()


# ------------------------------------------------------------------ numbers
@pytest.mark.torch
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_eval_logits_match_torch(torch, rng, arch):
    ours, theirs = pair(torch, arch)
    x = images(rng)
    got = ours.eval()(engine.tensor(x)).detach().numpy()
    with torch.no_grad():
        expected = theirs.eval()(torch.from_numpy(x)).numpy()
    assert got.shape == (2, 1000)
    assert_close(got, expected)


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_eval_logits_without_grad_match_torch(torch, rng, arch):
    """Under no_grad every convolution and its batch norm run as one fused kernel."""
    ours, theirs = pair(torch, arch)
    x = images(rng)
    with engine.no_grad():
        got = ours.eval()(engine.tensor(x)).numpy()
    with torch.no_grad():
        expected = theirs.eval()(torch.from_numpy(x)).numpy()
    assert_close(got, expected)


@pytest.mark.torch
def test_eval_logits_match_torch_at_224(torch, rng):
    """At 224x224 every convolution algorithm runs: im2col (conv1, strided, 7x7 layer4),
    Winograd F(4x4) on 56x56 and 28x28, and F(4x4) computed as 16x16 and cropped on 14x14."""
    ours, theirs = pair(torch, "resnet18")
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    got = ours.eval()(engine.tensor(x)).detach().numpy()
    with torch.no_grad():
        expected = theirs.eval()(torch.from_numpy(x)).numpy()
    assert_close(got, expected)


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_training_step_matches_torch(torch, rng, dtype):
    """Loss, gradients and BatchNorm statistics after one step in training mode.

    In float32 only the head's gradients are compared: deeper ones pass through ReLUs whose
    mask either library's round-off can flip where an activation is within ~1e-5 of zero (at
    this input torch's own float32 gradients differ from its float64 ones by 18% on one bias).
    float64 checks every gradient.
    """
    ours, theirs = pair(torch, "resnet18", num_classes=10)
    x, target = images(rng, 4).astype(dtype), np.array([3, 7, 0, 9])
    if dtype == "float64":
        ours.double()
        theirs.double()
    tol = 1e-4 if dtype == "float32" else 1e-9
    loss = nn.CrossEntropyLoss()(ours(engine.tensor(x)), engine.tensor(target))
    expected = torch.nn.CrossEntropyLoss()(theirs(torch.from_numpy(x)), torch.from_numpy(target))
    loss.backward()
    expected.backward()
    assert_close(loss.item(), expected.item(), tol=tol)
    reference = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        if dtype == "float64" or name.startswith("fc."):
            assert_close(param.grad.numpy(), reference[name].grad.numpy(), name, tol)
    reference = theirs.state_dict()
    for name, value in ours.state_dict().items():
        assert_close(value.numpy(), reference[name].numpy(), name, tol)


@pytest.mark.torch
def test_frozen_backbone_trains_only_the_new_head(torch, rng):
    ours, theirs = pair(torch, "resnet18")
    for model in (ours, theirs):
        for param in model.parameters():
            param.requires_grad = False
    theirs.fc = torch.nn.Linear(512, 10)
    ours.fc = nn.Linear(512, 10)
    ours.fc.load_state_dict(torch_state_as_numpy(theirs.fc))
    assert list(ours.state_dict())[-2:] == ["fc.weight", "fc.bias"]
    x, target = images(rng, 4), np.array([1, 9, 2, 2])
    nn.CrossEntropyLoss()(ours(engine.tensor(x)), engine.tensor(target)).backward()
    loss = torch.nn.CrossEntropyLoss()(theirs(torch.from_numpy(x)), torch.from_numpy(target))
    loss.backward()
    trainable = [name for name, p in ours.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    assert all(p.grad is None for name, p in ours.named_parameters() if name not in trainable)
    assert_close(ours.fc.weight.grad.numpy(), theirs.fc.weight.grad.numpy())
    assert_close(ours.fc.bias.grad.numpy(), theirs.fc.bias.grad.numpy())
    assert_close(ours.bn1.running_mean.numpy(), theirs.bn1.running_mean.numpy())


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_hooks_switch_blocks_to_module_calls_with_the_same_numbers(rng, arch):
    """Blocks run ``relu(bn(x) + shortcut)`` as one kernel when their BatchNorm2d and ReLU are
    plain; a forward hook gets the modules called one by one, in torchvision's order, and
    the very same loss, gradients and running statistics."""
    x, target = engine.tensor(images(rng, 4)), engine.tensor(np.array([3, 7, 0, 9]))
    results, calls = [], []
    for hooked in (False, True):
        engine.manual_seed(0)
        model = BUILDERS[arch](num_classes=10)
        if hooked:
            for name, module in model.named_modules():
                if isinstance(module, nn.BatchNorm2d | nn.ReLU) or name.endswith("downsample"):
                    module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
        loss = nn.CrossEntropyLoss()(model(x), target)
        loss.backward()
        grads = [p.grad.numpy() for p in model.parameters()]
        results.append([loss.detach().numpy(), *grads, *(b.numpy() for b in model.buffers())])
    for fused, separate in zip(*results, strict=True):
        np.testing.assert_array_equal(fused, separate)
    last = "layer2.0.bn3" if arch == "resnet50" else "layer2.0.bn2"
    assert (
        calls.index(last)
        < calls.index("layer2.0.downsample")
        < calls.index("layer2.0.relu", calls.index(last))
    )


def _fused_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """An entry for each call of the fused convolution and batch norm."""
    calls: list[int] = []
    fused = F.conv2d_batch_norm

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "conv2d_batch_norm", counted)
    return calls


def _with_running_stats(model: nn.Module, rng: np.random.Generator) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(engine.tensor(rng.standard_normal(c).astype(np.float32)))
            module.running_var.copy_(engine.tensor(rng.uniform(0.5, 2, c).astype(np.float32)))
    return model


@pytest.mark.parametrize(("arch", "norms"), [("resnet18", 20), ("resnet50", 53)])
def test_eval_without_grad_fuses_each_conv_with_its_norm(monkeypatch, rng, arch, norms):
    """In eval mode, where no gradient goes through, each convolution and its BatchNorm (the
    downsample's too) are one kernel, with the numbers of the modules called one by one."""
    engine.manual_seed(0)
    model = _with_running_stats(BUILDERS[arch](num_classes=10), rng).eval()
    x = engine.tensor(images(rng, 3))
    calls = _fused_calls(monkeypatch)
    with engine.no_grad():
        fused = model(x).numpy()
    assert len(calls) == norms == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    separate = model(x).detach().numpy()  # the parameters require grad: nothing fused
    assert len(calls) == norms
    np.testing.assert_array_equal(fused, separate)


def test_frozen_backbone_in_eval_mode_fuses_and_trains_the_head(monkeypatch, rng):
    """A frozen backbone with BatchNorm in eval mode (``bn: eval``) runs fused; the head's
    gradients are those of the modules called one by one (a hook on each conv)."""
    grads = []
    x, target = engine.tensor(images(rng, 4)), engine.tensor(np.array([3, 7, 0, 9]))
    for hooked in (False, True):
        engine.manual_seed(0)
        model = _with_running_stats(resnet18(num_classes=10), np.random.default_rng(1)).eval()
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith("fc.")
        calls = _fused_calls(monkeypatch)
        if hooked:
            for module in model.modules():
                if isinstance(module, nn.Conv2d):
                    module.register_forward_hook(lambda m, i, o: None)
        nn.CrossEntropyLoss()(model(x), target).backward()
        assert len(calls) == (0 if hooked else 20)
        grads.append([model.fc.weight.grad.numpy(), model.fc.bias.grad.numpy()])
    for fused, separate in zip(*grads, strict=True):
        np.testing.assert_array_equal(fused, separate)


@pytest.mark.parametrize(
    ("trainable", "fused"), [("bn1.weight", 0), ("layer1.0.conv1.weight", 1), ("downsample", 19)]
)
def test_no_fusion_where_a_gradient_goes_through(monkeypatch, rng, trainable, fused):
    """A trainable BatchNorm or convolution keeps its convolution and norm apart, and all
    after it, which the gradient goes through; a training-mode BatchNorm only its own."""
    model = _with_running_stats(resnet18(num_classes=10), rng).eval()
    for name, param in model.named_parameters():
        param.requires_grad = name == trainable
    if trainable == "downsample":
        model.layer2[0].downsample[1].train()
    calls = _fused_calls(monkeypatch)
    model(engine.tensor(images(rng)))
    assert len(calls) == fused


@pytest.mark.parametrize(
    "make",
    [
        lambda: BasicBlock(4, 4),
        lambda: Bottleneck(
            4,
            2,
            stride=2,
            downsample=nn.Sequential(nn.Conv2d(4, 8, 1, 2, bias=False), nn.BatchNorm2d(8)),
        ),
    ],
    ids=["basic", "bottleneck-downsample"],
)
def test_block_gradcheck_in_training_mode(rng, make):
    block = make().double().train()
    for module in block.modules():  # away from ReLU kinks at zero-initialised BatchNorm shifts
        if isinstance(module, nn.BatchNorm2d):
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    x = engine.tensor(rng.standard_normal((2, 4, 4, 4)), requires_grad=True)
    assert gradcheck(lambda x, *params: block(x), (x, *block.parameters()))


# ------------------------------------------------------------------ weights files
@pytest.mark.torch
def test_weights_from_safetensors_and_pth_reproduce_torch(torch, rng, tmp_path):
    save_file = pytest.importorskip("safetensors.torch").save_file
    theirs = torch_resnet(torch, "resnet18").eval()
    save_file(theirs.state_dict(), tmp_path / "resnet18.safetensors")
    torch.save(theirs.state_dict(), tmp_path / "resnet18.pth")
    x = images(rng)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x)).numpy()
    for name in ("resnet18.safetensors", "resnet18.pth"):
        model = resnet18(weights=tmp_path / name).eval()
        assert_close(model(engine.tensor(x)).detach().numpy(), expected, name)
    tracked = resnet18(weights=str(tmp_path / "resnet18.safetensors")).bn1.num_batches_tracked
    assert tracked.dtype is engine.int64 and tracked.item() == theirs.bn1.num_batches_tracked


@pytest.mark.torch
def test_weights_with_another_head_size_raise_torchs_error(torch, tmp_path):
    save_file = pytest.importorskip("safetensors.torch").save_file
    save_file(torch_resnet(torch, "resnet18").state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(RuntimeError) as error:
        resnet18(weights=tmp_path / "w.safetensors", num_classes=10)
    assert str(error.value) == (
        "Error(s) in loading state_dict for ResNet:\n"
        "\tsize mismatch for fc.weight: copying a param with shape torch.Size([1000, 512]) from "
        "checkpoint, the shape in current model is torch.Size([10, 512]).\n"
        "\tsize mismatch for fc.bias: copying a param with shape torch.Size([1000]) from "
        "checkpoint, the shape in current model is torch.Size([10])."
    )
