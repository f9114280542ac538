"""Every case of the op catalogue (ops, layers, ResNet blocks) against central differences in
float64, to first and, where marked, second order."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.autograd import gradcheck, gradgradcheck
from engine.testing import CASES, OpCase

ALL = [pytest.param(case, id=name) for name, case in CASES.items()]


@pytest.mark.parametrize("case", ALL)
def test_gradcheck(case: OpCase, rng: np.random.Generator) -> None:
    inputs = case.leaves(engine, rng)
    assert all(x.dtype is engine.float64 for x in inputs)
    assert gradcheck(lambda *xs: case.fn(engine, *xs), inputs, eps=case.eps)


@pytest.mark.parametrize("case", [p for p in ALL if p.values[0].gradgrad])
def test_gradgradcheck(case: OpCase, rng: np.random.Generator) -> None:
    engine.manual_seed(0)  # gradgradcheck draws the output gradients from engine's generator
    assert gradgradcheck(lambda *xs: case.fn(engine, *xs), case.leaves(engine, rng), eps=case.eps)
