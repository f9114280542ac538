"""CSV and JSON files, each written in one atomic step (a failed write keeps the old file)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cli.errors import FinetuneError
from engine.io.atomic import write_atomic


def _write(path: Path, text: str) -> Path:
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise FinetuneError(f"cannot write {path}: {exc}") from None
    return path


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A CSV file with a header line; None becomes an empty cell."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if value is None else value for value in row] for row in rows)
    return _write(path, out.getvalue())


def write_json(path: Path, data: Any) -> Path:
    """Indented JSON; NaN is written as null."""
    return _write(path, json.dumps(_nulls(data), indent=2) + "\n")


def _nulls(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _nulls(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nulls(item) for item in value]
    return value
