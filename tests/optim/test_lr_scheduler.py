"""engine.optim.lr_scheduler: the learning-rate sequences of torch's schedulers, number for
number, their state dicts, and their errors."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

import engine
import engine.optim

STEPS = 25
LRS = (0.1, 0.03)
TORCH_ONLY_KEYS = {"_get_lr_called_within_step"}
"""Scheduler attributes of torch's that only serve its warnings."""


def _optimizer(lib: Any) -> Any:
    params = [lib.zeros(2, requires_grad=True), lib.zeros(3, requires_grad=True)]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, LRS, strict=True)]
    return lib.optim.SGD(groups, momentum=0.9)


def _lr_sequence(lib: Any, make: Callable[[Any, Any], Any], steps: int = STEPS) -> list:
    """``get_last_lr()`` after construction and after each of ``steps`` epochs, with the
    param groups' own lrs checked against it."""
    opt = _optimizer(lib)
    scheduler = make(lib.optim.lr_scheduler, opt)
    sequence = [scheduler.get_last_lr()]
    for _ in range(steps):
        opt.step()
        scheduler.step()
        sequence.append(scheduler.get_last_lr())
        assert [g["lr"] for g in opt.param_groups] == sequence[-1]
    return sequence


def _warmup_then_cosine(sched: Any, opt: Any) -> Any:
    warmup = sched.LinearLR(opt, start_factor=0.1, total_iters=4)
    cosine = sched.CosineAnnealingLR(opt, T_max=12, eta_min=1e-3)
    return sched.SequentialLR(opt, [warmup, cosine], milestones=[4])


SCHEDULES: dict[str, Callable[[Any, Any], Any]] = {
    "step": lambda s, opt: s.StepLR(opt, step_size=4, gamma=0.5),
    "multistep": lambda s, opt: s.MultiStepLR(opt, milestones=[3, 7, 7, 15], gamma=0.3),
    "cosine": lambda s, opt: s.CosineAnnealingLR(opt, T_max=7),
    "cosine-eta-min": lambda s, opt: s.CosineAnnealingLR(opt, T_max=10, eta_min=0.005),
    "linear-warmup": lambda s, opt: s.LinearLR(opt, start_factor=0.25, total_iters=6),
    "linear-decay": lambda s, opt: s.LinearLR(opt, start_factor=1.0, end_factor=0.1),
    "lambda": lambda s, opt: s.LambdaLR(opt, lambda epoch: 0.95**epoch),
    "lambda-per-group": lambda s, opt: s.LambdaLR(
        opt, [lambda e: 1 / (e + 1), lambda e: 1.0 + e % 3]
    ),
    "warmup-then-cosine": _warmup_then_cosine,
    "three-phases": lambda s, opt: s.SequentialLR(
        opt,
        [s.LinearLR(opt, 0.5, total_iters=3), s.StepLR(opt, 2), s.MultiStepLR(opt, [2, 4])],
        milestones=[3, 10],
    ),
    "onecycle": lambda s, opt: s.OneCycleLR(opt, max_lr=[0.5, 0.2], total_steps=STEPS),
    "onecycle-linear-three-phase": lambda s, opt: s.OneCycleLR(
        opt,
        max_lr=0.4,
        epochs=5,
        steps_per_epoch=6,
        pct_start=0.25,
        anneal_strategy="linear",
        three_phase=True,
        div_factor=10.0,
    ),
}


@pytest.mark.torch
@pytest.mark.parametrize("make", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_lr_sequence_matches_torch(torch: Any, make: Callable) -> None:
    assert _lr_sequence(engine, make) == _lr_sequence(torch, make)


def test_warmup_then_cosine_shape() -> None:
    """Without torch: the warm-up climbs to the base lrs, the cosine comes down to eta_min."""
    lrs = [group[0] for group in _lr_sequence(engine, _warmup_then_cosine, steps=16)]
    assert lrs[0] == pytest.approx(0.01)
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5], strict=True))
    assert lrs[4] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs[4:16], lrs[5:17], strict=True))
    assert lrs[16] == pytest.approx(1e-3)


@pytest.mark.torch
@pytest.mark.parametrize(
    "make",
    [
        lambda s, opt: s.StepLR(opt, step_size=3),
        lambda s, opt: s.CosineAnnealingLR(opt, T_max=5),
        lambda s, opt: s.LinearLR(opt, total_iters=8),
        lambda s, opt: s.MultiStepLR(opt, milestones=[2, 5]),
    ],
    ids=["step", "cosine", "linear", "multistep"],
)
def test_step_with_epoch_uses_the_closed_form_as_torch(torch: Any, make: Callable) -> None:
    def run(lib: Any) -> list:
        opt = _optimizer(lib)
        scheduler = make(lib.optim.lr_scheduler, opt)
        lrs = []
        for epoch in (3, 7, 1, 12):
            opt.step()
            with pytest.warns(UserWarning, match="epoch parameter"):
                scheduler.step(epoch)
            lrs.append(scheduler.get_last_lr())
        return lrs

    assert run(engine) == run(torch)


@pytest.mark.torch
def test_cosine_resumed_from_last_epoch_matches_torch(torch: Any) -> None:
    def run(lib: Any) -> list:
        opt = _optimizer(lib)
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"] * 2
        scheduler = lib.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=9, last_epoch=4)
        lrs = [scheduler.get_last_lr()]
        for _ in range(8):
            opt.step()
            scheduler.step()
            lrs.append(scheduler.get_last_lr())
        return lrs

    assert run(engine) == run(torch)


def test_construction_sets_initial_lr_and_base_lrs() -> None:
    opt = _optimizer(engine)
    scheduler = engine.optim.lr_scheduler.StepLR(opt, step_size=2)
    assert [g["initial_lr"] for g in opt.param_groups] == list(LRS)
    assert scheduler.base_lrs == list(LRS)
    assert scheduler.last_epoch == 0
    assert scheduler.get_last_lr() == list(LRS)


@pytest.mark.parametrize("make", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_state_dict_round_trip_resumes_the_sequence(make: Callable) -> None:
    full = _lr_sequence(engine, make)

    opt = _optimizer(engine)
    scheduler = make(engine.optim.lr_scheduler, opt)
    for _ in range(9):
        scheduler.step()
    saved = copy.deepcopy(scheduler.state_dict())
    opt_saved = copy.deepcopy(opt.state_dict())

    resumed_opt = _optimizer(engine)
    resumed = make(engine.optim.lr_scheduler, resumed_opt)
    resumed.load_state_dict(saved)
    resumed_opt.load_state_dict(opt_saved)
    assert resumed.get_last_lr() == full[9]
    for epoch in range(10, STEPS + 1):
        resumed.step()
        assert resumed.get_last_lr() == full[epoch]


@pytest.mark.torch
@pytest.mark.parametrize(
    "make",
    [
        SCHEDULES["step"],
        SCHEDULES["cosine-eta-min"],
        SCHEDULES["warmup-then-cosine"],
        SCHEDULES["onecycle"],
    ],
    ids=["step", "cosine", "sequential", "onecycle"],
)
def test_state_dict_matches_torch(torch: Any, make: Callable) -> None:
    def state(lib: Any) -> dict[str, Any]:
        opt = _optimizer(lib)
        scheduler = make(lib.optim.lr_scheduler, opt)
        for _ in range(6):
            opt.step()
            scheduler.step()
        return _without_torch_keys(scheduler.state_dict())

    assert state(engine) == state(torch)


@pytest.mark.torch
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_onecycle_cycles_momentum_as_torch(torch: Any, optimizer: str) -> None:
    """Momentum (SGD) or beta1 (Adam) moves against the learning rate, as in torch."""

    def momenta(lib: Any) -> list:
        param = lib.zeros(2, requires_grad=True)
        opt = lib.optim.SGD([param], lr=0.1, momentum=0.9)
        if optimizer == "adam":
            opt = lib.optim.Adam([param], lr=0.1)
        scheduler = lib.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=12)
        key = "momentum" if optimizer == "sgd" else "betas"
        seen = [opt.param_groups[0][key]]
        for _ in range(12):
            opt.step()
            scheduler.step()
            seen.append(opt.param_groups[0][key])
        return seen

    assert momenta(engine) == momenta(torch)


METRICS = [1.0, 0.9, 0.95, 0.95, 0.97, 0.89, 0.9, 0.9, 0.9, 0.9, 0.8, 0.81, 0.82, 0.83, 0.84]
PLATEAUS: dict[str, dict[str, Any]] = {
    "min-rel": {"patience": 1},
    "max-abs-cooldown": {
        "mode": "max",
        "threshold_mode": "abs",
        "threshold": 0.01,
        "cooldown": 2,
        "patience": 0,
        "factor": 0.5,
    },
    "min-lr-per-group": {"patience": 0, "factor": 0.2, "min_lr": [0.01, 0.001]},
}


def _plateau_sequence(lib: Any, options: dict[str, Any]) -> tuple[list, dict[str, Any]]:
    opt = _optimizer(lib)
    scheduler = lib.optim.lr_scheduler.ReduceLROnPlateau(opt, **options)
    sequence = [scheduler.get_last_lr()]
    for metric in METRICS:
        opt.step()
        scheduler.step(metric)
        sequence.append(scheduler.get_last_lr())
        assert [g["lr"] for g in opt.param_groups] == sequence[-1]
    return sequence, scheduler.state_dict()


@pytest.mark.torch
@pytest.mark.parametrize("options", PLATEAUS.values(), ids=PLATEAUS.keys())
def test_plateau_matches_torch(torch: Any, options: dict[str, Any]) -> None:
    ours, our_state = _plateau_sequence(engine, options)
    theirs, their_state = _plateau_sequence(torch, options)
    assert ours == theirs
    assert our_state == _without_torch_keys(their_state)


def test_plateau_reduces_after_patience_and_resumes_from_its_state_dict() -> None:
    full, _ = _plateau_sequence(engine, {"patience": 1})
    assert full[2] == full[0] and full[4] == [lr * 0.1 for lr in full[0]]

    opt = _optimizer(engine)
    scheduler = engine.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=1)
    for metric in METRICS[:6]:
        scheduler.step(metric)
    saved, opt_saved = copy.deepcopy(scheduler.state_dict()), copy.deepcopy(opt.state_dict())
    resumed_opt = _optimizer(engine)
    resumed = engine.optim.lr_scheduler.ReduceLROnPlateau(resumed_opt, patience=1)
    resumed.load_state_dict(saved)
    resumed_opt.load_state_dict(opt_saved)
    for epoch, metric in enumerate(METRICS[6:], start=7):
        resumed.step(metric)
        assert resumed.get_last_lr() == full[epoch]


def _without_torch_keys(state: dict[str, Any]) -> dict[str, Any]:
    state = {k: v for k, v in state.items() if k not in TORCH_ONLY_KEYS}
    if "_schedulers" in state:
        state["_schedulers"] = [_without_torch_keys(s) for s in state["_schedulers"]]
    return state


def test_lambda_state_dict_keeps_callable_objects_only() -> None:
    class Decay:
        def __init__(self) -> None:
            self.rate = 0.5

        def __call__(self, epoch: int) -> float:
            return self.rate**epoch

    opt = _optimizer(engine)
    decay = Decay()
    scheduler = engine.optim.lr_scheduler.LambdaLR(opt, [decay, lambda e: 1.0])
    saved = scheduler.state_dict()
    assert saved["lr_lambdas"] == [{"rate": 0.5}, None]
    decay.rate = 0.9
    scheduler.load_state_dict(saved)
    assert decay.rate == 0.5
    assert "lr_lambdas" in saved


def test_errors() -> None:
    sched = engine.optim.lr_scheduler
    opt = _optimizer(engine)
    with pytest.raises(TypeError, match="^list is not an Optimizer$"):
        sched.StepLR([], step_size=1)
    with pytest.raises(KeyError, match="initial_lr"):
        sched.StepLR(opt, step_size=1, last_epoch=3)
    with pytest.raises(ValueError, match="^Starting multiplicative factor expected"):
        sched.LinearLR(opt, start_factor=0)
    with pytest.raises(ValueError, match="^Ending multiplicative factor expected"):
        sched.LinearLR(opt, end_factor=1.5)
    with pytest.raises(ValueError, match="^Expected 2 lr_lambdas, but got 1$"):
        sched.LambdaLR(opt, [lambda e: 1.0])
    step = sched.StepLR(opt, 2)
    with pytest.raises(ValueError, match="expects at least one scheduler"):
        sched.SequentialLR(opt, [], milestones=[])
    with pytest.raises(ValueError, match="number of schedulers 1 and the number of milestones"):
        sched.SequentialLR(opt, [step], milestones=[3])
    with pytest.raises(ValueError, match="to belong to the same optimizer"):
        sched.SequentialLR(opt, [sched.StepLR(_optimizer(engine), 2)], milestones=[])
    with pytest.raises(ValueError, match="either total_steps OR"):
        sched.OneCycleLR(opt, max_lr=1.0)
    with pytest.raises(ValueError, match="max_lr must have the same length"):
        sched.OneCycleLR(opt, max_lr=[1.0], total_steps=3)
    onecycle = sched.OneCycleLR(opt, max_lr=1.0, total_steps=2)
    onecycle.step()
    onecycle.step()
    with pytest.raises(ValueError, match="^Tried to step 3 times"):
        onecycle.step()
    with pytest.raises(ValueError, match="^Factor should be < 1.0.$"):
        sched.ReduceLROnPlateau(opt, factor=1.0)
    with pytest.raises(ValueError, match="^mode sideways is unknown!$"):
        sched.ReduceLROnPlateau(opt, mode="sideways")
