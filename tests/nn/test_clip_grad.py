"""engine.nn.utils gradient clipping against torch: total norms, scaled gradients, errors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import engine
import engine.nn.utils

SHAPES = [(4, 3), (7,), (2, 2, 3)]
TOLERANCE = {"rtol": 1e-6, "atol": 1e-7}


def _params_with_grads(lib: Any, scale: float = 1.0, none_at: int | None = None) -> list[Any]:
    rng = np.random.default_rng(3)
    params = []
    for i, shape in enumerate(SHAPES):
        p = lib.zeros(*shape, requires_grad=True)
        grad = (rng.standard_normal(shape) * scale).astype(np.float32)
        p.grad = None if i == none_at else lib.tensor(grad)
        params.append(p)
    return params


def _grads(params: list[Any]) -> list[np.ndarray | None]:
    return [None if p.grad is None else p.grad.numpy() for p in params]


@pytest.mark.torch
@pytest.mark.parametrize("norm_type", [2.0, 1, math.inf, 3.0, 0.5])
@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clipped", "unclipped"])
def test_clip_grad_norm_matches_torch(torch: Any, norm_type: float, max_norm: float) -> None:
    ours = _params_with_grads(engine, none_at=1)
    theirs = _params_with_grads(torch, none_at=1)
    before = _grads(ours)
    total = engine.nn.utils.clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type)
    assert isinstance(total, engine.Tensor) and total.shape == ()
    assert total.dtype is engine.float32
    np.testing.assert_allclose(total.item(), expected.item(), **TOLERANCE)
    for i, (g, t) in enumerate(zip(_grads(ours), _grads(theirs), strict=True)):
        if t is None:
            assert g is None
            continue
        np.testing.assert_allclose(g, t, **TOLERANCE, err_msg=f"grad {i}")
    if max_norm > total.item():
        for g, b in zip(_grads(ours), before, strict=True):
            np.testing.assert_array_equal(g, b)


def test_clipped_gradients_have_the_max_norm() -> None:
    params = _params_with_grads(engine, scale=10.0)
    total = engine.nn.utils.clip_grad_norm_(iter(params), max_norm=2.0)
    after = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in _grads(params)))
    assert total.item() > 2.0
    assert after == pytest.approx(2.0, rel=1e-5)


def test_clip_grad_norm_accepts_a_single_tensor() -> None:
    p = engine.zeros(3, requires_grad=True)
    p.grad = engine.tensor([3.0, 4.0, 0.0])
    total = engine.nn.utils.clip_grad_norm_(p, max_norm=1.0)
    assert total.item() == pytest.approx(5.0)
    np.testing.assert_allclose(p.grad.numpy(), [0.6, 0.8, 0.0], rtol=1e-5)


def test_no_gradients_gives_a_zero_norm() -> None:
    p = engine.zeros(3, requires_grad=True)
    assert engine.nn.utils.clip_grad_norm_([p], max_norm=1.0).item() == 0.0
    with pytest.warns(UserWarning, match="empty generator"):
        engine.nn.utils.clip_grad_norm_((q for q in []), max_norm=1.0)


def test_non_finite_norm() -> None:
    params = _params_with_grads(engine)
    params[0].grad.numpy()[0, 0] = np.nan
    with pytest.raises(RuntimeError, match="The total norm of order 2.0 for gradients from"):
        engine.nn.utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
    total = engine.nn.utils.clip_grad_norm_(params, 1.0)
    assert math.isnan(total.item())
    assert np.isnan(params[1].grad.numpy()).all()


@pytest.mark.torch
def test_clip_grad_value_matches_torch(torch: Any) -> None:
    ours = _params_with_grads(engine, none_at=2)
    theirs = _params_with_grads(torch, none_at=2)
    engine.nn.utils.clip_grad_value_(ours, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7)
    for g, t in zip(_grads(ours), _grads(theirs), strict=True):
        if t is None:
            assert g is None
        else:
            np.testing.assert_array_equal(g, t)
    assert max(np.abs(g).max() for g in _grads(ours) if g is not None) == pytest.approx(0.7)


def test_in_place_changes_bump_the_gradient_version() -> None:
    params = _params_with_grads(engine, scale=10.0)
    versions = [p.grad._version for p in params]
    engine.nn.utils.clip_grad_norm_(params, 1.0)
    engine.nn.utils.clip_grad_value_(params, 0.1)
    assert [p.grad._version for p in params] == [v + 2 for v in versions]
