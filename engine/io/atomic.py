"""Atomic file replacement: a reader sees the old file or the new one, never half of one.

The new content goes to a temporary file beside the target (`.NAME.<hex>.tmp`),
which is synced, renamed over the target, and the folder synced, so the rename
survives a crash or a power cut. On failure the temporary file is removed and
the previous file is left as it was. A process killed mid-write can still leave
a temporary file behind: `remove_temporary_files` clears those.

For crash tests, `FINETUNE_TEST_PAUSE_IN_WRITE=NAME[:N]` stops the N-th write
(default the first) of a file called NAME just before its rename, says so on
stderr and waits to be killed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

PAUSE_IN_WRITE = "FINETUNE_TEST_PAUSE_IN_WRITE"
_TEMPORARY = ".*.tmp"
_writes: Counter[str] = Counter()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that replaces `path` when the block ends without an error."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _pause_if_asked(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _sync_directory(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace `path` with `data` (text is written as UTF-8); on failure the old file stays."""
    with atomic_file(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def remove_temporary_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writes killed midway left in `directory`; return them."""
    stale = sorted(Path(directory).glob(_TEMPORARY))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _sync_directory(directory: Path) -> None:
    """Make the rename durable; a no-op where directories cannot be synced."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _pause_if_asked(path: Path) -> None:
    """Wait here forever if the crash tests asked to (see the module docstring)."""
    name, _, nth = os.environ.get(PAUSE_IN_WRITE, "").partition(":")
    if name != path.name:
        return
    _writes[name] += 1
    if _writes[name] == int(nth or 1):
        print(f"{PAUSE_IN_WRITE}: paused before renaming {path}", file=sys.stderr, flush=True)
        while True:
            time.sleep(60)
