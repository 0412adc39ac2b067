"""rnncore's own layers, in the textbook style: ``params`` and ``grads`` lists, ``forward``
and ``backward``.

Every layer keeps its parameters in ``params`` and same-shaped gradient buffers in
``grads``; ``backward`` overwrites the buffers in place (``g[...] = ...``), so lists built
from them (a model's ``params``/``grads``, an optimizer's state) stay aliased. Sequences are
batch-first, (N, T, ...), unless a layer says otherwise.

- :class:`Embedding` ids (N, T) -> vectors (N, T, D).
- :class:`RNN`, :class:`LSTM`, :class:`GRU` stacked, optionally bidirectional recurrent
  layers over :func:`rnncore.recurrent_forward` (native C++ or the NumPy twin), with
  PyTorch's weight layout (``state_dict``), truncated BPTT (``stateful``) and ``lengths``;
  :class:`Recurrent` the same for any cell of :mod:`rnncore.cells` (``cell="..."``).
- :class:`Linear` time-distributed affine map over the last axis.
- :class:`SoftmaxCrossEntropy` mean cross-entropy over all positions, with ``ignore_index``.
- :class:`LastStep` many-to-one: the state at each sequence's last valid step.
- :class:`Dropout` inverted dropout with its own seeded generator.
- :class:`Sequential` a chain of single-input layers.

Legend: N batch, T time, D input features, H hidden units, V vocabulary / classes.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from . import cells, dense, interop, recurrent
from ._checks import check_real, check_size
from .losses import backward_checked, forward_for_backward

__all__ = ["Embedding", "Recurrent", "RNN", "LSTM", "GRU", "Linear", "SoftmaxCrossEntropy", "LastStep", "Dropout",
           "Sequential"]


def _rng(rng):
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _as_ids(name: str, ids, V: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name}: ids must be integers, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= V):
        raise ValueError(f"{name}: ids must lie in [0, V) = [0, {V}), got min {ids.min()} max {ids.max()}")
    return ids


class Embedding:
    """Lookup table: ids (N, T) (any integer shape) -> ``W[ids]`` (N, T, D).

    ``Embedding(V, D)`` draws W (V, D) from N(0, 0.01^2) (the textbook's ``randn / 100``);
    ``Embedding(weight=W)`` uses the given array itself (no copy). Duplicate ids accumulate
    their gradients. ``backward`` returns None (ids have no gradient).
    """

    def __init__(self, num_embeddings: Optional[int] = None, embedding_dim: Optional[int] = None, *,
                 weight: Optional[np.ndarray] = None, dtype=np.float32, rng=None):
        if weight is None:
            if num_embeddings is None or embedding_dim is None:
                raise ValueError("Embedding: give num_embeddings and embedding_dim, or weight=")
            weight = (_rng(rng).standard_normal((num_embeddings, embedding_dim)) * 0.01).astype(dtype)
        if not isinstance(weight, np.ndarray) or weight.ndim != 2:
            raise ValueError("Embedding: weight must be a 2-D numpy array (V, D)")
        self.params = [weight]
        self.grads = [np.zeros_like(weight)]
        self.param_names = ["weight"]
        self.ids = None

    @property
    def W(self):
        return self.params[0]

    def forward(self, ids):
        W, = self.params
        self.ids = _as_ids("Embedding.forward", ids, W.shape[0])
        return W[self.ids]

    def backward(self, dout):
        dW, = self.grads
        dense.embedding_backward(self.ids, np.asarray(dout, dtype=dW.dtype), dW)  # native scatter-add
        return None


class Recurrent:
    """A stack of recurrent layers of any registered cell (:mod:`rnncore.cells`): arguments
    as :class:`LSTM`, plus ``cell=`` (its name) and the cell's keywords (``activation=``,
    ``reset_after=`` ...). :class:`RNN`, :class:`LSTM` and :class:`GRU` fix the cell."""

    #: the cell's name (:mod:`rnncore.cells`); the subclasses set it
    cell = ""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, stateful: bool = False, batch_first: bool = True, *,
                 cell: Optional[str] = None, dtype=np.float32, rng=None,
                 weights: Optional[Sequence[tuple]] = None, **cell_kw):
        if cell is not None:
            self.cell = cell
        if self.cell not in cells.cells():
            raise ValueError(f"{type(self).__name__}: cell must be one of {cells.cells()}, got {self.cell!r}")
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            check_size(type(self).__name__, name, v)
        for flag, value in (("bidirectional", bidirectional), ("stateful", stateful), ("batch_first", batch_first)):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{type(self).__name__}: {flag} must be a bool, got {type(value).__name__}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1), got {dropout}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bidirectional = int(num_layers), bool(bidirectional)
        self.dropout, self.stateful, self.batch_first = float(dropout), bool(stateful), bool(batch_first)
        self.cell_kw = cell_kw
        self.rng = _rng(rng)
        if weights is None:
            weights = recurrent.init_weights(self.cell, self.input_size, self.hidden_size, self.num_layers,
                                             self.bidirectional, dtype=dtype, rng=self.rng)
        self.weights = [tuple(w) for w in weights]
        if len(self.weights) != self.num_layers * self.num_dirs:
            raise ValueError(f"{type(self).__name__}: expected {self.num_layers * self.num_dirs} weight tuples, "
                             f"got {len(self.weights)}")
        self.params = [a for w in self.weights for a in w]
        self.grads = [np.zeros_like(a) for a in self.params]
        self.param_names = []
        for layer in range(self.num_layers):
            for d in range(self.num_dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                self.param_names += [f"weight_ih{sfx}", f"weight_hh{sfx}", f"bias_ih{sfx}", f"bias_hh{sfx}"]
        self.training = True
        self.h = self.c = None  # carried state (num_layers * num_dirs, N, H) when stateful
        self.dh = self.dc = None  # gradients of the initial state after backward
        self.cache = None

    @property
    def mode(self) -> str:
        """The cell's name (``recurrent_forward``'s word for it)."""
        return self.cell

    @property
    def num_dirs(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def dtype(self):
        return self.params[0].dtype

    def reset_state(self):
        """Forget the carried state: the next forward starts from zeros."""
        self.h = self.c = None

    def set_state(self, h, c=None):
        """Start the next forward from h (and c for LSTM), each (num_layers * num_dirs, N, H)."""
        self.h = None if h is None else np.ascontiguousarray(h, dtype=self.dtype)
        self.c = None if c is None else np.ascontiguousarray(c, dtype=self.dtype)

    def forward(self, xs: np.ndarray, lengths: Optional[np.ndarray] = None, h0: Optional[np.ndarray] = None,
                c0: Optional[np.ndarray] = None, *, inference: bool = False) -> np.ndarray:
        """xs (N, T, D) (or (T, N, D) if not batch_first) -> outputs (N, T, num_dirs * H),
        read-only where they are what the backward reads (one direction): copy to modify.

        ``lengths`` (N,) gives each sequence's valid steps (outputs past them are zero and
        the carried state is the one at the last valid step). ``h0``/``c0`` override the
        carried state for this call. With ``stateful`` the final state is kept for the next
        call; the gradient stops at the chunk boundary (truncated BPTT). ``inference=True``
        keeps no cache (PyTorch's ``torch.no_grad()``): the same outputs, no backward after it.
        """
        if not isinstance(xs, np.ndarray):
            raise TypeError(f"{type(self).__name__}.forward: xs must be a numpy.ndarray")
        xs = np.ascontiguousarray(xs)
        N = xs.shape[0 if self.batch_first else 1] if xs.ndim == 3 else None
        if h0 is None and self.stateful and self.h is not None:
            if self.h.shape[1] != N:
                raise ValueError(f"{type(self).__name__}.forward: the carried state has batch size {self.h.shape[1]} "
                                 f"but xs has {N}; call reset_state() before changing the batch size")
            h0, c0 = self.h, (self.c if c0 is None else c0)
        out, h_n, c_n, self.cache = recurrent.recurrent_forward(
            self.cell, xs, self.weights, h0, c0 if cells.flavours(self.cell)[0].has_cell_state else None,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional, dropout=self.dropout, training=self.training, rng=self.rng,
            batch_first=self.batch_first, lengths=lengths, inference=inference, **self.cell_kw)
        self.h_n, self.c_n = h_n, c_n
        if self.stateful:
            self.h, self.c = h_n, c_n
        return out

    def backward(self, dout: np.ndarray, dh_n: Optional[np.ndarray] = None,
                 dc_n: Optional[np.ndarray] = None) -> np.ndarray:
        """dout (the outputs' shape) -> dxs; writes the weight gradients into ``grads`` and
        the initial state's gradients into ``dh`` / ``dc``."""
        dout = np.ascontiguousarray(dout, dtype=self.dtype)
        dx, dweights, self.dh, self.dc = recurrent.recurrent_backward(dout, self.cache, dh_n, dc_n)
        i = 0
        for dw in dweights:
            for g in dw:
                self.grads[i][...] = g
                i += 1
        return dx

    def state_dict(self, prefix: str = "") -> dict:
        """The weights under PyTorch's names (``weight_ih_l0`` = wx.T, ...), as for
        ``torch.nn.{RNN,LSTM,GRU}.state_dict()``."""
        return interop.to_state_dict(self.cell, self.weights, num_layers=self.num_layers,
                                     bidirectional=self.bidirectional, prefix=prefix)

    def load_state_dict(self, sd: dict, prefix: str = "") -> None:
        """Copy weights in PyTorch's names and layout into this layer (in place)."""
        _, weights, num_layers, bidirectional = interop.from_state_dict(sd, mode=self.cell, prefix=prefix,
                                                                           dtype=self.dtype)
        if (num_layers, bidirectional) != (self.num_layers, self.bidirectional):
            raise ValueError(f"{type(self).__name__}.load_state_dict: state has num_layers={num_layers}, "
                             f"bidirectional={bidirectional}; this layer {self.num_layers}, {self.bidirectional}")
        for mine, theirs in zip(self.weights, weights):
            for a, b in zip(mine, theirs):
                if a.shape != np.shape(b):
                    raise ValueError(f"{type(self).__name__}.load_state_dict: shape {np.shape(b)} != {a.shape}")
                a[...] = b

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}, stateful={self.stateful})")


class RNN(Recurrent):
    """Elman RNN stack: ``h_t = f(x_t W_x + h_{t-1} W_h + b_ih + b_hh)``, f = ``activation``
    ("tanh", "relu", "sigmoid"). Arguments as :class:`LSTM`."""

    cell = "rnn"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, stateful: bool = False, batch_first: bool = True, *,
                 activation: str = "tanh", dtype=np.float32, rng=None, weights: Optional[Sequence[tuple]] = None):
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout, stateful, batch_first,
                         dtype=dtype, rng=rng, weights=weights, activation=activation)


class LSTM(Recurrent):
    """LSTM stack with PyTorch's equations, gate order (i, f, g, o) and weights.

    ``LSTM(input_size, hidden_size, num_layers=1, bidirectional=False, dropout=0.0,
    stateful=False, batch_first=True, *, dtype=float32, rng=None, weights=None)``.
    ``params`` holds, per layer and direction, wx (D, 4H), wh (H, 4H), b_ih, b_hh (4H,)
    (PyTorch's weight_ih/weight_hh transposed). ``dropout`` applies between layers while
    ``training``. The carried state is ``h``, ``c`` (num_layers * num_dirs, N, H).
    """

    cell = "lstm"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, stateful: bool = False, batch_first: bool = True, *,
                 dtype=np.float32, rng=None, weights: Optional[Sequence[tuple]] = None):
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout, stateful, batch_first,
                         dtype=dtype, rng=rng, weights=weights)


class GRU(Recurrent):
    """GRU stack with PyTorch's equations and gate order (r, z, n); ``reset_after=False``
    gives the textbook/Keras flavour. Arguments as :class:`LSTM`."""

    cell = "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, stateful: bool = False, batch_first: bool = True, *,
                 reset_after: bool = True, dtype=np.float32, rng=None, weights: Optional[Sequence[tuple]] = None):
        super().__init__(input_size, hidden_size, num_layers, bidirectional, dropout, stateful, batch_first,
                         dtype=dtype, rng=rng, weights=weights, reset_after=reset_after)


class Linear:
    """Affine map over the last axis, for any leading shape: x (..., D) -> x W + b (..., M).

    W (D, M) is PyTorch's ``nn.Linear.weight`` transposed. ``Linear(D, M)`` draws W from
    N(0, 1/D) and zeros b; or pass ``W=``, ``b=`` (used as given, not copied).
    """

    def __init__(self, in_features: Optional[int] = None, out_features: Optional[int] = None, *,
                 W: Optional[np.ndarray] = None, b: Optional[np.ndarray] = None, bias: bool = True,
                 dtype=np.float32, rng=None):
        if W is None:
            if in_features is None or out_features is None:
                raise ValueError("Linear: give in_features and out_features, or W=")
            in_features = check_size("Linear", "in_features", in_features)
            out_features = check_size("Linear", "out_features", out_features)
            W = (_rng(rng).standard_normal((in_features, out_features)) / np.sqrt(in_features)).astype(dtype)
        elif not isinstance(W, np.ndarray) or W.ndim != 2:
            raise ValueError(f"Linear: W must be a 2-D numpy.ndarray (in_features, out_features), got "
                             f"{type(W).__name__ if not isinstance(W, np.ndarray) else f'shape {W.shape}'}")
        if b is None and bias:
            b = np.zeros(W.shape[1], dtype=W.dtype)
        self.params = [W] if b is None else [W, b]
        self.grads = [np.zeros_like(p) for p in self.params]
        self.param_names = ["weight", "bias"][:len(self.params)]
        self.x = None

    def forward(self, x):
        W = self.params[0]
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[-1] != W.shape[0]:
            raise ValueError(f"Linear.forward: x must have {W.shape[0]} features in its last axis, got {x.shape}")
        self.x = x
        return dense.affine_forward(x, W, self.params[1] if len(self.params) > 1 else None)

    def backward(self, dout):
        bias = len(self.params) > 1
        dx, _, _ = dense.affine_backward(dout, self.x, self.params[0], dW=self.grads[0],
                                         db=self.grads[1] if bias else None, bias=bias)
        return dx


def softmax(x):
    """softmax over the last axis (stable)."""
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class SoftmaxCrossEntropy:
    """Softmax + cross-entropy: scores (..., V), targets (...) ints -> mean loss over every
    position whose target is not ``ignore_index``. ``backward(dout=1)`` returns dscores.
    """

    def __init__(self, ignore_index: int = -1):
        self.params, self.grads = [], []
        self.ignore_index = ignore_index
        self.cache = None

    def forward(self, scores, ts):
        scores = np.asarray(scores)
        ts = np.asarray(ts)
        if ts.dtype.kind not in "iu":
            raise TypeError(f"SoftmaxCrossEntropy.forward: targets must be integers, got dtype {ts.dtype}")
        if ts.shape != scores.shape[:-1]:
            raise ValueError(f"SoftmaxCrossEntropy.forward: targets must have shape {scores.shape[:-1]}, got {ts.shape}")
        scores = np.ascontiguousarray(scores)
        loss, probs, checked = forward_for_backward(scores, ts, self.ignore_index)  # fused, native
        if not checked.count:
            loss = 0.0  # nothing to predict: no loss, no gradient
        self.cache = (probs, checked)
        return float(loss)

    def backward(self, dout=1.0):
        probs, checked = self.cache  # the forward's targets, checked there
        return backward_checked(probs, checked, dout)


class LastStep:
    """Many-to-one head: hs (N, T, H) -> the state at each sequence's last valid step (N, H).

    ``forward(hs, lengths=None)``: step ``lengths[n] - 1`` of sequence n (the last step if
    None). With a bidirectional layer use the forward half here and the layer's ``h_n`` for
    the backward direction, or pool as you like.
    """

    def __init__(self, batch_first: bool = True):
        self.params, self.grads = [], []
        self.batch_first = batch_first
        self.cache = None

    def forward(self, hs, lengths=None):
        hs = np.asarray(hs)
        N, T = (hs.shape[0], hs.shape[1]) if self.batch_first else (hs.shape[1], hs.shape[0])
        if lengths is not None and np.size(lengths) and np.asarray(lengths).dtype.kind not in "iu":
            raise TypeError(f"LastStep.forward: lengths must be integers, got dtype {np.asarray(lengths).dtype}")
        idx = np.full(N, T - 1) if lengths is None else np.asarray(lengths).astype(np.int64) - 1
        if idx.shape != (N,) or (N and (idx.min() < 0 or idx.max() >= T)):
            raise ValueError(f"LastStep.forward: lengths must be (N,) = ({N},) ints in [1, {T}]")
        self.cache = (hs.shape, idx)
        return hs[np.arange(N), idx] if self.batch_first else hs[idx, np.arange(N)]

    def backward(self, dh):
        shape, idx = self.cache
        dhs = np.zeros(shape, dtype=np.asarray(dh).dtype)
        N = len(idx)
        if self.batch_first:
            dhs[np.arange(N), idx] = dh
        else:
            dhs[idx, np.arange(N)] = dh
        return dhs


class Dropout:
    """Inverted dropout: while ``training``, zero each element with probability ``p`` and
    scale the rest by 1 / (1 - p); identity otherwise. Draws from its own generator
    (``rng`` a seed or ``numpy.random.Generator``)."""

    def __init__(self, p: float = 0.5, rng=None):
        p = check_real("Dropout", "p", p)
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.params, self.grads = [], []
        self.p = float(p)
        self.rng = _rng(rng)
        self.training = True
        self.mask = None

    def forward(self, x, train_flg=None):
        training = self.training if train_flg is None else train_flg
        if not training or self.p == 0.0:
            self.mask = None
            return x
        x = np.asarray(x)
        self.mask = (self.rng.random(x.shape) >= self.p).astype(x.dtype) / x.dtype.type(1.0 - self.p)
        return x * self.mask

    def backward(self, dout):
        return dout if self.mask is None else dout * self.mask


class Sequential:
    """Chain single-input layers: ``forward`` runs them in order, ``backward`` in reverse.
    ``params``/``grads`` alias the layers' own lists."""

    def __init__(self, *layers):
        self.layers = list(layers)
        self.params, self.grads, self.param_names = [], [], []
        for k, layer in enumerate(self.layers):
            self.params += layer.params
            self.grads += layer.grads
            names = getattr(layer, "param_names", [f"param{i}" for i in range(len(layer.params))])
            self.param_names += [f"{k}.{n}" for n in names]

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dout):
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def reset_state(self):
        for layer in self.layers:
            if hasattr(layer, "reset_state"):
                layer.reset_state()

    def train(self, mode: bool = True):
        for layer in self.layers:
            if hasattr(layer, "training"):
                layer.training = mode
        return self

    def eval(self):
        return self.train(False)
