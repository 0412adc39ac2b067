"""The cell registry: a throwaway twin-only cell (a spec entry and its NumPy step functions,
nothing else) runs through the ops, the stacked layers, a layer class and the interop, trains
on the NumPy backend, passes the finite-difference check, and is refused on the native one."""
from __future__ import annotations

import numpy as np
import pytest

import rnncore
from rnncore import cells, layers
from rnncore.gradcheck import gradcheck
from rnncore.reference import sigmoid

# -- the minimal gated unit (Zhou et al. 2016), G = 2, gates (f, n), two biases --------------
#   f = sigmoid(x W_f + b_if + h W_hf + b_hf)
#   n = tanh(x W_n + b_in + (f * h) W_hn + b_hn)
#   h' = (1 - f) * h + f * n
# cache: [f, n, f * h] (3 blocks of H)


def mgu_step_forward(xw_t, h_prev, c_prev, inp):
    H = inp.H
    b_hh = inp.b_hh if inp.b_hh is not None else np.zeros_like(inp.b_ih)
    a = xw_t + inp.b_ih
    f = sigmoid(a[:, :H] + h_prev @ inp.wh[:, :H] + b_hh[:H])
    fh = f * h_prev
    n = np.tanh(a[:, H:] + fh @ inp.wh[:, H:] + b_hh[H:])
    h = (1 - f) * h_prev + f * n
    return h, None, np.concatenate([f, n, fh], axis=1)


def mgu_step_backward(dh, dc, h_prev, c_prev, h, c, gates, inp):
    H = inp.H
    wh = inp.wh
    f, n, fh = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    dn = dh * f * (1 - n * n)
    dfh = dn @ wh[:, H:].T
    df = (dh * (n - h_prev) + dfh * h_prev) * f * (1 - f)
    da = np.concatenate([df, dn], axis=1)
    dh_prev = df @ wh[:, :H].T + dfh * f + dh * (1 - f)
    dwh = np.concatenate([h_prev.T @ df, fh.T @ dn], axis=1)
    return da, da, dh_prev, None, dwh


MGU = cells.CellSpec("mgu", gates=2, cache_gates=3, has_cell_state=False, biases=("b_ih", "b_hh"),
                     step_forward=mgu_step_forward, step_backward=mgu_step_backward)


@pytest.fixture
def mgu():
    cells.register(MGU)
    try:
        with rnncore.use_backend("numpy"):
            yield MGU
    finally:
        cells.unregister(MGU.name)


def test_builtin_cells_are_registered_with_their_kernels():
    assert cells.cells() == ("rnn", "lstm", "gru")
    assert cells.cells(native=True) == ("rnn", "lstm", "gru")
    assert [s.name for s in cells.flavours("gru")] == ["gru", "gru_reset_before"]
    assert cells.resolve("gru", reset_after=False).name == "gru_reset_before"
    assert cells.resolve("gru", reset_after=True).name == "gru"
    assert {c: cells.flavours(c)[0].gates for c in cells.cells()} == {"rnn": 1, "lstm": 4, "gru": 3}
    assert cells.get("rnn").fused_bias and not cells.get("lstm").fused_bias
    with pytest.raises(ValueError, match="already registered"):
        cells.register(cells.get("rnn"))


def test_a_twin_only_cell_trains_through_the_layers_on_the_numpy_backend(mgu):
    """Registered with nothing but its spec, the cell trains in a layers.Recurrent stack
    (two layers, bidirectional) under SGD: the loss goes down."""
    rng = np.random.default_rng(0)
    N, T, D, H = 4, 6, 3, 5
    rnn = layers.Recurrent(D, H, num_layers=2, bidirectional=True, cell="mgu", rng=1, dtype=np.float64)
    head = layers.Linear(2 * H, 1, rng=2, dtype=np.float64)
    assert [w[0].shape for w in rnn.weights] == [(D, 2 * H), (D, 2 * H), (2 * H, 2 * H), (2 * H, 2 * H)]
    xs = rng.standard_normal((N, T, D))
    target = np.cumsum(xs[..., :1], axis=1) / T  # a running mean: needs the recurrence
    losses = []
    for _ in range(80):
        y = head.forward(rnn.forward(xs))
        err = y - target
        losses.append(float(np.mean(err * err)))
        rnn.backward(head.backward(2 * err / err.size))
        for p, g in zip(rnn.params + head.params, rnn.grads + head.grads):
            p -= 0.1 * g
    assert losses[-1] < 0.3 * losses[0], losses[::10]
    assert rnn.mode == rnn.cell == "mgu"


def test_a_twin_only_cell_passes_the_finite_difference_check(mgu):
    rng = np.random.default_rng(3)
    layer = layers.Recurrent(3, 4, num_layers=2, bidirectional=True, cell="mgu", rng=4, dtype=np.float64)
    xs = rng.standard_normal((2, 5, 3))
    errs = gradcheck(layer, xs, lengths=np.array([5, 3]))
    assert max(errs.values()) < 1e-6, errs


def test_a_twin_only_cell_through_the_functional_ops(mgu):
    """The private op pair carries it, the stacked op too, with lengths and an initial
    state; the driver's cache has the spec's blocks."""
    from rnncore import _ops

    rng = np.random.default_rng(5)
    T, B, D, H = 4, 3, 2, 3
    x = rng.standard_normal((T, B, D))
    wx, wh = rng.standard_normal((D, 2 * H)) * 0.5, rng.standard_normal((H, 2 * H)) * 0.5
    b_ih, b_hh, h0 = rng.standard_normal(2 * H), rng.standard_normal(2 * H), rng.standard_normal((B, H))
    hs, h_n, c_n, cache = _ops.forward("mgu", x, wx, wh, b_ih, b_hh, h0, lengths=[4, 2, 1])
    assert c_n is None and cache.gates.shape == (T, B, 3 * H) and cache.cs is None
    np.testing.assert_array_equal(hs[2:, 1], 0)
    np.testing.assert_array_equal(h_n[1], hs[1, 1])
    dx, dwx, dwh, db_ih, db_hh, dh0, dc0 = _ops.backward(cache, np.ones_like(hs))
    assert dwh.shape == wh.shape and db_hh.shape == (2 * H,) and dc0 is None
    out, h_n2, c_n2, rcache = rnncore.recurrent_forward("mgu", x, [(wx, wh, b_ih, b_hh)], h0[None])
    np.testing.assert_allclose(out, _ops.forward("mgu", x, wx, wh, b_ih, b_hh, h0)[0], rtol=1e-12)
    dx2, dweights, _, _ = rnncore.recurrent_backward(np.ones_like(out), rcache)
    assert repr(rcache).startswith("RecurrentCache(mgu,")
    with pytest.raises(ValueError, match=r"mgu_forward: wx must have shape \(D, 2\*H\)"):
        _ops.forward("mgu", x, np.ascontiguousarray(wx[:, :5]), wh, b_ih, b_hh)
    with pytest.raises(ValueError, match="c0 is for mode='lstm' only"):
        rnncore.recurrent_forward("mgu", x, [(wx, wh, b_ih, b_hh)], c0=h0[None])


def test_a_twin_only_cell_is_refused_on_the_native_backend(mgu):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 1, 2))
    w = (rng.standard_normal((2, 4)), rng.standard_normal((2, 4)), np.zeros(4), np.zeros(4))
    with rnncore.use_backend("native"):
        with pytest.raises(RuntimeError, match=r"mgu_forward: the cell 'mgu' has no native kernel.*"
                                               r"set_backend\(\"numpy\"\)"):
            rnncore.recurrent_forward("mgu", x, [w])
    _, _, _, cache = rnncore.recurrent_forward("mgu", x, [w])  # a cache from the twin ...
    with rnncore.use_backend("native"):  # ... is not run backwards natively either
        with pytest.raises(RuntimeError, match="no native kernel"):
            rnncore.recurrent_backward(None, cache)


def test_interop_names_the_cell_rather_than_guessing_it(mgu):
    """With two cells of one gate count the state dict cannot say which it is: without
    ``mode`` from_state_dict asks for it; the built-in cells with a count of their own are
    still inferred."""
    layer = layers.Recurrent(3, 4, cell="mgu", rng=0)
    sd = layer.state_dict()
    mode, weights, _, _ = rnncore.from_state_dict(sd, mode="mgu")
    assert mode == "mgu"
    np.testing.assert_array_equal(weights[0][1], layer.weights[0][1])
    assert rnncore.from_state_dict(layers.LSTM(3, 4).state_dict())[0] == "lstm"
    two = cells.CellSpec("mgu2", gates=2, cache_gates=3, has_cell_state=False, biases=("b_ih", "b_hh"),
                         step_forward=mgu_step_forward, step_backward=mgu_step_backward)
    cells.register(two)
    try:
        with pytest.raises(ValueError, match=r"2 gate blocks, which fits the cells \('mgu', 'mgu2'\); pass mode="):
            rnncore.from_state_dict(sd)
        assert rnncore.from_state_dict(sd, mode="mgu2")[0] == "mgu2"
    finally:
        cells.unregister("mgu2")
    assert rnncore.from_state_dict(sd)[0] == "mgu"


def test_a_registered_cell_is_a_language_model_choice(mgu):
    from rnncore.models import LanguageModel

    model = LanguageModel(7, 6, embed_size=4, cell="mgu", dtype=np.float64)
    assert type(model.rnn) is layers.Recurrent and model.rnn.cell == "mgu"
    xs = np.arange(12).reshape(2, 6) % 7
    errs = gradcheck(model, xs, (xs + 1) % 7, eps=1e-5, max_checks=24)  # as test_models' LSTM check
    assert max(errs.values()) < 1e-4, errs


def test_the_native_cell_table_matches_the_registry():
    """Every native spec is a row of the C++ cell table (csrc/cells.h traits) with the same
    gates, cache blocks and cell state, and the table has no other cell."""
    from rnncore._native import core

    if core is None or not hasattr(core, "cells"):
        pytest.skip("this build has no cell table (_core.cells)")
    table = {c["name"]: (c["gates"], c["cache_blocks"], bool(c["has_c"])) for c in core.cells()}
    specs = [s for c in cells.cells() for s in cells.flavours(c) if s.native]
    assert table == {s.name: (s.gates, s.cache_gates, s.has_cell_state) for s in specs}
