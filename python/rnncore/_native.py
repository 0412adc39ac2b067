"""The native implementation: rnncore._core behind the driver interface of reference.py."""
from __future__ import annotations

import os
import sys

__import__("numpy")  # loaded first, so that NumPy's OpenBLAS never sees the variable set below

from ._backend import register_implementation  # noqa: E402 (after NumPy, as said above)


def _load_core():
    """Import the extension with OPENBLAS_NUM_THREADS=1 in the environment while its OpenBLAS
    initialises: rnncore runs every BLAS call of its own on one thread (its team splits the
    work), so that library needs no thread pool, whose workers would otherwise spin for a tenth
    of a second after the import beside the program's own threads. The variable is restored at
    once; NumPy's OpenBLAS, loaded before (above), keeps its threads."""
    before = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        from . import _core
    finally:
        if before is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = before
    return _core


try:
    core = _load_core()
except ImportError as exc:  # a source checkout without a build
    core = None
    import_error = exc
else:
    import_error = None


#: called before each native call: threads.quiet_other_pools, which rnncore.threads sets here
#: when imported (rnncore/__init__ imports it), so that this module imports nothing of rnncore
before_call = None


def forward(inp, cache=True):
    """inp: the call's Inputs (_checks.py), read by name on the C++ side, as in backward.
    Without ``cache`` (inference) the step's gates and cell states live in small rings of the
    workspace (csrc/driver.h), and gates, cs come back None."""
    if before_call is not None:
        before_call()
    return core.forward(inp, cache)


def backward(cache, dhs, dh_n, dc_n):
    if before_call is not None:
        before_call()
    return core.backward(cache.inputs, cache.hs, cache.gates, cache.cs, dhs, dh_n, dc_n)


register_implementation("native", sys.modules[__name__])  # the ops' "native" backend (_backend.implementation)
