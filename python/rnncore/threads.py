"""Threads of rnncore's native calls.

rnncore runs its native work on one thread team of its own (``csrc/team.cpp``, the shared
library ``librnncore_threads`` in the package folder): persistent workers that spin briefly
when idle and then sleep, so they never fight NumPy's BLAS, PyTorch or another process for
the cores. The vendored BLAS runs one thread inside them. One count rules a call: the value of
:func:`set_num_threads`, else ``RNNCORE_NUM_THREADS``, else ``OMP_NUM_THREADS``, else the CPUs
this process may use.

threadpoolctl sees the team (``user_api`` and ``internal_api`` ``"rnncore"``) and the vendored
BLAS (``libscipy_openblas`` in rnncore's folder); ``threadpool_limits(1)`` limits rnncore too.
"""
from __future__ import annotations

import contextlib
import ctypes
import os

import threadpoolctl

from . import _native
from ._checks import check_size

__all__ = ["get_num_threads", "set_num_threads", "num_threads", "blas_info", "kernel_info", "set_isa", "use_isa",
           "hold_numpy_blas",
           "quiet_other_pools", "set_quiet_other_pools", "team_stats", "borrow_openmp"]


def _core():
    if _native.core is None:
        raise RuntimeError(f"the native backend is not built: {_native.import_error}")
    return _native.core


class _TeamController(threadpoolctl.LibController):
    """threadpoolctl's handle on rnncore's thread team."""

    user_api = "rnncore"
    internal_api = "rnncore"
    filename_prefixes = ("librnncore_threads",)

    def get_num_threads(self):
        return self.dynlib.rnncore_get_num_threads()

    def set_num_threads(self, num_threads):
        self.dynlib.rnncore_set_num_threads(int(num_threads))

    def get_version(self):
        from ._version import __version__

        return __version__


if _native.core is not None:
    threadpoolctl.register(_TeamController)


def get_num_threads() -> int:
    """Threads a native call may use."""
    return _core().get_num_threads()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in native calls (0 or None: the default again)."""
    if n is None:
        n = 0
    n = check_size("set_num_threads", "n", n, 0)
    _core().set_num_threads(min(n, 2**31 - 1))  # the team caps it at its size (256)


@contextlib.contextmanager
def num_threads(n: int):
    """``with rnncore.num_threads(1): ...``: the count inside the block, the previous
    setting (a number, or the default) afterwards."""
    before = _core().thread_setting()
    set_num_threads(n)
    try:
        yield
    finally:
        _core().set_num_threads(before)


@contextlib.contextmanager
def hold_numpy_blas(limit: int = 1):
    """Hold every BLAS other than rnncore's (NumPy's, SciPy's) at ``limit`` threads inside the
    block, so that its idle workers do not spin beside rnncore's team. Training loops whose
    heavy work is rnncore's (``rnncore train``, :class:`rnncore.models.LanguageModel`) run in
    one; the previous limits come back afterwards."""
    mine = blas_info().get("filepath")
    saved = []
    try:
        for c in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers:
            if c.filepath != mine and c.num_threads != limit:
                saved.append((c, c.num_threads))
                c.set_num_threads(limit)
        yield
    finally:
        for c, n in saved:
            c.set_num_threads(n)


# -- other pools' idle spinning -------------------------------------------------------------------
# After each threaded call, OpenBLAS's workers (NumPy's, SciPy's) spin at full speed for about a
# tenth of a second before they sleep: on a 2-core machine that takes a core from rnncore's next
# call. OpenBLAS can stop its pool at once (blas_thread_shutdown_, what it does itself around
# fork) and starts it again, transparently, at its next threaded call. rnncore asks for that
# before its own native calls, but only while no other Python thread exists, so that no other
# thread can be inside that BLAS at the moment.

_quiet = {"enabled": os.environ.get("RNNCORE_QUIET_BLAS", "1") != "0", "found": False}


def _shutdown_addresses():
    mine = os.path.realpath(blas_info().get("filepath") or "")
    addrs = []
    for c in threadpoolctl.ThreadpoolController().select(internal_api="openblas").lib_controllers:
        if os.path.realpath(c.filepath) != mine:
            fn = getattr(ctypes.CDLL(c.filepath), "blas_thread_shutdown_", None)
            if fn is not None:
                addrs.append(ctypes.cast(fn, ctypes.c_void_p).value)
    return addrs


def quiet_other_pools() -> None:
    """Stop the idle workers of every other OpenBLAS in the process (NumPy's), if this is the
    only Python thread; they restart by themselves at that library's next threaded call.
    rnncore's native calls do this first (see :func:`set_quiet_other_pools`). The test and the
    calls run natively (``_core.quiet_pools``): a fraction of a microsecond."""
    if not _quiet["enabled"]:
        return
    core = _core()
    if not _quiet["found"]:
        core.set_quiet_fns(_shutdown_addresses())
        _quiet["found"] = True
    core.quiet_pools()


_native.before_call = quiet_other_pools


def set_quiet_other_pools(on: bool) -> None:
    """Whether rnncore's native calls stop other OpenBLAS pools' idle spinning first (default
    on; ``RNNCORE_QUIET_BLAS=0`` turns it off for the process)."""
    _quiet["enabled"] = bool(on)
    _quiet["found"] = False  # found again (libraries loaded since are included)
    if _native.core is not None:
        _native.core.set_quiet_fns([])


def blas_info() -> dict:
    """The vendored BLAS as threadpoolctl sees it, plus its kernel name, and the variant of
    rnncore's own kernels in use (``"rnncore_kernels"``: avx512, avx2 or generic, see
    :func:`kernel_info`)."""
    core = _core()
    info = {"corename": core.blas_corename(), "config": core.blas_config()}
    for lib in threadpoolctl.threadpool_info():
        if "libscipy_openblas" in lib.get("prefix", "") and "rnncore" in lib.get("filepath", ""):
            info.update(lib)
    try:
        info["rnncore_kernels"] = core.kernel_info()["isa"]
    except RuntimeError as e:  # RNNCORE_ISA names a variant this CPU cannot run
        info["rnncore_kernels"] = f"error: {e}"
    return info


# -- which kernels run ----------------------------------------------------------------------------
# rnncore's own kernels (the recurrent steps, the small-batch GEMM, the activations, softmax,
# Adam, ...) are compiled three times, for AVX-512, for AVX2 + FMA and for baseline x86-64, and
# the best one the CPU runs is chosen at the first native call. RNNCORE_ISA=avx512|avx2|generic
# (or auto) in the environment forces one; an unknown name, or one the CPU cannot run, makes
# every native call raise RuntimeError naming RNNCORE_ISA (importing rnncore still works).

def kernel_info() -> dict:
    """Which variant of rnncore's native kernels runs: ``isa`` (``"avx512"``, ``"avx2"`` or
    ``"generic"``), ``supported`` (the variants this CPU and OS can run, best first),
    ``vector_bytes`` (the vector width of the recurrent step's GEMM), ``step_kernel`` (its
    register blocking), ``unit_block`` (per dtype, the hidden units of one block of the time
    loop: each thread owns whole blocks, all their gates), ``l2_bytes`` (a core's L2, as the
    system reports it) and ``step_split`` (``"auto"``: the time loop is cut by batch rows or by
    hidden units from the sizes and that L2, as csrc/driver.h's split_rows says; ``"units"`` /
    ``"rows"`` when forced), ``step_balance`` (``"timed"``: a split by hidden units moves unit
    blocks to the thread whose core runs faster, every 16 steps, and a split by rows lets a
    thread that has finished take half the rows of the group with the most work left;
    ``"fixed"`` / ``"probe"`` when forced), ``isa_flags`` (the
    variant's compiler flags), ``build`` (``"native"``: tuned for the building CPU,
    ``"portable"``: RNNCORE_NATIVE=OFF), ``build_flags``, ``sanitizers`` (an ASan + UBSan build)
    and ``cpu_features``."""
    return dict(_core().kernel_info())


def set_isa(isa) -> None:
    """Run the ``"avx512"``, ``"avx2"`` or ``"generic"`` kernels from now on (``"auto"``: the
    best this CPU runs; None: the default again, RNNCORE_ISA or the best). ValueError when the
    name is unknown or this CPU cannot run it. For tests and benchmarks: every variant computes
    the same ops within rounding (not the same bits: vector widths and FMA differ), and each
    gives the same bits for any thread count."""
    if isa is not None and not isinstance(isa, str):
        raise ValueError(f"set_isa: expected a variant name or None, got {isa!r}")
    _core().set_isa(isa or "")


@contextlib.contextmanager
def use_isa(isa):
    """``with rnncore.use_isa("avx2"): ...``: that variant inside the block, the previous one
    afterwards."""
    core = _core()
    try:
        before = core.kernel_info()["isa"]
    except RuntimeError:
        before = None
    set_isa(isa)
    try:
        yield
    finally:
        core.set_isa(before or "")


def team_stats() -> dict:
    """Counters of the thread team since import: ``regions`` run on it, ``inline_busy``
    (regions run on the caller alone because another thread held the team), and
    ``barrier_sleeps`` (barrier waits that ended asleep), ``inline_contended`` (regions run
    on the caller alone because the team had just found its threads descheduled) and
    ``borrowed`` (regions run on a borrowed OpenMP team: :func:`borrow_openmp`), ``late``
    (workers that came to a bulk call after its caller had done all of it: the caller never
    waits for a worker that is still waking up)."""
    r, b, s, c, o, late = _core().team_stats()
    return {"regions": r, "inline_busy": b, "barrier_sleeps": s, "inline_contended": c, "borrowed": o,
            "late": late}


def borrow_openmp(library) -> bool:
    """Run rnncore's parallel regions on the OpenMP team of ``library`` (a libgomp already
    loaded in this process: its path, or a :class:`ctypes.CDLL`), or on rnncore's own workers
    again with None. Returns whether regions now run on a borrowed team.

    For programs whose other thread pool is that OpenMP team (PyTorch's intra-op threads:
    :mod:`rnncore.torch` borrows them by itself). After each of its ops, libgomp's threads spin
    for a while waiting for the next (``OMP_WAIT_POLICY``); on a machine with as many cores as
    threads, rnncore's own workers would then wait for the cores, and a step's barrier for a
    descheduled thread. On the borrowed team rnncore's calls start on threads that are awake
    already, and one team serves the whole program. Nothing else changes: the thread count is
    still rnncore's (:func:`set_num_threads`), and the work split and its results (the same
    bits for any thread count) are those of rnncore's own team. Only libgomp (GCC's OpenMP, the
    one PyTorch's Linux wheels ship) is supported: TypeError for a library without its entry
    points."""
    core = _core()
    if library is None:
        return core.team_borrow_openmp(0, 0, 0)
    lib = library if isinstance(library, ctypes.CDLL) else ctypes.CDLL(os.fspath(library), mode=os.RTLD_NOLOAD)
    try:
        addrs = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
                 for name in ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")]
    except AttributeError as e:
        raise TypeError(f"borrow_openmp: {library!r} is not libgomp (GCC's OpenMP runtime): {e}") from None
    return core.team_borrow_openmp(*addrs)


def openmp_of(prefix: str):
    """The path of the libgomp threadpoolctl finds loaded from under the folder ``prefix``
    (PyTorch's ``torch/lib``), or None."""
    prefix = os.path.realpath(prefix)
    for c in threadpoolctl.ThreadpoolController().select(internal_api="openmp").lib_controllers:
        path = os.path.realpath(c.filepath)
        if "libgomp" in os.path.basename(path) and path.startswith(prefix + os.sep):
            return c.filepath
    return None
