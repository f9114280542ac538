"""engine.optim's SGD, Adam and AdamW: trajectories against torch's, param groups, skipped
parameters, state dicts, errors, and the chunked update path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import engine
import engine.optim
import engine.optim.optimizer

SHAPES = [(3, 4), (5,), (2, 3, 2)]
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
TORCH_ONLY_KEYS = {"foreach", "fused", "differentiable", "capturable"}
"""Param-group keys of torch's that select its kernels (and have no meaning here)."""


def _initial(dtype: type = np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]


def _params(lib: Any, arrays: list[np.ndarray]) -> list[Any]:
    return [lib.tensor(a, requires_grad=True) for a in arrays]


def _set_grads(lib: Any, params: list[Any], step: int, skip: frozenset[int] = frozenset()) -> None:
    """The gradient of a weighted quadratic plus a per-step drift (same numbers for any lib);
    parameters in ``skip`` get no gradient."""
    rng = np.random.default_rng(100 + step)
    for i, p in enumerate(params):
        value = p.detach().numpy()
        drift = rng.standard_normal(value.shape).astype(value.dtype)
        p.grad = None if i in skip else lib.tensor((value - 0.5) * (i + 1) + drift)


def _run(
    lib: Any,
    make: Callable[[Any, list[Any]], Any],
    steps: int,
    arrays: list[np.ndarray] | None = None,
) -> tuple[list[Any], Any]:
    params = _params(lib, _initial() if arrays is None else arrays)
    opt = make(lib, params)
    for step in range(steps):
        _set_grads(lib, params, step)
        opt.step()
    return params, opt


def _arrays(tensors: list[Any]) -> list[np.ndarray]:
    return [t.detach().numpy() for t in tensors]


def _assert_close(ours: list[Any], theirs: list[Any], exact: bool = False) -> None:
    for i, (a, b) in enumerate(zip(_arrays(ours), _arrays(theirs), strict=True)):
        assert a.dtype == b.dtype, f"param {i}"
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=f"param {i}")
        else:
            np.testing.assert_allclose(a, b, **TOLERANCE, err_msg=f"param {i}")


def _assert_state_close(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        assert theirs[key].shape == tuple(value.shape), key
        np.testing.assert_allclose(value.numpy(), theirs[key].numpy(), **TOLERANCE, err_msg=key)


SGD_VARIANTS = {
    "plain": {"lr": 0.1},
    "momentum+wd": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    "nesterov": {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2, "nesterov": True},
    "dampening": {"lr": 0.1, "momentum": 0.8, "dampening": 0.3},
    "maximize": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1, "maximize": True},
    "maximize-no-momentum": {"lr": 0.1, "maximize": True},
}

ADAM_VARIANTS = {
    "adam": ("Adam", {"lr": 0.05}),
    "adam-amsgrad-l2": ("Adam", {"lr": 0.05, "weight_decay": 0.1, "amsgrad": True}),
    "adam-maximize": ("Adam", {"lr": 0.05, "maximize": True, "betas": (0.8, 0.99)}),
    "adam-small-beta1": ("Adam", {"lr": 0.05, "betas": (0.3, 0.9), "eps": 1e-3}),
    "adamw": ("AdamW", {"lr": 0.05}),
    "adamw-amsgrad": ("AdamW", {"lr": 0.05, "weight_decay": 0.3, "amsgrad": True}),
}


def _sgd(**kwargs: Any) -> Callable[[Any, list[Any]], Any]:
    return lambda lib, params: lib.optim.SGD(params, **kwargs)


def _adam(name: str, **kwargs: Any) -> Callable[[Any, list[Any]], Any]:
    return lambda lib, params: getattr(lib.optim, name)(params, **kwargs)


# ------------------------------------------------------------------------------ torch parity
@pytest.mark.torch
@pytest.mark.parametrize("kwargs", SGD_VARIANTS.values(), ids=SGD_VARIANTS.keys())
def test_sgd_trajectory_matches_torch(torch: Any, kwargs: dict[str, Any]) -> None:
    ours, opt = _run(engine, _sgd(**kwargs), steps=3)
    theirs, torch_opt = _run(torch, _sgd(**kwargs), steps=3)
    _assert_close(ours, theirs)
    for p, t in zip(ours, theirs, strict=True):
        _assert_state_close(opt.state[p], torch_opt.state[t])


@pytest.mark.torch
@pytest.mark.parametrize("name, kwargs", ADAM_VARIANTS.values(), ids=ADAM_VARIANTS.keys())
def test_adam_trajectory_matches_torch(torch: Any, name: str, kwargs: dict[str, Any]) -> None:
    ours, opt = _run(engine, _adam(name, **kwargs), steps=20)
    theirs, torch_opt = _run(torch, _adam(name, **kwargs), steps=20)
    _assert_close(ours, theirs)
    for p, t in zip(ours, theirs, strict=True):
        _assert_state_close(opt.state[p], torch_opt.state[t])
        assert opt.state[p]["step"].dtype is engine.float32


@pytest.mark.torch
@pytest.mark.parametrize("make", [_sgd(lr=0.1, momentum=0.9), _adam("Adam", lr=0.1)])
def test_float64_parameters_stay_float64(torch: Any, make: Callable) -> None:
    arrays = _initial(dtype=np.float64)
    ours, _ = _run(engine, make, steps=5, arrays=arrays)
    theirs, _ = _run(torch, make, steps=5, arrays=arrays)
    _assert_close(ours, theirs)


@pytest.mark.torch
@pytest.mark.parametrize(
    "make", [_sgd(lr=0.1, momentum=0.9, weight_decay=1e-4), _adam("AdamW", amsgrad=True)]
)
def test_parameters_without_grad_are_skipped(torch: Any, make: Callable) -> None:
    """A parameter with ``grad`` None keeps its value and its state (none, or the old one)."""

    def run(lib: Any) -> tuple[list[Any], Any]:
        params = _params(lib, _initial())
        opt = make(lib, params)
        for step, skip in enumerate([{0}, set(), {1}, {1, 2}]):
            _set_grads(lib, params, step, frozenset(skip))
            opt.step()
            if step == 0:
                assert params[0] not in opt.state
        return params, opt

    before = _initial()[0]
    ours, opt = run(engine)
    theirs, torch_opt = run(torch)
    _assert_close(ours, theirs)
    for p, t in zip(ours, theirs, strict=True):
        _assert_state_close(opt.state[p], torch_opt.state[t])
    assert not np.array_equal(ours[0].detach().numpy(), before)  # stepped once it had a grad


def test_skipped_parameter_is_untouched() -> None:
    p, q = _params(engine, _initial()[:2])
    opt = engine.optim.SGD([p, q], lr=0.1, momentum=0.9)
    p.grad = engine.ones_like(p)
    opt.step()
    buf = opt.state[p]["momentum_buffer"].numpy().copy()
    value, version = p.detach().numpy().copy(), p._version
    p.grad = None
    q.grad = engine.ones_like(q)
    opt.step()
    np.testing.assert_array_equal(p.detach().numpy(), value)
    np.testing.assert_array_equal(opt.state[p]["momentum_buffer"].numpy(), buf)
    assert p._version == version
    assert "momentum_buffer" in opt.state[q]


@pytest.mark.torch
def test_param_groups_with_own_hyper_parameters_match_torch(torch: Any) -> None:
    def make(lib: Any, params: list[Any]) -> Any:
        groups = [
            {"params": params[:1]},
            {"params": params[1:], "lr": 0.01, "nesterov": True},
        ]
        return lib.optim.SGD(groups, lr=0.1, momentum=0.9, weight_decay=1e-3)

    ours, opt = _run(engine, make, steps=4)
    theirs, _ = _run(torch, make, steps=4)
    _assert_close(ours, theirs)
    second = opt.param_groups[1]
    assert (second["lr"], second["momentum"], second["nesterov"]) == (0.01, 0.9, True)
    assert opt.param_groups[0]["nesterov"] is False


@pytest.mark.torch
def test_repr_matches_torch(torch: Any) -> None:
    def make(lib: Any) -> Any:
        params = _params(lib, _initial())
        opt = lib.optim.AdamW(params[:2], lr=0.01, amsgrad=True)
        opt.add_param_group({"params": params[2:], "lr": 0.1})
        return opt

    theirs = "\n".join(
        line
        for line in repr(make(torch)).splitlines()
        if line.split(":")[0].strip() not in TORCH_ONLY_KEYS
    )
    assert repr(make(engine)) == theirs


# ------------------------------------------------------------------------------ state dicts
@pytest.mark.parametrize(
    "make",
    [
        _sgd(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True),
        _adam("Adam", lr=0.05, amsgrad=True, weight_decay=0.1),
        _adam("AdamW", lr=0.05),
    ],
    ids=["sgd", "adam", "adamw"],
)
def test_state_dict_round_trip_continues_bit_for_bit(make: Callable) -> None:
    params, opt = _run(engine, make, steps=3)
    saved = copy.deepcopy(opt.state_dict())

    clones = _params(engine, _arrays(params))
    resumed = make(engine, clones)
    resumed.param_groups[0]["lr"] = 123.0  # to be overwritten by the load
    resumed.load_state_dict(saved)
    for step in range(3, 6):
        for group in (params, clones):
            _set_grads(engine, group, step)
        opt.step()
        resumed.step()
    _assert_close(params, clones, exact=True)
    assert resumed.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_load_state_dict_copies_the_saved_tensors() -> None:
    params, opt = _run(engine, _sgd(lr=0.1, momentum=0.9), steps=2)
    saved = opt.state_dict()
    kept = saved["state"][0]["momentum_buffer"].numpy().copy()
    resumed = engine.optim.SGD(_params(engine, _arrays(params)), lr=0.1, momentum=0.9)
    resumed.load_state_dict(saved)
    _set_grads(engine, resumed.param_groups[0]["params"], 2)
    resumed.step()
    np.testing.assert_array_equal(saved["state"][0]["momentum_buffer"].numpy(), kept)


@pytest.mark.torch
@pytest.mark.parametrize(
    "make",
    [
        lambda lib, ps: lib.optim.SGD(
            [{"params": ps[:1]}, {"params": ps[1:], "lr": 0.5}], lr=0.1, momentum=0.9
        ),
        _adam("Adam", amsgrad=True),
        _adam("AdamW", weight_decay=0.2),
    ],
    ids=["sgd-groups", "adam", "adamw"],
)
def test_state_dict_structure_matches_torch(torch: Any, make: Callable) -> None:
    def run(lib: Any) -> dict[str, Any]:
        params = _params(lib, _initial())
        opt = make(lib, params)
        for step, skip in enumerate([{1}, set()]):
            _set_grads(lib, params, step, frozenset(skip))
            opt.step()
        return opt.state_dict()

    ours, theirs = run(engine), run(torch)
    assert list(ours["state"]) == list(theirs["state"])
    for index, state in ours["state"].items():
        assert list(state) == list(theirs["state"][index])
        for key, value in state.items():
            assert isinstance(value, engine.Tensor)
            assert str(value.dtype).split(".")[1] == str(theirs["state"][index][key].dtype)[6:]
        _assert_state_close(state, theirs["state"][index])
    torch_groups = [
        {k: v for k, v in g.items() if k not in TORCH_ONLY_KEYS} for g in theirs["param_groups"]
    ]
    assert ours["param_groups"] == torch_groups


def test_state_dict_numbers_parameters_across_groups() -> None:
    p, q, r = _params(engine, _initial())
    opt = engine.optim.SGD([{"params": [p, q]}, {"params": [r], "lr": 1.0}], lr=0.1, momentum=0.5)
    for t in (p, r):
        t.grad = engine.ones_like(t)
    opt.step()
    saved = opt.state_dict()
    assert [g["params"] for g in saved["param_groups"]] == [[0, 1], [2]]
    assert sorted(saved["state"]) == [0, 2]


def test_load_state_dict_rejects_mismatched_groups() -> None:
    p, q, r = _params(engine, _initial())
    saved = engine.optim.SGD([p, q], lr=0.1).state_dict()
    with pytest.raises(ValueError, match="different number of parameter groups"):
        engine.optim.SGD([{"params": [p]}, {"params": [q]}], lr=0.1).load_state_dict(saved)
    with pytest.raises(ValueError, match="doesn't match the size of optimizer's group"):
        engine.optim.SGD([p, q, r], lr=0.1).load_state_dict(saved)


# ------------------------------------------------------------------------------ behaviour
def test_zero_grad() -> None:
    p, q = _params(engine, _initial()[:2])
    opt = engine.optim.SGD([p, q])
    p.grad = engine.ones_like(p)
    grad = p.grad
    opt.zero_grad(set_to_none=False)
    assert p.grad is grad and not grad.numpy().any() and q.grad is None
    opt.zero_grad()
    assert p.grad is None


def test_step_evaluates_closure_with_grad_enabled() -> None:
    (p,) = _params(engine, _initial()[:1])
    opt = engine.optim.SGD([p], lr=0.1)

    def closure() -> engine.Tensor:
        opt.zero_grad()
        assert engine.is_grad_enabled()
        loss = (p * p).sum()
        loss.backward()
        return loss

    with engine.no_grad():
        loss = opt.step(closure)
    assert loss.item() == pytest.approx(float((_initial()[0] ** 2).sum()), rel=1e-6)
    np.testing.assert_allclose(p.detach().numpy(), _initial()[0] * 0.8, rtol=1e-6)


def test_step_bumps_the_parameter_version() -> None:
    (p,) = _params(engine, _initial()[:1])
    opt = engine.optim.Adam([p])
    p.grad = engine.ones_like(p)
    version = p._version
    opt.step()
    assert p._version == version + 1


def _fortran_params(arrays: list[np.ndarray]) -> list[engine.Tensor]:
    return [engine.from_numpy(np.asfortranarray(a)).requires_grad_() for a in arrays]


@pytest.mark.torch
@pytest.mark.parametrize("make", [_sgd(lr=0.1, momentum=0.9, nesterov=True), _adam("Adam")])
def test_chunked_and_mixed_layout_updates_match_torch(
    torch: Any, make: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parameters cut into many chunks, and column-major parameters with row-major gradients
    (updated whole), follow torch's trajectory."""
    monkeypatch.setattr(engine.optim.optimizer, "CHUNK_BYTES", 20)
    ours = _fortran_params(_initial()[:1]) + _params(engine, _initial()[1:])
    opt = make(engine, ours)
    for step in range(4):
        _set_grads(engine, ours, step)
        opt.step()
    assert ours[0].detach().numpy().flags.f_contiguous
    theirs, _ = _run(torch, make, steps=4)
    _assert_close(ours, theirs)


@pytest.mark.parametrize(
    "make", [_sgd(lr=0.1, momentum=0.9, dampening=0.2), _adam("Adam", amsgrad=True)]
)
def test_chunking_and_layout_do_not_change_the_arithmetic(
    make: Callable, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Column-major parameters and gradients, in chunks of 3 elements, update exactly as
    row-major ones in one piece."""
    whole, _ = _run(engine, make, steps=3)
    monkeypatch.setattr(engine.optim.optimizer, "CHUNK_BYTES", 12)
    chunked = _fortran_params(_initial())
    opt = make(engine, chunked)
    for step in range(3):
        _set_grads(engine, chunked, step)
        for p in chunked:
            p.grad = engine.from_numpy(np.asfortranarray(p.grad.numpy()))
        opt.step()
    _assert_close(chunked, whole, exact=True)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -1}, "Invalid learning rate: -1"),
        ({"momentum": -0.5}, "Invalid momentum value: -0.5"),
        ({"weight_decay": -1e-4}, "Invalid weight_decay value: -0.0001"),
        ({"nesterov": True}, "Nesterov momentum requires a momentum and zero dampening"),
        (
            {"nesterov": True, "momentum": 0.9, "dampening": 0.1},
            "Nesterov momentum requires a momentum and zero dampening",
        ),
    ],
)
def test_sgd_rejects_invalid_hyper_parameters(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as error:
        engine.optim.SGD(_params(engine, _initial()), **kwargs)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": -0.1}, "Invalid learning rate: -0.1"),
        ({"eps": -1.0}, "Invalid epsilon value: -1.0"),
        ({"betas": (1.0, 0.9)}, "Invalid beta parameter at index 0: 1.0"),
        ({"betas": (0.9, -0.1)}, "Invalid beta parameter at index 1: -0.1"),
        ({"weight_decay": -1}, "Invalid weight_decay value: -1"),
    ],
)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_rejects_invalid_hyper_parameters(
    name: str, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as error:
        getattr(engine.optim, name)(_params(engine, _initial()), **kwargs)
    assert str(error.value) == message


def test_param_group_errors() -> None:
    p, q = _params(engine, _initial()[:2])
    with pytest.raises(ValueError, match="^optimizer got an empty parameter list$"):
        engine.optim.SGD([])
    with pytest.raises(TypeError, match="should be an iterable of Tensors or dicts"):
        engine.optim.SGD(p)
    with pytest.raises(TypeError, match="ordered collections"):
        engine.optim.SGD([{"params": {p, q}}])
    with pytest.raises(ValueError, match="^can't optimize a non-leaf Tensor$"):
        engine.optim.SGD([p * 2])
    opt = engine.optim.SGD([p])
    with pytest.raises(
        ValueError, match="^some parameters appear in more than one parameter group$"
    ):
        opt.add_param_group({"params": [q, p]})
    assert len(opt.param_groups) == 1
    with pytest.raises(TypeError, match="optimizer can only optimize Tensors"):
        opt.add_param_group({"params": [1.0]})


def test_named_parameters_are_kept_as_param_names() -> None:
    p, q = _params(engine, _initial()[:2])
    opt = engine.optim.SGD([("w", p), ("b", q)], lr=0.1)
    assert opt.param_groups[0]["params"] == [p, q]
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["w", "b"]
    with pytest.raises(ValueError, match="cannot add param group without names"):
        opt.add_param_group({"params": [engine.zeros(1, requires_grad=True)]})
