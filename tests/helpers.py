"""Shared test helpers: parameter factory, scaled-tolerance comparison, op runners.

(Not named conftest: bench/ has its own conftest.py, and one pytest run collects both.)
"""
from __future__ import annotations

import numpy as np

from rnncore import cells

#: weight blocks per built-in cell (from the registry; test_cells pins the values)
GATES = {c: cells.flavours(c)[0].gates for c in cells.cells(native=True)}

#: atol factor k in ``atol = k * max|ref|`` per dtype
TOL = {np.float32: 1e-4, np.float64: 1e-10}


def _spec(cell):
    return cells.flavours(cell)[0]


def has_cell_state(cell):
    """The cell carries c (c0, c_n, dc_n, dc0): "lstm"."""
    return _spec(cell).has_cell_state


def fused_bias(cell):
    """The cell's op takes one bias (b_hh None): "rnn"."""
    return _spec(cell).fused_bias


def make_params(cell, D, H, dtype, rng, scale=None):
    """Random weights for ``cell`` ("rnn", "lstm", "gru"): ``(wx, wh, b_ih, b_hh)``.

    For a cell whose op takes one bias ("rnn") b_hh is None. Scale ~ 1/sqrt(H) as in PyTorch.
    """
    G = GATES[cell]
    s = scale if scale is not None else 1.0 / np.sqrt(H)
    wx = rng.uniform(-s, s, (D, G * H)).astype(dtype)
    wh = rng.uniform(-s, s, (H, G * H)).astype(dtype)
    b_ih = rng.uniform(-s, s, (G * H,)).astype(dtype)
    b_hh = None if _spec(cell).fused_bias else rng.uniform(-s, s, (G * H,)).astype(dtype)
    return wx, wh, b_ih, b_hh


def make_case(cell, T, B, D, H, dtype, seed, batch_first=False, *, with_h0=True, lengths=True):
    """One op call's data, drawn in this order from ``default_rng(seed)`` (a seed or a
    Generator): x (x's layout), params (:func:`make_params`), h0 and c0 (None without
    ``with_h0``; c0 None without a cell state), dhs, dh_n, dc_n, and lens (B,) ints in [1, T]
    with lens[0] = T (None without ``lengths``)."""
    rng = np.random.default_rng(seed)
    cs = _spec(cell).has_cell_state
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D)).astype(dtype)
    params = make_params(cell, D, H, dtype, rng)
    h0 = (0.5 * rng.standard_normal((B, H))).astype(dtype) if with_h0 else None
    c0 = (0.5 * rng.standard_normal((B, H))).astype(dtype) if (with_h0 and cs) else None
    dhs = rng.standard_normal((B, T, H) if batch_first else (T, B, H)).astype(dtype)
    dh_n = rng.standard_normal((B, H)).astype(dtype)
    dc_n = rng.standard_normal((B, H)).astype(dtype) if cs else None
    lens = None
    if lengths:
        lens = rng.integers(1, T + 1, size=B)
        lens[0] = T
    return x, params, h0, c0, dhs, dh_n, dc_n, lens


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


def _flavour_cases():
    """(id, cell, forward keywords) of every flavour and activation of the built-in cells:
    rnn-tanh, rnn-relu, rnn-sigmoid, lstm, gru, gru-reset-before."""
    out = []
    for cell in cells.cells(native=True):
        for spec in cells.flavours(cell):
            acts = spec.activations if len(spec.activations) > 1 else (None,)
            for act in acts:
                kw = {} if act is None else {"activation": act}
                if spec.flavour is not None:
                    kw[spec.flavour[0]] = spec.flavour[1]
                cid = spec.name.replace("_", "-") + ("" if act is None else f"-{act}")
                out.append((cid, cell, kw))
    return out


#: every cell flavour: (id, cell, keyword arguments of its forward)
CELLS = _flavour_cases()


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
    """Forward of ``cell`` on ``impl`` ("native", "numpy" or "reference"), through the public
    ``<cell>_forward`` with the arguments its spec says it takes.

    Returns ``(outs, cache)``, outs a dict with hs, h_n, c_n (None without a cell state).
    """
    spec = _spec(cell)
    wx, wh, b_ih, b_hh = params
    if not spec.has_cell_state:
        assert c0 is None
    args = (x, wx, wh, b_ih) + (() if spec.fused_bias else (b_hh,)) + (h0,) + ((c0,) if spec.has_cell_state else ())
    with _backend(impl):
        out = getattr(_ops(impl), f"{cell}_forward")(*args, **kw)
    assert len(out) == (4 if spec.has_cell_state else 3)
    return {"hs": out[0], "h_n": out[1], "c_n": out[2] if spec.has_cell_state else None}, out[-1]


GRAD_NAMES = ("dx", "dwx", "dwh", "db_ih", "db_hh", "dh0", "dc0")


def run_backward(impl, cell, cache, dhs, dh_n=None, dc_n=None):
    """Backward of ``cell`` on ``impl``: a dict over GRAD_NAMES (None where absent)."""
    spec = _spec(cell)
    if not spec.has_cell_state:
        assert dc_n is None
    names = ("dx", "dwx", "dwh", "db_ih") + (() if spec.fused_bias else ("db_hh",)) + ("dh0",) \
        + (("dc0",) if spec.has_cell_state else ())
    with _backend(impl):
        g = getattr(_ops(impl), f"{cell}_backward")(dhs, cache, dh_n, *((dc_n,) if spec.has_cell_state else ()))
    assert len(g) == len(names)
    return {**dict.fromkeys(GRAD_NAMES), **dict(zip(names, g))}
