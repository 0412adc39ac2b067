"""Fixtures for the test suite (helpers shared by test modules live in helpers.py)."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(autouse=True, scope="session")
def cores_near():
    """The team's cores count as near each other throughout (rnncore._core.team_set_far(0)): a
    host that moves the vCPUs apart (as the 2-core AMD VM's did every few seconds) would
    otherwise keep small steps and GEMMs on one thread at random, and the tests that check a
    call ran on the team would fail by chance. test_threads.py checks the far side."""
    import rnncore

    core = rnncore._native.core
    if core is not None:
        core.team_set_far(0)
    yield
    if core is not None:
        core.team_set_far(-1)
