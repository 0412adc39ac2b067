"""Central finite differences (float64) against the analytic BPTT, for the NumPy reference and
the native op. Loss: sum(hs * R) + sum(h_n * S) (+ sum(c_n * U) for LSTM), so the backward is
called with dhs=R, dh_n=S, dc_n=U."""
from __future__ import annotations

import numpy as np
import pytest

from rnncore.gradcheck import numeric_gradient

from helpers import CELLS, assert_close, fused_bias, has_cell_state, make_params, run_backward, run_forward

T, B, D, H = 4, 2, 3, 3
EPS = 1e-6
K = 1e-6  # |analytic - numeric| <= K * max|numeric|

VARIANTS = {
    # name: (with h0/c0, lengths, batch_first, keep b_hh)
    "h0-tm": (True, None, False, True),
    "h0-lengths-bf": (True, [4, 2], True, True),
    "zero_h0-lengths-tm": (False, [1, 4], False, True),
    "no_b_hh-bf": (True, None, True, False),
}


def _preactivation_margin(x, wx, wh, b, h0, batch_first):
    """min |a| over the Elman pre-activations (relu is not differentiable at 0), and the
    fraction of them that is positive (live units)."""
    xt = x.swapaxes(0, 1) if batch_first else x
    h = h0 if h0 is not None else np.zeros((xt.shape[1], wh.shape[0]))
    m, live = np.inf, []
    for t in range(xt.shape[0]):
        a = xt[t] @ wx + h @ wh + b
        m = min(m, np.abs(a).min())
        live.append(np.mean(a > 0))
        h = np.maximum(a, 0)
    return m, min(live)


def _setup(cid, cell, variant):
    with_h0, lengths, batch_first, keep_b_hh = variant
    for seed in range(100):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((B, T, D) if batch_first else (T, B, D))
        wx, wh, b_ih, b_hh = make_params(cell, D, H, np.float64, rng, scale=0.8)
        if not keep_b_hh:
            b_hh = None
        h0 = rng.standard_normal((B, H)) * 0.5 if with_h0 else None
        c0 = rng.standard_normal((B, H)) * 0.5 if (with_h0 and has_cell_state(cell)) else None
        if cid != "rnn-relu":
            break
        margin, live = _preactivation_margin(x, wx, wh, b_ih, h0, batch_first)
        if margin > 1e-3 and live >= 0.5:
            break
    else:  # pragma: no cover
        pytest.fail("no seed keeps the relu pre-activations away from 0")
    R = rng.standard_normal((B, T, H) if batch_first else (T, B, H))
    S = rng.standard_normal((B, H))
    U = rng.standard_normal((B, H)) if has_cell_state(cell) else None
    return dict(x=x, wx=wx, wh=wh, b_ih=b_ih, b_hh=b_hh, h0=h0, c0=c0), R, S, U


def _loss(impl, cell, kw, a, R, S, U):
    outs, _ = run_forward(impl, cell, a["x"], (a["wx"], a["wh"], a["b_ih"], a["b_hh"]), a["h0"], a["c0"], **kw)
    loss = np.sum(outs["hs"] * R) + np.sum(outs["h_n"] * S)
    if U is not None:
        loss += np.sum(outs["c_n"] * U)
    return loss


def _numeric(impl, cell, kw, a, name, R, S, U):
    return numeric_gradient(lambda: _loss(impl, cell, kw, a, R, S, U), a[name], EPS)


GRAD_OF = {"dx": "x", "dwx": "wx", "dwh": "wh", "db_ih": "b_ih", "db_hh": "b_hh", "dh0": "h0", "dc0": "c0"}


CASES = [pytest.param(cid, cell, kw, v, id=f"{cid}-{v}") for cid, cell, kw in CELLS for v in VARIANTS
         if not fused_bias(cell) or VARIANTS[v][3]]  # the Elman op has a single bias


@pytest.mark.parametrize("cid,cell,kw,variant", CASES)
@pytest.mark.parametrize("impl", ["reference", "native"])
def test_gradients_match_finite_differences(impl, cid, cell, kw, variant):
    a, R, S, U = _setup(cid, cell, VARIANTS[variant])
    with_h0, lengths, batch_first, _ = VARIANTS[variant]
    fkw = dict(kw, batch_first=batch_first, lengths=None if lengths is None else np.array(lengths))
    _, cache = run_forward(impl, cell, a["x"], (a["wx"], a["wh"], a["b_ih"], a["b_hh"]), a["h0"], a["c0"], **fkw)
    grads = run_backward(impl, cell, cache, R, S, U)

    # h0 = None behaves as zeros; differentiate there explicitly
    if a["h0"] is None:
        a["h0"] = np.zeros((B, H))
        if has_cell_state(cell):
            a["c0"] = np.zeros((B, H))
    checked = []
    for gname, pname in GRAD_OF.items():
        if a[pname] is None:
            assert grads[gname] is None, f"{gname} should be None"
            continue
        num = _numeric(impl, cell, fkw, a, pname, R, S, U)
        assert np.abs(num).max() > 1e-3, f"{pname}: the loss does not depend on it?"
        assert_close(grads[gname], num, K, gname)
        checked.append(gname)
    expected = {"dx", "dwx", "dwh", "db_ih", "dh0"} | ({"db_hh"} if a["b_hh"] is not None else set()) \
        | ({"dc0"} if has_cell_state(cell) else set())
    assert set(checked) == expected
