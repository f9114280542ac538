"""The catalogue of differentiable ops, layers and ResNet blocks, each as a case that runs
unchanged on engine and on torch (as torch's OpInfo in ``torch.testing._internal``).

A case's function takes the library (``engine`` or ``torch``) and the input tensors; its
inputs are shapes, drawn from the case's domain, or fixed arrays (for ties). One catalogue
serves ``finetune gradcheck`` (finite differences in float64), the float64 gradient checks of
the test suite and the suite's float32 comparison with torch (forward, every gradient and the
grad_fn's name). A name's family is the part before ``[``: ``conv2d[groups]`` is a ``conv2d``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Shape = tuple[int, ...]


def _real(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    return rng.standard_normal(shape)


def _positive(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Values in [0.5, 2): inside the domain of log, sqrt, division and fractional powers."""
    return rng.uniform(0.5, 2.0, shape)


def _away(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Values at least 0.1 from every multiple of 0.5, where abs, relu and clamp(±0.5) kink."""
    return (rng.integers(-3, 3, shape) + rng.uniform(0.2, 0.8, shape)) / 2


def _distinct(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Shuffled values 0.1 apart, each 0.05 from a multiple of 0.1: no ties (max pooling)."""
    n = math.prod(shape)
    return ((rng.permutation(n) - n // 2 + 0.5) * 0.1).reshape(shape)


DOMAINS = {"real": _real, "positive": _positive, "away": _away, "distinct": _distinct}


@dataclass(frozen=True)
class OpCase:
    """One op on inputs of given shapes (or fixed values) from a domain.

    ``gradgrad``: also check second derivatives. ``eps``: the finite-difference step.
    ``torch``: torch computes the same function of the same inputs (not for random masks or
    engine-only modules). ``atol``/``rtol``: float32 tolerance against torch.
    """

    name: str
    fn: Callable[..., Any]
    inputs: tuple[Shape | np.ndarray, ...]
    domain: str = "real"
    gradgrad: bool = False
    eps: float = 1e-6
    torch: bool = True
    atol: float = 1e-5
    rtol: float = 1e-5

    @property
    def family(self) -> str:
        return self.name.split("[")[0]

    def arrays(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The float64 input values: drawn for shapes, copied for fixed arrays."""
        draw = DOMAINS[self.domain]
        return [
            np.array(x, np.float64) if isinstance(x, np.ndarray) else draw(rng, x)
            for x in self.inputs
        ]

    def leaves(self, lib: Any, rng: np.random.Generator, dtype: Any = None) -> list[Any]:
        """Fresh leaf tensors of ``lib`` (engine or torch) that require grad, in ``dtype``."""
        dtype = dtype or lib.float64
        return [lib.tensor(a, dtype=dtype, requires_grad=True) for a in self.arrays(rng)]


def case(name: str, fn: Callable[..., Any], *inputs: Any, **options: Any) -> OpCase:
    return OpCase(name, fn, inputs, **options)


# Two-way ties only: a central difference at a tie of k elements gives 1/2, torch's even
# share gives 1/k, so the two agree for k = 2 (k = 3 is checked against torch instead).
TIES_ALL = np.array([[1.0, 3.0, 0.0], [3.0, -1.0, 2.0]])
TIES_ROWS = np.array([[1.0, 3.0, 3.0], [2.0, -1.0, 2.0]])
TIES_THREE = np.array([[2.0, 2.0, 2.0], [1.0, 5.0, 5.0]])

TENSOR_OPS = [
    # arithmetic, with broadcasting
    case("add", lambda L, a, b: a + b, (3, 4), (3, 4)),
    case("add[bcast-col-row]", lambda L, a, b: a + b, (3, 1), (1, 4)),
    case("add[bcast-3d-1d]", lambda L, a, b: a + b, (2, 3, 4), (4,)),
    case("add[scalar-tensor]", lambda L, a, b: a + b, (), (5,)),
    case("add[python-scalar]", lambda L, a: 1.5 + a, (2, 3)),
    case("sub", lambda L, a, b: a - b, (3, 4), (3, 4)),
    case("sub[bcast]", lambda L, a, b: a - b, (2, 3, 4), (3, 1)),
    case("rsub[python-scalar]", lambda L, a: 2.0 - a, (5,)),
    case("mul", lambda L, a, b: a * b, (3, 4), (3, 4), gradgrad=True),
    case("mul[bcast-col-row]", lambda L, a, b: a * b, (3, 1), (1, 4), gradgrad=True),
    case("mul[bcast-3d-1d]", lambda L, a, b: a * b, (2, 3, 4), (4,)),
    case("mul[0d]", lambda L, a, b: a * b, (5,), ()),
    case("mul[self]", lambda L, a: a * a, (7,), gradgrad=True),
    case("div", lambda L, a, b: a / b, (3, 4), (3, 4), domain="positive", gradgrad=True),
    case("div[bcast]", lambda L, a, b: a / b, (2, 3, 4), (4,), domain="positive", gradgrad=True),
    case("rdiv[python-scalar]", lambda L, a: 3.0 / a, (5,), domain="positive", gradgrad=True),
    case("neg", lambda L, a: -a, (3, 5)),
    case("reciprocal", lambda L, a: a.reciprocal(), (3, 4), domain="positive", gradgrad=True),
    case("rsqrt", lambda L, a: a.rsqrt(), (3, 4), domain="positive", gradgrad=True),
    case("square", lambda L, a: a.square(), (3, 4), gradgrad=True),
    # powers
    *(
        case(f"pow[{c:g}]", lambda L, a, c=c: a**c, (3, 4), domain="positive", gradgrad=True)
        for c in (0, 1, 2, 3, 0.5, -1, -2.5)
    ),
    case("pow[2-negative-base]", lambda L, a: a**2, (3, 4), gradgrad=True),
    case("pow[tensor]", lambda L, a, b: a**b, (3, 4), (3, 4), domain="positive", gradgrad=True),
    case("pow[tensor-bcast]", lambda L, a, b: a**b, (3, 1), (4,), domain="positive"),
    case("pow[scalar-base]", lambda L, a: 2.5**a, (3, 4), gradgrad=True),
    # element-wise functions
    case("exp", lambda L, a: a.exp(), (3, 4), gradgrad=True),
    case("log", lambda L, a: a.log(), (3, 4), domain="positive", gradgrad=True),
    case("sqrt", lambda L, a: a.sqrt(), (3, 4), domain="positive"),
    case("abs", lambda L, a: a.abs(), (3, 4), domain="away"),
    case("clamp[min]", lambda L, a: a.clamp(min=-0.5), (4, 5), domain="away"),
    case("clamp[max]", lambda L, a: a.clamp(max=0.5), (4, 5), domain="away"),
    case("clamp[both]", lambda L, a: a.clamp(-0.5, 0.5), (4, 5), domain="away"),
    case("clamp_min", lambda L, a: a.clamp_min(0.5), (4, 5), domain="away"),
    case("relu", lambda L, a: a.relu(), (4, 5), domain="away"),
    case("sigmoid", lambda L, a: a.sigmoid(), (3, 4), gradgrad=True),
    case("tanh", lambda L, a: a.tanh(), (3, 4), gradgrad=True),
    # normalising exponentials
    case("softmax[dim0]", lambda L, a: a.softmax(0), (3, 4), gradgrad=True),
    case("softmax[dim-1]", lambda L, a: a.softmax(-1), (3, 4), gradgrad=True),
    case("softmax[3d-dim1]", lambda L, a: a.softmax(1), (2, 3, 4)),
    case("log_softmax[dim0]", lambda L, a: a.log_softmax(0), (3, 4), gradgrad=True),
    case("log_softmax[dim-1]", lambda L, a: a.log_softmax(-1), (3, 4), gradgrad=True),
    case("log_softmax[3d-dim1]", lambda L, a: a.log_softmax(1), (2, 3, 4)),
    # reductions
    case("sum[all]", lambda L, a: a.sum(), (2, 3, 4), gradgrad=True),
    case("sum[dim0]", lambda L, a: a.sum(0), (2, 3, 4), gradgrad=True),
    case("sum[dim-1]", lambda L, a: a.sum(-1), (2, 3, 4)),
    case("sum[dims-0-2]", lambda L, a: a.sum((0, 2)), (2, 3, 4)),
    case("sum[dims-neg-keepdim]", lambda L, a: a.sum((-1, 0), keepdim=True), (2, 3, 4)),
    case("sum[dim1-keepdim]", lambda L, a: a.sum(1, keepdim=True), (3, 5), gradgrad=True),
    case("mean[all]", lambda L, a: a.mean(), (2, 3, 4), gradgrad=True),
    case("mean[dim1]", lambda L, a: a.mean(1), (2, 3, 4), gradgrad=True),
    case("mean[dim-1-keepdim]", lambda L, a: a.mean(-1, keepdim=True), (2, 3, 4)),
    case("mean[dims-0-1]", lambda L, a: a.mean((0, 1)), (2, 3, 4)),
    case("amax[all]", lambda L, a: a.amax(), (3, 4)),
    case("amax[dim1]", lambda L, a: a.amax(1), (3, 4)),
    case("amax[dims-keepdim]", lambda L, a: a.amax((0, 2), keepdim=True), (2, 3, 4)),
    case("amax[ties-all]", lambda L, a: a.amax(), TIES_ALL),
    case("amax[ties-dim1]", lambda L, a: a.amax(1), TIES_ROWS),
    case("amin[all]", lambda L, a: a.amin(), (3, 4)),
    case("amin[dim0]", lambda L, a: a.amin(0), (3, 4)),
    case("amin[ties-dim1]", lambda L, a: (-a).amin(1), TIES_ROWS),
    case("max[all]", lambda L, a: a.max(), (3, 4)),
    case("max[all-ties]", lambda L, a: a.max(), TIES_ALL),
    case("max[dim1-values]", lambda L, a: a.max(1).values, (3, 4)),
    case("max[dim0-keepdim]", lambda L, a: a.max(0, keepdim=True)[0], (3, 4)),
    case("min[all]", lambda L, a: a.min(), (3, 4)),
    case("min[all-ties]", lambda L, a: (-a).min(), TIES_ALL),
    case("min[dim-1-values]", lambda L, a: a.min(-1).values, (2, 3, 4)),
    case("max[other]", lambda L, a, b: a.max(b), (3, 4), (3, 4)),
    case("max[other-ties]", lambda L, a, b: a.max(b), TIES_ALL, TIES_ROWS),
    case("min[other-bcast]", lambda L, a, b: a.min(b), (3, 1), (4,)),
    case("var[all]", lambda L, a: a.var(), (3, 4)),
    case("var[dim1]", lambda L, a: a.var(dim=1), (3, 4)),
    case("var[biased-keepdim]", lambda L, a: a.var(dim=0, unbiased=False, keepdim=True), (3, 4)),
    case("std[all]", lambda L, a: a.std(), (3, 4)),
    case("std[dim-1]", lambda L, a: a.std(dim=-1), (2, 3, 5)),
    case("norm", lambda L, a: a.norm(), (3, 4), gradgrad=True),
    case("norm[1-dim]", lambda L, a: a.norm(1, dim=1), (3, 4), domain="away"),
    case("norm[3-dim-keepdim]", lambda L, a: a.norm(3, dim=0, keepdim=True), (3, 4)),
    case("norm[0.5]", lambda L, a: a.norm(0.5), (3, 4), domain="positive"),
    case("norm[inf]", lambda L, a: a.norm(float("inf"), dim=1), (3, 4)),
    case("sign", lambda L, a: a.sign(), (3, 4), domain="away"),
    # matrix products
    case("matmul[1d-1d]", lambda L, a, b: a @ b, (3,), (3,), gradgrad=True),
    case("matmul[1d-2d]", lambda L, a, b: a @ b, (3,), (3, 4)),
    case("matmul[2d-1d]", lambda L, a, b: a @ b, (3, 4), (4,)),
    case("matmul[2d-2d]", lambda L, a, b: a @ b, (3, 4), (4, 5), gradgrad=True),
    case("matmul[batched]", lambda L, a, b: a @ b, (2, 3, 4), (2, 4, 5)),
    case("matmul[batched-2d]", lambda L, a, b: a @ b, (2, 3, 4), (4, 5), gradgrad=True),
    case("matmul[bcast-batches]", lambda L, a, b: a @ b, (2, 1, 3, 4), (3, 4, 2)),
    case("matmul[2d-batched]", lambda L, a, b: a @ b, (3, 4), (2, 4, 5)),
    case("matmul[batched-1d]", lambda L, a, b: a.matmul(b), (2, 3, 4), (4,)),
    # shapes
    case("reshape", lambda L, a: a.reshape(2, 6), (3, 4)),
    case("reshape[infer]", lambda L, a: a.reshape(-1), (3, 4)),
    case("reshape[noncontiguous]", lambda L, a: a.t().reshape(12), (3, 4)),
    case("view", lambda L, a: a.view(6, 4), (2, 3, 4)),
    case("permute", lambda L, a: a.permute(2, 0, 1), (2, 3, 4)),
    case("transpose", lambda L, a: a.transpose(0, 2), (2, 3, 4)),
    case("transpose[neg]", lambda L, a: a.transpose(-1, -2), (2, 3, 4)),
    case("t", lambda L, a: a.t(), (3, 5)),
    case("flatten", lambda L, a: a.flatten(), (2, 3, 4)),
    case("flatten[start1]", lambda L, a: a.flatten(1), (2, 3, 4)),
    case("squeeze", lambda L, a: a.squeeze(), (3, 1, 4, 1)),
    case("squeeze[dim]", lambda L, a: a.squeeze(1), (3, 1, 4)),
    case("unsqueeze[0]", lambda L, a: a.unsqueeze(0), (3, 4)),
    case("unsqueeze[neg]", lambda L, a: a.unsqueeze(-1), (3, 4)),
    case("expand", lambda L, a: a.expand(3, 4), (3, 1)),
    case("expand[new-dims]", lambda L, a: a.expand(2, 3, 4), (4,)),
    case("cat[dim0]", lambda L, a, b: L.cat([a, b]), (2, 3), (4, 3)),
    case("cat[dim-1]", lambda L, a, b, c: L.cat([a, b, c], dim=-1), (2, 3), (2, 1), (2, 2)),
    case("stack[dim0]", lambda L, a, b: L.stack([a, b]), (2, 3), (2, 3)),
    case("stack[dim1]", lambda L, a, b, c: L.stack([a, b, c], dim=1), (4,), (4,), (4,)),
    case("where", lambda L, a, b: L.where(a > 0, a, b), (3, 4), (3, 4)),
    case("where[bcast]", lambda L, a, b: L.where(b > 0, a, b), (3, 1), (4,)),
    case("to[float64]", lambda L, a: a.to(L.float32).to(L.float64), (3, 4), eps=1e-3),
    case("clone", lambda L, a: a.clone(), (3, 4)),
    case("repeat", lambda L, a: a.repeat(2, 1, 3), (3, 2), gradgrad=True),
    case("repeat[same-rank]", lambda L, a: a.repeat(1, 2), (3, 2)),
    case("split", lambda L, a: a.split(2, dim=1)[1], (3, 5)),
    case("chunk", lambda L, a: a.chunk(2)[0], (5, 2)),
    case("linear", lambda L, a, w, b: L.nn.functional.linear(a, w, b), (3, 4), (5, 4), (5,)),
    # indexing
    case("index[int]", lambda L, a: a[1], (3, 4), gradgrad=True),
    case("index[slices]", lambda L, a: a[1:, ::2], (3, 5), gradgrad=True),
    case("index[ellipsis]", lambda L, a: a[..., 0], (2, 3, 4)),
    case("index[none]", lambda L, a: a[None, :, 1], (3, 4)),
    case("index[negative-step]", lambda L, a: a[-1, 1:-1], (3, 5)),
    case("index[repeated]", lambda L, a: a[[0, 2, 0, 0]], (3, 4), gradgrad=True),
    case("index[pairs]", lambda L, a: a[[0, 1, 1], [2, 3, 2]], (3, 4), gradgrad=True),
    case("index[mixed]", lambda L, a: a[1:, [0, 0, 2]], (3, 4)),
    case("index[mask]", lambda L, a: a[a > 0], (3, 4), gradgrad=True),
    case("index[row-mask]", lambda L, a: a[a.sum(1) > 0], (5, 2)),
]


# ------------------------------------------------------------------ layers


def _f(lib: Any) -> Any:
    return lib.nn.functional


def _labels(lib: Any) -> Any:
    return lib.tensor([1, 0, 4, 2])


RUNNING_MEAN = np.array([0.5, -1.0, 0.25])
RUNNING_VAR = np.array([1.5, 0.75, 2.0])


def _batch_norm(lib: Any, x: Any, weight: Any, bias: Any, training: bool) -> Any:
    mean, var = (lib.tensor(a, dtype=x.dtype) for a in (RUNNING_MEAN, RUNNING_VAR))
    return _f(lib).batch_norm(x, mean, var, weight, bias, training=training)


def _dropout(lib: Any, x: Any) -> Any:
    """Seeded on every call, so every call draws the same mask (torch draws another)."""
    lib.manual_seed(0)
    return _f(lib).dropout(x, p=0.5, training=True)


LAYERS = [
    case("conv2d", lambda L, x, w, b: _f(L).conv2d(x, w, b), (2, 3, 5, 5), (4, 3, 3, 3), (4,)),
    case(
        "conv2d[stride,padding]",
        lambda L, x, w, b: _f(L).conv2d(x, w, b, stride=2, padding=1),
        *((1, 2, 5, 5), (3, 2, 3, 3), (3,)),
    ),
    case(
        "conv2d[dilation]",
        lambda L, x, w, b: _f(L).conv2d(x, w, b, dilation=2, padding=1),
        *((1, 2, 6, 6), (2, 2, 3, 3), (2,)),
    ),
    case(
        "conv2d[groups]",
        lambda L, x, w, b: _f(L).conv2d(x, w, b, groups=2, padding=1),
        *((1, 4, 4, 4), (4, 2, 3, 3), (4,)),
    ),
    case(  # enough input channels for the engine's one product per kernel offset
        "conv2d[wide]",
        lambda L, x, w, b: _f(L).conv2d(x, w, b, stride=2, padding=1),
        *((1, 128, 3, 3), (2, 128, 3, 3), (2,)),
    ),
    case("linear[no-bias]", lambda L, x, w: _f(L).linear(x, w), (3, 4), (5, 4)),
    case("linear[3d]", lambda L, x, w, b: _f(L).linear(x, w, b), (2, 3, 4), (5, 4), (5,)),
    case(
        "linear[3d-noncontiguous]",
        lambda L, x, w, b: _f(L).linear(x.transpose(0, 1), w, b),
        *((3, 2, 4), (5, 4), (5,)),
    ),
    case(
        "max_pool2d",
        lambda L, x: _f(L).max_pool2d(x, 3, stride=2, padding=1),
        (1, 2, 6, 6),
        domain="distinct",
    ),
    case("avg_pool2d", lambda L, x: _f(L).avg_pool2d(x, 3, stride=2, padding=1), (1, 2, 5, 5)),
    case("adaptive_avg_pool2d", lambda L, x: _f(L).adaptive_avg_pool2d(x, (2, 3)), (1, 2, 5, 5)),
    case("adaptive_avg_pool2d[1]", lambda L, x: _f(L).adaptive_avg_pool2d(x, 1), (2, 3, 4, 4)),
    case(
        "batch_norm[train]",
        lambda L, x, w, b: _batch_norm(L, x, w, b, training=True),
        *((4, 3, 2, 2), (3,), (3,)),
        atol=1e-4,
    ),
    case(
        "batch_norm[eval]",
        lambda L, x, w, b: _batch_norm(L, x, w, b, training=False),
        *((4, 3, 2, 2), (3,), (3,)),
    ),
    case("dropout", _dropout, (3, 4), torch=False),
    case("cross_entropy", lambda L, x: _f(L).cross_entropy(x, _labels(L)), (4, 5)),
    case(
        "cross_entropy[label_smoothing]",
        lambda L, x: _f(L).cross_entropy(x, _labels(L), label_smoothing=0.1),
        (4, 5),
    ),
    case("nll_loss", lambda L, x: _f(L).nll_loss(x, _labels(L)), (4, 5)),
    case("mse_loss", lambda L, a, b: _f(L).mse_loss(a, b), (3, 4), (3, 4)),
    case("pad", lambda L, x: _f(L).pad(x, (1, 2, 0, 1), value=0.5), (1, 2, 3, 3)),
]


# ------------------------------------------------------------------ ResNet blocks


def _block(kind: str, inplanes: int, planes: int, stride: int, size: int) -> OpCase:
    """A ResNet block in train mode with a downsampling shortcut, checked in its input and
    every parameter (the case's inputs after x), for engine's models only."""
    import engine
    from engine import models, nn

    state = engine.get_rng_state()  # building draws initial weights: leave the generator be
    block_class = getattr(models, kind)
    width = planes * block_class.expansion
    downsample = nn.Sequential(
        nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
    )
    block = block_class(inplanes, planes, stride, downsample).double().train()
    engine.set_rng_state(state)
    names = [name for name, _ in block.named_parameters()]

    def fn(lib: Any, x: Any, *params: Any) -> Any:
        for name, param in zip(names, params, strict=True):
            owner, _, leaf = name.rpartition(".")
            block.get_submodule(owner)._parameters[leaf] = param
        return block(x)

    shapes = [(2, inplanes, size, size), *(tuple(p.shape) for p in block.parameters())]
    return case(kind, fn, *shapes, torch=False)


BLOCKS = [
    _block("BasicBlock", inplanes=2, planes=3, stride=2, size=4),
    _block("Bottleneck", inplanes=4, planes=2, stride=1, size=3),
]

CASES: dict[str, OpCase] = {c.name: c for c in [*TENSOR_OPS, *LAYERS, *BLOCKS]}
