"""The non-recurrent work of a training step, on rnncore's own team and BLAS (``csrc/dense.h``).

A step through rnncore's layers runs every matrix product here or in the recurrent ops, so
NumPy's BLAS pool never wakes during training: ``affine_forward`` / ``affine_backward`` (the
output layer; ``Linear``, ``TimeAffine``, ``Affine``, ``MatMul``), ``embedding_backward`` (the
scatter-add of ``Embedding``), ``adam_update`` (one fused pass per parameter) and
``sum_squares`` (the norm behind gradient clipping). Each follows the active backend: the
native kernels or their NumPy twins in :mod:`rnncore.reference`. The native kernels give the
same bits for any thread count.

Arrays of float32 or float64 run natively; anything else (other dtypes, mixed dtypes the
caller did not convert) runs on the twin with NumPy's own promotion rules, so the layers keep
NumPy's semantics for every input.
"""
from __future__ import annotations

import math

import numpy as np

from . import _native, reference
from ._backend import get_backend
from ._checks import int_range
from .threads import quiet_other_pools

__all__ = ["affine_forward", "affine_backward", "embedding_backward", "adam_update", "sum_squares"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _impl(*arrays):
    """The native core when the backend is native and every array is float32/float64 of one
    dtype, else the NumPy twin."""
    if get_backend() != "native" or _native.core is None:
        return reference
    dt = arrays[0].dtype
    if dt not in _FLOATS:
        return reference
    for a in arrays:
        if a.dtype != dt:
            return reference
    quiet_other_pools()
    return _native.core


def _weight(W):
    """(array, wt): W itself when C-contiguous, its transpose (wt=True) when that is, else a copy."""
    if W.flags.c_contiguous:
        return W, False
    if W.T.flags.c_contiguous:
        return W.T, True
    return np.ascontiguousarray(W), False


def _rows(name, a, D):
    a = np.asarray(a)
    if a.ndim < 1 or a.shape[-1] != D:
        raise ValueError(f"{name} must have {D} features in its last axis, got shape {a.shape}")
    return np.ascontiguousarray(a.reshape(-1, D) if D else a.reshape(math.prod(a.shape[:-1]), 0))


def _weight_matrix(op, W, shape="(D, M)"):
    W = np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"{op}: W must be 2-D {shape}, got shape {W.shape}")
    return W


def _out_arg(op, name, a, shape):
    """A caller's output buffer (a layer's gradient): an ndarray of ``shape``, writeable, or None."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{op}: {name} must be a numpy.ndarray of shape {shape}, got {type(a).__name__}")
    if a.shape != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {a.shape}")
    if not a.flags.writeable:
        raise ValueError(f"{op}: {name} is read-only; it receives the gradient")
    return a


def affine_forward(x, W, b=None):
    """``x (..., D) @ W (D, M) + b (M,)`` -> (..., M). W may be a transposed view (tied weights)."""
    W = _weight_matrix("affine_forward", W)
    D, M = W.shape
    x = np.asarray(x)
    lead = x.shape[:-1]
    x2 = _rows("affine_forward: x", x, D)
    if b is not None:
        b = np.ascontiguousarray(b)
        if b.shape != (M,):
            raise ValueError(f"affine_forward: b must have shape ({M},), got {b.shape}")
    impl = _impl(x2, W, *([] if b is None else [b]))
    Wc, wt = _weight(W)
    return impl.affine_forward(x2, Wc, wt, b).reshape(*lead, M)


def _into(out, shape, dtype):
    """(buffer, transposed, temporary) to receive an output: ``out`` itself, its transpose (an
    F-ordered ``out``, as ``zeros_like`` of a transposed weight gives), or a new array."""
    if out is not None and out.dtype == dtype and out.flags.writeable:
        if out.flags.c_contiguous:
            return out, False, False
        if out.T.flags.c_contiguous:
            return out.T, True, False
    return np.empty(shape, dtype), False, True


def affine_backward(dy, x, W, *, dW=None, db=None, bias=True, need_dx=True):
    """Gradients of :func:`affine_forward` -> ``(dx, dW, db)``.

    ``dW`` (D, M) and ``db`` (M,), when given (a layer's ``grads``), are overwritten in place and
    returned; else new arrays are. ``db`` is None when not ``bias``, ``dx`` (x's shape) None
    unless ``need_dx``.
    """
    op = "affine_backward"
    W = _weight_matrix(op, W)
    D, M = W.shape
    dW = _out_arg(op, "dW", dW, (D, M))
    db = _out_arg(op, "db", db, (M,)) if bias else None
    x = np.asarray(x)
    x2 = _rows("affine_backward: x", x, D)
    dy2 = _rows("affine_backward: dy", dy, M)
    if dy2.shape[0] != x2.shape[0]:
        raise ValueError(f"affine_backward: dy has {dy2.shape[0]} rows but x has {x2.shape[0]}")
    impl = _impl(x2, dy2, W)
    Wc, wt = _weight(W)
    dt = np.result_type(x2, dy2)  # the gradients' dtype (NumPy's promotion on the twin)
    buf, dwt, temp_w = _into(dW, (D, M), dt)
    gb, _, temp_b = _into(db, (M,), dt) if bias else (None, False, False)
    dx = impl.affine_backward(dy2, x2, Wc, wt, buf, dwt, gb, bool(need_dx))
    gW = buf.T if dwt else buf
    if dW is not None and temp_w:  # a buffer of another dtype or layout: copy into it
        dW[...] = gW
    if db is not None and bias and temp_b:
        db[...] = gb
    return ((None if dx is None else dx.reshape(x.shape)), dW if dW is not None else gW,
            (db if db is not None else gb) if bias else None)


def embedding_backward(ids, dout, dW):
    """``dW (V, D)[...] = 0`` then ``dW[ids[n]] += dout[n]`` for every position n, in place
    (duplicate ids accumulate, in order). ``ids`` any integer shape, ``dout`` (*ids.shape, D)."""
    op = "embedding_backward"
    if not isinstance(dW, np.ndarray):
        raise TypeError(f"{op}: dW must be a 2-D numpy.ndarray (V, D), got {type(dW).__name__}")
    if dW.ndim != 2:
        raise ValueError(f"{op}: dW must be 2-D (V, D), got shape {dW.shape}")
    if not dW.flags.writeable:
        raise ValueError(f"{op}: dW is read-only; it receives the gradient")
    V, D = dW.shape
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"embedding_backward: ids must be integers, got dtype {ids.dtype}")
    flat = np.ascontiguousarray(ids.reshape(-1), dtype=np.int64)
    if flat.size:
        lo, hi = int_range(flat)
        if lo < 0 or hi >= V:
            raise ValueError(f"embedding_backward: ids must lie in [0, {V}), got min {lo} max {hi}")
    d2 = _rows("embedding_backward: dout", dout, D)
    if d2.shape[0] != flat.size:
        raise ValueError(f"embedding_backward: dout must have shape {ids.shape + (D,)}, got {np.shape(dout)}")
    impl = _impl(dW, d2)
    if impl is reference or not dW.flags.c_contiguous:  # (dW is writeable: checked above)
        reference.embedding_backward(flat, d2.astype(dW.dtype, copy=False), dW)
    else:
        impl.embedding_backward(flat, d2, dW)
    return dW


def adam_update(p, g, m, v, lr_c1, b1, b2, eps, c2):
    """One Adam step in place (see :func:`rnncore.reference.adam_update`); the same bits on
    both backends."""
    arrays = (p, g, m, v)
    for name, a in zip(("p", "g", "m", "v"), arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"adam_update: {name} must be a numpy.ndarray, got {type(a).__name__}")
        if a.shape != p.shape:
            raise ValueError(f"adam_update: {name} must have the parameter's shape {p.shape}, got {a.shape}")
    for name, a in (("p", p), ("m", m), ("v", v)):
        if not a.flags.writeable:
            raise ValueError(f"adam_update: {name} is read-only; it is updated in place")
    if _impl(*arrays) is not reference and all(a.flags.c_contiguous for a in arrays):
        _native.core.adam_update(p, g, m, v, float(lr_c1), float(b1), float(b2), float(eps), float(c2))
    else:
        reference.adam_update(p, g, m, v, lr_c1, b1, b2, eps, c2)


def sum_squares(a) -> float:
    """``sum(a ** 2)`` in float64 (the same bits for any thread count on the native backend)."""
    a = np.asarray(a)
    if _impl(a) is not reference and a.flags.c_contiguous:
        return float(_native.core.sum_squares(a))
    return reference.sum_squares(a)
