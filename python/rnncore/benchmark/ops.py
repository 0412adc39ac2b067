"""``rnncore bench``: the side-by-side timing table of RNN implementations on this CPU.

For each cell (Elman ``rnn``, ``lstm``, ``gru``) and each grid point (sequence length T,
batch B, hidden H with D = H, thread count) it times the forward alone and the forward plus
backward (BPTT) of:

- ``native``: rnncore's C++ ops (``rnncore.rnn_forward`` / ``rnn_backward`` ...);
- ``twin``: the same calls on the NumPy twin (``rnncore.reference``);
- ``textbook``: for ``rnn`` only, a NumPy RNN written the textbook way (one cell object per
  time step, per-step matmuls, a Python loop in backward: ``rnncore.textbook.layers.TimeRNN``);
- ``torch``: ``torch.nn.RNN`` / ``nn.LSTM`` / ``nn.GRU``, if PyTorch imports (forward with
  autograd on, then ``out.backward(dout)``, the gradient of ``sum(out * dout)``);
- ``ort`` (``--forward`` only): ONNX Runtime's ``RNN`` / ``LSTM`` / ``GRU`` operator on the
  same weights, if ``onnxruntime`` and ``onnx`` import (float32).

Every implementation is checked against native once, on its warm-up run, before it is
timed; a mismatch is printed loudly and makes the exit status 1. Times are medians of
repeated runs, the implementations taking turns at each point in ``--rounds`` rounds; ratios
(impl / native) compare runs of the same process, interleaved, which is what stays
meaningful on a noisy, shared machine. Effective GFLOP/s counts the matmul work only:
forward ``2*T*B*G*H*(D+H)`` (G = 1 rnn, 4 lstm, 3 gru), backward twice that.

``--forward`` times inference alone: the forward of every implementation (rnncore's with
``inference=True``, keeping no cache; PyTorch's under ``torch.no_grad()``), its time per step in
microseconds (the number that matters at batch 1), and the ratio of each forward to native's.

Every table also measures the machine's GEMM peak in the same run: the best of an n x n x n
GEMM (n = 2048, the table's dtype) through rnncore's BLAS on its thread team and through
NumPy's BLAS, at each thread count; native's rate is shown as a percentage of it.

Entry point: :func:`main` (``rnncore bench``; ``python bench/compare.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

from .. import _ops, cells
from .._version import __version__
from ..interop import to_state_dict
from ..threads import blas_info, get_num_threads, kernel_info, num_threads
from .stats import in_turn, paired_ratio

#: the gate count of each cell with a native kernel (from the registry, :mod:`rnncore.cells`)
GATES = {c: cells.flavours(c)[0].gates for c in cells.cells(native=True)}
CELLS = tuple(GATES)
IMPLS = ("native", "twin", "textbook", "torch", "ort")

DEFAULTS = dict(cells=["rnn"], batch=[1, 8, 64, 256], hidden=[128, 512], seq_len=100, threads=[1, 2])
QUICK = dict(batch=[1, 8], hidden=[32, 64], seq_len=20, threads=[1], min_time=0.02, max_seconds=2.0, rounds=1)

#: validation tolerance: max|impl - native| <= TOL * max|native|, per tensor
TOL = {"float32": 1e-4, "float64": 1e-8}


def flops_forward(T, B, D, H, G):
    """Matmul FLOPs of one forward: ``2*T*B*G*H*(D+H)`` (input and recurrent projections)."""
    return 2 * T * B * G * H * (D + H)


# -- the textbook NumPy RNN: the book's TimeRNN (one step object a time step, two matmuls a step,
# a Python loop in backward), from rnncore.textbook, the one copy of the book's code
from ..textbook.layers import TimeRNN as _TextbookTimeRNN  # noqa: E402


# -- one grid point's data, and each implementation set up on it ---------------------------------

class Problem:
    """Inputs of one grid point, time-major: x (T,B,D), wx (D,GH), wh (H,GH), b_ih, b_hh, dhs (T,B,H)."""

    def __init__(self, cell, T, B, H, dtype, seed=0):
        rng = np.random.default_rng(seed)
        G, D = GATES[cell], H
        s = 1.0 / np.sqrt(H)
        self.cell, self.T, self.B, self.D, self.H, self.G = cell, T, B, D, H, G
        self.dtype = np.dtype(dtype)
        self.x = rng.standard_normal((T, B, D)).astype(dtype)
        self.wx = rng.uniform(-s, s, (D, G * H)).astype(dtype)
        self.wh = rng.uniform(-s, s, (H, G * H)).astype(dtype)
        self.b_ih = rng.uniform(-s, s, (G * H,)).astype(dtype)
        self.b_hh = None if cells.flavours(cell)[0].fused_bias else rng.uniform(-s, s, (G * H,)).astype(dtype)
        self.dhs = rng.standard_normal((T, B, H)).astype(dtype)

    @property
    def flops_fwd(self):
        return flops_forward(self.T, self.B, self.D, self.H, self.G)


class _NativeOps:
    """rnncore's op pair (:class:`rnncore._ops.Ops`: the active backend's, or the twin's)."""

    def __init__(self, ops, p):
        self.p, self.ops = p, ops
        self.out = None

    def _forward(self, inference=False):
        p = self.p
        hs, _, _, cache = self.ops.forward(p.cell, p.x, p.wx, p.wh, p.b_ih, p.b_hh, inference=inference)
        return hs, cache

    def forward(self):
        return self._forward()[0]

    def infer(self):  # the forward-only table: no cache, as torch under no_grad and ORT keep none
        return self._forward(inference=True)[0]

    def forward_backward(self):
        hs, cache = self._forward()
        grads = self.ops.backward(cache, self.p.dhs)
        self.out = (hs, grads)

    def result(self):
        hs, g = self.out
        r = {"hs": hs, "dx": g[0], "dwx": g[1], "dwh": g[2], "db_ih": g[3]}
        if g[4] is not None:
            r["db_hh"] = g[4]
        return r

    def threads(self, n):
        raise NotImplementedError


class _Native(_NativeOps):
    def __init__(self, p):
        super().__init__(_ops.ACTIVE, p)

    def threads(self, n):
        return num_threads(n)


class _Twin(_NativeOps):
    def __init__(self, p):
        from .. import reference

        super().__init__(reference.OPS, p)

    def threads(self, n):
        return _numpy_threads(n)


def _numpy_threads(n):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")


class _Textbook:
    def __init__(self, p):
        if p.cell != "rnn":
            raise _NotApplicable("the textbook implementation is the Elman rnn only")
        self.p = p
        self.xs = np.ascontiguousarray(p.x.swapaxes(0, 1))  # the textbook is batch-first
        self.dhs = np.ascontiguousarray(p.dhs.swapaxes(0, 1))
        self.layer = _TextbookTimeRNN(p.wx.copy(), p.wh.copy(), p.b_ih.copy())
        self.out = None

    def forward(self):
        return self.layer.forward(self.xs).swapaxes(0, 1)

    def forward_backward(self):
        hs = self.layer.forward(self.xs)
        dxs = self.layer.backward(self.dhs)
        self.out = (hs, dxs)

    def result(self):
        hs, dxs = self.out
        g = self.layer.grads
        return {"hs": hs.swapaxes(0, 1), "dx": dxs.swapaxes(0, 1), "dwx": g[0], "dwh": g[1], "db_ih": g[2]}

    def threads(self, n):
        return _numpy_threads(n)


class _Torch:
    def __init__(self, p):
        import torch

        self.torch, self.p = torch, p
        tdt = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[p.dtype]
        D, H = p.D, p.H
        mod = getattr(torch.nn, p.cell.upper())(D, H, dtype=tdt)  # nn.RNN (tanh), nn.LSTM, nn.GRU
        b_hh = p.b_hh if p.b_hh is not None else np.zeros_like(p.b_ih)  # rnn: one bias, b_hh = 0
        sd = to_state_dict(p.cell, [(p.wx, p.wh, p.b_ih, b_hh)])
        mod.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
        self.mod = mod
        self.x = torch.from_numpy(p.x.copy()).requires_grad_(True)
        self.dout = torch.from_numpy(p.dhs)
        self.out = None

    def forward(self):
        return self.mod(self.x)[0].detach().numpy()  # autograd on: the forward of a training step

    def infer(self):
        with self.torch.no_grad():  # inference: no graph recorded
            return self.mod(self.x)[0].numpy()

    def forward_backward(self):
        self.x.grad = None
        for q in self.mod.parameters():
            q.grad = None
        out, _ = self.mod(self.x)
        out.backward(self.dout)  # = gradient of sum(out * dout)
        self.out = out

    def result(self):
        m = self.mod
        r = {"hs": self.out.detach().numpy(), "dx": self.x.grad.numpy(),
             "dwx": m.weight_ih_l0.grad.numpy().T, "dwh": m.weight_hh_l0.grad.numpy().T,
             "db_ih": m.bias_ih_l0.grad.numpy()}
        if self.p.b_hh is not None:
            r["db_hh"] = m.bias_hh_l0.grad.numpy()
        return r

    @contextlib.contextmanager
    def threads(self, n):
        before = self.torch.get_num_threads()
        self.torch.set_num_threads(n)
        try:
            yield
        finally:
            self.torch.set_num_threads(before)


class _Ort:
    """ONNX Runtime's RNN / LSTM / GRU operator on the same weights (:func:`rnncore.onnx.export_recurrent`):
    a forward-only peer (inference), one session per thread count (ONNX Runtime fixes its
    threads when a session is made)."""

    def __init__(self, p):
        import onnxruntime
        from .. import onnx as rx

        if p.dtype != np.float32:
            raise _NotApplicable("onnxruntime's recurrent operators are float32 only")
        self.ort, self.p = onnxruntime, p
        b_hh = p.b_hh if p.b_hh is not None else np.zeros_like(p.b_ih)  # rnn: one bias, b_hh = 0
        model = rx.export_recurrent(p.cell, [(p.wx, p.wh, p.b_ih, b_hh)])
        self.model = model.SerializeToString()
        self.sessions, self.session = {}, None

    def infer(self):
        return self.session.run(["y"], {"x": self.p.x})[0]

    forward = infer

    def forward_backward(self):
        raise _NotApplicable("ONNX Runtime runs inference only")

    @contextlib.contextmanager
    def threads(self, n):
        if n not in self.sessions:
            opts = self.ort.SessionOptions()
            opts.intra_op_num_threads = n
            opts.inter_op_num_threads = 1
            self.sessions[n] = self.ort.InferenceSession(self.model, opts, providers=["CPUExecutionProvider"])
        before, self.session = self.session, self.sessions[n]
        try:
            yield
        finally:
            self.session = before


class _NotApplicable(Exception):
    pass


FACTORIES = {"native": _Native, "twin": _Twin, "textbook": _Textbook, "torch": _Torch, "ort": _Ort}


# -- timing --------------------------------------------------------------------------------------

def _time_runs(fn, budget, min_time, min_runs, repeat, max_runs=10000):
    """Times of repeated ``fn()`` calls (seconds, after any warm-up the caller did).

    With ``repeat``: exactly that many. Otherwise until at least ``min_runs`` runs and
    ``min_time`` seconds, but never starting a run that would overrun ``budget`` seconds
    (at least one run is always made).
    """
    times = []
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            n, elapsed = len(times), time.perf_counter() - start
            if repeat:
                if n >= repeat:
                    break
                continue
            if n >= max_runs or (n >= min_runs and elapsed >= min_time):
                break
            if elapsed + statistics.median(times) > budget:
                break
    finally:
        if gc_was:
            gc.enable()
    return times


#: longest wait for the other threads of this process to stop running before a turn (seconds)
SETTLE_MAX_S = 1.0


def _settle(max_s=SETTLE_MAX_S):
    """Wait until no other thread of this process is running (state R in /proc), at most
    ``max_s`` seconds. The peers' thread pools spin after their calls: ONNX Runtime's for some
    50-200 ms (an rnncore LSTM forward right after an ORT session's run took 1.7x its time,
    0.2 s later its own), PyTorch's OpenMP team and NumPy's OpenBLAS for milliseconds; timed
    then, the next implementation would be paying for the previous one's idle threads, which a
    program using only one of them does not. rnncore's own workers sleep after 50 us. Returns
    the seconds waited (0 where /proc is not there)."""
    me = str(threading.get_native_id())
    start = time.perf_counter()
    while True:
        try:
            busy = False
            for tid in os.listdir("/proc/self/task"):
                if tid == me:
                    continue
                try:
                    with open(f"/proc/self/task/{tid}/stat", "rb") as f:
                        stat = f.read()
                except OSError:  # the thread ended
                    continue
                if stat[stat.rindex(b")") + 2:][:1] == b"R":
                    busy = True
                    break
        except OSError:
            return 0.0
        waited = time.perf_counter() - start
        if not busy or waited >= max_s:
            return waited
        time.sleep(0.005)


def _stats(times):
    return {"median": statistics.median(times), "min": min(times), "runs": len(times)}


def _compare(res, ref, tol):
    """Per tensor relative error ``max|a - ref| / max|ref|``; returns (errors, failures)."""
    errs, bad = {}, []
    for k, r in ref.items():
        a = res.get(k)
        if a is None:
            continue
        a = np.asarray(a)
        if a.shape != r.shape:
            errs[k] = float("inf")
            bad.append(f"{k}: shape {a.shape} != native {r.shape}")
            continue
        scale = float(np.max(np.abs(r))) or 1.0
        e = float(np.max(np.abs(a.astype(np.float64) - r))) / scale
        errs[k] = e
        if not e <= tol:
            bad.append(f"{k}: rel. err {e:.2e} > {tol:.0e}")
    return errs, bad


# -- the machine's GEMM peak ---------------------------------------------------------------------

PEAK_N = 2048


def gemm_peak(threads, dtype="float32", n=PEAK_N, min_time=0.3):
    """GFLOP/s of an ``n x n x n`` GEMM at ``threads`` threads: the best of rnncore's BLAS
    (:func:`rnncore.dense.affine_forward`, on rnncore's thread team) and NumPy's BLAS (``@``).
    Returns ``{"gflops": best, "rnncore": ..., "numpy": ..., "n": n}``."""
    from .. import dense

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    flops = 2.0 * n ** 3
    rates = {}
    with num_threads(threads):
        dense.affine_forward(a, b)
        rates["rnncore"] = flops / min(_time_runs(lambda: dense.affine_forward(a, b), 10 * min_time,
                                                  min_time, 3, None)) / 1e9
    with _numpy_threads(threads):
        a @ b
        rates["numpy"] = flops / min(_time_runs(lambda: a @ b, 10 * min_time, min_time, 3, None)) / 1e9
    return dict(rates, gflops=max(rates.values()), n=n, threads=threads, dtype=str(np.dtype(dtype)))


# -- the environment header ----------------------------------------------------------------------

def _cpu():
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = val.strip()
                elif key == "flags" and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    return model, {f: (f in flags) if flags else None for f in ("avx2", "avx512f", "fma")}


def _onnxruntime_facts():
    try:
        import onnx
        import onnxruntime

        return {"version": onnxruntime.__version__, "onnx": onnx.__version__,
                "providers": onnxruntime.get_available_providers()}
    except Exception as e:  # ImportError, or a broken install
        return {"error": f"{type(e).__name__}: {e}"}


#: environment variables that cap a peer's instruction set (oneDNN's and MKL's), shown when set
PEER_ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def environment(want_torch, want_ort=False):
    """Facts that decide the numbers: CPU, ISA, BLAS builds and kernels, thread settings."""
    from threadpoolctl import threadpool_info

    model, isa = _cpu()
    env = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": model, "logical_cpus": os.cpu_count(), "isa": isa,
        "python": platform.python_version(), "numpy": np.__version__, "rnncore": __version__,
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        # the peers' own ISA caps: RNNCORE_ISA=avx2 against peers held to AVX2 as well is the
        # comparison an AVX2-only CPU would give (torch: oneDNN and MKL read these)
        "peer_isa_caps": {k: os.environ[k] for k in PEER_ISA_CAPS if os.environ.get(k)},
    }
    try:
        info = blas_info()
        env["rnncore_blas"] = {k: info.get(k) for k in ("corename", "version", "config", "filepath", "num_threads")}
        env["rnncore_threads"] = get_num_threads()
    except RuntimeError as e:
        env["rnncore_blas"] = {"error": str(e)}
    try:
        k = kernel_info()
        env["rnncore_kernels"] = {key: k.get(key) for key in ("isa", "supported", "vector_bytes", "build", "isa_flags",
                                                              "l2_bytes", "step_split", "step_balance")}
    except RuntimeError as e:  # not built, or RNNCORE_ISA names a variant this CPU cannot run
        env["rnncore_kernels"] = {"error": str(e)}
    env["RNNCORE_ISA"] = os.environ.get("RNNCORE_ISA")
    mine = env["rnncore_blas"].get("filepath")
    env["numpy_blas"] = [
        {k: lib.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "filepath")}
        for lib in threadpool_info() if lib.get("user_api") == "blas" and lib.get("filepath") != mine]
    env["onnxruntime"] = _onnxruntime_facts() if want_ort else None
    env["torch"] = None
    if want_torch:
        try:
            import torch

            env["torch"] = {"version": torch.__version__, "threads": torch.get_num_threads(),
                            "mkl": torch.backends.mkl.is_available(),
                            "mkldnn": torch.backends.mkldnn.is_available()}
        except Exception as e:  # ImportError, or a broken install
            env["torch"] = {"error": f"{type(e).__name__}: {e}"}
    return env


def machine_lines(env):
    """The header lines that name the machine, the libraries, their kernels and threads."""
    yn = {True: "yes", False: "no", None: "?"}
    isa = ", ".join(f"{k} {yn[v]}" for k, v in env["isa"].items())
    rb = env["rnncore_blas"]
    lines = [
        f"rnncore bench   rnncore {env['rnncore']}, numpy {env['numpy']}, Python {env['python']}, {env['date']}",
        f"CPU: {env['cpu']} ({env['logical_cpus']} logical CPUs); ISA: {isa}",
        (f"rnncore BLAS: {rb.get('config') or rb.get('version')} (kernel {rb.get('corename')}), "
         f"rnncore threads default {env.get('rnncore_threads')}" if "error" not in rb
         else f"rnncore: {rb['error']}"),
    ]
    k = env.get("rnncore_kernels") or {}
    if "isa" in k:
        lines.append(f"rnncore kernels: {k['isa']} ({k['vector_bytes']}-byte vectors, {k['isa_flags']}; "
                     f"{k['build']} build; this CPU runs {', '.join(k['supported'])})"
                     + (f"  RNNCORE_ISA={env['RNNCORE_ISA']}" if env.get("RNNCORE_ISA") else ""))
        lines.append(f"rnncore time loop: split {k['step_split']} (by batch rows or hidden units, from the sizes and "
                     f"the {k['l2_bytes'] // 1024} KiB L2 a core: rnncore.kernel_info), balance "
                     f"{k.get('step_balance', 'timed')} (unit blocks moved to the faster core every 16 steps, "
                     f"rows taken by a thread that is done)")
    elif "error" in k:
        lines.append(f"rnncore kernels: {k['error']}")
    for lib in env["numpy_blas"]:
        lines.append(f"numpy BLAS: {lib['internal_api']} {lib['version']} (kernel {lib['architecture']}), "
                     f"{os.path.basename(lib['filepath'] or '')}")
    t = env["torch"]
    if t is None:
        lines.append("torch: not requested")
    elif "error" in t:
        lines.append(f"torch: unavailable ({t['error']})")
    else:
        lines.append(f"torch: {t['version']}, default threads {t['threads']}, MKL {yn[t['mkl']]}, "
                     f"oneDNN {yn[t['mkldnn']]}")
    o = env.get("onnxruntime")
    if o is not None:
        lines.append(f"onnxruntime: {o['version']} (onnx {o['onnx']}), session threads = the row's thread count, "
                     "inter-op 1" if "error" not in o else f"onnxruntime: unavailable ({o['error']})")
    lines.append(f"env: OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE'] or '(unset)'}  "
                 f"OMP_NUM_THREADS={env['OMP_NUM_THREADS'] or '(unset)'}")
    if env.get("peer_isa_caps"):
        lines.append("peers' ISA capped: " + "  ".join(f"{k}={v}" for k, v in env["peer_isa_caps"].items())
                     + " (torch's oneDNN and MKL; onnxruntime has no such setting and keeps its own choice)")
    if env["OPENBLAS_CORETYPE"]:
        lines.append("  note: OPENBLAS_CORETYPE pins OpenBLAS's kernel; unset it to let OpenBLAS pick for this CPU")
    if env.get("load"):
        lines.append(f"load: {env['load']} busy process(es) started by the benchmark (python -c 'while 1: pass')")
    return lines


def _timing(cfg):
    each = (f"{cfg['repeat']} runs" if cfg["repeat"] else
            f">= {-(-3 // cfg['rounds'])} runs and >= {cfg['min_time'] / cfg['rounds']:g}s")
    return (f"median of all runs of {cfg['rounds']} round(s) at each point, the implementations taking turns "
            f"({each} each a round, every other round in reverse order); x paired round by round: the "
            "median over the rounds of each round's ratio of medians")


def _header_lines(env, cfg):
    lines = machine_lines(env)
    if cfg.get("forward"):
        return lines + [
            f"grid: cells {','.join(cfg['cells'])}; T={cfg['seq_len']}; D=H; B {cfg['batch']}; H {cfg['hidden']}; "
            f"threads {cfg['threads']}; dtype {cfg['dtype']}; forward only (inference)",
            f"timing: {_timing(cfg)}"
            f" after a warm-up run that is also the check of hs against native (tol {TOL[cfg['dtype']]:g} x max|native|)",
            "columns: fwd = forward time in ms; us/st = microseconds per time step (fwd / T); "
            "x = impl fwd / native fwd (> 1: native is faster); GF/s = native forward 2*T*B*G*H*(D+H) / time, "
            "pk% = that rate as a share of the GEMM peak above; native runs with inference=True (no cache), "
            "torch under torch.no_grad()",
        ]
    lines += [
        f"grid: cells {','.join(cfg['cells'])}; T={cfg['seq_len']}; D=H; B {cfg['batch']}; H {cfg['hidden']}; "
        f"threads {cfg['threads']}; dtype {cfg['dtype']}",
        f"timing: {_timing(cfg)}"
        f" after a warm-up run that is also the check against native (tol {TOL[cfg['dtype']]:g} x max|native|); "
        f"--max-seconds {cfg['max_seconds']:g} per implementation and point",
        "FLOPs: forward 2*T*B*G*H*(D+H) (G = 1 rnn, 4 lstm, 3 gru), backward 2x forward; "
        "GF/s = native 3*forward FLOPs / native fwd+bwd time",
        "columns: times in ms (fwd alone; f+b = forward + backward); x = impl f+b time / native f+b time "
        "(> 1: native is faster); pk% = native GF/s as a share of the GEMM peak above; "
        "torch fwd runs with autograd on",
    ]
    return lines


# -- the table -----------------------------------------------------------------------------------

def _ms(s):
    if s is None:
        return "-"
    ms = s * 1e3
    if ms < 1:
        return f"{ms:.3f}"
    if ms < 10:
        return f"{ms:.2f}"
    if ms < 100:
        return f"{ms:.1f}"
    return f"{ms:.0f}"


IMPL_W = {"native": 28, "twin": 22, "textbook": 22, "torch": 22, "ort": 22}


def _us(s):
    return "-" if s is None else (f"{s * 1e6:.1f}" if s * 1e6 < 1000 else f"{s * 1e6:.0f}")


def _table_head(impls, forward=False):
    top = f"{'cell':<5}{'thr':>4}{'B':>5}{'H':>6} "
    sub = " " * len(top)
    for name in impls:
        top += "| " + name.ljust(IMPL_W[name])
        if forward:
            last = f"{'GF/s':>7}{'pk%':>5}" if name == "native" else f"{'x':>6}"
            sub += "| " + f"{'fwd':>7}{'us/st':>8}{last}".ljust(IMPL_W[name])
        elif name == "native":
            sub += "| " + f"{'fwd':>7}{'f+b':>8}{'GF/s':>7}{'pk%':>5}".ljust(IMPL_W[name])
        else:
            sub += "| " + f"{'fwd':>7}{'f+b':>8}{'x':>6}".ljust(IMPL_W[name])
    return [top.rstrip(), sub.rstrip()]


def _pct(r, key):
    v = r.get(key)
    return f"{v:.0f}" if v else "-"


def _forward_cell(name, r, T):
    st = r["status"]
    if st not in ("ok", "failed") or not r.get("fwd"):
        return f"{st.upper() if st in ('failed', 'error') else st:>7}"
    med = r["fwd"]["median"]
    cell = f"{_ms(med):>7}{_us(med / T):>8}"
    if st == "failed":
        return cell + " FAILED"
    if name == "native":
        gf = r.get("gflops_fwd")
        return cell + f"{(f'{gf:.1f}' if gf else '-'):>7}{_pct(r, 'peak_pct_fwd'):>5}"
    ratio = r.get("ratio_fwd")
    return cell + f"{(f'{ratio:.1f}x' if ratio else '-'):>6}"


def _table_row(row, impls, forward=False):
    s = f"{row['cell']:<5}{row['threads']:>4}{row['B']:>5}{row['H']:>6} "
    if forward:
        for name in impls:
            r = row["impls"].get(name, {"status": "n/a"})
            s += "| " + _forward_cell(name, r, row["T"]).ljust(IMPL_W[name])
        return s.rstrip()
    for name in impls:
        r = row["impls"].get(name, {"status": "n/a"})
        st = r["status"]
        if st in ("ok", "failed") and r.get("fwdbwd"):
            fwd = _ms(r["fwd"]["median"]) if r.get("fwd") else "-"
            fb = _ms(r["fwdbwd"]["median"])
            if name == "native":
                gf = r.get("gflops")
                cell = f"{fwd:>7}{fb:>8}{(f'{gf:.1f}' if gf else '-'):>7}{_pct(r, 'peak_pct'):>5}"
            else:
                ratio = r.get("ratio")
                cell = f"{fwd:>7}{fb:>8}{(f'{ratio:.1f}x' if ratio else '-'):>6}"
            if st == "failed":
                cell = f"{fwd:>7}{fb:>8} FAILED"  # the ratio is in --json
        else:
            cell = f"{st.upper() if st in ('failed', 'error') else st:>7}"
        s += "| " + cell.ljust(IMPL_W[name])
    return s.rstrip()


# -- running the grid ----------------------------------------------------------------------------

def _warm_up(run, result, rec, key, flops, limit, best_rate, check):
    """The first ``run()`` (warm-up, and the run that is checked): records its time in ``rec``
    and ``best_rate``, checks ``result(out)``; past ``limit`` seconds the record says so (and
    the caller stops there). -> (seconds, result)."""
    t0 = time.perf_counter()
    out = run()
    warm = time.perf_counter() - t0
    rec["warmup"] = warm
    best_rate[key] = min(best_rate.get(key, float("inf")), warm / flops)
    res = result(out)
    check(res)
    if warm > limit:
        rec["note"] = f"warm-up took {warm:.3g}s > --max-seconds"
        if rec["status"] == "ok":
            rec["status"] = "skipped"
    return warm, res


def _set_up(name, p, say):
    """(the implementation ``name`` on ``p``, None), or (None, its "n/a" / "error" record)."""
    try:
        return FACTORIES[name](p), None
    except _NotApplicable:
        return None, {"status": "n/a"}
    except Exception as e:  # an implementation that cannot be set up here: report, carry on
        say(f"!!! ERROR: {name} {p.cell} B={p.B} H={p.H}: setting up: {type(e).__name__}: {e}", err=True)
        return None, {"status": "error", "note": f"{type(e).__name__}: {e}"}


def _prepare(name, p, threads, ref, cfg, best_rate, say):
    """One implementation at one point: set up, warm-up + check (``--forward``: its forward, its
    ``infer`` where it has one). Returns (implementation or None when it is not to be timed,
    record, outputs)."""
    fwd_only = bool(cfg.get("forward"))
    key = (name, p.cell, threads) + (("fwd",) if fwd_only else ())
    flops = p.flops_fwd if fwd_only else 3 * p.flops_fwd
    rec = {"status": "ok"}
    limit = float("inf") if name == "native" else cfg["max_seconds"]  # native is the yardstick: always run
    if key in best_rate and best_rate[key] * flops > limit:
        est = best_rate[key] * flops
        what = "forward" if fwd_only else "fwd+bwd"
        return None, {"status": "skipped", "note": f"estimated {est:.3g}s per {what} > --max-seconds"}, None
    impl, failed = _set_up(name, p, say)
    if impl is None:
        return None, failed, None
    try:
        if fwd_only:
            run, result = getattr(impl, "infer", impl.forward), (lambda hs: {"hs": np.array(hs)})
        else:
            run, result = impl.forward_backward, (lambda _: impl.result())
        with impl.threads(threads):
            warm, res = _warm_up(run, result, rec, key, flops, limit, best_rate,
                                 lambda res: _check(rec, name, p, threads, res, ref, cfg, say))
            if warm > limit:
                return None, rec, res
            if not fwd_only:
                impl.forward()  # warm the forward-only path
        rec["budget"] = max(cfg["max_seconds"], 2 * warm) / 2
        return impl, rec, res
    except Exception as e:  # report and carry on with the other implementations
        say(f"!!! ERROR: {name} {p.cell} B={p.B} H={p.H} threads={threads}: {type(e).__name__}: {e}", err=True)
        return None, {"status": "error", "note": f"{type(e).__name__}: {e}"}, None


def _time_point(prepared, p, threads, cfg, best_rate, say):
    """Time the prepared implementations at one point in ``cfg["rounds"]`` rounds, the
    implementations taking turns within each round, so that a slower or faster spell of a shared
    machine (other tenants' work, which comes and goes over seconds) falls on all of them alike;
    each turn starts once the other implementations' threads have stopped spinning (_settle),
    and every other round takes them in the reverse order; every record gets the median and
    minimum over all its rounds' runs, and each round's median (``round_medians``, which the
    ratios pair: _ratios)."""
    fwd_only = bool(cfg.get("forward"))
    rounds = max(1, int(cfg.get("rounds") or 1))
    times = {name: {"fwd": [], "fwdbwd": []} for name in prepared}
    meds = {name: {"fwd": [], "fwdbwd": []} for name in prepared}
    for r in range(rounds):
        for name in in_turn(list(prepared), r):
            impl, rec = prepared[name]
            if rec["status"] not in ("ok", "failed"):  # an error in an earlier round
                continue
            budget = rec["budget"] / rounds
            # >= 3 runs in all, >= min_time seconds in all, every round its share
            share = dict(budget=budget, min_time=cfg["min_time"] / rounds, min_runs=-(-3 // rounds),
                         repeat=cfg["repeat"])
            try:
                _settle()
                with impl.threads(threads):
                    runs = {}
                    if fwd_only:
                        runs["fwd"] = _time_runs(getattr(impl, "infer", impl.forward), **share)
                    else:
                        runs["fwdbwd"] = _time_runs(impl.forward_backward, **share)
                        runs["fwd"] = _time_runs(impl.forward, **share)
                for kind, v in runs.items():
                    times[name][kind] += v
                    meds[name][kind].append(statistics.median(v))
            except Exception as e:  # report and carry on with the other implementations
                say(f"!!! ERROR: {name} {p.cell} B={p.B} H={p.H} threads={threads}: {type(e).__name__}: {e}",
                    err=True)
                prepared[name] = (impl, {"status": "error", "note": f"{type(e).__name__}: {e}"})
    for name, (impl, rec) in prepared.items():
        rec.pop("budget", None)
        t = times[name]
        if not t["fwd"] or rec["status"] == "error":
            continue
        rec["fwd"] = dict(_stats(t["fwd"]), round_medians=meds[name]["fwd"])
        rec["rounds"] = rounds
        if not fwd_only:
            rec["fwdbwd"] = dict(_stats(t["fwdbwd"]), round_medians=meds[name]["fwdbwd"])
            key = (name, p.cell, threads)
            best_rate[key] = min(best_rate[key], statistics.median(t["fwdbwd"]) / (3 * p.flops_fwd))


def _check(rec, name, p, threads, res, ref, cfg, say):
    if ref is None:
        return
    errs, bad = _compare(res, ref, TOL[cfg["dtype"]])
    rec["max_rel_err"] = errs
    if bad:
        rec["status"] = "failed"
        say(f"!!! VALIDATION FAILED: {name} {p.cell} T={p.T} B={p.B} H={p.H} threads={threads} "
            f"{p.dtype}: " + "; ".join(bad), err=True)


def run(cfg, say=print, progress=None):
    """Run the grid in ``cfg``; ``say(line, err=False)`` prints. Returns the result rows."""
    rows = []
    best_rate = {}
    for cell in cfg["cells"]:
        for H in cfg["hidden"]:
            for B in cfg["batch"]:
                p = Problem(cell, cfg["seq_len"], B, H, cfg["dtype"])
                ref = None
                for threads in cfg["threads"]:
                    row = {"cell": cell, "T": p.T, "B": B, "H": H, "D": p.D, "threads": threads,
                           "dtype": cfg["dtype"], "flops_fwd": p.flops_fwd, "impls": {}}
                    prepared = {}
                    for name in cfg["impls"]:
                        if progress is not None:
                            progress.set_description(f"{cell} B={B} H={H} thr={threads} {name}")
                        impl, rec, res = _prepare(name, p, threads, ref, cfg, best_rate, say)
                        if name == "native":
                            if rec["status"] != "ok":
                                say(f"!!! native {cell} B={B} H={H} threads={threads}: {rec['status']} "
                                    f"({rec.get('note', '')}); no reference for the others", err=True)
                            elif ref is None:
                                ref = res  # the oracle for every other implementation here
                        row["impls"][name] = rec
                        if impl is not None:
                            prepared[name] = (impl, rec)
                    _time_point(prepared, p, threads, cfg, best_rate, say)
                    for name, (_, rec) in prepared.items():
                        row["impls"][name] = rec
                    del prepared
                    if progress is not None:
                        progress.update(len(cfg["impls"]))
                    _ratios(row, p, cfg.get("peak", {}).get(threads))
                    rows.append(row)
                    say(_table_row(row, cfg["impls"], cfg.get("forward", False)))
                del ref
    return rows


def run_load(cfg, say=print, progress=None):
    """``--load N``: native forward + backward at each thread count of ``cfg["threads"]``, the
    counts taking turns run by run, so that every count meets the same load; the median of
    each, and the ratio of each round's time over the first count's in that round (paired: the
    scheduler's slow spells, which move a point by 30% and more from run to run under two busy
    processes, touch both runs of a round alike). The counts take the first turn of a round in
    turn, so that neither always runs right after the other; stats.paired_ratio takes the
    median of the rounds' ratios. Returns the rows."""
    counts = cfg["threads"]
    say("cell     B     H | " + " ".join(f"{f'{n} thr ms':>10}" for n in counts) + " | "
        + " ".join(f"{f'{n}/{counts[0]}':>7}" for n in counts[1:]) + " | rounds")
    rows = []
    for cell in cfg["cells"]:
        for H in cfg["hidden"]:
            for B in cfg["batch"]:
                p = Problem(cell, cfg["seq_len"], B, H, cfg["dtype"])
                impl = FACTORIES["native"](p)
                times = {n: [] for n in counts}
                for n in counts:  # warm-up at each count
                    with impl.threads(n):
                        impl.forward_backward()
                start = time.perf_counter()
                rounds = 0
                while rounds < (cfg["repeat"] or 200):
                    for n in in_turn(counts, rounds):  # first of a round in turn
                        with impl.threads(n):
                            t0 = time.perf_counter()
                            impl.forward_backward()
                            times[n].append(time.perf_counter() - t0)
                    rounds += 1
                    elapsed = time.perf_counter() - start
                    if not cfg["repeat"] and rounds >= 5 and (elapsed >= cfg["min_time"] * len(counts)
                                                              or elapsed >= cfg["max_seconds"] / 2):
                        break
                med = {n: statistics.median(v) for n, v in times.items()}
                ratio = {n: paired_ratio(times[n], times[counts[0]]) for n in counts[1:]}
                row = {"cell": cell, "T": p.T, "B": B, "H": H, "D": p.D, "dtype": cfg["dtype"], "rounds": rounds,
                       "load": cfg["load"], "fwdbwd": {str(n): _stats(v) for n, v in times.items()},
                       "ratio": {str(n): ratio[n] for n in counts[1:]}}
                rows.append(row)
                if progress is not None:
                    progress.update(len(counts) * len(cfg["impls"]))
                say(f"{cell:<5} {B:>4} {H:>5} | " + " ".join(f"{_ms(med[n]):>10}" for n in counts) + " | "
                    + " ".join(f"{ratio[n]:>6.2f}x" for n in counts[1:]) + f" | {rounds}")
    return rows


def _time_ratio(rec, nat):
    """rec's time over nat's: paired round by round (stats.paired_ratio) when both have the
    same rounds, else the ratio of their medians."""
    a, b = rec.get("round_medians"), nat.get("round_medians")
    if a and b and len(a) == len(b):
        return paired_ratio(a, b)
    return rec["median"] / nat["median"]


def _ratios(row, p, peak=None):
    """Native's GFLOP/s (and its share of the GEMM ``peak``), every other implementation's time
    over native's (_time_ratio)."""
    nat = row["impls"].get("native", {})
    if nat.get("status") != "ok":
        return
    nfw = nat["fwd"]["median"]
    nat["gflops_fwd"] = p.flops_fwd / nfw / 1e9
    nfb = nat["fwdbwd"]["median"] if nat.get("fwdbwd") else None
    if nfb:
        nat["gflops"] = 3 * p.flops_fwd / nfb / 1e9
    if peak:
        nat["peak_pct_fwd"] = 100 * nat["gflops_fwd"] / peak
        if nfb:
            nat["peak_pct"] = 100 * nat["gflops"] / peak
    for name, r in row["impls"].items():
        if name == "native":
            continue
        if r.get("fwd"):
            r["ratio_fwd"] = _time_ratio(r["fwd"], nat["fwd"])
        if nfb and r.get("fwdbwd"):
            r["ratio"] = _time_ratio(r["fwdbwd"], nat["fwdbwd"])


# -- the command line ----------------------------------------------------------------------------

class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _ArgError(message)


def _int_list(name):
    def parse(text):
        try:
            vals = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes positive integers (e.g. 1,8,64), got {text!r}")
        if not vals or any(v < 1 for v in vals):
            raise argparse.ArgumentTypeError(f"{name} takes positive integers (e.g. 1,8,64), got {text!r}")
        return vals
    return parse


def _positive(kind, name):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive number, got {text!r}")
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{name} must be > 0, got {text!r}")
        return v
    return parse


def _cells(text):
    vals = [v.strip().lower() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in CELLS]
    if not vals or bad:
        raise argparse.ArgumentTypeError(f"--cells takes {', '.join(CELLS)} (comma-separated), got {text!r}")
    return vals


def build_parser():
    ap = _Parser(prog="rnncore bench", description=(
        "Time rnncore's native RNN/LSTM/GRU forward and BPTT against its NumPy twin, a textbook NumPy "
        "RNN and PyTorch, side by side, with the machine's facts in the header. Lists are "
        "comma- or space-separated."))
    ap.add_argument("--cells", nargs="+", type=_cells, help="rnn, lstm, gru (default: rnn)")
    ap.add_argument("--batch", nargs="+", type=_int_list("--batch"), help="batch sizes B (default 1,8,64,256)")
    ap.add_argument("--hidden", nargs="+", type=_int_list("--hidden"), help="hidden sizes H = D (default 128,512)")
    ap.add_argument("--seq-len", type=_positive(int, "--seq-len"), help="sequence length T (default 100)")
    ap.add_argument("--threads", nargs="+", type=_int_list("--threads"), help="thread counts (default 1,2)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--repeat", type=_positive(int, "--repeat"),
                    help="exactly this many timed runs a round (default: adaptive, >= 3 runs and >= 0.3 s over the rounds)")
    ap.add_argument("--min-time", type=_positive(float, "--min-time"), help="adaptive repeats: seconds (default 0.3)")
    ap.add_argument("--rounds", type=_positive(int, "--rounds"),
                    help="rounds at each point, the implementations taking turns, each round a share of "
                         "--min-time (or --repeat runs each round) (default 3)")
    ap.add_argument("--max-seconds", type=_positive(float, "--max-seconds"),
                    help="skip an implementation at a point when one fwd+bwd would take longer (default 30)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny grid for smoke tests (B 1,8; H 32,64; T 20; 1 thread)")
    ap.add_argument("--json", metavar="PATH", help="also write the results and the environment as JSON")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--no-textbook", action="store_true", help="leave the textbook NumPy RNN out")
    ap.add_argument("--no-twin", action="store_true", help="leave rnncore's NumPy twin out")
    ap.add_argument("--no-ort", action="store_true", help="--forward: leave ONNX Runtime out")
    ap.add_argument("--forward", action="store_true",
                    help="time inference alone: forwards (torch under no_grad), microseconds per step, ratios")
    ap.add_argument("--no-peak", action="store_true", help="skip measuring the GEMM peak")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="start N busy processes (python -c 'while 1: pass') and compare rnncore's thread "
                         "counts under that load (native only, the counts taking turns)")
    return ap


def _flat(lists):
    return None if lists is None else [v for sub in lists for v in sub]


def _config(args):
    base = dict(DEFAULTS, min_time=0.3, max_seconds=30.0, rounds=3)
    if args.quick:
        base.update(QUICK)
    given = {"cells": _flat(args.cells), "batch": _flat(args.batch), "hidden": _flat(args.hidden),
             "seq_len": args.seq_len, "threads": _flat(args.threads), "min_time": args.min_time,
             "max_seconds": args.max_seconds, "rounds": args.rounds}
    cfg = dict(base, **{k: v for k, v in given.items() if v is not None})
    cfg["cells"] = list(dict.fromkeys(cfg["cells"]))
    cfg.update(dtype=args.dtype, repeat=args.repeat, json=args.json, load=max(0, args.load),
               forward=args.forward, peak_wanted=not (args.no_peak or args.quick or args.load))
    impls = ["native"]
    if not args.no_twin:
        impls.append("twin")
    if not args.no_textbook and "rnn" in cfg["cells"] and not args.forward:
        impls.append("textbook")
    if not args.no_torch:
        impls.append("torch")
    if args.forward and not args.no_ort:
        impls.append("ort")
    cfg["impls"] = impls
    return cfg


def main(argv=None) -> int:
    """``rnncore bench [options]``: print the table; 0 on success, 1 on a failed check, 2 on bad arguments."""
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except _ArgError as e:
        print(f"rnncore bench: error: {e} (see rnncore bench --help)", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    if args.load < 0:
        print(f"rnncore bench: error: --load must be >= 0, got {args.load} (see rnncore bench --help)",
              file=sys.stderr)
        return 2
    cfg = _config(args)
    if cfg["json"]:
        d = os.path.dirname(os.path.abspath(cfg["json"]))
        if not os.path.isdir(d):
            print(f"rnncore bench: error: --json {cfg['json']}: folder {d} does not exist", file=sys.stderr)
            return 2
    try:
        get_num_threads()
    except (ImportError, RuntimeError) as e:
        print(f"rnncore bench: error: the native backend is unavailable: {e}", file=sys.stderr)
        return 1

    env = environment("torch" in cfg["impls"], "ort" in cfg["impls"])
    env["load"] = cfg["load"]
    if "torch" in cfg["impls"] and (env["torch"] is None or "error" in env["torch"]):
        cfg["impls"].remove("torch")
    if "ort" in cfg["impls"] and "error" in env["onnxruntime"]:
        cfg["impls"].remove("ort")
    ncpu = os.cpu_count() or 1
    for line in _header_lines(env, cfg):
        print(line)
    if max(cfg["threads"]) > ncpu:
        print(f"  note: --threads {max(cfg['threads'])} exceeds the {ncpu} logical CPUs here")
    cfg["peak"] = {}
    if cfg["peak_wanted"]:
        for n in cfg["threads"]:
            pk = gemm_peak(n, cfg["dtype"])
            cfg["peak"][n] = pk["gflops"]
            env.setdefault("gemm_peak", []).append(pk)
            print(f"GEMM peak, {n} thread(s): {pk['gflops']:.1f} GF/s ({pk['n']}^3 {pk['dtype']}; rnncore's BLAS "
                  f"{pk['rnncore']:.1f}, NumPy's {pk['numpy']:.1f})")
        sys.stdout.flush()
    print()
    if cfg["load"]:
        print(f"under load: native only, thread counts {cfg['threads']} taking turns run by run, each count "
              "first in a round in turn; times are medians of forward + backward; ratio: the median over the "
              "rounds of each round's time over the first count's in the same round (> 1: slower than with the "
              "first count)")
    else:
        for line in _table_head(cfg["impls"], cfg["forward"]):
            print(line)
    sys.stdout.flush()

    from tqdm import tqdm

    total = (len(cfg["cells"]) * len(cfg["hidden"]) * len(cfg["batch"]) * len(cfg["threads"])
             * len(cfg["impls"]))
    failures = []
    with tqdm(total=total, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False,
              dynamic_ncols=True) as bar:
        def say(line, err=False):
            if err:
                failures.append(line)
            tqdm.write(line, file=sys.stderr if err else sys.stdout)
            (sys.stderr if err else sys.stdout).flush()

        load = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(cfg["load"])]
        try:
            rows = (run_load if cfg["load"] else run)(cfg, say=say, progress=bar)
        except KeyboardInterrupt:
            print("rnncore bench: interrupted", file=sys.stderr)
            return 130
        finally:
            for proc in load:
                proc.kill()
                proc.wait()
    if failures:
        print(f"\n{len(failures)} problem(s):")
        for line in failures:
            print("  " + line)
    if cfg["json"]:
        with open(cfg["json"], "w") as f:
            json.dump({"environment": env, "config": {k: v for k, v in cfg.items() if k != "json"},
                       "tolerance": TOL[cfg["dtype"]], "results": rows}, f, indent=1)
        print(f"wrote {cfg['json']}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
