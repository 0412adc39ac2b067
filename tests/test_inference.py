"""Forward for inference (``inference=True``): no cache kept, the same outputs.

Natively the step's gates and cell states then live in rings of the workspace instead of the
caller's (T, B, ...) cache arrays (csrc/driver.h: StepContext::ring), while every sum runs in
the same order: hs, h_n and c_n must be the caching forward's bits, on every split of the time
loop and any thread count.
"""
from __future__ import annotations

import numpy as np
import pytest

import rnncore
from helpers import CELLS, has_cell_state, run_forward
from helpers import make_case as _case
from rnncore import layers, recurrent
from test_threads import _time_loop_settings

CELL_IDS = [c[0] for c in CELLS]


def _outs(impl, cell, kw, case, **more):
    x, params, h0, c0, _, _, _, lens = case
    outs, cache = run_forward(impl, cell, x, params, h0, c0, lengths=lens, **kw, **more)
    return outs, cache


def _assert_same(a, b, what=""):
    for k in ("hs", "h_n", "c_n"):
        if a[k] is None:
            assert b[k] is None, f"{what}{k}"
        else:
            np.testing.assert_array_equal(b[k], a[k], err_msg=f"{what}{k}")


@pytest.mark.parametrize("impl", ["native", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_inference_gives_the_forward_bits(cid, cell, kw, batch_first, dtype, impl):
    """With and without h0/c0 and lengths, over more steps than the gate ring holds (64 steps;
    the ring of B 9, H 128 holds 7-32), and at B 64, H 256, where it holds one or two: the same
    hs, h_n, c_n; cache None; hs the caller's own (writable, not x's memory)."""
    kw = {**kw, "batch_first": batch_first}
    sizes = [dict(T=64, B=9, D=32, H=128, with_h0=True, lengths=True),
             dict(T=40, B=3, D=8, H=40, with_h0=False, lengths=False)]
    if impl == "native":
        sizes.append(dict(T=12, B=64, D=48, H=256, with_h0=True, lengths=True))
    for i, size in enumerate(sizes):
        case = _case(cell, dtype=dtype, seed=31 + i + len(cid), batch_first=batch_first, **size)
        ref, cache = _outs(impl, cell, kw, case)
        assert cache is not None
        got, none = _outs(impl, cell, kw, case, inference=True)
        assert none is None
        _assert_same(ref, got, f"{size}: ")
        assert got["hs"].flags.writeable and not np.shares_memory(got["hs"], case[0])
        assert (got["c_n"] is not None) == has_cell_state(cell)


@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_inference_on_every_split_of_the_time_loop_keeps_the_bits(cid, cell, kw, batch_first):
    """Unit and row splits forced, with blocks moved at every interval (balance 2) or rows taken
    down to one row and one step, or timed, on 2 and 3 threads whose workers sleep at every
    wait (3 threads: chunks of steps that wrap round the ring): one caching thread's bits.
    Another case of the same sizes runs before each call, so a ring slot read before its step
    was written would hold that case's numbers."""
    case = _case(cell, T=64, B=9, D=32, H=128, dtype=np.float32, seed=41 + len(cid), batch_first=batch_first)
    other = _case(cell, T=64, B=9, D=32, H=128, dtype=np.float32, seed=42 + len(cid), batch_first=batch_first)
    kw = {**kw, "batch_first": batch_first}
    with rnncore.num_threads(1):
        one, _ = _outs("native", cell, kw, case)
    with _time_loop_settings(sleep=True) as core:
        for split in (1, 2):
            core.set_step_split(split)
            for balance in (2, 0):
                core.set_step_balance(balance)
                for n in (2, 3):
                    with rnncore.num_threads(n):
                        _outs("native", cell, kw, other, inference=True)
                        got, _ = _outs("native", cell, kw, case, inference=True)
                        _assert_same(one, got, f"split {split}, balance {balance}, {n} threads: ")


def test_inference_checks_and_no_backward():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    wx, wh = rng.standard_normal((3, 16)).astype(np.float32), rng.standard_normal((4, 16)).astype(np.float32)
    b = np.zeros(16, np.float32)
    hs, h_n, c_n, cache = rnncore.lstm_forward(x, wx, wh, b, None, inference=True)
    assert cache is None
    with pytest.raises(TypeError, match=r"lstm_backward: cache .* got None \(a forward with inference=True"):
        rnncore.lstm_backward(hs, cache)
    with pytest.raises(TypeError, match="lstm_forward: inference must be a bool, got int"):
        rnncore.lstm_forward(x, wx, wh, b, None, inference=1)
    with pytest.raises(TypeError, match="gru_forward: inference must be a bool"):
        rnncore.gru_forward(x, wx[:, :12], wh[:3, :9], b[:12], None, inference="yes")
    with pytest.raises(TypeError, match="recurrent_forward: inference must be a bool"):
        recurrent.recurrent_forward("lstm", x, [(wx, wh, b, b)], inference=None)


@pytest.mark.parametrize("mode", ["lstm", "gru", "rnn"])
def test_stacked_bidirectional_inference(mode):
    """recurrent_forward over 2 layers, both directions, with lengths: the same outputs and
    states, cache None, and recurrent_backward says why it cannot run."""
    rng = np.random.default_rng(5)
    T, B, D, H = 30, 4, 6, 20
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    weights = recurrent.init_weights(mode, D, H, 2, True, dtype=np.float32, rng=rng)
    lens = np.array([30, 7, 19, 1])
    ref = recurrent.recurrent_forward(mode, x, weights, num_layers=2, bidirectional=True, batch_first=True,
                                      lengths=lens)
    got = recurrent.recurrent_forward(mode, x, weights, num_layers=2, bidirectional=True, batch_first=True,
                                      lengths=lens, inference=True)
    for a, b in zip(ref[:3], got[:3]):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(b, a)
    assert ref[3] is not None and got[3] is None
    with pytest.raises(TypeError, match="recurrent_backward: cache .* got None"):
        recurrent.recurrent_backward(got[0], got[3])


def test_layer_and_language_model_inference():
    """A layer's forward with inference=True gives its outputs and leaves no cache for a
    backward; LanguageModel.perplexity (which runs it so) gives exp of the mean loss that the
    caching forward gives, and leaves the model's state and mode as they were."""
    from rnncore.data import StreamBatcher
    from rnncore.models import LanguageModel

    rng = np.random.default_rng(3)
    lstm = layers.LSTM(6, 10, rng=rng)
    xs = rng.standard_normal((3, 8, 6)).astype(np.float32)
    ref = np.array(lstm.forward(xs))
    np.testing.assert_array_equal(lstm.forward(xs, inference=True), ref)
    with pytest.raises(TypeError, match="got None"):
        lstm.backward(np.ones_like(ref))

    m = LanguageModel(17, 12, embed_size=5, cell="lstm")
    ids = rng.integers(0, 17, 400)
    m.train()
    ppl = m.perplexity(ids, batch_size=4, seq_len=10)
    assert m.training and m.get_state() == (None, None)
    m.eval()
    total = count = 0
    for xs_, ts in StreamBatcher(ids, 4, 10):
        total += m.loss(xs_, ts) * ts.size
        count += ts.size
    m.reset_state()
    assert ppl == pytest.approx(float(np.exp(total / count)), rel=1e-12)
