"""The mutation fuzzer (tests/fuzz.py) in a process of its own, so that a crash fails the test
instead of killing the run; that it can fail; and that memory stays flat over many calls."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

import rnncore

HERE = os.path.dirname(os.path.abspath(__file__))


def _fuzz_module():
    sys.path.insert(0, HERE)
    try:
        import fuzz
    finally:
        sys.path.remove(HERE)
    return fuzz


@pytest.mark.parametrize("seed", [11, 12])
def test_fuzz_in_a_child_process(seed):
    r = subprocess.run([sys.executable, os.path.join(HERE, "fuzz.py"), "--calls", "3000", "--seed", str(seed)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])  # a crash is a negative code
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    assert counts["failures"] == 0 and counts["calls"] == 3000
    assert counts["valid_ok"] > 500 and counts["refused"] > 500  # both kinds were exercised


def test_fuzzer_catches_a_wrong_result_and_an_unnamed_error(monkeypatch):
    fuzz = _fuzz_module()
    real = rnncore.rnn_forward

    def wrong(*a, **k):  # silently wrong on the native backend, errors that name nothing
        if rnncore.get_backend() == "numpy":
            return real(*a, **k)
        try:
            hs, h_n, c = real(*a, **k)
        except (ValueError, TypeError):
            raise ValueError("bad input") from None
        return hs * 1.01, h_n, c

    monkeypatch.setattr(rnncore, "rnn_forward", wrong)
    counts, failures = fuzz.run(300, seed=5)
    assert any("differs from the twin" in f for f in failures), failures[:5]
    assert any("does not name it" in f for f in failures), failures[:5]


_RSS_PROBE = r'''
import json, numpy as np, rnncore
from rnncore import dense

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

rng = np.random.default_rng(0)
T, B, D, H = 5, 3, 4, 8
x = rng.standard_normal((T, B, D)); h0 = rng.standard_normal((B, H))
W = {c: (rng.standard_normal((D, g * H)), rng.standard_normal((H, g * H)), np.zeros(g * H))
     for c, g in (("rnn", 1), ("lstm", 4), ("gru", 3))}
dhs = np.ones((T, B, H))

def calls():
    for cell, (wx, wh, b) in W.items():
        f, g = getattr(rnncore, cell + "_forward"), getattr(rnncore, cell + "_backward")
        out = f(x, wx, wh, b, h0) if cell == "rnn" else f(x, wx, wh, b, b, h0)
        g(dhs, out[-1])
    y = dense.affine_forward(x.reshape(-1, D), W["rnn"][0])
    dense.affine_backward(y, x.reshape(-1, D), W["rnn"][0])
    rnncore.softmax_cross_entropy(y, np.zeros(len(y), np.int64))

for _ in range(1000):
    calls()
before = rss()
for _ in range(10000):
    calls()
print(json.dumps({"before": before, "after": rss()}))
'''


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="AddressSanitizer's quarantine holds freed memory on purpose")
def test_rss_stays_flat_over_ten_thousand_calls_of_each_op():
    r = subprocess.run([sys.executable, "-c", _RSS_PROBE], capture_output=True, text=True, check=True, timeout=600)
    m = json.loads(r.stdout.strip().splitlines()[-1])
    grown = m["after"] - m["before"]
    assert grown < 4 << 20, f"RSS grew by {grown / 2**20:.1f} MiB over 10^4 calls of each op"


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_fuzz_seeds_from_hypothesis(seed):
    """Hypothesis picks the fuzzer's seeds (bounded: 40 seeds x 25 calls, in-process; the child-
    process test above is the one that survives a crash)."""
    counts, failures = _fuzz_module().run(25, seed)
    assert not failures, failures[:5]
