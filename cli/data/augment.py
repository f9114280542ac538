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


def trivial_augment_space(bins: int) -> OpSpace:
    """TrivialAugmentWide's ops and magnitudes."""
    unit = linspace(0.0, 0.99, bins)
    return {
        "Identity": (None, False),
        "ShearX": (unit, True),
        "ShearY": (unit, True),
        "TranslateX": (linspace(0.0, 32.0, bins), True),
        "TranslateY": (linspace(0.0, 32.0, bins), True),
        "Rotate": (linspace(0.0, 135.0, bins), True),
        "Brightness": (unit, True),
        "Color": (unit, True),
        "Contrast": (unit, True),
        "Sharpness": (unit, True),
        "Posterize": (posterize_bits(bins, 6), False),
        "Solarize": (linspace(255.0, 0.0, bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


def rand_augment_space(bins: int, height: int, width: int) -> OpSpace:
    """RandAugment's ops and magnitudes for an image of this size."""
    unit = linspace(0.0, 0.9, bins)
    return {
        "Identity": (None, False),
        "ShearX": (linspace(0.0, 0.3, bins), True),
        "ShearY": (linspace(0.0, 0.3, bins), True),
        "TranslateX": (linspace(0.0, 150.0 / 331.0 * width, bins), True),
        "TranslateY": (linspace(0.0, 150.0 / 331.0 * height, bins), True),
        "Rotate": (linspace(0.0, 30.0, bins), True),
        "Brightness": (unit, True),
        "Color": (unit, True),
        "Contrast": (unit, True),
        "Sharpness": (unit, True),
        "Posterize": (posterize_bits(bins, 4), False),
        "Solarize": (linspace(255.0, 0.0, bins), False),
        "AutoContrast": (None, False),
        "Equalize": (None, False),
    }


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
        area = height * width
        log_low, log_high = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(10):
            erase_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(log_low, log_high))
            h = int(round(math.sqrt(erase_area * aspect)))
            w = int(round(math.sqrt(erase_area / aspect)))
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
