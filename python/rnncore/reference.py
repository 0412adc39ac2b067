"""The NumPy twin of rnncore's native kernels: the readable specification.

Same names and signatures as the functional ops exported from :mod:`rnncore`, plain NumPy,
one step at a time. It mirrors ``csrc/``: a driver (``forward``/``backward``) shared by all
cells, and per-cell step functions (``*_step_forward``/``*_step_backward``). The tests hold
the native code to it, and ``rnncore.set_backend("numpy")`` runs everything on it.

Notation (row vectors): x_t (B, D), h_t (B, H), wx (D, G*H), wh (H, G*H).
    Elman   h_t = f(x_t @ wx + h_{t-1} @ wh + b)
    LSTM    [i f g o] = x_t @ wx + b_ih + h_{t-1} @ wh + b_hh;  c_t = f*c_{t-1} + i*g;
            h_t = o * tanh(c_t)                       (i, f, o sigmoid; g tanh)
    GRU     [r z] = sigmoid(x_t @ wx + b_ih + h_{t-1} @ wh + b_hh)   (first 2H columns)
            n = tanh(x_t @ W_in + b_in + r * (h_{t-1} @ W_hn + b_hn))     reset after
            n = tanh(x_t @ W_in + b_in + (r * h_{t-1}) @ W_hn + b_hn)     reset before
            h_t = (1 - z) * n + z * h_{t-1}
Past a sequence's length its outputs are zero, and so is every block of the cache (gates, cs),
on both backends; its state stops changing.

Each cell is registered here, beside its step functions, as a :class:`rnncore.cells.CellSpec`
(gates, cache blocks, cell state, bias names, activations); the driver takes the step functions
from the spec, so a cell of one's own is one ``rnncore.cells.register`` call (twin only, or
with a C++ traits struct as well).

Where the order of operations differs from the C++ kernels (csrc/driver.h, csrc/cells.h), so
the two agree to rounding rather than to the bit: the kernels sum the two biases once a call
(``b_ih + b_hh``, the GRU's b_hn kept apart where it sits inside ``r * (...)``) and add that
sum in each step's fused elementwise pass, where the steps below add the biases as written;
and the kernels compute ``dwh`` as one GEMM over all steps after the backward loop, where it
accumulates step by step here. The equations, the gate order and what the cache holds are
the same.
"""
from __future__ import annotations

import dataclasses
import sys

import numpy as np

from ._backend import register_implementation
from ._ops import make_ops
from .cells import CellSpec, register


__all__ = [
    "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
]


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


ACTIVATIONS = {
    # name: (f(a), f'(a) written in terms of h = f(a))
    "tanh": (np.tanh, lambda h: 1 - h * h),
    "relu": (lambda a: np.maximum(a, 0), lambda h: (h > 0).astype(h.dtype)),
    "sigmoid": (sigmoid, lambda h: h * (1 - h)),
}


# -- cell steps --------------------------------------------------------------------------
# forward:  (xw_t, h_prev, c_prev, inp) -> (h_t, c_t, gates_t)
# backward: (dh, dc, h_prev, c_prev, h_t, c_t, gates_t, inp)
#           -> (dgx, dgh, dh_prev, dc_prev, dwh_t)
# dgx / dgh: gradient of the input-side / hidden-side pre-activations (B, G*H);
# xw_t = x_t @ wx, computed for all steps before the loop.

def rnn_step_forward(xw_t, h_prev, c_prev, inp):
    f, _ = ACTIVATIONS[inp.activation]
    h = f(xw_t + h_prev @ inp.wh + inp.b_ih)
    return h, None, None


def rnn_step_backward(dh, dc, h_prev, c_prev, h, c, gates, inp):
    _, fprime = ACTIVATIONS[inp.activation]
    da = dh * fprime(h)
    return da, da, da @ inp.wh.T, None, h_prev.T @ da


def _biases(inp):
    """(b_ih, b_hh), a missing b_hh as zeros."""
    b_hh = inp.b_hh if inp.b_hh is not None else np.zeros_like(inp.b_ih)
    return inp.b_ih, b_hh


def lstm_step_forward(xw_t, h_prev, c_prev, inp):
    H = inp.H
    b_ih, b_hh = _biases(inp)
    a = xw_t + b_ih + h_prev @ inp.wh + b_hh
    i, f = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H])
    g, o = np.tanh(a[:, 2 * H:3 * H]), sigmoid(a[:, 3 * H:])
    c = f * c_prev + i * g
    h = o * np.tanh(c)
    return h, c, np.concatenate([i, f, g, o], axis=1)


def lstm_step_backward(dh, dc, h_prev, c_prev, h, c, gates, inp):
    H = inp.H
    i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    tc = np.tanh(c)
    dc = dc + dh * o * (1 - tc * tc)
    da = np.concatenate([
        dc * g * i * (1 - i),
        dc * c_prev * f * (1 - f),
        dc * i * (1 - g * g),
        dh * tc * o * (1 - o),
    ], axis=1)
    return da, da, da @ inp.wh.T, dc * f, h_prev.T @ da


def gru_step_forward(xw_t, h_prev, c_prev, inp):
    H = inp.H
    b_ih, b_hh = _biases(inp)
    xa = xw_t + b_ih
    hw = h_prev @ inp.wh + b_hh
    r = sigmoid(xa[:, :H] + hw[:, :H])
    z = sigmoid(xa[:, H:2 * H] + hw[:, H:2 * H])
    hw_n = hw[:, 2 * H:]  # h_{t-1} @ W_hn + b_hn
    n = np.tanh(xa[:, 2 * H:] + r * hw_n)
    h = (1 - z) * n + z * h_prev
    return h, None, np.concatenate([r, z, n, hw_n], axis=1)


def gru_step_backward(dh, dc, h_prev, c_prev, h, c, gates, inp):
    H = inp.H
    r, z, n, hw_n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    dn = dh * (1 - z) * (1 - n * n)
    dr = dn * hw_n * r * (1 - r)
    dz = dh * (h_prev - n) * z * (1 - z)
    dgx = np.concatenate([dr, dz, dn], axis=1)
    dgh = np.concatenate([dr, dz, dn * r], axis=1)
    dh_prev = dgh @ inp.wh.T + dh * z
    return dgx, dgh, dh_prev, None, h_prev.T @ dgh


def gru_reset_before_step_forward(xw_t, h_prev, c_prev, inp):
    H = inp.H
    b_ih, b_hh = _biases(inp)
    wh = inp.wh
    a = xw_t + b_ih + b_hh
    r = sigmoid(a[:, :H] + h_prev @ wh[:, :H])
    z = sigmoid(a[:, H:2 * H] + h_prev @ wh[:, H:2 * H])
    rh = r * h_prev
    n = np.tanh(a[:, 2 * H:] + rh @ wh[:, 2 * H:])
    h = (1 - z) * n + z * h_prev
    return h, None, np.concatenate([r, z, n, rh], axis=1)


def gru_reset_before_step_backward(dh, dc, h_prev, c_prev, h, c, gates, inp):
    H = inp.H
    wh = inp.wh
    r, z, n, rh = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    dn = dh * (1 - z) * (1 - n * n)
    dz = dh * (h_prev - n) * z * (1 - z)
    drh = dn @ wh[:, 2 * H:].T
    dr = drh * h_prev * r * (1 - r)
    da = np.concatenate([dr, dz, dn], axis=1)
    dh_prev = da[:, :2 * H] @ wh[:, :2 * H].T + drh * r + dh * z
    dwh = np.concatenate([h_prev.T @ da[:, :2 * H], rh.T @ dn], axis=1)
    return da, da, dh_prev, None, dwh


# -- the built-in cells: one spec each (rnncore.cells), the step functions above ----------

BUILTIN = tuple(register(spec) for spec in (
    CellSpec("rnn", gates=1, cache_gates=0, has_cell_state=False, biases=("b",),
             step_forward=rnn_step_forward, step_backward=rnn_step_backward, native=True,
             activations=tuple(ACTIVATIONS)),
    CellSpec("lstm", gates=4, cache_gates=4, has_cell_state=True, biases=("b_ih", "b_hh"),
             step_forward=lstm_step_forward, step_backward=lstm_step_backward, native=True),
    CellSpec("gru", gates=3, cache_gates=4, has_cell_state=False, biases=("b_ih", "b_hh"),
             step_forward=gru_step_forward, step_backward=gru_step_backward, native=True,
             flavour=("reset_after", True)),
    CellSpec("gru_reset_before", gates=3, cache_gates=4, has_cell_state=False, biases=("b_ih", "b_hh"),
             step_forward=gru_reset_before_step_forward, step_backward=gru_reset_before_step_backward,
             native=True, cell="gru", flavour=("reset_after", False)),
))
#: the built-in kernels' step functions by name, (forward, backward): the specs above, as the
#: C++ cell table lists them (the driver reads ``inp.spec``)
STEPS = {spec.name: (spec.step_forward, spec.step_backward) for spec in BUILTIN}


# -- the driver ---------------------------------------------------------------------------

def _time_major(a, batch_first):
    return None if a is None else (a.swapaxes(0, 1) if batch_first else a)


def _caller_layout(a, batch_first):
    return None if a is None else np.ascontiguousarray(a.swapaxes(0, 1) if batch_first else a)


def _valid_mask(inp):
    """(T, B, 1) bool: step t of sequence b is inside its length."""
    lengths = inp.lengths if inp.lengths is not None else np.full(inp.B, inp.T)
    return (np.arange(inp.T)[:, None] < lengths[None, :])[:, :, None]


def _row_vector(inp):
    """The call with its weights in the row-vector layout the steps read: PyTorch's (G*H, D)
    and (G*H, H) matrices (``inp.transposed``) as views of their transposes."""
    if not inp.transposed:
        return inp
    return dataclasses.replace(inp, wx=inp.wx.T, wh=inp.wh.T, transposed=False)


def forward(inp, cache=True):
    """All steps of one layer -> (hs, h_n, c_n, gates, cs); hs, gates, cs in x's layout
    (gates and cs None without ``cache``: inference)."""
    inp = _row_vector(inp)
    spec = inp.spec
    step = spec.step_forward
    T, B, H = inp.T, inp.B, inp.H
    dt = inp.x.dtype
    x = _time_major(inp.x, inp.batch_first)
    xw = x @ inp.wx  # the input projection of every step, hoisted out of the loop
    valid = _valid_mask(inp)
    h = inp.h0 if inp.h0 is not None else np.zeros((B, H), dt)
    c = inp.c0 if inp.c0 is not None else np.zeros((B, H), dt)
    hs = np.zeros((T, B, H), dt)
    gates = np.zeros((T, B, spec.cache_gates * H), dt) if spec.cache_gates else None
    cs = np.zeros((T, B, H), dt) if spec.has_cell_state else None
    for t in range(T):
        h_new, c_new, g = step(xw[t], h, c, inp)
        hs[t] = np.where(valid[t], h_new, 0)
        h = np.where(valid[t], h_new, h)
        if gates is not None:  # past the length the whole cache is zero, as in the native forward
            gates[t] = np.where(valid[t], g, 0)
        if cs is not None:
            c = np.where(valid[t], c_new, c)
            cs[t] = np.where(valid[t], c, 0)
    c_n = c if spec.has_cell_state else None
    bf = inp.batch_first
    if not cache:
        return _caller_layout(hs, bf), h, c_n, None, None
    return (_caller_layout(hs, bf), h, c_n, _caller_layout(gates, bf), _caller_layout(cs, bf))


def backward(cache, dhs, dh_n, dc_n):
    """BPTT through all steps -> (dx, dwx, dwh, db_ih, db_hh, dh0, dc0); dwx, dwh in the
    layout of the call's weights."""
    transposed = cache.inputs.transposed
    inp = _row_vector(cache.inputs)
    step_backward = inp.spec.step_backward
    T, B, H = inp.T, inp.B, inp.H
    dt = inp.x.dtype
    bf = inp.batch_first
    x = _time_major(inp.x, bf)
    hs, gates, cs = (_time_major(a, bf) for a in (cache.hs, cache.gates, cache.cs))
    dhs = _time_major(dhs, bf) if dhs is not None else np.zeros((T, B, H), dt)
    valid = _valid_mask(inp)
    zeros = np.zeros((B, H), dt)
    h0 = inp.h0 if inp.h0 is not None else zeros
    c0 = inp.c0 if inp.c0 is not None else zeros
    dh = dh_n.copy() if dh_n is not None else zeros.copy()
    dc = dc_n.copy() if dc_n is not None else zeros.copy()
    dgx_all = np.zeros((T, B, inp.G * H), dt)
    dwh = np.zeros_like(inp.wh)
    db_hh = np.zeros_like(inp.b_ih)
    for t in reversed(range(T)):
        v = valid[t]
        h_prev = hs[t - 1] if t > 0 else h0
        c_prev = cs[t - 1] if (t > 0 and cs is not None) else c0
        dht = (dh + dhs[t]) * v  # past the length nothing flows
        dct = dc * v
        dgx, dgh, dh_prev, dc_prev, dwh_t = step_backward(
            dht, dct, h_prev, c_prev, hs[t],
            cs[t] if cs is not None else None,
            gates[t] if gates is not None else None, inp)
        dgx_all[t] = dgx
        dwh += dwh_t
        db_hh += dgh.sum(axis=0)
        dh = np.where(v, dh_prev, dh)  # a frozen state passes its gradient through
        if dc_prev is not None:
            dc = np.where(v, dc_prev, dc)
    D = inp.D
    dwx = x.reshape(-1, D).T @ dgx_all.reshape(-1, inp.G * H)
    dx = _caller_layout(dgx_all @ inp.wx.T, bf)
    db_ih = dgx_all.sum(axis=(0, 1))
    if transposed:
        dwx, dwh = np.ascontiguousarray(dwx.T), np.ascontiguousarray(dwh.T)
    return (dx, dwx, dwh, db_ih, db_hh if inp.b_hh is not None else None, dh,
            dc if inp.spec.has_cell_state else None)


# -- public functions: the same signatures as rnncore's, always on the twin above ---------

class _Twin:
    """The implementation interface of rnncore._ops.make_ops: the two driver functions above."""

    forward = staticmethod(forward)
    backward = staticmethod(backward)


#: the op pair of every cell and the six public functions, always on the twin
OPS = make_ops(lambda: _Twin, __name__)
register_implementation("numpy", sys.modules[__name__])  # the ops' "numpy" backend (_backend.implementation)
_, _, rnn_forward, rnn_backward, lstm_forward, lstm_backward, gru_forward, gru_backward = OPS


# -- the output layer: softmax + cross-entropy by rows (twin of csrc/softmax.h) -------------

def softmax_xent_forward(x, t, ignore_index):
    """x (N, V), t (N,) int64 -> probs (N, V) = softmax by rows, row_loss (N,) float64
    = -log probs[n, t[n]] (0 where t[n] == ignore_index)."""
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    probs = e / s
    valid = t != ignore_index
    rows = np.arange(len(t))
    logp = (x[rows, np.where(valid, t, 0)] - m[:, 0]).astype(np.float64) - np.log(s[:, 0].astype(np.float64))
    return probs, np.where(valid, -logp, 0.0)


def softmax_xent_backward(probs, t, ignore_index, scale, out=None):
    """scale * (probs - onehot(t)) (N, V), zero rows where t == ignore_index; written into `out` if given."""
    dx = np.multiply(probs, probs.dtype.type(scale), out=out)
    valid = t != ignore_index
    rows = np.arange(len(t))[valid]
    dx[rows, t[valid]] -= probs.dtype.type(scale)
    dx[~valid] = 0
    return dx


# -- the rest of a training step (twin of csrc/layers.h) -----------------------------------

def affine_forward(x, W, wt, b):
    """x (N, D) @ op(W) + b (M, or None) -> y (N, M); op(W) is W (D, M), or W.T when wt
    (W given as (M, D))."""
    y = x @ (W.T if wt else W)
    return y if b is None else y + b


def affine_backward(dy, x, W, wt, dW, dwt, db, need_dx):
    """In place: dW[...] = x^T dy (D, M), or its transpose dy^T x (M, D) when dwt; db[...] =
    the column sums of dy (if db is given). Returns dx = dy op(W)^T, or None unless need_dx."""
    if dwt:
        np.matmul(dy.T, x, out=dW)
    else:
        np.matmul(x.T, dy, out=dW)
    if db is not None:
        np.sum(dy, axis=0, out=db)
    return dy @ (W if wt else W.T) if need_dx else None


def embedding_backward(ids, dout, dW):
    """dW (V, D)[...] = sum over n of onehot(ids[n]) dout[n] (duplicate ids accumulate)."""
    dW[...] = 0
    np.add.at(dW, ids, dout)


def adam_update(p, g, m, v, lr_c1, b1, b2, eps, c2):
    """One Adam step in place: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
    p -= lr_c1 m / (sqrt(v / c2) + eps), with lr_c1 = lr / (1 - b1^t), c2 = 1 - b2^t.
    The native kernel evaluates the same expressions in the same order (no fused
    multiply-add), so both backends give the same bits."""
    f = p.dtype.type
    m *= f(b1)
    m += f(1 - b1) * g
    v *= f(b2)
    v += f(1 - b2) * g * g
    p -= f(lr_c1) * m / (np.sqrt(v / f(c2)) + f(eps))


def sum_squares(a):
    """sum of a^2 in float64."""
    return float(np.sum(np.square(a, dtype=np.float64)))
