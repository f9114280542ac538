"""Consoles that know whether to draw live progress bars (`--progress auto|bars|plain`).

rich takes FORCE_COLOR=1 (common in CI) to mean a terminal, and its
`is_interactive` follows, so a log would fill with bar redraws. Here `auto`
draws bars only when someone watches: the stream is a real terminal (or
TTY_INTERACTIVE=1 says it is one). The console's `is_interactive` carries the
choice; colours still follow rich's rules.
"""

from __future__ import annotations

import os
import sys
from typing import Literal, TextIO

from rich.console import Console

ProgressMode = Literal["auto", "bars", "plain"]


def make_console(
    progress: ProgressMode = "auto", *, stderr: bool = False, quiet: bool = False
) -> Console:
    """A console on stdout (or stderr) whose `is_interactive` says whether to draw live bars;
    a `quiet` one prints nothing."""
    if progress == "bars":
        return Console(stderr=stderr, quiet=quiet, force_terminal=True, force_interactive=True)
    if progress == "plain" or not _watched(sys.stderr if stderr else sys.stdout):
        return Console(stderr=stderr, quiet=quiet, force_interactive=False)
    return Console(stderr=stderr, quiet=quiet)


def _watched(stream: TextIO) -> bool:
    """Whether someone watches `stream`: a terminal, or TTY_INTERACTIVE=1 says so."""
    if os.environ.get("TTY_INTERACTIVE") == "1":
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False
