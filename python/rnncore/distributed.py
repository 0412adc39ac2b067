"""Data-parallel training over MPI: the helpers ``rnncore train`` uses, for your own loops too.

Optional: ``pip install "rnncore[mpi]"`` brings mpi4py and the MPICH wheel (``mpiexec``).
Nothing here imports mpi4py until a function that needs MPI runs; ``import rnncore`` never does.

Data parallelism: every rank holds the same model, computes the gradient of its share of the
global batch, and the gradients are summed across ranks (one allreduce of one flat buffer), so
every rank applies the same update and keeps the same weights.

- :func:`allreduce_grads` averages a list of gradients across a communicator, in place
  (optionally weighted, e.g. by each rank's number of target tokens).
- :class:`FlatGradients` re-points a model's gradient buffers into one contiguous buffer, so
  the backward writes straight into what the allreduce sends (no packing copies).
- :func:`shard_range` splits a batch of streams into contiguous per-rank blocks.
- :func:`shard_generator` makes a rank's dropout masks the rows of the global batch's masks,
  so splitting the batch does not change the randomness.
- :func:`threads_per_rank` shares the cores of a machine among the ranks on it.
- :func:`abort_on_error` ends the whole job when one rank raises (no hang), naming the rank.
- :func:`launcher_size` / :func:`world_from_launcher`: was this process started by ``mpiexec``?
- :func:`mpiexec_command`: the command that starts N ranks of this Python on this machine.

Communicators are mpi4py's (``MPI.COMM_WORLD``), or any object with ``Get_rank()``,
``Get_size()`` and an mpi4py-style ``Allreduce(sendbuf, recvbuf)`` (sum) for tests; ``None``
means a single process.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback

import numpy as np

__all__ = ["allreduce_grads", "FlatGradients", "shard_range", "shard_generator", "threads_per_rank",
           "local_size", "abort_on_error", "launcher_size", "world_from_launcher", "polite_barrier",
           "mpiexec_command"]

#: environment variables MPI launchers set to the number of processes (MPICH/Intel MPI hydra,
#: Open MPI, MVAPICH)
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _size(comm) -> int:
    return 1 if comm is None else int(comm.Get_size())


def _rank(comm) -> int:
    return 0 if comm is None else int(comm.Get_rank())


def _check_comm(name, comm):
    if comm is not None and not all(hasattr(comm, a) for a in ("Get_rank", "Get_size", "Allreduce")):
        raise TypeError(f"{name} must be an mpi4py communicator (or None), got {type(comm).__name__}")


def _is_mpi4py(comm) -> bool:
    return type(comm).__module__.startswith("mpi4py")


def _sum_in_place(comm, buf: np.ndarray) -> None:
    """``buf`` <- the elementwise sum of every rank's ``buf``."""
    if _is_mpi4py(comm):
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    else:
        comm.Allreduce(buf.copy(), buf)


# -- gradients ---------------------------------------------------------------------------------------
def _unique_arrays(name, arrays):
    out, seen = [], set()
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}[{i}] must be a numpy.ndarray, got {type(a).__name__}")
        if a.dtype.kind != "f":
            raise TypeError(f"{name}[{i}] must be a floating-point array, got dtype {a.dtype}")
        if id(a) not in seen:  # a shared (tied) gradient is reduced once
            seen.add(id(a))
            out.append(a)
    dtypes = {a.dtype for a in out}
    if len(dtypes) > 1:
        raise TypeError(f"{name} must share one dtype, got {sorted(str(d) for d in dtypes)}")
    return out


def allreduce_grads(grads, comm, *, weight=None) -> float:
    """Average the gradients ``grads`` (a list of arrays, e.g. ``model.grads``) across the ranks
    of ``comm``, in place, with one allreduce of one flat buffer; returns the total weight.

    Without ``weight`` every rank counts the same: ``g = (g_0 + ... + g_{N-1}) / N``. With
    ``weight`` (this rank's share, e.g. its number of target tokens when its loss is the mean
    over them): ``g = sum_r w_r g_r / sum_r w_r``, the gradient of the mean loss over the
    global batch also when the ranks' shares differ or some targets are ignored. Call it after
    ``backward`` and before clipping (clip on the averaged gradients, so every rank clips the
    same). ``comm`` None (one process) leaves ``grads`` as they are.

        loss = model.loss(xs[lo:hi], ts[lo:hi])
        model.backward()
        allreduce_grads(model.grads, comm, weight=ts[lo:hi].size)
        clip_grads(model.grads, 5.0)
        optimizer.update(model.params, model.grads)
    """
    _check_comm("allreduce_grads: comm", comm)
    arrays = _unique_arrays("allreduce_grads: grads", list(grads))
    if weight is not None:
        w = float(weight)
        if not (w >= 0 and np.isfinite(w)):
            raise ValueError(f"allreduce_grads: weight must be a finite number >= 0, got {weight!r}")
    if _size(comm) == 1 or not arrays:
        return 1.0 if weight is None else float(weight)
    dt = arrays[0].dtype
    n = sum(a.size for a in arrays)
    buf = np.empty(n + (weight is not None), dtype=dt)
    off = 0
    for a in arrays:
        v = buf[off:off + a.size].reshape(a.shape)
        if weight is None:
            v[...] = a
        else:
            np.multiply(a, dt.type(w), out=v)
        off += a.size
    if weight is not None:
        buf[-1] = w
    _sum_in_place(comm, buf)
    total = float(_size(comm)) if weight is None else float(buf[-1])
    if total == 0:
        raise ValueError("allreduce_grads: the weights of all ranks sum to 0")
    scale = dt.type(1.0 / total)
    off = 0
    for a in arrays:
        np.multiply(buf[off:off + a.size].reshape(a.shape), scale, out=a)
        off += a.size
    return total


class FlatGradients:
    """One contiguous buffer behind every gradient of ``model``, plus ``scalars`` extra slots.

    ``FlatGradients(model, scalars=0)`` replaces each gradient array in ``model.grads``, and in
    the ``grads`` lists of ``model.layers`` (recursively), by a same-shaped view of one flat
    buffer (values copied), so the layers' in-place backward writes straight into it.
    :meth:`allreduce` then sums the gradients and the scalars across ranks in one call. Build it
    before an optimizer has seen the gradients; ``model.params`` are not touched.
    """

    def __init__(self, model, *, scalars: int = 0):
        grads = getattr(model, "grads", None)
        if not isinstance(grads, list):
            raise TypeError(f"FlatGradients: model must have a grads list, got {type(model).__name__}")
        if int(scalars) < 0:
            raise ValueError(f"FlatGradients: scalars must be >= 0, got {scalars}")
        arrays = _unique_arrays("FlatGradients: model.grads", grads)
        if not arrays:
            raise ValueError("FlatGradients: model has no gradients")
        n = sum(a.size for a in arrays)
        self.flat = np.zeros(n + int(scalars), dtype=arrays[0].dtype)
        self.grads_flat = self.flat[:n]
        self.scalars = self.flat[n:]
        views, off = {}, 0
        for a in arrays:
            v = self.flat[off:off + a.size].reshape(a.shape)
            v[...] = a
            views[id(a)] = v
            off += a.size

        def repoint(obj, seen):
            if id(obj) in seen:
                return
            seen.add(id(obj))
            lst = getattr(obj, "grads", None)
            if isinstance(lst, list):
                for i, g in enumerate(lst):
                    if id(g) in views:
                        lst[i] = views[id(g)]
            for sub in getattr(obj, "layers", None) or ():
                repoint(sub, seen)

        repoint(model, set())

    def allreduce(self, comm, scalars=(), *, average: bool = False) -> np.ndarray:
        """Sum the gradients (and ``scalars``, written into the extra slots first) across
        ``comm``'s ranks in place; with ``average`` divide the gradients by the number of ranks.
        Returns the summed scalars (float64)."""
        _check_comm("FlatGradients.allreduce: comm", comm)
        if len(scalars) > self.scalars.size:
            raise ValueError(f"FlatGradients.allreduce: {len(scalars)} scalars given, {self.scalars.size} slots")
        self.scalars[:len(scalars)] = scalars
        self.scalars[len(scalars):] = 0
        if _size(comm) > 1:
            _sum_in_place(comm, self.flat)
            if average:
                self.grads_flat *= self.flat.dtype.type(1.0 / _size(comm))
        return self.scalars.astype(np.float64)


# -- the batch split and its randomness ---------------------------------------------------------------
def shard_range(total: int, rank: int, size: int):
    """``(lo, hi)``: rank ``rank``'s contiguous block of ``total`` rows split over ``size`` ranks
    (the first ``total % size`` ranks take one row more). Every rank gets at least one row."""
    total, rank, size = int(total), int(rank), int(size)
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"shard_range: need 0 <= rank < size, got rank {rank}, size {size}")
    if total < size:
        raise ValueError(f"shard_range: {total} rows cannot be split over {size} ranks (need at least one each)")
    q, r = divmod(total, size)
    lo = rank * q + min(rank, r)
    return lo, lo + q + (rank < r)


class _RowsGenerator(np.random.Generator):
    """A Generator on the same bit generator whose ``random(size)`` with ``size[0] == hi - lo``
    returns rows lo:hi of what a ``total``-row draw would have returned, and leaves the bit
    generator where that draw would have (so every rank's generator stays in step)."""

    def __init__(self, bit_generator, lo, hi, total):
        super().__init__(bit_generator)
        self._lo, self._hi, self._total = int(lo), int(hi), int(total)
        # a float64 draw takes one 64-bit output per value on these, and they can skip ahead
        self._skip = type(bit_generator).__name__ in ("PCG64", "PCG64DXSM")

    def random(self, size=None, dtype=np.float64, out=None):
        rows = self._hi - self._lo
        if (size is None or out is not None or np.dtype(dtype) != np.float64 or rows == self._total):
            return super().random(size, dtype, out)
        shape = (size,) if np.ndim(size) == 0 else tuple(size)
        if not shape or shape[0] != rows:
            return super().random(size, dtype, out)
        per_row = int(np.prod(shape[1:], dtype=np.int64))
        if not self._skip:
            full = super().random((self._total,) + shape[1:])
            return np.ascontiguousarray(full[self._lo:self._hi])
        bg = self.bit_generator
        bg.advance(self._lo * per_row)
        part = super().random(shape)
        bg.advance((self._total - self._hi) * per_row)
        return part


def shard_generator(rng, lo: int, hi: int, total: int) -> np.random.Generator:
    """A generator for rank-local dropout masks that equal rows ``lo:hi`` of the masks of the
    whole ``total``-row batch: every ``random(shape)`` draw whose first axis is ``hi - lo`` (a
    batch-first mask) returns those rows of a ``(total, ...)`` draw, and advances ``rng``'s
    bit generator as that draw would have. It shares ``rng.bit_generator`` (its state is
    ``rng``'s), so all ranks' generators stay identical. Other draws pass through unchanged."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"shard_generator: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    lo, hi, total = int(lo), int(hi), int(total)
    if not 0 <= lo < hi <= total:
        raise ValueError(f"shard_generator: need 0 <= lo < hi <= total, got lo {lo}, hi {hi}, total {total}")
    return _RowsGenerator(rng.bit_generator, lo, hi, total)


# -- processes, threads, faults ----------------------------------------------------------------------
def launcher_size() -> int:
    """The number of processes an MPI launcher (``mpiexec``, ``mpirun``) started this job with,
    read from its environment variables; 1 when not launched by one (or ``RNNCORE_MPI=0``)."""
    if os.environ.get("RNNCORE_MPI", "1") == "0":
        return 1
    for var in _SIZE_VARS:
        v = os.environ.get(var)
        if v:
            try:
                return max(int(v), 1)
            except ValueError:
                continue
    return 1


def world_from_launcher():
    """``MPI.COMM_WORLD`` when this process was started by an MPI launcher with more than one
    process, else None (mpi4py is then not imported). RuntimeError when mpi4py is missing."""
    n = launcher_size()
    if n <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError(f"started by an MPI launcher with {n} processes, but mpi4py cannot be imported "
                           f"({e}); install it with: pip install \"rnncore[mpi]\"") from None
    return MPI.COMM_WORLD


def mpiexec_command(n: int) -> list:
    """``[mpiexec, flags..., "-n", n]``: the launcher next to the running Python (where the mpich
    wheel puts it) or else on PATH. Open MPI's gets ``--oversubscribe`` (more ranks than cores)
    and, as root, ``--allow-run-as-root``. FileNotFoundError when there is none."""
    import shutil
    import subprocess

    if int(n) < 1:
        raise ValueError(f"mpiexec_command: n must be >= 1, got {n}")
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    if exe is None:
        raise FileNotFoundError("no mpiexec next to the Python executable or on PATH "
                                "(pip install \"rnncore[mpi]\" brings MPICH's)")
    flags = []
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    if "Open MPI" in out or "OpenRTE" in out:
        flags.append("--oversubscribe")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.append("--allow-run-as-root")
    return [exe, *flags, "-n", str(int(n))]


def local_size(comm) -> int:
    """How many ranks of ``comm`` run on this machine (a shared-memory split)."""
    if _size(comm) == 1:
        return 1
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_size()
    finally:
        node.Free()


def _affinity():
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset(range(os.cpu_count() or 1))


def threads_per_rank(comm) -> int:
    """Threads each rank should use so the ranks on one machine do not oversubscribe it: the
    CPUs this process may run on divided by the ranks on this machine that share them (ranks
    the launcher bound to other cores do not count). 1 process: its CPU count."""
    mine = _affinity()
    if _size(comm) == 1:
        return len(mine)
    from mpi4py import MPI

    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        sets = node.allgather(mine)
    finally:
        node.Free()
    sharing = sum(1 for s in sets if s & mine)
    return max(1, len(mine) // max(sharing, 1))


def polite_barrier(comm, interval: float = 0.002) -> None:
    """A barrier that sleeps while it waits (MPI's blocking calls spin a core): for ranks
    waiting on rank 0's validation or checkpoint."""
    if _size(comm) == 1:
        return
    if not hasattr(comm, "Ibarrier"):
        comm.Barrier()
        return
    req = comm.Ibarrier()
    while not req.Test():
        time.sleep(interval)


@contextlib.contextmanager
def abort_on_error(comm, *, prog: str = "rnncore", quiet=(), passthrough=()):
    """Within the block, an exception on any rank ends the whole job at once: the rank prints
    ``<prog>: rank R of N: Type: message`` (after the traceback, unless the exception is one of
    ``quiet``) on stderr and calls ``comm.Abort(1)``, so the other ranks do not wait forever in
    their next collective. Exceptions in ``passthrough`` (raised by every rank alike) and a
    ``SystemExit`` with code 0 propagate normally. With one process it does nothing."""
    if _size(comm) == 1:
        yield
        return
    try:
        yield
    except BaseException as e:
        if isinstance(e, tuple(passthrough)) or (isinstance(e, SystemExit) and e.code in (0, None)):
            raise
        r, n = _rank(comm), _size(comm)
        try:
            # one write, then a moment for the launcher to pass it on before Abort kills the job
            # (another rank's Abort may end this one at any moment: the report goes out whole)
            tb = "" if isinstance(e, tuple(quiet)) else traceback.format_exc()
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            sys.stderr.write(f"{tb}{prog}: rank {r} of {n}: {type(e).__name__}{': ' + msg if msg else ''}; "
                             f"aborting all {n} ranks\n")
            sys.stderr.flush()
            time.sleep(0.2)
        finally:
            comm.Abort(1)
            if _is_mpi4py(comm):
                os._exit(1)  # Abort may return before the launcher's kill arrives
        raise  # a fake communicator's Abort returned
