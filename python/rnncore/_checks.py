"""Argument checks shared by both backends.

Every functional op validates here, in Python, before any native work: a wrong shape,
dtype, rank or value raises ``ValueError``/``TypeError`` naming the argument and the
expected shape. Nothing passed in is modified or converted to another precision.
"""
from __future__ import annotations

import functools
import operator
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import _native, cells
from .cells import CellSpec


@dataclass
class Inputs:
    """Validated inputs of one recurrent call; sizes T, B, D, H; G weight blocks."""

    op: str
    cell: str  # the kernel's name, cells.CellSpec.name: "rnn", "lstm", "gru", "gru_reset_before", ...
    x: np.ndarray
    wx: np.ndarray
    wh: np.ndarray
    b_ih: np.ndarray
    b_hh: Optional[np.ndarray]
    h0: Optional[np.ndarray]
    c0: Optional[np.ndarray]
    lengths: Optional[np.ndarray]  # int32 (B,), or None: every sequence has T steps
    batch_first: bool
    activation: str
    T: int
    B: int
    D: int
    H: int
    G: int
    spec: CellSpec  # the registry's entry of ``cell``
    transposed: bool = False  # wx (G*H, D), wh (G*H, H): PyTorch's weight_ih / weight_hh; grads so too


def _layout(batch_first: bool) -> str:
    return "(B, T, D)" if batch_first else "(T, B, D)"


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def check_array(op: str, name: str, a, dtype=None, ndim: Optional[int] = None) -> np.ndarray:
    if type(a) is not np.ndarray:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{op}: {name} must be a numpy.ndarray, got {type(a).__name__}")
        # a subclass whose meaning the kernels would ignore
        if isinstance(a, np.ma.MaskedArray):
            raise TypeError(f"{op}: {name} is a masked array; rnncore ignores no mask silently: pass "
                            f"{name}.filled(0) (and lengths= for padded sequences)")
        if isinstance(a, np.matrix):
            raise TypeError(f"{op}: {name} is a numpy.matrix; pass np.asarray({name})")
    if dtype is None:
        if a.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise TypeError(
            f"{op}: {name} has dtype {a.dtype} but x is {dtype}; every array must have x's dtype "
            f"(rnncore never changes precision silently)"
        )
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{op}: {name} must be C-contiguous; pass np.ascontiguousarray({name})")
    return a


def is_int(v) -> bool:
    """An integer argument: anything Python takes as an index (int, a NumPy integer, a 0-d
    integer array), not a bool."""
    if isinstance(v, (bool, np.bool_)):
        return False
    try:
        operator.index(v)
    except TypeError:
        return False
    return True


def check_size(op: str, name: str, v, minimum: int = 1) -> int:
    """A size or count: an integer (not a float, not a bool) >= ``minimum``, as a Python int."""
    if is_int(v) and operator.index(v) >= minimum:
        return operator.index(v)
    raise ValueError(f"{op}: {name} must be an integer >= {minimum}, got {v!r}")


def check_real(op: str, name: str, v) -> float:
    """A real number (a Python or NumPy number, a 0-d array, a Fraction; not a bool or a string),
    as a Python float."""
    if not isinstance(v, (bool, np.bool_, str, bytes)) and np.ndim(v) == 0:
        try:
            return float(v)
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{op}: {name} must be a real number, got {v!r}")


def check_shape(op: str, name: str, a: np.ndarray, expected: tuple, legend: str) -> None:
    if a.shape != expected:
        raise ValueError(f"{op}: {name} must have shape {legend} = {expected}, got {a.shape}")


def check_finite(op: str, name: str, a: np.ndarray) -> None:
    if a.size and not _all_finite(a):
        raise ValueError(f"{op}: {name} contains NaN or infinity")


def check_all_finite(op: str, named) -> None:
    """check_finite for each (name, array) of ``named`` (arrays as check_array passes them, or
    None), in order: one native scan of them all when the core is built (a recurrent call
    checks six or seven arrays, and a call of a few microseconds each adds up in a small
    model's step), else NumPy's."""
    named = [(n, a) for n, a in named if a is not None]
    bad = _first_nonfinite([a for _, a in named])
    if bad >= 0:
        raise ValueError(f"{op}: {named[bad][0]} contains NaN or infinity")


def _all_finite(a: np.ndarray) -> bool:
    """The native scan when the core is built: one pass, no temporary, 0.3 us for a small
    array where np.isfinite(a).all() takes 4; else NumPy."""
    return _first_nonfinite([a]) < 0


def _first_nonfinite(arrays) -> int:
    """Index of the first array holding a NaN or an infinity, or -1."""
    if _native.core is not None:
        try:  # float32/float64 C-contiguous arrays, as check_array passes them
            return _native.core.first_nonfinite(arrays)
        except (RuntimeError, ValueError, TypeError):  # another array, or no kernel variant to run
            pass  # (RNNCORE_ISA names one this CPU lacks)
    for i, a in enumerate(arrays):
        if a.size and not np.isfinite(a).all():
            return i
    return -1


def int_range(a: np.ndarray) -> tuple:
    """(min, max) of a non-empty C-contiguous int64 array: one native pass when the core is
    built (NumPy's two reductions cost some 5 us for a small array), else NumPy's."""
    if _native.core is not None:
        return _native.core.int64_range(a)
    return a.min(), a.max()


def check_lengths(op: str, lengths, T: int, B: int) -> Optional[np.ndarray]:
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{op}: lengths must be integers, got dtype {arr.dtype}")
    if arr.shape != (B,):
        raise ValueError(f"{op}: lengths must have shape (B,) = ({B},), one per sequence, got {arr.shape}")
    if arr.min() < 1 or arr.max() > T:
        raise ValueError(f"{op}: lengths must lie in [1, T] = [1, {T}], got min {arr.min()} max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def check_sequence(op: str, x, batch_first) -> tuple:
    """Validate x (T, B, D), or (B, T, D) with batch_first; returns (T, B, D)."""
    if not isinstance(batch_first, (bool, np.bool_)):
        raise TypeError(f"{op}: batch_first must be a bool, got {type(batch_first).__name__}")
    check_array(op, "x", x, ndim=3)
    if min(x.shape) < 1:
        raise ValueError(f"{op}: x must have shape {_layout(batch_first)} with every size >= 1, got {x.shape}")
    B, T, D = x.shape if batch_first else (x.shape[1], x.shape[0], x.shape[2])
    return T, B, D


def recurrent_inputs(op, spec: CellSpec, x, wx, wh, b_ih, b_hh, h0, c0, lengths, batch_first,
                     activation, transposed=False) -> Inputs:
    """Validate the arguments of a forward call of the cell ``spec``; returns them with the sizes.
    ``transposed``: wx and wh in PyTorch's layout, (G*H, D) and (G*H, H)."""
    if activation not in spec.activations:
        raise ValueError(f"{op}: activation must be one of {spec.activations}, got {activation!r}")
    T, B, D = check_sequence(op, x, batch_first)
    dt = x.dtype
    G = spec.gates
    gh = spec.gate_legend
    check_array(op, "wx", wx, dt, ndim=2)
    d_ax, g_ax = (1, 0) if transposed else (0, 1)
    if wx.shape[d_ax] != D or wx.shape[g_ax] % G or wx.shape[g_ax] == 0:
        want = f"({gh}, D)" if transposed else f"(D, {gh})"
        raise ValueError(f"{op}: wx must have shape {want} with D = {D} from x, got {wx.shape}")
    H = wx.shape[g_ax] // G
    check_array(op, "wh", wh, dt, ndim=2)
    if transposed:
        check_shape(op, "wh", wh, (G * H, H), f"({gh}, H)")
    else:
        check_shape(op, "wh", wh, (H, G * H), f"(H, {gh})")
    names = spec.biases
    check_array(op, names[0], b_ih, dt, ndim=1)
    check_shape(op, names[0], b_ih, (G * H,), f"({gh},)")
    if b_hh is not None:
        check_array(op, names[1], b_hh, dt, ndim=1)
        check_shape(op, names[1], b_hh, (G * H,), f"({gh},)")
    for name, s in (("h0", h0), ("c0", c0)):
        if s is not None:
            check_array(op, name, s, dt, ndim=2)
            check_shape(op, name, s, (B, H), "(B, H)")
    lengths = check_lengths(op, lengths, T, B)
    _check_sizes(op, spec, T, B, D, H, dt)
    check_all_finite(op, (("wx", wx), ("wh", wh), (names[0], b_ih), (names[-1], b_hh), ("h0", h0), ("c0", c0),
                          ("x", x)))
    return Inputs(op, spec.name, x, wx, wh, b_ih, b_hh, h0, c0, lengths, bool(batch_first), activation,
                  T, B, D, H, G, spec, bool(transposed))


#: the 32-bit BLAS and the native kernels index a matrix's rows, columns and leading dimension
#: with 32-bit integers
INDEX_LIMIT = 2**31 - 1


@functools.lru_cache(maxsize=None)
def _memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_sizes(op, cell, T, B, D, H, G, dtype) -> None:
    """Sizes the kernels can index, and outputs the machine can hold, before anything is
    allocated (see :func:`_check_sizes`); ``cell`` a kernel name, G its gate count."""
    spec = cells.get(cell)
    assert spec.gates == G, (cell, G)
    _check_sizes(op, spec, T, B, D, H, dtype)


def _check_sizes(op, spec: CellSpec, T, B, D, H, dtype) -> None:
    """T*B rows and the G*H, cache-gate and D columns within 32-bit indices; the forward's
    outputs and cache (hs, gates, cell states) within the physical memory."""
    rows = T * B
    widest = max(D, spec.gates * H, spec.cache_gates * H)
    if rows > INDEX_LIMIT or widest > INDEX_LIMIT or rows * widest > 2**62:
        raise ValueError(f"{op}: T*B = {T}*{B} = {rows} rows of up to {widest} columns do not fit the "
                         f"32-bit indices of the BLAS (at most {INDEX_LIMIT} rows and columns)")
    blocks = 1 + spec.cache_gates + int(spec.has_cell_state)  # hs, gates, cs
    need = rows * H * blocks * np.dtype(dtype).itemsize
    have = _memory_bytes()
    if have and need > have:
        raise ValueError(f"{op}: the outputs and cache of T={T}, B={B}, H={H} ({spec.name}, {np.dtype(dtype)}) "
                         f"need {need / 2**30:.1f} GiB, more than this machine's {have / 2**30:.1f} GiB")


def grad_input(op: str, name: str, g, shape: tuple, legend: str, dtype) -> Optional[np.ndarray]:
    """Validate an incoming gradient (None means zeros)."""
    if g is None:
        return None
    check_array(op, name, g, dtype)
    check_shape(op, name, g, shape, legend)
    check_finite(op, name, g)
    return g
