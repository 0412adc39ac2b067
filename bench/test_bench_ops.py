"""pytest-benchmark suites: rnn / lstm / gru forward and forward+backward (BPTT).

Implementations: rnncore native, rnncore's NumPy twin, and torch.nn.RNN/LSTM/GRU when
PyTorch imports (skipped otherwise); T = 50, D = H, float32, B in {1, 64}, H in {128, 512}.
Every test also checks what it timed: native and torch against the twin, the twin against
native (see conftest.TOL). No assertion here depends on time.

    python -m pytest bench -q --benchmark-disable            # smoke: each case once, checked
    python -m pytest bench --benchmark-group-by=group        # timings, grouped by cell/op/size
"""
from __future__ import annotations

import pytest

from conftest import T, assert_close, reference
from rnncore.benchmark import GATES, flops_forward

IMPLS = ["native", "twin", "torch"]
CELLS = ["rnn", "lstm", "gru"]
GRID = pytest.mark.parametrize("B,H", [(1, 128), (1, 512), (64, 128), (64, 512)],
                               ids=lambda v: str(v))


def _label(benchmark, op, impl, cell, B, H, threads):
    benchmark.group = f"{cell} {op} T={T} B={B} H={H}"
    flops = flops_forward(T, B, H, H, GATES[cell]) * (1 if op == "forward" else 3)
    benchmark.extra_info.update(impl=impl, cell=cell, op=op, T=T, B=B, H=H, D=H, threads=threads,
                                flops=flops)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
@GRID
def test_forward(benchmark, make_runner, threads_info, impl, cell, B, H):
    runner = make_runner(impl, cell, B, H)
    _label(benchmark, "forward", impl, cell, B, H, threads_info)
    hs = benchmark(runner.forward)
    assert_close(f"{impl} {cell} hs", hs, reference(impl, cell, B, H)["hs"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
@GRID
def test_forward_backward(benchmark, make_runner, threads_info, impl, cell, B, H):
    runner = make_runner(impl, cell, B, H)
    _label(benchmark, "forward+backward", impl, cell, B, H, threads_info)
    benchmark(runner.forward_backward)
    ref = reference(impl, cell, B, H)
    got = runner.result()
    for name, r in ref.items():
        assert_close(f"{impl} {cell} {name}", got[name], r)
