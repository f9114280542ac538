"""The run configuration: typed sections, YAML loading, dotted overrides, validation.

A config file is a YAML mapping of sections (model, data, optim, schedule, run).
Each section is a frozen dataclass, and one validator walks the field types
(bool, int, float, str, Path, Literal, Optional, tuples, nested sections, plus
`Annotated` rules such as ranges), so a new key is just a new field. Every
problem is collected and reported at once in a `ConfigError`.

Paths: a relative input path (model.weights, data.root) is looked up next to
the config file first, then in the current directory (a bundled config's only
in the current directory); run.output_dir is relative to the current directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import operator
import re
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from cli import bundled
from cli.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading `1e-3` as a float (as YAML 1.2 and Python do)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


# ---------------------------------------------------------------- value rules


class _Invalid(Exception):
    """A value that does not fit its field; the message leaves out the key."""


@dataclass(frozen=True)
class Range:
    """Bounds on a number: `ge`/`le` inclusive, `gt`/`lt` exclusive."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def apply(self, value: float, ctx: _Context) -> float:
        bounds = [
            (self.ge, operator.ge, ">="),
            (self.gt, operator.gt, ">"),
            (self.le, operator.le, "<="),
            (self.lt, operator.lt, "<"),
        ]
        bounds = [(b, holds, sign) for b, holds, sign in bounds if b is not None]
        if not all(holds(value, b) for b, holds, _ in bounds):
            wanted = " and ".join(f"{sign} {b:g}" for b, _, sign in bounds)
            raise _Invalid(f"must be {wanted}, got {value!r}")
        return value


@dataclass(frozen=True)
class ClassNames:
    """Mapping keys that must be class names of the data, when the data section names them."""

    def apply(self, value: dict[str, Any], ctx: _Context) -> dict[str, Any]:
        data = ctx.sections.get("data")
        known = None if data is None else known_classes(data)
        problem = None if known is None else unknown_classes(value, known)
        if problem:
            raise _Invalid(problem)
        return value


def unknown_classes(names: Iterable[str], known: Sequence[str]) -> str | None:
    """What is wrong with `names` that are not among the class names `known`, if any."""
    unknown = [name for name in names if name not in known]
    if not unknown:
        return None
    hint = _did_you_mean(unknown[0], known) if len(unknown) == 1 else ""
    return (
        f"no class {', '.join(map(repr, unknown))} in the data (classes: {', '.join(known)}){hint}"
    )


@dataclass(frozen=True)
class Existing:
    """A path that must exist (`kind` "file", "dir" or "any"), next to the config or in the CWD."""

    kind: Literal["file", "dir", "any"] = "any"

    def apply(self, value: Path, ctx: _Context) -> Path:
        candidates = [value] if value.is_absolute() else [d / value for d in ctx.search_dirs()]
        for candidate in candidates:
            if candidate.exists():
                found = candidate.resolve()
                if self.kind == "file" and not found.is_file():
                    raise _Invalid(f"expected a file, got the folder {found}")
                if self.kind == "dir" and not found.is_dir():
                    raise _Invalid(f"expected a folder, got the file {found}")
                return found
        if ctx.check_files:
            where = " or ".join(map(str, candidates))
            raise _Invalid(f"not found: {value} (looked for {where})")
        return candidates[0].absolute()


@dataclass(frozen=True)
class Former:
    """An older form of a field: a mapping of only `section`'s keys (or null) is checked as
    that section, then turned into the field's value by its `upgrade()`."""

    section: type

    def matches(self, value: Any) -> bool:
        names = {f.name for f in dataclasses.fields(self.section)}
        return value is None or isinstance(value, Mapping) and all(key in names for key in value)

    def apply(self, value: Any, ctx: _Context) -> Any:
        return value  # a value in the current form


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Coefficient = Annotated[float, Range(ge=0, lt=1)]
AreaFraction = Annotated[float, Range(gt=0, le=1)]
Probability = Annotated[float, Range(ge=0, le=1)]
MagnitudeBins = Annotated[int, Range(ge=2)]
Interpolation = Literal["nearest", "bilinear"]
Patterns = tuple[str, ...]


# ------------------------------------------------------------------- sections


class _Section:
    """Base of the config sections: cross-field checks that one field's type cannot express."""

    def problems(self) -> Iterable[tuple[str, str]]:
        """(key within this section, message) for each cross-field problem."""
        return ()


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The network and which of its parameters train.

    `freeze` and `unfreeze` are fnmatch patterns over parameter names
    ("*", "layer4.*", "fc.*"): a parameter matching a freeze pattern is frozen,
    unless it also matches an unfreeze pattern. `bn` is the mode ("train" or
    "eval") of BatchNorm layers whose parameters are all frozen. The head `fc`
    is replaced by a new one after freezing when the weights' head does not
    have `num_classes` outputs, or always with `new_head` (a new task with as
    many classes as the old one).
    """

    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    weights: Annotated[Path, Existing("file")] | None = None
    num_classes: PositiveInt = 10
    freeze: Patterns = ()
    unfreeze: Patterns = ()
    bn: Literal["train", "eval"] = "train"
    new_head: bool = False


class Named(_Section):
    """A section chosen by name from a union of them, as in a list of transforms: written as
    its name alone (default options) or as a one-key mapping {name: {option: value}}."""

    name: ClassVar[str]


class _ScaleAndRatio(_Section):
    """Options with [min, max] ranges `scale` and `ratio` (of a random box)."""

    def problems(self) -> Iterator[tuple[str, str]]:
        for name in ("scale", "ratio"):
            low, high = getattr(self, name)
            if low > high:
                yield name, f"expected [min, max], got [{low:g}, {high:g}]"


@dataclass(frozen=True)
class RandomResizedCropOptions(Named, _ScaleAndRatio):
    """torchvision's RandomResizedCrop to data.image_size, instead of resize and center crop."""

    name: ClassVar[str] = "random_resized_crop"
    scale: tuple[AreaFraction, AreaFraction] = (0.08, 1.0)
    ratio: tuple[PositiveFloat, PositiveFloat] = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class HorizontalFlipOptions(Named):
    """torchvision's RandomHorizontalFlip."""

    name: ClassVar[str] = "horizontal_flip"
    p: Probability = 0.5


@dataclass(frozen=True)
class ColorJitterOptions(Named):
    """torchvision's ColorJitter: factors drawn from [max(0, 1 - x), 1 + x], hue from [-h, h]."""

    name: ClassVar[str] = "color_jitter"
    brightness: NonNegativeFloat = 0.0
    contrast: NonNegativeFloat = 0.0
    saturation: NonNegativeFloat = 0.0
    hue: Annotated[float, Range(ge=0, le=0.5)] = 0.0


@dataclass(frozen=True)
class TrivialAugmentOptions(Named):
    """torchvision's TrivialAugmentWide."""

    name: ClassVar[str] = "trivial_augment"
    num_magnitude_bins: MagnitudeBins = 31
    interpolation: Interpolation = "nearest"


@dataclass(frozen=True)
class RandAugmentOptions(Named):
    """torchvision's RandAugment."""

    name: ClassVar[str] = "rand_augment"
    num_ops: NonNegativeInt = 2
    magnitude: NonNegativeInt = 9
    num_magnitude_bins: MagnitudeBins = 31
    interpolation: Interpolation = "nearest"

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.magnitude >= self.num_magnitude_bins:
            bins = self.num_magnitude_bins
            yield (
                "magnitude",
                f"must be less than num_magnitude_bins ({bins}), got {self.magnitude}",
            )


@dataclass(frozen=True)
class RandomErasingOptions(Named, _ScaleAndRatio):
    """torchvision's RandomErasing, on the normalised image (`value` 0 is the mean colour)."""

    name: ClassVar[str] = "random_erasing"
    p: Probability = 0.5
    scale: tuple[Probability, Probability] = (0.02, 0.33)
    ratio: tuple[PositiveFloat, PositiveFloat] = (0.3, 3.3)
    value: float = 0.0


@dataclass(frozen=True)
class MixupOptions(Named):
    """torchvision's MixUp on each training batch (probability `p`), giving soft targets."""

    name: ClassVar[str] = "mixup"
    alpha: PositiveFloat = 1.0
    p: Probability = 1.0


@dataclass(frozen=True)
class CutmixOptions(Named):
    """torchvision's CutMix on each training batch (probability `p`), giving soft targets."""

    name: ClassVar[str] = "cutmix"
    alpha: PositiveFloat = 1.0
    p: Probability = 1.0


Augmentation = (
    RandomResizedCropOptions
    | HorizontalFlipOptions
    | ColorJitterOptions
    | TrivialAugmentOptions
    | RandAugmentOptions
    | RandomErasingOptions
    | MixupOptions
    | CutmixOptions
)


@dataclass(frozen=True)
class AugmentConfig(_ScaleAndRatio):
    """The older mapping form of data.augment, still accepted: turned into the list form."""

    random_resized_crop: bool = False
    scale: tuple[AreaFraction, AreaFraction] = (0.08, 1.0)
    ratio: tuple[PositiveFloat, PositiveFloat] = (3 / 4, 4 / 3)
    hflip: bool = False

    def upgrade(self) -> tuple[Augmentation, ...]:
        crop = (
            [RandomResizedCropOptions(self.scale, self.ratio)] if self.random_resized_crop else []
        )
        return (*crop, *([HorizontalFlipOptions()] if self.hflip else []))


@dataclass(frozen=True)
class DataConfig(_Section):
    """Where images come from and how they become tensors.

    Evaluation (and training without random_resized_crop) resizes the shorter
    side to `resize` and center-crops `image_size`, as torchvision's eval
    transform does. `classes` keeps only the listed classes, re-indexed
    0..k-1 in the listed order. `limit` caps the number of training images.
    `num_workers` threads decode images. `cache_features` allows training to
    compute a frozen backbone's features once, when nothing changes them.
    `sampler: balanced` draws each epoch's images with replacement, each with a
    probability inversely proportional to its class's frequency.
    """

    dataset: Literal["digits", "imagefolder", "cifar10", "npz"] = "digits"
    root: Annotated[Path, Existing()] | None = None
    val_fraction: Coefficient = 0.2
    classes: tuple[str, ...] | None = None
    image_size: PositiveInt = 224
    resize: PositiveInt = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.229, 0.224, 0.225)
    augment: Annotated[tuple[Augmentation, ...], Former(AugmentConfig)] = ()
    batch_size: PositiveInt = 32
    num_workers: NonNegativeInt = 2
    on_bad_image: Literal["stop", "skip"] = "stop"
    cache_features: bool = True
    limit: PositiveInt | None = None
    micro_batches: PositiveInt = 1
    sampler: Literal["shuffle", "balanced"] = "shuffle"

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.dataset != "digits":
            needs_folder = self.dataset != "npz"
            if self.root is None:
                yield "root", f"required for dataset {self.dataset!r}"
            elif self.root.exists() and self.root.is_dir() != needs_folder:
                kind = "a folder" if needs_folder else "an .npz file"
                yield "root", f"dataset {self.dataset!r} needs {kind}, got {self.root}"
        if self.resize < self.image_size:
            yield "resize", f"must be >= data.image_size ({self.image_size}), got {self.resize}"
        if self.classes is not None:
            repeated = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if not self.classes:
                yield "classes", "must list at least one class (or be null for all)"
            elif repeated:
                yield "classes", f"listed more than once: {', '.join(map(repr, repeated))}"
        names = [step.name for step in self.augment]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            yield "augment", f"listed more than once: {', '.join(repeated)}"


@dataclass(frozen=True)
class ParamGroup(_Section):
    """Hyper-parameters for the parameters whose names match `params`.

    A parameter joins the first group with a matching pattern; parameters in
    no group use optim's top-level values. Unset values fall back to those too.
    """

    params: Patterns
    lr: PositiveFloat | None = None
    momentum: Coefficient | None = None
    weight_decay: NonNegativeFloat | None = None

    def problems(self) -> Iterator[tuple[str, str]]:
        if not self.params:
            yield "params", "must list at least one name pattern"


@dataclass(frozen=True)
class OptimConfig(_Section):
    """The optimizer, as torch.optim would be built. `betas`/`eps` are Adam's, `momentum` SGD's.

    `backbone_lr_scale` is the learning rate, relative to the head's, of the parameters that
    schedule.unfreeze_at_epoch unfreezes. `layer_decay` r instead gives each ResNet stage,
    going back from the head, r times the learning rate of the next one (timm's
    --layer-decay: fc 1, layer4 r, layer3 r^2, ..., conv1/bn1 r^5), whether or not
    anything is frozen first.
    """

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: PositiveFloat = 0.01
    momentum: Coefficient = 0.9
    weight_decay: NonNegativeFloat = 0.0
    nesterov: bool = False
    betas: tuple[Coefficient, Coefficient] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    groups: tuple[ParamGroup, ...] = ()
    backbone_lr_scale: PositiveFloat = 0.1
    layer_decay: Annotated[float, Range(gt=0, le=1)] | None = None

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            yield "nesterov", "needs optim.name 'sgd' and optim.momentum > 0"


@dataclass(frozen=True)
class EarlyStoppingConfig(_Section):
    """Stop once `metric` has not improved by more than `min_delta` for `patience` epochs."""

    metric: Literal["val_loss", "val_acc"] = "val_loss"
    patience: PositiveInt = 3
    min_delta: NonNegativeFloat = 0.0


@dataclass(frozen=True)
class ScheduleConfig(_Section):
    """How long to train, how the learning rate moves, and the fine-tuning recipe.

    Schedulers step per epoch, except onecycle (per batch, torch's OneCycleLR peaking at
    optim.lr after warmup_epochs, or 30% of the run) and plateau (ReduceLROnPlateau on
    the validation loss: lr times `gamma` after `plateau_patience` epochs without
    improvement). `unfreeze_at_epoch` N trains what model.freeze leaves trainable until
    epoch N, then every parameter. `class_weights` weighs the loss per class: "auto"
    (inverse frequency, scikit-learn's "balanced") or {class name: weight}, others 1.
    """

    epochs: PositiveInt = 10
    scheduler: Literal["none", "step", "cosine", "onecycle", "plateau"] = "none"
    step_size: PositiveInt = 30
    gamma: PositiveFloat = 0.1
    plateau_patience: NonNegativeInt = 2
    warmup_epochs: NonNegativeInt = 0
    label_smoothing: Annotated[float, Range(ge=0, le=1)] = 0.0
    grad_clip: PositiveFloat | None = None
    unfreeze_at_epoch: NonNegativeInt | None = None
    early_stopping: EarlyStoppingConfig | None = None
    class_weights: Literal["auto"] | Annotated[dict[str, PositiveFloat], ClassNames()] | None = None

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            yield "warmup_epochs", f"must be less than schedule.epochs ({self.epochs})"
        if self.warmup_epochs and self.scheduler == "plateau":
            yield "warmup_epochs", "cannot be combined with scheduler 'plateau'; set it to 0"
        if self.scheduler == "plateau" and self.gamma >= 1:
            yield (
                "gamma",
                f"must be < 1 with scheduler 'plateau' (the lr's factor), got {self.gamma}",
            )


@dataclass(frozen=True)
class RunConfig(_Section):
    """Seed and outputs. A null output_dir becomes runs/<config name>-<YYYYmmdd-HHMMSS>.

    `plots` draws the run's pictures at the end of training; `tensorboard` writes event
    files under RUN/tensorboard/.
    `best_metric` chooses the epoch best.safetensors keeps (the training one without
    validation images).
    """

    seed: NonNegativeInt = 0
    output_dir: Path | None = None
    log_every: PositiveInt = 10
    checkpoint_every: PositiveInt = 1
    plots: bool = True
    tensorboard: bool = False
    best_metric: Literal["val_acc", "val_loss"] = "val_acc"


@dataclass(frozen=True)
class DistConfig(_Section):
    """Data-parallel training over processes (cli.training.distributed).

    `backend` auto uses MPI when a launcher (mpiexec, srun) started more than one process;
    `batchnorm` sync normalises with the statistics of the whole global batch, local with
    each shard's; `timeout_s` aborts a job whose processes stop hearing from each other.
    """

    backend: Literal["auto", "none", "mpi"] = "auto"
    batchnorm: Literal["local", "sync"] = "local"
    timeout_s: PositiveFloat = 600.0


@dataclass(frozen=True)
class Config(_Section):
    """A whole, validated run configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.dist.batchnorm == "sync" and self.data.micro_batches > 1:
            yield (
                "dist.batchnorm",
                "sync needs each process's whole part of a batch at once; "
                "set data.micro_batches=1 (or dist.batchnorm=local)",
            )

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        source: str = "config",
        base_dir: Path | None = None,
        check_files: bool = True,
    ) -> Config:
        """Validate plain data (e.g. a run folder's saved config); raise ConfigError on problems."""
        return _validate(data, _Context(source, base_dir, check_files))


def known_classes(data: DataConfig) -> tuple[str, ...] | None:
    """The class names a data config trains on, when known without reading the data."""
    if data.classes is not None:
        return data.classes
    return tuple(map(str, range(10))) if data.dataset == "digits" else None


# ------------------------------------------------------------------ validator

_MISSING = object()
_LEAF_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass
class _Context:
    """Where values come from, and the problems found so far."""

    source: str
    base_dir: Path | None
    check_files: bool
    problems: list[str] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)  # those converted so far, by key

    def search_dirs(self) -> list[Path]:
        dirs = (self.base_dir, Path.cwd())
        return list(dict.fromkeys(d.absolute() for d in dirs if d is not None))

    def report(self, key: str, message: str) -> None:
        origins = [text for k, text in self.overrides.items() if _nested(key, k) or _nested(k, key)]
        suffix = f" (set by override '{origins[-1]}')" if origins else ""
        self.problems.append(f"{self.source}: {key}: {message}{suffix}")


def _nested(key: str, outer: str) -> bool:
    return key == outer or key.startswith((outer + ".", outer + "["))


def _join(key: str, name: object) -> str:
    return f"{key}.{name}" if key else str(name)


def _did_you_mean(word: str, options: Iterable[str]) -> str:
    by_lower = {o.lower(): o for o in options}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls, include_extras=True)


def _validate(data: Any, ctx: _Context) -> Config:
    config = _check(Config, data, "", ctx)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return config


def _check(tp: Any, value: Any, key: str, ctx: _Context) -> Any:
    """Return `value` converted to type `tp`, or _MISSING after reporting why it does not fit."""
    try:
        return _convert(tp, value, key, ctx)
    except _Invalid as problem:
        ctx.report(key or "config", str(problem))
        return _MISSING


def _convert(tp: Any, value: Any, key: str, ctx: _Context) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_section(tp, value, key, ctx)
    if origin is Annotated:
        former = next((r for r in tp.__metadata__ if isinstance(r, Former)), None)
        if former is not None and former.matches(value):
            old = _convert(former.section, value, key, ctx)
            return _MISSING if old is _MISSING else old.upgrade()
        value = _convert(args[0], value, key, ctx)
        for rule in tp.__metadata__:
            value = value if value is _MISSING else rule.apply(value, ctx)
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, key, ctx)
        if all(isinstance(a, type) and issubclass(a, Named) for a in inner):
            return _convert_named(inner, value, key, ctx)
        return _convert_union(inner, value, key, ctx)
    if origin is dict:
        return _convert_mapping(args[1], value, key, ctx)
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        hint = _did_you_mean(value, args) if isinstance(value, str) else ""
        raise _Invalid(f"expected one of {', '.join(map(repr, args))}, got {value!r}{hint}")
    if origin is tuple:
        return _convert_list(args, value, key, ctx)
    return _convert_leaf(tp, value)


def _convert_section(cls: type, value: Any, key: str, ctx: _Context) -> Any:
    if value is None:  # a section or group left empty in YAML means all defaults
        value = {}
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a mapping of keys, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in value:
        if name not in fields:
            ctx.report(_join(key, name), "unknown key" + _did_you_mean(str(name), fields))
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = _check(_field_types(cls)[name], value[name], _join(key, name), ctx)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            ctx.report(_join(key, name), "missing required key")
            kwargs[name] = _MISSING
    if any(v is _MISSING for v in kwargs.values()):
        return _MISSING
    section = cls(**kwargs)
    for name, message in section.problems():
        ctx.report(_join(key, name), message)
    ctx.sections[key] = section
    return section


def _convert_named(choices: list[type[Named]], value: Any, key: str, ctx: _Context) -> Any:
    """One of the `choices`, by name: `name` or {name: {options}} (see Named)."""
    if isinstance(value, str):
        name, options = value, {}
    elif isinstance(value, Mapping) and len(value) == 1:
        ((name, options),) = value.items()
    else:
        raise _Invalid(f"expected a name or {{name: {{option: value}}}}, got {value!r}")
    by_name = {choice.name: choice for choice in choices}
    if name not in by_name:
        hint = _did_you_mean(str(name), by_name)
        raise _Invalid(f"unknown {name!r} (known: {', '.join(by_name)}){hint}")
    return _convert_section(by_name[name], options, _join(key, name), ctx)


def _convert_union(options: list[Any], value: Any, key: str, ctx: _Context) -> Any:
    """A mapping goes to the mapping option, anything else to the others, tried in order."""
    mappings = [o for o in options if _is_mapping(o)]
    if isinstance(value, Mapping) and mappings:
        return _convert(mappings[0], value, key, ctx)
    others = [o for o in options if o not in mappings]
    for option in others[:-1]:
        try:
            return _convert(option, value, key, ctx)
        except _Invalid:
            pass
    try:
        return _convert(others[-1], value, key, ctx)
    except _Invalid as problem:
        raise _Invalid(f"{problem}, or a mapping" if mappings else str(problem)) from None


def _is_mapping(tp: Any) -> bool:
    if get_origin(tp) is Annotated:
        return _is_mapping(get_args(tp)[0])
    return get_origin(tp) is dict or dataclasses.is_dataclass(tp)


def _convert_mapping(item_type: Any, value: Any, key: str, ctx: _Context) -> Any:
    """A mapping with string keys (numbers, as YAML reads `5:`, become their text)."""
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a mapping, got {value!r}")
    items = {str(k): _check(item_type, v, _join(key, k), ctx) for k, v in value.items()}
    return {k: v for k, v in items.items() if v is not _MISSING}  # its keys are still checked


def _convert_list(args: tuple[Any, ...], value: Any, key: str, ctx: _Context) -> Any:
    variadic = len(args) == 2 and args[1] is Ellipsis
    if variadic and value is not None and not isinstance(value, (list, tuple)):
        value = [value]  # a single item stands for a one-item list: freeze: "*"
    if not isinstance(value, (list, tuple)):
        raise _Invalid(f"expected a list, got {value!r}")
    if not variadic and len(value) != len(args):
        raise _Invalid(f"expected a list of {len(args)} items, got {len(value)}: {value!r}")
    types_ = [args[0]] * len(value) if variadic else args
    pairs = enumerate(zip(types_, value, strict=True))
    items = [_check(item_type, item, f"{key}[{i}]", ctx) for i, (item_type, item) in pairs]
    return _MISSING if any(item is _MISSING for item in items) else tuple(items)


def _convert_leaf(tp: type, value: Any) -> Any:
    if tp is float and type(value) in (int, float):
        return float(value)
    if tp is Path:
        if isinstance(value, str) and value:
            return Path(value).expanduser()
        raise _Invalid(f"expected a path, got {value!r}")
    if type(value) is tp:
        return value
    quote = f' (quote it: "{value}")' if tp is str and type(value) in (int, float) else ""
    raise _Invalid(f"expected {_LEAF_NAMES[tp]}, got {value!r}{quote}")


# ---------------------------------------------------------------- public API


def load_config(path: Path, overrides: Sequence[str] = (), *, check_files: bool = True) -> Config:
    """Read a YAML config (or the bundled config `path` names, when no such file exists),
    apply `key.sub=value` overrides, and validate everything.

    Raises ConfigError listing every problem, each naming the file and key.
    `check_files=False` skips existence checks of input paths (for commands
    that only look at the model).
    """
    given, path = Path(path), bundled.resolve(Path(path))
    if path != given:  # a bundled config by name: its relative paths are the user's, in the CWD
        ctx = _Context(f"{path.name} (bundled)", None, check_files)
    else:
        ctx = _Context(str(path), path.parent, check_files)
    data = _read_yaml(path)
    _apply_overrides(data, overrides, ctx)
    config = _validate(data, ctx)
    if config.run.output_dir is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run = dataclasses.replace(config.run, output_dir=Path("runs") / f"{path.stem}-{stamp}")
        config = dataclasses.replace(config, run=run)
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """The config as plain YAML-ready data (lists, strings), loadable by Config.from_dict."""
    return _plain(config)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        fields = {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {value.name: fields} if isinstance(value, Named) else fields
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = f"give a file, or a bundled config's name: {bundled.listing()}"
        raise ConfigError([f"{path}: config file not found; {hint}"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a folder, expected a YAML config file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc}"]) from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML{_yaml_where(exc)}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        sections = ", ".join(f.name for f in dataclasses.fields(Config))
        raise ConfigError([f"{path}: expected a mapping of sections ({sections}), got {data!r}"])
    return data


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None)
    return f"{where}: {problem}" if problem else where


def _apply_overrides(data: dict[str, Any], overrides: Sequence[str], ctx: _Context) -> None:
    """Set `a.b.c=value` entries in the raw data; values are parsed as YAML."""
    for text in overrides:
        dotted, sep, raw_value = text.partition("=")
        dotted = dotted.strip()
        if not sep or not dotted:
            ctx.problems.append(f"override {text!r}: expected key=value, e.g. optim.lr=0.001")
            continue
        try:
            value = yaml.load(raw_value, Loader=_Loader)
        except yaml.YAMLError as exc:
            ctx.problems.append(f"override {text!r}: invalid YAML value{_yaml_where(exc)}")
            continue
        *parents, leaf = dotted.split(".")
        node = data
        for depth, name in enumerate(parents):
            if node.get(name) is None:
                node[name] = {}
            node = node[name]
            if not isinstance(node, dict):
                section = ".".join(parents[: depth + 1])
                ctx.problems.append(f"override {text!r}: {section} is not a section")
                break
        else:
            node[leaf] = value
            ctx.overrides[dotted] = text
