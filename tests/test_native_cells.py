"""The native cell table (csrc/cells.h traits, through _core.cells()) against what the native
forward and backward actually take and return, and the call description the bindings read."""
from types import SimpleNamespace

import numpy as np
import pytest

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
