"""The functional ops, written once for every cell over an implementation (native or the twin).

``make_ops(impl, module)`` returns an :class:`Ops`: the private pair
``forward(cell, x, wx, wh, b_ih, b_hh=None, h0=None, c0=None, **kw) -> (hs, h_n, c_n, cache)``
and ``backward(cache, dhs, dh_n=None, dc_n=None) -> (dx, dwx, dwh, db_ih, db_hh, dh0, dc0)``,
which carry any registered cell (:mod:`rnncore.cells`), and the six public functions, thin
wrappers of the pair with each cell's own signature. ``impl()`` gives the object whose
``forward(inputs)`` and ``backward(cache, dhs, dh_n, dc_n)`` do the work. :data:`ACTIVE`
(re-exported as ``rnncore.rnn_forward`` ...) picks the implementation from the active backend
at each call; :mod:`rnncore.reference` makes its own over the twin. Checks run first, in
Python, whatever the backend.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

from . import _native, cells
from ._backend import implementation
from ._cache import Cache, cache_kind
from ._checks import grad_input, recurrent_inputs

__all__ = ["make_ops", "Ops", "ACTIVE", "forward", "backward", "rnn_forward", "rnn_backward", "lstm_forward",
           "lstm_backward", "gru_forward", "gru_backward"]

Array = np.ndarray
Grads = Tuple[Array, Array, Array, Optional[Array], Optional[Array], Array, Optional[Array]]


class Ops(NamedTuple):
    """The op pair of every cell and the six public wrappers, over one implementation."""

    forward: object
    backward: object
    rnn_forward: object
    rnn_backward: object
    lstm_forward: object
    lstm_backward: object
    gru_forward: object
    gru_backward: object


def _twin_only(op, spec):
    return RuntimeError(f"{op}: the cell {spec.name!r} has no native kernel (it is registered for the NumPy "
                        f"twin only); run it with rnncore.set_backend(\"numpy\") or rnncore.use_backend(\"numpy\")")


#: ``activation`` not given: the cell's first (an explicit None is checked, and refused)
_CELL_DEFAULT = "<the cell's default>"


def make_ops(impl, module) -> Ops:
    def forward(cell: str, x: Array, wx: Array, wh: Array, b_ih: Array, b_hh: Optional[Array] = None,
                h0: Optional[Array] = None, c0: Optional[Array] = None, *, activation: str = _CELL_DEFAULT,
                batch_first: bool = False, lengths: Optional[Array] = None, op: Optional[str] = None,
                transposed: bool = False, inference: bool = False
                ) -> Tuple[Array, Array, Optional[Array], Optional[Cache]]:
        """One layer of the registered kernel ``cell`` over all steps -> ``(hs, h_n, c_n, cache)``
        (c_n None without a cell state). ``op`` names the caller in messages (default
        ``<cell>_forward``); ``activation`` defaults to the cell's first. The returned hs is a
        read-only view of the cache's (the backward reads it, so writing into it would change
        the gradients silently). ``transposed``: wx (G*H, D) and wh (G*H, H) as PyTorch keeps
        them, and the backward's dwx, dwh in the same layout. ``inference``: keep no cache (as
        PyTorch under ``torch.no_grad()``): the same hs, h_n, c_n bits, cache None, hs yours."""
        spec = cells.get(cell)
        if op is None:
            op = f"{spec.cell}_forward"
        if not isinstance(inference, (bool, np.bool_)):
            raise TypeError(f"{op}: inference must be a bool, got {type(inference).__name__}")
        inp = recurrent_inputs(op, spec, x, wx, wh, b_ih, b_hh, h0, c0, lengths, batch_first,
                               spec.activations[0] if activation is _CELL_DEFAULT else activation, transposed)
        im = impl()
        if im is _native and not spec.native:
            raise _twin_only(op, spec)
        if inference:
            hs, h_n, c_n, _, _ = im.forward(inp, False)
            return hs, h_n, c_n, None
        hs, h_n, c_n, gates, cs = im.forward(inp)
        out = hs.view()
        out.flags.writeable = False
        return out, h_n, c_n, Cache(inp, hs, gates, cs)

    def backward(cache: Cache, dhs: Optional[Array], dh_n: Optional[Array] = None,
                 dc_n: Optional[Array] = None, *, op: Optional[str] = None, cell: Optional[str] = None) -> Grads:
        """BPTT for :func:`forward` -> ``(dx, dwx, dwh, db_ih, db_hh, dh0, dc0)`` (db_hh None
        when b_hh was None, dc0 None without a cell state). With ``cell`` the cache must come
        from a flavour of that cell."""
        if not isinstance(cache, Cache) or (cell is not None and cache.inputs.spec.cell != cell):
            names = "/".join(s.name for s in cells.flavours(cell)) if cell is not None else "any cell"
            raise TypeError(f"{op or 'backward'}: cache must be the cache returned by the matching forward "
                            f"({names}), got {cache_kind(cache)}")
        i = cache.inputs
        if op is None:
            op = f"{i.spec.cell}_backward"
        dt = i.x.dtype
        dhs = grad_input(op, "dhs", dhs, cache.hs.shape, "the shape of hs", dt)
        dh_n = grad_input(op, "dh_n", dh_n, (i.B, i.H), "(B, H)", dt)
        dc_n = grad_input(op, "dc_n", dc_n, (i.B, i.H), "(B, H)", dt)
        im = impl()
        if im is _native and not i.spec.native:
            raise _twin_only(op, i.spec)
        return im.backward(cache, dhs, dh_n, dc_n)

    def rnn_forward(x: Array, wx: Array, wh: Array, b: Array, h0: Optional[Array] = None, *,
                    activation: str = "tanh", batch_first: bool = False, lengths: Optional[Array] = None,
                    inference: bool = False) -> Tuple[Array, Array, Optional[Cache]]:
        """Elman RNN over all steps: ``h_t = f(x_t @ wx + h_{t-1} @ wh + b)``.

        x (T, B, D), or (B, T, D) with ``batch_first``; wx (D, H); wh (H, H); b (H,);
        h0 (B, H) or None (zeros); activation "tanh", "relu" or "sigmoid"; lengths (B,)
        ints in [1, T] or None. Returns ``hs`` (x's layout, H features; zero past a
        sequence's length; a read-only view of what the backward reads: copy it to modify it),
        ``h_n`` (B, H), the state at each sequence's last step, and the ``cache`` for
        :func:`rnn_backward`. The same holds for every forward: ``hs`` read-only, the rest yours.
        ``inference=True`` keeps no cache (PyTorch's ``torch.no_grad()``): the same ``hs`` and
        ``h_n``, ``cache`` None and ``hs`` writable; less memory, and no time spent writing the
        cache out (every forward takes it).
        """
        hs, h_n, _, cache = forward("rnn", x, wx, wh, b, None, h0, None, activation=activation,
                                    batch_first=batch_first, lengths=lengths, op="rnn_forward",
                                    inference=inference)
        return hs, h_n, cache

    def rnn_backward(dhs: Optional[Array], cache: Cache, dh_n: Optional[Array] = None
                     ) -> Tuple[Array, Array, Array, Array, Array]:
        """BPTT for :func:`rnn_forward`: dhs (hs's shape) or None, dh_n (B, H) or None.

        Returns ``dx, dwx, dwh, db, dh0`` (dh0 even when h0 was None).
        """
        dx, dwx, dwh, db, _, dh0, _ = backward(cache, dhs, dh_n, None, op="rnn_backward", cell="rnn")
        return dx, dwx, dwh, db, dh0

    def lstm_forward(x: Array, wx: Array, wh: Array, b_ih: Array, b_hh: Optional[Array],
                     h0: Optional[Array] = None, c0: Optional[Array] = None, *, batch_first: bool = False,
                     lengths: Optional[Array] = None, inference: bool = False
                     ) -> Tuple[Array, Array, Array, Optional[Cache]]:
        """LSTM over all steps, PyTorch's equations and gate order (i, f, g, o).

        wx (D, 4H) is PyTorch's weight_ih transposed, wh (H, 4H) weight_hh transposed;
        b_ih, b_hh (4H,) (b_hh may be None). Returns ``hs, h_n, c_n, cache`` (cache None with
        ``inference=True``, as for :func:`rnn_forward`).
        """
        return forward("lstm", x, wx, wh, b_ih, b_hh, h0, c0, batch_first=batch_first, lengths=lengths,
                       op="lstm_forward", inference=inference)

    def lstm_backward(dhs: Optional[Array], cache: Cache, dh_n: Optional[Array] = None,
                      dc_n: Optional[Array] = None) -> Grads:
        """BPTT for :func:`lstm_forward` -> ``dx, dwx, dwh, db_ih, db_hh, dh0, dc0``."""
        return backward(cache, dhs, dh_n, dc_n, op="lstm_backward", cell="lstm")

    def gru_forward(x: Array, wx: Array, wh: Array, b_ih: Array, b_hh: Optional[Array],
                    h0: Optional[Array] = None, *, reset_after: bool = True, batch_first: bool = False,
                    lengths: Optional[Array] = None, inference: bool = False) -> Tuple[Array, Array, Optional[Cache]]:
        """GRU over all steps, PyTorch's equations and gate order (r, z, n).

        ``reset_after=True`` (PyTorch, cuDNN) applies the reset gate after the hidden matmul,
        ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))``; ``False`` is the textbook/Keras
        flavour ``n = tanh(x W_in + b_in + (r * h) W_hn + b_hn)``. wx (D, 3H), wh (H, 3H),
        b_ih, b_hh (3H,). Returns ``hs, h_n, cache`` (cache None with ``inference=True``, as for
        :func:`rnn_forward`).
        """
        if not isinstance(reset_after, (bool, np.bool_)):
            raise TypeError(f"gru_forward: reset_after must be a bool, got {type(reset_after).__name__}")
        hs, h_n, _, cache = forward("gru" if reset_after else "gru_reset_before", x, wx, wh, b_ih, b_hh, h0,
                                    None, batch_first=batch_first, lengths=lengths, op="gru_forward",
                                    inference=inference)
        return hs, h_n, cache

    def gru_backward(dhs: Optional[Array], cache: Cache, dh_n: Optional[Array] = None
                     ) -> Tuple[Array, Array, Array, Array, Optional[Array], Array]:
        """BPTT for :func:`gru_forward` -> ``dx, dwx, dwh, db_ih, db_hh, dh0``."""
        dx, dwx, dwh, db_ih, db_hh, dh0, _ = backward(cache, dhs, dh_n, None, op="gru_backward", cell="gru")
        return dx, dwx, dwh, db_ih, db_hh, dh0

    ops = Ops(forward, backward, rnn_forward, rnn_backward, lstm_forward, lstm_backward, gru_forward,
              gru_backward)
    for f in ops:
        f.__module__ = module
    return ops


#: the ops on the backend active at each call (the six public ones are rnncore's)
ACTIVE = make_ops(implementation, "rnncore")
(forward, backward, rnn_forward, rnn_backward, lstm_forward, lstm_backward, gru_forward, gru_backward) = ACTIVE
forward.__module__ = backward.__module__ = __name__
