"""`finetune lr-find`: the sweep's rates, smoothing, stop and suggestion, and the verb end to end
(suggestion, command, plot, no run folder)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from _run_cli import finetune

from cli.training.lr_finder import Sweep
from tests.cli.test_train_e2e import write_config


def test_the_rates_rise_exponentially_from_start_to_end():
    sweep = Sweep(start=1e-6, end=1.0, steps=7)
    rates = [sweep.lr(i) for i in range(7)]
    assert rates[0] == pytest.approx(1e-6) and rates[-1] == pytest.approx(1.0)
    ratios = [b / a for a, b in zip(rates, rates[1:], strict=False)]
    assert ratios == pytest.approx([10.0] * 6)


def test_the_loss_is_smoothed_and_debiased_and_the_sweep_stops_when_it_explodes():
    sweep = Sweep(steps=100, beta=0.5)
    assert sweep.record(1e-7, 2.0) and sweep.losses == [2.0]  # debiased: the first loss itself
    assert sweep.record(1e-6, 1.0)
    assert sweep.losses[1] == pytest.approx((0.25 * 2.0 + 0.5 * 1.0) / 0.75)
    while sweep.record(1.0, 1.0):
        pass
    assert len(sweep.losses) == 100  # never exploded: all the steps
    exploding = Sweep(steps=100, beta=0.5)
    going = [exploding.record(1.0, loss) for loss in (1.0, 1.0, 1.0, 50.0)]
    assert going == [True, True, True, False]
    assert not Sweep().record(1.0, math.nan)


def test_the_suggestion_is_the_steepest_fall_of_the_loss_against_log_lr():
    sweep = Sweep(start=1e-6, end=10.0, steps=100, beta=0.0)  # beta 0: no smoothing
    middle = math.log(1e-3)
    for i in range(100):
        lr = sweep.lr(i)
        sweep.record(lr, 2.0 - math.tanh((math.log(lr) - middle) / 2))
    assert sweep.suggestion() == pytest.approx(1e-3, rel=0.15)
    assert Sweep(steps=2).suggestion() is None


@pytest.mark.slow
def test_lr_find_suggests_a_rate_and_the_command_and_writes_only_its_plot(tmp_path: Path):
    config = write_config(tmp_path, data={"limit": 32})
    done = finetune(
        "lr-find", str(config), "optim.lr=0.5", "--steps", "20", "--out", "plots", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "over at most 20 batches" in out and "suggested learning rate: " in out
    suggested = out.split("suggested learning rate: ")[1].split()[0]
    assert f"finetune train {config} optim.lr={suggested}" in out
    assert "optim.lr=0.5" not in out.split("to train with it:")[1]
    assert (tmp_path / "plots" / "lr_find.png").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "tiny.yaml"]
