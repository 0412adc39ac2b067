"""ONNX export of rnncore's recurrent stacks, layers and language models.

Three entry points, each returning the ``onnx.ModelProto`` (checked with
``onnx.checker.check_model``) and writing it to ``path`` when one is given:

- :func:`export_recurrent` the weights and configuration of
  :func:`rnncore.recurrent_forward` (several layers, two directions, RNN / LSTM / GRU);
- :func:`export_layer` an :class:`rnncore.layers.RNN` / ``LSTM`` / ``GRU`` layer;
- :func:`export_model` a :class:`rnncore.models.LanguageModel`: ``tokens`` (batch, time)
  int64 -> ``scores`` (batch, time, vocab), the logits ``LanguageModel.predict`` returns.

The graphs use the standard operators of the default ONNX domain at opset :data:`OPSET`
(IR version :data:`IR_VERSION`): one ``RNN`` / ``LSTM`` / ``GRU`` node per layer (both
directions in one node), Transpose / Squeeze / Reshape around them, Slice for each layer's
part of the initial state, Concat for the final states, Gather for the embedding and MatMul
+ Add for the output projection. The batch and time axes are symbolic (``batch``,
``time``), so one graph serves every batch size and sequence length.

Weights are converted, not retrained. rnncore keeps PyTorch's gate order and the
row-vector layout (``wx`` = ``weight_ih.T``); ONNX wants ``W`` [num_dirs, G*H, D] and
``R`` [num_dirs, G*H, H] in PyTorch's (column-vector) orientation with its own gate order
(LSTM i, o, f, c; GRU z, r, h) and ``B`` [num_dirs, 2*G*H] = [Wb, Rb]. PyTorch's GRU (reset
gate applied after the hidden matmul, rnncore's ``reset_after=True``) is
``linear_before_reset=1``; the textbook's reset-before GRU is ``linear_before_reset=0``.

What the graphs compute and where it differs from rnncore (checked against onnxruntime in
tests/test_onnx.py):

- ``lengths`` (an optional int64 (batch,) input, fed to the operators' ``sequence_lens``):
  outputs past a sequence's length are zero, the final states are those at each sequence's
  last valid step and the reverse direction reads each sequence backwards from its own last
  step -- as rnncore (and PyTorch's packed sequences) do. rnncore raises for lengths
  outside [1, T]; onnxruntime rejects those below 0 or above T but runs a length of 0
  (zero outputs and zero final states, even from a given initial state).
- Dropout is left out: the graphs are the evaluation-mode forward.
- The LSTM and GRU gate activations are the standard ones; the Elman cell's ``activation``
  ("tanh", "relu", "sigmoid") becomes the RNN operator's ``activations``.
- Token ids: rnncore raises for any id outside [0, V); onnxruntime's ``Gather`` rejects
  ids >= V but takes a negative id -k as the k-th row from the end of the embedding.
- Stateful (truncated BPTT) use: give ``initial_state=True`` / ``state=True`` to get initial
  state inputs and final state outputs and carry them yourself; without them every run
  starts from zeros.
- float64 weights give a float64 graph (valid ONNX, and it runs in onnx's reference
  evaluator); onnxruntime's CPU provider implements the LSTM, GRU and RNN operators in
  float32 only, so pass ``dtype=np.float32`` to export a float64 model for onnxruntime.

``onnx`` is an optional dependency (``pip install 'rnncore[onnx]'``), imported only by this
module; ``import rnncore`` never loads it.
"""
from __future__ import annotations

import os

import numpy as np

from . import interop, recurrent

__all__ = ["OPSET", "IR_VERSION", "export_recurrent", "export_layer", "export_model", "require"]

#: ONNX operator set of the exported graphs (onnx >= 1.12, onnxruntime >= 1.12)
OPSET = 17
#: ONNX IR version of the exported files (the one introduced with opset 17)
IR_VERSION = 8

#: PyTorch's gate blocks in ONNX's order: LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h
_ONNX_GATES = {"rnn": (0,), "lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}
_OP_TYPE = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
_ACTIVATIONS = {"tanh": "Tanh", "relu": "Relu", "sigmoid": "Sigmoid"}
_BATCH, _TIME = "batch", "time"


def require():
    """The ``onnx`` module; ImportError with the install command when it is missing."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"ONNX export needs the onnx package ({e}); install it with "
                          f"pip install 'rnncore[onnx]'") from None
    return onnx


class _Graph:
    """The nodes, initializers, inputs and outputs of one graph, with unique tensor names."""

    def __init__(self, dtype: np.dtype):
        self.onnx = require()
        self.dtype = np.dtype(dtype)
        self.elem = self.onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.initializers, self.inputs, self.outputs = [], [], [], []
        self._count = {}

    def fresh(self, stem: str) -> str:
        k = self._count.get(stem, 0)
        self._count[stem] = k + 1
        return f"{stem}_{k}"

    def const(self, stem: str, array) -> str:
        name = self.fresh(stem)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, stem: str, values) -> str:
        return self.const(stem, np.asarray(values, dtype=np.int64))

    def node(self, op: str, inputs, outputs=None, **attrs):
        """Add an ``op`` node. ``outputs``: None (one output, a fresh name) or one name --
        that name is returned -- or a list of names, returned as given."""
        single = outputs is None or isinstance(outputs, str)
        names = [outputs or self.fresh(op.lower())] if single else list(outputs)
        while inputs and inputs[-1] == "":  # trailing optional inputs are left out
            inputs = inputs[:-1]
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), names, name=self.fresh(op), **attrs))
        return names[0] if single else names

    def input(self, name: str, elem, shape) -> str:
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem, shape) -> None:
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, elem, shape))

    def model(self, graph_name: str, doc: str):
        from ._version import __version__

        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, self.initializers)
        model = helper.make_model(graph, producer_name="rnncore", producer_version=__version__, doc_string=doc,
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        self.onnx.checker.check_model(model, full_check=True)
        return model


# -- weights ----------------------------------------------------------------------------------

def _onnx_weights(mode, weights, num_layers, num_dirs, dtype):
    """Per layer, ONNX's ``(W, R, B)``: W [num_dirs, G*H, D_l], R [num_dirs, G*H, H],
    B [num_dirs, 2*G*H], gate blocks in ONNX's order, from rnncore's weight tuples (via
    :func:`rnncore.interop.to_state_dict`, which gives PyTorch's orientation)."""
    sd = interop.to_state_dict(mode, weights, num_layers=num_layers, bidirectional=num_dirs == 2)
    order = _ONNX_GATES[mode]

    def blocks(a):  # a's G gate blocks (rows) in ONNX's order
        parts = np.split(a, len(order))
        return np.concatenate([parts[i] for i in order])

    per_layer = []
    for layer in range(num_layers):
        sfx = [f"_l{layer}" + ("_reverse" if d else "") for d in range(num_dirs)]
        W = np.stack([blocks(sd[f"weight_ih{s}"]) for s in sfx])
        R = np.stack([blocks(sd[f"weight_hh{s}"]) for s in sfx])
        B = np.stack([np.concatenate([blocks(sd[f"bias_ih{s}"]), blocks(sd[f"bias_hh{s}"])]) for s in sfx])
        per_layer.append(tuple(a.astype(dtype, copy=False) for a in (W, R, B)))
    return per_layer


# -- graph pieces -----------------------------------------------------------------------------

def _stack(g, mode, weights, num_layers, num_dirs, H, x, seq_lens, h0, c0, *, activation, reset_after,
           final_states=None):
    """The recurrent stack (rnncore's ``weights``, checked) on time-major ``x`` [T, B, D];
    returns the last layer's ``Y`` [T, num_dirs, B, H]. ``h0``/``c0`` are
    [num_layers * num_dirs, B, H] state tensors or None (zeros). ``final_states`` names the
    outputs that receive the final states [num_layers * num_dirs, B, H]: ``("h_n",)``, or
    ``("h_n", "c_n")`` for LSTM; None leaves them out."""
    L, nd = num_layers, num_dirs
    layer_weights = _onnx_weights(mode, weights, L, nd, g.dtype)
    attrs = {"hidden_size": H, "direction": "bidirectional" if nd == 2 else "forward"}
    if mode == "rnn":
        attrs["activations"] = [_ACTIVATIONS[activation]] * nd
    if mode == "gru":
        attrs["linear_before_reset"] = 1 if reset_after else 0
    states = (h0, c0) if mode == "lstm" else (h0,)
    per_layer = []  # each layer's final-state outputs [num_dirs, B, H]
    y = None
    for layer, (W, R, B) in enumerate(layer_weights):
        if layer > 0:
            x = _merge_directions(g, y, nd, H, batch_first=False)
        init = [_state_slice(g, s, layer, nd) if s is not None else "" for s in states]
        if final_states is None:
            finals = []  # the operator's optional state outputs are left out
        elif L == 1:
            finals = list(final_states)
        else:
            finals = [g.fresh(n) for n in final_states]
        y, *_ = g.node(_OP_TYPE[mode], [x, g.const("W", W), g.const("R", R), g.const("B", B), seq_lens or "", *init],
                       [g.fresh("y"), *finals], **attrs)
        per_layer.append(finals)
    if final_states is not None and L > 1:
        for k, name in enumerate(final_states):
            g.node("Concat", [finals[k] for finals in per_layer], name, axis=0)
    return y


def _state_slice(g, state, layer, nd):
    """Rows ``layer * nd .. (layer + 1) * nd`` of a [num_layers * num_dirs, B, H] state."""
    return g.node("Slice", [state, g.ints("starts", [layer * nd]), g.ints("ends", [(layer + 1) * nd]),
                            g.ints("axes", [0])])


def _merge_directions(g, y, nd, H, *, batch_first, name=None):
    """ONNX's ``Y`` [T, num_dirs, B, H] -> [T, B, num_dirs*H] (forward direction first), or
    [B, T, num_dirs*H] with ``batch_first``; the result is named ``name`` when given."""
    if nd == 1:
        if not batch_first:
            return g.node("Squeeze", [y, g.ints("axes", [1])], name)
        return g.node("Transpose", [g.node("Squeeze", [y, g.ints("axes", [1])])], name, perm=[1, 0, 2])
    y = g.node("Transpose", [y], perm=[2, 0, 1, 3] if batch_first else [0, 2, 1, 3])
    return g.node("Reshape", [y, g.ints("shape", [0, 0, nd * H])], name)


def _lengths_input(g, with_lengths):
    """The optional ``lengths`` (batch,) int64 input, cast to the int32 ``sequence_lens``."""
    if not with_lengths:
        return None
    onnx = g.onnx
    g.input("lengths", onnx.TensorProto.INT64, [_BATCH])
    return g.node("Cast", ["lengths"], to=onnx.TensorProto.INT32)


def _state_names(mode):
    return ("h", "c") if mode == "lstm" else ("h",)


def _state_inputs(g, mode, rows, H):
    """Inputs ``h0`` (and ``c0`` for LSTM), each [rows, batch, H]; returns (h0, c0 or None)."""
    names = [g.input(f"{n}0", g.elem, [rows, _BATCH, H]) for n in _state_names(mode)]
    return (names + [None])[:2]


def _state_outputs(g, mode, rows, H):
    """Outputs ``h_n`` (and ``c_n`` for LSTM), each [rows, batch, H]; returns their names."""
    names = tuple(f"{n}_n" for n in _state_names(mode))
    for n in names:
        g.output(n, g.elem, [rows, _BATCH, H])
    return names


# -- argument checks --------------------------------------------------------------------------

def _check_flag(op, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _export_dtype(op, weights_dtype, dtype):
    if dtype is None:
        if np.dtype(weights_dtype) not in (np.float32, np.float64):
            raise TypeError(f"{op}: weights must be float32 or float64 (as rnncore runs them), got {weights_dtype}")
        return np.dtype(weights_dtype)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: dtype must be None, float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{op}: dtype must be None, float32 or float64, got {dt}")
    return dt


def _first_wx(op, weights):
    """``weights[0][0]``, the first layer's wx, whose rows give D and whose dtype the rest
    must share (:func:`rnncore.recurrent._check_weights` checks them all)."""
    try:
        wx = weights[0][0]
    except (TypeError, IndexError, KeyError):
        wx = None
    if not isinstance(weights, (list, tuple)) or not isinstance(wx, np.ndarray) or wx.ndim != 2:
        raise TypeError(f"{op}: weights must be a list of (wx, wh, b_ih, b_hh) tuples of numpy arrays "
                        f"(wx (D, G*H) first), got {type(weights).__name__}")
    return wx


def _check_path(op, path):
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{op}: path must be None or a file path, got {type(path).__name__}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{op}: path {path!r}: folder {folder!r} does not exist")
    return path


def _save(model, path):
    if path is not None:
        require().save_model(model, path)
    return model


# -- the public API ---------------------------------------------------------------------------

def export_recurrent(mode, weights, path=None, *, num_layers=1, bidirectional=False, batch_first=False,
                     activation="tanh", reset_after=True, lengths=False, initial_state=False, dtype=None):
    """Export a recurrent stack, given as for :func:`rnncore.recurrent_forward`, to ONNX.

    Parameters
    ----------
    mode, weights, num_layers, bidirectional, batch_first, activation, reset_after :
        as for :func:`rnncore.recurrent_forward` (``weights`` a list of ``num_layers *
        num_dirs`` tuples ``(wx, wh, b_ih, b_hh)`` in PyTorch's gate order, index
        ``layer * num_dirs + direction``).
    path : file to write the model to, or None (only return it).
    lengths : add the input ``lengths`` (batch,) int64, each sequence's valid steps in
        [1, time] (rnncore's ``lengths=``); without it every sequence has ``time`` steps.
    initial_state : add the inputs ``h0`` (and ``c0`` for LSTM), each
        [num_layers * num_dirs, batch, H]; without them the state starts at zeros.
    dtype : float32 or float64 to convert the weights to; default their own dtype.

    Returns
    -------
    onnx.ModelProto with inputs ``x`` ([time, batch, D], or [batch, time, D] with
    ``batch_first``; the graph's float type), then ``lengths``, ``h0``, ``c0`` as
    requested, and outputs ``y`` (x's layout with num_dirs * H features: forward
    direction first), ``h_n`` (and ``c_n``), like ``recurrent_forward``'s out, h_n, c_n.
    """
    op = "export_recurrent"
    L, nd, _, _ = recurrent._check_config(op, mode, num_layers, bidirectional, 0.0, activation, reset_after)
    if mode not in _ONNX_GATES:  # a registered cell of one's own: ONNX has no operator for it
        raise ValueError(f"{op}: ONNX has operators for the cells {tuple(_ONNX_GATES)} only, got mode={mode!r}")
    batch_first = _check_flag(op, "batch_first", batch_first)
    with_lengths = _check_flag(op, "lengths", lengths)
    with_state = _check_flag(op, "initial_state", initial_state)
    if mode == "rnn" and activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
    wx0 = _first_wx(op, weights)
    D = wx0.shape[0]
    H = recurrent._check_weights(op, mode, weights, L, nd, D, wx0.dtype)
    g = _Graph(_export_dtype(op, wx0.dtype, dtype))
    path = _check_path(op, path)

    time_batch = [_BATCH, _TIME] if batch_first else [_TIME, _BATCH]
    x = g.input("x", g.elem, [*time_batch, D])
    seq_lens = _lengths_input(g, with_lengths)
    h0, c0 = _state_inputs(g, mode, L * nd, H) if with_state else (None, None)
    g.output("y", g.elem, [*time_batch, nd * H])
    final_states = _state_outputs(g, mode, L * nd, H)
    if batch_first:
        x = g.node("Transpose", [x], perm=[1, 0, 2])
    y = _stack(g, mode, weights, L, nd, H, x, seq_lens, h0, c0, activation=activation, reset_after=reset_after,
               final_states=final_states)
    _merge_directions(g, y, nd, H, batch_first=batch_first, name="y")
    flavour = "" if mode != "gru" else (" (reset after)" if reset_after else " (reset before)")
    doc = (f"rnncore {mode}{flavour}: {L} layer(s), {'bidirectional' if nd == 2 else 'unidirectional'}, "
           f"D={D}, H={H}, {'batch-first' if batch_first else 'time-major'}")
    return _save(g.model(f"rnncore_{mode}", doc), path)


def export_layer(layer, path=None, *, lengths=False, initial_state=False, dtype=None):
    """Export an :class:`rnncore.layers.RNN`, ``LSTM`` or ``GRU`` layer (its weights,
    layers, directions, layout and cell options) to ONNX; see :func:`export_recurrent`
    for ``path``, ``lengths``, ``initial_state``, ``dtype`` and the graph's inputs and
    outputs. A stateful layer's carried state is not part of the graph: feed it as ``h0``
    (``c0``) with ``initial_state=True``. Dropout is left out (evaluation mode)."""
    from .layers import Recurrent

    if not isinstance(layer, Recurrent):
        raise TypeError(f"export_layer: layer must be an rnncore.layers.RNN, LSTM or GRU, got {type(layer).__name__}")
    return export_recurrent(layer.cell, layer.weights, path, num_layers=layer.num_layers,
                            bidirectional=layer.bidirectional, batch_first=layer.batch_first, lengths=lengths,
                            initial_state=initial_state, dtype=dtype, **layer.cell_kw)


def export_model(model, path=None, *, lengths=False, state=False, dtype=None):
    """Export a :class:`rnncore.models.LanguageModel` to ONNX.

    The graph maps ``tokens`` [batch, time] int64 (ids in [0, vocab)) to ``scores``
    [batch, time, vocab] in the model's float type: the logits (before softmax) that
    ``model.predict(tokens)`` returns from a fresh state in evaluation mode. Embedding
    (Gather), the recurrent stack, the output projection (MatMul + Add).

    Parameters
    ----------
    model : the LanguageModel (e.g. ``LanguageModel.load("model.npz")``).
    path : file to write the model to, or None (only return it).
    lengths : add the input ``lengths`` (batch,) int64, as ``predict(tokens, lengths)``:
        past a sequence's length the recurrent output is zero (so the scores there are the
        output bias).
    state : add the inputs ``h0`` (and ``c0`` for LSTM) and the outputs ``h_n`` (and
        ``c_n``), each [num_layers, batch, H], to carry the state from one call to the next
        (as the stateful model does between ``predict`` calls).
    dtype : float32 or float64 to convert the weights to; default the model's dtype.
    """
    from .models import LanguageModel

    op = "export_model"
    if not isinstance(model, LanguageModel):
        raise TypeError(f"{op}: model must be an rnncore.models.LanguageModel, got {type(model).__name__}")
    with_lengths = _check_flag(op, "lengths", lengths)
    with_state = _check_flag(op, "state", state)
    rnn = model.rnn
    E = model.embed.params[0]
    Wy, by = model.linear.params
    g = _Graph(_export_dtype(op, E.dtype, dtype))
    path = _check_path(op, path)
    V, H, rows = E.shape[0], rnn.hidden_size, rnn.num_layers * rnn.num_dirs

    g.input("tokens", g.onnx.TensorProto.INT64, [_BATCH, _TIME])
    seq_lens = _lengths_input(g, with_lengths)
    h0, c0 = _state_inputs(g, rnn.cell, rows, H) if with_state else (None, None)
    g.output("scores", g.elem, [_BATCH, _TIME, V])
    final_states = _state_outputs(g, rnn.cell, rows, H) if with_state else None
    tokens_tm = g.node("Transpose", ["tokens"], perm=[1, 0])
    x = g.node("Gather", [g.const("embedding", E.astype(g.dtype)), tokens_tm], axis=0)  # [T, B, D]
    y = _stack(g, rnn.cell, rnn.weights, rnn.num_layers, rnn.num_dirs, H, x, seq_lens, h0, c0,
               activation=rnn.cell_kw.get("activation", "tanh"), reset_after=rnn.cell_kw.get("reset_after", True),
               final_states=final_states)
    hs = _merge_directions(g, y, rnn.num_dirs, H, batch_first=True)  # [B, T, H]
    logits = g.node("MatMul", [hs, g.const("decoder_weight", Wy.astype(g.dtype))])
    g.node("Add", [logits, g.const("decoder_bias", by.astype(g.dtype))], "scores")
    cfg = model.config
    doc = (f"rnncore LanguageModel: {cfg['cell']}, {cfg['num_layers']} layer(s), vocab {V}, embed "
           f"{cfg['embed_size']}, hidden {H}; tokens [batch, time] int64 -> scores (logits) [batch, time, vocab]")
    return _save(g.model("rnncore_language_model", doc), path)
