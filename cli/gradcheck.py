"""`finetune gradcheck`: finite-difference checks of every case of the engine's op catalogue.

The catalogue (`engine.testing.CASES`, which the test suite runs too) holds every
differentiable op, layer and ResNet block, by name; a name's family is the part before `[`
("conv2d[groups]" is in family "conv2d"). Each case is judged by `engine.autograd.gradcheck`
in float64; the error figures come from the same numerical and analytical Jacobians.
"""

from __future__ import annotations

import difflib
import math
import time
from collections.abc import Iterable
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
from engine.testing import CASES

ATOL, RTOL = 1e-5, 1e-3


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
    """Draw case `name`'s inputs from `seed` and compare its analytical and numerical
    Jacobians."""
    case = CASES[name]
    start = time.perf_counter()
    result = Result(name, "")
    try:
        inputs = tuple(case.leaves(engine, np.random.default_rng(seed)))
        result.shapes = _describe(inputs)

        def fn(*xs: engine.Tensor) -> Any:
            return case.fn(engine, *xs)

        numerical = numerical_jacobians(fn, inputs, case.eps)
        analytical = analytical_jacobians(fn, inputs)
        result.max_abs, result.max_rel, result.detail = _errors(numerical, analytical)
        result.passed = gradcheck(fn, inputs, case.eps, ATOL, RTOL, raise_exception=False)
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
            "eps 1e-6 unless a case sets its own; pass: |analytical - numerical| <= "
            f"{ATOL:g} + {RTOL:g}·|numerical| everywhere; rel = max abs error / max |numerical|"
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
