"""Grad mode: whether ops record the graph. ``no_grad``, ``enable_grad``, ``set_grad_enabled``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_enabled = True


def is_grad_enabled() -> bool:
    return _enabled


class _GradMode:
    """Context manager and decorator that sets grad mode and restores it on exit."""

    mode: bool

    def __enter__(self) -> None:
        global _enabled
        self._prev = _enabled
        _enabled = self.mode

    def __exit__(self, *exc: object) -> None:
        global _enabled
        _enabled = self._prev

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self.__class__(*self._args()):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def _args(self) -> tuple:
        return ()


class _NoParamGradMode(_GradMode):
    """A grad mode that is also a decorator without parentheses: ``@no_grad`` as ``@no_grad()``."""

    def __new__(cls, fn: F | None = None) -> Any:
        mode = super().__new__(cls)
        return mode if fn is None else mode(fn)

    def __init__(self, fn: F | None = None) -> None:
        pass


class no_grad(_NoParamGradMode):  # noqa: N801 - torch's name
    mode = False


class enable_grad(_NoParamGradMode):  # noqa: N801
    mode = True


class set_grad_enabled(_GradMode):  # noqa: N801
    """Set grad mode to ``mode``: at once, like torch; also a context manager and decorator."""

    def __init__(self, mode: bool) -> None:
        global _enabled
        self.mode = bool(mode)
        self._prev = _enabled
        _enabled = self.mode

    def __enter__(self) -> None:
        pass

    def __call__(self, fn: F) -> F:
        global _enabled
        _enabled = self._prev  # used as a decorator: undo the immediate switch
        return super().__call__(fn)

    def _args(self) -> tuple:
        return (self.mode,)
