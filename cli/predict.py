"""`finetune predict`: the top-k classes of images under a trained run's model.

Images (files, and folders searched recursively in sorted order) go through the run's
evaluation transform (resize, center crop, normalise, from the run's config) and the model
of its best.safetensors, in batches; the class names come from its classes.json. `--json`
and `--csv` write one record per image. An unreadable file is named and skipped, and the
command exits non-zero at the end unless `--skip-bad`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cli.data.dataset import FileImages, ImageDataset, Samples
from cli.data.imagefolder import IMG_EXTENSIONS, list_images
from cli.data.transforms import make_transform
from cli.errors import DataError, FinetuneError
from cli.reports.files import write_csv, write_json
from cli.reports.predictions import predict_dataset
from cli.training.run_folder import RunFolder

JSON_FORMAT = "finetune.predict.v1"
MAX_TABLE_IMAGES = 50  # with --json or --csv, larger sets print a summary line, not a table


@dataclass(frozen=True)
class Prediction:
    """The `k` most probable classes of one image, best first."""

    path: str
    classes: list[str]
    probabilities: list[float]


def predict(
    run_dir: Path,
    inputs: Sequence[Path],
    top_k: int = 5,
    weights: Path | None = None,
    json_file: Path | None = None,
    csv_file: Path | None = None,
    skip_bad: bool = False,
    console: Console | None = None,
) -> list[Prediction]:
    """Classify the images in `inputs`; print, and write the files asked for."""
    console = console or Console()
    folder = RunFolder.open(run_dir)
    config = folder.config()
    class_names = folder.class_names(config.model.num_classes)
    paths = list_images(inputs)
    if not paths:
        raise DataError(
            f"no images in {', '.join(map(str, inputs))} "
            f"(looked for files ending in {', '.join(IMG_EXTENSIONS)})"
        )
    model = folder.load_model(weights)
    samples = Samples(
        FileImages(paths, Path.cwd()), np.arange(len(paths)), np.zeros(len(paths), np.int64)
    )
    dataset = ImageDataset(samples, class_names, make_transform(config.data, train=False), "skip")
    found = predict_dataset(
        model, dataset, config.data.batch_size, config.data.num_workers, "predicting"
    )
    k = min(top_k, len(class_names))
    best = np.argsort(-found.log_probs, axis=1, kind="stable")[:, :k]
    probabilities = np.take_along_axis(found.probabilities, best, axis=1)
    predictions = [
        Prediction(str(paths[i]), [class_names[c] for c in row], [float(p) for p in chances])
        for i, row, chances in zip(found.indices, best, probabilities, strict=True)
    ]
    skipped = dataset.skip_reasons
    if (json_file is None and csv_file is None) or len(predictions) <= MAX_TABLE_IMAGES:
        console.print(table(predictions, k, len(class_names)))
    else:
        console.print(f"classified {len(predictions)} images", highlight=False)
    if json_file is not None:
        write_json(json_file, to_json(predictions, k, folder.weights_path(weights), skipped))
    if csv_file is not None:
        header = [f"{key}_{rank}" for rank in range(1, k + 1) for key in ("class", "probability")]
        rows = [
            [p.path, *(x for pair in zip(p.classes, p.probabilities, strict=True) for x in pair)]
            for p in predictions
        ]
        write_csv(csv_file, ["path", *header], rows)
    if skipped:
        _report_unreadable(skipped, skip_bad, console)
    return predictions


def table(predictions: list[Prediction], k: int, classes: int) -> Table:
    """Each image with its top k classes and their probabilities."""
    result = Table(title=f"Top {k} of {classes} classes")
    result.add_column("image")
    result.add_column("class")
    result.add_column("probability", justify="right")
    for prediction in predictions:
        pairs = zip(prediction.classes, prediction.probabilities, strict=True)
        for rank, (name, probability) in enumerate(pairs):
            image = escape(prediction.path) if rank == 0 else ""
            result.add_row(image, escape(name), f"{probability:.1%}")
        result.add_section()
    return result


def to_json(
    predictions: list[Prediction], k: int, weights: Path, skipped: dict[str, str]
) -> dict[str, Any]:
    return {
        "format": JSON_FORMAT,
        "weights": str(weights),
        "top_k": k,
        "predictions": [
            {
                "path": p.path,
                "top": [
                    {"class": name, "probability": probability}
                    for name, probability in zip(p.classes, p.probabilities, strict=True)
                ],
            }
            for p in predictions
        ],
        "skipped": [{"path": path, "error": error} for path, error in skipped.items()],
    }


def _report_unreadable(skipped: dict[str, str], skip_bad: bool, console: Console) -> None:
    """Name the images that could not be read; an error unless `skip_bad`."""
    reasons = "\n".join(skipped.values())
    if not skip_bad:
        raise FinetuneError(
            f"{reasons}\n{len(skipped)} image(s) could not be read and were left out "
            "(the others were classified); --skip-bad allows this"
        )
    Console(stderr=True, soft_wrap=True).print(
        f"warning: skipped {len(skipped)} unreadable image(s):\n{reasons}", markup=False
    )
