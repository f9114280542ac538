"""Layers and init: forward and gradients against torch, reprs, default initialisation,
BatchNorm running statistics, and finite-difference checks in float64."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import engine
import engine.nn as nn
from engine.autograd import gradcheck
from engine.nn import init

# name: (builder taking an nn namespace, input shape)
LAYERS = {
    "linear": (lambda nn: nn.Linear(5, 3), (4, 5)),
    "linear-no-bias": (lambda nn: nn.Linear(5, 3, bias=False), (2, 3, 5)),
    "conv": (lambda nn: nn.Conv2d(3, 4, 3), (2, 3, 7, 7)),
    "conv-strided-grouped": (
        lambda nn: nn.Conv2d(
            4, 6, (3, 2), stride=2, padding=(1, 2), dilation=(2, 1), groups=2, bias=False
        ),
        (2, 4, 9, 8),
    ),
    "conv-same-dilated": (
        lambda nn: nn.Conv2d(2, 3, 4, padding="same", dilation=2),
        (1, 2, 7, 6),
    ),
    "conv-same-reflect": (
        lambda nn: nn.Conv2d(2, 3, 4, padding="same", padding_mode="reflect"),
        (1, 2, 6, 7),
    ),
    "conv-circular": (
        lambda nn: nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"),
        (1, 2, 5, 5),
    ),
    "batchnorm": (lambda nn: nn.BatchNorm2d(3), (4, 3, 5, 5)),
    "batchnorm-cumulative": (
        lambda nn: nn.BatchNorm2d(3, momentum=None, affine=False),
        (2, 3, 4, 4),
    ),
    "batchnorm-no-stats": (lambda nn: nn.BatchNorm2d(3, track_running_stats=False), (2, 3, 4, 4)),
    "relu": (lambda nn: nn.ReLU(inplace=True), (3, 4, 5)),
    "maxpool": (lambda nn: nn.MaxPool2d(3, stride=2, padding=1), (2, 3, 9, 8)),
    "maxpool-ceil-dilated": (lambda nn: nn.MaxPool2d(2, dilation=2, ceil_mode=True), (1, 2, 9, 7)),
    "avgpool": (lambda nn: nn.AvgPool2d(3, stride=2, padding=1), (2, 3, 9, 8)),
    "avgpool-exclude-pad": (
        lambda nn: nn.AvgPool2d(3, padding=1, ceil_mode=True, count_include_pad=False),
        (1, 2, 8, 7),
    ),
    "adaptive-avgpool": (lambda nn: nn.AdaptiveAvgPool2d((1, 1)), (2, 3, 5, 6)),
    "adaptive-avgpool-grid": (lambda nn: nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 7, 5)),
    "flatten": (lambda nn: nn.Flatten(), (2, 3, 4, 5)),
    "flatten-range": (lambda nn: nn.Flatten(0, 2), (2, 3, 4, 5)),
    "identity": (lambda nn: nn.Identity(54, unused="ignored"), (2, 3)),
    "dropout": (lambda nn: nn.Dropout(0.3), (4, 5)),
    "sequential": (
        lambda nn: nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten()),
        (2, 2, 5, 5),
    ),
}
# Dropout is random in training, so it is compared in eval mode only (see test_dropout_*).
PARITY_CASES = [
    pytest.param(name, training, id=f"{name}-{'train' if training else 'eval'}")
    for name in LAYERS
    for training in (True, False)
    if not (training and name == "dropout")
]


def to_torch(torch, array: np.ndarray):  # noqa: ANN001, ANN201
    return torch.from_numpy(np.ascontiguousarray(array))


def build_pair(torch, build):  # noqa: ANN001, ANN201
    """The same layer from torch and from engine, with torch's weights copied into ours."""
    theirs = build(torch.nn)
    ours = build(nn)
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    return ours, theirs


def assert_close(got, expected, name: str = "") -> None:  # noqa: ANN001
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)


def step_both(torch, ours, theirs, x: np.ndarray, rng: np.random.Generator):  # noqa: ANN001, ANN201
    """Forward and backward of a random output gradient through both layers."""
    x_t = to_torch(torch, x).requires_grad_()
    y_t = theirs(x_t.clone())
    grad = rng.standard_normal(tuple(y_t.shape)).astype(np.float32)
    y_t.backward(to_torch(torch, grad))
    x_e = engine.tensor(x, requires_grad=True)
    y_e = ours(x_e)
    y_e.backward(engine.tensor(grad))
    return (x_e, y_e), (x_t, y_t)


@pytest.mark.torch
@pytest.mark.parametrize(("name", "training"), PARITY_CASES)
def test_forward_and_gradients_match_torch(torch, rng, name, training):
    build, shape = LAYERS[name]
    ours, theirs = build_pair(torch, build)
    ours.train(training)
    theirs.train(training)
    x = rng.standard_normal(shape).astype(np.float32)
    (x_e, y_e), (x_t, y_t) = step_both(torch, ours, theirs, x, rng)
    assert y_e.shape == tuple(y_t.shape) and y_e.dtype is engine.float32
    assert_close(y_e.detach().numpy(), y_t.detach().numpy(), "output")
    assert_close(x_e.grad.numpy(), x_t.grad.numpy(), "input grad")
    expected = dict(theirs.named_parameters())
    for key, param in ours.named_parameters():
        assert_close(param.grad.numpy(), expected[key].grad.numpy(), key)
    expected = theirs.state_dict()
    for key, value in ours.state_dict().items():
        assert_close(value.numpy(), expected[key].numpy(), key)


@pytest.mark.torch
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_running_stats_follow_torch_over_steps(torch, rng, momentum):
    ours, theirs = build_pair(torch, lambda nn: nn.BatchNorm2d(3, momentum=momentum))
    for step in range(3):
        x = (rng.standard_normal((4, 3, 3, 3)) * (step + 1) + step).astype(np.float32)
        step_both(torch, ours, theirs, x, rng)
    assert ours.num_batches_tracked.item() == 3
    assert ours.num_batches_tracked.dtype is engine.int64 and ours.num_batches_tracked.ndim == 0
    for key in ("running_mean", "running_var"):
        assert_close(getattr(ours, key).numpy(), getattr(theirs, key).numpy(), key)
    ours.eval()
    theirs.eval()
    x = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    (_, y_e), (_, y_t) = step_both(torch, ours, theirs, x, rng)
    assert_close(y_e.detach().numpy(), y_t.detach().numpy())
    assert ours.num_batches_tracked.item() == 3


def test_batchnorm_checks_input_rank():
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        nn.BatchNorm2d(3)(engine.zeros(2, 3))


def test_batchnorm_without_tracking_has_no_buffers():
    layer = nn.BatchNorm2d(3, affine=False, track_running_stats=False)
    assert list(layer.state_dict()) == [] and list(layer.parameters()) == []
    out = layer.eval()(engine.randn(4, 3, 2, 2)).numpy()
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)


# ------------------------------------------------------------------ dropout and losses
def test_dropout_zeroes_and_rescales_in_training_only(rng):
    x = engine.ones(200, 100)
    layer = nn.Dropout(0.3)
    out = layer(x).numpy()
    assert set(np.unique(out)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((out == 0).mean() - 0.3) < 0.02
    assert (layer.eval()(x).numpy() == 1).all()
    with pytest.raises(ValueError, match="between 0 and 1, but got 1.5"):
        nn.Dropout(1.5)


@pytest.mark.torch
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"reduction": "sum"},
        {"reduction": "none", "label_smoothing": 0.1},
        {"ignore_index": 2, "label_smoothing": 0.2},
        {"weight": [0.2, 1.0, 3.0, 0.5]},
    ],
    ids=["mean", "sum", "none-smoothing", "ignore-smoothing", "weight"],
)
def test_cross_entropy_loss_matches_torch(torch, rng, kwargs):
    logits = rng.standard_normal((6, 4)).astype(np.float32)
    target = np.array([0, 2, 1, 3, 2, 1])
    weight = kwargs.pop("weight", None)
    ours = nn.CrossEntropyLoss(None if weight is None else engine.tensor(weight), **kwargs)
    theirs = torch.nn.CrossEntropyLoss(None if weight is None else torch.tensor(weight), **kwargs)
    x_e = engine.tensor(logits, requires_grad=True)
    x_t = to_torch(torch, logits).requires_grad_()
    loss_e, loss_t = ours(x_e, engine.tensor(target)), theirs(x_t, to_torch(torch, target))
    assert_close(loss_e.detach().numpy(), loss_t.detach().numpy())
    loss_e.sum().backward()
    loss_t.sum().backward()
    assert_close(x_e.grad.numpy(), x_t.grad.numpy())
    if weight is not None:
        assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]


@pytest.mark.torch
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_matches_torch(torch, rng, reduction):
    a, b = rng.standard_normal((2, 3, 4)).astype(np.float32)
    x_e = engine.tensor(a, requires_grad=True)
    x_t = to_torch(torch, a).requires_grad_()
    loss_e = nn.MSELoss(reduction=reduction)(x_e, engine.tensor(b))
    loss_t = torch.nn.MSELoss(reduction=reduction)(x_t, to_torch(torch, b))
    assert_close(loss_e.detach().numpy(), loss_t.detach().numpy())
    loss_e.sum().backward()
    loss_t.sum().backward()
    assert_close(x_e.grad.numpy(), x_t.grad.numpy())


# ------------------------------------------------------------------ repr
REPRS = {
    "linear": lambda nn: nn.Linear(512, 10, bias=False),
    "conv-resnet-stem": lambda nn: nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False),
    "conv-everything": lambda nn: nn.Conv2d(
        4, 8, (3, 1), stride=(2, 1), padding=(1, 0), dilation=2, groups=4, padding_mode="reflect"
    ),
    "conv-same": lambda nn: nn.Conv2d(1, 1, 3, padding="same"),
    "batchnorm": lambda nn: nn.BatchNorm2d(64),
    "batchnorm-options": lambda nn: nn.BatchNorm2d(
        8, eps=1e-3, momentum=None, affine=False, track_running_stats=False
    ),
    "relu": lambda nn: nn.Sequential(nn.ReLU(inplace=True), nn.ReLU()),
    "maxpool": lambda nn: nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    "maxpool-default-stride": lambda nn: nn.MaxPool2d((2, 2), ceil_mode=True),
    "avgpool": lambda nn: nn.AvgPool2d(2),
    "adaptive": lambda nn: nn.AdaptiveAvgPool2d((1, 1)),
    "adaptive-int": lambda nn: nn.AdaptiveAvgPool2d(7),
    "flatten-dropout-identity": lambda nn: nn.Sequential(
        nn.Flatten(), nn.Dropout(p=0.2), nn.Identity()
    ),
    "losses": lambda nn: nn.ModuleList([nn.CrossEntropyLoss(), nn.MSELoss()]),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", REPRS)
def test_repr_matches_torch(torch, name):
    expected = re.sub(r", bias=\w+, track", ", track", repr(REPRS[name](torch.nn)))
    assert repr(REPRS[name](nn)) == expected


# ------------------------------------------------------------------ constructor checks
def test_conv_rejects_bad_arguments():
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        nn.Conv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        nn.Conv2d(3, 4, 3, padding_mode="mirror")


def test_layer_parameter_names_and_shapes():
    conv = nn.Conv2d(4, 6, (3, 2), groups=2)
    assert [(k, p.shape) for k, p in conv.named_parameters()] == [
        ("weight", (6, 2, 3, 2)),
        ("bias", (6,)),
    ]
    assert conv.kernel_size == (3, 2) and conv.stride == (1, 1) and conv.padding == (0, 0)
    bn = nn.BatchNorm2d(5)
    assert list(bn.state_dict()) == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    assert isinstance(bn.weight, nn.Parameter) and not bn.running_mean.requires_grad


def test_conv_weight_and_its_gradient_are_channels_last_in_memory():
    """torch's (O, I, kH, kW) shape over (O, kH, kW, I) memory: the convolution reads the
    weight matrix and writes the gradient without copies; loading keeps the layout."""
    conv = nn.Conv2d(4, 6, 3, groups=2)
    layout = conv.weight._data.strides
    assert conv.weight._data.transpose(0, 2, 3, 1).flags.c_contiguous
    conv.load_state_dict({k: v.numpy().copy() for k, v in conv.state_dict().items()})
    conv(engine.randn(2, 4, 5, 5)).sum().backward()
    assert conv.weight._data.strides == layout and conv.weight.grad._data.strides == layout


# ------------------------------------------------------------------ default init
def test_linear_and_conv_default_init_is_uniform_in_fan_in_bound():
    engine.manual_seed(0)
    for layer, fan_in in ((nn.Linear(400, 300), 400), (nn.Conv2d(16, 64, 5), 16 * 25)):
        bound = 1 / math.sqrt(fan_in)
        for name, param in layer.named_parameters():
            assert np.abs(param.detach().numpy()).max() <= bound, name
        weight = layer.weight.detach().numpy()
        assert np.abs(weight).max() > 0.99 * bound
        assert abs(weight.std() - bound / math.sqrt(3)) < 0.02 * bound
        assert abs(weight.mean()) < 0.02 * bound


def test_batchnorm_default_init():
    bn = nn.BatchNorm2d(4)
    for name, value in (("weight", 1), ("bias", 0), ("running_mean", 0), ("running_var", 1)):
        assert (bn.state_dict()[name].numpy() == value).all(), name
    assert bn.num_batches_tracked.item() == 0


def test_init_is_reproducible_under_manual_seed():
    engine.manual_seed(7)
    first = nn.Linear(8, 8).weight.detach().numpy().copy()
    engine.manual_seed(7)
    assert (nn.Linear(8, 8).weight.detach().numpy() == first).all()


@pytest.mark.parametrize(
    ("fill", "kwargs", "fan", "gain", "kind"),
    [
        (init.kaiming_normal_, {"mode": "fan_out", "nonlinearity": "relu"}, "out", 2**0.5, "n"),
        (init.kaiming_normal_, {}, "in", (2 / (1 + 0.01**2)) ** 0.5, "n"),
        (init.kaiming_uniform_, {"a": math.sqrt(5)}, "in", (1 / 3) ** 0.5, "u"),
        (init.kaiming_uniform_, {"mode": "fan_out", "nonlinearity": "tanh"}, "out", 5 / 3, "u"),
        (init.xavier_uniform_, {"gain": 2.0}, "sum", 2.0, "u"),
        (init.xavier_normal_, {}, "sum", 1.0, "n"),
    ],
)
def test_fan_based_init_has_the_formula_std(fill, kwargs, fan, gain, kind):
    weight = nn.Parameter(engine.empty(128, 64, 3, 3))
    fan_in, fan_out = 64 * 9, 128 * 9
    std = gain / math.sqrt({"in": fan_in, "out": fan_out, "sum": (fan_in + fan_out) / 2}[fan])
    assert fill(weight, **kwargs) is weight
    values = weight.detach().numpy()
    assert weight.is_leaf and weight.requires_grad and weight.grad_fn is None
    assert abs(values.std() / std - 1) < 0.02
    assert abs(values.mean()) < 0.02 * std
    if kind == "u":
        assert np.abs(values).max() <= math.sqrt(3) * std


def test_simple_inits():
    t = engine.empty(10000)
    assert (init.constant_(t, 0.5).numpy() == 0.5).all()
    assert (init.ones_(t).numpy() == 1).all() and (init.zeros_(t).numpy() == 0).all()
    values = init.uniform_(t, -2, 3).numpy()
    assert values.min() >= -2 and values.max() <= 3 and abs(values.mean() - 0.5) < 0.15
    values = init.normal_(t, 1.0, 0.5).numpy()
    assert abs(values.mean() - 1) < 0.05 and abs(values.std() - 0.5) < 0.05
    values = init.trunc_normal_(engine.empty(10000), std=2.0, a=-1.0, b=3.0).numpy()
    assert values.min() >= -1 and values.max() <= 3 and values.std() > 0.5
    assert t.dtype is engine.float32


def test_init_errors():
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_uniform_(engine.empty(3))
    with pytest.raises(ValueError, match="Mode fan_avg not supported"):
        init.kaiming_normal_(engine.empty(3, 3), mode="fan_avg")
    with pytest.raises(ValueError, match="Unsupported nonlinearity gelu"):
        init.calculate_gain("gelu")
    with pytest.warns(UserWarning, match="zero-element tensors is a no-op"):
        init.kaiming_uniform_(engine.empty(0, 3))


@pytest.mark.torch
def test_gain_and_fans_match_torch(torch):
    for name in ("linear", "conv2d", "sigmoid", "tanh", "relu", "leaky_relu", "selu"):
        assert init.calculate_gain(name) == torch.nn.init.calculate_gain(name), name
    assert init.calculate_gain("leaky_relu", 0.2) == torch.nn.init.calculate_gain("leaky_relu", 0.2)
    for shape in ((3, 4), (8, 4, 3, 3), (5, 2, 7)):
        assert init._calculate_fan_in_and_fan_out(
            engine.empty(*shape)
        ) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(*shape))


# ------------------------------------------------------------------ gradcheck in float64
GRADCHECK = {
    "linear": (lambda: nn.Linear(3, 2), (2, 3)),
    "conv": (lambda: nn.Conv2d(2, 2, 3, stride=2, padding=1), (1, 2, 5, 5)),
    "conv-grouped-dilated": (lambda: nn.Conv2d(2, 2, 2, dilation=2, groups=2), (1, 2, 4, 4)),
    "conv-reflect": (lambda: nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"), (1, 1, 4, 4)),
    "batchnorm-train": (lambda: nn.BatchNorm2d(2), (3, 2, 2, 2)),
    "batchnorm-eval": (lambda: nn.BatchNorm2d(2).eval(), (2, 2, 2, 2)),
    "maxpool": (lambda: nn.MaxPool2d(2, stride=1, padding=1), (1, 2, 3, 3)),
    "avgpool": (lambda: nn.AvgPool2d(3, stride=2, padding=1), (1, 2, 4, 4)),
    "adaptive-avgpool": (lambda: nn.AdaptiveAvgPool2d((2, 1)), (1, 2, 3, 3)),
    "relu": (lambda: nn.ReLU(), (2, 5)),
    "flatten": (lambda: nn.Flatten(), (2, 2, 2)),
}


@pytest.mark.parametrize("name", GRADCHECK)
def test_gradcheck(name, rng):
    make, shape = GRADCHECK[name]
    layer = make().double()
    x = engine.tensor(rng.standard_normal(shape), requires_grad=True)
    assert gradcheck(lambda x, *params: layer(x), (x, *layer.parameters()))


def test_gradcheck_dropout_with_a_fixed_mask(rng):
    layer = nn.Dropout(0.4)
    x = engine.tensor(rng.standard_normal((3, 4)), requires_grad=True)

    def fn(x):  # noqa: ANN001, ANN202
        engine.manual_seed(3)
        return layer(x)

    assert gradcheck(fn, (x,))


def test_gradcheck_losses(rng):
    logits = engine.tensor(rng.standard_normal((4, 3)), requires_grad=True)
    target = engine.tensor([0, 2, 1, 2])
    loss = nn.CrossEntropyLoss(engine.tensor([1.0, 2.0, 0.5], dtype=engine.float64))
    assert gradcheck(lambda x: loss(x, target), (logits,))
    other = engine.tensor(rng.standard_normal((4, 3)))
    assert gradcheck(lambda x: nn.MSELoss()(x, other), (logits,))
