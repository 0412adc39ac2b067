"""Stacked and bidirectional recurrent layers, composed over the single-layer functional ops.

:func:`recurrent_forward` / :func:`recurrent_backward` do what ``torch.nn.RNN``, ``nn.LSTM``
and ``nn.GRU`` do over a whole sequence -- several layers, two directions, dropout between
layers, variable lengths -- with NumPy arrays in and out. Every layer and direction is one
call of :func:`rnncore.rnn_forward` / :func:`rnncore.lstm_forward` /
:func:`rnncore.gru_forward` (and their backwards), so the work runs on whichever backend is
active (:func:`rnncore.set_backend`); this module only arranges the data around them.

Weights follow PyTorch's layout and order. ``weights`` is a list of ``num_layers * num_dirs``
tuples ``(wx, wh, b_ih, b_hh)``, index ``layer * num_dirs + direction`` (direction 1 is the
reverse one): ``wx`` (D_l, G*H) is PyTorch's ``weight_ih_l{layer}[_reverse]`` transposed,
``wh`` (H, G*H) its ``weight_hh`` transposed, ``b_ih``/``b_hh`` (G*H,) its biases, with
G = 1 ("rnn"), 4 ("lstm", gates i, f, g, o) or 3 ("gru", gates r, z, n). D_0 is the input
size, D_l = num_dirs * H for the layers above the first. :mod:`rnncore.interop` converts
to and from PyTorch's ``state_dict``.

The reverse direction reads each sequence backwards from its own last valid step (as
PyTorch does for packed sequences): with ``lengths`` the steps ``0 .. len_b - 1`` of
sequence ``b`` are reversed in place, the padding stays where it is.
"""
from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from . import _ops, cells
from ._cache import cache_kind
from ._checks import INDEX_LIMIT, _memory_bytes, check_array, check_lengths, check_sequence, check_size, grad_input

__all__ = ["recurrent_forward", "recurrent_backward", "init_weights", "RecurrentCache", "MODES"]

#: the built-in cells; :func:`recurrent_forward` takes every cell of :mod:`rnncore.cells`
MODES = ("rnn", "lstm", "gru")


@dataclass
class RecurrentCache:
    """What :func:`recurrent_forward` keeps for :func:`recurrent_backward`.

    ``caches[k]`` is the single-layer op's cache of layer/direction ``k = layer * num_dirs +
    direction``; ``masks[layer]`` the inverted-dropout mask applied to that layer's output
    (already scaled by ``1 / (1 - dropout)``), or None where no dropout was applied. The
    arrays are referenced, not copied: do not modify them before the backward.
    """

    cell: str  # the cell's name (the ``mode`` of recurrent_forward)
    num_layers: int
    num_dirs: int
    hidden_size: int
    batch_first: bool
    dtype: np.dtype
    x_shape: tuple
    out_shape: tuple
    lengths: Optional[np.ndarray]
    rev_index: Optional[np.ndarray]  # (T, B) time index of the within-length reversal
    caches: list = field(default_factory=list)
    masks: List[Optional[np.ndarray]] = field(default_factory=list)

    @property
    def mode(self) -> str:
        """The cell's name (the former field name)."""
        return self.cell

    def __repr__(self) -> str:
        layout = "batch_first" if self.batch_first else "time_major"
        return (f"RecurrentCache({self.cell}, num_layers={self.num_layers}, num_dirs={self.num_dirs}, "
                f"H={self.hidden_size}, x={self.x_shape}, {layout}, {self.dtype})")


# -- helpers --------------------------------------------------------------------------------

_executor = None
_executor_lock = threading.Lock()


def _side_by_side(f0, f1):
    """``[f0(), f1()]``: the two directions of a layer are independent, so on the native
    backend with two or more threads they run at once, f1 on a helper thread, each native
    call capped at half the threads (so together they never oversubscribe the cores).
    Results are the same bits either way (a call's results do not depend on its threads)."""
    global _executor
    from . import _native
    from ._backend import get_backend, use_backend

    core = _native.core
    n = core.get_num_threads() if core is not None else 1
    if get_backend() != "native" or n < 2:
        return [f0(), f1()]
    half = n // 2
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rnncore")

    def helper():
        core.set_local_thread_cap(n - half)
        try:
            with use_backend("native"):
                return f1()
        finally:
            core.set_local_thread_cap(0)

    future = _executor.submit(helper)
    core.set_local_thread_cap(half)
    try:
        r0 = f0()
    except BaseException:
        concurrent.futures.wait([future])
        raise
    finally:
        core.set_local_thread_cap(0)
    return [r0, future.result()]


def _reverse(a, batch_first, rev_index):
    """Reverse ``a`` (x's layout) in time; with ``rev_index`` only within each length.

    Both are involutions, so the same call undoes them (and, being permutations, is also
    its own adjoint: it carries gradients back the same way).
    """
    taxis = 1 if batch_first else 0
    if rev_index is None:
        return np.ascontiguousarray(np.flip(a, axis=taxis))
    T, B = rev_index.shape
    cols = np.arange(B)
    if batch_first:
        return np.ascontiguousarray(a[cols[:, None], rev_index.T])
    return np.ascontiguousarray(a[rev_index, cols[None, :]])


def _reverse_index(lengths, T):
    """(T, B) index: t -> len_b - 1 - t for t < len_b, t itself past the length."""
    t = np.arange(T)[:, None]
    lens = lengths[None, :].astype(np.int64)
    return np.where(t < lens, lens - 1 - t, t)


def _only(has) -> str:
    """ "mode='lstm'" (or "mode='a' or mode='b'"): the cells whose specs satisfy ``has``."""
    return " or ".join(f"mode={c!r}" for c in cells.cells() if any(has(s) for s in cells.flavours(c)))


def _check_config(op, mode, num_layers, bidirectional, dropout, activation, reset_after):
    """Validate the configuration; returns (num_layers, num_dirs, dropout, the cell's spec)."""
    if mode not in cells.cells():
        raise ValueError(f"{op}: mode must be one of {cells.cells()}, got {mode!r}")
    check_size(op, "num_layers", num_layers)
    if not isinstance(bidirectional, (bool, np.bool_)):
        raise TypeError(f"{op}: bidirectional must be a bool, got {type(bidirectional).__name__}")
    if isinstance(dropout, (bool, np.bool_, str, bytes)):  # float() would read "0.5"
        raise TypeError(f"{op}: dropout must be a number in [0, 1), got {dropout!r}")
    try:
        p = float(dropout)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: dropout must be a number in [0, 1), got {dropout!r}") from None
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{op}: dropout must be in [0, 1), got {dropout!r}")
    spec = cells.resolve(mode, reset_after=reset_after)
    if len(spec.activations) == 1 and activation != spec.activations[0]:
        raise ValueError(f"{op}: activation applies to {_only(lambda s: len(s.activations) > 1)} only (LSTM and "
                         f"GRU use fixed gate activations), got activation={activation!r} with mode={mode!r}")
    if not isinstance(reset_after, (bool, np.bool_)):
        raise TypeError(f"{op}: reset_after must be a bool, got {type(reset_after).__name__}")
    if "reset_after" not in cells.flavour_keywords(mode) and reset_after is not True:
        raise ValueError(f"{op}: reset_after applies to {_only(lambda s: s.flavour is not None)} only, got "
                         f"reset_after={reset_after!r} with mode={mode!r}")
    return int(num_layers), (2 if bidirectional else 1), p, spec


def _check_weights(op, mode, weights, num_layers, num_dirs, D, dtype, torch_layout=False):
    """Validate the weight tuples (``torch_layout``: the matrices PyTorch's weight_ih_l* (G*H, D_l)
    and weight_hh_l* (G*H, H)); returns the hidden size H."""
    n = num_layers * num_dirs
    if not isinstance(weights, (list, tuple)):
        raise TypeError(f"{op}: weights must be a list of (wx, wh, b_ih, b_hh) tuples, got {type(weights).__name__}")
    if len(weights) != n:
        raise ValueError(f"{op}: weights must hold num_layers * num_dirs = {num_layers} * {num_dirs} = {n} "
                         f"(wx, wh, b_ih, b_hh) tuples (index layer * num_dirs + direction), got {len(weights)}")
    spec = cells.flavours(mode)[0]
    G = spec.gates
    gh = spec.gate_legend
    H = None
    for k, w in enumerate(weights):
        layer, d = divmod(k, num_dirs)
        where = f"weights[{k}] (layer {layer}, {'reverse' if d else 'forward'})"
        if not isinstance(w, (list, tuple)) or len(w) != 4:
            raise ValueError(f"{op}: {where} must be a tuple (wx, wh, b_ih, b_hh)")
        wx, wh, b_ih, b_hh = w
        for name, a, nd in (("wx", wx, 2), ("wh", wh, 2), ("b_ih", b_ih, 1), ("b_hh", b_hh, 1)):
            check_array(op, f"{where} {name}", a, dtype, ndim=nd)
        if H is None:
            H = wh.shape[1 if torch_layout else 0]
            if H < 1:
                raise ValueError(f"{op}: {where} wh must have shape {f'({gh}, H)' if torch_layout else f'(H, {gh})'} "
                                 f"with H >= 1, got {wh.shape}")
        D_l = D if layer == 0 else num_dirs * H
        legend = "D from x" if layer == 0 else f"num_dirs * H = {num_dirs} * {H}"
        if torch_layout:
            mats = (("wx", wx, (G * H, D_l), f"({gh}, D_l) with D_l = {legend}"), ("wh", wh, (G * H, H), f"({gh}, H)"))
        else:
            mats = (("wx", wx, (D_l, G * H), f"(D_l, {gh}) with D_l = {legend}"), ("wh", wh, (H, G * H), f"(H, {gh})"))
        for name, a, shape, leg in (*mats,
                                    ("b_ih", b_ih, (G * H,), f"({gh},)"),
                                    ("b_hh", b_hh, (G * H,), f"({gh},)")):
            if a.shape != shape:
                raise ValueError(f"{op}: {where} {name} must have shape {leg} = {shape} (H = {H}), got {a.shape}")
    return H


def _check_state(op, name, s, shape, dtype):
    if s is None:
        return None
    check_array(op, name, s, dtype, ndim=3)
    if s.shape != shape:
        raise ValueError(f"{op}: {name} must have shape (num_layers * num_dirs, B, H) = {shape}, got {s.shape}")
    return s


# -- the public API -------------------------------------------------------------------------

#: one layer/direction's weights: (wx, wh, b_ih, b_hh)
Weights = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def recurrent_forward(mode: str, x: np.ndarray, weights: Sequence[Weights], h0: Optional[np.ndarray] = None,
                      c0: Optional[np.ndarray] = None, *, num_layers: int = 1, bidirectional: bool = False,
                      dropout: float = 0.0, training: bool = False, rng=None, batch_first: bool = False,
                      lengths: Optional[np.ndarray] = None, activation: str = "tanh", reset_after: bool = True,
                      weight_layout: str = "rnncore", inference: bool = False
                      ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[RecurrentCache]]:
    """A multi-layer, optionally bidirectional RNN / LSTM / GRU over a whole sequence.

    The functional counterpart of ``torch.nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``.

    Parameters
    ----------
    mode : the cell: "rnn", "lstm", "gru", or any other registered in :mod:`rnncore.cells`.
    x : (T, B, D) array, or (B, T, D) with ``batch_first``; float32 or float64, C-contiguous.
    weights : list of ``num_layers * num_dirs`` tuples ``(wx, wh, b_ih, b_hh)`` in PyTorch's
        order (index ``layer * num_dirs + direction``), all of x's dtype: wx (D_l, G*H),
        wh (H, G*H), b_ih and b_hh (G*H,); see the module docstring. For "rnn" the Elman op
        gets ``b = b_ih + b_hh``. :func:`init_weights` makes them.
    h0 : (num_layers * num_dirs, B, H) initial hidden states, or None (zeros).
    c0 : (num_layers * num_dirs, B, H) initial cell states ("lstm" only), or None (zeros).
    num_layers : number of stacked layers (>= 1).
    bidirectional : run a second, reversed direction in each layer and concatenate the two
        outputs on the feature axis (forward first), as PyTorch does.
    dropout : probability in [0, 1) of zeroing each output of every layer but the last
        (inverted dropout: the kept ones are scaled by ``1 / (1 - dropout)``). Applied only
        with ``training=True``.
    training : apply dropout (the functional default is False, i.e. evaluation).
    rng : numpy ``Generator`` (or seed) the dropout masks are drawn from; default
        ``np.random.default_rng()``. The same seed gives the same masks.
    batch_first : x and the output are (B, T, ...) instead of (T, B, ...).
    lengths : (B,) integers in [1, T], or None (all T). Outputs past a sequence's length are
        zero; ``h_n`` is the state at its last valid step; the reverse direction starts at
        each sequence's own last valid step (like PyTorch's packed sequences).
    activation : "tanh", "relu" or "sigmoid" ("rnn" only).
    reset_after : GRU flavour ("gru" only): True is PyTorch's, False the textbook's.
    weight_layout : "rnncore" (the matrices as above) or "torch": each tuple is PyTorch's
        ``(weight_ih_l*, weight_hh_l*, bias_ih_l*, bias_hh_l*)`` as the module holds them, wx
        (G*H, D_l) and wh (G*H, H), read in place (no transposed copies); the backward's weight
        gradients then come in that layout too.
    inference : keep no cache, as PyTorch under ``torch.no_grad()``: the same outputs and
        states, ``cache`` None (no backward), less memory and time.

    Returns
    -------
    out : (T, B, num_dirs * H) (or (B, T, num_dirs * H)), the last layer's outputs.
    h_n : (num_layers * num_dirs, B, H) final hidden states (for the reverse direction:
        the state after reading back to step 0).
    c_n : (num_layers * num_dirs, B, H) final cell states for "lstm", else None.
    cache : :class:`RecurrentCache` for :func:`recurrent_backward` (None with ``inference``).
    """
    op = "recurrent_forward"
    L, nd, p, spec = _check_config(op, mode, num_layers, bidirectional, dropout, activation, reset_after)
    for flag, value in (("training", training), ("inference", inference)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{op}: {flag} must be a bool, got {type(value).__name__}")
    T, B, D = check_sequence(op, x, batch_first)
    batch_first = bool(batch_first)
    dt = x.dtype
    if weight_layout not in ("rnncore", "torch"):
        raise ValueError(f"{op}: weight_layout must be 'rnncore' or 'torch', got {weight_layout!r}")
    transposed = weight_layout == "torch"
    H = _check_weights(op, mode, weights, L, nd, D, dt, transposed)
    state_shape = (L * nd, B, H)
    h0 = _check_state(op, "h0", h0, state_shape, dt)
    if c0 is not None and not spec.has_cell_state:
        raise ValueError(f"{op}: c0 is for {_only(lambda s: s.has_cell_state)} only, got mode={mode!r}")
    c0 = _check_state(op, "c0", c0, state_shape, dt)
    lengths = check_lengths(op, lengths, T, B)
    rev_index = None if lengths is None else _reverse_index(lengths, T)
    use_dropout = bool(training) and p > 0.0 and L > 1
    if use_dropout:
        rng = np.random.default_rng(rng)

    cache = RecurrentCache(mode, L, nd, H, batch_first, dt, x.shape, None, lengths, rev_index)
    h_n = np.empty(state_shape, dt)
    c_n = np.empty(state_shape, dt) if spec.has_cell_state else None
    kw = {"activation": activation} if len(spec.activations) > 1 else {}
    layer_in = x
    for layer in range(L):

        def direction(d, layer_in=layer_in, layer=layer):
            k = layer * nd + d
            wx, wh, b_ih, b_hh = weights[k]
            xin = layer_in if d == 0 else _reverse(layer_in, batch_first, rev_index)
            h0k = None if h0 is None else h0[k]
            if spec.fused_bias:  # the op takes one bias
                b_ih, b_hh = b_ih + b_hh, None
            hs, hk, ck, c = _ops.forward(spec.name, xin, wx, wh, b_ih, b_hh, h0k, None if c0 is None else c0[k],
                                         batch_first=batch_first, lengths=lengths, transposed=transposed,
                                         inference=inference, **kw)
            return (hs if d == 0 else _reverse(hs, batch_first, rev_index)), hk, ck, c

        results = [direction(0)] if nd == 1 else _side_by_side(lambda: direction(0), lambda: direction(1))
        outs = []
        for d, (hs, hk, ck, c) in enumerate(results):
            k = layer * nd + d
            h_n[k] = hk
            if c_n is not None:
                c_n[k] = ck
            cache.caches.append(c)
            outs.append(hs)
        out = outs[0] if nd == 1 else np.concatenate(outs, axis=-1)
        if layer < L - 1:
            mask = None
            if use_dropout:
                keep = 1.0 - p
                mask = (rng.random(out.shape) < keep).astype(dt)
                mask *= dt.type(1.0 / keep)
                out = out * mask
            cache.masks.append(mask)
        layer_in = out
    cache.out_shape = layer_in.shape
    return layer_in, h_n, c_n, (None if inference else cache)


def recurrent_backward(dout: Optional[np.ndarray], cache: RecurrentCache, dh_n: Optional[np.ndarray] = None,
                       dc_n: Optional[np.ndarray] = None
                       ) -> Tuple[np.ndarray, List[Weights], np.ndarray, Optional[np.ndarray]]:
    """Backpropagation through time for :func:`recurrent_forward`.

    Parameters
    ----------
    dout : gradient of ``out`` (its shape and dtype), or None (zeros). Entries past a
        sequence's length are ignored (those outputs are constant zeros).
    cache : the :class:`RecurrentCache` returned by the forward.
    dh_n, dc_n : gradients of ``h_n`` / ``c_n`` ((num_layers * num_dirs, B, H)), or None.

    Returns
    -------
    dx : gradient of x (x's shape).
    dweights : list of ``(dwx, dwh, db_ih, db_hh)`` with the structure of ``weights``, in their
        layout (``weight_layout``); for "rnn" ``db_ih`` and ``db_hh`` are both the gradient of
        the summed bias.
    dh0 : (num_layers * num_dirs, B, H) gradient of h0 (returned even when h0 was None).
    dc0 : the same for c0 ("lstm"), else None.
    """
    op = "recurrent_backward"
    if not isinstance(cache, RecurrentCache):
        raise TypeError(f"{op}: cache must be the RecurrentCache returned by recurrent_forward, "
                        f"got {cache_kind(cache)}")
    mode, L, nd, H, bf, dt = cache.cell, cache.num_layers, cache.num_dirs, cache.hidden_size, cache.batch_first, \
        cache.dtype
    B = cache.x_shape[0 if bf else 1]
    state_shape = (L * nd, B, H)
    dout = grad_input(op, "dout", dout, cache.out_shape, "the shape of out", dt)
    dh_n = grad_input(op, "dh_n", dh_n, state_shape, "(num_layers * num_dirs, B, H)", dt)
    spec = cells.flavours(mode)[0]
    if dc_n is not None and not spec.has_cell_state:
        raise ValueError(f"{op}: dc_n is for {_only(lambda s: s.has_cell_state)} only, got a cache of "
                         f"mode={mode!r}")
    dc_n = grad_input(op, "dc_n", dc_n, state_shape, "(num_layers * num_dirs, B, H)", dt)

    dweights = [None] * (L * nd)
    dh0 = np.empty(state_shape, dt)
    dc0 = np.empty(state_shape, dt) if spec.has_cell_state else None
    dlayer = dout
    for layer in reversed(range(L)):

        def direction(d, layer=layer, dlayer=dlayer):
            k = layer * nd + d
            dhs = None
            if dlayer is not None:
                dhs = dlayer if nd == 1 else np.ascontiguousarray(dlayer[..., d * H:(d + 1) * H])
                if d == 1:
                    dhs = _reverse(dhs, bf, cache.rev_index)
            dhk = None if dh_n is None else dh_n[k]
            dxk, dwx, dwh, db_ih, db_hh, dh0k, dc0k = _ops.backward(
                cache.caches[k], dhs, dhk, None if dc_n is None else dc_n[k])
            dw = (dwx, dwh, db_ih, db_ih.copy() if spec.fused_bias else db_hh)
            return (dxk if d == 0 else _reverse(dxk, bf, cache.rev_index)), dw, dh0k, dc0k

        results = [direction(0)] if nd == 1 else _side_by_side(lambda: direction(0), lambda: direction(1))
        dx = None
        for d, (dxk, dw, dh0k, dc0k) in enumerate(results):
            k = layer * nd + d
            dweights[k] = dw
            dh0[k] = dh0k
            if dc0 is not None:
                dc0[k] = dc0k
            dx = dxk if dx is None else dx + dxk
        if layer > 0:
            mask = cache.masks[layer - 1]
            dlayer = dx if mask is None else dx * mask
        else:
            return dx, dweights, dh0, dc0


def _check_weight_sizes(op, D, H, G, L, nd, dtype) -> None:
    """Weights the kernels can index and this machine can hold (with the float64 draw of the
    largest one), before anything is allocated."""
    widest = max(D, nd * H)
    if G * H > INDEX_LIMIT or widest > INDEX_LIMIT:
        raise ValueError(f"{op}: hidden_size {H} ({G} gate blocks) or input_size {D} exceeds the 32-bit indices "
                         f"of the kernels (at most {INDEX_LIMIT} columns)")
    layer = (widest + H) * G * H + 2 * G * H  # elements of one layer's weights, at most
    need = L * nd * layer * dtype.itemsize + widest * G * H * 8
    have = _memory_bytes()
    if have and need > have:
        raise ValueError(f"{op}: the weights of input_size {D}, hidden_size {H} ({L} layer(s)) need "
                         f"{need / 2**30:.1f} GiB, more than this machine's {have / 2**30:.1f} GiB")


def init_weights(mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 dtype=np.float32, rng=None) -> List[Weights]:
    """Weights for :func:`recurrent_forward`, initialised like PyTorch's.

    Every weight and bias is drawn from ``uniform(-1/sqrt(H), 1/sqrt(H))``. Returns a list of
    ``num_layers * num_dirs`` tuples ``(wx, wh, b_ih, b_hh)`` (C-contiguous, ``dtype``), drawn
    in that order from ``rng`` (a numpy ``Generator`` or seed; default
    ``np.random.default_rng()``).
    """
    op = "init_weights"
    L, nd, _, spec = _check_config(op, mode, num_layers, bidirectional, 0.0, "tanh", True)
    for name, v in (("input_size", input_size), ("hidden_size", hidden_size)):
        check_size(op, name, v)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{op}: dtype must be float32 or float64, got {dtype}")
    H, G = int(hidden_size), spec.gates
    _check_weight_sizes(op, int(input_size), H, G, L, nd, dtype)
    rng = np.random.default_rng(rng)
    s = 1.0 / np.sqrt(H)
    weights = []
    for layer in range(L):
        D = int(input_size) if layer == 0 else nd * H
        for _ in range(nd):
            weights.append(tuple(rng.uniform(-s, s, shape).astype(dtype)
                                 for shape in ((D, G * H), (H, G * H), (G * H,), (G * H,))))
    return weights
