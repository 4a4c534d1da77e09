"""Shared pytest fixtures for threshold-fl.

pytest runs under the project's Python 3.10 venv (``make test``); configuration is in
pyproject.toml ([tool.pytest.ini_options]: asyncio_mode = "auto", marker ``slow``).
"""

from __future__ import annotations

import numpy as np
import pytest

#: Seed for test randomness, so that failures reproduce.
SEED = 20240521


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded numpy Generator (the same stream in every test)."""
    return np.random.default_rng(SEED)
