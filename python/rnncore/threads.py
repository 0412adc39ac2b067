"""Threads of rnncore's native calls.

One count rules a call: OpenMP workers split each step's GEMM columns and elementwise
work, and the vendored BLAS runs one thread inside them, so the two never oversubscribe the
cores. Unless set here, the count is OpenMP's default for the calling thread (OMP_NUM_THREADS,
or a ``threadpoolctl.threadpool_limits`` block). threadpoolctl lists rnncore's BLAS
(``libscipy_openblas`` in rnncore's folder) and libgomp.
"""
from __future__ import annotations

import contextlib

from . import _native

_setting = 0  # what set_num_threads last stored (0: follow OpenMP's default)


def _core():
    if _native.core is None:
        raise RuntimeError(f"the native backend is not built: {_native.import_error}")
    return _native.core


def get_num_threads() -> int:
    """Threads a native call may use."""
    return _core().get_num_threads()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in native calls (0 or None: follow OpenMP's default again)."""
    if n is None:
        n = 0
    global _setting
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"set_num_threads: n must be an int >= 0, got {n!r}")
    _core().set_num_threads(n)
    _setting = n


@contextlib.contextmanager
def num_threads(n: int):
    """``with rnncore.num_threads(1): ...``"""
    before = _setting
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(before)


def blas_info() -> dict:
    """The vendored BLAS as threadpoolctl sees it, plus its kernel name."""
    from threadpoolctl import threadpool_info

    core = _core()
    info = {"corename": core.blas_corename(), "config": core.blas_config()}
    for lib in threadpool_info():
        if "libscipy_openblas" in lib.get("prefix", "") and "rnncore" in lib.get("filepath", ""):
            info.update(lib)
    return info
