"""Plain-NumPy layers with the semantics of the book's common/time_layers.py.

The oracle for tests/test_time_layers.py and the baseline of the textbook benchmarks
(``rnncore bench --train-step``, bench/textbook_lm.py): written for rnncore from the book's
documented behaviour (see shared/STYLE.md), in the book's own style and at its speed, with one
Python loop over time steps and one cell object per step. Outputs are allocated in the dtype of the weights (float32 for the book's models),
so the same code also serves float64 gradient checks.

Shapes: N batch, T time steps, D input features, H hidden units, V vocabulary / classes.
"""
from __future__ import annotations

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def softmax_rows(a):
    e = np.exp(a - a.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ---- one-step cells -------------------------------------------------------------------

class ElmanStep:
    """h = tanh(x Wx + h_prev Wh + b)."""

    def __init__(self, Wx, Wh, b):
        self.Wx, self.Wh, self.b = Wx, Wh, b

    def forward(self, x, h_prev):
        h = np.tanh(x @ self.Wx + h_prev @ self.Wh + self.b)
        self.saved = (x, h_prev, h)
        return h

    def backward(self, dh):
        x, h_prev, h = self.saved
        da = dh * (1.0 - h * h)
        self.dWx, self.dWh, self.db = x.T @ da, h_prev.T @ da, da.sum(axis=0)
        return da @ self.Wx.T, da @ self.Wh.T


class LstmStep:
    """Blocks of the packed pre-activation, in order: forget, candidate, input, output."""

    def __init__(self, Wx, Wh, b):
        self.Wx, self.Wh, self.b = Wx, Wh, b

    def forward(self, x, h_prev, c_prev):
        H = h_prev.shape[1]
        a = x @ self.Wx + h_prev @ self.Wh + self.b
        fg = sigmoid(a[:, 0:H])
        cand = np.tanh(a[:, H:2 * H])
        ig = sigmoid(a[:, 2 * H:3 * H])
        og = sigmoid(a[:, 3 * H:4 * H])
        c = fg * c_prev + ig * cand
        tc = np.tanh(c)
        h = og * tc
        self.saved = (x, h_prev, c_prev, fg, cand, ig, og, tc)
        return h, c

    def backward(self, dh, dc):
        x, h_prev, c_prev, fg, cand, ig, og, tc = self.saved
        dc_total = dc + dh * og * (1.0 - tc * tc)
        da = np.concatenate([
            dc_total * c_prev * fg * (1.0 - fg),
            dc_total * ig * (1.0 - cand * cand),
            dc_total * cand * ig * (1.0 - ig),
            dh * tc * og * (1.0 - og),
        ], axis=1)
        self.dWx, self.dWh, self.db = x.T @ da, h_prev.T @ da, da.sum(axis=0)
        return da @ self.Wx.T, da @ self.Wh.T, dc_total * fg


class GruStep:
    """Blocks [update z | reset r | candidate]; h = (1 - z) h_prev + z cand."""

    def __init__(self, Wx, Wh, b):
        self.Wx, self.Wh, self.b = Wx, Wh, b

    def forward(self, x, h_prev):
        H = h_prev.shape[1]
        Wx, Wh, b = self.Wx, self.Wh, self.b
        z = sigmoid(x @ Wx[:, :H] + h_prev @ Wh[:, :H] + b[:H])
        r = sigmoid(x @ Wx[:, H:2 * H] + h_prev @ Wh[:, H:2 * H] + b[H:2 * H])
        cand = np.tanh(x @ Wx[:, 2 * H:] + (r * h_prev) @ Wh[:, 2 * H:] + b[2 * H:])
        self.saved = (x, h_prev, z, r, cand)
        return (1.0 - z) * h_prev + z * cand

    def backward(self, dh):
        x, h_prev, z, r, cand = self.saved
        H = h_prev.shape[1]
        Wx, Wh = self.Wx, self.Wh
        d_cand_pre = dh * z * (1.0 - cand * cand)
        d_rh = d_cand_pre @ Wh[:, 2 * H:].T
        d_z_pre = dh * (cand - h_prev) * z * (1.0 - z)
        d_r_pre = d_rh * h_prev * r * (1.0 - r)
        dh_prev = (dh * (1.0 - z) + r * d_rh + d_z_pre @ Wh[:, :H].T + d_r_pre @ Wh[:, H:2 * H].T)
        da_x = np.concatenate([d_z_pre, d_r_pre, d_cand_pre], axis=1)
        self.dWx = x.T @ da_x
        self.dWh = np.concatenate([h_prev.T @ d_z_pre, h_prev.T @ d_r_pre, (r * h_prev).T @ d_cand_pre], axis=1)
        self.db = da_x.sum(axis=0)
        return da_x @ Wx.T, dh_prev


# ---- time layers ----------------------------------------------------------------------

class _TimeRecurrent:
    """Shared scan: a Python loop of one step object per time step."""

    step_class = None
    has_c = False

    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.layers = None
        self.h, self.c, self.dh = None, None, None
        self.stateful = stateful

    def forward(self, xs):
        Wx, Wh, b = self.params
        N, T, _ = xs.shape
        H = Wh.shape[0]
        if not self.stateful or self.h is None:
            self.h = np.zeros((N, H), dtype=Wx.dtype)
        if self.has_c and (not self.stateful or self.c is None):
            self.c = np.zeros((N, H), dtype=Wx.dtype)
        hs = np.empty((N, T, H), dtype=Wx.dtype)
        self.layers = []
        for t in range(T):
            step = self.step_class(Wx, Wh, b)
            if self.has_c:
                self.h, self.c = step.forward(xs[:, t, :], self.h, self.c)
            else:
                self.h = step.forward(xs[:, t, :], self.h)
            hs[:, t, :] = self.h
            self.layers.append(step)
        return hs

    def backward(self, dhs):
        Wx = self.params[0]
        N, T, _ = dhs.shape
        dxs = np.empty((N, T, Wx.shape[0]), dtype=Wx.dtype)
        dh, dc = 0.0, 0.0
        acc = [0.0, 0.0, 0.0]
        for t in range(T - 1, -1, -1):
            step = self.layers[t]
            if self.has_c:
                dxs[:, t, :], dh, dc = step.backward(dhs[:, t, :] + dh, dc)
            else:
                dxs[:, t, :], dh = step.backward(dhs[:, t, :] + dh)
            acc = [acc[0] + step.dWx, acc[1] + step.dWh, acc[2] + step.db]
        for g, a in zip(self.grads, acc):
            g[...] = a
        self.dh = dh
        return dxs

    def set_state(self, h, c=None):
        self.h, self.c = h, c

    def reset_state(self):
        self.h, self.c = None, None


class TimeRNN(_TimeRecurrent):
    step_class = ElmanStep


class TimeLSTM(_TimeRecurrent):
    step_class = LstmStep
    has_c = True


class TimeGRU(_TimeRecurrent):
    step_class = GruStep


class TimeBiLSTM:
    def __init__(self, Wx1, Wh1, b1, Wx2, Wh2, b2, stateful=False):
        self.forward_lstm = TimeLSTM(Wx1, Wh1, b1, stateful)
        self.backward_lstm = TimeLSTM(Wx2, Wh2, b2, stateful)
        self.params = self.forward_lstm.params + self.backward_lstm.params
        self.grads = self.forward_lstm.grads + self.backward_lstm.grads

    def forward(self, xs):
        fwd = self.forward_lstm.forward(xs)
        bwd = self.backward_lstm.forward(xs[:, ::-1])[:, ::-1]
        return np.concatenate([fwd, bwd], axis=2)

    def backward(self, dhs):
        H = dhs.shape[2] // 2
        return (self.forward_lstm.backward(dhs[:, :, :H])
                + self.backward_lstm.backward(dhs[:, ::-1, H:])[:, ::-1])


class TimeEmbedding:
    def __init__(self, W):
        self.params = [W]
        self.grads = [np.zeros_like(W)]
        self.W = W
        self.layers = None

    def forward(self, xs):
        N, T = xs.shape
        out = np.empty((N, T, self.W.shape[1]), dtype=self.W.dtype)
        for t in range(T):
            out[:, t, :] = self.W[xs[:, t]]
        self.ids = xs
        return out

    def backward(self, dout):
        dW = np.zeros_like(self.W)
        N, T = self.ids.shape
        for t in range(T):  # one scatter-add a step, as the book's per-step Embedding layers
            np.add.at(dW, self.ids[:, t], dout[:, t])  # duplicate ids accumulate
        self.grads[0][...] = dW
        return None


class TimeAffine:
    def __init__(self, W, b):
        self.params = [W, b]
        self.grads = [np.zeros_like(W), np.zeros_like(b)]

    def forward(self, x):
        W, b = self.params
        N, T, D = x.shape
        self.x = x
        return (x.reshape(N * T, D) @ W + b).reshape(N, T, -1)

    def backward(self, dout):
        W, b = self.params
        N, T, D = self.x.shape
        d2 = dout.reshape(N * T, -1)
        self.grads[0][...] = self.x.reshape(N * T, D).T @ d2
        self.grads[1][...] = d2.sum(axis=0)
        return (d2 @ W.T).reshape(N, T, D)


class TimeSoftmaxWithLoss:
    def __init__(self):
        self.params, self.grads = [], []
        self.ignore_label = -1

    def forward(self, xs, ts):
        N, T, V = xs.shape
        if ts.ndim == 3:
            ts = ts.argmax(axis=2)
        ts = ts.reshape(N * T)
        keep = ts != self.ignore_label
        probs = softmax_rows(xs.reshape(N * T, V))
        picked = probs[np.arange(N * T), np.where(keep, ts, 0)]
        loss = -np.sum(np.log(picked[keep])) / keep.sum()
        self.saved = (ts, keep, probs, (N, T, V))
        return loss

    def backward(self, dout=1):
        ts, keep, probs, (N, T, V) = self.saved
        dx = probs.copy()
        rows = np.arange(N * T)[keep]
        dx[rows, ts[keep]] -= 1
        dx *= dout / keep.sum()
        dx[~keep] = 0
        return dx.reshape(N, T, V)


class TimeDropout:
    """Inverted dropout with the book's mask: np.random.rand(...) > ratio, scaled by 1 / (1 - ratio)."""

    def __init__(self, dropout_ratio=0.5):
        self.params, self.grads = [], []
        self.dropout_ratio = dropout_ratio
        self.train_flg = True

    def forward(self, xs):
        if not self.train_flg:
            return xs
        self.mask = (np.random.rand(*xs.shape) > self.dropout_ratio).astype(np.float32) * (
            1 / (1.0 - self.dropout_ratio))
        return xs * self.mask

    def backward(self, dout):
        return dout * self.mask


class SGD:
    def __init__(self, lr=0.01):
        self.lr = lr

    def update(self, params, grads):
        for p, g in zip(params, grads):
            p -= self.lr * g
