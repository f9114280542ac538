"""Config to engine objects: weights, freezing before the head swap, frozen BatchNorm, param
groups, and the warm-up + main learning-rate schedule."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import engine
from cli.config import Config, ModelConfig, OptimConfig, ParamGroup, ScheduleConfig
from cli.training.build import Trainee, build, build_scheduler
from engine import nn, optim
from engine.io import save_safetensors
from engine.models import resnet18


@pytest.fixture(scope="module")
def five_class_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "five.safetensors"
    engine.manual_seed(1)
    save_safetensors(resnet18(num_classes=5).state_dict(), path)
    return path


def trainable(trainee: Trainee) -> list[str]:
    return [name for name, p in trainee.model.named_parameters() if p.requires_grad]


def test_weights_load_then_freeze_then_a_new_head(five_class_weights: Path):
    model = ModelConfig(weights=five_class_weights, num_classes=3, freeze=("*",), bn="eval")
    trainee = build(Config(model=model))
    assert trainable(trainee) == ["fc.weight", "fc.bias"]  # the new head trains, as in the seed
    assert trainee.model.fc.out_features == 3
    saved = engine.io.load_safetensors(five_class_weights)
    np.testing.assert_array_equal(
        trainee.model.conv1.weight.detach().numpy(), saved["conv1.weight"].numpy()
    )

    batchnorms = [m for m in trainee.model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(trainee.frozen_batchnorms) == len(batchnorms) == 20
    trainee.train_mode()
    assert trainee.model.training and not any(m.training for m in batchnorms)


def test_a_head_of_the_right_size_is_kept(five_class_weights: Path):
    trainee = build(Config(model=ModelConfig(weights=five_class_weights, num_classes=5)))
    saved = engine.io.load_safetensors(five_class_weights)
    np.testing.assert_array_equal(
        trainee.model.fc.weight.detach().numpy(), saved["fc.weight"].numpy()
    )
    assert trainee.frozen_batchnorms == []  # bn: train


def test_param_groups_take_the_first_matching_pattern():
    model = ModelConfig(num_classes=2, freeze=("*",), unfreeze=("layer4.*", "fc.*"))
    groups = (
        ParamGroup(params=("layer4.1.*",), lr=0.001, momentum=0.5),
        ParamGroup(params=("layer4.*", "fc.*"), weight_decay=0.1),
    )
    trainee = build(Config(model=model, optim=OptimConfig(lr=0.01, groups=groups)))
    names = {id(p): name for name, p in trainee.model.named_parameters()}
    first, second = trainee.optimizer.param_groups  # every trainable parameter is claimed
    for group, owners in ((first, {"layer4.1"}), (second, {"layer4.0", "fc.weight", "fc.bias"})):
        assert {".".join(names[id(p)].split(".")[:2]) for p in group["params"]} == owners
    assert (first["lr"], first["momentum"], first["weight_decay"]) == (0.001, 0.5, 0.0)
    assert (second["lr"], second["momentum"], second["weight_decay"]) == (0.01, 0.9, 0.1)


def test_unclaimed_parameters_come_first_with_the_top_level_values():
    groups = (ParamGroup(params=("layer*",), lr=0.001),)
    trainee = build(Config(model=ModelConfig(num_classes=2), optim=OptimConfig(groups=groups)))
    rest, layers = trainee.optimizer.param_groups
    assert rest["lr"] == 0.01 and layers["lr"] == 0.001
    assert len(rest["params"]) + len(layers["params"]) == len(list(trainee.model.parameters()))


def test_adam_gets_betas_and_eps():
    config = Config(model=ModelConfig(num_classes=2), optim=OptimConfig(name="adamw", eps=1e-6))
    group = build(config).optimizer.param_groups[0]
    assert isinstance(build(config).optimizer, optim.AdamW)
    assert group["eps"] == 1e-6 and tuple(group["betas"]) == (0.9, 0.999)


def lrs(schedule: ScheduleConfig, lr: float = 0.1) -> list[float]:
    """The learning rate of each epoch under `schedule`."""
    optimizer = optim.SGD([nn.Parameter(engine.zeros(1))], lr=lr)
    scheduler = build_scheduler(schedule, optimizer)
    seen = []
    for _ in range(schedule.epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        if scheduler is not None:
            scheduler.step()
    return seen


def test_warm_up_then_cosine():
    got = lrs(ScheduleConfig(epochs=6, scheduler="cosine", warmup_epochs=2))
    cosine = [0.05 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert got == pytest.approx([0.1 / 3, 0.2 / 3, *cosine])


def test_warm_up_then_step_and_warm_up_alone():
    got = lrs(ScheduleConfig(epochs=5, scheduler="step", step_size=2, gamma=0.5, warmup_epochs=1))
    assert got == pytest.approx([0.05, 0.1, 0.1, 0.05, 0.05])
    assert lrs(ScheduleConfig(epochs=4, warmup_epochs=3)) == pytest.approx(
        [0.025, 0.05, 0.075, 0.1]
    )
    assert lrs(ScheduleConfig(epochs=3)) == [0.1, 0.1, 0.1]


def test_schedules_match_torch(torch):
    from torch.optim import lr_scheduler as torch_schedulers

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.1)
    warmup = torch_schedulers.LinearLR(optimizer, start_factor=1 / 3, total_iters=2)
    cosine = torch_schedulers.CosineAnnealingLR(optimizer, T_max=5)
    scheduler = torch_schedulers.SequentialLR(optimizer, [warmup, cosine], milestones=[2])
    expected = []
    for _ in range(7):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs(ScheduleConfig(epochs=7, scheduler="cosine", warmup_epochs=2)) == expected
