"""The real command in a subprocess (`python -m cli.main ...`), for the end-to-end tests.

Output is plain: the environment drops what makes rich treat a pipe as a terminal
(tests that want bars add FORCE_COLOR or --progress bars themselves) and FINETUNE_DEBUG,
and sets a wide COLUMNS so messages are not wrapped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

COMMAND = (sys.executable, "-m", "cli.main")
TERMINAL_VARIABLES = {"FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "FINETUNE_DEBUG"}


def plain_env(**extra: str) -> dict[str, str]:
    """The environment for a child with plain output, plus `extra` variables."""
    kept = {k: v for k, v in os.environ.items() if k not in TERMINAL_VARIABLES}
    return {**kept, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", **extra}


def finetune(
    *args: str, cwd: Path | None = None, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess:
    """Run `finetune ARGS` to its end in `cwd`, with `env` added to the plain environment."""
    return subprocess.run(
        [*COMMAND, *args],
        cwd=cwd,
        env=plain_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Started:
    """A command running in the background, its stdout and stderr going to files."""

    def __init__(self, command: Sequence[str], cwd: Path, env: Mapping[str, str]) -> None:
        out = tempfile.NamedTemporaryFile("w", suffix=".out", delete=False)  # noqa: SIM115
        err = tempfile.NamedTemporaryFile("w", suffix=".err", delete=False)  # noqa: SIM115
        self.stdout, self.stderr = Path(out.name), Path(err.name)
        with out, err:
            self.process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err)

    def output(self) -> tuple[str, str]:
        return self.stdout.read_text(), self.stderr.read_text()

    def wait_until(self, ready: Callable[[str, str], bool], timeout: float = 300) -> None:
        """Wait until `ready(stdout, stderr)`; fail with the child's output if it ends first."""
        deadline = time.monotonic() + timeout
        while not ready(*self.output()):
            if self.process.poll() is not None:
                self.fail(f"finetune exited ({self.process.returncode}) too early")
            if time.monotonic() > deadline:
                self.fail(f"finetune still not there after {timeout}s")
            time.sleep(0.02)

    def finish(self, timeout: float = 300) -> subprocess.CompletedProcess:
        """Wait for the end; the exit code and output, the files removed."""
        self.process.wait(timeout)
        out, err = self.output()
        self.stdout.unlink()
        self.stderr.unlink()
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, out, err)

    def fail(self, why: str) -> None:
        """Stop the child and fail the test, showing its output."""
        self.process.kill()
        done = self.finish()
        pytest.fail(f"{why}:\n{done.stdout}{done.stderr}")


def start(*args: str, cwd: Path, **env: str) -> Started:
    """`finetune ARGS` in the background, with `env` added to the plain environment."""
    return Started([*COMMAND, *args], cwd, plain_env(**env))


def words(text: str) -> str:
    """The text without box-drawing characters and line wrapping, for substring checks."""
    return " ".join(re.sub("[\u2500-\u257f]", " ", text).split())
