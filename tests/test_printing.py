"""Tensor printing: literal expectations plus parity with ``repr`` of torch tensors."""

from __future__ import annotations

import numpy as np
import pytest

from engine._printing import format_tensor

nan, inf = np.nan, np.inf


def _fmt(array: np.ndarray, suffixes: tuple[str, ...] = (), default: str = "float32") -> str:
    """Format ``array`` the way the engine does, with ``default`` as the default float dtype."""
    name = str(array.dtype)
    return format_tensor(
        array, dtype_name=name, default_float=name == default, suffixes=list(suffixes)
    )


def _random_cases() -> dict[str, np.ndarray]:
    """Seeded random arrays over several shapes, scales and dtypes."""
    rng = np.random.default_rng(1234)
    cases = {}
    shapes = [(), (5,), (17,), (4, 6), (2, 3, 4), (2, 2, 2, 3), (40, 30), (3, 5, 70)]
    for scale in (1e-6, 1e-3, 1.0, 1e3, 1e5, 1e9):
        for shape in shapes:
            values = rng.standard_normal(shape) * scale
            cases[f"normal-{scale:g}-{shape}"] = values.astype(np.float32)
            cases[f"rounded-{scale:g}-{shape}"] = np.round(values).astype(np.float32)
    for shape in shapes:
        for dtype in (np.float16, np.float64):
            cases[f"{np.dtype(dtype)}-{shape}"] = (rng.standard_normal(shape) * 50).astype(dtype)
        for dtype in (np.int8, np.int32, np.int64, np.uint8):
            info = np.iinfo(dtype)
            cases[f"{np.dtype(dtype)}-{shape}"] = rng.integers(info.min, info.max, shape, dtype)
        cases[f"bool-{shape}"] = rng.random(shape) < 0.5
        mixed = rng.standard_normal(shape).astype(np.float32)
        cases[f"specials-{shape}"] = np.where(
            rng.random(shape) < 0.3, rng.choice([nan, inf, -inf, 0.0, -0.0], shape), mixed
        ).astype(np.float32)
    return {name: np.asarray(array) for name, array in cases.items()}


CASES: dict[str, np.ndarray] = {
    "scalar-int-valued": np.array(3.0, np.float32),
    "scalar-fraction": np.array(3.5, np.float32),
    "scalar-neg-zero": np.array(-0.0, np.float32),
    "scalar-nan": np.array(nan, np.float32),
    "scalar-bool": np.array(True),
    "scalar-int64": np.array(7),
    "scalar-int32": np.array(-7, np.int32),
    "scalar-float64": np.array(0.25),
    "scalar-sci": np.array(1e-7, np.float32),
    "int-valued": np.array([2.0, 3.0], np.float32),
    "int-valued-neg": np.array([-2.0, 0.0, -0.0, 100.0], np.float32),
    "fixed": np.array([0.5, -1.25, 3.0, 10.125], np.float32),
    "fixed-2d": np.array([[1.5, -200.25], [0.001, 3.0]], np.float32),
    "sci-ratio": np.array([1.0, 1001.0], np.float32),
    "sci-large": np.array([1e8, 2e8], np.float32),
    "sci-small": np.array([1e-5, 2e-5], np.float32),
    "sci-int-valued": np.array([1.0, 1e9], np.float32),
    "specials-int-valued": np.array([1.0, nan, 100.0, -inf], np.float32),
    "specials-fixed": np.array([0.5, nan, inf, -inf, 0.0], np.float32),
    "specials-sci": np.array([1e-6, nan, -inf, 0.0, 3e4], np.float32),
    "only-specials": np.array([0.0, nan, -0.0, inf], np.float32),
    "zeros": np.zeros((2, 3), np.float32),
    "wrap-1d": np.linspace(-3, 3, 45, dtype=np.float32),
    "wrap-int": np.arange(-40, 40),
    "wrap-2d": np.linspace(0, 1, 60, dtype=np.float32).reshape(2, 30),
    "wrap-bool": np.arange(30) % 3 == 0,
    "3d": np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7,
    "4d": np.arange(48).reshape(2, 2, 3, 4) - 20,
    "5d": np.ones((2, 1, 2, 1, 2), np.float32),
    "summary-1d": np.arange(1001, dtype=np.float32),
    "summary-1d-small": np.linspace(0, 1, 2000, dtype=np.float32),
    "summary-2d": np.arange(2000).reshape(40, 50),
    "summary-rows-only": np.arange(2002, dtype=np.float32).reshape(1001, 2) * 0.5,
    "summary-cols-only": np.arange(2000, dtype=np.float32).reshape(2, 1000) - 999,
    "summary-3d": np.arange(7 * 8 * 20, dtype=np.float32).reshape(7, 8, 20) * 1e-3,
    "summary-4d": np.arange(7**4).reshape(7, 7, 7, 7) % 13 == 0,
    "summary-hidden-nan": np.concatenate([np.ones(3), np.full(1000, nan), np.ones(3) * 2]),
    "empty": np.zeros(0, np.float32),
    "empty-2d": np.zeros((0, 3), np.float32),
    "empty-3d": np.zeros((2, 0, 1), np.float32),
    "empty-int64": np.zeros(0, np.int64),
    "empty-bool-2d": np.zeros((4, 0), np.bool_),
    "empty-float64": np.zeros((0,), np.float64),
    "float64": np.array([1.0, 2.5, -3.125]),
    "float16": np.array([0.1, 65504.0, -2.0], np.float16),
    "float16-int-valued": np.array([[1.0, 2.0], [3.0, 2048.0]], np.float16),
    "int32": np.array([1, 2], np.int32),
    "int8": np.array([[-128, 5], [127, 0]], np.int8),
    "uint8": np.array([0, 17, 255], np.uint8),
    "bool": np.array([True, False, True]),
    "dtype-at-line-end": np.arange(10, 23, dtype=np.int32),
    "dtype-wraps": np.arange(10, 24, dtype=np.int32),
    **_random_cases(),
}


@pytest.mark.parametrize(
    ("array", "suffixes", "expected"),
    [
        (np.array([True, True]), (), "tensor([True, True])"),
        (np.array([True, False]), (), "tensor([ True, False])"),
        (
            np.array([2.0, 3.0], np.float32),
            ("requires_grad=True",),
            "tensor([2., 3.], requires_grad=True)",
        ),
        (
            np.array(3.0, np.float32),
            ("grad_fn=<SumBackward0>",),
            "tensor(3., grad_fn=<SumBackward0>)",
        ),
        (np.array(3.5, np.float32), (), "tensor(3.5000)"),
        (np.array(7), (), "tensor(7)"),
        (np.array([1, 2], np.int32), (), "tensor([1, 2], dtype=engine.int32)"),
        (np.array([-1.0, 0.5]), (), "tensor([-1.0000,  0.5000], dtype=engine.float64)"),
        (np.array([1e-5, 1.0], np.float32), (), "tensor([1.0000e-05, 1.0000e+00])"),
        (np.array([nan, 1.0, -inf], np.float32), (), "tensor([nan, 1., -inf])"),
        (np.zeros(0, np.float32), (), "tensor([])"),
        (np.zeros((0, 3), np.int64), (), "tensor([], size=(0, 3), dtype=engine.int64)"),
        (np.arange(4).reshape(2, 2), (), "tensor([[0, 1],\n        [2, 3]])"),
    ],
    ids=str,
)
def test_literal(array: np.ndarray, suffixes: tuple[str, ...], expected: str) -> None:
    assert _fmt(array, suffixes) == expected


def test_literal_summary_and_blocks() -> None:
    assert _fmt(np.arange(1001)) == "tensor([   0,    1,    2,  ...,  998,  999, 1000])"
    assert _fmt(np.arange(8).reshape(2, 2, 2)) == (
        "tensor([[[0, 1],\n         [2, 3]],\n\n        [[4, 5],\n         [6, 7]]])"
    )


def test_suffix_wraps_onto_indented_line() -> None:
    text = _fmt(np.arange(10, 24, dtype=np.int32), ("requires_grad=True",))
    assert text.endswith("23],\n       dtype=engine.int32, requires_grad=True)")


@pytest.mark.torch
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(name: str) -> None:
    torch = pytest.importorskip("torch")
    array = CASES[name]
    expected = repr(torch.from_numpy(array.copy())).replace("torch.", "engine.")
    assert _fmt(array) == expected


@pytest.mark.torch
@pytest.mark.parametrize("name", [n for n, a in CASES.items() if a.dtype.kind == "f"])
def test_matches_torch_with_autograd_suffix(name: str) -> None:
    torch = pytest.importorskip("torch")
    array = CASES[name]
    leaf = torch.from_numpy(array.copy()).requires_grad_()
    expected = repr(leaf).replace("torch.", "engine.")
    assert _fmt(array, ("requires_grad=True",)) == expected
    expected = repr(leaf.clone()).replace("torch.", "engine.")
    assert _fmt(array, ("grad_fn=<CloneBackward0>",)) == expected


@pytest.mark.torch
@pytest.mark.parametrize("name", ["float64", "fixed", "empty", "empty-float64", "scalar-float64"])
def test_matches_torch_with_float64_default(name: str) -> None:
    torch = pytest.importorskip("torch")
    array = CASES[name]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        expected = repr(torch.from_numpy(array.copy())).replace("torch.", "engine.")
    finally:
        torch.set_default_dtype(previous)
    assert _fmt(array, default="float64") == expected
