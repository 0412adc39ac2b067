"""The native cell table (csrc/cells.h traits, through _core.cells()) against what the native
forward and backward actually take and return, and the call description the bindings read."""
from types import SimpleNamespace

import zlib

import numpy as np
import pytest

import rnncore
from helpers import CELLS, TOL, assert_close, make_case

from rnncore import reference
from rnncore._native import core, import_error

pytestmark = pytest.mark.skipif(core is None, reason=f"native module not built: {import_error}")


def _inputs(cell, G, has_c, T=3, B=2, D=5, H=4, seed=0):
    rng = np.random.default_rng(seed)
    f = np.float64
    return SimpleNamespace(
        cell=cell, activation="tanh", batch_first=False,
        x=rng.standard_normal((T, B, D)), wx=rng.standard_normal((D, G * H)) * 0.3,
        wh=rng.standard_normal((H, G * H)) * 0.3, b_ih=rng.standard_normal(G * H).astype(f),
        b_hh=rng.standard_normal(G * H).astype(f), h0=rng.standard_normal((B, H)),
        c0=rng.standard_normal((B, H)) if has_c else None, lengths=np.array([3, 2], np.int32))


def test_table_names_the_twins_cells():
    assert [c["name"] for c in core.cells()] == list(reference.STEPS)


@pytest.mark.parametrize("c", core.cells() if core else [], ids=lambda c: c["name"])
def test_table_matches_what_the_ops_return(c):
    T, B, H = 3, 2, 4
    inp = _inputs(c["name"], c["gates"], c["has_c"], T=T, B=B, H=H)
    hs, hn, cn, gates, cs = core.forward(inp)
    assert hs.shape == (T, B, H) and hn.shape == (B, H)
    assert (gates is None) == (c["cache_blocks"] == 0)
    if gates is not None:
        assert gates.shape == (T, B, c["cache_blocks"] * H)
    assert (cn is None) == (not c["has_c"]) and (cs is None) == (not c["has_c"])
    dx, dwx, dwh, dbx, dbh, dh0, dc0 = core.backward(inp, hs, gates, cs, np.ones_like(hs), None, None)
    assert dwx.shape == inp.wx.shape and dwh.shape == inp.wh.shape and dbx.shape == dbh.shape == (c["gates"] * H,)
    assert (dc0 is None) == (not c["has_c"])
    # past a sequence's length the outputs are zero, the final state is the last valid one
    assert not hs[2, 1].any() and np.array_equal(hn[1], hs[1, 1])


def test_unknown_cell_is_refused_by_name():
    inp = _inputs("lstm", 4, True)
    inp.cell = "nope"
    with pytest.raises(ValueError, match="unknown cell 'nope'"):
        core.forward(inp)
    with pytest.raises(ValueError, match="unknown cell 'nope'"):
        core.backward(inp, None, None, None, None, None, None)


# -- PyTorch's weight layout (transposed=True): read in place, gradients in the same layout ---------

@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=[c[0] for c in CELLS])
def test_torch_layout_equals_the_row_vector_layout(cid, cell, kw, dtype, batch_first, impl):
    """Every flavour: wx (G*H, D), wh (G*H, H) give the outputs of wx.T, wh.T, and the weight
    gradients come back transposed (H 37, B 9: partial unit blocks, several row blocks)."""
    from rnncore import _ops, cells, reference

    T, B, D, H = 6, 9, 11, 37
    x, params, h0, c0, dhs, dh_n, dc_n, lens = make_case(cell, T, B, D, H, dtype, zlib.crc32(cid.encode()),
                                                         batch_first)
    wx, wh, b_ih, b_hh = params
    name = "gru_reset_before" if kw.get("reset_after", True) is False else cell
    act = {"activation": kw["activation"]} if "activation" in kw else {}
    ops = reference.OPS if impl == "reference" else _ops
    b2 = None if cells.get(name).fused_bias else b_hh
    ref_f = ops.forward(name, x, wx, wh, b_ih, b2, h0, c0, batch_first=batch_first, lengths=lens, **act)
    wxt, wht = np.ascontiguousarray(wx.T), np.ascontiguousarray(wh.T)
    got_f = ops.forward(name, x, wxt, wht, b_ih, b2, h0, c0, batch_first=batch_first, lengths=lens,
                        transposed=True, **act)
    tol = TOL[dtype]
    for k in range(3):
        if ref_f[k] is not None:
            assert_close(got_f[k], ref_f[k], tol, f"forward {k}")
    ref_b = ops.backward(ref_f[3], dhs, dh_n, dc_n if c0 is not None else None)
    got_b = ops.backward(got_f[3], dhs, dh_n, dc_n if c0 is not None else None)
    for k, (g, r) in enumerate(zip(got_b, ref_b)):
        if r is None:
            assert g is None
            continue
        if k in (1, 2):  # dwx, dwh: PyTorch's layout
            assert g.shape == r.T.shape and g.flags.c_contiguous
            r = r.T
        assert_close(g, r, tol, f"grad {k}")
    assert np.array_equal(wxt, np.ascontiguousarray(wx.T))  # nothing passed in is modified


def test_torch_layout_same_bits_for_any_thread_count():
    T, B, D, H = 20, 16, 24, 160
    x, params, h0, c0, dhs, dh_n, dc_n, lens = make_case("lstm", T, B, D, H, np.float32, 3)
    wx, wh, b_ih, b_hh = (np.ascontiguousarray(params[0].T), np.ascontiguousarray(params[1].T)) + tuple(params[2:])
    from rnncore import _ops

    outs = []
    core.team_set_adaptive(False)  # the team runs even if the machine is busy right now
    try:
        for n in (1, 2):
            with rnncore.num_threads(n):
                before = rnncore.threads.team_stats()["regions"]
                f = _ops.forward("lstm", x, wx, wh, b_ih, b_hh, h0, c0, lengths=lens, transposed=True)
                outs.append([f[0].copy(), f[1]] + list(_ops.backward(f[3], dhs, dh_n, dc_n)))
                assert (rnncore.threads.team_stats()["regions"] > before) == (n == 2)
    finally:
        core.team_set_adaptive(True)
    for a, b in zip(*outs):
        assert np.array_equal(a, b)


def test_torch_layout_shapes_are_checked():
    from rnncore import _ops

    x = np.zeros((3, 2, 5), np.float32)
    wx, wh, b = np.zeros((5, 8), np.float32), np.zeros((2, 8), np.float32), np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=r"wx must have shape \(4\*H, D\) with D = 5"):
        _ops.forward("lstm", x, wx, wh, b, b, transposed=True)
    with pytest.raises(ValueError, match=r"wh must have shape \(4\*H, H\)"):
        _ops.forward("lstm", x, np.zeros((8, 5), np.float32), wh, b, b, transposed=True)


@pytest.mark.parametrize("isa", rnncore.kernel_info()["supported"] if core else [])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=[c[0] for c in CELLS])
def test_single_step_reads_weights_in_place_with_the_same_bits(cid, cell, kw, dtype, batch_first, isa):
    """A call of one step of a few rows on one thread reads wx and wh where they are (no
    packing): its outputs and cache are the bits of the first step of a two-step call (which
    packs), at batch sizes on both sides of that path's limit (4) and hidden sizes that are and
    are not whole unit blocks, and they match the twin; the backward of its cache too."""
    from rnncore import _ops, cells, reference

    name = "gru_reset_before" if kw.get("reset_after", True) is False else cell
    act = {"activation": kw["activation"]} if "activation" in kw else {}
    with rnncore.use_isa(isa), rnncore.num_threads(2):
        for B, H in ((1, 64), (4, 32), (5, 32), (1, 36), (2, 256)):
            x, params, h0, c0, dhs, dh_n, dc_n, _ = make_case(cell, 2, B, 7, H, dtype, zlib.crc32(cid.encode()) + H,
                                                              batch_first)
            wx, wh, b_ih, b_hh = params
            b2 = None if cells.get(name).fused_bias else b_hh
            first = x[:, :1] if batch_first else x[:1]
            one = _ops.forward(name, np.ascontiguousarray(first), wx, wh, b_ih, b2, h0, c0,
                               batch_first=batch_first, **act)
            two = _ops.forward(name, x, wx, wh, b_ih, b2, h0, c0, batch_first=batch_first, **act)
            step0 = (lambda a: a[:, :1]) if batch_first else (lambda a: a[:1])
            assert np.array_equal(one[0], step0(two[0])), (B, H)
            cache1, cache2 = one[3], two[3]
            for a1, a2 in ((cache1.gates, cache2.gates), (cache1.cs, cache2.cs)):
                if a1 is not None:
                    assert np.array_equal(a1, step0(a2)), (B, H)
            ref = reference.OPS.forward(name, np.ascontiguousarray(first), wx, wh, b_ih, b2, h0, c0,
                                        batch_first=batch_first, **act)
            for k in range(3):
                if ref[k] is not None:
                    assert_close(one[k], ref[k], TOL[dtype], f"forward {k}")
            g = _ops.backward(cache1, step0(dhs).copy(), dh_n, dc_n if c0 is not None else None)
            r = reference.OPS.backward(ref[3], step0(dhs).copy(), dh_n, dc_n if c0 is not None else None)
            for k, (a, b) in enumerate(zip(g, r)):
                assert_close(a, b, TOL[dtype], f"grad {k}")
