"""`finetune gradcheck`: finite-difference checks of every differentiable op, layer and block.

`CASES` is the catalogue: a name -> a builder returning `(fn, inputs)` with small
float64 inputs, those requiring grad being checked. A name's family is the part
before `[` ("conv2d[groups]" is in family "conv2d"). Each case is judged by
`engine.autograd.gradcheck`; the error figures come from the same numerical and
analytical Jacobians (`numerical_jacobians`, `analytical_jacobians`).
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

import engine
from engine.autograd import gradcheck
from engine.autograd.gradcheck import analytical_jacobians, numerical_jacobians

EPS, ATOL, RTOL = 1e-6, 1e-5, 1e-3
F64 = engine.float64

Builder = Callable[[], tuple[Callable[..., Any], tuple[Any, ...]]]
CASES: dict[str, Builder] = {}


def case(name: str) -> Callable[[Builder], Builder]:
    """Register a builder under `name` in CASES."""

    def register(build: Builder) -> Builder:
        CASES[name] = build
        return build

    return register


# ---------------------------------------------------------------- inputs


def _real(*shape: int) -> engine.Tensor:
    return engine.randn(*shape, dtype=F64, requires_grad=True)


def _positive(*shape: int) -> engine.Tensor:
    """Values in [0.5, 2): inside the domain of log, sqrt, division and fractional powers."""
    return (engine.rand(*shape, dtype=F64) * 1.5 + 0.5).requires_grad_()


def _distinct(*shape: int) -> engine.Tensor:
    """Shuffled values 0.1 apart, each 0.05 from a multiple of 0.1: no ties (max, pooling) and
    no kinks within a finite-difference step (abs and relu at 0, clamp at multiples of 0.1)."""
    n = math.prod(shape)
    steps = engine.randperm(n).to(F64) - n // 2 + 0.5
    return (steps * 0.1).reshape(*shape).requires_grad_()


def _labels(*values: int) -> engine.Tensor:
    return engine.tensor(list(values))


# ------------------------------------------------------------- tensor ops


def _op(
    name: str, fn: Callable[..., Any], *shapes: tuple[int, ...], draw: Callable = _real
) -> None:
    """Register `fn` applied to fresh inputs of these shapes, drawn by `draw`."""
    CASES[name] = lambda: (fn, tuple(draw(*shape) for shape in shapes))


def _where(a: engine.Tensor, b: engine.Tensor) -> engine.Tensor:
    return engine.where(engine.tensor([[True, False, True], [False, True, True]]), a, b)


_op("add", lambda a, b: a + b, (2, 3), (3,))
_op("sub", lambda a, b: a - b, (2, 3), (2, 1))
_op("mul", lambda a, b: a * b, (2, 3), (1, 3))
_op("div", lambda a, b: a / b, (2, 3), (3,), draw=_positive)
_op("neg", lambda a: -a, (2, 3))
_op("pow", lambda a, b: a**b, (2, 3), (2, 3), draw=_positive)
_op("pow[scalar]", lambda a: a**3, (2, 3))
_op("exp", lambda a: a.exp(), (2, 3))
_op("log", lambda a: a.log(), (2, 3), draw=_positive)
_op("sqrt", lambda a: a.sqrt(), (2, 3), draw=_positive)
_op("abs", lambda a: a.abs(), (2, 3), draw=_distinct)
_op("clamp", lambda a: a.clamp(-0.2, 0.2), (3, 4), draw=_distinct)
_op("relu", lambda a: a.relu(), (2, 3), draw=_distinct)
_op("sigmoid", lambda a: a.sigmoid(), (2, 3))
_op("tanh", lambda a: a.tanh(), (2, 3))
_op("softmax", lambda a: a.softmax(dim=1), (2, 4))
_op("log_softmax", lambda a: a.log_softmax(dim=1), (2, 4))
_op("sum", lambda a: a.sum(dim=1), (2, 3, 2))
_op("mean", lambda a: a.mean(dim=(0, 2), keepdim=True), (2, 3, 2))
_op("var", lambda a: a.var(dim=1), (2, 4))
_op("amax", lambda a: a.amax(dim=1), (2, 3, 2), draw=_distinct)
_op("max", lambda a: a.max(), (2, 3), draw=_distinct)
_op("max[dim]", lambda a: a.max(dim=1).values, (3, 4), draw=_distinct)
_op("matmul", lambda a, b: a @ b, (2, 3), (3, 4))
_op("matmul[batched]", lambda a, b: a @ b, (2, 2, 3), (3, 2))
_op("reshape", lambda a: a.reshape(3, -1), (2, 3, 2))
_op("flatten", lambda a: a.flatten(1), (2, 3, 2))
_op("squeeze", lambda a: a.squeeze(1), (2, 1, 3))
_op("unsqueeze", lambda a: a.unsqueeze(0), (2, 3))
_op("permute", lambda a: a.permute(2, 0, 1), (2, 3, 2))
_op("transpose", lambda a: a.transpose(0, 2), (2, 3, 2))
_op("cat", lambda a, b: engine.cat([a, b], dim=1), (2, 3), (2, 2))
_op("stack", lambda a, b: engine.stack([a, b], dim=1), (2, 3), (2, 3))
_op("index", lambda a: a[1:, ::2], (3, 4))
_op("index[advanced]", lambda a: a[_labels(0, 2, 0)], (3, 4))
_op("where", _where, (2, 3), (2, 3))


# --------------------------------------------------------- layer kernels


def _conv(x: tuple[int, ...], w: tuple[int, ...], **options: Any) -> Builder:
    def build() -> tuple[Callable[..., Any], tuple[Any, ...]]:
        from engine.nn import functional as F

        def fn(*args: Any) -> Any:
            return F.conv2d(*args, **options)

        return fn, (_real(*x), _real(*w), _real(w[0]))

    return build


CASES["conv2d"] = _conv((2, 3, 5, 5), (4, 3, 3, 3))
CASES["conv2d[stride,padding]"] = _conv((1, 2, 5, 5), (3, 2, 3, 3), stride=2, padding=1)
CASES["conv2d[dilation]"] = _conv((1, 2, 6, 6), (2, 2, 3, 3), dilation=2, padding=1)
CASES["conv2d[groups]"] = _conv((1, 4, 4, 4), (4, 2, 3, 3), groups=2, padding=1)


@case("linear")
def _linear() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    from engine.nn import functional as F

    return F.linear, (_real(3, 4), _real(5, 4), _real(5))


@case("max_pool2d")
def _max_pool() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    from engine.nn import functional as F

    return lambda x: F.max_pool2d(x, 3, stride=2, padding=1), (_distinct(1, 2, 6, 6),)


@case("avg_pool2d")
def _avg_pool() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    from engine.nn import functional as F

    return lambda x: F.avg_pool2d(x, 3, stride=2, padding=1), (_real(1, 2, 5, 5),)


@case("adaptive_avg_pool2d")
def _adaptive_avg_pool() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    from engine.nn import functional as F

    return lambda x: F.adaptive_avg_pool2d(x, (2, 3)), (_real(1, 2, 5, 5),)


def _batch_norm(training: bool) -> Builder:
    def build() -> tuple[Callable[..., Any], tuple[Any, ...]]:
        from engine.nn import functional as F

        running_mean, running_var = engine.randn(3, dtype=F64), engine.rand(3, dtype=F64) + 0.5

        def fn(x: Any, weight: Any, bias: Any) -> Any:
            return F.batch_norm(x, running_mean, running_var, weight, bias, training=training)

        return fn, (_real(4, 3, 2, 2), _positive(3), _real(3))

    return build


CASES["batch_norm[train]"] = _batch_norm(training=True)
CASES["batch_norm[eval]"] = _batch_norm(training=False)


@case("dropout")
def _dropout() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """Every call replays the same random state, so every call draws the same mask."""
    from engine.nn import functional as F

    state = engine.get_rng_state()

    def fn(x: Any) -> Any:
        engine.set_rng_state(state)
        return F.dropout(x, p=0.5, training=True)

    return fn, (_real(3, 4),)


@case("cross_entropy[label_smoothing]")
def _cross_entropy() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    from engine.nn import functional as F

    return lambda x: F.cross_entropy(x, _labels(1, 0, 4, 2), label_smoothing=0.1), (_real(4, 5),)


@case("nll_loss")
def _nll_loss() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    from engine.nn import functional as F

    return lambda x: F.nll_loss(x, _labels(1, 0, 4, 2)), (_real(4, 5),)


@case("mse_loss")
def _mse_loss() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    from engine.nn import functional as F

    return F.mse_loss, (_real(3, 4), _real(3, 4))


@case("pad")
def _pad() -> tuple[Callable[..., Any], tuple[Any, ...]]:
    from engine.nn import functional as F

    return lambda x: F.pad(x, (1, 2, 0, 1), value=0.5), (_real(1, 2, 3, 3),)


# ---------------------------------------------------------- ResNet blocks


def _block(kind: str, inplanes: int, planes: int, stride: int, size: int) -> Builder:
    """A ResNet block in train mode with a downsampling shortcut, checked in x and parameters."""

    def build() -> tuple[Callable[..., Any], tuple[Any, ...]]:
        from engine import models, nn

        block_class = getattr(models, kind)
        width = planes * block_class.expansion
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
        )
        block = block_class(inplanes, planes, stride, downsample).double().train()
        return (lambda x, *params: block(x)), (_real(2, inplanes, size, size), *block.parameters())

    return build


CASES["BasicBlock"] = _block("BasicBlock", inplanes=2, planes=3, stride=2, size=4)
CASES["Bottleneck"] = _block("Bottleneck", inplanes=4, planes=2, stride=1, size=3)


# ----------------------------------------------------------------- running


@dataclass
class Result:
    """One case's outcome: error figures over all Jacobian blocks, and where it was worst."""

    name: str
    shapes: str
    max_abs: float = math.nan
    max_rel: float = math.nan
    passed: bool = False
    seconds: float = 0.0
    detail: str = ""


def select(names: Iterable[str]) -> list[str]:
    """The case names matching each given name (exactly, or as the family before `[`).

    Raises typer.BadParameter (exit 2) for a name that matches nothing.
    """
    chosen: list[str] = []
    for wanted in names:
        found = [n for n in CASES if wanted in (n, n.split("[")[0])]
        if not found:
            close = difflib.get_close_matches(wanted, CASES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            families = ", ".join(dict.fromkeys(n.split("[")[0] for n in CASES))
            raise typer.BadParameter(
                f"unknown op {wanted!r}; {hint}known ops: {families} "
                "(a name selects its variants too: conv2d selects conv2d[groups])",
                param_hint="--op",
            )
        chosen += [n for n in found if n not in chosen]
    return chosen


def run_case(name: str, seed: int) -> Result:
    """Build case `name` from `seed` and compare its analytical and numerical Jacobians."""
    engine.manual_seed(seed)
    start = time.perf_counter()
    result = Result(name, "")
    try:
        fn, inputs = CASES[name]()
        result.shapes = _describe(inputs)
        numerical = numerical_jacobians(fn, inputs, EPS)
        analytical = analytical_jacobians(fn, inputs)
        result.max_abs, result.max_rel, result.detail = _errors(numerical, analytical)
        result.passed = gradcheck(fn, inputs, EPS, ATOL, RTOL, raise_exception=False)
    except Exception as exc:  # a broken op is a result to report, not a crash
        result.detail = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - start
    return result


def _describe(inputs: tuple[Any, ...]) -> str:
    """The shapes of the checked inputs; past three, the first and a count of the rest."""
    shapes = [tuple(x.shape) for x in inputs if isinstance(x, engine.Tensor) and x.requires_grad]
    texts = ["×".join(map(str, s)) or "scalar" for s in shapes]
    if len(shapes) <= 3:
        return ", ".join(texts)
    rest = sum(math.prod(s) for s in shapes[1:])
    return f"{texts[0]} +{len(shapes) - 1} tensors ({rest} values)"


def _errors(numerical: list[list[np.ndarray]], analytical: list[list[np.ndarray]]) -> tuple:
    """(max abs error, max abs error / max |numerical|, where the worst entry is)."""
    worst, where, scale = 0.0, "", 0.0
    for i, (num_row, ana_row) in enumerate(zip(numerical, analytical, strict=True)):
        for j, (num, ana) in enumerate(zip(num_row, ana_row, strict=True)):
            if num.size == 0:
                continue
            scale = max(scale, float(np.abs(num).max()))
            diff = np.abs(ana - num)
            k = np.unravel_index(int(diff.argmax()), diff.shape)
            if diff[k] > worst or not where:
                worst = float(diff[k])
                where = (
                    f"d output {j}[{k[1]}] / d input {i}[{k[0]}]: "
                    f"analytical {ana[k]:.6g}, numerical {num[k]:.6g}"
                )
    return worst, (worst / scale if scale else 0.0), where


def report(results: list[Result], console: Console) -> None:
    """The table of results, then the worst entry of each failed case."""
    table = Table(
        title="Gradient checks (float64, central differences)",
        caption=(
            f"eps {EPS:g}; pass: |analytical - numerical| <= {ATOL:g} + {RTOL:g}·|numerical| "
            "everywhere; rel = max abs error / max |numerical|"
        ),
    )
    for column in ("op", "inputs (checked)", "max abs err", "max rel err", "status", "time"):
        justify = "right" if column in ("max abs err", "max rel err", "time") else "left"
        table.add_column(column, justify=justify)
    for r in results:
        status = Text("ok", "green") if r.passed else Text("FAIL", "bold red")
        errors = ("-" if math.isnan(e) else f"{e:.1e}" for e in (r.max_abs, r.max_rel))
        table.add_row(Text(r.name), r.shapes, *errors, status, f"{r.seconds:.2f}s")
    console.print(table)
    failed = [r for r in results if not r.passed]
    for r in failed:
        console.print(Text("FAIL ", "bold red") + Text(f"{r.name}: {r.detail}"))
    verdict = Text(f"{len(failed)} failed", "bold red") if failed else Text("all passed", "green")
    console.print(Text(f"{len(results)} cases: ") + verdict)


def run(ops: list[str] | None, seed: int, console: Console | None = None) -> None:
    """Check the selected cases (all by default), print the table; exit 1 if any failed."""
    names = select(ops) if ops else list(CASES)
    results = [run_case(name, seed) for name in names]
    report(results, console or Console())
    if not all(r.passed for r in results):
        raise typer.Exit(1)
