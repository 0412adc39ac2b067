"""pytest-benchmark setup for bench/: thread control and the machine facts saved with results.

Run the smoke check (each op once, outputs checked):   python -m pytest bench -q --benchmark-disable
Run the benchmarks:                                    python -m pytest bench
``--rnn-threads N`` pins every implementation to N threads (rnncore, NumPy's BLAS, torch);
the default is 1 (reproducible, and safe on a busy CI runner); 0 leaves each at its own default.
The implementations are the ones ``rnncore bench`` times (:mod:`rnncore.benchmark`).
Nothing here is imported by the tests (tests/ has a conftest.py too): only hooks and fixtures.
"""
from __future__ import annotations

import os

import pytest

from rnncore import benchmark as rb


def pytest_addoption(parser):
    parser.addoption("--rnn-threads", type=int, default=1,
                     help="threads for every implementation (rnncore, NumPy BLAS, torch); default 1; "
                          "0: leave each at its own default")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what decides the numbers next to pytest-benchmark's own machine info."""
    env = rb.environment(want_torch=True)
    machine_info["rnncore"] = {k: env[k] for k in ("cpu", "isa", "rnncore_blas", "numpy_blas", "torch",
                                                   "OPENBLAS_CORETYPE", "OMP_NUM_THREADS")}


@pytest.fixture
def make_runner(request):
    """``make_runner(impl, problem)`` -> that implementation set up (and thread-pinned) on the problem."""
    n = request.config.getoption("--rnn-threads") or None
    stack = []

    def make(impl, problem):
        if impl == "torch":
            pytest.importorskip("torch")
        runner = rb.FACTORIES[impl](problem)
        if n is not None:
            cm = runner.threads(n)
            cm.__enter__()
            stack.append(cm)
        return runner

    yield make
    while stack:
        stack.pop().__exit__(None, None, None)


@pytest.fixture
def threads_info(request):
    n = request.config.getoption("--rnn-threads")
    return n if n else f"default ({os.cpu_count()} CPUs)"
