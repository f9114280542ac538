"""From a validated config to the engine objects the loop trains: model, optimizer, scheduler.

The model is built as the seed does it by hand: load the weights, freeze by
name pattern, then swap in a new `fc` when the head does not have
`model.num_classes` outputs (or `model.new_head` asks for one), so a new head
is always trainable.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from cli.config import Config, ModelConfig, OptimConfig, ScheduleConfig
from cli.errors import ConfigError
from engine import models, nn, optim
from engine.io import WeightsError, load_state_dict_file
from engine.optim import lr_scheduler

ARCHS = {"resnet18": models.resnet18, "resnet34": models.resnet34, "resnet50": models.resnet50}


@dataclass
class Trainee:
    """What the loop trains, and the BatchNorm layers kept in eval mode while it does."""

    model: nn.Module
    optimizer: optim.Optimizer
    scheduler: lr_scheduler.LRScheduler | None
    frozen_batchnorms: list[nn.Module]

    def train_mode(self) -> None:
        """model.train(), except the BatchNorm layers that stay in eval mode."""
        self.model.train()
        for layer in self.frozen_batchnorms:
            layer.eval()

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def build(config: Config) -> Trainee:
    """Model, optimizer and scheduler for `config` (seed the engine first for a repeatable init)."""
    model = build_model(config.model)
    optimizer = build_optimizer(config.optim, model)
    return Trainee(
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(config.schedule, optimizer),
        frozen_batchnorms=frozen_batchnorms(model) if config.model.bn == "eval" else [],
    )


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


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> optim.Optimizer:
    """The optimizer over the trainable parameters, in the param groups `cfg.groups` define."""
    groups = param_groups(cfg, model)
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


def param_groups(cfg: OptimConfig, model: nn.Module) -> list[dict[str, Any]]:
    """Trainable parameters, each in the first group with a matching pattern.

    The parameters no group claims come first, with optim's top-level values.
    """
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError(["model.freeze: every parameter is frozen; nothing would train"])
    claimed: list[list[nn.Parameter]] = [[] for _ in cfg.groups]
    rest = []
    for name, param in trainable:
        index = next((i for i, g in enumerate(cfg.groups) if matches(name, g.params)), None)
        (rest if index is None else claimed[index]).append(param)
    empty = [
        f"optim.groups[{i}].params: {list(g.params)} match no trainable parameter"
        for i, (g, params) in enumerate(zip(cfg.groups, claimed, strict=True))
        if not params
    ]
    if empty:
        raise ConfigError(empty)
    groups = [{"params": rest}] if rest else []
    for group, params in zip(cfg.groups, claimed, strict=True):
        settings = {"lr": group.lr, "weight_decay": group.weight_decay}
        if cfg.name == "sgd":
            settings["momentum"] = group.momentum
        groups.append({"params": params, **{k: v for k, v in settings.items() if v is not None}})
    return groups


def build_scheduler(
    cfg: ScheduleConfig, optimizer: optim.Optimizer
) -> lr_scheduler.LRScheduler | None:
    """The per-epoch learning-rate schedule: a linear warm-up, then the main scheduler.

    Warm-up goes from lr / (warmup_epochs + 1) up to lr in `warmup_epochs`
    epochs; a cosine schedule then anneals to 0 over the remaining epochs.
    """
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
