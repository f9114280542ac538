"""The fine-tuning recipe's parts, without training: unfreezing and its param groups, layer
decay, early stopping and the best epoch, onecycle and plateau from the config, class weights,
the balanced sampler, and the config problems reported at once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import engine
from cli.config import (
    Config,
    DataConfig,
    EarlyStoppingConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    load_config,
)
from cli.data import DataLoader
from cli.data.sampler import BalancedSampler
from cli.errors import ConfigError
from cli.training.build import build
from cli.training.class_weights import class_weights
from cli.training.recipe import Recipe
from cli.training.run_folder import TrainerState
from engine.optim import lr_scheduler

HEAD_ONLY = ModelConfig(num_classes=3, freeze=("*",), new_head=True)


def recipe(config: Config, notes: list[str] | None = None) -> Recipe:
    engine.manual_seed(0)
    state = TrainerState(data_seed=0, data_identity="")
    return Recipe(config, build(config), state, note=(notes if notes is not None else []).append)


def group_of(trainee, name: str) -> dict:  # noqa: ANN001
    param = dict(trainee.model.named_parameters())[name]
    (group,) = [g for g in trainee.optimizer.param_groups if any(p is param for p in g["params"])]
    return group


def row(epoch: int, val_loss: float, val_acc: float) -> dict:
    return {"epoch": epoch, "val_loss": val_loss, "val_acc": val_acc}


def test_unfreeze_puts_the_backbone_in_the_optimizer_frozen_at_a_scaled_lr():
    config = Config(
        model=HEAD_ONLY,
        optim=OptimConfig(lr=0.02, backbone_lr_scale=0.25),
        schedule=ScheduleConfig(epochs=4, unfreeze_at_epoch=2),
    )
    notes: list[str] = []
    r = recipe(config, notes)
    trainee = r.trainee
    head, backbone = trainee.optimizer.param_groups
    assert head["lr"] == 0.02 and backbone["lr"] == 0.02 * 0.25
    assert len(head["params"]) == 2 and not any(p.requires_grad for p in backbone["params"])
    assert len(backbone["params"]) == len(list(trainee.model.parameters())) - 2
    assert not r.enter(0) and not r.enter(1) and r.state.stage == 0
    assert r.enter(2) and r.state.stage == 1
    assert all(p.requires_grad for p in trainee.model.parameters())
    assert not r.enter(3) and "from epoch 3, every parameter trains" in notes[0]


def test_without_unfreeze_the_frozen_parameters_stay_out_of_the_optimizer():
    trainee = recipe(Config(model=HEAD_ONLY)).trainee
    (group,) = trainee.optimizer.param_groups
    assert len(group["params"]) == 2 and trainee.later == []


def test_unfreeze_with_nothing_frozen_is_refused():
    config = Config(model=ModelConfig(num_classes=3), schedule=ScheduleConfig(unfreeze_at_epoch=1))
    with pytest.raises(ConfigError, match="nothing to unfreeze"):
        build(config)


def test_layer_decay_scales_each_stage_from_the_head_back():
    config = Config(
        model=HEAD_ONLY,
        optim=OptimConfig(lr=0.1, layer_decay=0.5),
        schedule=ScheduleConfig(unfreeze_at_epoch=1),
    )
    trainee = recipe(config).trainee
    depths = {"fc.weight": 0, "layer4.1.conv2.weight": 1, "layer3.0.bn1.bias": 2}
    depths |= {"layer2.0.downsample.0.weight": 3, "layer1.1.conv1.weight": 4}
    depths |= {"conv1.weight": 5, "bn1.weight": 5}
    for name, depth in depths.items():
        assert group_of(trainee, name)["lr"] == pytest.approx(0.1 * 0.5**depth), name
    assert trainee.optimizer.param_groups[0]["lr"] == 0.1  # the head's group first


def test_early_stopping_counts_epochs_without_improvement_beyond_min_delta():
    rule = EarlyStoppingConfig(metric="val_loss", patience=2, min_delta=0.05)
    notes: list[str] = []
    r = recipe(Config(model=HEAD_ONLY, schedule=ScheduleConfig(early_stopping=rule)), notes)
    for epoch, loss in enumerate([1.0, 0.9, 0.88, 0.86], start=1):  # 0.88, 0.86: not by > 0.05
        r.end_epoch(row(epoch, loss, 0.5))
        assert r.state.stopped_early == (epoch == 4)
    assert r.state.stale_epochs == 2 and r.state.stopping_best == 0.9
    assert "no val_loss improvement for 2 epoch(s); stopping after epoch 4" in notes[-1]


def test_early_stopping_in_the_head_stage_unfreezes_instead():
    schedule = ScheduleConfig(
        epochs=10,
        unfreeze_at_epoch=8,
        early_stopping=EarlyStoppingConfig(metric="val_acc", patience=1),
    )
    r = recipe(Config(model=HEAD_ONLY, schedule=schedule))
    r.end_epoch(row(1, 1.0, 0.5))
    r.end_epoch(row(2, 1.0, 0.5))
    assert r.state.stage == 1 and not r.state.stopped_early
    assert r.state.stopping_best is None and r.state.stale_epochs == 0  # a fresh count
    assert r.enter(2)
    r.end_epoch(row(3, 1.0, 0.6))
    r.end_epoch(row(4, 1.0, 0.6))
    assert r.state.stopped_early


@pytest.mark.parametrize(("metric", "best"), [("val_acc", 3), ("val_loss", 2)])
def test_best_metric_chooses_the_best_epoch(metric: str, best: int):
    r = recipe(Config(model=HEAD_ONLY, run=RunConfig(best_metric=metric)))
    for epoch, (loss, acc) in enumerate([(0.9, 0.5), (0.4, 0.6), (0.5, 0.7), (0.6, 0.7)], 1):
        r.is_best(row(epoch, loss, acc))
    assert r.state.best_epoch == best


def test_onecycle_spans_every_batch_and_plateau_watches_the_validation_loss():
    onecycle = ScheduleConfig(epochs=3, scheduler="onecycle", warmup_epochs=1)
    trainee = build(Config(model=HEAD_ONLY, schedule=onecycle), batches_per_epoch=7)
    scheduler = trainee.scheduler.scheduler
    assert isinstance(scheduler, lr_scheduler.OneCycleLR) and trainee.scheduler.per_batch
    assert scheduler.total_steps == 21 and scheduler._schedule_phases[0]["end_step"] == 6
    group = trainee.optimizer.param_groups[0]
    lrs = []
    for _ in range(20):
        trainee.scheduler.after_epoch({"val_loss": 1.0, "val_acc": 0.0})  # no effect
        trainee.scheduler.after_batch()
        lrs.append(group["lr"])
    assert max(lrs) == lrs[6 - 1] == 0.01  # the peak after warmup_epochs: one epoch's 7 steps
    with pytest.raises(ConfigError, match="onecycle needs at least 4 training steps, got 3"):
        build(Config(model=HEAD_ONLY, schedule=onecycle))

    plateau = ScheduleConfig(scheduler="plateau", gamma=0.5, plateau_patience=1)
    schedule = recipe(Config(model=HEAD_ONLY, schedule=plateau)).trainee.scheduler
    group = schedule.scheduler.optimizer.param_groups[0]
    for loss in (1.0, 1.0, 0.5, 0.6):
        schedule.after_batch()  # plateau steps once an epoch only
        schedule.after_epoch({"val_loss": loss, "val_acc": 0.0})
    assert group["lr"] == 0.01
    schedule.after_epoch({"val_loss": None, "train_loss": 0.7, "val_acc": None})
    assert group["lr"] == 0.005  # without validation images, the training loss


def test_auto_class_weights_are_scikit_learns_balanced():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    weights = class_weights("auto", ["a", "b", "c"], labels)
    counts = np.bincount(labels)
    assert weights.dtype == np.float32
    np.testing.assert_allclose(weights * counts, len(labels) / 3)  # n / (k * count)
    named = class_weights({"c": 4.0}, ["a", "b", "c"], labels)
    np.testing.assert_array_equal(named, [1.0, 1.0, 4.0])
    with pytest.raises(ConfigError, match="no class 'd'"):
        class_weights({"d": 2.0}, ["a", "b", "c"], labels)
    with pytest.raises(ConfigError, match="none of 'c'"):
        class_weights("auto", ["a", "b", "c"], labels[:9])


def test_class_weights_weigh_the_loss():
    logits = engine.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = engine.tensor([0, 1, 1])
    weight = engine.from_numpy(class_weights({"b": 3.0}, ["a", "b"], np.array([0, 1])))
    plain = engine.nn.functional.cross_entropy(logits, target, reduction="none").numpy()
    weighted = engine.nn.functional.cross_entropy(logits, target, weight=weight).item()
    assert weighted == pytest.approx((plain[0] + 3 * plain[1] + 3 * plain[2]) / 7)


def test_the_balanced_sampler_evens_out_the_classes_deterministically():
    labels = np.array([0] * 90 + [1] * 10)
    sampler = BalancedSampler(labels, seed=5)
    first = sampler.order(0)
    assert len(first) == 100
    np.testing.assert_array_equal(first, BalancedSampler(labels, seed=5).order(0))
    assert not np.array_equal(first, sampler.order(1))
    drawn = np.concatenate([sampler.order(e) for e in range(20)])
    share = np.mean(labels[drawn] == 1)
    assert 0.45 < share < 0.55  # 10% of the images, half of the draws

    class Numbers:
        deterministic = True

        def __len__(self) -> int:
            return len(labels)

        def get(self, index: int, rng: object = None) -> tuple[np.ndarray, int]:
            return np.array([index], dtype=np.float32), int(labels[index])

    loader = DataLoader(Numbers(), 32, shuffle=True, seed=5, sampler=sampler)
    loader.set_epoch(3)
    seen = np.concatenate([images[:, 0] for images, _ in loader]).astype(int)
    np.testing.assert_array_equal(seen, sampler.order(3))


def test_recipe_problems_are_reported_at_once(tmp_path: Path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        """
data: {classes: ["3", "5"]}
schedule:
  early_stopping: {patience: 0, metric: val_accuracy}
  class_weights: {3: 2.0, "7": 1.5, "5": 0}
"""
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = "\n".join(caught.value.problems)
    assert "schedule.early_stopping.patience: must be >= 1, got 0" in found
    assert "schedule.early_stopping.metric: expected one of 'val_loss', 'val_acc'" in found
    assert "schedule.class_weights: no class '7' in the data (classes: 3, 5)" in found
    assert "schedule.class_weights.5: must be > 0" in found
    assert len(caught.value.problems) == 4
    path.write_text("schedule: {scheduler: plateau, warmup_epochs: 1, gamma: 2}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = "\n".join(caught.value.problems)
    assert "schedule.warmup_epochs: cannot be combined with scheduler 'plateau'" in found
    assert "schedule.gamma: must be < 1 with scheduler 'plateau'" in found


def test_class_weights_take_auto_or_a_mapping_and_digit_class_names_unquoted(tmp_path: Path):
    path = tmp_path / "weights.yaml"
    path.write_text("schedule: {class_weights: {3: 2}}\ndata: {sampler: balanced}\n")
    config = load_config(path)
    assert config.schedule.class_weights == {"3": 2.0} and config.data.sampler == "balanced"
    assert load_config(path, ["schedule.class_weights=auto"]).schedule.class_weights == "auto"
    with pytest.raises(ConfigError, match="expected one of 'auto', got 'balanced', or a mapping"):
        load_config(path, ["schedule.class_weights=balanced"])
    assert DataConfig().sampler == "shuffle" and RunConfig().best_metric == "val_acc"
