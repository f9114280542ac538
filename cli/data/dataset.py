"""Images with labels: where pixels come from (a source), which of them (samples), and the
dataset the loader reads, which applies a transform and the bad-image policy."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Protocol

import numpy as np
from PIL import Image

from cli.data.transforms import Compose
from cli.errors import DataError

log = logging.getLogger(__name__)


class UnreadableImage(DataError):
    """An image file Pillow cannot decode."""

    def __init__(self, path: Path, reason: object) -> None:
        self.path = path
        super().__init__(f"cannot read image {path}: {reason}")


class ImageSource(Protocol):
    """Images addressed by position."""

    def load(self, position: int) -> Image.Image: ...

    def fingerprint(self, positions: np.ndarray) -> str:
        """A digest that changes when any of these images may have changed."""
        ...


class ArrayImages:
    """Images held in memory: uint8 (N, H, W, 3) or (N, H, W), or float32 (N, H, W) in [0, 1]."""

    def __init__(self, array: np.ndarray, name: str) -> None:
        self.array = array
        self.name = name

    def load(self, position: int) -> Image.Image:
        return Image.fromarray(self.array[position])

    def fingerprint(self, positions: np.ndarray) -> str:
        chosen = np.ascontiguousarray(self.array[positions])
        digest = hashlib.sha256(chosen.data).hexdigest()
        return f"{self.name}:{chosen.dtype}{list(chosen.shape)}:{digest}"


class FileImages:
    """Image files, decoded with Pillow and converted to RGB as torchvision's loader does."""

    def __init__(self, paths: Sequence[Path], root: Path) -> None:
        self.paths = list(paths)
        self.root = root

    def load(self, position: int) -> Image.Image:
        path = self.paths[position]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise UnreadableImage(path, exc) from exc

    def fingerprint(self, positions: np.ndarray) -> str:
        digest = hashlib.sha256()
        for position in positions:
            path = self.paths[position]
            try:
                stat = path.stat()
                state = f"{stat.st_size}|{stat.st_mtime_ns}"
            except OSError:
                state = "missing"
            digest.update(f"{path.relative_to(self.root)}|{state}\n".encode())
        return f"{self.root}:{digest.hexdigest()}"


@dataclass(frozen=True)
class Samples:
    """Some images of a source, by position, with their labels."""

    source: ImageSource
    positions: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, which: np.ndarray) -> Samples:
        """The samples selected by an index array or boolean mask, in order."""
        return Samples(self.source, self.positions[which], self.labels[which])


class Splits(NamedTuple):
    """What a dataset reader returns: training samples, validation samples if the data has
    its own split (else None), and the class names indexed by label."""

    train: Samples
    val: Samples | None
    class_names: list[str]


class ImageDataset:
    """What the loader reads: `get(i, rng)` gives (float32 (3, H, W) image, label).

    `deterministic` is True when the transform draws no random numbers (the
    same image every epoch, so features can be cached). An unreadable image
    raises DataError under on_bad_image="stop"; under "skip" `get` returns None,
    logs a warning once, and the path is listed in `skipped`.
    """

    def __init__(
        self,
        samples: Samples,
        class_names: Sequence[str],
        transform: Compose,
        on_bad_image: Literal["stop", "skip"] = "stop",
    ) -> None:
        self.samples = samples
        self.class_names = list(class_names)
        self.transform = transform
        self.on_bad_image = on_bad_image
        self._skipped: dict[str, str] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return self.samples.labels

    @property
    def deterministic(self) -> bool:
        return not self.transform.random

    @property
    def skipped(self) -> list[str]:
        """Paths of the unreadable images skipped so far."""
        with self._lock:
            return sorted(self._skipped)

    @property
    def skip_reasons(self) -> dict[str, str]:
        """Why each unreadable image skipped so far could not be read, by path."""
        with self._lock:
            return dict(sorted(self._skipped.items()))

    def get(
        self, index: int, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, int] | None:
        """The transformed image and label of sample `index`; a random transform needs `rng`."""
        if rng is None and self.transform.random:
            raise ValueError("this dataset's transform is random: pass a numpy Generator")
        try:
            image = self.samples.source.load(int(self.samples.positions[index]))
        except UnreadableImage as exc:
            if self.on_bad_image == "stop":
                raise DataError(f"{exc} (to skip such images, set data.on_bad_image=skip)") from exc
            self._skip(exc)
            return None
        return self.transform(image, rng), int(self.samples.labels[index])

    __getitem__ = get

    def identity(self) -> str:
        """Describes the image list, labels and transform; equal identities give equal data."""
        labels = hashlib.sha256(np.ascontiguousarray(self.labels, dtype=np.int64).data).hexdigest()
        return (
            f"images={self.samples.source.fingerprint(self.samples.positions)} "
            f"labels={labels} classes={self.class_names} transform={self.transform!r}"
        )

    def _skip(self, exc: UnreadableImage) -> None:
        with self._lock:
            first = str(exc.path) not in self._skipped
            self._skipped[str(exc.path)] = str(exc)
        if first:
            log.warning("skipping %s", exc)
