"""Textbook Rnnlm (DL2 ch06): plain-NumPy time layers vs rnncore.time_layers.

The same model code, TimeEmbedding -> TimeLSTM (stateful) -> TimeAffine -> TimeSoftmaxWithLoss
with vocab 10000, batch 20, 35 time steps and wordvec = hidden, is built once on each layers
module: (a) rnncore.textbook.layers, the book's per-step Python loop in NumPy, and (b)
rnncore.time_layers, one native call per recurrence. Each iteration is forward + backward +
an SGD update, as RnnlmTrainer does. Both runs start from the same weights and batches; the
script first checks that their losses agree, then prints ms/iter and the speed-up.

    python bench/textbook_lm.py [--hidden 100 650] [--iters N] [--backend native|numpy]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

import rnncore
import rnncore.time_layers
from rnncore.textbook import layers as _textbook_layers
from rnncore.textbook.models import Rnnlm


def batches(n, V=10000, N=20, T=35, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, V, (N, T), dtype=np.int32), rng.integers(0, V, (N, T), dtype=np.int32))
            for _ in range(n)]


def step(model, xs, ts, lr):
    """One training iteration; returns (loss, seconds)."""
    t0 = time.perf_counter()
    loss = model.forward(xs, ts)
    model.backward()
    for p, g in zip(model.params, model.grads):
        p -= lr * g
    return float(loss), time.perf_counter() - t0


def run(hidden, data, backend, lr=0.1):
    """Both models, iterations interleaved (so they share whatever else loads the machine).

    Returns the losses and per-iteration seconds of the textbook layers and of rnncore's.
    """
    ref = Rnnlm(_textbook_layers, wordvec_size=hidden, hidden_size=hidden)
    rc = Rnnlm(rnncore.time_layers, wordvec_size=hidden, hidden_size=hidden)
    out = np.zeros((2, 2, len(data)))  # [ref, rc] x [loss, seconds] x iteration
    for i, (xs, ts) in enumerate(data):
        out[0, :, i] = step(ref, xs, ts, lr)
        with rnncore.use_backend(backend):
            out[1, :, i] = step(rc, xs, ts, lr)
    return out[0, 0], out[0, 1], out[1, 0], out[1, 1]


def blas_threads():
    """Thread counts of the loaded BLAS / OpenMP libraries (threadpoolctl, if installed)."""
    try:
        import threadpoolctl
    except ImportError:
        return "threadpoolctl not installed"
    return ", ".join(f"{i['prefix']}={i['num_threads']}" for i in threadpoolctl.threadpool_info())


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[100, 650], help="hidden sizes (wordvec = hidden)")
    ap.add_argument("--iters", type=int, default=None,
                    help="timed iterations per model (default 6 for hidden <= 200, else 3)")
    ap.add_argument("--backend", choices=("native", "numpy"), default="native", help="rnncore backend")
    args = ap.parse_args(argv)

    blas = rnncore.blas_info()
    print(f"CPU: {cpu_model()} | logical cores {os.cpu_count()} | rnncore threads {rnncore.get_num_threads()}"
          f" | rnncore BLAS {blas.get('corename', '?') if isinstance(blas, dict) else blas}"
          f" | backend {args.backend}")
    print(f"threads: {blas_threads()}; load average {os.getloadavg()[0]:.1f} (iterations of both models"
          f" are interleaved; times are medians)")
    print("Rnnlm: vocab 10000, batch 20, time 35, wordvec = hidden; forward + backward + SGD per iteration")
    print(f"{'hidden':>6} {'iters':>5} {'textbook ms/it':>15} {'rnncore ms/it':>14} {'speed-up':>9} {'loss diff':>10}")
    for H in args.hidden:
        iters = args.iters or (6 if H <= 200 else 3)
        data = batches(iters + 1)  # the first iteration is a warm-up and is not timed
        l_ref, t_ref, l_rc, t_rc = run(H, data, args.backend)
        diff = float(np.abs(l_ref - l_rc).max())
        if diff > 1e-3 * float(np.abs(l_ref).max()):
            print(f"  WARNING: losses differ by {diff:.3g}", file=sys.stderr)
        ms_ref, ms_rc = 1e3 * np.median(t_ref[1:]), 1e3 * np.median(t_rc[1:])
        print(f"{H:>6} {iters:>5} {ms_ref:>15.1f} {ms_rc:>14.1f} {ms_ref / ms_rc:>8.2f}x {diff:>10.2g}", flush=True)


if __name__ == "__main__":
    main()
