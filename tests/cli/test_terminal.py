"""cli.terminal: live bars only where someone watches, whatever FORCE_COLOR says."""

from __future__ import annotations

import pytest

from cli.terminal import make_console


@pytest.fixture(autouse=True)
def piped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Output to a pipe, in CI's usual environment: FORCE_COLOR=1, no TTY_INTERACTIVE."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    monkeypatch.setattr("sys.stdout.isatty", lambda: False, raising=False)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)


@pytest.mark.parametrize("stderr", [False, True])
def test_force_color_on_a_pipe_colours_but_draws_no_bars(stderr: bool) -> None:
    console = make_console(stderr=stderr)
    assert console.is_terminal  # rich's reading of FORCE_COLOR: colours stay
    assert not console.is_interactive


def test_a_terminal_or_tty_interactive_gets_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    assert make_console().is_interactive
    monkeypatch.setattr("sys.stdout.isatty", lambda: False, raising=False)
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    assert make_console().is_interactive


def test_progress_bars_and_plain_are_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORCE_COLOR")
    assert make_console("bars").is_interactive and make_console("bars").is_terminal
    monkeypatch.setattr("sys.stdout.isatty", lambda: True, raising=False)
    assert not make_console("plain").is_interactive
