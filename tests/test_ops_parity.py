"""Every case of the op catalogue that torch computes alike, against torch on the same float32
inputs: forward, every input's gradient, and the grad_fn's class and name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import engine
from engine.testing import CASES, TIES_THREE, OpCase

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _run(lib: Any, fn: Callable[..., Any], arrays: list[np.ndarray]) -> tuple[np.ndarray, list]:
    """Forward ``fn`` on fresh leaves holding ``arrays`` and backward a seeded random gradient
    (the same for both libraries); returns the output and the inputs' gradients."""
    inputs = [lib.tensor(a, requires_grad=True) for a in arrays]
    out = fn(lib, *inputs)
    upstream = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    out.backward(lib.tensor(upstream))
    return out.detach().numpy(), [x.grad for x in inputs]


def _assert_matches_torch(
    fn: Callable[..., Any], arrays: list[np.ndarray], tolerance: dict = TOLERANCE
) -> None:
    ours, our_grads = _run(engine, fn, arrays)
    theirs, their_grads = _run(torch, fn, arrays)
    assert ours.dtype == theirs.dtype
    np.testing.assert_allclose(ours, theirs, **tolerance)
    for i, (g, t) in enumerate(zip(our_grads, their_grads, strict=True)):
        assert g is not None and t is not None, f"input {i}"
        assert g.dtype is engine.float32 and g.shape == tuple(t.shape), f"input {i}"
        np.testing.assert_allclose(g.numpy(), t.numpy(), **tolerance, err_msg=f"input {i}")


COMPARABLE = [pytest.param(case, id=name) for name, case in CASES.items() if case.torch]


def test_only_random_and_engine_only_cases_are_not_compared() -> None:
    assert {name for name, case in CASES.items() if not case.torch} == {
        "dropout",
        "BasicBlock",
        "Bottleneck",
    }


@pytest.mark.parametrize("case", COMPARABLE)
def test_forward_and_gradients_match_torch(case: OpCase, rng: np.random.Generator) -> None:
    arrays = [a.astype(np.float32) for a in case.arrays(rng)]
    _assert_matches_torch(case.fn, arrays, {"atol": case.atol, "rtol": case.rtol})


@pytest.mark.parametrize("case", COMPARABLE)
def test_grad_fn_classes_are_named_as_torchs(case: OpCase, rng: np.random.Generator) -> None:
    arrays = [a.astype(np.float32) for a in case.arrays(rng)]
    nodes = [
        case.fn(lib, *(lib.tensor(a, requires_grad=True) for a in arrays)).grad_fn
        for lib in (engine, torch)
    ]
    assert [type(node).__name__ for node in nodes] == [type(nodes[1]).__name__] * 2
    assert nodes[0].name() == nodes[1].name()


@pytest.mark.parametrize(
    "fn",
    [
        pytest.param(lambda L, a: a.amax(1), id="amax"),
        pytest.param(lambda L, a: a.max(), id="max-all"),
        pytest.param(lambda L, a: (-a).amin(), id="amin-all"),
    ],
)
def test_three_way_ties_share_the_gradient_like_torch(fn: Callable[..., Any]) -> None:
    _assert_matches_torch(fn, [TIES_THREE.astype(np.float32)])


@pytest.mark.parametrize("p", [2, 1, 3, 0.5, float("inf")])
def test_norm_at_zero_has_torchs_zero_subgradient(p: float) -> None:
    rows = np.array([[1.0, -2.0, 0.0], [0.0, 0.0, 0.0], [3.0, -3.0, 1.0]], np.float32)
    _assert_matches_torch(lambda L, a: a.norm(p, dim=1), [rows])
    _assert_matches_torch(lambda L, a: a.norm(p), [np.zeros(3, np.float32)])


GRAD_FN_NAMES = [
    ("AddBackward0", lambda L, a: a + a),
    ("AddBackward0", lambda L, a: a + 1),
    ("SubBackward0", lambda L, a: a - a.detach()),
    ("RsubBackward1", lambda L, a: 1 - a),
    ("MulBackward0", lambda L, a: a * 2),
    ("DivBackward0", lambda L, a: a / a.detach()),
    ("NegBackward0", lambda L, a: -a),
    ("PowBackward0", lambda L, a: a**2),
    ("PowBackward1", lambda L, a: a**a),
    ("PowBackward2", lambda L, a: 2**a),
    ("ExpBackward0", lambda L, a: a.exp()),
    ("LogBackward0", lambda L, a: a.log()),
    ("SqrtBackward0", lambda L, a: a.sqrt()),
    ("AbsBackward0", lambda L, a: a.abs()),
    ("SignBackward0", lambda L, a: a.sign()),
    ("LinalgVectorNormBackward0", lambda L, a: a.norm()),
    ("ClampBackward1", lambda L, a: a.clamp(0.5, 1.5)),
    ("ReluBackward0", lambda L, a: a.relu()),
    ("SigmoidBackward0", lambda L, a: a.sigmoid()),
    ("TanhBackward0", lambda L, a: a.tanh()),
    ("SoftmaxBackward0", lambda L, a: a.softmax(1)),
    ("LogSoftmaxBackward0", lambda L, a: a.log_softmax(1)),
    ("SumBackward0", lambda L, a: a.sum()),
    ("SumBackward1", lambda L, a: a.sum(0)),
    ("MeanBackward0", lambda L, a: a.mean()),
    ("MeanBackward1", lambda L, a: a.mean((0, 1))),
    ("AmaxBackward0", lambda L, a: a.amax(1)),
    ("AminBackward0", lambda L, a: a.amin(1)),
    ("MaxBackward1", lambda L, a: a.max()),
    ("MaxBackward0", lambda L, a: a.max(1).values),
    ("MinBackward1", lambda L, a: a.min()),
    ("MinBackward0", lambda L, a: a.min(1).values),
    ("MaximumBackward0", lambda L, a: a.max(a.detach().t())),
    ("MinimumBackward0", lambda L, a: a.min(a.detach().t())),
    ("MmBackward0", lambda L, a: a @ a),
    ("MvBackward0", lambda L, a: a @ a[0]),
    ("DotBackward0", lambda L, a: a[0] @ a[1]),
    ("ViewBackward0", lambda L, a: a.view(9)),
    ("ViewBackward0", lambda L, a: a.reshape(9)),
    ("ViewBackward0", lambda L, a: a.flatten()),
    ("UnsafeViewBackward0", lambda L, a: a.t().reshape(9)),
    ("PermuteBackward0", lambda L, a: a.permute(1, 0)),
    ("TransposeBackward0", lambda L, a: a.transpose(0, 1)),
    ("TBackward0", lambda L, a: a.t()),
    ("SqueezeBackward0", lambda L, a: a[:1].squeeze()),
    ("SqueezeBackward1", lambda L, a: a[:1].squeeze(0)),
    ("UnsqueezeBackward0", lambda L, a: a.unsqueeze(0)),
    ("ExpandBackward0", lambda L, a: a.expand(2, 3, 3)),
    ("CatBackward0", lambda L, a: L.cat([a, a])),
    ("StackBackward0", lambda L, a: L.stack([a, a])),
    ("WhereBackward0", lambda L, a: L.where(a > 1, a, a.detach())),
    ("SliceBackward0", lambda L, a: a[1:]),
    ("SliceBackward0", lambda L, a: a[0, 1:]),
    ("SelectBackward0", lambda L, a: a[0]),
    ("SelectBackward0", lambda L, a: a[1:, 0]),
    ("UnsqueezeBackward0", lambda L, a: a[None]),
    ("IndexBackward0", lambda L, a: a[[0, 0]]),
    ("IndexBackward0", lambda L, a: a[a > 1]),
    ("CloneBackward0", lambda L, a: a.clone()),
    ("ToCopyBackward0", lambda L, a: a.double()),
    ("ZeroBackward0", lambda L, a: (a * 1).zero_()),
    ("VarBackward0", lambda L, a: a.var(1)),
    ("StdBackward0", lambda L, a: a.std()),
    ("RepeatBackward0", lambda L, a: a.repeat(2, 1)),
    ("ReciprocalBackward0", lambda L, a: a.reciprocal()),
    ("RsqrtBackward0", lambda L, a: a.rsqrt()),
    ("MulBackward0", lambda L, a: 2 / a),
    ("PowBackward0", lambda L, a: a.square()),
    ("ClampMinBackward0", lambda L, a: a.clamp_min(1)),
    ("SplitBackward0", lambda L, a: a.split(2)[1]),
    ("SplitBackward0", lambda L, a: a.chunk(2, 1)[0]),
    ("AddcmulBackward0", lambda L, a: (a * 1).addcmul_(a, a)),
    ("AddcdivBackward0", lambda L, a: (a * 1).addcdiv_(a, a + 1, value=2)),
    ("LerpBackward0", lambda L, a: (a * 1).lerp_(a * 2, 0.5)),
    ("UnsafeViewBackward0", lambda L, a: L.stack([a, a]) @ L.stack([a, a])),
    ("CloneBackward0", lambda L, a: a @ L.stack([a, a])),
    ("SqueezeBackward4", lambda L, a: a[0] @ a),
    ("AddmmBackward0", lambda L, a: L.nn.functional.linear(a, a, a[0])),
    ("MmBackward0", lambda L, a: L.nn.functional.linear(a, a)),
    ("CopySlices", lambda L, a: _setitem(a * 1, 0)),
    ("CopySlices", lambda L, a: _setitem(a * 1, (slice(1, None), 1))),
    ("IndexPutBackward0", lambda L, a: _setitem(a * 1, L.tensor([0, 2]))),
    ("IndexPutBackward0", lambda L, a: _setitem(a * 1, a > 1)),
    ("CopySlices", lambda L, a: _mul_row(a * 1)),
    ("CopySlices", lambda L, a: _setitem(L.zeros(3, 3), 1, a[0])),
    ("CopyBackwards", lambda L, a: (a * 1).copy_(a.t())),
]


def _setitem(x: Any, key: Any, value: Any = 2.0) -> Any:
    x[key] = value
    return x


def _mul_row(x: Any) -> Any:
    x[1].mul_(2)
    return x


@pytest.mark.parametrize(
    ("name", "fn"), [pytest.param(n, f, id=f"{n}-{i}") for i, (n, f) in enumerate(GRAD_FN_NAMES)]
)
def test_grad_fn_names_follow_torch(name: str, fn: Callable[..., Any]) -> None:
    values = np.arange(1.0, 10.0, dtype=np.float32).reshape(3, 3) / 4
    nodes = [fn(lib, lib.tensor(values, requires_grad=True)).grad_fn for lib in (engine, torch)]
    assert [type(node).__name__ for node in nodes] == [name, name]
    assert nodes[0].name() == nodes[1].name()
