"""Every differentiable tensor op against central differences in float64, to first and second
order."""

from __future__ import annotations

import numpy as np
import pytest
from _op_cases import CASES, OpCase

import engine
from engine.autograd import gradcheck, gradgradcheck


def _inputs(case: OpCase, rng: np.random.Generator) -> list[engine.Tensor]:
    return [engine.tensor(a, requires_grad=True) for a in case.arrays(rng)]


@pytest.mark.parametrize("case", CASES)
def test_gradcheck(case: OpCase, rng: np.random.Generator) -> None:
    inputs = _inputs(case, rng)
    assert all(x.dtype is engine.float64 for x in inputs)
    assert gradcheck(lambda *xs: case.fn(engine, *xs), inputs, eps=case.eps)


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0].gradgrad])
def test_gradgradcheck(case: OpCase, rng: np.random.Generator) -> None:
    engine.manual_seed(0)  # gradgradcheck draws the output gradients from engine's generator
    assert gradgradcheck(lambda *xs: case.fn(engine, *xs), _inputs(case, rng), eps=case.eps)
