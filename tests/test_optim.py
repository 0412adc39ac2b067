"""rnncore.optim: each update rule on a known quadratic, state round trip, clip_grads."""
from __future__ import annotations

import numpy as np
import pytest

from rnncore.optim import OPTIMIZERS, SGD, AdaGrad, Adam, Momentum, Nesterov, RMSprop, clip_grads

# f(p) = 0.5 * sum(a * p^2), gradient a * p, minimum at 0
A = np.array([1.0, 4.0, 0.25])


def grad(p):
    return A * p


def test_sgd_exact_step():
    p = np.array([1.0, -2.0, 3.0])
    SGD(lr=0.1).update([p], [grad(p)])
    np.testing.assert_allclose(p, [1.0 - 0.1, -2.0 + 0.8, 3.0 - 0.075])


def test_momentum_two_steps():
    p = np.array([1.0, -2.0, 3.0])
    p0 = p.copy()
    opt = Momentum(lr=0.1, momentum=0.9)
    opt.update([p], [grad(p)])
    v1 = -0.1 * grad(p0)
    np.testing.assert_allclose(p, p0 + v1)
    g = grad(p)
    p1 = p.copy()
    opt.update([p], [g])
    np.testing.assert_allclose(p, p1 + 0.9 * v1 - 0.1 * g, atol=1e-12)


def test_adagrad_rmsprop_adam_first_step():
    p0 = np.array([1.0, -2.0, 3.0])
    g = grad(p0)
    p = p0.copy()
    AdaGrad(lr=0.1).update([p], [g.copy()])
    np.testing.assert_allclose(p, p0 - 0.1 * g / (np.abs(g) + 1e-7))
    p = p0.copy()
    RMSprop(lr=0.1, decay_rate=0.9).update([p], [g.copy()])
    np.testing.assert_allclose(p, p0 - 0.1 * g / (np.sqrt(0.1 * g * g) + 1e-7))
    p = p0.copy()
    Adam(lr=0.1).update([p], [g.copy()])  # bias-corrected first step is lr * sign(g)
    np.testing.assert_allclose(p, p0 - 0.1 * np.sign(g), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_converges_on_quadratic(name):
    lr = {"sgd": 0.2, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.5, "rmsprop": 0.02, "adam": 0.05}[name]
    p = np.array([1.0, -2.0, 3.0])
    opt = OPTIMIZERS[name](lr=lr)
    for _ in range(500):
        opt.update([p], [grad(p)])
    assert np.abs(p).max() < 0.05, (name, p)


def test_float32_stays_float32_and_in_place():
    p = np.ones(4, np.float32)
    g = np.full(4, 0.5, np.float32)
    ref = p
    for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSprop, Adam):
        cls().update([p], [g])
    assert p is ref and p.dtype == np.float32


def test_state_dict_resume_is_exact():
    def run(n, opt, p):
        for _ in range(n):
            opt.update([p], [grad(p)])

    p1 = np.array([1.0, -2.0, 3.0])
    a = Adam(lr=0.05)
    run(10, a, p1)
    p2 = np.array([1.0, -2.0, 3.0])
    b = Adam(lr=0.05)
    run(5, b, p2)
    c = Adam(lr=0.05)
    c.load_state_dict({k: np.array(v) for k, v in b.state_dict().items()})
    run(5, c, p2)
    np.testing.assert_array_equal(p1, p2)


def test_clip_grads_global_norm():
    g1, g2 = np.array([3.0, 0.0]), np.array([[0.0], [4.0]])
    norm = clip_grads([g1, g2], 1.0)
    assert norm == pytest.approx(5.0)
    total = np.sqrt((g1 ** 2).sum() + (g2 ** 2).sum())
    assert total == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(g1, [0.6, 0.0], rtol=1e-5)
    g = np.array([0.3, 0.4])
    assert clip_grads([g], 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(g, [0.3, 0.4])  # under the limit: untouched


def test_bad_lr():
    with pytest.raises(ValueError, match="lr"):
        SGD(lr=0)


def test_nesterov_two_steps_follow_its_docstring():
    """v = m v - lr g; p += m v - lr g (v updated), i.e. p += m^2 v_old - (1 + m) lr g."""
    m, lr = 0.9, 0.1
    p = np.array([1.0, -2.0, 3.0])
    opt = Nesterov(lr=lr, momentum=m)
    v = np.zeros(3)
    for _ in range(2):
        g = grad(p)
        expect = p + m * m * v - (1 + m) * lr * g
        v = m * v - lr * g
        opt.update([p], [g])
        np.testing.assert_allclose(p, expect, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(opt.state["v"][0], v, rtol=1e-14)


def test_adagrad_rmsprop_adam_second_step():
    """The second step of each adaptive rule against its formula (the state carries over)."""
    p0 = np.array([1.0, -2.0, 3.0])
    g1, g2 = grad(p0), np.array([0.5, -0.25, 2.0])
    p = p0.copy()
    opt = AdaGrad(lr=0.1, eps=1e-7)
    opt.update([p], [g1.copy()])
    p1 = p.copy()
    opt.update([p], [g2.copy()])
    np.testing.assert_allclose(p, p1 - 0.1 * g2 / (np.sqrt(g1 ** 2 + g2 ** 2) + 1e-7), rtol=1e-14)
    p = p0.copy()
    opt = RMSprop(lr=0.1, decay_rate=0.9, eps=1e-7)
    opt.update([p], [g1.copy()])
    p1 = p.copy()
    opt.update([p], [g2.copy()])
    s = 0.9 * (0.1 * g1 ** 2) + 0.1 * g2 ** 2
    np.testing.assert_allclose(p, p1 - 0.1 * g2 / (np.sqrt(s) + 1e-7), rtol=1e-13)
    p = p0.copy()
    opt = Adam(lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    opt.update([p], [g1.copy()])
    p1 = p.copy()
    opt.update([p], [g2.copy()])
    m = 0.9 * (0.1 * g1) + 0.1 * g2
    v = 0.999 * (0.001 * g1 ** 2) + 0.001 * g2 ** 2
    np.testing.assert_allclose(p, p1 - 0.1 * (m / (1 - 0.9 ** 2)) / (np.sqrt(v / (1 - 0.999 ** 2)) + 1e-8),
                               rtol=1e-12)
