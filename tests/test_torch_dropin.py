"""rnncore.torch against torch.nn itself: a model with nn.RNN / nn.LSTM / nn.GRU gives the same
outputs, final states and gradients (input, hx, every parameter) after rnncore.torch.patch;
gradcheck; state_dict both ways; what raises; patch keeping the Parameters; dropout."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from helpers import TOL, assert_close

torch = pytest.importorskip("torch")
import rnncore  # noqa: E402
import rnncore.torch as rt  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence  # noqa: E402

#: id -> (torch class, extra constructor arguments)
CELLS = {
    "lstm": (nn.LSTM, {}),
    "gru": (nn.GRU, {}),
    "rnn-tanh": (nn.RNN, {"nonlinearity": "tanh"}),
    "rnn-relu": (nn.RNN, {"nonlinearity": "relu"}),
}
RNNCORE_CLASS = {nn.LSTM: rt.LSTM, nn.GRU: rt.GRU, nn.RNN: rt.RNN}
TDTYPE = {np.float32: torch.float32, np.float64: torch.float64}

# (id, num_layers, bidirectional, batch_first, bias, with hx, input kind)
CONFIGS = [
    ("plain", 1, False, False, True, False, "padded"),
    ("stacked-bidir-bf-hx", 2, True, True, True, True, "padded"),
    ("nobias-stacked-hx", 2, False, False, False, True, "padded"),
    ("packed-unsorted-bidir-hx", 3, True, False, True, True, "unsorted"),
    ("packed-sorted-bf", 2, True, True, True, False, "sorted"),
    ("packed-unsorted-nobias", 1, False, True, False, False, "unsorted"),
    ("unbatched-bidir-hx", 2, True, False, True, True, "unbatched"),
    ("unbatched-nohx", 1, False, True, True, False, "unbatched"),
]
T, B, D, H = 6, 4, 5, 7
LENGTHS = [4, 6, 1, 3]  # unsorted, with the longest = T


class Model(nn.Module):
    """A small model as a user writes it: a recurrent layer and a linear head on its output."""

    def __init__(self, cls, kw, num_layers, bidirectional, batch_first, bias):
        super().__init__()
        self.rnn = cls(D, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                       bias=bias, **kw)
        self.head = nn.Linear(H * (2 if bidirectional else 1), 3)

    def forward(self, x, hx=None):
        out, state = self.rnn(x, hx)
        data = out.data if isinstance(out, PackedSequence) else out
        return out, self.head(data), state


def _inputs(cell, cfg, dtype, seed=0):
    _, L, bidir, bf, _, with_hx, kind = cfg
    g = torch.Generator().manual_seed(seed)
    tdt = TDTYPE[dtype]
    shape = (T, D) if kind == "unbatched" else ((B, T, D) if bf else (T, B, D))
    x = torch.randn(*shape, generator=g, dtype=tdt, requires_grad=True)
    hx = None
    if with_hx:
        sshape = (L * (2 if bidir else 1),) + (() if kind == "unbatched" else (B,)) + (H,)
        n = 2 if cell == "lstm" else 1
        hx = [(0.5 * torch.randn(*sshape, generator=g, dtype=tdt)).requires_grad_(True) for _ in range(n)]
    return x, hx


def _run(model, cell, cfg, x, hx, seed=1):
    """Forward + backward of a random weighted sum of everything the model returns; returns
    (outputs, gradients) as dicts of numpy arrays, and the raw output."""
    kind, bf = cfg[6], cfg[3]
    for p in model.parameters():
        p.grad = None
    for t in [x] + (hx or []):
        t.grad = None
    inp = x
    if kind in ("sorted", "unsorted"):
        lens = torch.tensor(sorted(LENGTHS, reverse=True) if kind == "sorted" else LENGTHS)
        inp = pack_padded_sequence(x, lens, batch_first=bf, enforce_sorted=kind == "sorted")
    state_in = None if hx is None else (tuple(hx) if cell == "lstm" else hx[0])
    out, head, state = model(inp, state_in)
    states = list(state) if cell == "lstm" else [state]
    data = out.data if isinstance(out, PackedSequence) else out
    g = torch.Generator().manual_seed(seed)
    loss = (head * torch.randn(head.shape, generator=g, dtype=torch.float64).to(head.dtype)).sum()
    for s in [data] + states:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.dtype)).sum()
    loss.backward()
    outs = {"output": data, "head": head, **{f"state{i}": s for i, s in enumerate(states)}}
    grads = {"input": x.grad, **{f"hx{i}": h.grad for i, h in enumerate(hx or [])},
             **{name: p.grad for name, p in model.named_parameters()}}
    as_np = {k: v.detach().numpy().copy() for k, v in outs.items()}
    return as_np, {k: v.numpy().copy() for k, v in grads.items()}, out


def _pair(cell, cfg, dtype):
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    ref = Model(cls, kw, *cfg[1:5]).to(TDTYPE[dtype])
    mine = rt.patch(copy.deepcopy(ref))
    return ref, mine


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=[c[0] for c in CONFIGS])
@pytest.mark.parametrize("cell", list(CELLS))
def test_patched_model_matches_torch(cell, cfg, dtype):
    ref, mine = _pair(cell, cfg, dtype)
    assert type(mine.rnn) is RNNCORE_CLASS[type(ref.rnn)]
    assert type(ref.rnn) in RNNCORE_CLASS  # the reference stayed torch's
    x, hx = _inputs(cell, cfg, dtype)
    ro, rg, rout = _run(ref, cell, cfg, x, hx)
    mo, mg, mout = _run(mine, cell, cfg, x, hx)
    assert set(mo) == set(ro) and set(mg) == set(rg)
    k = TOL[dtype]
    for name in ro:
        assert_close(mo[name], ro[name], k, name)
    for name in rg:
        assert_close(mg[name], rg[name], k, f"grad {name}")
    if isinstance(rout, PackedSequence):
        assert isinstance(mout, PackedSequence)
        assert torch.equal(mout.batch_sizes, rout.batch_sizes)
        for attr in ("sorted_indices", "unsorted_indices"):
            a, b = getattr(mout, attr), getattr(rout, attr)
            assert (a is None and b is None) or torch.equal(a, b), attr
    else:
        assert mout.shape == rout.shape


def test_float32_gradients_carry_float32_error_only():
    """float32 through rnncore is as close to torch's float32 as it is to float64 truth: the
    tolerance above is the data type's, not a loose bound hiding a bug."""
    cfg = CONFIGS[1]
    ref64, _ = _pair("lstm", cfg, np.float64)
    ref32 = copy.deepcopy(ref64).float()
    mine32 = rt.patch(copy.deepcopy(ref32))
    x64, hx64 = _inputs("lstm", cfg, np.float64)
    x32 = x64.detach().float().requires_grad_(True)
    hx32 = [h.detach().float().requires_grad_(True) for h in hx64]
    _, truth, _ = _run(ref64, "lstm", cfg, x64, hx64)
    _, theirs, _ = _run(ref32, "lstm", cfg, x32, hx32)
    _, ours, _ = _run(mine32, "lstm", cfg, x32, hx32)
    for name in truth:
        scale = np.abs(truth[name]).max()
        err_ours = np.abs(ours[name] - truth[name]).max() / scale
        err_theirs = np.abs(theirs[name] - truth[name]).max() / scale
        assert err_ours < 1e-5 and err_ours < 20 * err_theirs + 1e-7, (name, err_ours, err_theirs)


@pytest.mark.parametrize("cell", list(CELLS))
def test_numpy_backend_gives_the_same(cell):
    cfg = CONFIGS[3]
    ref, mine = _pair(cell, cfg, np.float64)
    x, hx = _inputs(cell, cfg, np.float64)
    no, ng, _ = _run(mine, cell, cfg, x, hx)
    with rnncore.use_backend("numpy"):
        to, tg, _ = _run(mine, cell, cfg, x, hx)
    for name in no:
        assert_close(to[name], no[name], 1e-10, name)
    for name in ng:
        assert_close(tg[name], ng[name], 1e-10, name)


@pytest.mark.parametrize("cfg", [CONFIGS[1], CONFIGS[3]], ids=[CONFIGS[1][0], CONFIGS[3][0]])
@pytest.mark.parametrize("cell", list(CELLS))
def test_no_grad_keeps_no_cache_and_gives_the_same_bits(cell, cfg, monkeypatch):
    """Under torch.no_grad() and inference_mode(), or with nothing requiring a gradient, the
    forward asks rnncore for no cache (inference=True), and the outputs are the bits of the
    forward autograd records."""
    _, mine = _pair(cell, cfg, np.float32)
    x, hx = _inputs(cell, cfg, np.float32)
    kind, bf = cfg[6], cfg[3]
    asked = []
    real = rt.recurrent_forward
    monkeypatch.setattr(rt, "recurrent_forward", lambda *a, **k: asked.append(k["inference"]) or real(*a, **k))

    def run():
        inp = x
        if kind in ("sorted", "unsorted"):
            lens = torch.tensor(sorted(LENGTHS, reverse=True) if kind == "sorted" else LENGTHS)
            inp = pack_padded_sequence(x, lens, batch_first=bf, enforce_sorted=kind == "sorted")
        out, head, state = mine(inp, None if hx is None else (tuple(hx) if cell == "lstm" else hx[0]))
        states = list(state) if cell == "lstm" else [state]
        return [t.detach().numpy().copy() for t in [head] + states]

    recorded = run()
    with torch.no_grad():
        plain = run()
    with torch.inference_mode():
        plain2 = run()
    mine.requires_grad_(False)
    x.requires_grad_(False)
    for t in hx or []:
        t.requires_grad_(False)
    plain3 = run()
    assert asked == [False, True, True, True]
    for other in (plain, plain2, plain3):
        for a, b in zip(recorded, other):
            np.testing.assert_array_equal(b, a)


# -- gradcheck --------------------------------------------------------------------------------

def _functional(module, names):
    """f(x, h0[, c0], *params) -> every output, with the module's parameters replaced."""
    def f(x, *rest):
        n_state = len(rest) - len(names)
        states, params = rest[:n_state], rest[n_state:]
        hx = None if not states else (tuple(states) if len(states) == 2 else states[0])
        out, st = torch.func.functional_call(module, dict(zip(names, params)), (x, hx))
        st = st if isinstance(st, tuple) else (st,)
        return (out.data if isinstance(out, PackedSequence) else out, *st)
    return f


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_gradcheck_float64(cell, packed):
    cls, kw = CELLS[cell]
    torch.manual_seed(0)
    m = RNNCORE_CLASS[cls](3, 2, num_layers=2, bidirectional=True, batch_first=True, **kw).double()
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    x = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    states = [(0.5 * torch.randn(4, 3, 2, dtype=torch.float64)).requires_grad_(True)
              for _ in range(2 if cell == "lstm" else 1)]
    f = _functional(m, names)
    if packed:
        lens = torch.tensor([2, 4, 3])

        def g(x, *rest):
            return f(pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False), *rest)
    else:
        g = f
    assert torch.autograd.gradcheck(g, (x, *states, *params), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_with_dropout_masks_fixed_by_the_seed():
    torch.manual_seed(0)
    m = rt.GRU(3, 4, num_layers=3, dropout=0.4).double().train()
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    f = _functional(m, names)

    def seeded(*args):
        torch.manual_seed(7)
        return f(*args)

    assert torch.autograd.gradcheck(seeded, (x, *params), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_unbatched_gradcheck():
    m = rt.LSTM(3, 2, bias=False).double()
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in m.parameters()]
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_functional(m, names), (x, *params))


# -- state_dict, parameters -------------------------------------------------------------------

@pytest.mark.parametrize("cell", list(CELLS))
def test_state_dict_round_trips_both_ways(cell):
    cls, kw = CELLS[cell]
    args = dict(input_size=D, hidden_size=H, num_layers=2, bidirectional=True, **kw)
    theirs, ours = cls(**args), RNNCORE_CLASS[cls](**args)
    a, b = theirs.state_dict(), ours.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape for k in a)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, B, D)
    assert_close(ours(x)[0].detach().numpy(), theirs(x)[0].detach().numpy(), TOL[np.float32], "after torch->rnncore")
    back = cls(**args)
    back.load_state_dict(ours.state_dict())
    assert all(torch.equal(back.state_dict()[k], theirs.state_dict()[k]) for k in a)


def test_constructor_arguments_as_torch_has_them():
    m = rt.GRU(4, 6, 2, True, True, 0.25, True, dtype=torch.float64, device="cpu")
    t = nn.GRU(4, 6, 2, True, True, 0.25, True, dtype=torch.float64, device="cpu")
    assert (m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, m.dropout, m.bidirectional) == \
        (t.input_size, t.hidden_size, t.num_layers, t.bias, t.batch_first, t.dropout, t.bidirectional)
    assert [(n, p.shape, p.dtype) for n, p in m.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in t.named_parameters()]
    r = rt.RNN(4, 6, 1, "relu", False)
    assert r.mode == "RNN_RELU" and not r.bias
    assert isinstance(m, nn.GRU) and isinstance(r, nn.RNN)


# -- patch -------------------------------------------------------------------------------------

class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, D)
        self.enc = nn.Sequential(nn.LSTM(D, H, batch_first=True))
        self.dec = nn.ModuleDict({"gru": nn.GRU(H, H, batch_first=True), "rnn": nn.RNN(H, H, batch_first=True)})
        self.head = nn.Linear(H, 10)

    def forward(self, ids):
        h, _ = self.enc[0](self.emb(ids))
        h, _ = self.dec["gru"](h)
        h, _ = self.dec["rnn"](h)
        return self.head(h)


def test_patch_keeps_parameters_mode_and_the_optimizer():
    torch.manual_seed(0)
    model = Nested().double().eval()
    ref = copy.deepcopy(model)
    params_before = {n: p for n, p in model.named_parameters()}
    values_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    modules_before = dict(model.named_modules())
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    assert rt.patch(model) is model
    assert type(model.enc[0]) is rt.LSTM and type(model.dec["gru"]) is rt.GRU and type(model.dec["rnn"]) is rt.RNN
    assert type(model.emb) is nn.Embedding and not model.training and not model.enc[0].training
    assert all(p is params_before[n] for n, p in model.named_parameters())
    assert all(m is modules_before[n] for n, m in model.named_modules())
    ids = torch.randint(0, 10, (3, 8), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            loss = m(ids).logsumexp(-1).mean()
            loss.backward()
            o.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert not torch.equal(p, values_before[n]), f"{n} did not move"  # the optimizer stepped them
        assert_close(p.detach().numpy(), q.detach().numpy(), 1e-10, n)


def test_patch_the_module_itself_unpatch_and_the_context_manager():
    lstm = nn.LSTM(3, 4)
    w = lstm.weight_ih_l0
    assert rt.patch(lstm) is lstm and type(lstm) is rt.LSTM and lstm.weight_ih_l0 is w
    assert rt.unpatch(lstm) is lstm and type(lstm) is nn.LSTM
    model = nn.Sequential(nn.GRU(3, 4), nn.Sequential(rt.RNN(4, 4)))
    with rt.patched(model) as m:
        assert m is model
        assert type(model[0]) is rt.GRU and type(model[1][0]) is rt.RNN
    assert type(model[0]) is nn.GRU
    assert type(model[1][0]) is rt.RNN  # it was rnncore's before the block: left so
    with pytest.raises(ZeroDivisionError):
        with rt.patched(model):
            1 / 0
    assert type(model[0]) is nn.GRU


def test_patch_leaves_subclasses_alone():
    class MyLSTM(nn.LSTM):
        pass

    model = nn.Sequential(MyLSTM(3, 4))
    rt.patch(model)
    assert type(model[0]) is MyLSTM


def test_patch_refuses_without_changing_anything():
    model = nn.ModuleList([nn.GRU(3, 4), nn.LSTM(3, 4, proj_size=2)])
    with pytest.raises(NotImplementedError, match=r"1 \(LSTM\).*proj_size=2"):
        rt.patch(model)
    assert type(model[0]) is nn.GRU and type(model[1]) is nn.LSTM
    half = nn.Sequential(nn.GRU(3, 4).half())
    with pytest.raises(TypeError, match="weight_ih_l0 has dtype torch.float16"):
        rt.patch(half)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        rt.patch([nn.GRU(3, 4)])


# -- what raises -------------------------------------------------------------------------------

def test_proj_size_raises():
    with pytest.raises(NotImplementedError, match="proj_size=2"):
        rt.LSTM(3, 4, proj_size=2)


def test_other_devices_raise():
    m = rt.GRU(3, 4, device="meta")
    with pytest.raises(NotImplementedError, match="weight_ih_l0 is on meta"):
        m(torch.randn(2, 1, 3, device="meta"))
    with pytest.raises(NotImplementedError, match="input is on meta"):
        rt.GRU(3, 4)(torch.empty(2, 1, 3, device="meta"))
    with pytest.raises(NotImplementedError, match=r"hx is on meta"):
        rt.GRU(3, 4)(torch.randn(2, 1, 3), torch.empty(1, 1, 4, device="meta"))


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16])
def test_half_precision_raises(dt):
    with pytest.raises(TypeError, match=f"parameter weight_ih_l0 has dtype {dt}"):
        rt.LSTM(3, 4).to(dt)(torch.randn(2, 1, 3, dtype=dt))
    with pytest.raises(TypeError, match=f"input has dtype {dt}"):
        rt.LSTM(3, 4)(torch.randn(2, 1, 3).to(dt))


def test_mixed_dtypes_raise():
    with pytest.raises(TypeError, match="input has dtype torch.float64 but the module's parameters are torch.float32"):
        rt.RNN(3, 4)(torch.randn(2, 1, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"hx\[1\] \(c_0\) has dtype torch.float64"):
        rt.LSTM(3, 4)(torch.randn(2, 1, 3), (torch.zeros(1, 1, 4), torch.zeros(1, 1, 4, dtype=torch.float64)))
    with pytest.raises(TypeError, match="input.data has dtype torch.float64"):
        rt.GRU(3, 4)(pack_padded_sequence(torch.randn(2, 1, 3, dtype=torch.float64), torch.tensor([2])))


def test_bad_shapes_and_types_raise():
    gru, lstm = rt.GRU(3, 4, num_layers=2), rt.LSTM(3, 4)
    with pytest.raises(ValueError, match=r"input.size\(-1\) must be input_size = 3"):
        gru(torch.randn(2, 1, 5))
    with pytest.raises(ValueError, match="input must be 3-D"):
        gru(torch.randn(2, 1, 1, 3))
    with pytest.raises(ValueError, match="input must have every size >= 1"):
        gru(torch.randn(0, 1, 3))
    with pytest.raises(TypeError, match="input must be a torch.Tensor"):
        gru(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(ValueError, match=r"hx must have shape .* = \(2, 1, 4\), got \(1, 1, 4\)"):
        gru(torch.randn(2, 1, 3), torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match=r"hx must have shape \(num_layers \* num_directions, hidden_size\) for "
                                         r"unbatched input = \(2, 4\)"):
        gru(torch.randn(2, 3), torch.zeros(2, 1, 4))
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        lstm(torch.randn(2, 1, 3), torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match=r"hx\[1\] \(c_0\) must have shape"):
        lstm(torch.randn(2, 1, 3), (torch.zeros(1, 1, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(TypeError, match=r"hx must be a torch.Tensor \(h_0\)"):
        gru(torch.randn(2, 1, 3), (torch.zeros(2, 1, 4),))


def test_non_finite_input_raises():
    x = torch.randn(2, 1, 3)
    x[1, 0, 2] = float("nan")
    with pytest.raises(ValueError, match="rnncore.torch.GRU: input contains NaN or infinity"):
        rt.GRU(3, 4)(x)
    with pytest.raises(ValueError, match=r"rnncore.torch.LSTM: hx\[1\] \(c_0\) contains NaN"):
        rt.LSTM(3, 4)(x.nan_to_num(), (torch.zeros(1, 1, 4), torch.full((1, 1, 4), float("nan"))))
    m = rt.GRU(3, 4, num_layers=2)
    with torch.no_grad():
        m.weight_hh_l1[0, 0] = float("inf")
    with pytest.raises(ValueError, match="rnncore.torch.GRU: weight_hh_l1 contains NaN or infinity"):
        m(torch.randn(2, 1, 3))


def test_import_rnncore_leaves_torch_out():
    import subprocess
    import sys

    code = "import sys, rnncore; rnncore.lstm_forward; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_double_backward_raises():
    m = rt.GRU(3, 4).double()
    x = torch.randn(2, 1, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(m(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()


@pytest.mark.parametrize("bidirectional", [False, True], ids=["one-direction", "bidirectional"])
def test_in_place_use_of_the_output_works_as_in_torch(bidirectional):
    """``out += residual`` after the layer: torch's module allows it, and so must the drop-in
    (the output must not be the buffer the backward reads)."""
    torch.manual_seed(0)
    ref = nn.LSTM(3, 4, num_layers=2, bidirectional=bidirectional).double()
    mine = rt.patch(copy.deepcopy(ref))
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    res = torch.randn(5, 2, 8 if bidirectional else 4, dtype=torch.float64)
    grads = []
    for m in (ref, mine):
        x.grad = None
        out, _ = m(x)
        out += res
        out.mul_(3.0)
        (out * out).sum().backward()
        grads.append((out.detach().clone(), x.grad.clone(), [p.grad.clone() for p in m.parameters()]))
    assert_close(grads[1][0].numpy(), grads[0][0].numpy(), 1e-10, "output")
    assert_close(grads[1][1].numpy(), grads[0][1].numpy(), 1e-10, "grad input")
    for a, b in zip(grads[1][2], grads[0][2]):
        assert_close(a.numpy(), b.numpy(), 1e-10, "grad parameter")


def test_in_place_change_of_the_input_before_backward_raises():
    m = rt.GRU(3, 4)
    x = torch.randn(5, 2, 3)
    w = torch.ones(3, requires_grad=True)
    inp = x * w
    out, _ = m(inp)
    inp.mul_(2)  # rnncore's backward would read the changed values
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_nothing_passed_in_is_modified():
    m = rt.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    hx = (torch.randn(4, 2, 4, dtype=torch.float64), torch.randn(4, 2, 4, dtype=torch.float64))
    saved = [t.detach().clone() for t in (x, *hx, *m.parameters())]
    out, (h, c) = m(x, hx)
    (out.sum() + h.sum() + c.sum()).backward()
    assert all(torch.equal(a, b) for a, b in zip(saved, (x, *hx, *m.parameters())))


def test_requires_grad_is_honoured():
    torch.manual_seed(0)
    ref = nn.GRU(3, 4, num_layers=2).double()
    mine = rt.patch(copy.deepcopy(ref))
    for m in (ref, mine):
        m.weight_hh_l1.requires_grad_(False)
    x = torch.randn(5, 2, 3, dtype=torch.float64)  # no grad for the input
    grads = []
    for m in (ref, mine):
        out, _ = m(x)
        (out ** 2).sum().backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    assert grads[1]["weight_hh_l1"] is None and x.grad is None
    for n, g in grads[0].items():
        if g is not None:
            assert_close(grads[1][n].numpy(), g.numpy(), 1e-10, n)
    with torch.no_grad():
        out, h = mine(x)
    assert not out.requires_grad and not h.requires_grad
    assert_close(out.numpy(), ref(x)[0].detach().numpy(), 1e-10, "no_grad output")
    with torch.inference_mode():
        out, h = mine(x)
    assert out.is_inference()
    assert_close(out.numpy(), ref(x)[0].detach().numpy(), 1e-10, "inference_mode output")


# -- dropout -----------------------------------------------------------------------------------

def test_dropout_is_reproducible_under_manual_seed_and_off_in_eval():
    torch.manual_seed(0)
    ref = nn.LSTM(3, 8, num_layers=3, dropout=0.5).double()
    mine = rt.patch(copy.deepcopy(ref))
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    torch.manual_seed(11)
    a = mine(x)[0]
    torch.manual_seed(11)
    b = mine(x)[0]
    torch.manual_seed(12)
    c = mine(x)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    mine.eval(), ref.eval()
    state = torch.get_rng_state()
    e = mine(x)[0]
    assert torch.equal(torch.get_rng_state(), state)  # eval draws nothing
    assert not torch.allclose(a, e)  # training dropped something
    assert_close(e.detach().numpy(), ref(x)[0].detach().numpy(), 1e-10, "eval output")


def test_dropout_zero_in_training_equals_torch():
    torch.manual_seed(0)
    ref = nn.GRU(3, 5, num_layers=2, dropout=0.0).double().train()
    mine = rt.patch(copy.deepcopy(ref))
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    assert_close(mine(x)[0].detach().numpy(), ref(x)[0].detach().numpy(), 1e-10, "output")


@pytest.mark.parametrize("p", [0.25, 0.6])
def test_dropout_masks_are_inverted_dropout(p):
    """Layer 1 a ReLU RNN with positive outputs, layer 2 the identity on its input (relu(x W^T)
    with W = I, no recurrence, no bias): the model's output is layer 1's output times the mask,
    so output / eval output must be exactly 0 or 1 / (1 - p), zero about p of the time."""
    torch.manual_seed(0)
    Hs = 16
    m = rt.RNN(Hs, Hs, num_layers=2, nonlinearity="relu", dropout=p).double()
    with torch.no_grad():
        m.weight_ih_l0.uniform_(0.1, 0.5)
        m.weight_hh_l0.uniform_(0.0, 0.05)
        m.bias_ih_l0.fill_(0.1)
        m.bias_hh_l0.zero_()
        m.weight_ih_l1.copy_(torch.eye(Hs))
        m.weight_hh_l1.zero_()
        m.bias_ih_l1.zero_()
        m.bias_hh_l1.zero_()
    x = torch.rand(40, 8, Hs, dtype=torch.float64) + 0.1
    kept = m.eval()(x)[0]
    assert (kept > 0).all()
    dropped = m.train()(x)[0]
    ratio = (dropped / kept).flatten()
    zero = ratio == 0
    assert torch.allclose(ratio[~zero], torch.full_like(ratio[~zero], 1 / (1 - p)), rtol=1e-12, atol=0)
    n, frac = ratio.numel(), zero.double().mean().item()
    assert abs(frac - p) < 4 * (p * (1 - p) / n) ** 0.5, frac  # 4 standard deviations


# -- the thread team: torch's OpenMP threads borrowed ---------------------------------------------

def _lstm_step(m, x, threads):
    """Outputs and gradients of one forward + backward of m at `threads` rnncore threads."""
    m.zero_grad()
    with rnncore.num_threads(threads):
        out, (h_n, c_n) = m(x)
        (out.square().sum() + h_n.sum() + c_n.sum()).backward()
    return [out.detach().clone()] + [p.grad.clone() for p in m.parameters()]


def test_regions_run_on_torchs_openmp_team_with_the_same_bits():
    # B 8, H 128: the time loop and the big GEMMs open a two-thread region
    torch.manual_seed(0)
    m = rt.LSTM(64, 128)
    x = torch.randn(30, 8, 64)
    core = rnncore._native.core
    core.team_set_adaptive(False)  # regions on the team even if the machine is busy right now
    try:
        assert rt.share_threads(False) is False
        own = rnncore.threads.team_stats()
        ref = _lstm_step(m, x, 2)
        after = rnncore.threads.team_stats()
        assert after["borrowed"] == own["borrowed"] and after["regions"] > own["regions"]
        if not rt.share_threads(True):
            pytest.skip("torch's OpenMP runtime here is not a libgomp rnncore can borrow")
        before = rnncore.threads.team_stats()["borrowed"]
        for threads in (2, 1, 2):
            got = _lstm_step(m, x, threads)
            for a, b in zip(got, ref):
                assert torch.equal(a, b)  # the same bits as on rnncore's own workers, any count
        assert rnncore.threads.team_stats()["borrowed"] > before
    finally:
        rt.share_threads(True)
        core.team_set_adaptive(True)


def test_a_forked_child_runs_on_its_own_workers():
    """libgomp's pool does not survive fork: a child of a process that borrowed it must not use it."""
    import multiprocessing as mp

    if not rt.share_threads(True):
        pytest.skip("torch's OpenMP runtime here is not a libgomp rnncore can borrow")
    torch.manual_seed(0)
    m = rt.LSTM(64, 128)
    x = torch.randn(30, 8, 64)
    ref = _lstm_step(m, x, 2)
    ctx = mp.get_context("fork")
    rnncore._native.core.team_set_adaptive(False)  # (inherited by the child)
    q = ctx.Queue()
    p = ctx.Process(target=_child_step, args=(m, x, q))
    p.start()
    got, stats = q.get(timeout=120)  # before join: the child exits once its message is read
    p.join(30)
    rnncore._native.core.team_set_adaptive(True)
    assert p.exitcode == 0, "the forked child failed or hung"
    assert stats["borrowed"] == 0 and stats["regions"] > 0  # a fresh team of the child's own
    for a, b in zip(got, ref):
        assert np.array_equal(a, b.numpy())


def _child_step(m, x, q):
    torch.set_num_threads(1)  # torch's own ops stay off its (forked, unusable) pool as well
    before = rnncore.threads.team_stats()
    got = _lstm_step(m, x, 2)
    after = rnncore.threads.team_stats()
    q.put(([t.numpy() for t in got], {k: after[k] - before[k] for k in after}))  # arrays: no torch sharing


def test_share_threads_refuses_a_non_bool():
    with pytest.raises(TypeError, match="share_threads: on must be a bool"):
        rt.share_threads("yes")
