"""Native ops against their NumPy twin (rnncore.reference), and the ops' own invariants:
lengths, chunked (truncated) BPTT, dh_n, layouts, backend switch, cache interchange."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnncore
from helpers import (CELLS, GATES, TOL, assert_close, fused_bias, has_cell_state, make_case, make_params,
                     run_backward, run_forward)

CELL_IDS = [c[0] for c in CELLS]
DTYPES = [np.float32, np.float64]


def _inputs(cell, T, B, D, H, dtype, rng, *, batch_first=False, with_h0=True):
    """x, params, h0, c0, dhs, dh_n, dc_n for one call: :func:`helpers.make_case` without lengths."""
    return make_case(cell, T, B, D, H, dtype, rng, batch_first, with_h0=with_h0, lengths=False)[:7]


def _lengths(mode, T, B, rng):
    if mode is None:
        return None
    if mode == "full":
        return np.full(B, T, dtype=np.int64)
    # mixed: include 1 and T when there is room for them
    lens = rng.integers(1, T + 1, size=B)
    if B >= 2:
        lens[0], lens[-1] = T, 1
    return lens


def _compare(a, b, k, what=""):
    for name in a:
        assert_close(a[name], b[name], k, f"{what}{name}")


def _both(cell, kw, x, params, h0, c0, dhs, dh_n, dc_n, impls=("native", "reference"), **fkw):
    res = []
    for impl in impls:
        outs, cache = run_forward(impl, cell, x, params, h0, c0, **kw, **fkw)
        grads = run_backward(impl, cell, cache, dhs, dh_n, dc_n)
        res.append((outs, grads))
    return res


# -- native vs the twin over a grid --------------------------------------------------------

SHAPES = [  # T, B, D, H
    (1, 1, 1, 1),
    (1, 3, 2, 4),
    (5, 1, 3, 2),
    (6, 3, 4, 5),  # D != H
    (3, 2, 5, 1),
]


@pytest.mark.parametrize("lengths_mode", [None, "full", "mixed"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T%dB%dD%dH%d" % s)
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_native_matches_reference(cid, cell, kw, shape, dtype, batch_first, with_h0, lengths_mode):
    T, B, D, H = shape
    rng = np.random.default_rng(zlib.crc32(repr((cid, shape, batch_first, with_h0, lengths_mode)).encode()))
    x, params, h0, c0, dhs, dh_n, dc_n = _inputs(cell, T, B, D, H, dtype, rng, batch_first=batch_first,
                                                 with_h0=with_h0)
    lengths = _lengths(lengths_mode, T, B, rng)
    (o_nat, g_nat), (o_ref, g_ref) = _both(cell, kw, x, params, h0, c0, dhs, dh_n, dc_n,
                                           batch_first=batch_first, lengths=lengths)
    k = TOL[dtype]
    _compare(o_nat, o_ref, k, "out ")
    _compare(g_nat, g_ref, k, "grad ")
    # shapes and dtypes of what comes back
    hshape = (B, T, H) if batch_first else (T, B, H)
    assert o_nat["hs"].shape == hshape and o_nat["hs"].dtype == dtype
    assert o_nat["h_n"].shape == (B, H)
    assert g_nat["dx"].shape == x.shape and g_nat["dx"].dtype == dtype
    assert g_nat["dwx"].shape == params[0].shape and g_nat["dwh"].shape == params[1].shape
    assert g_nat["db_ih"].shape == (GATES[cell] * H,)
    assert g_nat["dh0"].shape == (B, H)  # even without h0
    if has_cell_state(cell):
        assert g_nat["dc0"].shape == (B, H) and o_nat["c_n"].shape == (B, H)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_dhs_none_and_dh_n_none(cid, cell, kw, dtype):
    """dhs=None means zeros; dh_n=None means zeros; both backends agree."""
    rng = np.random.default_rng(7)
    T, B, D, H = 4, 3, 2, 3
    x, params, h0, c0, dhs, dh_n, dc_n = _inputs(cell, T, B, D, H, dtype, rng)
    for impl in ("native", "reference"):
        outs, cache = run_forward(impl, cell, x, params, h0, c0, **kw)
        only_final = run_backward(impl, cell, cache, None, dh_n, dc_n)
        explicit = run_backward(impl, cell, cache, np.zeros_like(dhs), dh_n, dc_n)
        _compare(only_final, explicit, 0.0, impl + " ")
        only_seq = run_backward(impl, cell, cache, dhs)
        explicit = run_backward(impl, cell, cache, dhs, np.zeros_like(dh_n),
                                None if dc_n is None else np.zeros_like(dc_n))
        _compare(only_seq, explicit, 0.0, impl + " ")
        # and the final-state gradient really does something
        assert np.abs(only_final["dx"]).max() > 0
        nothing = run_backward(impl, cell, cache, None)
        for name, g in nothing.items():
            if g is not None:
                assert not np.any(g), f"{impl} {name} nonzero with no incoming gradient"
    # the null dhs agrees across backends
    o_n, c_n = run_forward("native", cell, x, params, h0, c0, **kw)
    o_r, c_r = run_forward("reference", cell, x, params, h0, c0, **kw)
    _compare(run_backward("native", cell, c_n, None, dh_n, dc_n),
             run_backward("reference", cell, c_r, None, dh_n, dc_n), TOL[dtype])


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("cid,cell,kw", [c for c in CELLS if not fused_bias(c[1])], ids=[c[0] for c in CELLS[3:]])
def test_b_hh_none_is_zero_bias(cid, cell, kw, impl):
    """b_hh=None acts like zeros (and db_hh comes back None), on both implementations."""
    rng = np.random.default_rng(29)
    T, B, D, H = 4, 3, 2, 3
    x, params, h0, c0, dhs, dh_n, dc_n = _inputs(cell, T, B, D, H, np.float64, rng)
    wx, wh, b_ih, b_hh = params
    o0, c_0 = run_forward(impl, cell, x, (wx, wh, b_ih, np.zeros_like(b_hh)), h0, c0, **kw)
    g0 = run_backward(impl, cell, c_0, dhs, dh_n, dc_n)
    o1, c_1 = run_forward(impl, cell, x, (wx, wh, b_ih, None), h0, c0, **kw)
    g1 = run_backward(impl, cell, c_1, dhs, dh_n, dc_n)
    _compare(o1, o0, 1e-14, "out ")
    assert g1["db_hh"] is None and g0["db_hh"] is not None
    _compare({n: g for n, g in g1.items() if n != "db_hh"}, {n: g for n, g in g0.items() if n != "db_hh"},
             1e-14, "grad ")


# -- long sequences ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_long_sequence(cid, cell, kw, dtype):
    T, B, D, H = 1000, 2, 3, 4
    rng = np.random.default_rng(1000)
    x, params, h0, c0, dhs, dh_n, dc_n = _inputs(cell, T, B, D, H, dtype, rng)
    lengths = np.array([T, 617])
    (o_nat, g_nat), (o_ref, g_ref) = _both(cell, kw, x, params, h0, c0, dhs, dh_n, dc_n, lengths=lengths)
    k = TOL[dtype] * (10 if dtype == np.float32 else 1)  # 1000 steps of float32 rounding
    _compare(o_nat, o_ref, k, "out ")
    _compare(g_nat, g_ref, k, "grad ")
    assert np.all(np.isfinite(g_nat["dwh"]))


# -- chunked forward / truncated BPTT ------------------------------------------------------

@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_chunked_forward_equals_whole(cid, cell, kw, batch_first, impl):
    """Chunks carrying (h_n, c_n) as the next (h0, c0) reproduce the whole forward; chaining
    each chunk's dh0 (dc0) into the previous chunk's dh_n (dc_n) reproduces full BPTT, while
    dropping it is truncated BPTT (the last chunk's gradients only see that chunk)."""
    rng = np.random.default_rng(3)
    T, B, D, H = 11, 3, 2, 4
    dtype = np.float64
    x, params, h0, c0, dhs, dh_n, dc_n = _inputs(cell, T, B, D, H, dtype, rng, batch_first=batch_first)
    tax = 1 if batch_first else 0
    whole, wcache = run_forward(impl, cell, x, params, h0, c0, batch_first=batch_first, **kw)
    wgrads = run_backward(impl, cell, wcache, dhs, dh_n, dc_n)

    bounds = [0, 4, 5, 9, 11]  # chunks of 4, 1, 4, 2 steps
    take = lambda a, s, e: np.ascontiguousarray(a[:, s:e] if batch_first else a[s:e])  # noqa: E731
    h, c = h0, c0
    hs_parts, caches = [], []
    for s, e in zip(bounds[:-1], bounds[1:]):
        outs, cache = run_forward(impl, cell, take(x, s, e), params, h, c, batch_first=batch_first, **kw)
        hs_parts.append(outs["hs"])
        caches.append(cache)
        h, c = outs["h_n"], outs["c_n"]
    k = 1e-12
    assert_close(np.concatenate(hs_parts, axis=tax), whole["hs"], k, "hs")
    assert_close(h, whole["h_n"], k, "h_n")
    assert_close(c, whole["c_n"], k, "c_n")

    # backward chunk by chunk, chaining dh0 -> dh_n: full BPTT
    gh, gc = dh_n, dc_n
    total = {n: 0 for n in ("dwx", "dwh", "db_ih", "db_hh")}
    dx_parts = []
    for i in reversed(range(len(caches))):
        s, e = bounds[i], bounds[i + 1]
        g = run_backward(impl, cell, caches[i], take(dhs, s, e), gh, gc)
        if i == len(caches) - 1:
            # truncated BPTT: the last chunk's own gradient w.r.t. its inputs is what the whole
            # sequence gives when the loss only looks at that chunk
            only = np.zeros_like(dhs)
            (only[:, s:e] if batch_first else only[s:e])[...] = take(dhs, s, e)
            full = run_backward(impl, cell, wcache, only, dh_n, dc_n)
            assert_close(g["dx"], take(full["dx"], s, e), 1e-12, "last chunk dx")
            assert np.abs(full["dx"][:, :s] if batch_first else full["dx"][:s]).max() > 0  # it flows on
        dx_parts.insert(0, g["dx"])
        for n in total:
            total[n] = None if g[n] is None else total[n] + g[n]
        gh, gc = g["dh0"], g["dc0"]
    assert_close(np.concatenate(dx_parts, axis=tax), wgrads["dx"], k, "dx")
    for n in total:
        assert_close(total[n], wgrads[n], k, n)
    assert_close(gh, wgrads["dh0"], k, "dh0")
    assert_close(gc, wgrads["dc0"], k, "dc0")


# -- dh_n ----------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_dh_n_adds_to_last_valid_step(cid, cell, kw, use_lengths, impl):
    """h_n is hs at each sequence's last valid step, so its gradient dh_n must act exactly like
    adding dh_n to dhs at that step."""
    rng = np.random.default_rng(11)
    T, B, D, H = 6, 4, 3, 2
    dtype = np.float64
    x, params, h0, c0, dhs, dh_n, _ = _inputs(cell, T, B, D, H, dtype, rng)
    lengths = np.array([6, 1, 3, 5]) if use_lengths else None
    outs, cache = run_forward(impl, cell, x, params, h0, c0, lengths=lengths, **kw)
    last = lengths - 1 if use_lengths else np.full(B, T - 1)
    np.testing.assert_array_equal(outs["h_n"], outs["hs"][last, np.arange(B)])
    g1 = run_backward(impl, cell, cache, dhs, dh_n)
    dhs2 = dhs.copy()
    dhs2[last, np.arange(B)] += dh_n
    g2 = run_backward(impl, cell, cache, dhs2)
    _compare(g1, g2, 1e-13)
    # and dh_n does matter
    g0 = run_backward(impl, cell, cache, dhs)
    assert np.abs(g1["dwx"] - g0["dwx"]).max() > 1e-6


# -- layouts -------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_batch_first_is_transposed_time_major(cid, cell, kw, dtype, impl):
    rng = np.random.default_rng(5)
    T, B, D, H = 5, 3, 4, 3
    x, params, h0, c0, dhs, dh_n, dc_n = _inputs(cell, T, B, D, H, dtype, rng)
    lengths = np.array([5, 2, 4])
    o_tm, c_tm = run_forward(impl, cell, x, params, h0, c0, lengths=lengths, **kw)
    g_tm = run_backward(impl, cell, c_tm, dhs, dh_n, dc_n)
    xb = np.ascontiguousarray(x.swapaxes(0, 1))
    o_bf, c_bf = run_forward(impl, cell, xb, params, h0, c0, lengths=lengths, batch_first=True, **kw)
    g_bf = run_backward(impl, cell, c_bf, np.ascontiguousarray(dhs.swapaxes(0, 1)), dh_n, dc_n)
    k = TOL[dtype] / 10
    assert o_bf["hs"].shape == (B, T, H)
    assert_close(o_bf["hs"].swapaxes(0, 1), o_tm["hs"], k, "hs")
    assert g_bf["dx"].shape == (B, T, D)
    assert_close(g_bf["dx"].swapaxes(0, 1), g_tm["dx"], k, "dx")
    for name in ("h_n", "c_n"):
        assert_close(o_bf[name], o_tm[name], k, name)
    for name in ("dwx", "dwh", "db_ih", "db_hh", "dh0", "dc0"):
        assert_close(g_bf[name], g_tm[name], k, name)


# -- lengths -------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_past_length_is_zero_and_ignored(cid, cell, kw, dtype, batch_first):
    """Past a sequence's length: hs and dx exactly 0; x and dhs there have no effect; each
    sequence gives what it gives run alone over its own length."""
    rng = np.random.default_rng(13)
    T, B, D, H = 7, 4, 3, 3
    x, params, h0, c0, dhs, dh_n, dc_n = _inputs(cell, T, B, D, H, dtype, rng, batch_first=batch_first)
    lengths = np.array([3, 7, 1, 5], dtype=np.int32)
    pad = np.arange(T)[:, None] >= lengths[None, :]  # (T, B)
    if batch_first:
        pad = pad.T
    outs, cache = run_forward("native", cell, x, params, h0, c0, lengths=lengths, batch_first=batch_first, **kw)
    g = run_backward("native", cell, cache, dhs, dh_n, dc_n)
    assert np.all(outs["hs"][pad] == 0)
    assert np.all(g["dx"][pad] == 0)
    if cid != "rnn-relu":  # relu may give exact zeros anywhere
        assert np.all(outs["hs"][~pad] != 0)
        assert np.all(np.abs(g["dx"][~pad]).sum(-1) > 0)

    # garbage in x and dhs past the lengths changes nothing (bit for bit)
    x2, dhs2 = x.copy(), dhs.copy()
    x2[pad] = 1e3
    dhs2[pad] = -7.0
    outs2, cache2 = run_forward("native", cell, x2, params, h0, c0, lengths=lengths,
                                batch_first=batch_first, **kw)
    g2 = run_backward("native", cell, cache2, dhs2, dh_n, dc_n)
    _compare(outs2, outs, 0.0, "out ")
    _compare({n: v for n, v in g2.items() if n != "dx"}, {n: v for n, v in g.items() if n != "dx"}, 0.0)
    assert np.all(g2["dx"][pad] == 0)
    np.testing.assert_array_equal(g2["dx"][~pad], g["dx"][~pad])

    # each sequence alone, over its own length
    k = TOL[dtype]
    tot = {n: 0 for n in ("dwx", "dwh", "db_ih", "db_hh")}
    for b, L in enumerate(lengths):
        sl = (slice(b, b + 1), slice(0, L)) if batch_first else (slice(0, L), slice(b, b + 1))
        xb = np.ascontiguousarray(x[sl])
        h0b = h0[b:b + 1]
        c0b = None if c0 is None else c0[b:b + 1]
        ob, cb = run_forward("native", cell, xb, params, h0b, c0b, batch_first=batch_first, **kw)
        gb = run_backward("native", cell, cb, np.ascontiguousarray(dhs[sl]), dh_n[b:b + 1],
                          None if dc_n is None else dc_n[b:b + 1])
        assert_close(ob["hs"], outs["hs"][sl], k, "hs")
        assert_close(ob["h_n"][0], outs["h_n"][b], k, "h_n")
        assert_close(gb["dx"], g["dx"][sl], k, "dx")
        assert_close(gb["dh0"][0], g["dh0"][b], k, "dh0")
        if has_cell_state(cell):
            assert_close(ob["c_n"][0], outs["c_n"][b], k, "c_n")
            assert_close(gb["dc0"][0], g["dc0"][b], k, "dc0")
        for n in tot:
            tot[n] = None if gb[n] is None else tot[n] + gb[n]
    for n in tot:
        assert_close(tot[n], g[n], k, n)


@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_lengths_all_T_equals_no_lengths(cid, cell, kw):
    rng = np.random.default_rng(17)
    T, B, D, H = 5, 3, 2, 4
    x, params, h0, c0, dhs, dh_n, dc_n = _inputs(cell, T, B, D, H, np.float64, rng)
    o1, c1 = run_forward("native", cell, x, params, h0, c0, **kw)
    o2, c2 = run_forward("native", cell, x, params, h0, c0, lengths=[T] * B, **kw)  # a list works too
    _compare(o1, o2, 1e-14)
    _compare(run_backward("native", cell, c1, dhs, dh_n, dc_n), run_backward("native", cell, c2, dhs, dh_n, dc_n),
             1e-14)


# -- backend switch and cache interchange ---------------------------------------------------

@pytest.fixture
def restore_backend():
    before = rnncore.get_backend()
    yield
    rnncore.set_backend(before)


def test_set_backend_and_context_manager(restore_backend):
    rng = np.random.default_rng(19)
    x, params, h0, _, dhs, dh_n, _ = _inputs("rnn", 4, 2, 3, 3, np.float64, rng)
    wx, wh, b, _ = params
    ref = rnncore.reference.rnn_forward(x, wx, wh, b, h0)
    ref_g = rnncore.reference.rnn_backward(dhs, ref[2], dh_n)

    rnncore.set_backend("native")
    assert rnncore.get_backend() == "native"
    nat = rnncore.rnn_forward(x, wx, wh, b, h0)
    with rnncore.use_backend("numpy"):
        assert rnncore.get_backend() == "numpy"
        num = rnncore.rnn_forward(x, wx, wh, b, h0)
        num_g = rnncore.rnn_backward(dhs, num[2], dh_n)
        with rnncore.use_backend("native"):
            assert rnncore.get_backend() == "native"
        assert rnncore.get_backend() == "numpy"
    assert rnncore.get_backend() == "native"
    # the numpy backend runs the twin: identical bits
    for a, r in zip(num[:2] + num_g, ref[:2] + ref_g):
        np.testing.assert_array_equal(a, r)
    # the native one is a different implementation that agrees to rounding
    assert_close(nat[0], ref[0], 1e-10)

    rnncore.set_backend("numpy")
    assert rnncore.get_backend() == "numpy"
    again = rnncore.rnn_forward(x, wx, wh, b, h0)
    np.testing.assert_array_equal(again[0], ref[0])
    rnncore.set_backend("native")
    assert rnncore.get_backend() == "native"

    # an exception inside the block still restores the backend
    with pytest.raises(KeyError):
        with rnncore.use_backend("numpy"):
            raise KeyError("boom")
    assert rnncore.get_backend() == "native"


@pytest.mark.parametrize("name", ["torch", "NumPy", "", None])
def test_bad_backend_name(name, restore_backend):
    with pytest.raises(ValueError, match="backend"):
        rnncore.set_backend(name)
    with pytest.raises(ValueError, match="backend"):
        with rnncore.use_backend(name):
            pass  # pragma: no cover
    assert rnncore.get_backend() in ("native", "numpy")


@pytest.mark.parametrize("fwd,bwd", [("native", "numpy"), ("numpy", "native"), ("native", "reference"),
                                     ("reference", "native")])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_cache_interchangeable_between_backends(cid, cell, kw, fwd, bwd):
    rng = np.random.default_rng(23)
    T, B, D, H = 5, 3, 4, 3
    for dtype, batch_first in ((np.float64, False), (np.float32, True)):
        x, params, h0, c0, dhs, dh_n, dc_n = _inputs(cell, T, B, D, H, dtype, rng, batch_first=batch_first)
        lengths = np.array([5, 2, 4])
        _, cache = run_forward(fwd, cell, x, params, h0, c0, lengths=lengths, batch_first=batch_first, **kw)
        mixed = run_backward(bwd, cell, cache, dhs, dh_n, dc_n)
        _, ref_cache = run_forward("reference", cell, x, params, h0, c0, lengths=lengths,
                                   batch_first=batch_first, **kw)
        ref = run_backward("reference", cell, ref_cache, dhs, dh_n, dc_n)
        _compare(mixed, ref, TOL[dtype])


# -- randomized shapes ---------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(
    cell_i=st.integers(0, len(CELLS) - 1),
    T=st.integers(1, 6), B=st.integers(1, 4), D=st.integers(1, 5), H=st.integers(1, 5),
    batch_first=st.booleans(), with_h0=st.booleans(), use_lengths=st.booleans(),
    f32=st.booleans(), seed=st.integers(0, 2**31 - 1),
)
def test_random_shapes(cell_i, T, B, D, H, batch_first, with_h0, use_lengths, f32, seed):
    _, cell, kw = CELLS[cell_i]
    dtype = np.float32 if f32 else np.float64
    rng = np.random.default_rng(seed)
    x, params, h0, c0, dhs, dh_n, dc_n = _inputs(cell, T, B, D, H, dtype, rng, batch_first=batch_first,
                                                 with_h0=with_h0)
    lengths = rng.integers(1, T + 1, size=B) if use_lengths else None
    (o_nat, g_nat), (o_ref, g_ref) = _both(cell, kw, x, params, h0, c0, dhs, dh_n, dc_n,
                                           batch_first=batch_first, lengths=lengths)
    _compare(o_nat, o_ref, TOL[dtype], "out ")
    _compare(g_nat, g_ref, TOL[dtype], "grad ")


@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("B", [33, 255, 257])
def test_batch_sizes_around_the_kernel_switch(cid, cell, kw, B):
    """Batches up to 256 run the packed step kernel, larger ones the BLAS: both match the twin,
    batch-first and time-major, with ragged lengths."""
    rng = np.random.default_rng(B)
    T, D, H = 3, 5, 40
    params = make_params(cell, D, H, np.float32, rng)
    lengths = rng.integers(1, T + 1, B).astype(np.int64)
    for bf in (False, True):
        x = rng.standard_normal((B, T, D) if bf else (T, B, D)).astype(np.float32)
        outs, cache = run_forward("native", cell, x, params, batch_first=bf, lengths=lengths, **kw)
        ref, rcache = run_forward("reference", cell, x, params, batch_first=bf, lengths=lengths, **kw)
        assert_close(outs["hs"], ref["hs"], TOL[np.float32], "hs")
        dhs = rng.standard_normal(outs["hs"].shape).astype(np.float32)
        g, gr = run_backward("native", cell, cache, dhs), run_backward("reference", cell, rcache, dhs)
        for name in g:
            assert_close(g[name], gr[name], TOL[np.float32], name)


@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("scale", [1e6, 1e8])
def test_batch_first_dwh_keeps_float32_precision(cid, cell, kw, scale):
    """A large upstream gradient at step 0 of the second sequence, batch-first: dwh is as
    precise as time-major and the float64 twin (the gradient once paired hs[0, T-1] with it and
    subtracted that again, losing up to all digits)."""
    rng = np.random.default_rng(7)
    T, B, D, H = 6, 3, 4, 8
    params = make_params(cell, D, H, np.float32, rng)
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    dhs = rng.standard_normal((B, T, H)).astype(np.float32)
    dhs[1, 0] = scale  # with h0 = 0 it adds nothing to dwh: nothing may be left of it either
    outs, cache = run_forward("native", cell, x, params, batch_first=True, **kw)
    g = run_backward("native", cell, cache, dhs)
    p64 = tuple(None if a is None else a.astype(np.float64) for a in params)
    _, rcache = run_forward("reference", cell, x.astype(np.float64), p64, batch_first=True, **kw)
    ref = run_backward("reference", cell, rcache, dhs.astype(np.float64))
    err = np.max(np.abs(g["dwh"] - ref["dwh"])) / np.max(np.abs(ref["dwh"]))
    assert err < 1e-5, err


# -- the caches past a sequence's length ---------------------------------------------------------

@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cid,cell,kw", [c for c in CELLS if not fused_bias(c[1])], ids=[c[0] for c in CELLS[3:]])
def test_caches_defined_past_the_length_and_interchangeable(cid, cell, kw, batch_first):
    """Past a sequence's length every block of the cache (hs, gates, cs) is zero on both
    backends: the two caches hold the same numbers everywhere, and each backend's backward run
    on the other's cache gives its own gradients. The native outputs here come from buffers a
    previous call returned filled with NaN (large outputs reuse freed buffers, buffers.h), so a
    block the forward left unwritten would show as NaN."""
    T, B, D, H = 40, 32, 16, 128  # float64 gates and cs of 1 MiB and more: from the buffer cache
    dtype = np.float64
    rng = np.random.default_rng(zlib.crc32(repr((cid, batch_first)).encode()))
    x, params, h0, c0, dhs, dh_n, dc_n = _inputs(cell, T, B, D, H, dtype, rng, batch_first=batch_first)
    lengths = _lengths("mixed", T, B, rng)
    fkw = dict(kw, batch_first=batch_first, lengths=lengths)
    outs, poison = run_forward("native", cell, x, params, h0, c0, **fkw)
    for a in (poison.hs, poison.gates, poison.cs):
        if a is not None:
            assert a.flags.writeable
            a.fill(np.nan)
    del outs, poison, a
    _, c_nat = run_forward("native", cell, x, params, h0, c0, **fkw)
    _, c_ref = run_forward("numpy", cell, x, params, h0, c0, **fkw)
    past = np.arange(T)[:, None] >= lengths[None, :]  # (T, B)
    past = past.T if batch_first else past
    for name in ("hs", "gates", "cs"):
        a, r = getattr(c_nat, name), getattr(c_ref, name)
        if r is None:
            assert a is None
            continue
        assert np.all(np.isfinite(a)), f"native {name}: unwritten (NaN) entries"
        assert not np.any(a[past]) and not np.any(r[past]), f"{name} past the length is not zero"
        assert_close(a, r, TOL[dtype], f"cache {name}")
    g_nat = run_backward("native", cell, c_nat, dhs, dh_n, dc_n)
    g_ref = run_backward("numpy", cell, c_ref, dhs, dh_n, dc_n)
    g_nat_on_ref = run_backward("native", cell, c_ref, dhs, dh_n, dc_n)
    g_ref_on_nat = run_backward("numpy", cell, c_nat, dhs, dh_n, dc_n)
    for name in g_nat:
        if g_nat[name] is None:
            continue
        assert_close(g_nat_on_ref[name], g_nat[name], TOL[dtype], f"native backward on the twin's cache: {name}")
        assert_close(g_ref_on_nat[name], g_ref[name], TOL[dtype], f"twin backward on the native cache: {name}")
        assert_close(g_nat[name], g_ref[name], TOL[dtype], name)
