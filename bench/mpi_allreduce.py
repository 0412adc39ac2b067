"""Data-parallel ``rnncore train`` on N MPI ranks of this machine: the step time and the share of
it spent in the gradient allreduce, for N = 1, 2, 4.

Each N runs in its own ``mpiexec -n N`` job: the real training loop (``rnncore.train.train`` with
the communicator, the global batch fixed, each rank on cores/N threads), timed from its own
``metrics.jsonl`` (``seconds`` and ``allreduce_seconds`` of each step, the first ``--warmup``
steps dropped, medians), plus a bare allreduce of the same flat gradient buffer after a barrier
(what the communication alone costs, without waiting for a slower rank).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/mpi_allreduce.py
    python bench/mpi_allreduce.py --ranks 1 2 --hidden 256 --batch 32 --steps 6 --json mpi.json

Columns: ``step ms`` (median training step, rank 0), ``allreduce ms`` (median time in the step's
allreduce, including the wait for the slowest rank) and its share of the step, ``bare ms`` (the
allreduce alone) and its share, ``tokens/s`` (global batch x seq_len / step), ``speedup`` (tokens/s
over the 1-rank run's). Needs mpi4py and mpiexec (``pip install "rnncore[mpi]"``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def _parser():
    ap = argparse.ArgumentParser(prog="mpi_allreduce.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4], help="rank counts (default 1 2 4)")
    ap.add_argument("--cell", choices=("rnn", "lstm", "gru"), default="lstm")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64, help="global batch (streams), split over the ranks")
    ap.add_argument("--seq-len", type=int, default=32)
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--steps", type=int, default=20, help="training steps a run (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="first steps not counted (default 3)")
    ap.add_argument("--bare-repeat", type=int, default=20, help="bare allreduces timed (default 20)")
    ap.add_argument("--max-chars", type=int, default=300_000)
    ap.add_argument("--timeout", type=float, default=300, help="seconds a run may take before it is killed")
    ap.add_argument("--json", metavar="PATH", help="write the rows and the machine here")
    ap.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)  # inside mpiexec: one run
    return ap


def mpiexec():
    """``mpiexec`` next to this Python or on PATH (None without one)."""
    return shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")


def _worker(a):
    """One run, on every rank; rank 0 prints one JSON line."""
    import numpy as np
    from mpi4py import MPI

    from rnncore import distributed as dist
    from rnncore.benchmark.ops import environment
    from rnncore.train import TrainConfig, metrics_path, train

    comm = MPI.COMM_WORLD
    cfg = TrainConfig(cell=a.cell, hidden=a.hidden, batch=a.batch, seq_len=a.seq_len, dtype=a.dtype,
                      steps=a.steps, eval_every=10**9, sample_every=10**9, sample_len=1, max_chars=a.max_chars,
                      out=a.worker, progress=False, plot=False)
    summary = train(cfg, log=lambda s: None, comm=comm)
    model = summary["model"]
    threads, local = dist.threads_per_rank(comm), dist.local_size(comm)  # (collective: every rank)
    buf = np.zeros(sum(p.size for p in model.params) + 2, dtype=model.params[0].dtype)
    bare = []
    for i in range(a.bare_repeat + 2):
        comm.Barrier()
        t = time.perf_counter()
        if comm.Get_size() > 1:
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        if i >= 2:
            bare.append(time.perf_counter() - t)
    bare = comm.allreduce(statistics.median(bare), op=MPI.MAX)
    if comm.Get_rank() == 0:
        with open(metrics_path(a.worker)) as f:
            recs = [json.loads(s) for s in f][a.warmup:]
        step = statistics.median(r["seconds"] for r in recs)
        ar = statistics.median(r.get("allreduce_seconds", 0.0) for r in recs)
        print("RESULT " + json.dumps({
            "ranks": comm.Get_size(), "threads_per_rank": threads, "local_ranks": local,
            "params": int(buf.size - 2), "buffer_mb": buf.nbytes / 1e6, "steps_timed": len(recs),
            "step_s": step, "allreduce_s": ar, "bare_s": bare,
            "tokens_per_s": a.batch * a.seq_len / step, "env": environment(want_torch=False)}), flush=True)


def _run(a, n):
    from rnncore.distributed import mpiexec_command

    with tempfile.TemporaryDirectory() as out:
        cmd = [*mpiexec_command(n), sys.executable, os.path.abspath(__file__), "--worker", out,
               "--cell", a.cell, "--hidden", str(a.hidden), "--batch", str(a.batch), "--seq-len", str(a.seq_len),
               "--dtype", a.dtype, "--steps", str(a.steps), "--warmup", str(a.warmup),
               "--bare-repeat", str(a.bare_repeat), "--max-chars", str(a.max_chars)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = p.communicate(timeout=a.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.communicate()
            raise RuntimeError(f"{n} ranks: no result within {a.timeout:.0f} s") from None
        lines = [s for s in stdout.splitlines() if s.startswith("RESULT ")]
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"{n} ranks: exit {p.returncode}\n{stderr[-2000:]}")
        return json.loads(lines[-1][len("RESULT "):])


def table(rows):
    base = next((r["tokens_per_s"] for r in rows if r["ranks"] == 1), None)
    head = (f"{'ranks':>5} {'threads/rank':>12} {'streams/rank':>12} {'step ms':>8} {'allreduce ms':>12} "
            f"{'share':>6} {'bare ms':>8} {'share':>6} {'tokens/s':>9} {'speedup':>7}")
    out = [head, "-" * len(head)]
    for r in rows:
        per = r["batch"] / r["ranks"]
        share = r["allreduce_s"] / r["step_s"]
        bare_share = r["bare_s"] / r["step_s"]
        out.append(f"{r['ranks']:>5} {r['threads_per_rank']:>12} {per:>12.4g} {r['step_s'] * 1e3:>8.1f} "
                   f"{r['allreduce_s'] * 1e3:>12.2f} {share:>6.1%} {r['bare_s'] * 1e3:>8.2f} {bare_share:>6.1%} "
                   f"{r['tokens_per_s']:>9.0f} {(r['tokens_per_s'] / base if base else float('nan')):>6.2f}x")
    return out


def main(argv=None):
    a = _parser().parse_args(argv)
    if a.worker:
        _worker(a)
        return 0
    exe = mpiexec()
    try:
        import mpi4py  # noqa: F401 - only its presence is checked here
    except ImportError:
        exe = None
    if exe is None:
        print("mpi_allreduce.py: needs mpi4py and mpiexec: pip install \"rnncore[mpi]\"", file=sys.stderr)
        return 2
    if a.warmup >= a.steps:
        print(f"mpi_allreduce.py: --steps ({a.steps}) must exceed --warmup ({a.warmup})", file=sys.stderr)
        return 2
    from rnncore.benchmark.ops import machine_lines

    rows = []
    for n in a.ranks:
        r = _run(a, n)
        r["batch"] = a.batch
        rows.append(r)
    env = rows[0]["env"]
    print("\n".join(machine_lines(env)))
    print(f"data-parallel rnncore train: {a.cell} H={a.hidden}, global batch {a.batch} x seq_len {a.seq_len}, "
          f"{a.dtype}, {rows[0]['params']:,} parameters -> one allreduce of {rows[0]['buffer_mb']:.2f} MB a step; "
          f"medians of {rows[0]['steps_timed']} steps (after {a.warmup} warm-up); {os.cpu_count()} logical CPUs, "
          f"each rank on cores/ranks rnncore threads (NumPy's BLAS the same)")
    print("\n".join(table(rows)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(a).items() if k != "worker"}, "env": env,
                       "rows": [{k: v for k, v in r.items() if k != "env"} for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
