"""The deterministic image operations behind the augmentations, as torchvision applies them
to PIL images (`torchvision.transforms.functional` and `autoaugment._apply_op`).

Each is a Pillow call with torchvision's arguments, so results match torchvision's pixel
for pixel (tests/cli/test_augment.py checks them against goldens made by
tests/fixtures/make_augment_goldens.py). Photometric operations need 8-bit pixels: a float
("F") image, such as the bundled digits, is first quantised to 8-bit grayscale ("L").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

INTERPOLATION = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}


def eight_bit(image: Image.Image) -> Image.Image:
    """The image itself, or a float image in [0, 1] as 8-bit grayscale."""
    if image.mode != "F":
        return image
    pixels = np.clip(np.rint(np.asarray(image) * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "L")


def adjust_brightness(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Brightness(eight_bit(image)).enhance(factor)


def adjust_contrast(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Contrast(eight_bit(image)).enhance(factor)


def adjust_saturation(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Color(eight_bit(image)).enhance(factor)


def adjust_sharpness(image: Image.Image, factor: float) -> Image.Image:
    return ImageEnhance.Sharpness(eight_bit(image)).enhance(factor)


def adjust_hue(image: Image.Image, factor: float) -> Image.Image:
    """Shift the HSV hue by `factor` of a turn (in [-0.5, 0.5]), wrapping around as uint8;
    grayscale images are unchanged."""
    image = eight_bit(image)
    if image.mode in {"L", "1", "I"}:
        return image
    hue, saturation, value = image.convert("HSV").split()
    shifted = np.array(hue, dtype=np.uint8)
    shifted += np.int32(factor * 255).astype(np.uint8)  # wraps around, as torchvision's
    hsv = (Image.fromarray(shifted, "L"), saturation, value)
    return Image.merge("HSV", hsv).convert(image.mode)


def posterize(image: Image.Image, bits: int) -> Image.Image:
    return ImageOps.posterize(eight_bit(image), bits)


def solarize(image: Image.Image, threshold: float) -> Image.Image:
    return ImageOps.solarize(eight_bit(image), threshold)


def autocontrast(image: Image.Image) -> Image.Image:
    return ImageOps.autocontrast(eight_bit(image))


def equalize(image: Image.Image) -> Image.Image:
    return ImageOps.equalize(eight_bit(image))


def affine(
    image: Image.Image,
    translate: tuple[float, float] = (0.0, 0.0),
    shear: tuple[float, float] = (0.0, 0.0),
    center: tuple[float, float] | None = None,
    interpolation: str = "nearest",
) -> Image.Image:
    """torchvision's `affine` without rotation or scaling: shear angles in degrees, about
    `center` (default the image centre), then a translation; outside is filled with 0."""
    width, height = image.size
    cx, cy = center if center is not None else (width * 0.5, height * 0.5)
    tx, ty = translate
    sx, sy = math.radians(shear[0]), math.radians(shear[1])
    # torchvision's _get_inverse_affine_matrix with angle 0 and scale 1
    a = math.cos(-sy) / math.cos(sy)
    b = -math.cos(-sy) * math.tan(sx) / math.cos(sy)
    c = math.sin(-sy) / math.cos(sy)
    d = -math.sin(-sy) * math.tan(sx) / math.cos(sy) + 1.0
    matrix = [d, -b, 0.0, -c, a, 0.0]
    matrix[2] += matrix[0] * (-cx - tx) + matrix[1] * (-cy - ty) + cx
    matrix[5] += matrix[3] * (-cx - tx) + matrix[4] * (-cy - ty) + cy
    return image.transform(
        image.size, Image.Transform.AFFINE, matrix, INTERPOLATION[interpolation], fillcolor=0
    )


def rotate(image: Image.Image, degrees: float, interpolation: str = "nearest") -> Image.Image:
    """Counter-clockwise about the centre, same size, outside filled with 0."""
    return image.rotate(degrees, INTERPOLATION[interpolation], fillcolor=0)


def apply_op(image: Image.Image, op: str, magnitude: float, interpolation: str) -> Image.Image:
    """One operation of TrivialAugmentWide or RandAugment at a signed magnitude
    (torchvision's `autoaugment._apply_op`)."""
    return OPS[op](image, magnitude, interpolation)


def _shear(axis: int) -> Callable[[Image.Image, float, str], Image.Image]:
    def shear(image: Image.Image, magnitude: float, interpolation: str) -> Image.Image:
        angles = [0.0, 0.0]
        angles[axis] = math.degrees(math.atan(magnitude))
        return affine(image, shear=tuple(angles), center=(0, 0), interpolation=interpolation)

    return shear


def _translate(axis: int) -> Callable[[Image.Image, float, str], Image.Image]:
    def translate(image: Image.Image, magnitude: float, interpolation: str) -> Image.Image:
        offset = [0, 0]
        offset[axis] = int(magnitude)
        return affine(image, translate=tuple(offset), interpolation=interpolation)

    return translate


OPS: dict[str, Callable[[Image.Image, float, str], Image.Image]] = {
    "Identity": lambda image, m, i: image,
    "ShearX": _shear(0),
    "ShearY": _shear(1),
    "TranslateX": _translate(0),
    "TranslateY": _translate(1),
    "Rotate": rotate,
    "Brightness": lambda image, m, i: adjust_brightness(image, 1.0 + m),
    "Color": lambda image, m, i: adjust_saturation(image, 1.0 + m),
    "Contrast": lambda image, m, i: adjust_contrast(image, 1.0 + m),
    "Sharpness": lambda image, m, i: adjust_sharpness(image, 1.0 + m),
    "Posterize": lambda image, m, i: posterize(image, int(m)),
    "Solarize": lambda image, m, i: solarize(image, m),
    "AutoContrast": lambda image, m, i: autocontrast(image),
    "Equalize": lambda image, m, i: equalize(image),
}
