"""rnncore.time_layers against a plain-NumPy implementation of the book's semantics.

The oracle is rnncore.textbook.layers (per-step cells in Python loops, LSTM blocks f,g,i,o,
GRU blocks [z|r|h~]). Checked: forward outputs, every gradient, dh, stateful carry-over and
reset_state, TimeBiLSTM, tied transposed TimeAffine weights, TimeSoftmaxWithLoss with
ignore_label and one-hot targets, duplicate ids in TimeEmbedding, float64 finite differences,
and a golden training run (SimpleRnnlm- and Rnnlm-like models, K SGD steps) on both backends.
float32 tolerances are k * max|ref| (conftest.assert_close).
"""
from __future__ import annotations

import numpy as np
import pytest

import rnncore
import rnncore.time_layers as L
from rnncore.gradcheck import numeric_gradient
from helpers import assert_close



from rnncore.textbook import layers as R  # noqa: E402  (the book's plain-NumPy layers)

K32 = 2e-5   # float32: |diff| <= K32 * max|ref| on these small shapes
GATES = {"TimeRNN": 1, "TimeLSTM": 4, "TimeGRU": 3}
BACKENDS = ["native", "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request):
    with rnncore.use_backend(request.param):
        yield request.param


def _weights(rng, D, H, G, dtype=np.float32, scale=0.5):
    Wx = (rng.standard_normal((D, G * H)) * scale).astype(dtype)
    Wh = (rng.standard_normal((H, G * H)) * scale).astype(dtype)
    b = (rng.standard_normal(G * H) * scale).astype(dtype)
    return Wx, Wh, b


def _pair(name, rng, D, H, dtype=np.float32, stateful=False):
    Wx, Wh, b = _weights(rng, D, H, GATES[name], dtype)
    ref = getattr(R, name)(Wx.copy(), Wh.copy(), b.copy(), stateful=stateful)
    lay = getattr(L, name)(Wx, Wh, b, stateful=stateful)
    return ref, lay


# ---- recurrent layers ----------------------------------------------------------------

@pytest.mark.parametrize("name", list(GATES))
def test_recurrent_matches_textbook(name, backend, rng):
    N, T, D, H = 3, 7, 5, 6
    ref, lay = _pair(name, rng, D, H)
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    dhs = rng.standard_normal((N, T, H)).astype(np.float32)
    hs = lay.forward(xs)
    assert hs.dtype == np.float32 and hs.shape == (N, T, H)
    assert_close(hs, ref.forward(xs), K32, "hs")
    assert_close(lay.h, ref.h, K32, "h")
    dxs = lay.backward(dhs)
    assert_close(dxs, ref.backward(dhs), K32, "dxs")
    assert_close(lay.dh, ref.dh, K32, "dh")
    for i, (g, gr) in enumerate(zip(lay.grads, ref.grads)):
        assert_close(g, gr, K32, f"grads[{i}]")
    if name == "TimeLSTM":
        assert_close(lay.c, ref.c, K32, "c")
        assert not hasattr(lay, "dc")


@pytest.mark.parametrize("name", list(GATES))
def test_params_are_the_passed_arrays_and_grads_stay_in_place(name, rng):
    Wx, Wh, b = _weights(rng, 4, 3, GATES[name])
    lay = getattr(L, name)(Wx, Wh, b)
    assert lay.params[0] is Wx and lay.params[1] is Wh and lay.params[2] is b
    ids = [id(g) for g in lay.grads]
    assert all(g.shape == p.shape and g.dtype == p.dtype for g, p in zip(lay.grads, lay.params))
    xs = rng.standard_normal((2, 3, 4)).astype(np.float32)
    lay.forward(xs)
    lay.backward(np.ones((2, 3, 3), np.float32))
    assert [id(g) for g in lay.grads] == ids
    assert lay.layers is None


@pytest.mark.parametrize("name", list(GATES))
def test_stateful_carry_and_reset(name, backend, rng):
    N, D, H = 2, 4, 5
    ref, lay = _pair(name, rng, D, H, stateful=True)
    # several chunks: state carried, with an SGD step in between (params mutated in place)
    for chunk, T in enumerate((3, 4, 2, 5)):
        if chunk == 2:
            ref.reset_state()
            lay.reset_state()
            assert lay.h is None
        xs = rng.standard_normal((N, T, D)).astype(np.float32)
        dhs = rng.standard_normal((N, T, H)).astype(np.float32)
        assert_close(lay.forward(xs), ref.forward(xs), K32, f"hs chunk {chunk}")
        assert_close(lay.backward(dhs), ref.backward(dhs), K32, f"dxs chunk {chunk}")
        assert_close(lay.dh, ref.dh, K32, f"dh chunk {chunk}")
        for g, gr, p, pr in zip(lay.grads, ref.grads, lay.params, ref.params):
            assert_close(g, gr, K32, f"grad chunk {chunk}")
            p -= 0.1 * g
            pr -= 0.1 * gr
    # set_state: an explicit start state
    h0 = rng.standard_normal((N, H)).astype(np.float32)
    xs = rng.standard_normal((N, 3, D)).astype(np.float32)
    if name == "TimeLSTM":
        c0 = rng.standard_normal((N, H)).astype(np.float32)
        ref.set_state(h0, c0)
        lay.set_state(h0, c0)
        assert_close(lay.forward(xs), ref.forward(xs), K32, "hs after set_state(h, c)")
        ref.set_state(h0)
        lay.set_state(h0)  # c=None -> zeros
        assert lay.c is None
    else:
        ref.set_state(h0)
        lay.set_state(h0)
    assert_close(lay.forward(xs), ref.forward(xs), K32, "hs after set_state(h)")


@pytest.mark.parametrize("name", list(GATES))
def test_not_stateful_ignores_previous_state(name, rng):
    ref, lay = _pair(name, rng, 3, 4, stateful=False)
    xs = rng.standard_normal((2, 3, 3)).astype(np.float32)
    first = lay.forward(xs)
    np.testing.assert_array_equal(lay.forward(xs), first)
    assert_close(first, ref.forward(xs), K32, "hs")


def test_bilstm_matches_textbook(backend, rng):
    N, T, D, H = 2, 6, 4, 5
    w1 = _weights(rng, D, H, 4)
    w2 = _weights(rng, D, H, 4)
    ref = R.TimeBiLSTM(*[w.copy() for w in w1 + w2])
    lay = L.TimeBiLSTM(*(w1 + w2))
    assert all(p is q for p, q in zip(lay.params, w1 + w2)) and len(lay.grads) == 6
    xs = rng.standard_normal((N, T, D)).astype(np.float32)
    dhs = rng.standard_normal((N, T, 2 * H)).astype(np.float32)
    assert_close(lay.forward(xs), ref.forward(xs), K32, "out")
    assert_close(lay.backward(dhs), ref.backward(dhs), K32, "dxs")
    for i, (g, gr) in enumerate(zip(lay.grads, ref.grads)):
        assert_close(g, gr, K32, f"grads[{i}]")


def test_cells_match_textbook_steps(rng):
    N, D, H = 3, 4, 5
    x = rng.standard_normal((N, D)).astype(np.float32)
    h = rng.standard_normal((N, H)).astype(np.float32)
    c = rng.standard_normal((N, H)).astype(np.float32)
    dh = rng.standard_normal((N, H)).astype(np.float32)
    dc = rng.standard_normal((N, H)).astype(np.float32)
    for cell, step, G in ((L.RNN, R.ElmanStep, 1), (L.LSTM, R.LstmStep, 4), (L.GRU, R.GruStep, 3)):
        w = _weights(rng, D, H, G)
        a, r = cell(*w), step(*w)
        if G == 4:
            for o, orf in zip(a.forward(x, h, c), r.forward(x, h, c)):
                assert_close(o, orf, K32, cell.__name__)
            back, back_ref = a.backward(dh, dc), r.backward(dh, dc)
        else:
            assert_close(a.forward(x, h), r.forward(x, h), K32, cell.__name__)
            back, back_ref = a.backward(dh), r.backward(dh)
        for o, orf in zip(back, back_ref):
            assert_close(o, orf, K32, cell.__name__)
        for g, gr in zip(a.grads, (r.dWx, r.dWh, r.db)):
            assert_close(g, gr, K32, cell.__name__)


# ---- finite differences (float64) ------------------------------------------------------

@pytest.mark.parametrize("name", list(GATES))
def test_gradcheck_float64(name, backend, rng):
    N, T, D, H = 2, 4, 3, 3
    Wx, Wh, b = _weights(rng, D, H, GATES[name], np.float64)
    lay = getattr(L, name)(Wx, Wh, b, stateful=True)
    h0 = rng.standard_normal((N, H))
    xs = rng.standard_normal((N, T, D))
    w = rng.standard_normal((N, T, H))  # loss = sum(w * hs)

    def loss():
        lay.set_state(h0.copy())
        return float(np.sum(w * lay.forward(xs)))

    loss()
    dxs = lay.backward(w)
    assert dxs.dtype == np.float64
    grads = [g.copy() for g in lay.grads]
    targets = list(zip(lay.params, grads)) + [(xs, dxs), (h0, lay.dh)]
    for arr, g in targets:
        num = numeric_gradient(loss, arr, 1e-6)
        np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7)


# ---- embedding, affine, losses, dropout ----------------------------------------------

@pytest.mark.parametrize("idt", [np.int32, np.int64])
def test_embedding_duplicate_ids(idt, rng):
    V, D = 6, 4
    W = rng.standard_normal((V, D)).astype(np.float32)
    lay, ref = L.TimeEmbedding(W), R.TimeEmbedding(W.copy())
    assert lay.params[0] is W and lay.W is W
    xs = np.array([[1, 3, 1], [1, 0, 3]], dtype=idt)
    out = lay.forward(xs)
    assert out.shape == (2, 3, D) and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref.forward(xs))
    dout = rng.standard_normal((2, 3, D)).astype(np.float32)
    g = lay.grads[0]
    assert lay.backward(dout) is None
    ref.backward(dout)
    assert lay.grads[0] is g
    assert_close(g, ref.grads[0], K32, "dW")
    np.testing.assert_allclose(g[1], dout[0, 0] + dout[0, 2] + dout[1, 0], rtol=1e-6)
    assert not g[[2, 4, 5]].any()


def test_affine_tied_transposed_weight(rng):
    V, D, N, T = 7, 5, 2, 3
    embed_W = rng.standard_normal((V, D)).astype(np.float32)
    b = rng.standard_normal(V).astype(np.float32)
    lay = L.TimeAffine(embed_W.T, b)
    ref = R.TimeAffine(embed_W.T.copy(), b.copy())
    assert lay.params[0].base is embed_W
    assert lay.grads[0].flags.f_contiguous and not lay.grads[0].flags.c_contiguous
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    dout = rng.standard_normal((N, T, V)).astype(np.float32)
    assert_close(lay.forward(x), ref.forward(x), K32, "out")
    g0, g1 = lay.grads
    assert_close(lay.backward(dout), ref.backward(dout), K32, "dx")
    assert lay.grads[0] is g0 and lay.grads[1] is g1
    assert_close(g0, ref.grads[0], K32, "dW")
    assert_close(g1, ref.grads[1], K32, "db")
    # and with an ordinary C-contiguous W
    W = rng.standard_normal((D, V)).astype(np.float32)
    lay, ref = L.TimeAffine(W, b), R.TimeAffine(W.copy(), b.copy())
    lay.forward(x), ref.forward(x)
    lay.backward(dout), ref.backward(dout)
    assert_close(lay.grads[0], ref.grads[0], K32, "dW (C order)")


def test_softmax_loss_ignore_label_and_one_hot(rng):
    N, T, V = 3, 4, 6
    xs = rng.standard_normal((N, T, V)).astype(np.float32)
    ts = rng.integers(0, V, (N, T))
    ts[0, 1] = ts[2, 3] = -1
    lay, ref = L.TimeSoftmaxWithLoss(), R.TimeSoftmaxWithLoss()
    assert lay.params == [] and lay.grads == [] and lay.ignore_label == -1
    loss = lay.forward(xs, ts)
    assert_close(np.float64(loss), np.float64(ref.forward(xs, ts)), 1e-6, "loss")
    dx = lay.backward()
    assert_close(dx, ref.backward(), K32, "dx")
    assert not dx[0, 1].any() and not dx[2, 3].any()
    np.testing.assert_array_equal(lay.backward(), dx)  # a second backward gives the same
    assert_close(lay.backward(2.0), 2 * dx, 1e-6, "dout=2")
    # one-hot targets (no ignored positions)
    ts = rng.integers(0, V, (N, T))
    onehot = np.eye(V, dtype=np.int32)[ts]
    l1 = L.TimeSoftmaxWithLoss()
    assert_close(np.float64(l1.forward(xs, onehot)), np.float64(ref.forward(xs, ts)), 1e-6, "one-hot loss")
    assert_close(l1.backward(), ref.backward(), K32, "one-hot dx")


def test_sigmoid_loss_and_simple_layers(rng):
    N, T, V, D = 4, 3, 5, 2
    xs = rng.standard_normal((N, T)).astype(np.float32)
    ts = rng.integers(0, 2, (N, T))
    lay = L.TimeSigmoidWithLoss()
    y = 1 / (1 + np.exp(-xs.astype(np.float64)))
    p = np.where(ts == 1, y, 1 - y)
    assert lay.forward(xs, ts) == pytest.approx(-np.log(p + 1e-7).sum() / N / T, rel=1e-5)
    dx = lay.backward()
    assert dx.dtype == np.float32
    np.testing.assert_allclose(dx, (y - ts) / N / T, rtol=1e-5, atol=1e-7)

    s = rng.standard_normal((N, T, V)).astype(np.float32)
    t = rng.integers(0, V, (N, T))
    simple, full = L.Simple_TimeSoftmaxWithLoss(), R.TimeSoftmaxWithLoss()
    assert simple.forward(s, t) == pytest.approx(full.forward(s, t), rel=1e-5, abs=1e-6)
    assert_close(simple.backward(), full.backward(), 1e-5, "simple softmax dx")

    W = rng.standard_normal((D, V)).astype(np.float32)
    b = rng.standard_normal(V).astype(np.float32)
    x = rng.standard_normal((N, T, D)).astype(np.float32)
    sa, ta = L.Simple_TimeAffine(W, b), R.TimeAffine(W, b)
    assert_close(sa.forward(x), ta.forward(x), K32, "simple affine")
    assert_close(sa.backward(s), ta.backward(s), K32, "simple affine dx")
    assert_close(sa.dW, ta.grads[0], K32, "simple affine dW")
    assert_close(sa.db, ta.grads[1], K32, "simple affine db")


def test_dropout_is_inverted_and_uses_np_random():
    xs = np.ones((50, 4, 8), np.float32)
    lay = L.TimeDropout(0.25)
    assert lay.train_flg and lay.params == []
    np.random.seed(3)
    out = lay.forward(xs)
    np.random.seed(3)
    expected = (np.random.rand(*xs.shape) > 0.25).astype(np.float32) / 0.75
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.testing.assert_array_equal(lay.backward(xs), out)
    lay.train_flg = False
    assert lay.forward(xs) is xs


def test_star_import_exports_textbook_names():
    ns = {}
    exec("from rnncore.time_layers import *", ns)
    for name in ("np", "TimeRNN", "TimeLSTM", "TimeGRU", "TimeBiLSTM", "TimeEmbedding", "TimeAffine",
                 "TimeSoftmaxWithLoss", "TimeSigmoidWithLoss", "TimeDropout", "Simple_TimeAffine",
                 "Simple_TimeSoftmaxWithLoss", "softmax", "sigmoid", "Embedding", "SoftmaxWithLoss"):
        assert name in ns, name
    assert ns["np"] is np


# ---- golden: K SGD steps of two small language models ---------------------------------

def _corpus(V, n, seed):
    # a small deterministic "language": a noisy cycle over the vocabulary
    rng = np.random.default_rng(seed)
    base = np.arange(n) % V
    noise = rng.integers(0, V, n)
    return np.where(rng.random(n) < 0.2, noise, base).astype(np.int64)


class _Lm:
    """SimpleRnnlm (cell="TimeRNN") or Rnnlm (cell="TimeLSTM") written against a layers module."""

    def __init__(self, layers, cell, V, D, H, seed):
        rn = np.random.default_rng(seed).standard_normal
        G = 4 if cell == "TimeLSTM" else 1
        embed_W = (rn((V, D)) / 100).astype("f")
        Wx = (rn((D, G * H)) / np.sqrt(D)).astype("f")
        Wh = (rn((H, G * H)) / np.sqrt(H)).astype("f")
        b = np.zeros(G * H, "f")
        affine_W = (rn((H, V)) / np.sqrt(H)).astype("f")
        affine_b = np.zeros(V, "f")
        self.layers = [layers.TimeEmbedding(embed_W), getattr(layers, cell)(Wx, Wh, b, stateful=True),
                       layers.TimeAffine(affine_W, affine_b)]
        self.loss_layer = layers.TimeSoftmaxWithLoss()
        self.params, self.grads = [], []
        for layer in self.layers:
            self.params += layer.params
            self.grads += layer.grads

    def forward(self, xs, ts):
        for layer in self.layers:
            xs = layer.forward(xs)
        return self.loss_layer.forward(xs, ts)

    def backward(self, dout=1):
        dout = self.loss_layer.backward(dout)
        for layer in reversed(self.layers):
            dout = layer.backward(dout)


def _train(layers, cell, steps=8, V=12, D=8, H=10, N=4, T=5, lr=0.5):
    model = _Lm(layers, cell, V, D, H, seed=7)
    corpus = _corpus(V, 400, seed=1)
    xs_all, ts_all = corpus[:-1], corpus[1:]
    jump = len(xs_all) // N
    opt = R.SGD(lr)
    losses, grads0 = [], None
    time_idx = 0
    for _ in range(steps):  # the RnnlmTrainer batching: int32, stateful across batches
        bx = np.empty((N, T), np.int32)
        bt = np.empty((N, T), np.int32)
        for t in range(T):
            for i in range(N):
                bx[i, t] = xs_all[(i * jump + time_idx) % len(xs_all)]
                bt[i, t] = ts_all[(i * jump + time_idx) % len(xs_all)]
            time_idx += 1
        losses.append(float(model.forward(bx, bt)))
        model.backward()
        if grads0 is None:
            grads0 = [g.copy() for g in model.grads]
        opt.update(model.params, model.grads)
    return np.array(losses), grads0


@pytest.mark.parametrize("cell", ["TimeRNN", "TimeLSTM"])
def test_golden_training_run(cell, backend):
    ref_losses, ref_grads = _train(R, cell)
    losses, grads = _train(L, cell)
    assert ref_losses[-1] < ref_losses[0]  # it learns
    diff = np.abs(losses - ref_losses)
    assert diff.max() <= 1e-4 * ref_losses.max(), f"per-step losses maxdiff {diff.max():.3g}\n{losses}\n{ref_losses}"
    for i, (g, gr) in enumerate(zip(grads, ref_grads)):
        assert_close(g, gr, 1e-4, f"step-0 grads[{i}]")


@pytest.mark.parametrize("name", list(GATES))
def test_inputs_converted_to_param_dtype(name, rng):
    Wx, Wh, b = _weights(rng, 3, 4, GATES[name])
    lay = getattr(L, name)(Wx, Wh, b, stateful=True)
    xs = rng.standard_normal((2, 3, 3))  # float64 in, like a user's np.random array
    hs = lay.forward(xs)
    assert hs.dtype == np.float32 and lay.h.dtype == np.float32
    assert lay.backward(np.ones((2, 3, 4))).dtype == np.float32
    lay.set_state(np.zeros((2, 4)))  # a float64 state is converted too
    assert lay.forward(xs).dtype == np.float32
    with pytest.raises(ValueError, match="h0"):
        lay.forward(rng.standard_normal((3, 3, 3)))  # stateful, but a different batch size
