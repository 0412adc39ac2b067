"""Bad input raises ValueError/TypeError naming the argument (and the expected shape), on every
backend, before any native work; odd inputs never take the interpreter down; inputs, read-only
or not, are never modified."""
from __future__ import annotations

import numpy as np
import pytest

import rnncore
from helpers import GATES, CELLS, run_backward, run_forward
from rnncore import cells

T, B, D, H = 3, 2, 4, 5
#: how the messages write each cell's column count (the oracle: not taken from the registry)
GH = {"rnn": "H", "lstm": "4*H", "gru": "3*H"}


def _spec(cell):
    return cells.flavours(cell)[0]


def _valid(cell, dtype=np.float64, T=T, B=B, D=D, H=H, seed=0):
    """Keyword arguments of a valid forward call of ``cell``."""
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    a = {
        "x": rng.standard_normal((T, B, D)).astype(dtype),
        "wx": (0.3 * rng.standard_normal((D, G * H))).astype(dtype),
        "wh": (0.3 * rng.standard_normal((H, G * H))).astype(dtype),
    }
    for name in _spec(cell).biases:  # the Elman op's "b"; "b_ih", "b_hh"
        a[name] = rng.standard_normal(G * H).astype(dtype)
    a["h0"] = rng.standard_normal((B, H)).astype(dtype)
    if _spec(cell).has_cell_state:
        a["c0"] = rng.standard_normal((B, H)).astype(dtype)
    return a


IMPLS = ["native", "numpy", "reference"]


def _module(impl):
    return rnncore.reference if impl == "reference" else rnncore


def _forward(impl, cell, a, **kw):
    m = _module(impl)
    backend = "numpy" if impl == "reference" else impl
    with rnncore.use_backend(backend):
        return getattr(m, f"{cell}_forward")(**a, **kw)


def _bias(cell):
    return _spec(cell).biases[0]


def _noncontig(a):
    """The same values, not C-contiguous."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    big[..., ::2] = a
    out = big[..., ::2]
    assert not out.flags.c_contiguous
    return out


def _set(name, value_fn):
    def mutate(a, cell):
        a[name if name != "bias" else _bias(cell)] = value_fn(a, cell)
    return mutate


def _poison(name, value, index=-1):
    def mutate(a, cell):
        key = name if name != "bias" else _bias(cell)
        arr = a[key].copy()
        arr.flat[index] = value
        a[key] = arr
    return mutate


def _drop_x_dim(a, cell):
    a["x"] = a["x"][0].copy()


# (id, cells it applies to, mutation, extra forward kwargs, exception, match)
# match uses {gh} for the cell's G*H legend and {b} for the bias name.
FORWARD_CASES = [
    # rank
    ("x-rank2", "*", _drop_x_dim, {}, ValueError, r"\bx\b.*3-D"),
    ("x-rank4", "*", _set("x", lambda a, c: a["x"][None].copy()), {}, ValueError, r"\bx\b.*3-D"),
    ("wx-rank1", "*", _set("wx", lambda a, c: a["wx"].ravel().copy()), {}, ValueError, r"\bwx\b.*2-D"),
    ("wx-rank3", "*", _set("wx", lambda a, c: a["wx"][None].copy()), {}, ValueError, r"\bwx\b.*2-D"),
    ("wh-rank1", "*", _set("wh", lambda a, c: a["wh"].ravel().copy()), {}, ValueError, r"\bwh\b.*2-D"),
    ("b-rank2", "*", _set("bias", lambda a, c: a[_bias(c)][None].copy()), {}, ValueError, r"\b{b}\b.*1-D"),
    ("b_hh-rank2", "lstm gru", _set("b_hh", lambda a, c: a["b_hh"][None].copy()), {}, ValueError,
     r"\bb_hh\b.*1-D"),
    ("h0-rank1", "*", _set("h0", lambda a, c: a["h0"].ravel().copy()), {}, ValueError, r"\bh0\b.*2-D"),
    ("h0-rank3", "*", _set("h0", lambda a, c: a["h0"][None].copy()), {}, ValueError, r"\bh0\b.*2-D"),
    ("c0-rank3", "lstm", _set("c0", lambda a, c: a["c0"][None].copy()), {}, ValueError, r"\bc0\b.*2-D"),
    # shapes
    ("wx-rows-not-D", "*", _set("wx", lambda a, c: np.ones((D + 1, a["wx"].shape[1]))), {}, ValueError,
     r"\bwx\b.*\(D, {gh}\).*D = 4"),
    ("wx-cols-not-multiple", "lstm gru", _set("wx", lambda a, c: np.ones((D, a["wx"].shape[1] + 1))), {},
     ValueError, r"\bwx\b.*\(D, {gh}\)"),
    ("wx-no-cols", "*", _set("wx", lambda a, c: np.ones((D, 0))), {}, ValueError, r"\bwx\b.*\(D, {gh}\)"),
    ("wh-rows", "*", _set("wh", lambda a, c: np.ones((H + 1, a["wh"].shape[1]))), {}, ValueError,
     r"\bwh\b.*\(H, {gh}\)"),
    ("wh-cols", "*", _set("wh", lambda a, c: np.ones((H, a["wh"].shape[1] + 1))), {}, ValueError,
     r"\bwh\b.*\(H, {gh}\)"),
    ("wh-square", "lstm gru", _set("wh", lambda a, c: np.ones((H, H))), {}, ValueError,
     r"\bwh\b.*\(H, {gh}\)"),
    ("b-len", "*", _set("bias", lambda a, c: np.ones(a[_bias(c)].size + 1)), {}, ValueError,
     r"\b{b}\b.*\({gh},\)"),
    ("b_hh-len", "lstm gru", _set("b_hh", lambda a, c: np.ones(a["b_hh"].size - 1)), {}, ValueError,
     r"\bb_hh\b.*\({gh},\)"),
    ("h0-batch", "*", _set("h0", lambda a, c: np.ones((B + 1, H))), {}, ValueError, r"\bh0\b.*\(B, H\)"),
    ("h0-hidden", "*", _set("h0", lambda a, c: np.ones((B, H + 1))), {}, ValueError, r"\bh0\b.*\(B, H\)"),
    ("h0-batch-first", "*", _set("x", lambda a, c: np.ones((T, B, D))), {"batch_first": True}, ValueError,
     r"\bh0\b.*\(B, H\)"),  # batch_first reads x as (B=3, T=2, D): h0 (2, H) no longer fits
    ("c0-hidden", "lstm", _set("c0", lambda a, c: np.ones((B, H - 1))), {}, ValueError, r"\bc0\b.*\(B, H\)"),
    # lengths
    ("lengths-shape", "*", lambda a, c: None, {"lengths": np.array([1, 2, 3])}, ValueError,
     r"\blengths\b.*\(B,\)"),
    ("lengths-2d", "*", lambda a, c: None, {"lengths": np.array([[1, 2]])}, ValueError, r"\blengths\b.*\(B,\)"),
    ("lengths-scalar", "*", lambda a, c: None, {"lengths": 2}, ValueError, r"\blengths\b.*\(B,\)"),
    ("lengths-zero", "*", lambda a, c: None, {"lengths": np.array([0, 2])}, ValueError,
     r"\blengths\b.*\[1, T\]"),
    ("lengths-negative", "*", lambda a, c: None, {"lengths": np.array([-1, 2])}, ValueError,
     r"\blengths\b.*\[1, T\]"),
    ("lengths-over-T", "*", lambda a, c: None, {"lengths": np.array([T + 1, 2])}, ValueError,
     r"\blengths\b.*\[1, T\]"),
    ("lengths-huge", "rnn", lambda a, c: None, {"lengths": np.array([2**40, 2**62])}, ValueError,
     r"\blengths\b.*\[1, T\]"),
    ("lengths-float", "*", lambda a, c: None, {"lengths": np.array([1.0, 2.0])}, TypeError,
     r"\blengths\b.*integer"),
    ("lengths-float-list", "rnn", lambda a, c: None, {"lengths": [1.5, 2]}, TypeError, r"\blengths\b"),
    ("lengths-str", "rnn", lambda a, c: None, {"lengths": ["1", "2"]}, TypeError, r"\blengths\b"),
    # dtypes
    ("wx-f32", "*", _set("wx", lambda a, c: a["wx"].astype(np.float32)), {}, TypeError, r"\bwx\b.*float32"),
    ("wh-f32", "*", _set("wh", lambda a, c: a["wh"].astype(np.float32)), {}, TypeError, r"\bwh\b.*float32"),
    ("b-f32", "*", _set("bias", lambda a, c: a[_bias(c)].astype(np.float32)), {}, TypeError, r"\b{b}\b"),
    ("b_hh-f32", "lstm gru", _set("b_hh", lambda a, c: a["b_hh"].astype(np.float32)), {}, TypeError,
     r"\bb_hh\b"),
    ("h0-f32", "*", _set("h0", lambda a, c: a["h0"].astype(np.float32)), {}, TypeError, r"\bh0\b"),
    ("c0-f32", "lstm", _set("c0", lambda a, c: a["c0"].astype(np.float32)), {}, TypeError, r"\bc0\b"),
    ("x-f32-rest-f64", "*", _set("x", lambda a, c: a["x"].astype(np.float32)), {}, TypeError, r"\bwx\b"),
    ("x-int", "*", _set("x", lambda a, c: np.ones((T, B, D), np.int64)), {}, TypeError, r"\bx\b.*float"),
    ("x-f16", "*", _set("x", lambda a, c: a["x"].astype(np.float16)), {}, TypeError, r"\bx\b.*float"),
    ("x-complex", "rnn", _set("x", lambda a, c: a["x"].astype(np.complex128)), {}, TypeError, r"\bx\b"),
    ("all-f16", "rnn", lambda a, c: a.update({k: v.astype(np.float16) for k, v in a.items()}), {}, TypeError,
     r"\bx\b.*float"),
    ("wx-int", "*", _set("wx", lambda a, c: np.ones(a["wx"].shape, np.int32)), {}, TypeError, r"\bwx\b"),
    # not an ndarray
    ("x-list", "*", _set("x", lambda a, c: a["x"].tolist()), {}, TypeError, r"\bx\b.*ndarray"),
    ("wh-list", "*", _set("wh", lambda a, c: a["wh"].tolist()), {}, TypeError, r"\bwh\b.*ndarray"),
    ("b-tuple", "*", _set("bias", lambda a, c: tuple(a[_bias(c)])), {}, TypeError, r"\b{b}\b.*ndarray"),
    ("h0-scalar", "*", _set("h0", lambda a, c: 0.0), {}, TypeError, r"\bh0\b.*ndarray"),
    ("c0-list", "lstm", _set("c0", lambda a, c: a["c0"].tolist()), {}, TypeError, r"\bc0\b.*ndarray"),
    ("x-str", "rnn", _set("x", lambda a, c: "not an array"), {}, TypeError, r"\bx\b.*ndarray"),
    # empty sizes
    ("empty-T", "*", _set("x", lambda a, c: np.ones((0, B, D))), {}, ValueError, r"\bx\b.*>= 1"),
    ("empty-B", "*", _set("x", lambda a, c: np.ones((T, 0, D))), {}, ValueError, r"\bx\b.*>= 1"),
    ("empty-D", "*", _set("x", lambda a, c: np.ones((T, B, 0))), {}, ValueError, r"\bx\b.*>= 1"),
    ("empty-B-batch-first", "rnn", _set("x", lambda a, c: np.ones((0, T, D))), {"batch_first": True},
     ValueError, r"\bx\b.*\(B, T, D\)"),
    # not C-contiguous
    ("x-strided", "*", _set("x", lambda a, c: _noncontig(a["x"])), {}, ValueError,
     r"\bx\b.*np\.ascontiguousarray\(x\)"),
    ("x-swapped", "*", _set("x", lambda a, c: np.ascontiguousarray(a["x"].swapaxes(0, 1)).swapaxes(0, 1)), {},
     ValueError, r"\bx\b.*np\.ascontiguousarray"),
    ("wx-fortran", "*", _set("wx", lambda a, c: np.asfortranarray(a["wx"])), {}, ValueError,
     r"\bwx\b.*np\.ascontiguousarray"),
    ("wh-transposed", "rnn", _set("wh", lambda a, c: a["wh"].T.copy().T), {}, ValueError,
     r"\bwh\b.*np\.ascontiguousarray"),
    ("b-strided", "*", _set("bias", lambda a, c: _noncontig(a[_bias(c)])), {}, ValueError,
     r"\b{b}\b.*np\.ascontiguousarray"),
    ("h0-fortran", "*", _set("h0", lambda a, c: np.asfortranarray(a["h0"])), {}, ValueError,
     r"\bh0\b.*np\.ascontiguousarray"),
    ("c0-strided", "lstm", _set("c0", lambda a, c: _noncontig(a["c0"])), {}, ValueError,
     r"\bc0\b.*np\.ascontiguousarray"),
    # activation and flags
    ("activation-unknown", "rnn", lambda a, c: None, {"activation": "gelu"}, ValueError, r"activation.*gelu"),
    ("activation-case", "rnn", lambda a, c: None, {"activation": "Tanh"}, ValueError, r"activation"),
    ("activation-none", "rnn", lambda a, c: None, {"activation": None}, ValueError, r"activation"),
    ("batch_first-int", "*", lambda a, c: None, {"batch_first": 1}, TypeError, r"batch_first"),
    # non-finite values
    ("x-nan", "*", _poison("x", np.nan), {}, ValueError, r"\bx\b.*NaN"),
    ("x-inf", "*", _poison("x", np.inf, 0), {}, ValueError, r"\bx\b.*NaN or inf"),
    ("wx-inf", "*", _poison("wx", -np.inf), {}, ValueError, r"\bwx\b.*NaN or inf"),
    ("wh-nan", "*", _poison("wh", np.nan, 3), {}, ValueError, r"\bwh\b.*NaN"),
    ("b-nan", "*", _poison("bias", np.nan), {}, ValueError, r"\b{b}\b.*NaN"),
    ("b_hh-inf", "lstm gru", _poison("b_hh", np.inf), {}, ValueError, r"\bb_hh\b.*NaN"),
    ("h0-nan", "*", _poison("h0", np.nan), {}, ValueError, r"\bh0\b.*NaN"),
    ("c0-inf", "lstm", _poison("c0", np.inf), {}, ValueError, r"\bc0\b.*NaN"),
]


def _forward_params():
    for case in FORWARD_CASES:
        cid, which = case[0], case[1]
        for cell in (GATES if which == "*" else which.split()):
            yield pytest.param(cell, *case[2:], id=f"{cell}-{cid}")


def _expand(match, cell):
    return match.replace("{gh}", GH[cell].replace("*", r"\*")).replace("{b}", _bias(cell))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell,mutate,kw,exc,match", list(_forward_params()))
def test_forward_rejects(cell, mutate, kw, exc, match, impl):
    a = _valid(cell)
    mutate(a, cell)
    with pytest.raises(exc, match=_expand(match, cell)):
        _forward(impl, cell, a, **kw)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("what", ["x", "wh"])
@pytest.mark.parametrize("cell", list(GATES))
def test_non_finite_in_large_arrays(cell, what, dtype, impl):
    """Big arrays (which may be scanned natively): a single NaN/inf at the very end is caught."""
    Tl, Bl, Dl, Hl = 50, 10, 10, 72
    a = _valid(cell, dtype, T=Tl, B=Bl, D=Dl, H=Hl)
    n = a[what].size
    assert n > 4096
    for pos in (n - 1, n // 3 + 1):
        old = a[what].flat[pos]
        a[what].flat[pos] = np.nan if what == "x" else -np.inf
        with pytest.raises(ValueError, match=rf"\b{what}\b.*NaN or inf"):
            _forward(impl, cell, a)
        a[what].flat[pos] = old
    _forward(impl, cell, a)  # and the clean array passes


def test_gru_reset_before_checks_too():
    a = _valid("gru")
    a["wh"] = np.ones((H, H))
    with pytest.raises(ValueError, match=r"\bwh\b.*\(H, 3\*H\)"):
        rnncore.gru_forward(**a, reset_after=False)


def test_valid_inputs_pass():
    """The base case of every test above is valid (so those tests fail for the stated reason)."""
    for cell in GATES:
        for impl in IMPLS:
            out = _forward(impl, cell, _valid(cell), lengths=np.array([T, 1]))
            assert np.all(np.isfinite(out[0]))
            _forward(impl, cell, _valid(cell, np.float32))


# -- huge sizes with tiny memory: must fail in Python, cleanly -------------------------------

HUGE = 2**40


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("what", ["wx", "wh", "h0", "x"])
def test_huge_shapes_fail_cleanly(what, impl):
    a = _valid("rnn")
    if what == "wx":  # H = 2**40 inferred from wx, zero-stride view of one float
        a["wx"] = np.broadcast_to(np.zeros(1), (D, HUGE))
    elif what == "wh":
        a["wh"] = np.broadcast_to(np.zeros(1), (HUGE, H))
    elif what == "h0":
        a["h0"] = np.broadcast_to(np.zeros(1), (B, HUGE))
    else:
        a["x"] = np.broadcast_to(np.zeros(1), (HUGE, B, D))
    with pytest.raises(ValueError, match=rf"\b{what}\b"):
        _forward(impl, "rnn", a)


@pytest.mark.parametrize("what", ["wh", "b", "h0"])
def test_huge_H_mismatch_is_a_shape_error(what):
    """Contiguous tiny arrays whose shapes claim a different H than wx: a clean shape error."""
    a = _valid("rnn")
    a[what] = {"wh": np.zeros((1, 1)), "b": np.zeros(1), "h0": np.zeros((B, 1))}[what]
    with pytest.raises(ValueError, match=rf"\b{what}\b.*H"):
        rnncore.rnn_forward(**a)
    a = _valid("rnn", H=1)
    a[what] = {"wh": np.zeros((4096, 4096)), "b": np.zeros(10**6), "h0": np.zeros((B, 10**5))}[what]
    with pytest.raises(ValueError, match=rf"\b{what}\b"):
        rnncore.rnn_forward(**a)


# -- backward ----------------------------------------------------------------------------------

def _cache(impl, cell, **kw):
    out = _forward(impl, cell, _valid(cell), **kw)
    return out[-1], out[0]


def _backward(impl, cell, *args):
    m = _module(impl)
    backend = "numpy" if impl == "reference" else impl
    with rnncore.use_backend(backend):
        return getattr(m, f"{cell}_backward")(*args)


BACKWARD_CASES = [
    # id, cells, (dhs, dh_n, dc_n) from (hs), exception, match
    ("dhs-shape", "*", lambda hs: (hs[:-1].copy(), None, None), ValueError, r"\bdhs\b.*shape of hs"),
    ("dhs-layout", "*", lambda hs: (np.ascontiguousarray(hs.swapaxes(0, 1)), None, None), ValueError,
     r"\bdhs\b"),
    ("dhs-rank", "*", lambda hs: (hs[0].copy(), None, None), ValueError, r"\bdhs\b"),
    ("dhs-f32", "*", lambda hs: (hs.astype(np.float32), None, None), TypeError, r"\bdhs\b.*float32"),
    ("dhs-list", "*", lambda hs: (hs.tolist(), None, None), TypeError, r"\bdhs\b.*ndarray"),
    ("dhs-nan", "*", lambda hs: (np.full_like(hs, np.nan), None, None), ValueError, r"\bdhs\b.*NaN"),
    ("dhs-strided", "*", lambda hs: (_noncontig(hs), None, None), ValueError, r"\bdhs\b.*np\.ascontiguousarray"),
    ("dh_n-shape", "*", lambda hs: (hs, np.ones((B, H + 1)), None), ValueError, r"\bdh_n\b.*\(B, H\)"),
    ("dh_n-rank", "*", lambda hs: (hs, np.ones(H), None), ValueError, r"\bdh_n\b.*\(B, H\)"),
    ("dh_n-int", "*", lambda hs: (hs, np.ones((B, H), np.int64), None), TypeError, r"\bdh_n\b"),
    ("dh_n-inf", "*", lambda hs: (hs, np.full((B, H), np.inf), None), ValueError, r"\bdh_n\b.*NaN"),
    ("dc_n-shape", "lstm", lambda hs: (hs, None, np.ones((B + 1, H))), ValueError, r"\bdc_n\b.*\(B, H\)"),
    ("dc_n-f32", "lstm", lambda hs: (hs, None, np.ones((B, H), np.float32)), TypeError, r"\bdc_n\b"),
]


def _backward_params():
    for cid, which, make, exc, match in BACKWARD_CASES:
        for cell in (GATES if which == "*" else which.split()):
            yield pytest.param(cell, make, exc, match, id=f"{cell}-{cid}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell,make,exc,match", list(_backward_params()))
def test_backward_rejects(cell, make, exc, match, impl):
    cache, hs = _cache(impl, cell)
    dhs, dh_n, dc_n = make(hs)
    args = (dhs, cache, dh_n) + ((dc_n,) if _spec(cell).has_cell_state else ())
    with pytest.raises(exc, match=match):
        _backward(impl, cell, *args)
    # the same cache still works with good gradients
    _backward(impl, cell, np.ones_like(hs), cache)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("producer,consumer", [("rnn", "lstm"), ("rnn", "gru"), ("lstm", "rnn"),
                                               ("lstm", "gru"), ("gru", "rnn"), ("gru", "lstm")])
def test_cache_from_another_cell(producer, consumer, impl):
    cache, hs = _cache(impl, producer)
    with pytest.raises(TypeError, match=r"cache.*" + consumer):
        _backward(impl, consumer, np.ones_like(hs), cache)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [None, (1, 2, 3), {"hs": 1}, "cache"], ids=["None", "tuple", "dict", "str"])
@pytest.mark.parametrize("cell", list(GATES))
def test_cache_not_a_cache(cell, bad, impl):
    with pytest.raises(TypeError, match="cache"):
        _backward(impl, cell, np.ones((T, B, H)), bad)


def test_reset_before_cache_is_a_gru_cache():
    a = _valid("gru")
    hs, _, cache = rnncore.gru_forward(**a, reset_after=False)
    rnncore.gru_backward(np.ones_like(hs), cache)
    with pytest.raises(TypeError, match="cache"):
        rnncore.lstm_backward(np.ones_like(hs), cache)


# -- nothing passed in is modified ---------------------------------------------------------------

@pytest.mark.parametrize("impl", ["native", "numpy"])
@pytest.mark.parametrize("read_only", [False, True], ids=["writeable", "read_only"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=[c[0] for c in CELLS])
def test_inputs_never_modified(cid, cell, kw, batch_first, read_only, impl):
    rng = np.random.default_rng(31)
    a = _valid(cell, seed=5)
    if batch_first:
        a["x"] = np.ascontiguousarray(a["x"].swapaxes(0, 1))
    lengths = np.array([T, 1], dtype=np.int32)
    hs_shape = (B, T, H) if batch_first else (T, B, H)
    grads_in = {"dhs": rng.standard_normal(hs_shape), "dh_n": rng.standard_normal((B, H)),
                "dc_n": rng.standard_normal((B, H)) if _spec(cell).has_cell_state else None}
    everything = dict(a, lengths=lengths, **grads_in)
    copies = {k: None if v is None else v.copy() for k, v in everything.items()}
    if read_only:
        for v in everything.values():
            if v is not None:
                v.setflags(write=False)
    params = (a["wx"], a["wh"], a.get("b", a.get("b_ih")), a.get("b_hh"))
    outs, cache = run_forward(impl, cell, a["x"], params, a["h0"], a.get("c0"), lengths=lengths,
                              batch_first=batch_first, **kw)
    grads = run_backward(impl, cell, cache, grads_in["dhs"], grads_in["dh_n"], grads_in["dc_n"])
    for k, v in everything.items():
        if v is not None:
            np.testing.assert_array_equal(v, copies[k], err_msg=f"{k} was modified")
            assert v.flags.writeable == (not read_only)
    # outputs are fresh arrays that share no memory with the inputs, writeable but for hs (what
    # the backward reads: read-only)
    for name, arr in list(outs.items()) + list(grads.items()):
        if arr is None:
            continue
        assert arr.flags.writeable == (name != "hs"), name
        for k, v in everything.items():
            if v is not None:
                assert not np.may_share_memory(arr, v), f"{name} shares memory with {k}"
    # read-only inputs give exactly what writeable ones give
    if read_only:
        w = {k: None if v is None else v.copy() for k, v in copies.items()}
        o2, c2 = run_forward(impl, cell, w["x"], (w["wx"], w["wh"], w.get("b", w.get("b_ih")), w.get("b_hh")),
                             w["h0"], w.get("c0"), lengths=w["lengths"], batch_first=batch_first, **kw)
        g2 = run_backward(impl, cell, c2, w["dhs"], w["dh_n"], w["dc_n"])
        for name in outs:
            if outs[name] is not None:
                np.testing.assert_array_equal(outs[name], o2[name])
        for name in grads:
            if grads[name] is not None:
                np.testing.assert_array_equal(grads[name], g2[name])


def test_failed_calls_leave_inputs_alone():
    a = _valid("lstm")
    copies = {k: v.copy() for k, v in a.items()}
    a["x"].flat[5] = np.nan
    copies["x"].flat[5] = np.nan
    with pytest.raises(ValueError):
        rnncore.lstm_forward(**a)
    for k, v in a.items():
        np.testing.assert_array_equal(v, copies[k])


def test_pickled_and_native_byte_order_arrays_are_accepted():
    """Dtypes are compared by equality, not identity: arrays that went through pickle (or a
    multiprocessing worker) or astype(newbyteorder('=')) run on the native backend."""
    import pickle

    rng = np.random.default_rng(0)
    a = {k: pickle.loads(pickle.dumps(v)) for k, v in _valid("lstm", np.float32).items()}
    a["x"] = a["x"].astype(a["x"].dtype.newbyteorder("="))
    hs, h_n, c_n, cache = rnncore.lstm_forward(**a)
    with rnncore.use_backend("numpy"):
        ref = rnncore.lstm_forward(**a)[0]
    np.testing.assert_allclose(hs, ref, atol=1e-5)
    rnncore.lstm_backward(pickle.loads(pickle.dumps(rng.standard_normal(hs.shape).astype(np.float32))), cache)


@pytest.mark.parametrize("bad", ["False", "no", None, 0, 1])
def test_reset_after_must_be_a_bool(bad):
    a = _valid("gru")
    with pytest.raises(TypeError, match=r"reset_after must be a bool"):
        rnncore.gru_forward(**a, reset_after=bad)
    w = rnncore.init_weights("gru", D, H, rng=0)
    with pytest.raises(TypeError, match=r"reset_after must be a bool"):
        rnncore.recurrent_forward("gru", a["x"], w, reset_after=bad)


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_masked_arrays_and_matrices_are_refused():
    a = _valid("rnn")
    masked = dict(a, x=np.ma.masked_array(a["x"], mask=a["x"] > 1))
    with pytest.raises(TypeError, match=r"x is a masked array"):
        rnncore.rnn_forward(**masked)
    with pytest.raises(TypeError, match=r"wh is a numpy.matrix"):
        rnncore.rnn_forward(**dict(a, wh=np.asmatrix(a["wh"])))


def test_sizes_beyond_memory_or_32bit_indices_are_refused_before_allocating(monkeypatch):
    """A forward whose outputs would not fit the machine, or whose T*B rows exceed the BLAS's
    32-bit indices, raises ValueError naming the sizes, before any native work."""
    from rnncore import _checks

    monkeypatch.setattr(_checks, "_memory_bytes", lambda: 2**30)  # as on a 1 GiB machine
    with pytest.raises(ValueError, match=r"T=4194304, B=1, H=256 .* need 24.0 GiB, more than this machine"):
        _checks.check_sizes("lstm_forward", "lstm", 2**22, 1, 4, 256, 4, np.float32)
    with pytest.raises(ValueError, match=r"T\*B = 1048576\*4096 = 4294967296 rows .* 32-bit indices"):
        _checks.check_sizes("rnn_forward", "rnn", 2**20, 2**12, 4, 8, 1, np.float32)
    _checks.check_sizes("rnn_forward", "rnn", 100, 10, 4, 8, 1, np.float32)  # ordinary sizes pass
    monkeypatch.setattr(_checks, "_memory_bytes", lambda: 1000)  # the public ops run the check
    for impl in ("native", "numpy"):
        with rnncore.use_backend(impl):
            with pytest.raises(ValueError, match=r"lstm_forward: the outputs and cache"):
                rnncore.lstm_forward(**_valid("lstm"))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("impl", ["native", "numpy"])
def test_returned_arrays_never_change_the_gradients(cell, impl):
    """hs is what the backward reads: it comes back read-only, so an in-place edit raises
    instead of silently changing the gradients. h_n and c_n are the caller's own: editing them
    changes nothing."""
    a = _valid(cell)
    fwd, bwd = getattr(rnncore, f"{cell}_forward"), getattr(rnncore, f"{cell}_backward")
    with rnncore.use_backend(impl):
        out = fwd(**a)
        dhs = np.ones_like(out[0])
        ref = bwd(dhs, out[-1])
        out = fwd(**a)
        hs = out[0]
        assert not hs.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            hs *= 0.5
        for state in out[1:-1]:
            state *= 0  # h_n, c_n
        got = bwd(dhs, out[-1])
    for g, r in zip(got, ref):
        if r is None:
            assert g is None
        else:
            np.testing.assert_array_equal(g, r)
    np.testing.assert_array_equal(hs.copy() * 0.5, np.asarray(hs) * 0.5)  # a copy is writeable


def test_layer_outputs_never_change_the_gradients():
    from rnncore.layers import LSTM

    rng = np.random.default_rng(0)
    layer = LSTM(4, 5, rng=0)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    out = layer.forward(x)
    with pytest.raises(ValueError, match="read-only"):
        out *= 0


def _double(a):
    return a * 2  # runs in a worker process; the array comes back through pickle


def test_arrays_from_pickle_and_a_process_pool_and_pickled_layers_run_natively():
    import multiprocessing
    import pickle

    from rnncore.layers import LSTM
    from rnncore.models import LanguageModel

    a = _valid("gru", np.float32)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        x2 = pool.apply(_double, (a["x"],))
    assert rnncore.gru_forward(**dict(a, x=x2))[0].shape == a["x"].shape[:2] + (H,)
    layer = pickle.loads(pickle.dumps(LSTM(D, H, rng=0)))
    out = layer.forward(a["x"])
    layer.backward(np.ones_like(out))
    model = pickle.loads(pickle.dumps(LanguageModel(11, 8, seed=0)))
    ids = np.arange(6).reshape(2, 3)
    assert np.isfinite(model.loss(ids, ids))
    model.backward()


@pytest.mark.parametrize("flag", ["bidirectional", "stateful", "batch_first"])
def test_layer_flags_must_be_bools(flag):
    from rnncore.layers import GRU

    with pytest.raises(TypeError, match=rf"GRU: {flag} must be a bool"):
        GRU(3, 4, **{flag: "False"})


def _R(*shape):
    return np.ones(shape, np.float32)


# Bad arguments to the layers, time layers, models and helpers: each a TypeError / ValueError /
# RuntimeError naming what was wrong (they were IndexError, AttributeError, ZeroDivisionError,
# MemoryError after asking for 29 TiB, pybind's generic message, or silently accepted).
_LAYER_MISUSE = [
    ("linear-0d-x", lambda: rnncore.layers.Linear(3, 5).forward(np.float32(1)), ValueError, "x must have 3 features"),
    ("linear-1d-W", lambda: rnncore.layers.Linear(W=_R(3)), ValueError, "W must be a 2-D"),
    ("linear-float-size", lambda: rnncore.layers.Linear(3.5, 5), ValueError, "in_features must be an integer"),
    ("lstm-float-size", lambda: rnncore.layers.LSTM(1.5, 4), ValueError, "input_size must be an integer"),
    ("lstm-huge", lambda: rnncore.layers.LSTM(3, 10**6), ValueError, "need .* GiB"),
    ("init-weights-huge", lambda: rnncore.init_weights("lstm", 3, 10**9), ValueError, "hidden_size"),
    ("dropout-p-str", lambda: rnncore.layers.Dropout("a"), TypeError, "p must be a real number"),
    ("laststep-float-lengths", lambda: rnncore.layers.LastStep().forward(_R(2, 3, 1), lengths=[1.5, 2.5]),
     TypeError, "lengths must be integers"),
    ("timernn-backward-first", lambda: rnncore.time_layers.TimeRNN(_R(3, 4), _R(4, 4), _R(4)).backward(_R(1, 2, 4)),
     RuntimeError, "call forward first"),
    ("timelstm-2d-xs", lambda: rnncore.time_layers.TimeLSTM(_R(3, 16), _R(4, 16), _R(16)).forward(_R(2, 3)),
     ValueError, r"xs must be 3-D"),
    ("perplexity-seq-len-0", lambda: rnncore.models.LanguageModel(5, 7).perplexity(np.arange(20) % 5, seq_len=0),
     ValueError, "seq_len must be an integer"),
    ("xent-backward-empty", lambda: rnncore.softmax_cross_entropy_backward(_R(3, 0), np.array([-1, -1, -1])),
     ValueError, "probs must have shape"),
    ("lm-float-size", lambda: rnncore.models.LanguageModel(5, 2.9), ValueError, "hidden_size must be an integer"),
    ("lm-float-layers", lambda: rnncore.models.LanguageModel(5, 4, num_layers=1.5), ValueError, "num_layers"),
    ("generate-negative-n", lambda: rnncore.models.LanguageModel(5, 4).generate([1], -1), ValueError, "n must be"),
    ("recurrent-training-str", lambda: rnncore.recurrent_forward(
        "gru", _R(3, 2, 4), rnncore.init_weights("gru", 4, 5, rng=0), training="no"), TypeError, "training must be"),
    ("recurrent-dropout-str", lambda: rnncore.recurrent_forward(
        "gru", _R(3, 2, 4), rnncore.init_weights("gru", 4, 5, num_layers=2, rng=0), num_layers=2, dropout="0.5"),
     TypeError, "dropout must be a number"),
    ("state-dict-bidirectional-str", lambda: rnncore.to_state_dict(
        "lstm", rnncore.init_weights("lstm", 3, 4, rng=0), bidirectional="no"), TypeError, "bidirectional must be"),
    ("state-dict-int-weights", lambda: rnncore.to_state_dict(
        "lstm", [tuple(a.astype(np.int64) for a in rnncore.init_weights("lstm", 3, 4, rng=0)[0])]),
     TypeError, "must be float32 or float64"),
    ("state-dict-layer1-width", lambda: rnncore.to_state_dict(
        "lstm", rnncore.init_weights("lstm", 3, 4, rng=0) * 2, num_layers=2), ValueError, "layer below"),
    ("gradcheck-no-checks", lambda: __import__("rnncore.gradcheck").gradcheck.gradcheck(
        rnncore.layers.Linear(3, 2, dtype=np.float64), np.ones((2, 3)), max_checks=0), ValueError, "max_checks"),
]


@pytest.mark.parametrize("name,call,exc,match", _LAYER_MISUSE, ids=[c[0] for c in _LAYER_MISUSE])
def test_layer_misuse_is_named(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_array_likes_where_arrays_are_natural():
    """Lists where the book's code passes arrays: Dropout's input, the loss's targets, and a thread
    count beyond the team's size (capped, as OpenMP caps it)."""
    d = rnncore.layers.Dropout(0.5, rng=0)
    assert d.forward([1.0, 2.0, 3.0, 4.0]).shape == (4,)
    loss = rnncore.time_layers.TimeSoftmaxWithLoss().forward(_R(2, 3, 4), [[0, 1, 2], [0, 1, 2]])
    assert np.isclose(loss, np.log(4))
    before = rnncore.get_num_threads()
    try:
        rnncore.set_num_threads(10**12)
        assert 1 <= rnncore.get_num_threads() <= 256
    finally:
        rnncore.set_num_threads(0)
    assert rnncore.get_num_threads() == before


def test_load_npz_takes_the_name_save_npz_was_given(tmp_path):
    w = rnncore.init_weights("gru", 3, 4, rng=0)
    rnncore.save_npz(tmp_path / "weights", "gru", w)  # NumPy writes weights.npz
    mode, w2, _, _ = rnncore.load_npz(tmp_path / "weights")
    assert mode == "gru" and all(np.array_equal(a, b) for a, b in zip(w[0], w2[0]))


def test_from_state_dict_takes_parameters_that_require_grad():
    torch = pytest.importorskip("torch")
    m = torch.nn.GRU(3, 4)
    mode, w, _, _ = rnncore.from_state_dict(dict(m.named_parameters()))
    assert mode == "gru"
    np.testing.assert_array_equal(w[0][1], m.weight_hh_l0.detach().numpy().T)


def test_onnx_export_refuses_weights_rnncore_does_not_run():
    pytest.importorskip("onnx")
    from rnncore import onnx as rnncore_onnx

    w16 = [tuple(a.astype(np.float16) for a in rnncore.init_weights("lstm", 3, 4, rng=0)[0])]
    with pytest.raises(TypeError, match="weights must be float32 or float64"):
        rnncore_onnx.export_recurrent("lstm", w16)


def test_numbers_of_every_kind_where_numbers_are_natural():
    """0-d arrays (what an .npz gives back), NumPy scalars and Fractions pass where a number is
    asked for; embed_size 0 means the default; clip_grads reads a generator once."""
    import fractions

    from rnncore.optim import Adam, clip_grads

    assert Adam(lr=np.array(1e-3)).lr == 1e-3 and Adam(lr=fractions.Fraction(1, 100)).lr == 0.01
    assert rnncore.layers.Dropout(np.array(0.5)).p == 0.5
    assert rnncore.layers.LSTM(np.array(3), np.int64(4)).hidden_size == 4
    assert rnncore.models.LanguageModel(5, 8, embed_size=0).config["embed_size"] == 8
    x = np.ones((2, 3, 4), np.float32)
    t = np.array([[0, 1, -1], [2, 3, 0]])
    assert np.isfinite(rnncore.softmax_cross_entropy(x, t, ignore_index=np.array(-1))[0])
    g = [np.full(4, 25.0), np.full(4, 25.0)]  # norm sqrt(8 * 625) = 50 sqrt(2)
    assert np.isclose(clip_grads((a for a in g), 50.0), 50 * np.sqrt(2))
    assert np.allclose(g[0], 25.0 / np.sqrt(2), rtol=1e-6)  # clipped to norm 50
