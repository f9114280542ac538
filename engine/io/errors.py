"""The one error type raised by weights I/O, and its common messages."""

from __future__ import annotations

import os


class WeightsError(ValueError):
    """A weights file is missing, unreadable, corrupt, unsafe or unsupported.

    The message names the file and says how to fix the problem.
    """


def corrupt(path: str | os.PathLike, detail: object) -> WeightsError:
    """The error for a file whose content is damaged or cut short."""
    return WeightsError(
        f"{path} is truncated or corrupt ({detail}); download or export the file again"
    )


def unreadable(path: str | os.PathLike, exc: OSError) -> WeightsError:
    """The error for a file the operating system refuses to read."""
    return WeightsError(f"cannot read weights file {path}: {exc.strerror or exc}")
