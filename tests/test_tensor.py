"""Tensors: creation, dtypes and their promotion, attributes, conversions, detach, repr."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import engine

# ------------------------------------------------------------------ creation and dtypes

DATA_DTYPES = [
    pytest.param([1.0, 2.0], "float32", id="float-list"),
    pytest.param([[1, 2], [3, 4]], "int64", id="int-nested"),
    pytest.param([True, False], "bool", id="bool-list"),
    pytest.param([1, 2.5], "float32", id="mixed-list"),
    pytest.param(3.0, "float32", id="float"),
    pytest.param(3, "int64", id="int"),
    pytest.param(True, "bool", id="bool"),
    pytest.param(np.array([1.0, 2.0]), "float64", id="numpy-float64"),
    pytest.param(np.array([1.0], np.float32), "float32", id="numpy-float32"),
    pytest.param(np.array([1, 2], np.int32), "int32", id="numpy-int32"),
    pytest.param(np.float64(2.0), "float64", id="numpy-scalar-float64"),
    pytest.param(np.array(2.0), "float64", id="numpy-0d"),
]


@pytest.mark.parametrize(("data", "dtype"), DATA_DTYPES)
def test_tensor_infers_dtype_like_torch(data: Any, dtype: str) -> None:
    t = engine.tensor(data)
    assert t.dtype is getattr(engine, dtype)
    np.testing.assert_array_equal(t.numpy(), np.asarray(data))


@pytest.mark.torch
@pytest.mark.parametrize(("data", "dtype"), DATA_DTYPES)
def test_dtype_table_is_torchs(torch: Any, data: Any, dtype: str) -> None:
    theirs = torch.tensor(data)
    assert theirs.dtype is getattr(torch, dtype)
    assert engine.tensor(data).shape == tuple(theirs.shape)


def test_tensor_copies_its_data() -> None:
    array = np.ones(3)
    t = engine.tensor(array)
    array[0] = 5.0
    assert t.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("data", [[1, 2], [1.5, 2.5], np.arange(2, dtype=np.float32)])
def test_dtype_on_request(data: Any) -> None:
    t = engine.tensor(data, dtype=engine.float64, requires_grad=True)
    assert t.dtype is engine.float64 and t.requires_grad
    np.testing.assert_array_equal(t.detach().numpy(), np.asarray(data, np.float64))
    assert engine.zeros(2, dtype=engine.float64).dtype is engine.float64


FACTORIES = ["zeros", "ones", "rand", "randn", "empty"]


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize("size", [(2, 3), ((2, 3),), ([2, 3],)], ids=["varargs", "tuple", "list"])
def test_factories_take_sizes_as_varargs_or_a_sequence(name: str, size: tuple) -> None:
    t = getattr(engine, name)(*size)
    assert t.shape == (2, 3) and t.dtype is engine.float32 and t.ndim == 2
    assert not t.requires_grad and t.is_leaf
    assert getattr(engine, name)(2, dtype=engine.float64, requires_grad=True).requires_grad


def test_factory_values() -> None:
    np.testing.assert_array_equal(engine.zeros(2, 2).numpy(), np.zeros((2, 2)))
    np.testing.assert_array_equal(engine.ones(3).numpy(), np.ones(3))
    u = engine.rand(1000).numpy()
    assert u.min() >= 0 and u.max() < 1
    n = engine.randn(10_000).numpy()
    assert abs(n.mean()) < 0.05 and abs(n.std() - 1) < 0.05


@pytest.mark.parametrize("name", [f"{name}_like" for name in FACTORIES])
@pytest.mark.parametrize("dtype", [engine.float32, engine.float64])
def test_like_factories_keep_shape_and_dtype(name: str, dtype: engine.dtype) -> None:
    like = getattr(engine, name)
    t = like(engine.ones(2, 3, dtype=dtype))
    assert t.shape == (2, 3) and t.dtype is dtype and not t.requires_grad
    assert like(t, dtype=engine.float64).dtype is engine.float64


def test_like_factories_fill() -> None:
    x = engine.tensor([[1, 2]])
    assert engine.zeros_like(x).tolist() == [[0, 0]] and engine.zeros_like(x).dtype is engine.int64
    assert engine.ones_like(x).tolist() == [[1, 1]]
    assert engine.full_like(x, 7).tolist() == [[7, 7]]


ARANGES = [
    ((5,), [0, 1, 2, 3, 4], "int64"),
    ((2, 5), [2, 3, 4], "int64"),
    ((1, 4, 0.5), [1.0, 1.5, 2.0, 2.5, 3.0, 3.5], "float32"),
    ((3.0,), [0.0, 1.0, 2.0], "float32"),
    ((5, 0, -2), [5, 3, 1], "int64"),
]


@pytest.mark.parametrize(("args", "expected", "dtype"), ARANGES)
def test_arange(args: tuple, expected: list, dtype: str) -> None:
    t = engine.arange(*args)
    assert t.tolist() == expected and t.dtype is getattr(engine, dtype)


@pytest.mark.torch
@pytest.mark.parametrize(("args", "expected", "dtype"), ARANGES)
def test_arange_table_is_torchs(torch: Any, args: tuple, expected: list, dtype: str) -> None:
    t = torch.arange(*args)
    assert t.tolist() == expected and t.dtype is getattr(torch, dtype)


def test_from_numpy_shares_memory_both_ways() -> None:
    array = np.zeros(3)
    t = engine.from_numpy(array)
    assert t.dtype is engine.float64
    array[0] = 1.0
    t[1] = 2.0
    assert t.tolist() == [1.0, 2.0, 0.0] and array.tolist() == [1.0, 2.0, 0.0]


def test_from_numpy_rejects_other_objects() -> None:
    with pytest.raises(TypeError, match="expected np.ndarray"):
        engine.from_numpy([1.0, 2.0])


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_cat_and_stack_follow_numpy(dim: int, rng: np.random.Generator) -> None:
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    ta, tb = engine.tensor(a), engine.tensor(b)
    np.testing.assert_array_equal(engine.cat([ta, tb], dim).numpy(), np.concatenate([a, b], dim))
    np.testing.assert_array_equal(engine.stack([ta, tb], dim).numpy(), np.stack([a, b], dim))


@pytest.mark.parametrize(
    "draw",
    [
        lambda: engine.rand(4, 3),
        lambda: engine.randn(5),
        lambda: engine.randint(0, 100, (6,)),
        lambda: engine.randperm(8),
    ],
    ids=["rand", "randn", "randint", "randperm"],
)
def test_manual_seed_reproduces_random_tensors(draw: Callable[[], engine.Tensor]) -> None:
    engine.manual_seed(7)
    first, second = draw(), draw()
    engine.manual_seed(7)
    assert draw().equal(first) and draw().equal(second)
    assert not first.equal(second)


# ------------------------------------------------------------------ dtype promotion

PROMOTIONS = [
    ("engine.ones(2) * 2.5", "float32"),
    ("2.5 * engine.ones(2)", "float32"),
    ("engine.tensor([1, 2]) * 2.5", "float32"),
    ("engine.tensor([1, 2]) * 2", "int64"),
    ("engine.tensor([1, 2], dtype=engine.int32) + 2", "int32"),
    ("engine.tensor([1, 2], dtype=engine.int32) + engine.tensor(2)", "int32"),
    ("engine.tensor([1, 2]) / engine.tensor([2, 2])", "float32"),
    ("engine.tensor([1, 2]) / 2", "float32"),
    ("1 / engine.tensor([1, 2])", "float32"),
    ("engine.tensor([1, 2]) ** 2", "int64"),
    ("engine.tensor([1, 2]) ** 0.5", "float32"),
    ("2.0 ** engine.tensor([1, 2])", "float32"),
    ("engine.ones(2) + engine.tensor([1, 2])", "float32"),
    ("engine.ones(2) + engine.ones(2, dtype=engine.float64)", "float64"),
    ("engine.ones(2) + engine.tensor(1.0, dtype=engine.float64)", "float32"),
    ("engine.tensor(1.0) + engine.ones(2, dtype=engine.float64)", "float64"),
    ("engine.tensor([True]) + True", "bool"),
    ("engine.tensor([True]) + 1", "int64"),
    ("engine.tensor([True]) * 1.5", "float32"),
    ("engine.ones(2, dtype=engine.float64) * 2.5", "float64"),
    ("engine.where(engine.tensor([True]), engine.tensor([1]), 0.5)", "float32"),
    ("engine.where(engine.tensor([True, False]), 1, 0)", "int64"),
]


@pytest.mark.parametrize(("code", "dtype"), PROMOTIONS)
def test_promotion_follows_torch_rules(code: str, dtype: str) -> None:
    assert eval(code).dtype is getattr(engine, dtype)


@pytest.mark.torch
@pytest.mark.parametrize(("code", "dtype"), PROMOTIONS)
def test_promotion_table_is_torchs(torch: Any, code: str, dtype: str) -> None:
    assert eval(code.replace("engine.", "torch."), {"torch": torch}).dtype is getattr(torch, dtype)


DTYPES = ["bool", "uint8", "int32", "int64", "float16", "float32", "float64"]
BINARY = [operator.add, operator.sub, operator.mul, operator.truediv, operator.pow]


def _is_bool(x: Any) -> bool:
    return isinstance(x, bool) or str(getattr(x, "dtype", "")) == "torch.bool"


@pytest.mark.torch
@pytest.mark.parametrize("op", BINARY, ids=lambda op: op.__name__)
def test_promotion_parity_over_dtype_pairs(torch: Any, op: Callable) -> None:
    """Every pair of dtypes, as 1-d and 0-d tensors and with Python scalars, as torch promotes."""

    def operands(lib: Any) -> list:
        tensors = [lib.ones(s, dtype=getattr(lib, d)) for d in DTYPES for s in ((2,), ())]
        return tensors + [True, 2, 2.5]

    checked = 0
    for (a, b), (ta, tb) in zip(
        itertools.product(operands(engine), repeat=2),
        itertools.product(operands(torch), repeat=2),
        strict=True,
    ):
        if not (isinstance(ta, torch.Tensor) or isinstance(tb, torch.Tensor)):
            continue
        if op is operator.pow and all(_is_bool(x) for x in (ta, tb)):
            continue  # torch refuses bool ** bool except tensor ** True (bool); not supported
        try:
            expected = op(ta, tb).dtype
        except RuntimeError:  # e.g. subtraction of bools, which torch refuses
            continue
        assert str(expected) == f"torch.{op(a, b).dtype.name}", (a, b)
        checked += 1
    assert checked >= 100


def test_sum_of_bools_counts() -> None:
    s = engine.tensor([True, False, True]).sum()
    assert s.item() == 2 and s.dtype is engine.int64


def test_mean_of_integers_is_refused_as_torch() -> None:
    with pytest.raises(RuntimeError, match="Input dtype must be either a floating point .* Long"):
        engine.tensor([1, 2]).mean()


def test_comparisons_make_bool_tensors_without_grad() -> None:
    x = engine.tensor([1.0, 2.0, 3.0], requires_grad=True)
    for mask in (x > 1.5, x >= 2, x < 2.5, x <= 1, x == 2, x != 2):
        assert mask.dtype is engine.bool and not mask.requires_grad and mask.grad_fn is None
    assert (x > 1.5).tolist() == [False, True, True]
    assert (x == engine.tensor([1.0, 0.0, 3.0])).tolist() == [True, False, True]


def test_argmax() -> None:
    x = engine.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    assert x.argmax().item() == 3
    assert x.argmax(1).tolist() == [1, 0] and x.argmax(1).dtype is engine.int64


OP_ERRORS = [
    ("engine.ones(2, 3) + engine.ones(4)", RuntimeError,
     "The size of tensor a (3) must match the size of tensor b (4) at non-singleton dimension 1"),
    ("engine.ones(2, 1, 3) * engine.ones(4, 2)", RuntimeError,
     "The size of tensor a (3) must match the size of tensor b (2) at non-singleton dimension 2"),
    ("engine.ones(2, 3) @ engine.ones(2, 3)", RuntimeError,
     "mat1 and mat2 shapes cannot be multiplied (2x3 and 2x3)"),
    ("engine.ones(6).reshape(5)", RuntimeError, "shape '[5]' is invalid for input of size 6"),
    ("engine.ones(2, 3).t().view(6)", RuntimeError,
     "view size is not compatible with input tensor's size and stride"),
    ("engine.ones(2, 3).sum(2)", IndexError,
     "Dimension out of range (expected to be in range of [-2, 1], but got 2)"),
    ("engine.ones(2, 3).unsqueeze(3)", IndexError,
     "Dimension out of range (expected to be in range of [-3, 2], but got 3)"),
    ("engine.ones(2, 3).squeeze(-3)", IndexError,
     "Dimension out of range (expected to be in range of [-2, 1], but got -3)"),
    ("engine.tensor([1, 2]).add_(2.5)", RuntimeError,
     "result type Float can't be cast to the desired output type Long"),
    ("engine.tensor([1, 2]).div_(2)", RuntimeError,
     "result type Float can't be cast to the desired output type Long"),
    ("engine.tensor([True]).mul_(2)", RuntimeError,
     "result type Long can't be cast to the desired output type Bool"),
    ("engine.ones(3).expand(2, 3).add_(1)", RuntimeError,
     "more than one element of the written-to tensor refers to a single memory location"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "error", "phrase"), OP_ERRORS)
def test_op_errors(code: str, error: type, phrase: str) -> None:
    with pytest.raises(error) as info:
        eval(code)
    assert phrase in str(info.value)


@pytest.mark.torch
@pytest.mark.parametrize(("code", "error", "phrase"), OP_ERRORS)
def test_op_errors_are_torchs(torch: Any, code: str, error: type, phrase: str) -> None:
    with pytest.raises(error) as info:
        eval(code.replace("engine.", "torch."), {"torch": torch})
    assert phrase in str(info.value)


# ------------------------------------------------------------------ attributes and conversions


def test_leaf_attributes() -> None:
    x = engine.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    assert x.shape == (1, 3) and x.ndim == 2 and x.dtype is engine.float32
    assert x.requires_grad and x.is_leaf and x.grad is None and x.grad_fn is None


def test_result_attributes() -> None:
    x = engine.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    assert y.requires_grad and not y.is_leaf and y.grad_fn.name() == "MulBackward0"


def test_numpy_returns_the_storage() -> None:
    t = engine.tensor([1.0, 2.0])
    t.numpy()[0] = 9.0
    assert t.tolist() == [9.0, 2.0]


@pytest.mark.parametrize(
    ("data", "value"), [(2.5, 2.5), ([3], 3), ([[True]], True), (np.float64(0.1), 0.1)]
)
def test_item_gives_a_python_number(data: Any, value: Any) -> None:
    item = engine.tensor(data).item()
    assert item == value and type(item) is type(value)


def test_item_of_many_elements_fails() -> None:
    with pytest.raises(
        RuntimeError, match="a Tensor with 2 elements cannot be converted to Scalar"
    ):
        engine.tensor([1.0, 2.0]).item()


def test_detach_shares_storage_and_version_counter() -> None:
    x = engine.tensor([1.0, 2.0], requires_grad=True)
    d = x.detach()
    assert not d.requires_grad and d.is_leaf and d.grad_fn is None
    d.add_(1)
    assert x.tolist() == [2.0, 3.0] and x._version == d._version == 1
    d[0] = 0.0
    assert x.tolist()[0] == 0.0 and x._version == 2


@pytest.mark.parametrize(
    ("index", "is_view"),
    [(0, True), ((1, 2), True), (slice(1, None), True), ((Ellipsis, 0), True), ([0, 1], False)],
    ids=["int", "int-per-dim", "slice", "ellipsis", "int-list"],
)
def test_basic_indexing_gives_views(index: Any, is_view: bool) -> None:
    x = engine.zeros(2, 3)
    x[index].add_(1)
    assert (x.sum().item() > 0) is is_view


def test_requires_grad_underscore_returns_self() -> None:
    x = engine.ones(2)
    assert x.requires_grad_() is x and x.requires_grad
    assert x.requires_grad_(False) is x and not x.requires_grad


def test_only_floating_tensors_can_require_grad() -> None:
    with pytest.raises(RuntimeError, match="only Tensors of floating point"):
        engine.tensor([1, 2]).requires_grad_()


# ------------------------------------------------------------------ repr

REPRS = [
    ("engine.tensor([True, True])", "tensor([True, True])"),
    ("engine.tensor([2., 3.], requires_grad=True)", "tensor([2., 3.], requires_grad=True)"),
    ("engine.tensor([1., 2.], requires_grad=True).sum()", "tensor(3., grad_fn=<SumBackward0>)"),
    ("engine.tensor([1., 2.5], requires_grad=True).mean()",
     "tensor(1.7500, grad_fn=<MeanBackward0>)"),
    ("engine.tensor([2., 3.], dtype=engine.float64, requires_grad=True) * 2",
     "tensor([4., 6.], dtype=engine.float64, grad_fn=<MulBackward0>)"),
    ("engine.zeros(2, 3, dtype=engine.float64)",
     "tensor([[0., 0., 0.],\n        [0., 0., 0.]], dtype=engine.float64)"),
    ("engine.tensor([[1, 2], [3, 4]])", "tensor([[1, 2],\n        [3, 4]])"),
    ("engine.tensor([1, 2], dtype=engine.int32)", "tensor([1, 2], dtype=engine.int32)"),
    ("engine.arange(1, 4, 0.5)", "tensor([1.0000, 1.5000, 2.0000, 2.5000, 3.0000, 3.5000])"),
    ("engine.tensor([[True, False]])", "tensor([[ True, False]])"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "expected"), REPRS)
def test_repr(code: str, expected: str) -> None:
    assert repr(eval(code)) == expected


@pytest.mark.torch
@pytest.mark.parametrize(("code", "expected"), REPRS)
def test_repr_parity(torch: Any, code: str, expected: str) -> None:
    theirs = repr(eval(code.replace("engine.", "torch."), {"torch": torch}))
    assert repr(eval(code)) == theirs.replace("torch.", "engine.")


# ------------------------------------------------------------------ the rest of torch's methods


def _post_accumulate(L: Any) -> list:
    w = L.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    w.register_post_accumulate_grad_hook(lambda p: seen.append((p is w, p.grad.tolist())))
    (w * 3).sum().backward()
    return seen


def _inplace_grad(L: Any, name: str) -> tuple:
    x = L.tensor([1.0, 4.0], requires_grad=True)
    h = x * 1
    getattr(h, name)()
    h.sum().backward()
    values = [np.round(t.detach().numpy(), 5).tolist() for t in (h, x.grad)]
    return *values, type(h.grad_fn).__name__


def _detach_(L: Any) -> tuple:
    h = L.tensor([1.0, 2.0], requires_grad=True) * 2
    out = h.detach_()
    return out is h, h.requires_grad, h.grad_fn is None, h.is_leaf


def _dtype_name(t: Any) -> str:
    return str(t.dtype).split(".")[-1]


M = np.arange(6.0, dtype=np.float32).reshape(2, 3)
# name -> a function of the library whose result must be the same for engine and torch
METHODS: dict[str, Callable[[Any], Any]] = {
    "contiguous": lambda L: [
        L.tensor(M).t().contiguous().is_contiguous(),
        L.tensor(M).t().is_contiguous(),
        L.tensor(M).t().contiguous().tolist(),
    ],
    "device": lambda L: str(L.ones(1).device),
    **{
        name: lambda L, name=name: getattr(L.tensor(M), name)(2.0).tolist()
        for name in ("eq", "ne", "lt", "le", "gt", "ge")
    },
    "exp_": lambda L: _inplace_grad(L, "exp_"),
    "neg_": lambda L: _inplace_grad(L, "neg_"),
    "sqrt_": lambda L: _inplace_grad(L, "sqrt_"),
    "expand_as": lambda L: L.tensor([[1.0], [2.0]]).expand_as(L.tensor(M)).tolist(),
    "long": lambda L: [_dtype_name(L.tensor(M).long()), L.tensor([1.7]).long().tolist()],
    "mT": lambda L: L.tensor(M).reshape(1, 2, 3).mT.tolist(),
    "new_ones": lambda L: [
        L.tensor(M).double().new_ones(2).tolist(),
        _dtype_name(L.tensor(M).double().new_ones(2)),
    ],
    "new_zeros": lambda L: [
        L.tensor([1, 2]).new_zeros((2, 1)).tolist(),
        _dtype_name(L.tensor([1, 2]).new_zeros(2)),
    ],
    "new_tensor": lambda L: _dtype_name(L.tensor(M).double().new_tensor([1, 2])),
    "register_post_accumulate_grad_hook": _post_accumulate,
    "reshape_as": lambda L: L.tensor(M).reshape_as(L.ones(3, 2)).tolist(),
    "view_as": lambda L: L.tensor(M).view_as(L.ones(6)).tolist(),
    "type_as": lambda L: _dtype_name(L.tensor(M).type_as(L.ones(1, dtype=L.float64))),
    "allclose": lambda L: [
        L.tensor(M).allclose(L.tensor(M) + 1e-9),
        L.tensor(M).allclose(L.tensor(M) + 1),
    ],
    "argmin": lambda L: [L.tensor(M).argmin().item(), L.tensor(M).argmin(1, keepdim=True).tolist()],
    "clip": lambda L: L.tensor(M).clip(1, 4).tolist(),
    "detach_": _detach_,
    "is_floating_point": lambda L: [
        L.ones(1).is_floating_point(),
        L.tensor([1]).is_floating_point(),
    ],
    "mm": lambda L: L.tensor(M).mm(L.tensor(M).t()).tolist(),
}


@pytest.mark.torch
@pytest.mark.parametrize("name", METHODS)
def test_less_used_methods_match_torch(torch: Any, name: str) -> None:
    assert METHODS[name](engine) == METHODS[name](torch)


def test_less_used_methods_do_what_they_say() -> None:
    assert METHODS["eq"](engine) == [[False, False, True], [False, False, False]]
    assert METHODS["exp_"](engine)[2] == "ExpBackward0"
    assert METHODS["register_post_accumulate_grad_hook"](engine) == [(True, [3.0, 3.0])]
    assert METHODS["detach_"](engine) == (True, False, True, True)
