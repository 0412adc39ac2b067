"""Finite-difference gradient checks for any layer or model with ``params``/``grads``.

``gradcheck(obj, *inputs)`` compares the analytic gradients written by ``obj.backward`` with
central differences of a scalar loss, in float64:

- a model (an object with ``loss(*inputs)``): the loss is ``obj.loss(*inputs)`` and the
  gradients come from ``obj.backward()``;
- a layer: the loss is ``sum(obj.forward(*inputs) * R)`` for a fixed random R, and the
  gradients come from ``obj.backward(R)``; a float first input is checked too (``"input"``).

It returns ``{parameter name: max relative error}``. The relative error of an entry is
``|analytic - numeric| / max(|analytic|, |numeric|, floor)`` with floor ``1e-3`` times the
largest analytic entry of that parameter (so entries near zero do not dominate). Stateful
layers are reset before every evaluation; dropout must be off (or seeded per call).
:func:`numeric_gradient` is the central difference itself, for any scalar function of an
array (what the tests' finite differences use).
"""
from __future__ import annotations

import numpy as np

from ._checks import check_size

__all__ = ["gradcheck", "numeric_gradient"]


def numeric_gradient(f, arr: np.ndarray, eps: float = 1e-6, index=None) -> np.ndarray:
    """Central differences ``(f() at arr_i + eps  -  f() at arr_i - eps) / (2 eps)`` of the
    scalar ``f()`` with respect to the entries of ``arr``, which is changed in place (each
    entry restored after its two calls). ``index``: flat indices to probe (default: every
    entry, the result then has arr's shape); float64 values."""
    flat = arr.reshape(-1)
    if not np.shares_memory(flat, arr):
        raise ValueError("numeric_gradient: arr must be contiguous (it is perturbed in place)")
    idx = range(flat.size) if index is None else index
    out = np.empty(len(idx))
    for k, i in enumerate(idx):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        out[k] = (fp - fm) / (2 * eps)
    return out.reshape(arr.shape) if index is None else out


def _rel_err(a, n):
    a, n = np.asarray(a, np.float64), np.asarray(n, np.float64)
    if a.size == 0:
        return 0.0
    floor = max(1e-3 * max(float(np.abs(a).max()), float(np.abs(n).max())), 1e-8)
    return float((np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)).max())


def gradcheck(obj, *inputs, eps: float = 1e-6, max_checks: int = 64, seed: int = 0, check_input: bool = True,
              **kwargs) -> dict:
    """Max relative error of each parameter's gradient (and the input's) against central
    differences with step ``eps``. ``max_checks`` entries per array are probed (random,
    seeded); ``kwargs`` go to ``forward``/``loss``. Parameters must be float64."""
    max_checks = check_size("gradcheck", "max_checks", max_checks)
    if not eps > 0:
        raise ValueError(f"gradcheck: eps must be > 0, got {eps!r}")
    rng = np.random.default_rng(seed)
    params = obj.params
    for p in params:
        if p.dtype != np.float64:
            raise TypeError(f"gradcheck needs float64 parameters, got {p.dtype}")
    is_model = hasattr(obj, "loss")
    R = None

    def run():
        nonlocal R
        if hasattr(obj, "reset_state"):
            obj.reset_state()
        if is_model:
            return float(obj.loss(*inputs, **kwargs)), None
        out = obj.forward(*inputs, **kwargs)
        if R is None:
            R = rng.standard_normal(np.shape(out))
        return float(np.sum(out * R)), out

    run()
    dx = obj.backward() if is_model else obj.backward(R.astype(np.float64))
    analytic = [g.copy() for g in obj.grads]
    names = list(getattr(obj, "param_names", [])) or [f"param{i}" for i in range(len(params))]
    targets = list(zip(names, params, analytic))
    x0 = inputs[0] if inputs else None
    if (check_input and not is_model and isinstance(x0, np.ndarray) and x0.dtype == np.float64
            and isinstance(dx, np.ndarray) and dx.shape == x0.shape):
        targets.append(("input", x0, dx.copy()))
    result = {}
    for name, arr, grad in targets:
        flat = arr.reshape(-1)
        idx = np.arange(flat.size) if flat.size <= max_checks else rng.choice(flat.size, max_checks, replace=False)
        numeric = numeric_gradient(lambda: run()[0], arr, eps, idx)
        result[name] = _rel_err(grad.reshape(-1)[idx], numeric)
    if hasattr(obj, "reset_state"):
        obj.reset_state()
    return result
