"""The random per-image augmentations beyond crop and flip: ColorJitter, TrivialAugmentWide,
RandAugment and RandomErasing, with torchvision's semantics.

Like the transforms in cli.data.transforms, each is called as `t(image, rng)` and draws
only from the numpy Generator it is given, in the order torchvision draws from torch's
generator, from the same distributions; the operations themselves are cli.data.image_ops.
The magnitude tables are torchvision's, value for value: `torch.linspace` in float32
computes each entry with one rounding from its nearer end, which `linspace` reproduces.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image

from cli.data.image_ops import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_op,
)

ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)

# op -> (magnitudes by bin, or None for an op without one; whether the sign is random)
OpSpace = dict[str, tuple[np.ndarray | None, bool]]


@dataclass(frozen=True)
class ColorJitter:
    """Brightness, contrast, saturation and hue factors drawn from [max(0, 1 - x), 1 + x]
    (hue from [-h, h]), applied in a random order; a zero setting is left out."""

    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    random: ClassVar[bool] = True

    def params(self, rng: np.random.Generator) -> tuple[list[int], list[float | None]]:
        """The order of the four adjustments and their factors (None when left out)."""
        order = rng.permutation(4).tolist()
        ranges = [
            (max(0.0, 1 - x), 1 + x) for x in (self.brightness, self.contrast, self.saturation)
        ]
        ranges.append((-self.hue, self.hue))
        settings = (self.brightness, self.contrast, self.saturation, self.hue)
        factors = [rng.uniform(*r) if x else None for r, x in zip(ranges, settings, strict=True)]
        return order, factors

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return jitter(image, *self.params(rng))


def jitter(image: Image.Image, order: list[int], factors: list[float | None]) -> Image.Image:
    """Apply the adjustments (brightness, contrast, saturation, hue) with factors, in order."""
    for index in order:
        if factors[index] is not None:
            image = ADJUST[index](image, factors[index])
    return image


def linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32: the first half counted up from `start`, the rest down from
    `end`, each value rounded once."""
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64((end32 - start32) / np.float32(steps - 1))
    index = np.arange(steps, dtype=np.float64)
    up = np.float64(start32) + step * index
    down = np.float64(end32) - step * (steps - 1 - index)
    return np.where(index < steps // 2, up, down).astype(np.float32)


def posterize_bits(bins: int, levels: int) -> np.ndarray:
    """8 minus `levels` bits spread over the bins, rounded half to even (torchvision's)."""
    spread = np.arange(bins, dtype=np.float32) / np.float32((bins - 1) / levels)
    return 8 - np.round(spread).astype(np.int32)


def _op_space(
    bins: int,
    shear: float,
    translate: tuple[float, float],
    rotate: float,
    enhance: float,
    posterize_levels: int,
) -> OpSpace:
    """The ops shared by TrivialAugmentWide and RandAugment, with magnitudes from 0 to the
    given maxima (x and y translation in pixels, rotation in degrees)."""
    enhancements = linspace(0.0, enhance, bins)
    shears = linspace(0.0, shear, bins)
    return {
        "Identity": (None, False),
        "ShearX": (shears, True),
        "ShearY": (shears, True),
        "TranslateX": (linspace(0.0, translate[0], bins), True),
        "TranslateY": (linspace(0.0, translate[1], bins), True),
        "Rotate": (linspace(0.0, rotate, bins), True),
        "Brightness": (enhancements, True),
        "Color": (enhancements, True),
        "Contrast": (enhancements, True),
        "Sharpness": (enhancements, True),
        "Posterize": (posterize_bits(bins, posterize_levels), False),
        "Solarize": (linspace(255.0, 0.0, bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


def trivial_augment_space(bins: int) -> OpSpace:
    """TrivialAugmentWide's ops and magnitudes."""
    return _op_space(bins, 0.99, (32.0, 32.0), 135.0, 0.99, posterize_levels=6)


def rand_augment_space(bins: int, height: int, width: int) -> OpSpace:
    """RandAugment's ops and magnitudes for an image of this size."""
    translate = (150.0 / 331.0 * width, 150.0 / 331.0 * height)
    return _op_space(bins, 0.3, translate, 30.0, 0.9, posterize_levels=4)


def box_sides(
    area: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> Iterator[tuple[int, int]]:
    """torchvision's ten tries at a box: an area fraction uniform in `scale` and an aspect
    ratio log-uniform in `ratio`, as the rounded sides sqrt(area * ratio), sqrt(area / ratio).
    Drawn lazily, so a caller that stops at the first fit draws no more."""
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_low, log_high))
        yield int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))


def _signed(magnitude: float, signed: bool, rng: np.random.Generator) -> float:
    """The magnitude, negated with probability 1/2 for ops that take either sign."""
    return -magnitude if signed and rng.integers(2) else magnitude


@dataclass(frozen=True)
class TrivialAugmentWide:
    """One op chosen uniformly, at a magnitude bin chosen uniformly, with a random sign."""

    num_magnitude_bins: int = 31
    interpolation: str = "nearest"
    random: ClassVar[bool] = True

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        space = trivial_augment_space(self.num_magnitude_bins)
        op = list(space)[rng.integers(len(space))]
        magnitudes, signed = space[op]
        magnitude = 0.0 if magnitudes is None else float(magnitudes[rng.integers(len(magnitudes))])
        return apply_op(image, op, _signed(magnitude, signed, rng), self.interpolation)


@dataclass(frozen=True)
class RandAugment:
    """`num_ops` ops, each chosen uniformly, at the fixed magnitude bin, with a random sign."""

    num_ops: int = 2
    magnitude: int = 9
    num_magnitude_bins: int = 31
    interpolation: str = "nearest"
    random: ClassVar[bool] = True

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        width, height = image.size
        space = rand_augment_space(self.num_magnitude_bins, height, width)
        for _ in range(self.num_ops):
            op = list(space)[rng.integers(len(space))]
            magnitudes, signed = space[op]
            magnitude = 0.0 if magnitudes is None else float(magnitudes[self.magnitude])
            image = apply_op(image, op, _signed(magnitude, signed, rng), self.interpolation)
        return image


@dataclass(frozen=True)
class RandomErasing:
    """With probability `p`, set a random rectangle of the (C, H, W) float image to `value`:
    area fraction in `scale`, log-uniform aspect ratio in `ratio`, ten tries to fit."""

    p: float = 0.5
    scale: tuple[float, float] = (0.02, 0.33)
    ratio: tuple[float, float] = (0.3, 3.3)
    value: float = 0.0
    random: ClassVar[bool] = True

    def params(
        self, height: int, width: int, rng: np.random.Generator
    ) -> tuple[int, int, int, int] | None:
        """(top, left, height, width) of the rectangle, or None when no try fits."""
        for h, w in box_sides(height * width, self.scale, self.ratio, rng):
            if h < height and w < width:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        return None

    def __call__(self, array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.p:
            return array
        box = self.params(*array.shape[-2:], rng)
        return array if box is None else erase(array, *box, self.value)


def erase(
    array: np.ndarray, top: int, left: int, height: int, width: int, value: float
) -> np.ndarray:
    """A copy of the (C, H, W) array with the rectangle set to `value`."""
    out = array.copy()
    out[..., top : top + height, left : left + width] = value
    return out
