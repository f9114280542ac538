"""`finetune lr-find`: the learning-rate range test on a fresh copy of the config's model.

It trains what the config trains first (the head stage of a recipe with
schedule.unfreeze_at_epoch), with its optimizer, loss and data, for at most
`steps` batches at exponentially rising learning rates (each param group keeps
its ratio to optim.lr), then prints the suggestion and the command to train
with it. Nothing is written but `lr_find.png` (with the plots extra).
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console

import engine
from cli.config import load_config
from cli.data import DataLoader
from cli.data.sampler import BalancedSampler
from cli.training.lr_finder import Sweep
from engine.nn import functional as F

PLOT = "lr_find.png"


def lr_find(
    config_path: Path,
    overrides: Sequence[str] = (),
    *,
    out: Path = Path("."),
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
) -> Sweep:
    """Sweep the learning rate and report; returns the sweep."""
    from cli.train import prepare

    config = load_config(config_path, overrides)
    no_schedule = dataclasses.replace(config.schedule, scheduler="none", warmup_epochs=0)
    config = dataclasses.replace(config, schedule=no_schedule)  # the sweep sets the rates
    trainee, (train_set, _, _) = prepare(config, config_path)
    data, console = config.data, Console()
    sampler = (
        BalancedSampler(train_set.labels, config.run.seed) if data.sampler == "balanced" else None
    )
    loader = DataLoader(
        train_set, data.batch_size, True, config.run.seed, data.num_workers, sampler=sampler
    )
    ratios = [group["lr"] / config.optim.lr for group in trainee.optimizer.param_groups]
    sweep = Sweep(start_lr, end_lr, steps)
    console.print(
        f"Sweeping the learning rate from {start_lr:g} to {end_lr:g} over at most {steps} batches"
    )
    trainee.train_mode()
    epoch, going = 0, True
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        while going:
            loader.set_epoch(epoch)
            for images, labels in loader:
                lr = sweep.lr(len(sweep.losses))
                for group, ratio in zip(trainee.optimizer.param_groups, ratios, strict=True):
                    group["lr"] = lr * ratio
                x, y = engine.from_numpy(images), engine.from_numpy(labels)
                loss = F.cross_entropy(
                    trainee.model(x),
                    y,
                    weight=trainee.class_weight,
                    label_smoothing=config.schedule.label_smoothing,
                )
                trainee.optimizer.zero_grad()
                loss.backward()
                trainee.optimizer.step()
                going = sweep.record(lr, loss.item())
                if not going:
                    break
            epoch += 1
    _report(sweep, config_path, overrides, out, console)
    return sweep


def _report(
    sweep: Sweep, config_path: Path, overrides: Sequence[str], out: Path, console: Console
) -> None:
    stopped = "the loss exploded" if len(sweep.losses) < sweep.steps else "the last step"
    console.print(
        f"{len(sweep.losses)} batches, up to lr {sweep.lrs[-1]:.3g} ({stopped})", markup=False
    )
    suggested = sweep.suggestion()
    if suggested is None:
        console.print("no suggestion: the loss never fell (try a larger data.limit or end_lr)")
    else:
        kept = [o for o in overrides if not o.strip().startswith("optim.lr=")]
        command = ["finetune", "train", str(config_path), *kept, f"optim.lr={suggested:.2g}"]
        console.print(
            f"suggested learning rate: {suggested:.2g} (steepest fall of the smoothed loss)",
            markup=False,
        )
        console.print(f"to train with it: {shlex.join(command)}", markup=False, soft_wrap=True)
    _plot(sweep, suggested, out / PLOT, console)


def _plot(sweep: Sweep, suggested: float | None, path: Path, console: Console) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        console.print(f"(install finetune[plots] for {PLOT}, the loss against the learning rate)")
        return
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(sweep.lrs, sweep.losses)
    if suggested is not None:
        loss = sweep.losses[sweep.lrs.index(suggested)]
        axes.plot([suggested], [loss], "o", color="red", label=f"suggested: {suggested:.2g}")
        axes.legend()
    axes.set(xscale="log", xlabel="learning rate", ylabel="loss (smoothed)", title="lr-find")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
    console.print(f"wrote {path}", markup=False)
