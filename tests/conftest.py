"""Fixtures for the test suite (helpers shared by test modules live in helpers.py)."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
