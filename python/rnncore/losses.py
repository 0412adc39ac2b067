"""Softmax cross-entropy over all (batch, time) positions, fused natively.

``loss, probs = softmax_cross_entropy(logits, targets)`` takes logits (..., V) and integer
targets (...) and returns the mean cross-entropy over the positions whose target is not
``ignore_index``, and the softmax probabilities (the backward needs them);
``softmax_cross_entropy_backward(probs, targets)`` gives d loss / d logits. The work runs in
C++ (``rnncore._core.softmax_xent_*``) or on its NumPy twin (``rnncore.reference``), per
the active backend.
"""
from __future__ import annotations

import operator
from typing import NamedTuple

import numpy as np

from ._backend import implementation
from ._checks import check_array, int_range, is_int


_INT64 = np.iinfo(np.int64)


def _ignore(op, ignore_index) -> int:
    """ignore_index as a Python int: an integer (not a bool) within int64, as the targets are."""
    if type(ignore_index) is int and _INT64.min <= ignore_index <= _INT64.max:  # the common case, at once
        return ignore_index
    if not is_int(ignore_index):
        raise TypeError(f"{op}: ignore_index must be an integer, got {ignore_index!r}")
    ignore_index = operator.index(ignore_index)
    if not _INT64.min <= ignore_index <= _INT64.max:
        raise ValueError(f"{op}: ignore_index must fit int64, got {ignore_index}")
    return ignore_index


def _targets(op, targets, lead_shape, V, ignore_index):
    """The targets as a flat int64 array, and how many positions count (target not ignore_index)."""
    t = np.asarray(targets)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: targets must be integers, got dtype {t.dtype}")
    if t.shape != lead_shape:
        raise ValueError(f"{op}: targets must have shape {lead_shape} (logits without the class axis), got {t.shape}")
    t = np.ascontiguousarray(t.reshape(-1), dtype=np.int64)
    lo, hi = int_range(t) if t.size else (0, -1)
    if t.size and 0 <= lo and hi < V:  # every target a class (the common case: one pass)
        if ignore_index < 0 or ignore_index >= V:
            return t, t.size
    else:
        bad = (t != ignore_index) & ((t < 0) | (t >= V))
        if bad.any():
            raise ValueError(f"{op}: targets must lie in [0, V) = [0, {V}) or equal ignore_index={ignore_index}, "
                             f"got {t[bad][0]}")
    return t, int(np.count_nonzero(t != ignore_index))


def _core(op):
    impl = implementation()
    return impl.core if hasattr(impl, "core") else impl


def softmax_cross_entropy(logits, targets, *, ignore_index=-1):
    """Mean cross-entropy of softmax(logits) -> ``(loss, probs)``.

    logits (..., V) float32/float64 C-contiguous; targets (...) integers in [0, V) or
    ``ignore_index``. ``loss`` is a Python float (NaN when every position is ignored, as in
    PyTorch); ``probs`` has the shape and dtype of logits.
    """
    loss, probs, _ = forward_for_backward(logits, targets, ignore_index)
    return loss, probs


def forward_for_backward(logits, targets, ignore_index):
    """:func:`softmax_cross_entropy`, and its targets checked (``Checked``), for a layer to pass
    to :func:`backward_checked` instead of checking them again."""
    op = "softmax_cross_entropy"
    check_array(op, "logits", logits)
    if logits.ndim < 2 or logits.shape[-1] < 1 or logits.size == 0:
        raise ValueError(f"{op}: logits must have shape (..., V) with V >= 1 and no empty axis, got {logits.shape}")
    V = logits.shape[-1]
    ignore_index = _ignore(op, ignore_index)
    t, count = _targets(op, targets, logits.shape[:-1], V, ignore_index)
    probs, row_loss = _core(op).softmax_xent_forward(logits.reshape(-1, V), t, ignore_index)
    loss = float(row_loss.sum() / count) if count else float("nan")
    return loss, probs.reshape(logits.shape), Checked(t, count, ignore_index)


class Checked(NamedTuple):
    """Targets as :func:`_targets` gives them (flat int64) with their count and ignore_index."""

    t: np.ndarray
    count: int
    ignore_index: int


def softmax_cross_entropy_backward(probs, targets, *, ignore_index=-1, dloss=1.0, out=None):
    """Gradient of :func:`softmax_cross_entropy`'s loss (times ``dloss``) w.r.t. the logits.

    ``out`` (for example ``probs`` itself, to save memory) receives the result if given.
    """
    op = "softmax_cross_entropy_backward"
    check_array(op, "probs", probs)
    if probs.ndim < 2 or probs.size == 0:
        raise ValueError(f"{op}: probs must have shape (..., V) with V >= 1 and no empty axis, got {probs.shape}")
    V = probs.shape[-1]
    ignore_index = _ignore(op, ignore_index)
    t, count = _targets(op, targets, probs.shape[:-1], V, ignore_index)
    if out is not None:
        check_array(op, "out", out, probs.dtype)
        if out.shape != probs.shape or not out.flags.writeable:
            raise ValueError(f"{op}: out must be a writeable array of shape {probs.shape}")
    return backward_checked(probs, Checked(t, count, ignore_index), dloss, out)


def backward_checked(probs, checked: Checked, dloss=1.0, out=None):
    """:func:`softmax_cross_entropy_backward` for the probs and checked targets that
    :func:`forward_for_backward` returned (``out`` None, or probs itself)."""
    op = "softmax_cross_entropy_backward"
    V = probs.shape[-1]
    scale = float(dloss) / checked.count if checked.count else 0.0
    dx = _core(op).softmax_xent_backward(probs.reshape(-1, V), checked.t, checked.ignore_index, scale,
                                         None if out is None else out.reshape(-1, V))
    return dx.reshape(probs.shape)
