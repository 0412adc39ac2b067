"""Shared test helpers: parameter factory, scaled-tolerance comparison, op runners.

(Not named conftest: bench/ has its own conftest.py, and one pytest run collects both.)
"""
from __future__ import annotations

import numpy as np

#: weight blocks per cell
GATES = {"rnn": 1, "lstm": 4, "gru": 3}

#: atol factor k in ``atol = k * max|ref|`` per dtype
TOL = {np.float32: 1e-4, np.float64: 1e-10}


def make_params(cell, D, H, dtype, rng, scale=None):
    """Random weights for ``cell`` ("rnn", "lstm", "gru"): ``(wx, wh, b_ih, b_hh)``.

    For "rnn" b_hh is None (the Elman op takes one bias). Scale ~ 1/sqrt(H) as in PyTorch.
    """
    G = GATES[cell]
    s = scale if scale is not None else 1.0 / np.sqrt(H)
    wx = rng.uniform(-s, s, (D, G * H)).astype(dtype)
    wh = rng.uniform(-s, s, (H, G * H)).astype(dtype)
    b_ih = rng.uniform(-s, s, (G * H,)).astype(dtype)
    b_hh = None if cell == "rnn" else rng.uniform(-s, s, (G * H,)).astype(dtype)
    return wx, wh, b_ih, b_hh


def assert_close(actual, ref, k, name=""):
    """``|actual - ref| <= k * max|ref|`` elementwise (both None is fine)."""
    if ref is None:
        assert actual is None, f"{name}: expected None, got {type(actual).__name__}"
        return
    assert actual is not None, f"{name}: got None"
    actual = np.asarray(actual)
    ref = np.asarray(ref)
    assert actual.shape == ref.shape, f"{name}: shape {actual.shape} != {ref.shape}"
    assert actual.dtype == ref.dtype, f"{name}: dtype {actual.dtype} != {ref.dtype}"
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    atol = k * max(scale, np.finfo(ref.dtype).tiny)
    np.testing.assert_allclose(actual, ref, rtol=0, atol=atol, err_msg=name)


#: every cell flavour: (id, cell, keyword arguments of its forward)
CELLS = [
    ("rnn-tanh", "rnn", {"activation": "tanh"}),
    ("rnn-relu", "rnn", {"activation": "relu"}),
    ("rnn-sigmoid", "rnn", {"activation": "sigmoid"}),
    ("lstm", "lstm", {}),
    ("gru", "gru", {"reset_after": True}),
    ("gru-reset-before", "gru", {"reset_after": False}),
]


def _ops(impl):
    """The module whose functions to call: "reference" is rnncore.reference; "native" and
    "numpy" are rnncore's exports (the caller picks the backend)."""
    import rnncore

    return rnncore.reference if impl == "reference" else rnncore


def _backend(impl):
    import contextlib

    import rnncore

    return contextlib.nullcontext() if impl == "reference" else rnncore.use_backend(impl)


def run_forward(impl, cell, x, params, h0=None, c0=None, **kw):
    """Forward of ``cell`` on ``impl`` ("native", "numpy" or "reference").

    Returns ``(outs, cache)``, outs a dict with hs, h_n, c_n (None except for LSTM).
    """
    wx, wh, b_ih, b_hh = params
    m = _ops(impl)
    with _backend(impl):
        if cell == "rnn":
            assert c0 is None
            hs, h_n, cache = m.rnn_forward(x, wx, wh, b_ih, h0, **kw)
            c_n = None
        elif cell == "lstm":
            hs, h_n, c_n, cache = m.lstm_forward(x, wx, wh, b_ih, b_hh, h0, c0, **kw)
        else:
            assert c0 is None
            hs, h_n, cache = m.gru_forward(x, wx, wh, b_ih, b_hh, h0, **kw)
            c_n = None
    return {"hs": hs, "h_n": h_n, "c_n": c_n}, cache


GRAD_NAMES = ("dx", "dwx", "dwh", "db_ih", "db_hh", "dh0", "dc0")


def run_backward(impl, cell, cache, dhs, dh_n=None, dc_n=None):
    """Backward of ``cell`` on ``impl``: a dict over GRAD_NAMES (None where absent)."""
    m = _ops(impl)
    with _backend(impl):
        if cell == "rnn":
            assert dc_n is None
            dx, dwx, dwh, db, dh0 = m.rnn_backward(dhs, cache, dh_n)
            g = (dx, dwx, dwh, db, None, dh0, None)
        elif cell == "lstm":
            g = m.lstm_backward(dhs, cache, dh_n, dc_n)
        else:
            assert dc_n is None
            dx, dwx, dwh, db_ih, db_hh, dh0 = m.gru_backward(dhs, cache, dh_n)
            g = (dx, dwx, dwh, db_ih, db_hh, dh0, None)
    assert len(g) == len(GRAD_NAMES)
    return dict(zip(GRAD_NAMES, g))
