"""PyTorch as an outside oracle: weights copied into torch.nn.RNN / LSTM / GRU (one layer,
bias=True), outputs, final states and every gradient compared; variable lengths against
pack_padded_sequence(enforce_sorted=False)."""
from __future__ import annotations

import numpy as np
import pytest

import rnncore
from helpers import TOL, assert_close, make_case, run_backward, run_forward

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

# cells PyTorch has: (id, rnncore cell, rnncore kwargs, torch constructor)
TORCH_CELLS = [
    ("rnn-tanh", "rnn", {"activation": "tanh"}, lambda D, H, bf: torch.nn.RNN(D, H, nonlinearity="tanh",
                                                                              batch_first=bf)),
    ("rnn-relu", "rnn", {"activation": "relu"}, lambda D, H, bf: torch.nn.RNN(D, H, nonlinearity="relu",
                                                                              batch_first=bf)),
    ("lstm", "lstm", {}, lambda D, H, bf: torch.nn.LSTM(D, H, batch_first=bf)),
    ("gru", "gru", {"reset_after": True}, lambda D, H, bf: torch.nn.GRU(D, H, batch_first=bf)),
]
IDS = [c[0] for c in TORCH_CELLS]
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def _torch_module(make, cell, D, H, batch_first, dtype, params):
    wx, wh, b_ih, b_hh = params
    m = make(D, H, batch_first).to(TORCH_DTYPE[dtype])
    # the Elman op's single bias is torch's bias_ih with a zero bias_hh
    sd = rnncore.to_state_dict(cell, [(wx, wh, b_ih, np.zeros_like(b_ih) if b_hh is None else b_hh)])
    m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    return m


def _torch_run(module, cell, x, h0, c0, R, S, U, lengths=None, batch_first=False):
    """Forward + backward of loss = sum(out*R) + sum(h_n*S) (+ sum(c_n*U)) in torch."""
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    th0 = torch.from_numpy(h0.copy())[None].requires_grad_(True)
    tc0 = torch.from_numpy(c0.copy())[None].requires_grad_(True) if c0 is not None else None
    inp = tx
    if lengths is not None:
        inp = pack_padded_sequence(tx, torch.as_tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    state = (th0, tc0) if cell == "lstm" else th0
    out, st = module(inp, state)
    if lengths is not None:
        T = x.shape[1] if batch_first else x.shape[0]
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    h_n, c_n = (st[0][0], st[1][0]) if cell == "lstm" else (st[0], None)
    loss = (out * torch.from_numpy(R)).sum() + (h_n * torch.from_numpy(S)).sum()
    if c_n is not None:
        loss = loss + (c_n * torch.from_numpy(U)).sum()
    loss.backward()
    outs = {"hs": out.detach().numpy(), "h_n": h_n.detach().numpy(),
            "c_n": None if c_n is None else c_n.detach().numpy()}
    grads = {
        "dx": tx.grad.numpy(),
        "dwx": module.weight_ih_l0.grad.numpy().T,
        "dwh": module.weight_hh_l0.grad.numpy().T,
        "db_ih": module.bias_ih_l0.grad.numpy(),
        "db_hh": module.bias_hh_l0.grad.numpy(),
        "dh0": th0.grad[0].numpy(),
        "dc0": None if tc0 is None else tc0.grad[0].numpy(),
    }
    return outs, grads


def _check(cell, ours, theirs, k):
    outs, grads = ours
    t_outs, t_grads = theirs
    for name in ("hs", "h_n", "c_n"):
        assert_close(outs[name], t_outs[name], k, name)
    for name in ("dx", "dwx", "dwh", "db_ih", "dh0", "dc0"):
        assert_close(grads[name], t_grads[name], k, name)
    if cell == "rnn":
        # db is the gradient of both of torch's biases
        assert grads["db_hh"] is None
        assert_close(grads["db_ih"], t_grads["db_hh"], k, "db vs bias_hh")
    else:
        assert_close(grads["db_hh"], t_grads["db_hh"], k, "db_hh")


def _ours(impl, cell, kw, x, params, h0, c0, R, S, U, **fkw):
    outs, cache = run_forward(impl, cell, x, params, h0, c0, **kw, **fkw)
    return outs, run_backward(impl, cell, cache, R, S, U)


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cid,cell,kw,make", TORCH_CELLS, ids=IDS)
def test_matches_torch(cid, cell, kw, make, batch_first, dtype, impl):
    T, B, D, H = 7, 3, 4, 5
    x, params, h0, c0, R, S, U, _ = make_case(cell, T, B, D, H, dtype, len(cid) + 3 * batch_first, batch_first)
    module = _torch_module(make, cell, D, H, batch_first, dtype, params)
    theirs = _torch_run(module, cell, x, h0, c0, R, S, U)
    ours = _ours(impl, cell, kw, x, params, h0, c0, R, S, U, batch_first=batch_first)
    _check(cell, ours, theirs, TOL[dtype])


@pytest.mark.parametrize("impl", ["native", "reference"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cid,cell,kw,make", TORCH_CELLS, ids=IDS)
def test_variable_lengths_match_packed_sequence(cid, cell, kw, make, batch_first, impl):
    T, B, D, H = 6, 5, 3, 4
    dtype = np.float64
    x, params, h0, c0, R, S, U, _ = make_case(cell, T, B, D, H, dtype, 100 + len(cid), batch_first)
    lengths = np.array([3, 6, 1, 4, 6])  # unsorted, with 1 and T
    module = _torch_module(make, cell, D, H, batch_first, dtype, params)
    theirs = _torch_run(module, cell, x, h0, c0, R, S, U, lengths=lengths, batch_first=batch_first)
    ours = _ours(impl, cell, kw, x, params, h0, c0, R, S, U, batch_first=batch_first, lengths=lengths)
    _check(cell, ours, theirs, TOL[dtype])
    # torch pads with zeros past the lengths; so must we, exactly
    pad = np.arange(T)[:, None] >= lengths[None, :]
    if batch_first:
        pad = pad.T
    assert np.all(ours[0]["hs"][pad] == 0) and np.all(ours[1]["dx"][pad] == 0)


@pytest.mark.parametrize("cid,cell,kw,make", TORCH_CELLS, ids=IDS)
def test_long_sequence_matches_torch(cid, cell, kw, make):
    T, B, D, H = 1000, 2, 3, 4
    x, params, h0, c0, R, S, U, _ = make_case(cell, T, B, D, H, np.float64, 1000, False)
    module = _torch_module(make, cell, D, H, False, np.float64, params)
    theirs = _torch_run(module, cell, x, h0, c0, R, S, U)
    ours = _ours("native", cell, kw, x, params, h0, c0, R, S, U)
    _check(cell, ours, theirs, 1e-9)
