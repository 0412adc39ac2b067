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
  step -- as rnncore (and PyTorch's packed sequences) do. Lengths outside [1, T] are not
  checked by the graph; rnncore raises for them.
- Dropout is left out: the graphs are the evaluation-mode forward.
- The LSTM and GRU gate activations are the standard ones; the Elman cell's ``activation``
  ("tanh", "relu", "sigmoid") becomes the RNN operator's ``activations``.
- ``Gather`` takes negative token ids as counted from the end of the vocabulary; rnncore
  raises for any id outside [0, V).
- Stateful (truncated BPTT) use: give ``initial_state=True`` / ``state=True`` to get initial
  state inputs and final state outputs and carry them yourself; without them every run
  starts from zeros.
- float64 weights give a float64 graph (valid ONNX); onnxruntime's CPU provider implements
  the LSTM, GRU and RNN operators in float32 only, so pass ``dtype=np.float32`` to export a
  float64 model for onnxruntime.

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
        """Add an ``op`` node; ``outputs`` a count of fresh names or a list of names. Returns
        the output name (one output) or the list of them."""
        if outputs is None or isinstance(outputs, int):
            outputs = [self.fresh(op.lower()) for _ in range(outputs or 1)]
        while inputs and inputs[-1] == "":  # trailing optional inputs are left out
            inputs = inputs[:-1]
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), list(outputs), name=self.fresh(op), **attrs))
        return outputs[0] if len(outputs) == 1 else list(outputs)

    def input(self, name: str, elem, shape) -> str:
        self.inputs.append(self.onnx.helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, name: str, elem, shape) -> None:
        self.outputs.append(self.onnx.helper.make_tensor_value_info(name, elem, shape))

    def model(self, graph_name: str, doc: str):
        from . import __version__

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

    def blocks(a):  # the gate blocks of a (G*H, ...) array, reordered
        return np.concatenate([a[g * len(a) // len(order):(g + 1) * len(a) // len(order)] for g in order])

    per_layer = []
    for layer in range(num_layers):
        sfx = [f"_l{layer}" + ("_reverse" if d else "") for d in range(num_dirs)]
        W = np.stack([blocks(sd[f"weight_ih{s}"]) for s in sfx])
        R = np.stack([blocks(sd[f"weight_hh{s}"]) for s in sfx])
        B = np.stack([np.concatenate([blocks(sd[f"bias_ih{s}"]), blocks(sd[f"bias_hh{s}"])]) for s in sfx])
        per_layer.append(tuple(a.astype(dtype, copy=False) for a in (W, R, B)))
    return per_layer


# -- graph pieces -----------------------------------------------------------------------------

def _stack(g, mode, layer_weights, x, seq_lens, h0, c0, *, hidden_size, activation, reset_after,
           out_names=(None, None)):
    """The recurrent stack on time-major ``x`` [T, B, D]: returns the last layer's ``Y``
    [T, num_dirs, B, H] and the final states h_n, c_n [num_layers * num_dirs, B, H]
    (c_n None unless LSTM), named ``out_names`` when given."""
    H = hidden_size
    L = len(layer_weights)
    nd = layer_weights[0][0].shape[0]
    attrs = {"hidden_size": H, "direction": "bidirectional" if nd == 2 else "forward"}
    if mode == "rnn":
        attrs["activations"] = [_ACTIVATIONS[activation]] * nd
    if mode == "gru":
        attrs["linear_before_reset"] = 1 if reset_after else 0
    n_out = 3 if mode == "lstm" else 2
    ys, hs, cs = None, [], []
    for layer, (W, R, B) in enumerate(layer_weights):
        if layer > 0:
            x = _merge_directions(g, ys, nd, H, batch_first=False)
        init = [_state_slice(g, s, layer, nd) if s is not None else "" for s in (h0, c0)]
        outputs = n_out
        if L == 1:
            outputs = [g.fresh("y"), out_names[0] or g.fresh("h_n"), out_names[1] or g.fresh("c_n")][:n_out]
        results = g.node(_OP_TYPE[mode], [x, g.const("W", W), g.const("R", R), g.const("B", B), seq_lens or "",
                                          *init[:2 if mode == "lstm" else 1]], outputs, **attrs)
        ys = results[0]
        hs.append(results[1])
        if mode == "lstm":
            cs.append(results[2])
    if L > 1:
        hs = [g.node("Concat", hs, [out_names[0]] if out_names[0] else None, axis=0)]
        if mode == "lstm":
            cs = [g.node("Concat", cs, [out_names[1]] if out_names[1] else None, axis=0)]
    return ys, hs[0], (cs[0] if cs else None)


def _state_slice(g, state, layer, nd):
    """Rows ``layer * nd .. (layer + 1) * nd`` of a [num_layers * num_dirs, B, H] state."""
    return g.node("Slice", [state, g.ints("starts", [layer * nd]), g.ints("ends", [(layer + 1) * nd]),
                            g.ints("axes", [0])])


def _merge_directions(g, y, nd, H, *, batch_first, name=None):
    """ONNX's ``Y`` [T, num_dirs, B, H] -> [T, B, num_dirs*H] (forward direction first), or
    [B, T, num_dirs*H] with ``batch_first``."""
    out = [name] if name else None
    if nd == 1:
        y = g.node("Squeeze", [y, g.ints("axes", [1])], None if batch_first else out)
        return g.node("Transpose", [y], out, perm=[1, 0, 2]) if batch_first else y
    y = g.node("Transpose", [y], perm=[2, 0, 1, 3] if batch_first else [0, 2, 1, 3])
    return g.node("Reshape", [y, g.ints("shape", [0, 0, nd * H])], out)


def _lengths_input(g, with_lengths):
    """The optional ``lengths`` (batch,) int64 input, cast to the int32 ``sequence_lens``."""
    if not with_lengths:
        return None
    onnx = g.onnx
    g.input("lengths", onnx.TensorProto.INT64, [_BATCH])
    return g.node("Cast", ["lengths"], to=onnx.TensorProto.INT32)


def _state_io(g, mode, state_rows, H, with_inputs, with_outputs):
    """Inputs ``h0`` (and ``c0``) and outputs ``h_n`` (and ``c_n``), each
    [num_layers * num_dirs, batch, H]; returns the input names (None where absent)."""
    names = ("h", "c") if mode == "lstm" else ("h",)
    shape = [state_rows, _BATCH, H]
    ins = [g.input(f"{n}0", g.elem, shape) if with_inputs else None for n in names]
    if with_outputs:
        for n in names:
            g.output(f"{n}_n", g.elem, shape)
    return (ins + [None])[:2]


# -- argument checks --------------------------------------------------------------------------

def _check_flag(op, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _export_dtype(op, weights_dtype, dtype):
    if dtype is None:
        return np.dtype(weights_dtype)
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{op}: dtype must be None, float32 or float64, got {dtype!r}") from None
    if dt not in (np.float32, np.float64):
        raise TypeError(f"{op}: dtype must be None, float32 or float64, got {dt}")
    return dt


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
    L, nd, _ = recurrent._check_config(op, mode, num_layers, bidirectional, 0.0, activation, reset_after)
    batch_first = _check_flag(op, "batch_first", batch_first)
    with_lengths = _check_flag(op, "lengths", lengths)
    with_state = _check_flag(op, "initial_state", initial_state)
    if mode == "rnn" and activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
    first = weights[0][0] if isinstance(weights, (list, tuple)) and weights and isinstance(
        weights[0], (list, tuple)) and weights[0] else None
    if not isinstance(first, np.ndarray) or first.ndim != 2:
        raise TypeError(f"{op}: weights must be a list of (wx, wh, b_ih, b_hh) tuples of numpy arrays, "
                        f"wx (D, G*H) first")
    D = first.shape[0]
    H = recurrent._check_weights(op, mode, weights, L, nd, D, first.dtype)
    dt = _export_dtype(op, first.dtype, dtype)
    path = _check_path(op, path)

    g = _Graph(dt)
    time_batch = [_BATCH, _TIME] if batch_first else [_TIME, _BATCH]
    x = g.input("x", g.elem, [*time_batch, D])
    seq_lens = _lengths_input(g, with_lengths)
    h0, c0 = _state_io(g, mode, L * nd, H, with_state, with_outputs=False)
    g.output("y", g.elem, [*time_batch, nd * H])
    _state_io(g, mode, L * nd, H, False, with_outputs=True)
    if batch_first:
        x = g.node("Transpose", [x], perm=[1, 0, 2])
    y, _, _ = _stack(g, mode, _onnx_weights(mode, weights, L, nd, dt), x, seq_lens, h0, c0, hidden_size=H,
                     activation=activation, reset_after=reset_after,
                     out_names=("h_n", "c_n" if mode == "lstm" else None))
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
    from .layers import _Recurrent

    if not isinstance(layer, _Recurrent):
        raise TypeError(f"export_layer: layer must be an rnncore.layers.RNN, LSTM or GRU, got {type(layer).__name__}")
    return export_recurrent(layer.mode, layer.weights, path, num_layers=layer.num_layers,
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
    dt = _export_dtype(op, E.dtype, dtype)
    path = _check_path(op, path)
    V, H, rows = E.shape[0], rnn.hidden_size, rnn.num_layers * rnn.num_dirs

    g = _Graph(dt)
    g.input("tokens", g.onnx.TensorProto.INT64, [_BATCH, _TIME])
    seq_lens = _lengths_input(g, with_lengths)
    h0, c0 = _state_io(g, rnn.mode, rows, H, with_state, with_outputs=False)
    g.output("scores", g.elem, [_BATCH, _TIME, V])
    _state_io(g, rnn.mode, rows, H, False, with_outputs=with_state)
    tokens_tm = g.node("Transpose", ["tokens"], perm=[1, 0])
    x = g.node("Gather", [g.const("embedding", E.astype(dt)), tokens_tm], axis=0)  # [T, B, D]
    names = ("h_n", "c_n" if rnn.mode == "lstm" else None) if with_state else (None, None)
    y, _, _ = _stack(g, rnn.mode, _onnx_weights(rnn.mode, rnn.weights, rnn.num_layers, rnn.num_dirs, dt), x,
                     seq_lens, h0, c0, hidden_size=H, activation=rnn.cell_kw.get("activation", "tanh"),
                     reset_after=rnn.cell_kw.get("reset_after", True), out_names=names)
    hs = _merge_directions(g, y, rnn.num_dirs, H, batch_first=True)  # [B, T, H]
    logits = g.node("MatMul", [hs, g.const("decoder_weight", Wy.astype(dt))])
    g.node("Add", [logits, g.const("decoder_bias", by.astype(dt))], ["scores"])
    cfg = model.config
    doc = (f"rnncore LanguageModel: {cfg['cell']}, {cfg['num_layers']} layer(s), vocab {V}, embed "
           f"{cfg['embed_size']}, hidden {H}; tokens [batch, time] int64 -> scores (logits) [batch, time, vocab]")
    return _save(g.model("rnncore_language_model", doc), path)
