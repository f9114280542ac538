"""What `finetune bench` times: the cases (a workload at a batch and image size), parsed from the
verb's options, and the settings every case runs with."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import typer

from cli.bench.worker import MODEL_WORKLOADS, WORKLOADS

DEFAULT_SIZES = ((32, 64), (16, 224))  # (batch, pixels)
DEFAULT_BATCH = 32  # for sizes given as PIXELS alone
MIN_PIXELS = 32  # ResNet18 halves the image five times
LOADER_BATCH, LOADER_PIXELS = 32, 224


@dataclass(frozen=True)
class Case:
    """One row of the report: a workload at a batch of images of a size."""

    workload: str
    batch: int
    pixels: int

    def __str__(self) -> str:
        if self.workload not in MODEL_WORKLOADS:
            return self.workload
        return f"{self.workload} {self.batch}x{self.pixels}"


@dataclass(frozen=True)
class Settings:
    """How each case is run: the verb's --rounds, --warmup, --steps, --profile, --vs-torch."""

    rounds: int
    warmup: int
    steps: int
    profile: bool
    vs_torch: bool


def _items(values: Iterable[str]) -> list[str]:
    """The items of repeated and comma-separated option values."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def parse_workloads(values: list[str] | None) -> list[str]:
    """The chosen workloads in report order (all by default)."""
    chosen = _items(values or WORKLOADS)
    unknown = [name for name in chosen if name not in WORKLOADS]
    if unknown:
        raise typer.BadParameter(
            f"unknown workload {unknown[0]!r}; choose from {', '.join(WORKLOADS)}",
            param_hint="--workload",
        )
    return [name for name in WORKLOADS if name in chosen]


def parse_sizes(values: list[str] | None, batch: int | None) -> list[tuple[int, int]]:
    """(batch, pixels) for each BATCHxPIXELS or PIXELS item (at `batch`, else 32); by default
    32x64 and 16x224, or both sizes at `batch` when it is given."""
    if not values:
        return [(batch or default, pixels) for default, pixels in DEFAULT_SIZES]
    sizes = []
    for item in _items(values):
        given, _, pixels = item.rpartition("x")
        try:
            size = (int(given) if given else batch or DEFAULT_BATCH, int(pixels))
        except ValueError:
            size = (0, 0)
        if size[0] < 1 or size[1] < MIN_PIXELS:
            raise typer.BadParameter(
                f"{item!r} is not BATCHxPIXELS (e.g. 32x64: batch 32 of 64x64 images) or "
                f"PIXELS, with a batch of at least 1 and at least {MIN_PIXELS} pixels",
                param_hint="--size",
            )
        sizes.append(size)
    return sizes


def plan(workloads: list[str], sizes: list[tuple[int, int]]) -> list[Case]:
    """Every model workload at every size; the loader once, on 224x224 crops."""
    cases = []
    for workload in workloads:
        if workload in MODEL_WORKLOADS:
            cases += [Case(workload, batch, pixels) for batch, pixels in sizes]
        else:
            cases.append(Case(workload, LOADER_BATCH, LOADER_PIXELS))
    return cases
