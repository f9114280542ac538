"""Errors the command line reports as one clear message, without a traceback."""

from __future__ import annotations


class FinetuneError(Exception):
    """Base class: a problem with the user's input, not a bug in finetune."""

    shared = False  # raised by every process of a job at the same point: rank 0 reports it


class ConfigError(FinetuneError):
    """One or more problems in a config; all of them are listed at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        header = f"{count} problem{'s' if count != 1 else ''} in the config:"
        super().__init__("\n".join([header, *(f"  - {p}" for p in self.problems)]))


class DataError(FinetuneError):
    """A dataset that cannot be read: missing folders, unreadable images, bad arrays."""
