"""Checks on a path before reading it, and format detection by content."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from engine.io.errors import WeightsError, unreadable

_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a"


def checked_file(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path, or raise WeightsError if it is not an existing file."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(
            f"{path} is a directory, not a weights file; "
            "pass the path of a .safetensors or .pth file"
        )
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}; check the path and try again")
    return path


def detect_format(path: Path) -> str:
    """Return ``"safetensors"``, ``"zip"`` or ``"legacy"`` (a pre-1.6 torch.save) from the first
    bytes of ``path``."""
    try:
        with path.open("rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise unreadable(path, exc) from exc
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] > 1:
        return "safetensors"
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return "legacy"
    raise WeightsError(
        f"{path} is neither a safetensors file nor a torch checkpoint (.pth zip); "
        "pass a file written by safetensors or by torch.save"
    )
