"""rnncore.layers: gradients by finite differences (float64), shapes, state, lengths, interop."""
from __future__ import annotations

import numpy as np
import pytest

import rnncore
from rnncore.gradcheck import gradcheck
from rnncore.layers import GRU, LSTM, RNN, Dropout, Embedding, LastStep, Linear, Sequential, SoftmaxCrossEntropy

TOL = 1e-4


@pytest.fixture(autouse=True)
def _one_thread():
    # the test machine's 2 cores are shared; one native thread keeps small calls fast
    with rnncore.num_threads(1):
        yield


def worst(errs):
    return max(errs.values())


@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize("cls,kw", [
    (RNN, {}), (RNN, {"activation": "relu"}), (LSTM, {}), (GRU, {}), (GRU, {"reset_after": False}),
    (LSTM, {"num_layers": 2, "bidirectional": True}), (GRU, {"num_layers": 2}), (RNN, {"bidirectional": True}),
])
def test_recurrent_gradients(backend, cls, kw):
    rng = np.random.default_rng(1)
    layer = cls(3, 4, dtype=np.float64, rng=0, **kw)
    x = rng.standard_normal((2, 5, 3))
    with rnncore.use_backend(backend):
        errs = gradcheck(layer, x, lengths=np.array([5, 3]), max_checks=24)
    assert set(errs) == set(layer.param_names) | {"input"}
    assert worst(errs) < TOL, errs


def test_time_major_layout_matches_batch_first():
    rng = np.random.default_rng(0)
    a = LSTM(3, 4, rng=0, dtype=np.float64)
    b = LSTM(3, 4, rng=0, dtype=np.float64, batch_first=False)
    x = rng.standard_normal((2, 5, 3))
    np.testing.assert_allclose(a.forward(x), b.forward(x.transpose(1, 0, 2).copy()).transpose(1, 0, 2))
    assert gradcheck(b, x.transpose(1, 0, 2).copy(), max_checks=8)["input"] < TOL


def test_simple_layer_gradients():
    rng = np.random.default_rng(2)
    assert worst(gradcheck(Linear(3, 4, dtype=np.float64, rng=0), rng.standard_normal((2, 5, 3)))) < TOL
    assert worst(gradcheck(Embedding(6, 4, dtype=np.float64, rng=0), rng.integers(0, 6, (2, 5)))) < TOL
    seq = Sequential(Linear(3, 5, dtype=np.float64, rng=1), LSTM(5, 4, dtype=np.float64, rng=1),
                     Linear(4, 2, dtype=np.float64, rng=2))
    errs = gradcheck(seq, rng.standard_normal((2, 4, 3)))
    assert len(errs) == len(seq.params) + 1 and worst(errs) < TOL, errs


class _LossOf:
    """Adapt a loss head to gradcheck's model protocol (scores are the parameter)."""

    def __init__(self, head, scores, *args):
        self.head, self.params, self.args = head, [scores], args
        self.grads = [np.zeros_like(scores)]

    def loss(self):
        return self.head.forward(self.params[0], *self.args)

    def backward(self):
        self.grads[0][...] = self.head.backward()


def test_softmax_cross_entropy_gradient_and_ignore_index():
    rng = np.random.default_rng(3)
    s = rng.standard_normal((2, 3, 5))
    t = np.array([[0, 4, -1], [2, -1, 1]])
    head = SoftmaxCrossEntropy()
    assert worst(gradcheck(_LossOf(head, s, t))) < TOL
    loss = head.forward(s, t)
    logp = s - np.log(np.exp(s).sum(-1, keepdims=True))
    valid = [(0, 0), (0, 1), (1, 0), (1, 2)]
    assert loss == pytest.approx(-np.mean([logp[i, j, t[i, j]] for i, j in valid]))
    d = head.backward()
    assert np.all(d[0, 2] == 0) and np.all(d[1, 1] == 0)


def test_laststep_picks_last_valid_state():
    rng = np.random.default_rng(4)
    hs = rng.standard_normal((3, 5, 2))
    head = LastStep()
    out = head.forward(hs, np.array([5, 1, 3]))
    np.testing.assert_array_equal(out, hs[[0, 1, 2], [4, 0, 2]])
    d = head.backward(np.ones((3, 2)))
    assert d.sum() == 6 and d[1, 0].sum() == 2 and d[2, 2].sum() == 2
    # with an LSTM over padded input, the last valid state is h_n
    lstm = LSTM(2, 3, rng=0, dtype=np.float64)
    lengths = np.array([5, 2, 4])
    out = head.forward(lstm.forward(hs, lengths=lengths), lengths)
    np.testing.assert_allclose(out, lstm.h_n[0])


def test_dropout_inverted_seeded_and_eval_identity():
    x = np.ones((200, 50))
    a, b = Dropout(0.3, rng=7), Dropout(0.3, rng=7)
    ya, yb = a.forward(x), b.forward(x)
    np.testing.assert_array_equal(ya, yb)
    assert set(np.unique(ya)) == {0.0, 1 / 0.7}
    assert abs(ya.mean() - 1.0) < 0.05
    np.testing.assert_array_equal(a.backward(x), ya)
    a.training = False
    assert a.forward(x) is x


def test_stateful_carries_state_and_cuts_gradient():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 6, 3))
    full = LSTM(3, 4, rng=0, dtype=np.float64)
    chunked = LSTM(3, 4, rng=0, dtype=np.float64, stateful=True)
    ref = full.forward(x)
    out = np.concatenate([chunked.forward(np.ascontiguousarray(x[:, :3])),
                          chunked.forward(np.ascontiguousarray(x[:, 3:]))], axis=1)
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    # the second chunk's gradient is that of a fresh layer started from the carried state
    h, c = chunked.h.copy(), chunked.c.copy()
    dout = rng.standard_normal((2, 3, 4))
    fresh = LSTM(3, 4, rng=0, dtype=np.float64)
    x2 = np.ascontiguousarray(x[:, 3:])
    fresh.forward(x2, h0=h, c0=c)
    fresh.backward(dout)
    chunked.set_state(h, c)
    chunked.forward(x2)
    chunked.backward(dout)
    for g1, g2 in zip(chunked.grads, fresh.grads):
        np.testing.assert_allclose(g1, g2)
    assert chunked.dh.shape == (1, 2, 4)
    chunked.reset_state()
    assert chunked.h is None and chunked.c is None
    with pytest.raises(ValueError, match="batch size"):
        chunked.forward(x2)
        chunked.forward(np.ascontiguousarray(x2[:1]))


def test_grads_written_in_place_and_params_aliased():
    layer = GRU(3, 4, rng=0)
    ids = [id(g) for g in layer.grads]
    x = np.random.default_rng(0).standard_normal((2, 3, 3)).astype(np.float32)
    layer.backward(np.ones_like(layer.forward(x)))
    assert [id(g) for g in layer.grads] == ids
    assert layer.params[0] is layer.weights[0][0]
    assert all(p.dtype == np.float32 for p in layer.params + layer.grads)


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_state_dict_round_trip(cls):
    a = cls(3, 4, num_layers=2, bidirectional=True, rng=0)
    b = cls(3, 4, num_layers=2, bidirectional=True, rng=1)
    sd = a.state_dict(prefix="rnn.")
    assert sd["rnn.weight_ih_l0"].shape == (a.weights[0][0].shape[1], 3)
    assert "rnn.weight_hh_l1_reverse" in sd
    b.load_state_dict(sd, prefix="rnn.")
    for p, q in zip(a.params, b.params):
        np.testing.assert_array_equal(p, q)


def test_matches_torch_lstm():
    torch = pytest.importorskip("torch")
    layer = LSTM(3, 4, num_layers=2, rng=0, dtype=np.float64)
    net = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True).double()
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in layer.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    ref, _ = net(torch.from_numpy(x))
    np.testing.assert_allclose(layer.forward(x), ref.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_bad_input_messages():
    with pytest.raises(ValueError, match=r"\[0, V\)"):
        Embedding(5, 2).forward(np.array([[0, 5]]))
    with pytest.raises(ValueError, match="features"):
        Linear(3, 2).forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="dropout"):
        LSTM(3, 4, dropout=1.5)
    with pytest.raises(ValueError, match="lengths"):
        LastStep().forward(np.zeros((2, 3, 1)), np.array([0, 3]))


def test_gradcheck_catches_a_wrong_gradient():
    class Broken(Linear):
        def backward(self, dout):
            dx = super().backward(dout)
            self.grads[0] *= 1.01
            return dx

    errs = gradcheck(Broken(3, 2, dtype=np.float64, rng=0), np.random.default_rng(0).standard_normal((4, 3)))
    assert errs["weight"] > 5e-3 and errs["bias"] < TOL
    with pytest.raises(TypeError, match="float64"):
        gradcheck(Linear(3, 2), np.zeros((1, 3), np.float32))
