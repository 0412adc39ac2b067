"""A mutation fuzzer of rnncore's public ops and layers: random valid calls, and the same calls
with one argument broken (dtype, shape, layout, values, type, flags). Covered: rnn/lstm/gru
forward and backward, the dense ops (affine, embedding gradient), the layers RNN/LSTM/GRU
(stacked, bidirectional, lengths) and the softmax loss.

Every call must either succeed or raise ValueError / TypeError whose message names the broken
argument; a valid call must give what the NumPy twin gives (float32/float64 tolerances scaled
to the tensor). Anything else is counted as a failure. Run it in a process of its own, so that
a crash shows as the process dying (the test suite does: tests/test_fuzz.py):

    python tests/fuzz.py --calls 100000 --seed 0      # about a minute a 10^4 calls on 2 cores
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import rnncore
from helpers import GATES
from rnncore import cells, dense

TOL = {np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-9}


def _valid_recurrent(rng, cell):
    dt = np.float32 if rng.random() < 0.5 else np.float64
    T, B, D, H = (int(rng.integers(1, n)) for n in (7, 6, 6, 9))
    bf = bool(rng.random() < 0.5)
    G = GATES[cell]
    spec = cells.flavours(cell)[0]
    r = lambda *s: (rng.standard_normal(s) * 0.5).astype(dt)  # noqa: E731
    kw = {"x": r(*((B, T, D) if bf else (T, B, D))), "wx": r(D, G * H), "wh": r(H, G * H)}
    if spec.fused_bias:
        kw[spec.biases[0]] = r(H)
    else:
        kw[spec.biases[0]], kw[spec.biases[1]] = r(G * H), r(G * H)
    if len(spec.activations) > 1:
        kw["activation"] = str(rng.choice(spec.activations))
    if rng.random() < 0.5:
        kw["h0"] = r(B, H)
    if spec.has_cell_state and rng.random() < 0.5:
        kw["c0"] = r(B, H)
    for keyword in cells.flavour_keywords(cell):
        kw[keyword] = bool(rng.random() < 0.5)
    kw["batch_first"] = bf
    if rng.random() < 0.5:
        kw["lengths"] = rng.integers(1, T + 1, B)
    return kw


def _mutate(rng, kw):
    """Break one argument; returns (name, kwargs)."""
    arrays = [k for k, v in kw.items() if isinstance(v, np.ndarray)]
    name = str(rng.choice(arrays + ["batch_first"] + (["reset_after"] if "reset_after" in kw else [])))
    v = kw[name]
    out = dict(kw)
    if name in ("batch_first", "reset_after"):
        out[name] = [1, "yes", None, 1.0][int(rng.integers(4))]
        return name, out
    how = int(rng.integers(9))
    if how == 0:
        out[name] = v.astype(np.float16 if v.dtype.kind == "f" else np.float32)
    elif how == 1:
        out[name] = v[..., None]  # an extra axis
    elif how == 2:
        out[name] = v.reshape(-1)[:-1] if v.size > 1 else v.reshape(-1)[:0]
    elif how == 3 and v.ndim >= 1 and v.shape[-1] > 1:
        out[name] = v[..., ::2]  # wrong size or not contiguous
    elif how == 4 and v.dtype.kind == "f" and v.size:
        w = v.copy()
        w.flat[int(rng.integers(w.size))] = [np.nan, np.inf, -np.inf][int(rng.integers(3))]
        out[name] = w
    elif how == 5 and name != "lengths":  # (a list of ints is a valid lengths)
        out[name] = v.tolist()
    elif how == 6 and name == "lengths":
        out[name] = v + 100  # past T
    elif how == 7 and v.ndim >= 2 and not np.asfortranarray(np.concatenate([v, v], axis=0)).flags.c_contiguous:
        out[name] = np.asfortranarray(np.concatenate([v, v], axis=0))  # (else: still a valid layout)
    else:
        out[name] = np.zeros((0,) + v.shape[1:], v.dtype)
    return name, out


def _forward(cell, kw):
    return getattr(rnncore, f"{cell}_forward")(**kw)


def _check_valid(cell, kw, failures):
    out = _forward(cell, kw)
    dhs = np.ones_like(out[0])
    g = getattr(rnncore, f"{cell}_backward")(dhs, out[-1])
    with rnncore.use_backend("numpy"):
        ref = _forward(cell, kw)
        gref = getattr(rnncore, f"{cell}_backward")(dhs, ref[-1])
    for a, b in zip(list(out[:-1]) + list(g), list(ref[:-1]) + list(gref)):
        if (a is None) != (b is None):
            failures.append(f"{cell}: None mismatch")
            return
        if a is None:
            continue
        scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
        if a.shape != b.shape or float(np.max(np.abs(a - b), initial=0.0)) > TOL[b.dtype] * max(scale, 1.0):
            failures.append(f"{cell}: native differs from the twin ({a.shape})")
            return


def _dense_call(rng, failures):
    dt = np.float32 if rng.random() < 0.5 else np.float64
    N, D, M = (int(rng.integers(1, n)) for n in (40, 20, 30))
    x, W = rng.standard_normal((N, D)).astype(dt), rng.standard_normal((D, M)).astype(dt)
    b, dy = rng.standard_normal(M).astype(dt), rng.standard_normal((N, M)).astype(dt)
    y = dense.affine_forward(x, W, b)
    g = dense.affine_backward(dy, x, W)
    with rnncore.use_backend("numpy"):
        y2, g2 = dense.affine_forward(x, W, b), dense.affine_backward(dy, x, W)
    for a, r in zip((y,) + g, (y2,) + g2):
        if float(np.max(np.abs(a - r))) > TOL[np.dtype(dt)] * max(1.0, float(np.max(np.abs(r)))):
            failures.append("affine: native differs from the twin")
    ids = rng.integers(0, M, (N,))
    if rng.random() < 0.3:
        ids = ids + M  # out of range
        try:
            dense.embedding_backward(ids, x, np.zeros((M, D), dt))
            failures.append("embedding_backward accepted ids out of range")
        except ValueError as e:
            if "ids" not in str(e):
                failures.append(f"embedding_backward: message does not name ids: {e}")
        return
    dense.embedding_backward(ids, x, np.zeros((M, D), dt))


def _layer_call(rng, failures):
    """A layer (rnncore.layers RNN / LSTM / GRU, 1-2 layers, either direction count, lengths)
    and the softmax loss: valid calls against the twin, or one broken input."""
    from rnncore import layers

    dt = np.float32 if rng.random() < 0.5 else np.float64
    cls = [layers.RNN, layers.LSTM, layers.GRU][int(rng.integers(3))]
    N, T, D, H = (int(rng.integers(1, n)) for n in (5, 6, 5, 7))
    layer = cls(D, H, num_layers=int(rng.integers(1, 3)), bidirectional=bool(rng.random() < 0.5), dtype=dt,
                rng=int(rng.integers(1000)))
    x = rng.standard_normal((N, T, D)).astype(dt)
    lengths = rng.integers(1, T + 1, N) if rng.random() < 0.5 else None
    if rng.random() < 0.5:
        broken = [x.astype(np.float16), x[..., None], x.tolist(), x[:, :, :0], x[:, :, ::2] if D > 1 else x[:0],
                  np.full_like(x, np.nan)][int(rng.integers(6))]
        try:
            layer.forward(broken, lengths=lengths)
            failures.append(f"{cls.__name__}: a broken x was accepted")
        except (ValueError, TypeError) as e:
            if " x" not in f" {e}" and "xs" not in str(e):
                failures.append(f"{cls.__name__}: the error for a broken x does not name it: {e}")
        except Exception as e:
            failures.append(f"{cls.__name__}: a broken x raised {type(e).__name__}: {e}")
        return
    dout = rng.standard_normal((N, T, layer.num_dirs * H)).astype(dt)

    def run():
        out = np.array(layer.forward(x, lengths=lengths))
        dx = layer.backward(dout)
        return [out, dx] + [g.copy() for g in layer.grads]

    got = run()
    with rnncore.use_backend("numpy"):
        ref = run()
    for a, r in zip(got, ref):
        if float(np.max(np.abs(a - r), initial=0.0)) > TOL[np.dtype(dt)] * max(1.0, float(np.max(np.abs(r), initial=0.0))):
            failures.append(f"{cls.__name__}: native differs from the twin")
            return
    scores = rng.standard_normal((N, T, 7)).astype(dt)
    ts = rng.integers(0, 7, (N, T))
    if rng.random() < 0.5:
        ts = ts.astype(np.float64) if rng.random() < 0.5 else ts + 7
        try:
            rnncore.softmax_cross_entropy(scores, ts)
            failures.append("softmax_cross_entropy: broken targets accepted")
        except (ValueError, TypeError) as e:
            if "targets" not in str(e):
                failures.append(f"softmax_cross_entropy: the error does not name targets: {e}")
    else:
        loss, probs = rnncore.softmax_cross_entropy(scores, ts)
        with rnncore.use_backend("numpy"):
            loss2, _ = rnncore.softmax_cross_entropy(scores, ts)
        if abs(loss - loss2) > 1e-4 * max(1.0, abs(loss2)):
            failures.append("softmax_cross_entropy: native differs from the twin")


def run(calls, seed):
    rng = np.random.default_rng(seed)
    counts = {"calls": 0, "valid_ok": 0, "refused": 0}
    failures = []
    for _ in range(calls):
        counts["calls"] += 1
        kind = rng.random()
        if kind < 0.1:
            _dense_call(rng, failures)
            counts["valid_ok"] += 1
            continue
        if kind > 0.9:
            _layer_call(rng, failures)
            counts["layers"] = counts.get("layers", 0) + 1
            continue
        cell = str(rng.choice(list(GATES)))
        kw = _valid_recurrent(rng, cell)
        if kind < 0.4:
            try:
                _check_valid(cell, kw, failures)
                counts["valid_ok"] += 1
            except (ValueError, TypeError) as e:
                failures.append(f"valid {cell} call refused: {e}")
            continue
        name, bad = _mutate(rng, kw)
        try:
            _forward(cell, bad)
            failures.append(f"{cell}: broken {name} accepted")
        except (ValueError, TypeError) as e:
            counts["refused"] += 1
            msg = str(e)
            # x and wx fix T, B, D and H: a broken one may surface as the argument that then
            # disagrees with it (h0, wh, lengths), which the message names with its expected shape
            named = [k for k in kw if k in msg.replace("(", " ").replace(")", " ").replace(",", " ").split()
                     or f"{k} " in msg or f"{k}:" in msg]
            if name not in named and not (name in ("x", "wx") and named):
                failures.append(f"{cell}: the error for a broken {name} does not name it: {msg}")
        except Exception as e:  # anything else is a defect
            failures.append(f"{cell}: broken {name} raised {type(e).__name__}: {e}")
    counts["failures"] = len(failures)
    return counts, failures


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    counts, failures = run(args.calls, args.seed)
    for f in failures[:20]:
        print("FAIL", f, file=sys.stderr)
    print(json.dumps(counts))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
