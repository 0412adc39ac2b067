"""rnncore.recurrent_forward / recurrent_backward: stacked, bidirectional, dropout, lengths.

Native vs the NumPy backend, finite differences, dropout semantics, PyTorch as an outside
oracle (nn.RNN / nn.LSTM / nn.GRU, packed sequences) and argument errors."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import rnncore
from rnncore.gradcheck import numeric_gradient
from helpers import TOL, assert_close

# (id, mode, cell keyword arguments)
MODES = [
    ("rnn-tanh", "rnn", {"activation": "tanh"}),
    ("rnn-relu", "rnn", {"activation": "relu"}),
    ("lstm", "lstm", {}),
    ("gru", "gru", {}),
    ("gru-reset-before", "gru", {"reset_after": False}),
]
MODE_IDS = [m[0] for m in MODES]


def _problem(mode, L, bidir, T, B, D, H, dtype, seed, *, batch_first=False, lengths=False, h0=True):
    rng = np.random.default_rng(seed)
    nd = 2 if bidir else 1
    w = rnncore.init_weights(mode, D, H, L, bidir, dtype=dtype, rng=rng)
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D)).astype(dtype)
    s = (L * nd, B, H)
    st = dict(
        h0=rng.standard_normal(s).astype(dtype) * 0.5 if h0 else None,
        c0=rng.standard_normal(s).astype(dtype) * 0.5 if (h0 and mode == "lstm") else None,
    )
    lens = None
    if lengths:
        lens = rng.integers(1, T + 1, size=B)
        lens[0] = T
        if B > 1:
            lens[-1] = 1
    oshape = (B, T, nd * H) if batch_first else (T, B, nd * H)
    g = dict(
        dout=rng.standard_normal(oshape).astype(dtype),
        dh_n=rng.standard_normal(s).astype(dtype),
        dc_n=rng.standard_normal(s).astype(dtype) if mode == "lstm" else None,
    )
    return x, w, st, lens, g


def _run(mode, x, w, st, g, **kw):
    out, h_n, c_n, cache = rnncore.recurrent_forward(mode, x, w, st["h0"], st["c0"], **kw)
    dx, dw, dh0, dc0 = rnncore.recurrent_backward(g["dout"], cache, g["dh_n"], g["dc_n"])
    res = {"out": out, "h_n": h_n, "c_n": c_n, "dx": dx, "dh0": dh0, "dc0": dc0}
    for k, t in enumerate(dw):
        for name, a in zip(("dwx", "dwh", "db_ih", "db_hh"), t):
            res[f"{name}[{k}]"] = a
    return res


# -- native vs the NumPy backend -------------------------------------------------------------

@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mid,mode,kw", MODES, ids=MODE_IDS)
def test_native_matches_numpy_backend(mid, mode, kw, dtype, batch_first, lengths):
    seed = zlib.crc32(repr((mid, batch_first, lengths, np.dtype(dtype).name)).encode())
    x, w, st, lens, g = _problem(mode, 3, True, 6, 4, 3, 5, dtype, seed, batch_first=batch_first, lengths=lengths)
    kw = dict(kw, num_layers=3, bidirectional=True, batch_first=batch_first, lengths=lens)
    with rnncore.use_backend("native"):
        nat = _run(mode, x, w, st, g, **kw)
    with rnncore.use_backend("numpy"):
        ref = _run(mode, x, w, st, g, **kw)
    for name in ref:
        assert_close(nat[name], ref[name], 10 * TOL[dtype], name)


@pytest.mark.parametrize("mid,mode,kw", MODES[::2], ids=MODE_IDS[::2])
def test_native_matches_numpy_unidirectional_dropout_no_h0(mid, mode, kw):
    x, w, st, lens, g = _problem(mode, 2, False, 5, 3, 4, 3, np.float64, 7, lengths=True, h0=False)
    kw = dict(kw, num_layers=2, lengths=lens, dropout=0.3, training=True)
    with rnncore.use_backend("native"):
        nat = _run(mode, x, w, st, g, rng=np.random.default_rng(3), **kw)
    with rnncore.use_backend("numpy"):
        ref = _run(mode, x, w, st, g, rng=np.random.default_rng(3), **kw)
    for name in ref:
        assert_close(nat[name], ref[name], TOL[np.float64], name)


# -- structure: the stack is the composition of single-layer ops ---------------------------

def test_single_layer_unidirectional_is_the_plain_op():
    x, w, st, _, g = _problem("lstm", 1, False, 5, 2, 3, 4, np.float64, 1)
    out, h_n, c_n, _ = rnncore.recurrent_forward("lstm", x, w, st["h0"], st["c0"])
    hs, h1, c1, _ = rnncore.lstm_forward(x, *w[0], st["h0"][0], st["c0"][0])
    np.testing.assert_array_equal(out, hs)
    np.testing.assert_array_equal(h_n[0], h1)
    np.testing.assert_array_equal(c_n[0], c1)


def test_rnn_uses_summed_bias_and_splits_its_gradient():
    x, w, st, _, g = _problem("rnn", 1, False, 4, 2, 3, 3, np.float64, 2)
    out, h_n, _, cache = rnncore.recurrent_forward("rnn", x, w, st["h0"], activation="relu")
    wx, wh, b_ih, b_hh = w[0]
    hs, h1, c = rnncore.rnn_forward(x, wx, wh, b_ih + b_hh, st["h0"][0], activation="relu")
    np.testing.assert_array_equal(out, hs)
    _, dw, _, dc0 = rnncore.recurrent_backward(g["dout"], cache)
    db = rnncore.rnn_backward(g["dout"], c)[3]
    np.testing.assert_array_equal(dw[0][2], db)
    np.testing.assert_array_equal(dw[0][3], db)
    assert dc0 is None


def test_reverse_direction_reads_each_sequence_from_its_own_end():
    """Bidirectional with lengths: sequence b's reverse half equals running it alone, cut to
    its length, reversed."""
    T, B, D, H = 6, 3, 2, 3
    x, w, st, _, _ = _problem("gru", 1, True, T, B, D, H, np.float64, 4)
    lens = np.array([6, 2, 4])
    out, h_n, _, _ = rnncore.recurrent_forward("gru", x, w, st["h0"], bidirectional=True, lengths=lens)
    for b, n in enumerate(lens):
        xb = np.ascontiguousarray(x[:n, b:b + 1])
        o, hn, _, _ = rnncore.recurrent_forward("gru", xb, w, np.ascontiguousarray(st["h0"][:, b:b + 1]),
                                                bidirectional=True)
        np.testing.assert_allclose(out[:n, b:b + 1], o, rtol=0, atol=1e-13)
        np.testing.assert_array_equal(out[n:, b], 0)
        np.testing.assert_allclose(h_n[:, b:b + 1], hn, rtol=0, atol=1e-13)


def test_batch_first_equals_time_major():
    x, w, st, lens, g = _problem("lstm", 2, True, 5, 3, 2, 3, np.float64, 5, lengths=True)
    tm = _run("lstm", x, w, st, g, num_layers=2, bidirectional=True, lengths=lens)
    xb = np.ascontiguousarray(x.swapaxes(0, 1))
    gb = dict(g, dout=np.ascontiguousarray(g["dout"].swapaxes(0, 1)))
    bf = _run("lstm", xb, w, st, gb, num_layers=2, bidirectional=True, lengths=lens, batch_first=True)
    for name in tm:
        a = bf[name]
        if name in ("out", "dx"):
            a = a.swapaxes(0, 1)
        assert_close(a, tm[name], 1e-12, name)


def test_full_lengths_equal_no_lengths():
    x, w, st, _, g = _problem("gru", 2, True, 5, 3, 2, 3, np.float64, 6)
    a = _run("gru", x, w, st, g, num_layers=2, bidirectional=True)
    b = _run("gru", x, w, st, g, num_layers=2, bidirectional=True, lengths=np.full(3, 5))
    for name in a:
        assert_close(b[name], a[name], 1e-13, name)


# -- finite differences ----------------------------------------------------------------------

@pytest.mark.parametrize("mid,mode,kw", [MODES[0], MODES[2], MODES[3]], ids=["rnn", "lstm", "gru"])
def test_gradients_match_finite_differences(mid, mode, kw):
    T, B, D, H, L = 4, 3, 2, 2, 2
    x, w, st, lens, g = _problem(mode, L, True, T, B, D, H, np.float64, 11, lengths=True)
    fkw = dict(kw, num_layers=L, bidirectional=True, lengths=lens, dropout=0.25, training=True)

    def loss():
        out, h_n, c_n, _ = rnncore.recurrent_forward(mode, x, w, st["h0"], st["c0"],
                                                     rng=np.random.default_rng(99), **fkw)
        v = np.sum(out * g["dout"]) + np.sum(h_n * g["dh_n"])
        return v + (np.sum(c_n * g["dc_n"]) if c_n is not None else 0.0)

    out, h_n, c_n, cache = rnncore.recurrent_forward(mode, x, w, st["h0"], st["c0"],
                                                     rng=np.random.default_rng(99), **fkw)
    assert any(m is not None and (m == 0).any() for m in cache.masks)
    dx, dw, dh0, dc0 = rnncore.recurrent_backward(g["dout"], cache, g["dh_n"], g["dc_n"])
    checks = [("x", x, dx), ("h0", st["h0"], dh0)]
    if mode == "lstm":
        checks.append(("c0", st["c0"], dc0))
    for k in range(len(w)):
        for j, name in enumerate(("wx", "wh", "b_ih", "b_hh")):
            checks.append((f"{name}[{k}]", w[k][j], dw[k][j]))
    for name, arr, grad in checks:
        num = numeric_gradient(loss, arr, 1e-6)
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-7, err_msg=name)


# -- dropout ---------------------------------------------------------------------------------

def test_dropout_same_seed_same_result_and_different_seed_differs():
    x, w, st, _, _ = _problem("lstm", 3, True, 5, 4, 3, 4, np.float32, 12)
    kw = dict(num_layers=3, bidirectional=True, dropout=0.5, training=True)
    a = rnncore.recurrent_forward("lstm", x, w, rng=np.random.default_rng(1), **kw)
    b = rnncore.recurrent_forward("lstm", x, w, rng=np.random.default_rng(1), **kw)
    c = rnncore.recurrent_forward("lstm", x, w, rng=np.random.default_rng(2), **kw)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_no_dropout_when_not_training_or_zero_or_single_layer():
    x, w, st, _, _ = _problem("gru", 2, False, 5, 4, 3, 4, np.float64, 13)
    plain = rnncore.recurrent_forward("gru", x, w, num_layers=2)
    for kw in (dict(dropout=0.5, training=False), dict(dropout=0.0, training=True)):
        got = rnncore.recurrent_forward("gru", x, w, num_layers=2, rng=np.random.default_rng(0), **kw)
        np.testing.assert_array_equal(got[0], plain[0])
        assert got[3].masks == [None]
    # the last layer's output is never dropped
    one = rnncore.recurrent_forward("gru", x, w[:1], dropout=0.9, training=True)
    np.testing.assert_array_equal(one[0], rnncore.recurrent_forward("gru", x, w[:1])[0])


def test_dropout_masks_are_inverted_and_applied_between_layers():
    p = 0.4
    x, w, st, _, _ = _problem("rnn", 2, True, 30, 8, 3, 6, np.float64, 14)
    out, h_n, _, cache = rnncore.recurrent_forward("rnn", x, w, num_layers=2, bidirectional=True, dropout=p,
                                                   training=True, rng=np.random.default_rng(5))
    (mask,) = cache.masks
    assert mask.shape == (30, 8, 12) and mask.dtype == np.float64
    assert set(np.unique(mask)) <= {0.0, 1.0 / (1 - p)}
    assert 0.3 < np.mean(mask == 0) < 0.5
    # recompute by hand: layer 0, mask, layer 1
    l0, _, _, _ = rnncore.recurrent_forward("rnn", x, w[:2], bidirectional=True)
    l1, h1, _, _ = rnncore.recurrent_forward("rnn", l0 * mask, w[2:], bidirectional=True)
    np.testing.assert_allclose(out, l1, rtol=0, atol=1e-14)
    np.testing.assert_allclose(h_n[2:], h1, rtol=0, atol=1e-14)


# -- PyTorch as an outside oracle ------------------------------------------------------------

def _torch_module(torch, mode, D, H, L, bidir, batch_first, kw):
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[mode]
    extra = {"nonlinearity": kw.get("activation", "tanh")} if mode == "rnn" else {}
    return cls(D, H, num_layers=L, bidirectional=bidir, batch_first=batch_first, dtype=torch.float64, **extra)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("mid,mode,kw", MODES[:4], ids=MODE_IDS[:4])
def test_matches_torch(mid, mode, kw, batch_first, lengths):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T, B, D, H, L = 5, 4, 3, 4, 3
    seed = zlib.crc32(repr((mid, batch_first, lengths)).encode())
    torch.manual_seed(seed % 1000)
    m = _torch_module(torch, mode, D, H, L, True, batch_first, kw)
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    got_mode, w, nl, bidir = rnncore.from_state_dict(sd)
    assert (got_mode, nl, bidir) == (mode, L, True)
    x, _, st, lens, g = _problem(mode, L, True, T, B, D, H, np.float64, seed, batch_first=batch_first,
                                 lengths=lengths)
    # with lengths, dout past them is nonzero: both sides must ignore it (padded outputs are constants)

    # torch
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(st["h0"], requires_grad=True)
    c0t = torch.tensor(st["c0"], requires_grad=True) if mode == "lstm" else None
    inp = xt if lens is None else pack_padded_sequence(xt, torch.tensor(lens), batch_first=batch_first,
                                                       enforce_sorted=False)
    res = m(inp, (h0t, c0t) if mode == "lstm" else h0t)
    out_t, state = res
    h_nt, c_nt = state if mode == "lstm" else (state, None)
    if lens is not None:
        out_t, _ = pad_packed_sequence(out_t, batch_first=batch_first, total_length=T)
    loss = (out_t * torch.tensor(g["dout"])).sum() + (h_nt * torch.tensor(g["dh_n"])).sum()
    if mode == "lstm":
        loss = loss + (c_nt * torch.tensor(g["dc_n"])).sum()
    loss.backward()

    # rnncore
    fkw = dict(num_layers=L, bidirectional=True, batch_first=batch_first, lengths=lens)
    if mode == "rnn":
        fkw["activation"] = kw["activation"]
    out, h_n, c_n, cache = rnncore.recurrent_forward(mode, x, w, st["h0"], st["c0"], **fkw)
    dx, dw, dh0, dc0 = rnncore.recurrent_backward(g["dout"], cache, g["dh_n"], g["dc_n"])

    k = 1e-11
    assert_close(out, out_t.detach().numpy(), k, "out")
    assert_close(h_n, h_nt.detach().numpy(), k, "h_n")
    assert_close(dx, xt.grad.numpy(), k, "dx")
    assert_close(dh0, h0t.grad.numpy(), k, "dh0")
    if mode == "lstm":
        assert_close(c_n, c_nt.detach().numpy(), k, "c_n")
        assert_close(dc0, c0t.grad.numpy(), k, "dc0")
    grads = rnncore.to_state_dict(mode, dw, num_layers=L, bidirectional=True)
    params = dict(m.named_parameters())
    assert set(grads) == set(params)
    for name, p in params.items():
        assert_close(grads[name], p.grad.numpy(), k, name)


# -- errors ----------------------------------------------------------------------------------

def _good(mode="lstm", L=2, bidir=True):
    x, w, st, _, _ = _problem(mode, L, bidir, 4, 3, 2, 3, np.float64, 21)
    return x, w, st


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, w, st: rnncore.recurrent_forward("elman", x, w), ValueError, "mode"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x, w, num_layers=0), ValueError, "num_layers"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x, w, num_layers=2), ValueError, "weights"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x, w[:3], num_layers=2, bidirectional=True),
     ValueError, "weights"),
    (lambda x, w, st: rnncore.recurrent_forward("gru", x, w, num_layers=2, bidirectional=True), ValueError,
     r"weights\[0\]"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x, w, st["h0"][:3], num_layers=2, bidirectional=True),
     ValueError, "h0"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x, w, None, st["c0"][:, :2], num_layers=2,
                                                bidirectional=True), ValueError, "c0"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x, w, num_layers=2, bidirectional=True, dropout=1.0),
     ValueError, "dropout"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x, w, num_layers=2, bidirectional=True, dropout=-0.1),
     ValueError, "dropout"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x, w, num_layers=2, bidirectional=True,
                                                lengths=[1, 2, 5]), ValueError, "lengths"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x.astype(np.float32), w, num_layers=2,
                                                bidirectional=True), TypeError, "dtype"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x[0], w, num_layers=2, bidirectional=True),
     ValueError, "x must be 3-D"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x, w, num_layers=2, bidirectional=True,
                                                activation="relu"), ValueError, "activation"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x, [w[0], w[1], w[0], w[1]], num_layers=2,
                                                bidirectional=True), ValueError, r"weights\[2\] .*wx"),
    (lambda x, w, st: rnncore.recurrent_forward("lstm", x, [w[0], w[1], w[2], w[3][:3]], num_layers=2,
                                                bidirectional=True), ValueError, r"weights\[3\]"),
])
def test_bad_forward_arguments(call, exc, match):
    x, w, st = _good()
    with pytest.raises(exc, match=match):
        call(x, w, st)


def test_bad_backward_arguments():
    x, w, st = _good()
    out, h_n, c_n, cache = rnncore.recurrent_forward("lstm", x, w, num_layers=2, bidirectional=True)
    with pytest.raises(TypeError, match="cache"):
        rnncore.recurrent_backward(out, object())
    with pytest.raises(ValueError, match="dout"):
        rnncore.recurrent_backward(out[:, :, :3].copy(), cache)
    with pytest.raises(ValueError, match="dh_n"):
        rnncore.recurrent_backward(out, cache, h_n[:2].copy())
    with pytest.raises(TypeError, match="dc_n"):
        rnncore.recurrent_backward(out, cache, None, c_n.astype(np.float32))
    x, w, st = _good("gru")
    out, h_n, _, cache = rnncore.recurrent_forward("gru", x, w, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match="dc_n"):
        rnncore.recurrent_backward(out, cache, None, h_n)


def test_backward_without_any_gradient_is_zero_and_init_weights_shapes():
    x, w, st = _good("gru")
    out, h_n, _, cache = rnncore.recurrent_forward("gru", x, w, st["h0"], num_layers=2, bidirectional=True)
    dx, dw, dh0, dc0 = rnncore.recurrent_backward(None, cache)
    assert not dx.any() and not dh0.any() and dc0 is None
    assert all(not a.any() for t in dw for a in t)
    ws = rnncore.init_weights("lstm", 5, 7, 2, True, dtype=np.float32, rng=0)
    assert [tuple(a.shape for a in t) for t in ws] == [((5, 28), (7, 28), (28,), (28,))] * 2 + \
        [((14, 28), (7, 28), (28,), (28,))] * 2
    assert all(a.dtype == np.float32 and np.abs(a).max() <= 1 / np.sqrt(7) for t in ws for a in t)
    with pytest.raises(ValueError, match="hidden_size"):
        rnncore.init_weights("gru", 3, 0)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
def test_weight_layout_torch_reads_torchs_matrices(mode):
    """A 2-layer bidirectional stack on PyTorch's (G*H, D_l) / (G*H, H) matrices: the outputs of
    their transposes, the weight gradients in PyTorch's layout."""
    rng = np.random.default_rng(5)
    T, B, D, H = 7, 3, 6, 10
    w = rnncore.init_weights(mode, D, H, num_layers=2, bidirectional=True, dtype=np.float64, rng=rng)
    wt = [(np.ascontiguousarray(a.T), np.ascontiguousarray(b.T), c, d) for a, b, c, d in w]
    x = rng.standard_normal((T, B, D))
    lengths = np.array([7, 4, 2])
    ref = rnncore.recurrent_forward(mode, x, w, num_layers=2, bidirectional=True, lengths=lengths)
    got = rnncore.recurrent_forward(mode, x, wt, num_layers=2, bidirectional=True, lengths=lengths,
                                    weight_layout="torch")
    for a, b in zip(got[:3], ref[:3]):
        if b is not None:
            assert_close(a, b, TOL[np.float64])
    dout = rng.standard_normal(ref[0].shape)
    rdx, rdw, rdh0, _ = rnncore.recurrent_backward(dout, ref[3])
    gdx, gdw, gdh0, _ = rnncore.recurrent_backward(dout, got[3])
    assert_close(gdx, rdx, TOL[np.float64])
    assert_close(gdh0, rdh0, TOL[np.float64])
    for g, r in zip(gdw, rdw):
        assert_close(g[0], r[0].T, TOL[np.float64])
        assert_close(g[1], r[1].T, TOL[np.float64])
        assert_close(g[2], r[2], TOL[np.float64])
        assert_close(g[3], r[3], TOL[np.float64])


def test_weight_layout_is_checked():
    w = rnncore.init_weights("lstm", 4, 5)
    x = np.zeros((2, 1, 4), np.float32)
    with pytest.raises(ValueError, match="weight_layout must be 'rnncore' or 'torch'"):
        rnncore.recurrent_forward("lstm", x, w, weight_layout="pytorch")
    with pytest.raises(ValueError, match=r"weights\[0\] \(layer 0, forward\) wx must have shape \(4\*H, D_l\)"):
        rnncore.recurrent_forward("lstm", x, w, weight_layout="torch")
