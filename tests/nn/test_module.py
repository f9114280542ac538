"""Module: registration, traversal, state dicts, modes, hooks and repr, against torch's."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import engine
import engine.nn as nn
from engine.nn.modules.module import _IncompatibleKeys


def make_net(lib):  # noqa: ANN001, ANN201 - builds the same tree from engine or torch
    """A small model with every kind of member: params, persistent and non-persistent buffers,
    a None parameter, nested containers and a plain attribute."""

    class Net(lib.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = lib.nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.bn = lib.nn.BatchNorm2d(4)
            self.relu = lib.nn.ReLU(inplace=True)
            self.register_buffer("scale", lib.ones(4))
            self.register_buffer("cache", lib.zeros(2), persistent=False)
            self.blocks = lib.nn.ModuleList([lib.nn.Linear(4, 4), lib.nn.Linear(4, 4, bias=False)])
            self.heads = lib.nn.ModuleDict({"cls": lib.nn.Linear(4, 3), "aux": lib.nn.Identity()})
            self.pool = lib.nn.Sequential(lib.nn.AdaptiveAvgPool2d((1, 1)), lib.nn.Flatten())
            self.fc = lib.nn.Linear(4, 2)
            self.gain = lib.nn.Parameter(lib.ones(1))
            self.register_parameter("unused", None)
            self.label = "plain attribute"

    return Net()


def torch_state_as_numpy(module) -> dict:  # noqa: ANN001
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def shapes(state: dict) -> list:
    return [(k, tuple(v.shape)) for k, v in state.items()]


# ------------------------------------------------------------------ registration
def test_members_are_registered_in_assignment_order():
    net = make_net(engine)
    assert list(net._modules) == ["conv", "bn", "relu", "blocks", "heads", "pool", "fc"]
    assert list(net._parameters) == ["gain", "unused"]
    assert list(net._buffers) == ["scale", "cache"]
    assert "label" not in net._modules and net.label == "plain attribute"
    assert [name for name, _ in net.named_children()] == list(net._modules)
    assert net.unused is None


def test_replacing_a_child_keeps_its_place():
    net = make_net(engine)
    old = net.conv
    net.conv = nn.Conv2d(3, 4, 1)
    assert list(net._modules)[0] == "conv" and net.conv is not old
    net.fc = None
    assert net.fc is None and list(net._modules)[-1] == "fc"
    assert not any(name.startswith("fc.") for name in net.state_dict())
    with pytest.raises(TypeError, match="child module 'fc'"):
        net.fc = 3


def test_replacing_a_parameter_keeps_its_place_and_checks_type():
    net = make_net(engine)
    net.gain = nn.Parameter(engine.zeros(1))
    assert list(net._parameters) == ["gain", "unused"]
    with pytest.raises(TypeError, match="as parameter 'gain'"):
        net.gain = engine.zeros(1)


def test_a_plain_tensor_assigned_to_a_buffer_name_updates_the_buffer():
    net = make_net(engine)
    new = engine.full((4,), 2.0)
    net.scale = new
    assert net._buffers["scale"] is new
    assert "scale" not in net.__dict__


def test_a_member_of_another_kind_takes_the_name_over():
    net = make_net(engine)
    net.relu = nn.Parameter(engine.ones(2))
    assert "relu" not in net._modules and "relu" in net._parameters
    del net.relu
    assert "relu" not in net._parameters
    with pytest.raises(AttributeError, match="'Net' object has no attribute 'relu'"):
        _ = net.relu


def test_assigning_before_init_is_an_error():
    class Early(nn.Module):
        def __init__(self) -> None:
            self.weight = nn.Parameter(engine.ones(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()


def test_forward_is_required():
    with pytest.raises(NotImplementedError, match='missing the required "forward"'):
        nn.Module()(engine.ones(1))


# ------------------------------------------------------------------ traversal
def test_named_members_with_prefixes():
    net = make_net(engine)
    names = [name for name, _ in net.named_parameters(prefix="model")]
    assert names[:3] == ["model.gain", "model.conv.weight", "model.bn.weight"]
    assert [name for name, _ in net.named_parameters(recurse=False)] == ["gain"]
    assert [name for name, _ in net.named_buffers(recurse=False)] == ["scale", "cache"]
    assert "bn.num_batches_tracked" in dict(net.named_buffers())
    assert [name for name, _ in net.pool.named_modules(prefix="pool")] == [
        "pool",
        "pool.0",
        "pool.1",
    ]


def test_get_submodule_follows_dotted_paths():
    net = make_net(engine)
    assert net.get_submodule("heads.cls") is net.heads["cls"]
    assert net.get_submodule("") is net
    with pytest.raises(AttributeError, match="ModuleDict has no attribute `nope`"):
        net.get_submodule("heads.nope")


def test_shared_members_are_listed_once_unless_asked():
    shared = nn.Linear(2, 2)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert len(list(model.parameters())) == 2
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert len(list(model.modules())) == 3
    assert len(list(model.children())) == 2
    assert list(model.state_dict()) == names


@pytest.mark.torch
def test_traversal_names_match_torch(torch):
    ours, theirs = make_net(engine), make_net(torch)
    for method in ("named_parameters", "named_buffers", "named_modules", "named_children"):
        got = [name for name, _ in getattr(ours, method)()]
        assert got == [name for name, _ in getattr(theirs, method)()], method
    got = [(n, tuple(p.shape)) for n, p in ours.named_parameters()]
    assert got == [(n, tuple(p.shape)) for n, p in theirs.named_parameters()]


# ------------------------------------------------------------------ state dict
@pytest.mark.torch
def test_state_dict_keys_order_and_shapes_match_torch(torch):
    ours, theirs = make_net(engine), make_net(torch)
    assert shapes(ours.state_dict()) == shapes(theirs.state_dict())
    assert "cache" not in ours.state_dict()


def test_state_dict_values_are_detached_views():
    net = make_net(engine)
    state = net.state_dict()
    weight = state["fc.weight"]
    assert not weight.requires_grad and type(weight) is engine.Tensor
    with engine.no_grad():
        net.fc.weight.fill_(3.0)
    assert (weight.numpy() == 3.0).all()
    assert net.state_dict(keep_vars=True)["fc.weight"] is net.fc.weight
    assert list(net.state_dict(prefix="m."))[0] == "m.gain"


@pytest.mark.torch
def test_load_state_dict_from_torch_copies_in_place(torch):
    ours, theirs = make_net(engine), make_net(torch)
    weight = ours.fc.weight
    assert repr(ours.load_state_dict(torch_state_as_numpy(theirs))) == (
        "<All keys matched successfully>"
    )
    assert ours.fc.weight is weight
    for key, value in ours.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), theirs.state_dict()[key].numpy(), key)


def test_load_state_dict_casts_like_copy():
    model = nn.Linear(2, 3)
    state = {"weight": np.arange(6.0).reshape(3, 2), "bias": engine.tensor([1, 2, 3])}
    model.load_state_dict(state)
    assert model.weight.dtype is engine.float32 and model.bias.dtype is engine.float32
    np.testing.assert_array_equal(model.bias.detach().numpy(), [1, 2, 3])
    assert model.weight.requires_grad and model.weight.is_leaf


def corrupt(state: dict) -> dict:
    """Drop two keys, add two unknown ones and give two entries the wrong shape."""
    state = dict(state)
    del state["fc.weight"], state["bn.running_var"]
    state["extra.weight"] = state["gain"]
    state["blocks.0.other"] = state["gain"]
    state["fc.bias"] = np.zeros(5, np.float32)
    state["conv.weight"] = np.zeros((4, 3, 1, 1), np.float32)
    return state


@pytest.mark.torch
def test_load_state_dict_errors_match_torch(torch):
    ours, theirs = make_net(engine), make_net(torch)
    state = corrupt(torch_state_as_numpy(theirs))
    with pytest.raises(RuntimeError) as expected:
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    with pytest.raises(RuntimeError) as got:
        ours.load_state_dict(state)
    assert str(got.value) == str(expected.value)
    assert str(got.value).startswith("Error(s) in loading state_dict for Net:\n\tMissing key(s)")


@pytest.mark.torch
def test_non_strict_load_returns_the_same_keys_as_torch(torch):
    ours, theirs = make_net(engine), make_net(torch)
    state = torch_state_as_numpy(theirs)
    del state["fc.weight"]
    state["extra.weight"] = state["gain"]
    expected = theirs.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, False)
    got = ours.load_state_dict(state, strict=False)
    assert isinstance(got, _IncompatibleKeys)
    assert got.missing_keys == expected.missing_keys == ["fc.weight"]
    assert got.unexpected_keys == expected.unexpected_keys
    assert repr(got) == repr(expected)
    np.testing.assert_array_equal(ours.fc.bias.detach().numpy(), state["fc.bias"])


def test_size_mismatch_raises_even_when_not_strict():
    model = nn.Linear(512, 1000)
    state = {"weight": np.zeros((10, 512), np.float32), "bias": np.zeros(10, np.float32)}
    with pytest.raises(RuntimeError) as error:
        model.load_state_dict(state, strict=False)
    assert str(error.value) == (
        "Error(s) in loading state_dict for Linear:\n"
        "\tsize mismatch for weight: copying a param with shape torch.Size([10, 512]) from "
        "checkpoint, the shape in current model is torch.Size([1000, 512]).\n"
        "\tsize mismatch for bias: copying a param with shape torch.Size([10]) from "
        "checkpoint, the shape in current model is torch.Size([1000])."
    )


def test_load_state_dict_rejects_non_tensors():
    with pytest.raises(RuntimeError, match='parameter named "bias", expected torch.Tensor'):
        nn.Linear(1, 1).load_state_dict({"weight": np.zeros((1, 1)), "bias": [0.0]})
    with pytest.raises(TypeError, match="Expected state_dict to be dict-like"):
        nn.Linear(1, 1).load_state_dict([("weight", np.zeros((1, 1)))])


# ------------------------------------------------------------------ modes and grads
def test_train_and_eval_reach_every_module():
    net = make_net(engine)
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.heads.train(False)
    assert not net.heads["cls"].training and net.fc.training
    with pytest.raises(ValueError, match="training mode is expected to be boolean"):
        net.train("yes")


def test_zero_grad_and_requires_grad():
    model = nn.Linear(3, 2)
    model(engine.ones(4, 3)).sum().backward()
    grad = model.weight.grad
    model.zero_grad(set_to_none=False)
    assert model.weight.grad is grad and not grad.numpy().any()
    model.zero_grad()
    assert model.weight.grad is None and model.bias.grad is None
    assert model.requires_grad_(False) is model
    assert not any(p.requires_grad for p in model.parameters())


def test_apply_visits_children_first():
    net = make_net(engine)
    seen = []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    assert seen[-1] == "Net" and seen[0] == "Conv2d"
    assert seen.index("AdaptiveAvgPool2d") < seen.index("Sequential")


@pytest.mark.torch
def test_apply_order_matches_torch(torch):
    ours, theirs = [], []
    make_net(engine).apply(lambda m: ours.append(type(m).__name__))
    make_net(torch).apply(lambda m: theirs.append(type(m).__name__))
    assert ours == theirs


def test_to_double_casts_in_place():
    net = make_net(engine)
    weight = net.fc.weight
    assert net.double() is net
    assert net.fc.weight is weight and weight.dtype is engine.float64
    assert net.bn.running_mean.dtype is engine.float64
    assert net.bn.num_batches_tracked.dtype is engine.int64
    net.to(engine.float32)
    assert weight.dtype is engine.float32 and net.scale.dtype is engine.float32
    assert net.to("cpu") is net
    with pytest.raises(TypeError, match="only accepts floating point"):
        net.to(engine.int64)


def test_deepcopy_gives_an_independent_model():
    net = make_net(engine)
    twin = copy.deepcopy(net)
    assert isinstance(twin.fc.weight, nn.Parameter) and twin.fc.weight.requires_grad
    with engine.no_grad():
        twin.fc.weight.fill_(7.0)
    assert not (net.fc.weight.detach().numpy() == 7.0).any()
    assert list(twin.state_dict()) == list(net.state_dict())


# ------------------------------------------------------------------ hooks
def test_forward_hooks_can_replace_inputs_and_outputs_and_be_removed():
    model = nn.Identity()
    calls = []
    pre = model.register_forward_pre_hook(lambda m, args: args[0] * 2)
    post = model.register_forward_hook(lambda m, args, out: calls.append((args, out)))
    out = model(engine.ones(1))
    assert out.item() == 2.0 and calls[0][0][0].item() == 2.0
    replace = model.register_forward_hook(lambda m, args, out: out + 1)
    assert model(engine.ones(1)).item() == 3.0
    pre.remove()
    post.remove()
    replace.remove()
    assert model(engine.ones(1)).item() == 1.0 and len(calls) == 2


# ------------------------------------------------------------------ containers
def test_sequential_indexing():
    layers = [nn.Linear(1, 1), nn.ReLU(), nn.Identity()]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3 and list(seq) == layers
    assert seq[-1] is layers[2] and seq[0] is layers[0]
    tail = seq[1:]
    assert isinstance(tail, nn.Sequential) and list(tail._modules) == ["1", "2"]
    with pytest.raises(IndexError, match="index 3 is out of range"):
        seq[3]
    seq[-2] = nn.Dropout()
    assert isinstance(seq[1], nn.Dropout)
    assert seq.append(nn.Flatten()) is seq and list(seq._modules)[-1] == "3"
    named = nn.Sequential({"a": nn.ReLU(), "b": nn.Identity()})
    assert list(named._modules) == ["a", "b"]


def test_module_list_and_dict():
    blocks = nn.ModuleList([nn.ReLU()]).extend([nn.Identity(), nn.Flatten()])
    assert len(blocks) == 3 and isinstance(blocks[-1], nn.Flatten)
    assert list(blocks[1:]._modules) == ["0", "1"]
    blocks[0] = nn.Dropout()
    assert isinstance(blocks[0], nn.Dropout)
    heads = nn.ModuleDict([("a", nn.ReLU())])
    heads["b"] = nn.Linear(1, 1)
    assert list(heads) == ["a", "b"] and "b" in heads and len(heads) == 2
    assert [name for name, _ in heads.named_parameters()] == ["b.weight", "b.bias"]
    del heads["a"]
    assert list(heads.keys()) == ["b"]


# ------------------------------------------------------------------ printing
def test_parameter_repr():
    assert repr(nn.Parameter(engine.tensor([1.0, 2.0]))) == (
        "Parameter containing:\ntensor([1., 2.], requires_grad=True)"
    )


@pytest.mark.torch
def test_repr_matches_torch(torch):
    expected = repr(make_net(torch)).replace(", bias=True, track", ", track")
    assert repr(make_net(engine)) == expected


@pytest.mark.torch
def test_repr_of_empty_and_none_children_matches_torch(torch):
    def build(lib):  # noqa: ANN001, ANN202
        outer = lib.nn.Sequential(lib.nn.Sequential(), lib.nn.ModuleList())
        outer.add_module("gone", None)
        return outer

    assert repr(build(engine)) == repr(build(torch))


@pytest.mark.torch
def test_batchnorm_loads_a_state_dict_without_num_batches_tracked_like_torch():
    torch = pytest.importorskip("torch")
    ours, theirs = nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)
    ours.num_batches_tracked.fill_(7)
    state = {k: v for k, v in ours.state_dict().items() if k != "num_batches_tracked"}
    result = ours.load_state_dict(state)
    expected = theirs.load_state_dict({k: torch.from_numpy(v.numpy()) for k, v in state.items()})
    assert (result.missing_keys, result.unexpected_keys) == (
        expected.missing_keys,
        expected.unexpected_keys,
    )
    assert ours.num_batches_tracked.item() == 7


def _load_with_assign(lib):  # noqa: ANN001, ANN202
    """Load a Linear (frozen weight) and a BatchNorm with assign=True; report what it took."""
    linear, bn = lib.nn.Linear(2, 2), lib.nn.BatchNorm2d(2)
    linear.weight.requires_grad_(False)
    weight = lib.ones(2, 2, dtype=lib.float64)
    bias = lib.nn.Parameter(lib.zeros(2))
    running_mean = lib.arange(2.0)
    keys = linear.load_state_dict({"weight": weight, "bias": bias}, assign=True)
    bn.load_state_dict({**bn.state_dict(), "running_mean": running_mean}, assign=True)
    weight[0, 0] = 5.0  # the module holds this very storage
    return (
        repr(keys),
        type(linear.weight).__name__,
        str(linear.weight.dtype).split(".")[-1],
        linear.weight.requires_grad,
        float(linear.weight[0, 0]),
        linear.bias is bias and linear.bias.requires_grad,
        bn.running_mean is running_mean,
    )


def test_load_state_dict_assign_takes_the_tensors_themselves():
    assert _load_with_assign(engine) == (
        "<All keys matched successfully>",
        "Parameter",
        "float64",
        False,
        5.0,
        True,
        True,
    )


@pytest.mark.torch
def test_load_state_dict_assign_parity(torch):
    assert _load_with_assign(engine) == _load_with_assign(torch)


def test_load_state_dict_without_assign_copies_into_the_existing_parameters():
    linear = nn.Linear(2, 2)
    weight = linear.weight
    source = engine.ones(2, 2, dtype=engine.float64)
    linear.load_state_dict({"weight": source, "bias": engine.zeros(2)})
    source[0, 0] = 5.0
    assert linear.weight is weight and linear.weight.dtype is engine.float32
    assert linear.weight.tolist() == [[1.0, 1.0], [1.0, 1.0]]
