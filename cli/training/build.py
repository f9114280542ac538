"""From a validated config to the engine objects the loop trains: model, optimizer, scheduler.

The model is built as the seed does it by hand: load the weights, freeze by
name pattern, then swap in a new `fc` when the head does not have
`model.num_classes` outputs (or `model.new_head` asks for one), so a new head
is always trainable. With `schedule.unfreeze_at_epoch`, the frozen parameters are
in the optimizer from the start, in param groups of their own at their scaled
learning rates: they are skipped (no gradient) until the loop unfreezes them, and
the one scheduler moves every group's rate through the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import engine
from cli.config import Config, ModelConfig, OptimConfig, ScheduleConfig
from cli.errors import ConfigError
from cli.training.schedule import Schedule
from engine import models, nn, optim
from engine.io import WeightsError, load_state_dict_file
from engine.optim import lr_scheduler

ARCHS = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50}


@dataclass
class Trainee:
    """What the loop trains, the BatchNorm layers kept in eval mode while it does, the
    parameters frozen until schedule.unfreeze_at_epoch, and the loss's class weights."""

    model: nn.Module
    optimizer: optim.Optimizer
    scheduler: Schedule
    frozen_batchnorms: list[nn.Module]
    later: list[nn.Parameter] = field(default_factory=list)
    class_weight: engine.Tensor | None = None

    @property
    def unfrozen(self) -> bool:
        """Whether the parameters frozen until unfreeze_at_epoch train now."""
        return bool(self.later) and self.later[0].requires_grad

    def unfreeze(self) -> None:
        for param in self.later:
            param.requires_grad = True

    def train_mode(self) -> None:
        """model.train(), except the BatchNorm layers that stay in eval mode."""
        self.model.train()
        for layer in self.frozen_batchnorms:
            layer.eval()

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def build(config: Config, batches_per_epoch: int = 1) -> Trainee:
    """Model, optimizer and scheduler for `config` (seed the engine first for a repeatable init).

    `batches_per_epoch` sizes a per-batch (onecycle) schedule.
    """
    model = build_model(config.model)
    later = unfrozen_later(model, config.schedule)
    optimizer = build_optimizer(config.optim, model, later)
    schedule = config.schedule
    return Trainee(
        model=model,
        optimizer=optimizer,
        scheduler=Schedule(
            build_scheduler(schedule, optimizer, batches_per_epoch),
            per_batch=schedule.scheduler == "onecycle",
            monitor="val_loss" if schedule.scheduler == "plateau" else None,
        ),
        frozen_batchnorms=frozen_batchnorms(model) if config.model.bn == "eval" else [],
        later=[param for name, param in model.named_parameters() if name in later],
    )


def unfrozen_later(model: nn.Module, cfg: ScheduleConfig) -> set[str]:
    """Names of the parameters frozen now that schedule.unfreeze_at_epoch will unfreeze."""
    if cfg.unfreeze_at_epoch is None:
        return set()
    later = {name for name, p in model.named_parameters() if not p.requires_grad}
    if not later:
        raise ConfigError(
            [
                "schedule.unfreeze_at_epoch: model.freeze leaves nothing frozen, so there is "
                "nothing to unfreeze (freeze the backbone first, e.g. model.freeze: ['*'])"
            ]
        )
    return later


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network with its weights loaded, frozen parameters marked, and the head sized."""
    state_dict = _load_weights(cfg) if cfg.weights is not None else None
    head = state_dict["fc.weight"].shape[0] if state_dict and "fc.weight" in state_dict else None
    model = ARCHS[cfg.arch](num_classes=head or cfg.num_classes)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as exc:
            problem = f"model.weights: {cfg.weights} does not fit {cfg.arch}: {exc}"
            raise ConfigError([problem]) from None
    freeze(model, cfg)
    if cfg.new_head or model.fc.out_features != cfg.num_classes:
        model.fc = nn.Linear(model.fc.in_features, cfg.num_classes)
    return model


def _load_weights(cfg: ModelConfig) -> dict[str, Any]:
    try:
        return load_state_dict_file(cfg.weights)
    except WeightsError as exc:
        raise ConfigError([f"model.weights: {exc}"]) from None


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    """Whether a parameter name matches any of the fnmatch patterns (case-sensitive)."""
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def freeze(model: nn.Module, cfg: ModelConfig) -> None:
    """Turn off requires_grad for parameters matching `freeze` but not `unfreeze`."""
    names = [name for name, _ in model.named_parameters()]
    _check_patterns(names, {"model.freeze": cfg.freeze, "model.unfreeze": cfg.unfreeze})
    for name, param in model.named_parameters():
        if matches(name, cfg.freeze) and not matches(name, cfg.unfreeze):
            param.requires_grad = False


def frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers whose parameters are all frozen."""
    return [
        layer
        for layer in model.modules()
        if isinstance(layer, nn.BatchNorm2d)
        and not any(p.requires_grad for p in layer.parameters())
    ]


def build_optimizer(
    cfg: OptimConfig, model: nn.Module, later: set[str] = frozenset()
) -> optim.Optimizer:
    """The optimizer over the trainable parameters and those in `later`, in param groups."""
    groups = param_groups(cfg, model, later)
    if cfg.name == "sgd":
        return optim.SGD(
            groups,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
    adam = {"adam": optim.Adam, "adamw": optim.AdamW}[cfg.name]
    return adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)


def param_groups(
    cfg: OptimConfig, model: nn.Module, later: set[str] = frozenset()
) -> list[dict[str, Any]]:
    """Trainable parameters (and those in `later`), each in the first group with a matching
    pattern, split by learning-rate scale (`lr_scale`), the largest scale first.

    The parameters no group claims come first, with optim's top-level values.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or n in later]
    if len(named) == len(later):
        raise ConfigError(["model.freeze: every parameter is frozen; nothing would train"])
    claimed: list[list[tuple[str, nn.Parameter]]] = [[] for _ in cfg.groups]
    rest = []
    for name, param in named:
        index = next((i for i, g in enumerate(cfg.groups) if matches(name, g.params)), None)
        (rest if index is None else claimed[index]).append((name, param))
    empty = [
        f"optim.groups[{i}].params: {list(g.params)} match no trainable parameter"
        for i, (g, params) in enumerate(zip(cfg.groups, claimed, strict=True))
        if not params
    ]
    if empty:
        raise ConfigError(empty)
    groups = _scaled(cfg, rest, {}, later)
    for group, params in zip(cfg.groups, claimed, strict=True):
        settings = {"lr": group.lr, "weight_decay": group.weight_decay}
        if cfg.name == "sgd":
            settings["momentum"] = group.momentum
        settings = {k: v for k, v in settings.items() if v is not None}
        groups += _scaled(cfg, params, settings, later)
    return groups


def _scaled(
    cfg: OptimConfig,
    named: list[tuple[str, nn.Parameter]],
    settings: dict[str, Any],
    later: set[str],
) -> list[dict[str, Any]]:
    """One param group per learning-rate scale among `named`, the largest first."""
    by_scale: dict[float, list[nn.Parameter]] = {}
    for name, param in named:
        by_scale.setdefault(lr_scale(name, cfg, later), []).append(param)
    groups = []
    for scale in sorted(by_scale, reverse=True):
        scaled = {"lr": settings.get("lr", cfg.lr) * scale} if scale != 1 else {}
        groups.append({"params": by_scale[scale], **settings, **scaled})
    return groups


RESNET_STAGES = ("fc", "layer4", "layer3", "layer2", "layer1")
"""The ResNet's stages from the head back; what comes before layer1 (conv1, bn1) is the last."""


def lr_scale(name: str, cfg: OptimConfig, later: set[str]) -> float:
    """A parameter's learning rate relative to its group's: optim.layer_decay to the power of
    its stage's distance from the head, or optim.backbone_lr_scale if it trains only after
    schedule.unfreeze_at_epoch, else 1."""
    if cfg.layer_decay is not None:
        top = name.split(".")[0]
        depth = RESNET_STAGES.index(top) if top in RESNET_STAGES else len(RESNET_STAGES)
        return cfg.layer_decay**depth
    return cfg.backbone_lr_scale if name in later else 1.0


def build_scheduler(
    cfg: ScheduleConfig, optimizer: optim.Optimizer, batches_per_epoch: int = 1
) -> lr_scheduler.LRScheduler | None:
    """The learning-rate schedule: a linear warm-up, then the main scheduler.

    Warm-up goes from lr / (warmup_epochs + 1) up to lr in `warmup_epochs`
    epochs; a cosine schedule then anneals to 0 over the remaining epochs.
    One cycle spans every batch of the run, each group peaking at its own lr
    after warmup_epochs (or torch's 30% of the run); plateau lowers the rates
    by `gamma` after `plateau_patience` epochs without a lower validation loss.
    """
    if cfg.scheduler == "onecycle":
        total = cfg.epochs * batches_per_epoch
        if total < 4:
            raise ConfigError(
                [f"schedule.scheduler: onecycle needs at least 4 training steps, got {total}"]
            )
        rise = cfg.warmup_epochs * batches_per_epoch if cfg.warmup_epochs else 0.3 * total
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[group["lr"] for group in optimizer.param_groups],
            total_steps=total,
            pct_start=min(max(rise, 2), total - 2) / total,  # torch divides by 0 at 1 step
            cycle_momentum="betas" in optimizer.defaults or optimizer.defaults["momentum"] > 0,
        )
    if cfg.scheduler == "plateau":
        return lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=cfg.gamma, patience=cfg.plateau_patience
        )
    warmup = None
    if cfg.warmup_epochs:
        warmup = lr_scheduler.LinearLR(
            optimizer, start_factor=1 / (cfg.warmup_epochs + 1), total_iters=cfg.warmup_epochs
        )
    main = None
    if cfg.scheduler == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    elif cfg.scheduler == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs - cfg.warmup_epochs)
    if warmup is not None and main is not None:
        return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[cfg.warmup_epochs])
    return main if warmup is None else warmup


def _check_patterns(names: list[str], patterns: dict[str, tuple[str, ...]]) -> None:
    """A pattern matching no parameter is most likely a typo: report it with example names."""
    problems = [
        f"{key}[{i}]: {pattern!r} matches no parameter (names look like {names[0]!r}, "
        f"{names[-1]!r})"
        for key, listed in patterns.items()
        for i, pattern in enumerate(listed)
        if not any(fnmatchcase(name, pattern) for name in names)
    ]
    if problems:
        raise ConfigError(problems)
