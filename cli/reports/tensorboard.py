"""TensorBoard event files under RUN/tensorboard/, written by tensorboardX (an extra).

Install it with `finetune[tensorboard]`.

Step rows of metrics.jsonl become `train_step/*` scalars at the global step, epoch rows
`epoch/*` scalars at the epoch; pictures (the confusion matrix) are added as images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console

from cli.training.run_folder import TENSORBOARD

TENSORBOARD_HINT = "pip install 'finetune[tensorboard]'"


class Events:
    """An open event file in `RUN/tensorboard/`."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, run_dir: Path, console: Console) -> Events | None:
        """A writer, or None after one line saying what to install when tensorboardX is missing."""
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            console.print(
                f"TensorBoard events skipped: tensorboardX is not installed ({TENSORBOARD_HINT})",
                markup=False,
                soft_wrap=True,
            )
            return None
        return cls(SummaryWriter(str(run_dir / TENSORBOARD)))

    def record(self, row: dict[str, Any]) -> None:
        """Add a metrics row's numbers as scalars."""
        if "step" in row:
            step, group = row["step"], "train_step"
            skip = {"step", "epoch", "batch", "batches"}
        else:
            step, group, skip = row["epoch"], "epoch", {"epoch"}
        for key, value in row.items():
            if key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{group}/{key}", value, step)
        if "step" not in row:
            self.writer.flush()

    def image(self, tag: str, path: Path, step: int) -> None:
        """Add a PNG file as an image."""
        with Image.open(path) as picture:
            pixels = np.asarray(picture.convert("RGB"))
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()
