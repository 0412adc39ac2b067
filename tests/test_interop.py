"""rnncore.to_state_dict / from_state_dict / save_npz / load_npz, and PyTorch round trips."""
from __future__ import annotations

import numpy as np
import pytest

import rnncore

CASES = [  # mode, num_layers, bidirectional
    ("rnn", 1, False),
    ("lstm", 2, True),
    ("gru", 3, True),
    ("gru", 2, False),
]


def _weights(mode, L, bidir, dtype=np.float64, D=3, H=4, seed=0):
    return rnncore.init_weights(mode, D, H, L, bidir, dtype=dtype, rng=seed)


def _same(w1, w2):
    assert len(w1) == len(w2)
    for t1, t2 in zip(w1, w2):
        for a, b in zip(t1, t2):
            assert a.dtype == b.dtype and a.flags.c_contiguous
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode,L,bidir", CASES)
def test_round_trip_and_names(mode, L, bidir):
    w = _weights(mode, L, bidir)
    sd = rnncore.to_state_dict(mode, w, num_layers=L, bidirectional=bidir, prefix="enc.")
    nd = 2 if bidir else 1
    assert len(sd) == 4 * L * nd
    G = {"rnn": 1, "lstm": 4, "gru": 3}[mode]
    assert sd["enc.weight_ih_l0"].shape == (G * 4, 3)
    np.testing.assert_array_equal(sd["enc.weight_ih_l0"], w[0][0].T)
    if bidir:
        np.testing.assert_array_equal(sd[f"enc.bias_hh_l{L - 1}_reverse"], w[-1][3])
    # copies, not views
    assert not any(np.shares_memory(a, b) for a in sd.values() for t in w for b in t)
    # foreign keys outside the prefix are ignored
    sd["head.weight"] = np.zeros((2, 2))
    got = rnncore.from_state_dict(sd, prefix="enc.")
    assert got[0] == mode and got[2:] == (L, bidir)
    _same(got[1], w)
    m2, w2, _, _ = rnncore.from_state_dict(sd, mode=mode, prefix="enc.", dtype=np.float32)
    assert all(a.dtype == np.float32 for t in w2 for a in t)


def test_from_state_dict_errors():
    w = _weights("lstm", 2, True)
    sd = rnncore.to_state_dict("lstm", w, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match="mode='gru'.*lstm"):
        rnncore.from_state_dict(sd, mode="gru")
    bad = dict(sd)
    del bad["weight_hh_l1_reverse"]
    with pytest.raises(ValueError, match="missing 'weight_hh_l1_reverse'"):
        rnncore.from_state_dict(bad)
    bad = dict(sd, bias_ih_l1=np.zeros(5))
    with pytest.raises(ValueError, match="'bias_ih_l1' must have shape"):
        rnncore.from_state_dict(bad)
    bad = dict(sd, weight_ih_l1=np.zeros((16, 4)))  # input of layer 1 is 2 * H = 8
    with pytest.raises(ValueError, match="'weight_ih_l1' must have shape"):
        rnncore.from_state_dict(bad)
    bad = dict(sd, weight_hh_l0=np.zeros((10, 4)))
    with pytest.raises(ValueError, match="weight_hh_l0"):
        rnncore.from_state_dict(bad)
    with pytest.raises(ValueError, match="unexpected key 'bogus'"):
        rnncore.from_state_dict(dict(sd, bogus=np.zeros(1)))
    with pytest.raises(ValueError, match="proj_size"):
        rnncore.from_state_dict(dict(sd, weight_hr_l0=np.zeros((2, 4))))
    with pytest.raises(ValueError, match="no recurrent weights"):
        rnncore.from_state_dict(sd, prefix="rnn.")
    with pytest.raises(TypeError, match="floating"):
        rnncore.from_state_dict(dict(sd, bias_ih_l0=np.zeros(16, dtype=np.int64)))
    with pytest.raises(TypeError, match="dtype"):
        rnncore.from_state_dict(dict(sd, bias_ih_l0=sd["bias_ih_l0"].astype(np.float32)))
    with pytest.raises(ValueError, match="weights"):
        rnncore.to_state_dict("lstm", w, num_layers=2, bidirectional=False)
    with pytest.raises(ValueError, match="wh"):
        rnncore.to_state_dict("gru", w, num_layers=2, bidirectional=True)


def test_no_bias_state_dict_gets_zero_biases():
    w = _weights("gru", 1, False)
    sd = {k: v for k, v in rnncore.to_state_dict("gru", w).items() if k.startswith("weight")}
    mode, w2, L, bidir = rnncore.from_state_dict(sd)
    assert (mode, L, bidir) == ("gru", 1, False)
    assert not w2[0][2].any() and not w2[0][3].any() and w2[0][2].shape == (12,)


@pytest.mark.parametrize("mode,L,bidir", CASES)
def test_save_load_npz(tmp_path, mode, L, bidir):
    w = _weights(mode, L, bidir, dtype=np.float32)
    path = tmp_path / "w.npz"
    rnncore.save_npz(path, mode, w, num_layers=L, bidirectional=bidir)
    got_mode, w2, L2, bidir2 = rnncore.load_npz(path)
    assert (got_mode, L2, bidir2) == (mode, L, bidir)
    _same(w2, w)
    with np.load(path, allow_pickle=False) as f:  # plain PyTorch names, readable without rnncore
        assert "weight_ih_l0" in f.files


def test_load_npz_checks_metadata(tmp_path):
    w = _weights("lstm", 2, False)
    sd = rnncore.to_state_dict("lstm", w, num_layers=2)
    path = tmp_path / "bad.npz"
    np.savez(path, __rnncore__=np.array('{"format": 1, "mode": "lstm", "num_layers": 3, "bidirectional": false}'),
             **sd)
    with pytest.raises(ValueError, match="num_layers=3"):
        rnncore.load_npz(path)
    np.savez(path, **sd)  # no metadata: inferred from the names
    assert rnncore.load_npz(path)[0] == "lstm"


# -- PyTorch ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_torch_state_dict_gives_torch_outputs_and_back(mode):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[mode]
    m = cls(3, 5, num_layers=2, bidirectional=True, batch_first=True)  # float32
    sd = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    got_mode, w, L, bidir = rnncore.from_state_dict(sd)
    assert (got_mode, L, bidir) == (mode, 2, True)
    x = np.random.default_rng(1).standard_normal((4, 6, 3)).astype(np.float32)
    out, h_n, c_n, _ = rnncore.recurrent_forward(mode, x, w, num_layers=2, bidirectional=True, batch_first=True)
    with torch.no_grad():
        out_t, state = m(torch.from_numpy(x))
    h_t = state[0] if mode == "lstm" else state
    np.testing.assert_allclose(out, out_t.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(h_n, h_t.numpy(), rtol=0, atol=1e-5)
    if mode == "lstm":
        np.testing.assert_allclose(c_n, state[1].numpy(), rtol=0, atol=1e-5)

    # rnncore weights -> a fresh torch module: the same outputs
    w_new = rnncore.init_weights(mode, 3, 5, 2, True, rng=7)
    m2 = cls(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    sd2 = rnncore.to_state_dict(mode, w_new, num_layers=2, bidirectional=True)
    assert list(sd2) == list(m2.state_dict())
    m2.load_state_dict({k: torch.from_numpy(v) for k, v in sd2.items()})
    out2, _, _, _ = rnncore.recurrent_forward(mode, x, w_new, num_layers=2, bidirectional=True, batch_first=True)
    with torch.no_grad():
        out2_t = m2(torch.from_numpy(x))[0]
    np.testing.assert_allclose(out2, out2_t.numpy(), rtol=0, atol=1e-5)


def test_torch_tensors_accepted_directly_and_bias_false():
    torch = pytest.importorskip("torch")
    m = torch.nn.LSTM(2, 3, bias=False, dtype=torch.float64)
    mode, w, L, bidir = rnncore.from_state_dict(m.state_dict())  # tensors, np.asarray-able
    x = np.random.default_rng(2).standard_normal((5, 2, 2))
    out, _, _, _ = rnncore.recurrent_forward(mode, x, w)
    with torch.no_grad():
        out_t = m(torch.from_numpy(x))[0]
    np.testing.assert_allclose(out, out_t.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", ["D1", "H1", "fortran"])
def test_from_state_dict_returns_copies(case):
    """The weights come back as arrays of their own, also where the transpose of the state
    dict's array is already contiguous (input size 1, H 1, Fortran order): writing into them
    leaves the state dict alone."""
    rng = np.random.default_rng(0)
    H, D = (4, 1) if case == "D1" else (1, 3) if case == "H1" else (4, 5)
    sd = {"weight_ih_l0": rng.standard_normal((4 * H, D)).astype(np.float32),
          "weight_hh_l0": rng.standard_normal((4 * H, H)).astype(np.float32),
          "bias_ih_l0": rng.standard_normal(4 * H).astype(np.float32),
          "bias_hh_l0": rng.standard_normal(4 * H).astype(np.float32)}
    if case == "fortran":
        sd = {k: np.asfortranarray(v) for k, v in sd.items()}
    before = {k: v.copy() for k, v in sd.items()}
    _, weights, _, _ = rnncore.from_state_dict(sd)
    for w in weights[0]:
        assert w.flags.c_contiguous and w.flags.writeable
        assert not any(np.shares_memory(w, a) for a in sd.values())
        w -= 1
    for k in sd:
        np.testing.assert_array_equal(sd[k], before[k], err_msg=k)
