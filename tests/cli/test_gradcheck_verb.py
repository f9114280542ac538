"""`finetune gradcheck`: the whole catalogue passes, `--op` filters, an unknown name is a usage
error, and a broken op fails with its row and the entry where it is worst."""

from __future__ import annotations

import pytest
from _run_cli import finetune, words
from typer.testing import CliRunner, Result

import engine
from cli import gradcheck
from cli.main import app
from engine.testing import CASES, OpCase


def invoke(*args: str) -> Result:
    return CliRunner().invoke(app, ["gradcheck", *args], env={"COLUMNS": "200"})


class WrongSquare(engine.autograd.Function):
    """x * x with the gradient of x * x / 2: a deliberately broken custom op."""

    @staticmethod
    def forward(ctx, x: engine.Tensor) -> engine.Tensor:
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad: engine.Tensor) -> engine.Tensor:
        (x,) = ctx.saved_tensors
        return grad * x


@pytest.mark.slow
def test_every_case_passes_through_the_real_command() -> None:
    result = finetune("gradcheck")
    assert result.returncode == 0, result.stdout + result.stderr
    for column in ("op", "max abs err", "max rel err", "status", "time"):
        assert column in result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert {row.split("│")[1].strip() for row in rows} == set(gradcheck.CASES)
    assert all(" ok " in row for row in rows)
    assert f"{len(gradcheck.CASES)} cases: all passed" in result.stdout


def test_the_command_checks_the_engines_catalogue() -> None:
    assert gradcheck.CASES is CASES


def test_the_catalogue_covers_ops_layers_and_blocks() -> None:
    families = {name.split("[")[0] for name in gradcheck.CASES}
    expected = {
        *("add", "sub", "mul", "div", "neg", "pow", "exp", "log", "sqrt", "abs", "clamp"),
        *("relu", "sigmoid", "tanh", "softmax", "log_softmax", "sum", "mean", "amax", "max"),
        *("matmul", "reshape", "permute", "transpose", "cat", "stack", "index", "where"),
        *("linear", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm"),
        *("dropout", "cross_entropy", "nll_loss", "mse_loss", "pad", "BasicBlock", "Bottleneck"),
    }
    assert expected <= families
    convs = {"conv2d[stride,padding]", "conv2d[dilation]", "conv2d[groups]", "conv2d[wide]"}
    assert convs <= set(gradcheck.CASES)
    assert {"batch_norm[train]", "batch_norm[eval]"} <= set(gradcheck.CASES)


def test_op_selects_a_family() -> None:
    result = invoke("--op", "conv2d", "--seed", "3")
    assert result.exit_code == 0, result.output
    conv_cases = [name for name in gradcheck.CASES if name.startswith("conv2d")]
    assert len(conv_cases) == 5
    for name in conv_cases:
        assert name in result.stdout
    assert "linear" not in result.stdout
    assert "5 cases: all passed" in result.stdout


def test_unknown_op_is_a_usage_error_with_a_suggestion() -> None:
    result = invoke("--op", "conv2")
    assert result.exit_code == 2
    message = words(result.output)
    assert "unknown op 'conv2'" in message
    assert "did you mean 'conv2d'?" in message
    assert "batch_norm" in message  # the list of known ops


def test_a_broken_op_fails_with_its_row(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = OpCase("wrong_square[backward]", lambda L, x: WrongSquare.apply(x), ((2, 3),))
    monkeypatch.setitem(gradcheck.CASES, broken.name, broken)
    result = invoke("--op", "wrong_square", "--op", "exp")
    assert result.exit_code == 1, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert "FAIL" in rows["wrong_square[backward]"]
    assert " ok " in rows["exp"]
    detail = words(result.stdout)
    assert "FAIL wrong_square[backward]: d output 0[" in detail
    assert "2 cases: 1 failed" in detail


def test_an_op_that_raises_is_reported_as_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def fn(lib: object, x: engine.Tensor) -> engine.Tensor:
        raise ValueError("kernel exploded")

    monkeypatch.setitem(gradcheck.CASES, "explodes", OpCase("explodes", fn, ((2,),)))
    result = invoke("--op", "explodes")
    assert result.exit_code == 1
    assert "FAIL explodes: ValueError: kernel exploded" in words(result.stdout)
