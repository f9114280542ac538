"""Image transforms with torchvision's semantics, and explicit randomness.

Each transform is called as `t(image, rng)`. Random ones draw only from the
numpy Generator they are given, so an augmentation is a pure function of that
generator's seed. Geometric steps act on PIL images through Pillow, exactly
as torchvision does for PIL input; `ToTensor` and `Normalize` produce the
float32 CHW array the model sees. A transform's repr names its settings and is
part of a dataset's identity (cache keys).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from cli.config import (
    Augmentation,
    ColorJitterOptions,
    DataConfig,
    HorizontalFlipOptions,
    RandAugmentOptions,
    RandomErasingOptions,
    RandomResizedCropOptions,
    TrivialAugmentOptions,
)
from cli.data.augment import (
    ColorJitter,
    RandAugment,
    RandomErasing,
    TrivialAugmentWide,
    box_sides,
)

BILINEAR = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class Resize:
    """Scale the shorter side to `size`, keeping the aspect ratio (torchvision's int-size Resize).

    Pillow's bilinear filter is antialiased, which is what torchvision uses for PIL images.
    """

    size: int
    random: ClassVar[bool] = False

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_long = int(self.size * long / short)
        size = (self.size, new_long) if width <= height else (new_long, self.size)
        return image if size == image.size else image.resize(size, BILINEAR)


@dataclass(frozen=True)
class CenterCrop:
    """Cut the central `size` x `size` square, rounding offsets as torchvision does.

    Expects an image at least `size` on each side (the config ensures resize >= image_size).
    """

    size: int
    random: ClassVar[bool] = False

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        width, height = image.size
        top = int(round((height - self.size) / 2.0))
        left = int(round((width - self.size) / 2.0))
        return image.crop((left, top, left + self.size, top + self.size))


@dataclass(frozen=True)
class RandomResizedCrop:
    """A crop of random area fraction and aspect ratio, resized to `size` (torchvision's sampling).

    Ten tries at an area in `scale` and a log-uniform ratio in `ratio`; if none
    fits, a central crop clamped to the ratio range.
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    random: ClassVar[bool] = True

    def params(
        self, width: int, height: int, rng: np.random.Generator
    ) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop box."""
        for w, h in box_sides(width * height, self.scale, self.ratio, rng):
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return resized_crop(image, *self.params(*image.size, rng), self.size)


def resized_crop(
    image: Image.Image, top: int, left: int, height: int, width: int, size: int
) -> Image.Image:
    """The box resized to `size` x `size` (torchvision's `resized_crop`, bilinear)."""
    box = image.crop((left, top, left + width, top + height))
    return box.resize((size, size), BILINEAR)


@dataclass(frozen=True)
class RandomHorizontalFlip:
    """Mirror left-right with probability `p`."""

    p: float = 0.5
    random: ClassVar[bool] = True

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < self.p else image


@dataclass(frozen=True)
class ToTensor:
    """PIL image to a float32 (3, H, W) array: 8-bit values / 255, float ("F") images as they are.

    Unlike torchvision, one-channel images are repeated to three channels, so
    grayscale data (the digits) fits a ResNet's RGB input.
    """

    random: ClassVar[bool] = False

    def __call__(self, image: Image.Image, rng: np.random.Generator | None = None) -> np.ndarray:
        array = np.asarray(image, dtype=np.float32)
        if image.mode != "F":
            array = array / 255
        if array.ndim == 2:
            return np.repeat(array[None], 3, axis=0)
        return np.ascontiguousarray(array.transpose(2, 0, 1))


@dataclass(frozen=True)
class Normalize:
    """(x - mean) / std per channel, in float32."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    random: ClassVar[bool] = False

    def __call__(self, array: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return (array - mean) / std


@dataclass(frozen=True)
class Compose:
    """Steps applied in order; random if any step is."""

    steps: tuple[Any, ...]

    @property
    def random(self) -> bool:
        return any(step.random for step in self.steps)

    def __call__(self, image: Any, rng: np.random.Generator | None = None) -> Any:
        for step in self.steps:
            image = step(image, rng)
        return image


# data.augment's per-image entries and the transforms they configure, with the same fields
IMAGE_STEPS: dict[type, type] = {
    HorizontalFlipOptions: RandomHorizontalFlip,
    ColorJitterOptions: ColorJitter,
    TrivialAugmentOptions: TrivialAugmentWide,
    RandAugmentOptions: RandAugment,
}


def make_transform(cfg: DataConfig, train: bool) -> Compose:
    """torchvision's pipeline: resize the shorter side and center crop (or a random resized
    crop), data.augment's image transforms in their order, to tensor and normalise, then
    random erasing. Evaluation never augments; mixup and cutmix act on batches
    (cli.data.mixing)."""
    augment: tuple[Augmentation, ...] = cfg.augment if train else ()
    crops = any(isinstance(step, RandomResizedCropOptions) for step in augment)
    steps: list[Any] = [] if crops else [Resize(cfg.resize), CenterCrop(cfg.image_size)]
    erasing = []
    for step in augment:
        if isinstance(step, RandomResizedCropOptions):
            steps.append(RandomResizedCrop(cfg.image_size, step.scale, step.ratio))
        elif isinstance(step, RandomErasingOptions):
            erasing.append(RandomErasing(**dataclasses.asdict(step)))
        elif type(step) in IMAGE_STEPS:
            steps.append(IMAGE_STEPS[type(step)](**dataclasses.asdict(step)))
    return Compose((*steps, ToTensor(), Normalize(cfg.mean, cfg.std), *erasing))
