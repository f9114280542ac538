"""Bad arguments raise torch's exception type with torch's words, never NumPy's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import engine


def _setitem(L: Any, key: Any, value: Any) -> None:
    L.ones(2, 3)[key] = value


# name -> (the call, given the library; the exception type torch raises)
CASES: dict[str, tuple[Callable[[Any], Any], type]] = {
    "sum-dim": (lambda L: L.ones(2, 3).sum(2), IndexError),
    "softmax-dim": (lambda L: L.ones(2, 3).softmax(2), IndexError),
    "log_softmax-dim": (lambda L: L.ones(2, 3).log_softmax(-3), IndexError),
    "argmax-dim": (lambda L: L.ones(2, 3).argmax(2), IndexError),
    "transpose-dim": (lambda L: L.ones(2, 3).transpose(0, 2), IndexError),
    "flatten-dim": (lambda L: L.ones(2, 3).flatten(3), IndexError),
    "flatten-order": (lambda L: L.ones(2, 3, 4).flatten(2, 1), RuntimeError),
    "unflatten-sizes": (lambda L: L.ones(2, 6).unflatten(1, (4, 2)), RuntimeError),
    "select-dim": (lambda L: L.ones(2, 3).select(2, 0), IndexError),
    "split-dim": (lambda L: L.ones(2, 3).split(2, 3), IndexError),
    "chunk-dim": (lambda L: L.ones(2, 3).chunk(2, -3), IndexError),
    "permute-length": (lambda L: L.ones(2, 3).permute(0, 1, 2), RuntimeError),
    "permute-duplicate": (lambda L: L.ones(2, 3).permute(0, 0), RuntimeError),
    "reshape-size": (lambda L: L.ones(2, 3).reshape(4, 2), RuntimeError),
    "view-size": (lambda L: L.ones(2, 3).view(5), RuntimeError),
    "matmul-2d-2d": (lambda L: L.ones(2, 3) @ L.ones(2, 3), RuntimeError),
    "matmul-1d-1d": (lambda L: L.ones(3) @ L.ones(4), RuntimeError),
    "matmul-2d-1d": (lambda L: L.ones(2, 3) @ L.ones(4), RuntimeError),
    "matmul-1d-2d": (lambda L: L.ones(3) @ L.ones(4, 2), RuntimeError),
    "matmul-3d-2d": (lambda L: L.ones(2, 2, 3) @ L.ones(4, 2), RuntimeError),
    "matmul-3d-1d": (lambda L: L.ones(2, 2, 3) @ L.ones(4), RuntimeError),
    "matmul-batched-inner": (lambda L: L.ones(2, 2, 3) @ L.ones(2, 4, 2), RuntimeError),
    "matmul-2d-batched": (lambda L: L.ones(2, 3) @ L.ones(2, 4, 2), RuntimeError),
    "matmul-batch-broadcast": (lambda L: L.ones(2, 2, 3) @ L.ones(3, 3, 2), RuntimeError),
    "linear-features": (lambda L: L.nn.Linear(3, 4)(L.ones(2, 5)), RuntimeError),
    "linear-features-3d": (lambda L: L.nn.Linear(3, 4)(L.ones(2, 2, 5)), RuntimeError),
    "cat-sizes": (lambda L: L.cat([L.ones(2, 3), L.ones(2, 4)]), RuntimeError),
    "cat-dims": (lambda L: L.cat([L.ones(2, 3), L.ones(3)]), RuntimeError),
    "cat-dim": (lambda L: L.cat([L.ones(2, 3), L.ones(2, 3)], dim=2), IndexError),
    "cat-empty": (lambda L: L.cat([]), ValueError),
    "stack-sizes": (lambda L: L.stack([L.ones(2, 3), L.ones(2, 4)]), RuntimeError),
    "stack-dim": (lambda L: L.stack([L.ones(2, 3), L.ones(2, 3)], dim=4), IndexError),
    "add-broadcast": (lambda L: L.ones(2, 3) + L.ones(4), RuntimeError),
    "expand-size": (lambda L: L.ones(2, 3).expand(4, 3), RuntimeError),
    "expand-fewer-sizes": (lambda L: L.ones(2, 3).expand(3), RuntimeError),
    "index-out-of-range": (lambda L: L.ones(2, 3)[5], IndexError),
    "index-out-of-range-dim1": (lambda L: L.ones(2, 3)[:, 7], IndexError),
    "index-list-out-of-range": (lambda L: L.ones(2, 3)[[0, 5]], IndexError),
    "index-too-many": (lambda L: L.ones(2, 3)[0, 0, 0], IndexError),
    "setitem-shape": (lambda L: _setitem(L, 0, L.ones(4)), RuntimeError),
    "setitem-out-of-range": (lambda L: _setitem(L, 3, 1.0), IndexError),
    "zeros-negative": (lambda L: L.zeros(2, -3), RuntimeError),
    "ones-negative": (lambda L: L.ones(2, -3), RuntimeError),
    "randn-negative": (lambda L: L.randn((-1, 2)), RuntimeError),
    "full-negative": (lambda L: L.full((2, -1), 1.0), RuntimeError),
    "randint-negative": (lambda L: L.randint(0, 5, (2, -1)), RuntimeError),
    "arange-step-zero": (lambda L: L.arange(0, 5, 0), RuntimeError),
    "arange-step-sign": (lambda L: L.arange(5, 0, 1), RuntimeError),
}


def _raised(L: Any, name: str) -> tuple[type, str]:
    call, _ = CASES[name]
    with pytest.raises(Exception) as info:
        call(L)
    return info.type, str(info.value).split("\n")[0]


@pytest.mark.parametrize("name", CASES)
def test_bad_arguments_raise_torchs_exception_type(name: str) -> None:
    raised, message = _raised(engine, name)
    assert raised is CASES[name][1], message
    assert "axis" not in message and "array" not in message  # NumPy's vocabulary


@pytest.mark.torch
@pytest.mark.parametrize("name", CASES)
def test_bad_arguments_are_worded_as_torch(torch: Any, name: str) -> None:
    assert _raised(engine, name) == _raised(torch, name)
