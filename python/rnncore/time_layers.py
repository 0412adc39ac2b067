"""Textbook-compatible time layers on rnncore's native recurrences.

This module is a drop-in replacement for ``common/time_layers.py`` of "Deep Learning from
Scratch 2" (oreilly-japan/deep-learning-from-scratch-2). Change one line::

    from common.time_layers import *      ->      from rnncore.time_layers import *

and the book's models (SimpleRnnlm, Rnnlm, BetterRnnlm, the seq2seq and attention models)
run unchanged. Every class keeps the book's constructor, its ``params`` / ``grads`` lists
(the passed arrays themselves; gradients overwritten in place with ``grads[i][...] = g``),
its attributes and its batch-first shapes. Like the book's star import, ``*`` also brings
``np``, ``GPU``, ``softmax``, ``sigmoid``, ``cross_entropy_error`` and the layers of
``common/layers.py`` (MatMul, Affine, Softmax, SoftmaxWithLoss, Sigmoid, SigmoidWithLoss,
Dropout, Embedding).

What is different underneath
----------------------------
- ``TimeRNN``, ``TimeLSTM`` and ``TimeGRU`` make ONE rnncore call per forward and one per
  backward (:func:`rnncore.rnn_forward` etc. with ``batch_first=True``) instead of a Python
  loop of per-step cells; they follow the active backend (``rnncore.use_backend``).
  Their ``layers`` attribute therefore stays ``None`` (the book fills it with per-step cells
  that only its own backward reads). ``TimeBiLSTM`` makes one call per direction.
- Gate layouts are converted at the boundary, on every call (a column copy of the weights):
  the book's LSTM packs the blocks f, g, i, o, rnncore uses PyTorch's i, f, g, o; the book's
  GRU packs [z | r | h~] with ``h = (1-z) h_prev + z h~``, which is rnncore's reset-before GRU
  with gate order r, z, n and its update gate equal to 1 - z (the z block is passed negated,
  because sigmoid(-a) = 1 - sigmoid(a)). Gradients are mapped back the same way.
- Arithmetic runs in the dtype of the layer's first weight (float32 for the book's models);
  inputs, states and incoming gradients are converted to it (the book allocates float32
  outputs whatever the input). With float64 weights everything is float64, which the book's
  code would silently round to float32.
- rnncore checks its inputs: a NaN/inf weight or input, or a stateful state whose batch size
  differs from the new batch, raises ``ValueError`` (the book broadcasts or propagates NaN).
- ``hs`` returned by a recurrent layer is a read-only view of what its backward reads (writing
  into it raises instead of changing the gradients silently); copy it to modify it.
- ``TimeSoftmaxWithLoss.backward`` gives the book's numbers without its side effect: the
  cached softmax is consumed by the first backward and recomputed if backward is called again.
- Summations run in a different order from the book's per-step loops, so float32 results
  agree to rounding, not bit for bit.
- The cells ``RNN``, ``LSTM`` and ``GRU`` are single steps written in plain NumPy, as in the
  book. ``GPU`` is always False: there is no CuPy path.
"""
from __future__ import annotations

import numpy as np

from . import _ops as _rc
from . import dense
from .losses import backward_checked, forward_for_backward

GPU = False

__all__ = [
    "np", "GPU", "sigmoid", "relu", "softmax", "cross_entropy_error",
    "MatMul", "Affine", "Softmax", "SoftmaxWithLoss", "Sigmoid", "SigmoidWithLoss", "Dropout", "Embedding",
    "RNN", "TimeRNN", "LSTM", "TimeLSTM", "GRU", "TimeGRU", "TimeBiLSTM",
    "TimeEmbedding", "TimeAffine", "TimeSoftmaxWithLoss", "TimeSigmoidWithLoss", "TimeDropout",
    "Simple_TimeSoftmaxWithLoss", "Simple_TimeAffine",
]


# ---------------------------------------------------------------------------------------
# common/functions.py
# ---------------------------------------------------------------------------------------

def sigmoid(x):
    """Logistic function, elementwise."""
    return 1 / (1 + np.exp(-x))


def relu(x):
    return np.maximum(0, x)


def softmax(x):
    """Softmax over the last axis of a 1-D or 2-D array (row max subtracted first)."""
    if x.ndim == 2:
        y = x - x.max(axis=1, keepdims=True)
        np.exp(y, out=y)
        y /= y.sum(axis=1, keepdims=True)
        return y
    if x.ndim == 1:
        y = np.exp(x - np.max(x))
        return y / np.sum(y)
    return x


def cross_entropy_error(y, t):
    """Mean negative log-likelihood of labels (or one-hot rows) t under probabilities y."""
    if y.ndim == 1:
        y = y.reshape(1, y.size)
        t = t.reshape(1, t.size)
    if t.size == y.size:
        t = t.argmax(axis=1)
    n = y.shape[0]
    return -np.sum(np.log(y[np.arange(n), t] + 1e-7)) / n


# ---------------------------------------------------------------------------------------
# common/layers.py
# ---------------------------------------------------------------------------------------

class MatMul:
    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]
        self.x = None

    def forward(self, x):
        (W,) = self.params
        self.x = x
        return dense.affine_forward(x, W)

    def backward(self, dout):
        (W,) = self.params
        dx, _, _ = dense.affine_backward(dout, self.x, W, dW=self.grads[0], bias=False)
        return dx


class Affine:
    def __init__(self, W, b):
        self.params = [W, b]
        self.grads = [np.zeros_like(W), np.zeros_like(b)]
        self.x = None

    def forward(self, x):
        W, b = self.params
        self.x = x
        return dense.affine_forward(x, W, b)

    def backward(self, dout):
        W, b = self.params
        dx, _, _ = dense.affine_backward(dout, self.x, W, dW=self.grads[0], db=self.grads[1])
        return dx


class Softmax:
    def __init__(self):
        self.params, self.grads = [], []
        self.out = None

    def forward(self, x):
        self.out = softmax(x)
        return self.out

    def backward(self, dout):
        dx = self.out * dout
        dx -= self.out * dx.sum(axis=1, keepdims=True)
        return dx


class SoftmaxWithLoss:
    def __init__(self):
        self.params, self.grads = [], []
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.y = softmax(x)
        self.t = t.argmax(axis=1) if t.size == self.y.size else t
        return cross_entropy_error(self.y, self.t)

    def backward(self, dout=1):
        n = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(n), self.t] -= 1
        dx *= dout
        return dx / n


class Sigmoid:
    def __init__(self):
        self.params, self.grads = [], []
        self.out = None

    def forward(self, x):
        self.out = sigmoid(x)
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out) * self.out


class SigmoidWithLoss:
    def __init__(self):
        self.params, self.grads = [], []
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.t = t
        self.y = sigmoid(x)
        self.loss = cross_entropy_error(np.c_[1 - self.y, self.y], self.t)
        return self.loss

    def backward(self, dout=1):
        return (self.y - self.t) * dout / self.t.shape[0]


class Dropout:
    """Non-inverted dropout of common/layers.py: scales by (1 - ratio) at test time."""

    def __init__(self, dropout_ratio=0.5):
        self.params, self.grads = [], []
        self.dropout_ratio = dropout_ratio
        self.mask = None

    def forward(self, x, train_flg=True):
        if train_flg:
            self.mask = np.random.rand(*x.shape) > self.dropout_ratio
            return x * self.mask
        return x * (1.0 - self.dropout_ratio)

    def backward(self, dout):
        return dout * self.mask


class Embedding:
    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]
        self.idx = None

    def forward(self, idx):
        (W,) = self.params
        self.idx = idx
        return W[idx]

    def backward(self, dout):
        (dW,) = self.grads
        dense.embedding_backward(self.idx, dout, dW)
        return None


# ---------------------------------------------------------------------------------------
# single-step cells (plain NumPy, the book's per-step API)
# ---------------------------------------------------------------------------------------

class RNN:
    """One Elman step: ``h_next = tanh(h_prev @ Wh + x @ Wx + b)``."""

    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.cache = None

    def forward(self, x, h_prev):
        Wx, Wh, b = self.params
        h_next = np.tanh(h_prev @ Wh + x @ Wx + b)
        self.cache = (x, h_prev, h_next)
        return h_next

    def backward(self, dh_next):
        Wx, Wh, b = self.params
        x, h_prev, h_next = self.cache
        da = dh_next * (1 - h_next ** 2)
        self.grads[0][...] = x.T @ da
        self.grads[1][...] = h_prev.T @ da
        self.grads[2][...] = da.sum(axis=0)
        return da @ Wx.T, da @ Wh.T


class LSTM:
    """One LSTM step; Wx (D, 4H), Wh (H, 4H), b (4H,) packed as the blocks f, g, i, o."""

    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.cache = None

    def forward(self, x, h_prev, c_prev):
        Wx, Wh, b = self.params
        H = h_prev.shape[1]
        A = x @ Wx + h_prev @ Wh + b
        f = sigmoid(A[:, :H])
        g = np.tanh(A[:, H:2 * H])
        i = sigmoid(A[:, 2 * H:3 * H])
        o = sigmoid(A[:, 3 * H:])
        c_next = f * c_prev + g * i
        h_next = o * np.tanh(c_next)
        self.cache = (x, h_prev, c_prev, i, f, g, o, c_next)
        return h_next, c_next

    def backward(self, dh_next, dc_next):
        Wx, Wh, b = self.params
        x, h_prev, c_prev, i, f, g, o, c_next = self.cache
        tc = np.tanh(c_next)
        dc = dc_next + dh_next * o * (1 - tc ** 2)
        df = dc * c_prev * f * (1 - f)
        dg = dc * i * (1 - g ** 2)
        di = dc * g * i * (1 - i)
        do = dh_next * tc * o * (1 - o)
        dA = np.hstack((df, dg, di, do))
        self.grads[0][...] = x.T @ dA
        self.grads[1][...] = h_prev.T @ dA
        self.grads[2][...] = dA.sum(axis=0)
        return dA @ Wx.T, dA @ Wh.T, dc * f


class GRU:
    """One GRU step; Wx (D, 3H), Wh (H, 3H), b (3H,) packed as [z | r | h~].

    ``h_next = (1 - z) * h_prev + z * tanh(x Wxh + (r * h_prev) Whh + bh)``.
    """

    def __init__(self, Wx, Wh, b):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.cache = None
        self.dWx = self.dWh = self.db = None

    def forward(self, x, h_prev):
        Wx, Wh, b = self.params
        H = Wh.shape[0]
        xa = x @ Wx + b
        z = sigmoid(xa[:, :H] + h_prev @ Wh[:, :H])
        r = sigmoid(xa[:, H:2 * H] + h_prev @ Wh[:, H:2 * H])
        h_hat = np.tanh(xa[:, 2 * H:] + (r * h_prev) @ Wh[:, 2 * H:])
        self.cache = (x, h_prev, z, r, h_hat)
        return (1 - z) * h_prev + z * h_hat

    def backward(self, dh_next):
        Wx, Wh, b = self.params
        H = Wh.shape[0]
        x, h_prev, z, r, h_hat = self.cache
        dn = dh_next * z * (1 - h_hat ** 2)          # through h~'s tanh
        drh = dn @ Wh[:, 2 * H:].T                   # gradient of r * h_prev
        dz = dh_next * (h_hat - h_prev) * z * (1 - z)
        dr = drh * h_prev * r * (1 - r)
        dzr = np.hstack((dz, dr))
        dh_prev = dh_next * (1 - z) + r * drh + dzr @ Wh[:, :2 * H].T
        dxa = np.hstack((dz, dr, dn))
        self.dWx = x.T @ dxa
        self.dWh = np.hstack((h_prev.T @ dzr, (r * h_prev).T @ dn))
        self.db = dxa.sum(axis=0)
        self.grads[0][...] = self.dWx
        self.grads[1][...] = self.dWh
        self.grads[2][...] = self.db
        return dxa @ Wx.T, dh_prev


# ---------------------------------------------------------------------------------------
# gate-layout conversion between the book and rnncore
# ---------------------------------------------------------------------------------------

# (book block, rnncore block, negate): LSTM f,g,i,o <-> i,f,g,o
_LSTM_MAP = ((0, 1, False), (1, 2, False), (2, 0, False), (3, 3, False))
# GRU [z | r | h~] <-> r, z', n with z' = 1 - z, i.e. z's pre-activation negated
_GRU_MAP = ((0, 1, True), (1, 0, False), (2, 2, False))


def _to_native(W, H, mapping, dtype):
    """The book's packed weight (..., G*H) as rnncore's layout: a new C-contiguous array."""
    out = np.empty(W.shape, dtype=dtype)
    for k_book, k_rc, neg in mapping:
        src = W[..., k_book * H:(k_book + 1) * H]
        dst = out[..., k_rc * H:(k_rc + 1) * H]
        if neg:
            np.negative(src, out=dst, casting="same_kind")
        else:
            dst[...] = src
    return out


def _grad_from_native(grad, g, H, mapping):
    """Write rnncore's gradient g into the book's gradient array grad, in place."""
    for k_book, k_rc, neg in mapping:
        src = g[..., k_rc * H:(k_rc + 1) * H]
        dst = grad[..., k_book * H:(k_book + 1) * H]
        if neg:
            np.negative(src, out=dst, casting="same_kind")
        else:
            dst[...] = src


def _c(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def _state(h, N, H, dtype, fresh):
    """The initial state of a forward: zeros when ``fresh`` or ``h`` is None."""
    if fresh or h is None:
        return np.zeros((N, H), dtype=dtype)
    return _c(h, dtype)


# ---------------------------------------------------------------------------------------
# time layers
# ---------------------------------------------------------------------------------------

class _TimeRecurrent:
    """What TimeRNN, TimeLSTM and TimeGRU share: the book's params/grads (the arrays passed
    in, gradients written in place), ``h``, ``dh``, ``stateful``, ``layers`` (None: no
    per-step cells) and the state methods."""

    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.layers = None
        self.h, self.dh = None, None
        self.stateful = stateful
        self._cache = None

    def set_state(self, h):
        self.h = h

    def reset_state(self):
        self.h = None

    def _sequence(self, xs):
        """xs as an array (N, T, D) -> (xs, N, T, D)."""
        xs = np.asarray(xs)
        if xs.ndim != 3:
            raise ValueError(f"{type(self).__name__}.forward: xs must be 3-D (N, T, D), got shape {xs.shape}")
        return (xs, *xs.shape)

    def _forward_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward: call forward first")
        return self._cache


class TimeRNN(_TimeRecurrent):
    """T Elman steps over xs (N, T, D) -> hs (N, T, H), one rnncore call each way.

    Attributes as in the book: ``h`` (last state), ``dh`` (gradient wrt the initial state,
    set by backward), ``stateful``; ``layers`` stays None (no per-step cells).
    """

    def forward(self, xs):
        Wx, Wh, b = self.params
        dt = Wx.dtype
        xs, N, T, D = self._sequence(xs)
        H = Wh.shape[0]
        h0 = _state(self.h, N, H, dt, not self.stateful)
        hs, self.h, self._cache = _rc.rnn_forward(_c(xs, dt), _c(Wx, dt), _c(Wh, dt), _c(b, dt), h0,
                                                  batch_first=True)
        return hs

    def backward(self, dhs):
        dxs, dWx, dWh, db, dh0 = _rc.rnn_backward(_c(dhs, self._forward_cache().inputs.x.dtype), self._cache)
        self.grads[0][...] = dWx
        self.grads[1][...] = dWh
        self.grads[2][...] = db
        self.dh = dh0
        return dxs


class TimeLSTM(_TimeRecurrent):
    """T LSTM steps (book layout f, g, i, o) over xs (N, T, D) -> hs (N, T, H).

    Attributes: ``h``, ``c`` (last states), ``dh`` (gradient wrt the initial h; the one wrt
    the initial c is dropped, as in the book), ``stateful``; ``layers`` stays None.
    """

    def __init__(self, Wx, Wh, b, stateful=False):
        super().__init__(Wx, Wh, b, stateful)
        self.c = None

    def forward(self, xs):
        Wx, Wh, b = self.params
        dt = Wx.dtype
        xs, N, T, D = self._sequence(xs)
        H = Wh.shape[0]
        h0 = _state(self.h, N, H, dt, not self.stateful)
        c0 = _state(self.c, N, H, dt, not self.stateful)
        wx = _to_native(Wx, H, _LSTM_MAP, dt)
        wh = _to_native(Wh, H, _LSTM_MAP, dt)
        bb = _to_native(b, H, _LSTM_MAP, dt)
        hs, self.h, self.c, self._cache = _rc.lstm_forward(_c(xs, dt), wx, wh, bb, None, h0, c0,
                                                           batch_first=True)
        return hs

    def backward(self, dhs):
        H = self.params[1].shape[0]
        dxs, dwx, dwh, db, _, dh0, _ = _rc.lstm_backward(_c(dhs, self._forward_cache().inputs.x.dtype), self._cache)
        for grad, g in zip(self.grads, (dwx, dwh, db)):
            _grad_from_native(grad, g, H, _LSTM_MAP)
        self.dh = dh0
        return dxs

    def set_state(self, h, c=None):
        self.h, self.c = h, c

    def reset_state(self):
        self.h, self.c = None, None


class TimeGRU(_TimeRecurrent):
    """T GRU steps (book layout [z | r | h~], reset gate before the matmul) -> hs (N, T, H).

    Attributes: ``h``, ``dh``, ``stateful``; ``layers`` stays None.
    """

    def forward(self, xs):
        Wx, Wh, b = self.params
        dt = Wx.dtype
        xs, N, T, D = self._sequence(xs)
        H = Wh.shape[0]
        h0 = _state(self.h, N, H, dt, not self.stateful)
        wx = _to_native(Wx, H, _GRU_MAP, dt)
        wh = _to_native(Wh, H, _GRU_MAP, dt)
        bb = _to_native(b, H, _GRU_MAP, dt)
        hs, self.h, self._cache = _rc.gru_forward(_c(xs, dt), wx, wh, bb, None, h0, reset_after=False,
                                                  batch_first=True)
        return hs

    def backward(self, dhs):
        H = self.params[1].shape[0]
        dxs, dwx, dwh, db, _, dh0 = _rc.gru_backward(_c(dhs, self._forward_cache().inputs.x.dtype), self._cache)
        for grad, g in zip(self.grads, (dwx, dwh, db)):
            _grad_from_native(grad, g, H, _GRU_MAP)
        self.dh = dh0
        return dxs


class TimeBiLSTM:
    """Two TimeLSTMs, the second reading the sequence backwards; output (N, T, 2H)."""

    def __init__(self, Wx1, Wh1, b1, Wx2, Wh2, b2, stateful=False):
        self.forward_lstm = TimeLSTM(Wx1, Wh1, b1, stateful)
        self.backward_lstm = TimeLSTM(Wx2, Wh2, b2, stateful)
        self.params = self.forward_lstm.params + self.backward_lstm.params
        self.grads = self.forward_lstm.grads + self.backward_lstm.grads

    def forward(self, xs):
        o1 = self.forward_lstm.forward(xs)
        o2 = self.backward_lstm.forward(xs[:, ::-1])
        return np.concatenate((o1, o2[:, ::-1]), axis=2)

    def backward(self, dhs):
        H = dhs.shape[2] // 2
        dxs1 = self.forward_lstm.backward(dhs[:, :, :H])
        dxs2 = self.backward_lstm.backward(dhs[:, ::-1, H:])
        return dxs1 + dxs2[:, ::-1]


class TimeEmbedding:
    """Row lookup W[xs] for int ids xs (N, T) -> (N, T, D); backward scatter-adds into grads[0]."""

    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]
        self.layers = None
        self.W = W
        self._idx = None

    def forward(self, xs):
        xs = np.asarray(xs)
        self._idx = xs
        return self.W[xs]

    def backward(self, dout):
        (dW,) = self.grads
        dense.embedding_backward(self._idx, dout, dW)  # native scatter-add
        return None


class TimeAffine(Affine):
    """``x (N, T, D) @ W (D, M) + b`` -> (N, T, M). W may be a transposed view (weight tying).

    The book's per-step :class:`Affine` over every step at once: rnncore's dense ops take any
    leading shape (on rnncore's threads; a tied W.T needs no copy)."""


class TimeSoftmaxWithLoss:
    """Mean cross-entropy of softmax(xs) (N, T, V) against ids ts (N, T) (or one-hot (N, T, V)).

    Positions whose label equals ``ignore_label`` (-1) count neither in the loss nor in the mean.
    """

    def __init__(self):
        self.params, self.grads = [], []
        self.cache = None
        self.ignore_label = -1
        self._xs = None
        self._checked = None

    def forward(self, xs, ts):
        ts = np.asarray(ts)
        if ts.ndim == 3:  # one-hot targets
            ts = ts.argmax(axis=2)
        xs = np.ascontiguousarray(xs)
        loss, probs, self._checked = forward_for_backward(xs, ts, self.ignore_label)  # fused, native
        self.cache = (ts, probs)
        self._xs = xs
        return loss

    def backward(self, dout=1):
        ts, probs = self.cache
        if probs is None:  # a second backward: the first one consumed the softmax
            _, probs, self._checked = forward_for_backward(self._xs, ts, self._checked.ignore_index)
        self.cache = (ts, None)
        # like the original, the gradient is written over the cached softmax (the forward's
        # targets, checked there)
        return backward_checked(probs, self._checked, dout, out=probs)


class TimeSigmoidWithLoss:
    """Binary cross-entropy of sigmoid(xs) (N, T) against 0/1 labels ts (N, T), averaged over T."""

    def __init__(self):
        self.params, self.grads = [], []
        self.xs_shape = None
        self.layers = None
        self._y = None
        self._t = None

    def forward(self, xs, ts):
        N, T = xs.shape
        self.xs_shape = xs.shape
        y = sigmoid(xs)
        p = np.where(ts == 1, y, 1 - y)
        loss = 0
        for step in -np.sum(np.log(p + 1e-7), axis=0) / N:
            loss += step
        self._y, self._t = y, ts
        return loss / T

    def backward(self, dout=1):
        N, T = self.xs_shape
        dout = dout * (1 / T)
        dxs = np.empty(self.xs_shape, dtype="f")
        dxs[...] = (self._y - self._t) * dout / N
        return dxs


class TimeDropout:
    """Inverted dropout: in training, keep each unit with probability 1 - ratio and scale by
    1 / (1 - ratio); identity when ``train_flg`` is False. The mask comes from np.random.rand."""

    def __init__(self, dropout_ratio=0.5):
        self.params, self.grads = [], []
        self.dropout_ratio = dropout_ratio
        self.mask = None
        self.train_flg = True

    def forward(self, xs):
        if not self.train_flg:
            return xs
        keep = np.random.rand(*xs.shape) > self.dropout_ratio
        self.mask = keep.astype(np.float32) * (1 / (1.0 - self.dropout_ratio))
        return xs * self.mask

    def backward(self, dout):
        return dout * self.mask


class Simple_TimeSoftmaxWithLoss:
    """Per-step SoftmaxWithLoss averaged over T (no ignore_label; log(p + 1e-7))."""

    def __init__(self):
        self.params, self.grads = [], []
        self.cache = None

    def forward(self, xs, ts):
        N, T, V = xs.shape
        layers = []
        loss = 0
        for t in range(T):
            layer = SoftmaxWithLoss()
            loss += layer.forward(xs[:, t, :], ts[:, t])
            layers.append(layer)
        loss /= T
        self.cache = (layers, xs)
        return loss

    def backward(self, dout=1):
        layers, xs = self.cache
        N, T, V = xs.shape
        dout = dout * (1 / T)
        dxs = np.empty(xs.shape, dtype="f")
        for t, layer in enumerate(layers):
            dxs[:, t, :] = layer.backward(dout)
        return dxs


class Simple_TimeAffine:
    """TimeAffine with the attributes W, b, dW, db instead of params/grads."""

    def __init__(self, W, b):
        self.W, self.b = W, b
        self.dW, self.db = None, None
        self.layers = None
        self._x = None

    def forward(self, xs):
        N, T, D = xs.shape
        self._x = xs
        out = np.empty((N, T, self.W.shape[1]), dtype="f")
        out[...] = (xs.reshape(N * T, D) @ self.W + self.b).reshape(N, T, -1)
        return out

    def backward(self, dout):
        N, T, M = dout.shape
        D = self.W.shape[0]
        d2 = dout.reshape(N * T, M)
        self.dW = self._x.reshape(N * T, D).T @ d2
        self.db = d2.sum(axis=0)
        dxs = np.empty((N, T, D), dtype="f")
        dxs[...] = (d2 @ self.W.T).reshape(N, T, D)
        return dxs
