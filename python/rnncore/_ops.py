"""The functional ops, written once over an implementation (native or the NumPy twin).

``make_ops(impl)`` returns the six public functions; ``impl()`` gives the object whose
``forward(inputs)`` and ``backward(cache, dhs, dh_n, dc_n)`` do the work. The ones defined at
the bottom of this module (re-exported as ``rnncore.rnn_forward`` ...) pick the implementation
from the active backend at each call; :mod:`rnncore.reference` makes its own over the twin.
Checks run first, in Python, whatever the backend.
"""
from __future__ import annotations

import numpy as np

from ._backend import implementation
from ._cache import Cache
from ._checks import grad_input, recurrent_inputs

__all__ = ["make_ops", "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward",
           "gru_backward", "OPS"]


def _run_forward(impl, inp):
    """The forward on ``impl``; the returned hs is a read-only view of the cache's (the backward
    reads it, so writing into it would change the gradients silently)."""
    hs, h_n, c_n, gates, cs = impl.forward(inp)
    out = hs.view()
    out.flags.writeable = False
    return out, h_n, c_n, Cache(inp, hs, gates, cs)


def _run_backward(impl, op, cells, cache, dhs, dh_n, dc_n):
    if not isinstance(cache, Cache) or cache.cell not in cells:
        raise TypeError(f"{op}: cache must be the cache returned by the matching forward ({'/'.join(cells)}), "
                        f"got {type(cache).__name__}")
    i = cache.inputs
    dt = i.x.dtype
    dhs = grad_input(op, "dhs", dhs, cache.hs.shape, "the shape of hs", dt)
    dh_n = grad_input(op, "dh_n", dh_n, (i.B, i.H), "(B, H)", dt)
    dc_n = grad_input(op, "dc_n", dc_n, (i.B, i.H), "(B, H)", dt)
    return impl.backward(cache, dhs, dh_n, dc_n)


def make_ops(impl, module):
    def rnn_forward(x, wx, wh, b, h0=None, *, activation="tanh", batch_first=False, lengths=None):
        """Elman RNN over all steps: ``h_t = f(x_t @ wx + h_{t-1} @ wh + b)``.

        x (T, B, D), or (B, T, D) with ``batch_first``; wx (D, H); wh (H, H); b (H,);
        h0 (B, H) or None (zeros); activation "tanh", "relu" or "sigmoid"; lengths (B,)
        ints in [1, T] or None. Returns ``hs`` (x's layout, H features; zero past a
        sequence's length; a read-only view of what the backward reads: copy it to modify it),
        ``h_n`` (B, H), the state at each sequence's last step, and the ``cache`` for
        :func:`rnn_backward`. The same holds for every forward: ``hs`` read-only, the rest yours.
        """
        inp = recurrent_inputs("rnn_forward", "rnn", x, wx, wh, b, None, h0, None, lengths, batch_first,
                               activation)
        hs, h_n, _, cache = _run_forward(impl(), inp)
        return hs, h_n, cache

    def rnn_backward(dhs, cache, dh_n=None):
        """BPTT for :func:`rnn_forward`: dhs (hs's shape) or None, dh_n (B, H) or None.

        Returns ``dx, dwx, dwh, db, dh0`` (dh0 even when h0 was None).
        """
        dx, dwx, dwh, db, _, dh0, _ = _run_backward(impl(), "rnn_backward", ("rnn",), cache, dhs, dh_n, None)
        return dx, dwx, dwh, db, dh0

    def lstm_forward(x, wx, wh, b_ih, b_hh, h0=None, c0=None, *, batch_first=False, lengths=None):
        """LSTM over all steps, PyTorch's equations and gate order (i, f, g, o).

        wx (D, 4H) is PyTorch's weight_ih transposed, wh (H, 4H) weight_hh transposed;
        b_ih, b_hh (4H,) (b_hh may be None). Returns ``hs, h_n, c_n, cache``.
        """
        inp = recurrent_inputs("lstm_forward", "lstm", x, wx, wh, b_ih, b_hh, h0, c0, lengths, batch_first,
                               "tanh")
        return _run_forward(impl(), inp)

    def lstm_backward(dhs, cache, dh_n=None, dc_n=None):
        """BPTT for :func:`lstm_forward` -> ``dx, dwx, dwh, db_ih, db_hh, dh0, dc0``."""
        return _run_backward(impl(), "lstm_backward", ("lstm",), cache, dhs, dh_n, dc_n)

    def gru_forward(x, wx, wh, b_ih, b_hh, h0=None, *, reset_after=True, batch_first=False, lengths=None):
        """GRU over all steps, PyTorch's equations and gate order (r, z, n).

        ``reset_after=True`` (PyTorch, cuDNN) applies the reset gate after the hidden matmul,
        ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``; ``False`` is the textbook/Keras
        flavour ``n = tanh(x W_in + b_in + (r * h) W_hn + b_hn)``. wx (D, 3H), wh (H, 3H),
        b_ih, b_hh (3H,). Returns ``hs, h_n, cache``.
        """
        if not isinstance(reset_after, (bool, np.bool_)):
            raise TypeError(f"gru_forward: reset_after must be a bool, got {type(reset_after).__name__}")
        cell = "gru" if reset_after else "gru_reset_before"
        inp = recurrent_inputs("gru_forward", cell, x, wx, wh, b_ih, b_hh, h0, None, lengths, batch_first,
                               "tanh")
        hs, h_n, _, cache = _run_forward(impl(), inp)
        return hs, h_n, cache

    def gru_backward(dhs, cache, dh_n=None):
        """BPTT for :func:`gru_forward` -> ``dx, dwx, dwh, db_ih, db_hh, dh0``."""
        dx, dwx, dwh, db_ih, db_hh, dh0, _ = _run_backward(
            impl(), "gru_backward", ("gru", "gru_reset_before"), cache, dhs, dh_n, None)
        return dx, dwx, dwh, db_ih, db_hh, dh0

    ops = (rnn_forward, rnn_backward, lstm_forward, lstm_backward, gru_forward, gru_backward)
    for f in ops:
        f.__module__ = module
    return ops


#: rnncore's public ops, on the backend active at each call
(rnn_forward, rnn_backward, lstm_forward, lstm_backward, gru_forward, gru_backward) = make_ops(
    implementation, "rnncore")

#: the (forward, backward) pair of each cell
OPS = {"rnn": (rnn_forward, rnn_backward), "lstm": (lstm_forward, lstm_backward),
       "gru": (gru_forward, gru_backward)}
