"""ONNX export (rnncore.onnx, ``rnncore export``): the graphs run in onnxruntime and give
rnncore's outputs.

float32 graphs run in onnxruntime and are compared with rnncore's forward with a tolerance
scaled to each tensor. onnxruntime's CPU provider has no float64 RNN/LSTM/GRU kernels, so
float64 graphs are run in onnx's own reference evaluator (which ignores ``sequence_lens``
and knows only the Tanh activation for RNN: those cases are covered in float32 only).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import rnncore  # noqa: E402
from rnncore import onnx as rnncore_onnx  # noqa: E402
from rnncore.cli import main  # noqa: E402
from rnncore.layers import GRU, LSTM, RNN  # noqa: E402
from rnncore.models import LanguageModel  # noqa: E402

from helpers import CELLS, assert_close  # noqa: E402

#: |onnxruntime - rnncore| <= K32 * max|rnncore| (float32); K64 for the float64 reference runs
K32, K64 = 2e-5, 1e-12


def subprocess_env():
    """The environment for ``python -m rnncore`` in a subprocess: this rnncore, one thread."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(rnncore.__file__)))
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # the negative tests' expected kernel errors stay off stderr
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run(model, **feeds):
    s = session(model)
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def case_arrays(rng, cell, D, H, L, nd, T, B, batch_first, dtype=np.float32):
    weights = rnncore.init_weights(cell, D, H, L, nd == 2, dtype=dtype, rng=rng)
    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D)).astype(dtype)
    h0 = rng.standard_normal((L * nd, B, H)).astype(dtype)
    c0 = rng.standard_normal((L * nd, B, H)).astype(dtype) if cell == "lstm" else None
    return weights, x, h0, c0


# -- the recurrent stacks ---------------------------------------------------------------------

@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name,cell,kw", CELLS, ids=[c[0] for c in CELLS])
def test_stack_with_lengths_and_initial_state_matches_rnncore(name, cell, kw, bidirectional, batch_first,
                                                              num_layers, rng):
    T, B, D, H = 7, 5, 4, 6
    nd = 2 if bidirectional else 1
    weights, x, h0, c0 = case_arrays(rng, cell, D, H, num_layers, nd, T, B, batch_first)
    lengths = np.array([7, 3, 1, 5, 6])
    model = rnncore_onnx.export_recurrent(cell, weights, num_layers=num_layers, bidirectional=bidirectional,
                                          batch_first=batch_first, lengths=True, initial_state=True, **kw)
    feeds = {"x": x, "lengths": lengths.astype(np.int64), "h0": h0}
    if c0 is not None:
        feeds["c0"] = c0
    got = run(model, **feeds)
    out, h_n, c_n, _ = rnncore.recurrent_forward(cell, x, weights, h0, c0, num_layers=num_layers,
                                                 bidirectional=bidirectional, batch_first=batch_first,
                                                 lengths=lengths, **kw)
    assert_close(got["y"], out, K32, "y")
    assert_close(got["h_n"], h_n, K32, "h_n")
    assert_close(got.get("c_n"), c_n, K32, "c_n")
    y = got["y"] if batch_first else got["y"].transpose(1, 0, 2)
    for b, n in enumerate(lengths):  # past each length: exact zeros, before it: not (relu may give 0)
        assert np.all(y[b, n:] == 0)
        assert name == "rnn-relu" or np.all(np.any(y[b, :n] != 0, axis=-1))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("name,cell,kw", CELLS, ids=[c[0] for c in CELLS])
def test_stack_from_zero_state_over_full_length(name, cell, kw, bidirectional, rng):
    T, B, D, H = 6, 3, 5, 4
    nd = 2 if bidirectional else 1
    weights, x, _, _ = case_arrays(rng, cell, D, H, 2, nd, T, B, False)
    model = rnncore_onnx.export_recurrent(cell, weights, num_layers=2, bidirectional=bidirectional, **kw)
    assert [i.name for i in model.graph.input] == ["x"]
    got = run(model, x=x)
    out, h_n, c_n, _ = rnncore.recurrent_forward(cell, x, weights, num_layers=2, bidirectional=bidirectional, **kw)
    assert_close(got["y"], out, K32, "y")
    assert_close(got["h_n"], h_n, K32, "h_n")
    assert_close(got.get("c_n"), c_n, K32, "c_n")


@settings(max_examples=30, deadline=None, derandomize=True)
@given(case=st.tuples(st.sampled_from(range(len(CELLS))), st.integers(1, 3), st.booleans(), st.booleans(),
                      st.integers(1, 6), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5),
                      st.integers(0, 2**32 - 1)))
def test_random_configurations_match_rnncore(case):
    """Sizes down to 1 (T, B, D, H), any lengths in [1, T], initial states or zeros."""
    k, L, bidirectional, batch_first, T, B, D, H, seed = case
    name, cell, kw = CELLS[k]
    rng = np.random.default_rng(seed)
    nd = 2 if bidirectional else 1
    weights, x, h0, c0 = case_arrays(rng, cell, D, H, L, nd, T, B, batch_first)
    lengths = rng.integers(1, T + 1, B)
    if rng.random() < 0.5:
        h0 = c0 = None
    model = rnncore_onnx.export_recurrent(cell, weights, num_layers=L, bidirectional=bidirectional,
                                          batch_first=batch_first, lengths=True, initial_state=h0 is not None, **kw)
    feeds = {"x": x, "lengths": lengths, **({"h0": h0} if h0 is not None else {}),
             **({"c0": c0} if c0 is not None else {})}
    got = run(model, **feeds)
    out, h_n, c_n, _ = rnncore.recurrent_forward(cell, x, weights, h0, c0, num_layers=L, bidirectional=bidirectional,
                                                 batch_first=batch_first, lengths=lengths, **kw)
    assert_close(got["y"], out, K32, f"y {name}")
    assert_close(got["h_n"], h_n, K32, f"h_n {name}")
    assert_close(got.get("c_n"), c_n, K32, f"c_n {name}")


def test_reverse_direction_reads_each_sequence_from_its_own_end(rng):
    """The reverse half of a padded sequence equals the reverse half of the unpadded one."""
    T, D, H = 6, 3, 4
    weights = rnncore.init_weights("lstm", D, H, 1, True, rng=rng)
    model = rnncore_onnx.export_recurrent("lstm", weights, bidirectional=True, lengths=True)
    s = session(model)
    x = rng.standard_normal((T, 1, D)).astype(np.float32)
    padded = s.run(None, {"x": x, "lengths": np.array([4])})
    alone = s.run(None, {"x": x[:4].copy(), "lengths": np.array([4])})
    np.testing.assert_allclose(padded[0][:4], alone[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(padded[1], alone[1], rtol=0, atol=1e-6)
    assert np.all(padded[0][4:] == 0)


def test_one_graph_serves_every_batch_size_and_length(rng):
    weights = rnncore.init_weights("gru", 3, 5, 2, True, rng=rng)
    model = rnncore_onnx.export_recurrent("gru", weights, num_layers=2, bidirectional=True, batch_first=True,
                                          lengths=True)
    assert dims(model.graph.input[0]) == ["batch", "time", 3]
    assert dims(model.graph.input[1]) == ["batch"]
    assert dims(model.graph.output[0]) == ["batch", "time", 10]
    assert dims(model.graph.output[1]) == [4, "batch", 5]
    s = session(model)
    for B, T in ((1, 1), (4, 9), (2, 3), (7, 2)):
        x = rng.standard_normal((B, T, 3)).astype(np.float32)
        lengths = rng.integers(1, T + 1, B)
        y, h_n = s.run(None, {"x": x, "lengths": lengths})
        out, ref_h, _, _ = rnncore.recurrent_forward("gru", x, weights, num_layers=2, bidirectional=True,
                                                     batch_first=True, lengths=lengths)
        assert_close(y, out, K32, f"y B={B} T={T}")
        assert_close(h_n, ref_h, K32, f"h_n B={B} T={T}")


#: the reference evaluator's RNN knows only Tanh
REFERENCE_CELLS = [c for c in CELLS if c[0] not in ("rnn-relu", "rnn-sigmoid")]


@pytest.mark.parametrize("name,cell,kw", REFERENCE_CELLS, ids=[c[0] for c in REFERENCE_CELLS])
def test_float64_graph_matches_in_the_onnx_reference_evaluator(name, cell, kw, rng):
    from onnx.reference import ReferenceEvaluator

    weights, x, h0, c0 = case_arrays(rng, cell, 4, 3, 2, 2, 5, 3, True, dtype=np.float64)
    model = rnncore_onnx.export_recurrent(cell, weights, num_layers=2, bidirectional=True, batch_first=True,
                                          initial_state=True, **kw)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    feeds = {"x": x, "h0": h0, **({"c0": c0} if c0 is not None else {})}
    y, h_n, *c_n = ReferenceEvaluator(model).run(None, feeds)
    out, ref_h, ref_c, _ = rnncore.recurrent_forward(cell, x, weights, h0, c0, num_layers=2, bidirectional=True,
                                                     batch_first=True, **kw)
    assert_close(y, out, K64, "y")
    assert_close(h_n, ref_h, K64, "h_n")
    assert_close(c_n[0] if c_n else None, ref_c, K64, "c_n")


def test_float64_weights_export_as_float32_for_onnxruntime(rng):
    weights, x, _, _ = case_arrays(rng, "lstm", 4, 3, 2, 1, 5, 2, False, dtype=np.float64)
    double = rnncore_onnx.export_recurrent("lstm", weights, num_layers=2)
    try:  # onnxruntime 1.16 .. 1.32 have no double kernels for these operators
        got64 = run(double, x=x)
    except Exception as e:  # noqa: BLE001 -- onnxruntime raises its own exception types
        assert "double" in str(e) or "NOT_IMPLEMENTED" in str(e), e
    else:
        out = rnncore.recurrent_forward("lstm", x, weights, num_layers=2)[0]
        assert_close(got64["y"], out, K64, "y")
    single = rnncore_onnx.export_recurrent("lstm", weights, num_layers=2, dtype=np.float32)
    got = run(single, x=x.astype(np.float32))
    out = rnncore.recurrent_forward("lstm", x, weights, num_layers=2)[0]
    assert_close(got["y"].astype(np.float64), out, K32, "y")


def test_weights_are_converted_to_onnx_layout_and_gate_order(rng):
    H, D = 2, 3
    to_array = onnx.numpy_helper.to_array
    for cell, order, kw in (("lstm", (0, 3, 1, 2), {}), ("gru", (1, 0, 2), {"reset_after": False}),
                            ("rnn", (0,), {"activation": "relu"})):
        (wx, wh, b_ih, b_hh), = weights = rnncore.init_weights(cell, D, H, rng=rng)
        model = rnncore_onnx.export_recurrent(cell, weights, **kw)
        init = {t.name: to_array(t) for t in model.graph.initializer}
        node = model.graph.node[0]
        assert node.op_type == {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
        W, R, B = (init[name] for name in node.input[1:4])
        blk = [slice(g * H, (g + 1) * H) for g in order]
        np.testing.assert_array_equal(W[0], np.concatenate([wx[:, s].T for s in blk]))
        np.testing.assert_array_equal(R[0], np.concatenate([wh[:, s].T for s in blk]))
        np.testing.assert_array_equal(B[0], np.concatenate([b_ih[s] for s in blk] + [b_hh[s] for s in blk]))
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["hidden_size"] == H and attrs["direction"] == b"forward"
        if cell == "gru":
            assert attrs["linear_before_reset"] == 0
        if cell == "rnn":
            assert attrs["activations"] == [b"Relu"]


def test_model_metadata_checker_and_saved_file(tmp_path, rng):
    weights = rnncore.init_weights("gru", 3, 4, rng=rng)
    path = tmp_path / "gru.onnx"
    model = rnncore_onnx.export_recurrent("gru", weights, path)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", rnncore_onnx.OPSET)]
    assert model.ir_version == rnncore_onnx.IR_VERSION and model.producer_name == "rnncore"
    onnx.checker.check_model(model, full_check=True)
    assert onnx.load(str(path)).SerializeToString() == model.SerializeToString()
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in model.graph.node[0].attribute}
    assert attrs["linear_before_reset"] == 1  # PyTorch's GRU


# -- layers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: RNN(4, 5, 2, bidirectional=True, dropout=0.3, activation="relu", rng=1),
    lambda: LSTM(4, 5, 3, batch_first=False, rng=2),
    lambda: GRU(4, 5, 2, bidirectional=True, reset_after=False, rng=3),
    lambda: GRU(4, 5, 1, stateful=True, rng=4),
], ids=["rnn-relu-bi-dropout", "lstm-3-time-major", "gru-reset-before-bi", "gru-stateful"])
def test_layer_export_matches_eval_forward(make, rng):
    layer = make()
    layer.training = False  # the graph is the evaluation-mode forward (no dropout)
    N, T = 4, 6
    xs = rng.standard_normal((N, T, 4) if layer.batch_first else (T, N, 4)).astype(np.float32)
    lengths = np.array([6, 2, 5, 1])
    rows = layer.num_layers * layer.num_dirs
    h0 = rng.standard_normal((rows, N, 5)).astype(np.float32)
    c0 = h0[::-1].copy() if layer.mode == "lstm" else None
    model = rnncore_onnx.export_layer(layer, lengths=True, initial_state=True)
    feeds = {"x": xs, "lengths": lengths, "h0": h0, **({"c0": c0} if c0 is not None else {})}
    got = run(model, **feeds)
    ref = layer.forward(xs, lengths=lengths, h0=h0, c0=c0)
    assert_close(got["y"], ref, K32, "y")
    assert_close(got["h_n"], layer.h_n, K32, "h_n")
    assert_close(got.get("c_n"), layer.c_n, K32, "c_n")


# -- the language model -----------------------------------------------------------------------

def lm_scores(model, tokens, lengths=None):
    """What ``predict`` returns from a fresh state in evaluation mode."""
    model.eval()
    model.reset_state()
    return model.predict(tokens, lengths=lengths)


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("lstm", 2), ("gru", 2), ("rnn", 1)])
def test_language_model_scores_match_predict(cell, layers, rng):
    model = LanguageModel(13, 8, embed_size=5, num_layers=layers, cell=cell, dropout=0.2, seed=7)
    proto = rnncore_onnx.export_model(model)
    assert [i.name for i in proto.graph.input] == ["tokens"]
    assert dims(proto.graph.input[0]) == ["batch", "time"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert [o.name for o in proto.graph.output] == ["scores"] and dims(proto.graph.output[0]) == ["batch", "time", 13]
    s = session(proto)
    for B, T in ((1, 1), (3, 8), (5, 2)):
        tokens = rng.integers(0, 13, (B, T))
        scores, = s.run(None, {"tokens": tokens})
        assert_close(scores, lm_scores(model, tokens), K32, f"scores B={B} T={T}")


def test_language_model_with_lengths(rng):
    model = LanguageModel(11, 6, embed_size=4, num_layers=2, cell="gru", seed=3)
    s = session(rnncore_onnx.export_model(model, lengths=True))
    tokens = rng.integers(0, 11, (4, 7))
    lengths = np.array([7, 1, 4, 6])
    scores, = s.run(None, {"tokens": tokens, "lengths": lengths})
    assert_close(scores, lm_scores(model, tokens, lengths), K32, "scores")
    bias = model.linear.params[1]
    np.testing.assert_allclose(scores[1, 1:], np.broadcast_to(bias, (6, 11)), rtol=0, atol=1e-7)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_language_model_state_carries_across_calls(cell, rng):
    model = LanguageModel(9, 6, embed_size=4, num_layers=2, cell=cell, seed=5)
    proto = rnncore_onnx.export_model(model, state=True)
    names = ["h", "c"] if cell == "lstm" else ["h"]
    assert [i.name for i in proto.graph.input] == ["tokens"] + [f"{n}0" for n in names]
    assert [o.name for o in proto.graph.output] == ["scores"] + [f"{n}_n" for n in names]
    s = session(proto)
    a, b = rng.integers(0, 9, (3, 5)), rng.integers(0, 9, (3, 4))
    state = {f"{n}0": np.zeros((2, 3, 6), np.float32) for n in names}
    model.eval()
    model.reset_state()
    for chunk in (a, b):  # the stateful model continues the text; so does the graph, fed its own state
        scores, *final = s.run(None, {"tokens": chunk, **state})
        assert_close(scores, model.predict(chunk), K32, "scores")
        for n, got, ref in zip(names, final, model.get_state()):
            assert_close(got, ref, K32, f"{n}_n")
        state = {f"{n}0": v for n, v in zip(names, final)}


def test_language_model_float64_exports_as_float32(rng):
    model = LanguageModel(10, 5, embed_size=3, cell="lstm", dtype=np.float64, seed=2)
    proto = rnncore_onnx.export_model(model, dtype="float32")
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    tokens = rng.integers(0, 10, (2, 6))
    scores, = session(proto).run(None, {"tokens": tokens})
    assert_close(scores.astype(np.float64), lm_scores(model, tokens), K32, "scores")


def test_token_ids_in_onnxruntime_where_rnncore_raises():
    """As documented: an id >= V is an error, a negative id -k is the k-th from the end."""
    model = LanguageModel(7, 4, embed_size=3, seed=1)
    s = session(rnncore_onnx.export_model(model))
    with pytest.raises(Exception, match="out of"):
        s.run(None, {"tokens": np.array([[1, 7]])})
    with pytest.raises(ValueError, match="ids must lie in"):
        lm_scores(model, np.array([[1, -1]]))
    negative, = s.run(None, {"tokens": np.array([[1, -1]])})
    assert_close(negative, lm_scores(model, np.array([[1, 6]])), K32, "scores")


def test_lengths_in_onnxruntime_where_rnncore_raises(rng):
    """As documented: lengths above T are an error; a length of 0 gives zero outputs and
    zero final states even from a given initial state."""
    weights, x, h0, _ = case_arrays(rng, "gru", 3, 4, 1, 2, 5, 2, False)
    s = session(rnncore_onnx.export_recurrent("gru", weights, bidirectional=True, lengths=True, initial_state=True))
    with pytest.raises(Exception, match="sequence_lens"):
        s.run(None, {"x": x, "lengths": np.array([6, 2]), "h0": h0})
    with pytest.raises(ValueError, match="lengths must lie in"):
        rnncore.recurrent_forward("gru", x, weights, h0, bidirectional=True, lengths=np.array([0, 2]))
    y, h_n = s.run(None, {"x": x, "lengths": np.array([0, 2]), "h0": h0})
    assert np.all(y[:, 0] == 0) and np.all(h_n[:, 0] == 0) and np.all(h0[:, 0] != 0)
    assert np.any(y[:2, 1] != 0)


# -- rnncore export ---------------------------------------------------------------------------

TINY = ["--hidden", "12", "--embed", "6", "--batch", "4", "--seq-len", "12", "--max-chars", "8000",
        "--eval-every", "5", "--sample-every", "5", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module", params=[("lstm", "1"), ("gru", "2")], ids=["lstm", "gru-2-layers"])
def checkpoint(request, tmp_path_factory):
    cell, layers = request.param
    out = tmp_path_factory.mktemp(f"run-{cell}")
    assert main(["train", "--steps", "5", "--cell", cell, "--layers", layers, "--out", str(out), *TINY]) == 0
    return out / "model.npz"


def test_export_command_gives_predict_scores(checkpoint, tmp_path, capsys, rng):
    out = tmp_path / "lm.onnx"
    capsys.readouterr()
    assert main(["export", str(checkpoint), str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}") and "tokens [batch, time]" in printed and "scores" in printed
    model = LanguageModel.load(checkpoint)
    V = model.vocab_size
    s = session(onnx.load(str(out)))
    for B, T in ((1, 1), (1, 12), (4, 5), (7, 30)):
        tokens = rng.integers(0, V, (B, T))
        scores, = s.run(None, {"tokens": tokens})
        ref = lm_scores(model, tokens)
        assert scores.shape == (B, T, V)
        assert_close(scores, ref, K32, f"scores B={B} T={T}")
        np.testing.assert_array_equal(scores[:, -1].argmax(-1), ref[:, -1].argmax(-1))  # the next token


def test_export_command_lengths_and_state(checkpoint, tmp_path, capsys, rng):
    out = tmp_path / "lm.onnx"
    assert main(["export", str(checkpoint), str(out), "--lengths", "--state"]) == 0
    model = LanguageModel.load(checkpoint)
    proto = onnx.load(str(out))
    states = [f"{n}0" for n in (("h", "c") if model.config["cell"] == "lstm" else ("h",))]
    assert [i.name for i in proto.graph.input] == ["tokens", "lengths", *states]
    tokens, lengths = rng.integers(0, model.vocab_size, (3, 9)), np.array([9, 4, 1])
    rows, H = model.config["num_layers"], model.config["hidden_size"]
    zeros = {n: np.zeros((rows, 3, H), np.float32) for n in states}
    scores, *_ = session(proto).run(None, {"tokens": tokens, "lengths": lengths, **zeros})
    assert_close(scores, lm_scores(model, tokens, lengths), K32, "scores")


def test_export_command_errors(checkpoint, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "lm.onnx")
    cases = [
        (["export", str(tmp_path / "missing.npz"), out], "not found"),
        (["export", str(checkpoint), str(tmp_path / "no" / "dir" / "lm.onnx")], "does not exist"),
        (["export", str(checkpoint), str(checkpoint)], "checkpoint itself"),
    ]
    weights_only = tmp_path / "weights.npz"
    rnncore.save_npz(weights_only, "gru", rnncore.init_weights("gru", 2, 3))
    cases.append((["export", str(weights_only), out], "not an rnncore"))
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(checkpoint.read_bytes()[:300])
    cases.append((["export", str(damaged), out], "not a readable"))
    for args, needle in cases:
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("rnncore export: error:") and needle in err, err
    assert not os.path.exists(out)
    assert LanguageModel.load(checkpoint).vocab_size > 1  # the checkpoint was not overwritten
    assert main(["export", str(checkpoint)]) == 2
    assert "OUT.onnx" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if onnx were not installed
    assert main(["export", str(checkpoint), out]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "rnncore[onnx]" in err and not os.path.exists(out)


@pytest.mark.parametrize("args,needle", [
    (["export"], "CHECKPOINT"),
    (["export", "/no/such/model.npz", "x.onnx"], "not found"),
    (["export", "/no/such/model.npz", "x.onnx", "--dtype", "float16"], "--dtype"),
])
def test_export_bad_arguments_subprocess(args, needle, tmp_path):
    r = subprocess.run([sys.executable, "-m", "rnncore", *args], capture_output=True, text=True, cwd=tmp_path,
                       env=subprocess_env(), timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and needle in r.stderr, r.stderr


def test_onnx_stays_an_optional_import():
    code = ("import sys, rnncore, rnncore.layers, rnncore.models, rnncore.cli, rnncore.onnx; "
            "print('onnx' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=subprocess_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# -- bad arguments ----------------------------------------------------------------------------

def test_export_functions_reject_bad_arguments(tmp_path, rng):
    w = rnncore.init_weights("lstm", 3, 4, 2, rng=rng)
    bad = [
        (lambda: rnncore_onnx.export_recurrent("transformer", w), ValueError, "mode"),
        (lambda: rnncore_onnx.export_recurrent("lstm", w), ValueError, "num_layers \\* num_dirs"),
        (lambda: rnncore_onnx.export_recurrent("gru", w, num_layers=2), ValueError, "wx"),
        (lambda: rnncore_onnx.export_recurrent("lstm", w, num_layers=2, activation="relu"), ValueError,
         "activation"),
        (lambda: rnncore_onnx.export_recurrent("lstm", w, num_layers=2, reset_after=False), ValueError,
         "reset_after"),
        (lambda: rnncore_onnx.export_recurrent("rnn", rnncore.init_weights("rnn", 3, 4), activation="gelu"),
         ValueError, "activation"),
        (lambda: rnncore_onnx.export_recurrent("lstm", w, num_layers=2, lengths="yes"), TypeError, "lengths"),
        (lambda: rnncore_onnx.export_recurrent("lstm", w, num_layers=2, batch_first=1), TypeError, "batch_first"),
        (lambda: rnncore_onnx.export_recurrent("lstm", w, num_layers=2, dtype=np.int32), TypeError, "dtype"),
        (lambda: rnncore_onnx.export_recurrent("lstm", [w[0], w[1][:3]], num_layers=2), ValueError,
         "weights\\[1\\]"),
        (lambda: rnncore_onnx.export_recurrent("lstm", "weights"), TypeError, "weights"),
        (lambda: rnncore_onnx.export_recurrent("lstm", [w[0], (w[1][0].astype(np.float64),) + w[1][1:]],
                                               num_layers=2), TypeError, "dtype"),
        (lambda: rnncore_onnx.export_recurrent("lstm", w, str(tmp_path / "nope" / "m.onnx"), num_layers=2),
         FileNotFoundError, "folder"),
        (lambda: rnncore_onnx.export_recurrent("lstm", w, 3, num_layers=2), TypeError, "path"),
        (lambda: rnncore_onnx.export_layer(w), TypeError, "layer"),
        (lambda: rnncore_onnx.export_model(LSTM(3, 4)), TypeError, "LanguageModel"),
        (lambda: rnncore_onnx.export_model(LanguageModel(5, 4), state=1), TypeError, "state"),
    ]
    for call, exc, needle in bad:
        with pytest.raises(exc, match=needle):
            call()
