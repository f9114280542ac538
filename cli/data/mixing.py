"""MixUp and CutMix: batch-level augmentation giving soft targets, as torchvision's v2.MixUp
and v2.CutMix do it.

Each image is mixed with its neighbour in the (shuffled) batch, `np.roll(batch, 1)`, with
one Beta(alpha, alpha) draw per batch; the targets become the same mixture of one-hot
rows. With both listed, each batch picks one of them with equal chance (torchvision's
reference recipe, timm's switch_prob 0.5), then applies it with its probability `p`.
A batch's draws come from (seed, epoch, batch index), so a resumed run mixes exactly as
an uninterrupted one; a batch split into shards (over processes, or data.micro_batches)
mixes within each shard, every shard with the batch's draws, so N processes and N
micro-batches mix alike. The loss takes the soft targets (cross-entropy with probability
targets; label smoothing applies on top, as timm's smoothed mixup targets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cli.config import Augmentation, CutmixOptions, MixupOptions

_STREAM = 0x6D6978  # tells the batch's generator apart from sample `batch`'s (cli.data.loader)


def batch_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator batch `batch` of `epoch` draws its mixing from."""
    key = (epoch, batch, _STREAM)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 (N, num_classes) rows with a 1 at each label."""
    return np.eye(num_classes, dtype=np.float32)[labels]


def mix(batch: np.ndarray, lam: float) -> np.ndarray:
    """`lam` of each row plus `1 - lam` of the row before it (the last for the first)."""
    return np.roll(batch, 1, axis=0) * np.float32(1.0 - lam) + batch * np.float32(lam)


def cutmix_box(
    lam: float, center: tuple[int, int], height: int, width: int
) -> tuple[tuple[int, int, int, int], float]:
    """The pasted box (x1, y1, x2, y2) around `center` (x, y) for a Beta draw `lam`, and the
    share of the image left unchanged."""
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * width), int(r * height)
    x, y = center
    x1, y1 = max(x - half_w, 0), max(y - half_h, 0)
    x2, y2 = min(x + half_w, width), min(y + half_h, height)
    return (x1, y1, x2, y2), float(1.0 - (x2 - x1) * (y2 - y1) / (width * height))


def paste(batch: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Each image with the box taken from the image before it."""
    x1, y1, x2, y2 = box
    out = batch.copy()
    out[..., y1:y2, x1:x2] = np.roll(batch, 1, axis=0)[..., y1:y2, x1:x2]
    return out


def mixup(
    images: np.ndarray, targets: np.ndarray, lam: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Blend whole images and their targets."""
    return mix(images, lam), mix(targets, lam)


def cutmix(
    images: np.ndarray, targets: np.ndarray, lam: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paste a box of area about 1 - lam from the neighbour, around a uniform centre; the
    targets mix by the area actually kept."""
    height, width = images.shape[-2:]
    center = (int(rng.integers(width)), int(rng.integers(height)))
    box, kept = cutmix_box(lam, center, height, width)
    return paste(images, box), mix(targets, kept)


MIXERS = {MixupOptions: mixup, CutmixOptions: cutmix}


def mixes_batches(augment: tuple[Augmentation, ...]) -> bool:
    """Whether data.augment lists mixup or cutmix (so the model's inputs are not single images)."""
    return any(type(step) in MIXERS for step in augment)


@dataclass(frozen=True)
class BatchMixing:
    """The mixing of data.augment's `mixup` and `cutmix` entries, with their probabilities;
    with neither, batches pass through with their class-index labels."""

    mixers: tuple[MixupOptions | CutmixOptions, ...]
    num_classes: int
    seed: int

    @classmethod
    def from_config(
        cls, augment: tuple[Augmentation, ...], num_classes: int, seed: int
    ) -> BatchMixing:
        return cls(tuple(step for step in augment if type(step) in MIXERS), num_classes, seed)

    def __call__(
        self, images: np.ndarray, labels: np.ndarray, epoch: int, batch: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(images, targets): mixed images and float32 (N, C) soft targets, or the batch as
        it is when there is nothing to mix."""
        if not self.mixers:
            return images, labels
        rng = batch_rng(self.seed, epoch, batch)
        mixer = self.mixers[rng.integers(len(self.mixers))]
        targets = one_hot(labels, self.num_classes)
        if rng.random() >= mixer.p:
            return images, targets
        lam = float(rng.beta(mixer.alpha, mixer.alpha))
        return MIXERS[type(mixer)](images, targets, lam, rng)
