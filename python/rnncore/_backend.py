"""Which implementation the functional ops run on: "native" (C++) or "numpy" (the twin).

The default comes from the RNNCORE_BACKEND environment variable, else "native".
``set_backend`` changes it for the process; ``use_backend`` for a block, in this thread.
"""
from __future__ import annotations

import contextlib
import os
import threading

BACKENDS = ("native", "numpy")
_default = os.environ.get("RNNCORE_BACKEND", "native")
if _default not in BACKENDS:
    raise ImportError(f"RNNCORE_BACKEND must be one of {BACKENDS}, got {_default!r}")
_local = threading.local()
_blocks = [0]  # use_backend blocks open in any thread: while none is, get_backend needs no thread-local lookup
_blocks_lock = threading.Lock()
_impls = {}  # backend name -> the module implementing it (register_implementation)


def _check(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "native":
        native = _impls.get("native")
        if native is None or native.core is None:
            error = getattr(native, "import_error", "rnncore._native is not loaded")
            raise RuntimeError(f"the native backend is not built: {error}")


def set_backend(name: str) -> None:
    """Run rnncore's ops on ``"native"`` or ``"numpy"`` from now on (whole process)."""
    global _default
    _check(name)
    _default = name


def get_backend() -> str:
    """The backend the ops run on here and now."""
    if not _blocks[0]:
        return _default
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else _default


@contextlib.contextmanager
def use_backend(name: str):
    """``with rnncore.use_backend("numpy"): ...`` runs the block (this thread) on that backend."""
    _check(name)
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    with _blocks_lock:
        _blocks[0] += 1
    try:
        yield
    finally:
        with _blocks_lock:
            _blocks[0] -= 1
        stack.pop()


def register_implementation(name: str, module) -> None:
    """Called by the implementations themselves when imported (rnncore._native, rnncore.reference;
    rnncore/__init__ imports both), so that this module imports neither."""
    _impls[name] = module


def implementation():
    """The module that implements the ops on the active backend: rnncore._native or rnncore.reference."""
    return _impls[get_backend()]
