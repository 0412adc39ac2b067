"""Optimizers over ``params`` / ``grads`` lists, updating the parameters in place.

Every optimizer has ``update(params, grads)`` (the textbook interface) and
``state_dict()`` / ``load_state_dict(d)`` (a flat dict of arrays and numbers, so a
checkpoint can hold it and a resumed run continues bit for bit). :func:`clip_grads`
rescales gradients to a maximum global norm.
"""
from __future__ import annotations

import numpy as np

from . import dense
from ._checks import check_real

__all__ = ["SGD", "Momentum", "Nesterov", "AdaGrad", "RMSprop", "Adam", "clip_grads", "OPTIMIZERS"]


def clip_grads(grads, max_norm: float) -> float:
    """Scale every gradient by ``max_norm / norm`` (in place) when their global L2 norm
    exceeds ``max_norm``; returns the norm before clipping."""
    if max_norm is not None:
        max_norm = check_real("clip_grads", "max_norm", max_norm)
    grads = list(grads)  # read twice below: a generator would be spent by the first pass
    for i, g in enumerate(grads):
        if not isinstance(g, np.ndarray):
            raise TypeError(f"clip_grads: grads[{i}] must be a numpy.ndarray, got {type(g).__name__}")
    total = float(np.sqrt(sum(dense.sum_squares(g) for g in grads)))
    if max_norm is not None and max_norm > 0 and total > max_norm:
        rate = max_norm / (total + 1e-6)
        for g in grads:
            g *= g.dtype.type(rate)
    return total


class Optimizer:
    """Base: per-parameter state arrays in ``self.state[name][i]`` and a step counter."""

    slots: tuple = ()

    def __init__(self, lr: float):
        lr = check_real(type(self).__name__, "lr", lr)
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        self.lr = float(lr)
        self.t = 0
        self.state = {s: None for s in self.slots}

    def _slot(self, name, params):
        if self.state[name] is None:
            self.state[name] = [np.zeros_like(p) for p in params]
        return self.state[name]

    def update(self, params, grads):
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise ValueError(f"{type(self).__name__}.update: {len(params)} params but {len(grads)} grads")
        for i, (p, g) in enumerate(zip(params, grads)):
            if not isinstance(p, np.ndarray) or not isinstance(g, np.ndarray):
                raise TypeError(f"{type(self).__name__}.update: params[{i}] and grads[{i}] must be numpy.ndarrays, "
                                f"got {type(p).__name__} and {type(g).__name__}")
            if g.shape != p.shape:
                raise ValueError(f"{type(self).__name__}.update: grads[{i}] must have the shape of params[{i}] "
                                 f"{p.shape}, got {g.shape}")
        self.t += 1
        self._update(params, grads)

    def state_dict(self) -> dict:
        d = {"t": np.array(self.t), "lr": np.array(self.lr)}
        for name, arrs in self.state.items():
            if arrs is not None:
                for i, a in enumerate(arrs):
                    d[f"{name}.{i}"] = a
        return d

    def load_state_dict(self, d: dict) -> None:
        self.t = int(d["t"])
        self.lr = float(d["lr"])
        for name in self.slots:
            keys = sorted((k for k in d if k.startswith(name + ".")), key=lambda k: int(k.split(".")[1]))
            self.state[name] = [np.array(d[k]) for k in keys] if keys else None


class SGD(Optimizer):
    """``p -= lr * g``"""

    def __init__(self, lr: float = 0.01):
        super().__init__(lr)

    def _update(self, params, grads):
        for p, g in zip(params, grads):
            p -= p.dtype.type(self.lr) * g


class Momentum(Optimizer):
    """``v = momentum * v - lr * g; p += v``"""

    slots = ("v",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9):
        super().__init__(lr)
        self.momentum = momentum

    def _update(self, params, grads):
        for p, g, v in zip(params, grads, self._slot("v", params)):
            v *= v.dtype.type(self.momentum)
            v -= v.dtype.type(self.lr) * g
            p += v


class Nesterov(Optimizer):
    """Nesterov momentum in the reformulation of Sutskever et al. (PyTorch's ``nesterov=True``):
    ``v = m v - lr g; p += m v - lr g`` with the updated v, which is
    ``p += m^2 v_old - (1 + m) lr g``. (The textbook's ``common/optimizer.py`` instead adds
    ``m^2 v - (1 + m) lr g`` with the updated v.)"""

    slots = ("v",)

    def __init__(self, lr: float = 0.01, momentum: float = 0.9):
        super().__init__(lr)
        self.momentum = momentum

    def _update(self, params, grads):
        m = self.momentum
        for p, g, v in zip(params, grads, self._slot("v", params)):
            v *= v.dtype.type(m)
            v -= v.dtype.type(self.lr) * g
            p += v.dtype.type(m) * v - v.dtype.type(self.lr) * g


class AdaGrad(Optimizer):
    """``s += g^2; p -= lr * g / (sqrt(s) + eps)``"""

    slots = ("s",)

    def __init__(self, lr: float = 0.01, eps: float = 1e-7):
        super().__init__(lr)
        self.eps = eps

    def _update(self, params, grads):
        for p, g, s in zip(params, grads, self._slot("s", params)):
            s += g * g
            p -= p.dtype.type(self.lr) * g / (np.sqrt(s) + p.dtype.type(self.eps))


class RMSprop(Optimizer):
    """``s = rho s + (1 - rho) g^2; p -= lr * g / (sqrt(s) + eps)``"""

    slots = ("s",)

    def __init__(self, lr: float = 0.01, decay_rate: float = 0.99, eps: float = 1e-7):
        super().__init__(lr)
        self.decay_rate, self.eps = decay_rate, eps

    def _update(self, params, grads):
        rho = self.decay_rate
        for p, g, s in zip(params, grads, self._slot("s", params)):
            s *= s.dtype.type(rho)
            s += s.dtype.type(1 - rho) * g * g
            p -= p.dtype.type(self.lr) * g / (np.sqrt(s) + p.dtype.type(self.eps))


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction:
    ``m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * m_hat / (sqrt(v_hat) + eps)``."""

    slots = ("m", "v")

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__(lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def _update(self, params, grads):
        b1, b2, t = self.beta1, self.beta2, self.t
        ms, vs = self._slot("m", params), self._slot("v", params)
        c1, c2 = 1 - b1 ** t, 1 - b2 ** t
        for p, g, m, v in zip(params, grads, ms, vs):  # one fused pass each (native or its twin)
            dense.adam_update(p, g, m, v, self.lr / c1, b1, b2, self.eps, c2)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adagrad": AdaGrad,
              "rmsprop": RMSprop, "adam": Adam}
