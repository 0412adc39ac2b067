"""pytest-benchmark setup for bench/: shared problems, reference results, thread control.

Run the smoke check (each op once, outputs checked):   python -m pytest bench -q --benchmark-disable
Run the benchmarks:                                    python -m pytest bench --benchmark-group-by=group
``--rnn-threads N`` pins every implementation to N threads (rnncore, NumPy's BLAS, torch);
the default is 1 (reproducible, and safe on a busy CI runner); 0 leaves each at its own default. The implementations are the ones ``rnncore bench`` times
(:mod:`rnncore.benchmark`).
"""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from rnncore import benchmark as rb

#: sequence length of every bench case
T = 50
#: max|impl - reference| <= TOL * max|reference| (float32, T = 50)
TOL = 1e-4


def pytest_addoption(parser):
    parser.addoption("--rnn-threads", type=int, default=1,
                     help="threads for every implementation (rnncore, NumPy BLAS, torch); default 1; "
                          "0: leave each at its own default")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Record what decides the numbers next to pytest-benchmark's own machine info."""
    env = rb.environment(want_torch=True)
    machine_info["rnncore"] = {k: env[k] for k in ("cpu", "isa", "rnncore_blas", "numpy_blas", "torch",
                                                   "OPENBLAS_CORETYPE", "OMP_NUM_THREADS")}


@functools.lru_cache(maxsize=None)
def problem(cell, B, H):
    return rb.Problem(cell, T, B, H, "float32", seed=0)


def reference(impl, cell, B, H):
    """Outputs the timed ``impl`` must match: the twin's for native and torch, native's for the twin."""
    return _outputs("native" if impl == "twin" else "twin", cell, B, H)


@functools.lru_cache(maxsize=8)
def _outputs(impl, cell, B, H):
    runner = rb.FACTORIES[impl](problem(cell, B, H))
    with runner.threads(1):  # one thread: robust on a busy machine, and this part is not timed
        runner.forward_backward()
    return runner.result()


def assert_close(name, actual, ref):
    actual, ref = np.asarray(actual), np.asarray(ref)
    assert actual.shape == ref.shape, f"{name}: shape {actual.shape} != {ref.shape}"
    scale = float(np.max(np.abs(ref))) or 1.0
    err = float(np.max(np.abs(actual.astype(np.float64) - ref))) / scale
    assert err <= TOL, f"{name}: max|diff| / max|ref| = {err:.2e} > {TOL:g}"


@pytest.fixture
def make_runner(request):
    """``make_runner(impl, cell, B, H)`` -> the implementation set up (and thread-pinned) on that problem."""
    n = request.config.getoption("--rnn-threads") or None
    stack = []

    def make(impl, cell, B, H):
        if impl == "torch":
            pytest.importorskip("torch")
        runner = rb.FACTORIES[impl](problem(cell, B, H))
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
