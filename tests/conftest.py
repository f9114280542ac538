"""Shared fixtures: torch (skips the test when absent) and a seeded NumPy generator."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest


@pytest.fixture
def torch() -> ModuleType:
    return pytest.importorskip("torch")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
