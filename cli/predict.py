"""`finetune predict`: the top-k classes of images under a trained run's model.

Images go through the run's evaluation transform (resize, center crop,
normalise, from the run's config) and the model of its best.safetensors; the
class names come from its classes.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import engine
from cli.data.dataset import FileImages
from cli.data.transforms import Compose, make_transform
from cli.training.run_folder import RunFolder
from engine import nn


def _probabilities(
    model: nn.Module, source: FileImages, transform: Compose, batch_size: int
) -> np.ndarray:
    """Class probabilities of each image, (images, classes), computed batch by batch."""
    rows = []
    for start in range(0, len(source.paths), batch_size):
        positions = range(start, min(start + batch_size, len(source.paths)))
        batch = np.stack([transform(source.load(i)) for i in positions])
        with engine.no_grad():
            rows.append(model(engine.from_numpy(batch)).softmax(dim=1).numpy())
    return np.concatenate(rows)


def predict(
    run_dir: Path,
    images: list[Path],
    top_k: int = 5,
    weights: Path | None = None,
    console: Console | None = None,
) -> None:
    """Print the `top_k` most probable classes of each image, with their probabilities."""
    console = console or Console()
    folder = RunFolder.open(run_dir)
    config = folder.config()
    class_names = folder.class_names(config.model.num_classes)
    model = folder.load_model(weights)
    transform = make_transform(config.data, train=False)
    source = FileImages(images, root=Path.cwd())
    probabilities = _probabilities(model, source, transform, config.data.batch_size)
    k = min(top_k, len(class_names))
    table = Table(title=f"Top {k} of {len(class_names)} classes")
    table.add_column("image")
    table.add_column("class")
    table.add_column("probability", justify="right")
    for path, row in zip(images, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:k]
        for rank, label in enumerate(best):
            image = escape(str(path)) if rank == 0 else ""
            table.add_row(image, escape(class_names[label]), f"{row[label]:.1%}")
        table.add_section()
    console.print(table)
