"""The allocator is the host's: ``import engine`` leaves it alone, the finetune command opts in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_engine_leaves_the_allocator_alone() -> None:
    code = "import engine, engine.models, engine.nn; print(engine.allocator.applied)"
    assert _run(code) == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_finetune_command_keeps_freed_memory() -> None:
    code = (
        "from cli.main import app\n"
        "try:\n"
        "    app(['gradcheck', '--op', 'exp'], standalone_mode=False)\n"
        "finally:\n"
        "    import engine; print(engine.allocator.applied)"
    )
    assert _run(code).splitlines()[-1] == "True"


def test_keep_freed_memory_is_public_and_reports_what_it_did() -> None:
    import engine

    assert engine.keep_freed_memory.__doc__
    code = "import engine; print(engine.keep_freed_memory(), engine.allocator.applied)"
    first, second = _run(code).split()
    assert first == second
