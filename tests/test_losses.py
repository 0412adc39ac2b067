"""Fused softmax cross-entropy: native vs the NumPy twin, a plain formula, finite
differences, PyTorch, ignore_index, errors."""
from __future__ import annotations

import numpy as np
import pytest

import rnncore
from rnncore.gradcheck import numeric_gradient
from rnncore import softmax_cross_entropy, softmax_cross_entropy_backward


def _case(dtype, shape=(3, 5), V=7, seed=0, ignore_some=True):
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal(shape + (V,))).astype(dtype)
    t = rng.integers(0, V, size=shape)
    if ignore_some:
        t.flat[[0, 4]] = -1
    return x, t


def _plain(x, t, ignore=-1):
    """The definition, written out: mean over kept positions of -log softmax(x)[t]."""
    V = x.shape[-1]
    x2, t2 = x.reshape(-1, V).astype(np.float64), t.reshape(-1)
    keep = t2 != ignore
    p = np.exp(x2 - x2.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss = -np.log(p[np.arange(len(t2))[keep], t2[keep]]).mean()
    g = p.copy()
    g[np.arange(len(t2))[keep], t2[keep]] -= 1
    g[~keep] = 0
    return loss, p.reshape(x.shape), (g / keep.sum()).reshape(x.shape)


@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize("dtype,k", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_matches_the_definition(backend, dtype, k):
    x, t = _case(dtype, shape=(4, 6), V=50)
    ref_loss, ref_p, ref_g = _plain(x, t)
    with rnncore.use_backend(backend):
        loss, p = softmax_cross_entropy(x, t)
        g = softmax_cross_entropy_backward(p, t, dloss=2.0)
    assert p.dtype == dtype and g.dtype == dtype and p.shape == x.shape
    assert abs(loss - ref_loss) <= k * 10 * abs(ref_loss)
    np.testing.assert_allclose(p, ref_p, rtol=0, atol=k * 10)
    np.testing.assert_allclose(g, 2.0 * ref_g, rtol=0, atol=k * 10 * np.abs(ref_g).max())


def test_native_equals_twin_and_large_logits_are_stable():
    x, t = _case(np.float32, shape=(64,), V=1000, seed=3)
    x[0] += 80.0  # would overflow a naive exp
    with rnncore.use_backend("numpy"):
        l_ref, p_ref = softmax_cross_entropy(x, t)
    l_nat, p_nat = softmax_cross_entropy(x, t)
    assert np.isfinite(l_nat) and abs(l_nat - l_ref) <= 1e-5 * abs(l_ref)
    np.testing.assert_allclose(p_nat, p_ref, rtol=0, atol=1e-6)


def test_gradient_by_finite_differences():
    x, t = _case(np.float64, shape=(2, 3), V=4, seed=5)
    loss, p = softmax_cross_entropy(x, t)
    g = softmax_cross_entropy_backward(p, t)
    num = numeric_gradient(lambda: softmax_cross_entropy(x, t)[0], x, 1e-6)
    np.testing.assert_allclose(g, num, rtol=0, atol=1e-8)


def test_ignored_positions_and_out_in_place():
    x, t = _case(np.float32)
    loss, p = softmax_cross_entropy(x, t)
    keep = t != -1
    loss_kept, _ = softmax_cross_entropy(np.ascontiguousarray(x[keep]), t[keep])
    assert abs(loss - loss_kept) <= 1e-6 * abs(loss)
    x_before = x.copy()
    g = softmax_cross_entropy_backward(p, t, out=p)
    assert g.base is p or g is p or np.shares_memory(g, p)
    assert np.all(g[~keep] == 0)
    np.testing.assert_array_equal(x, x_before)
    all_ignored = np.full_like(t, -1)
    assert np.isnan(softmax_cross_entropy(x, all_ignored)[0])


@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize("ignore", [-1, 0, 3, 7, -100])
def test_ignore_index_inside_and_outside_the_classes(backend, ignore):
    """Positions count by their target alone: with ignore_index a class (0, 3), the positions of
    that class drop out of the loss and the mean; outside [0, V) every position counts."""
    x, t = _case(np.float64, shape=(6, 5), V=7, seed=3, ignore_some=False)
    t.flat[[1, 2, 9]] = 3
    with rnncore.use_backend(backend):
        loss, p = softmax_cross_entropy(x, t, ignore_index=ignore)
        g = softmax_cross_entropy_backward(p, t, ignore_index=ignore)
    ref_loss, _, ref_g = _plain(x, t, ignore=ignore)
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    np.testing.assert_allclose(g, ref_g, rtol=0, atol=1e-14)
    if 0 <= ignore < 7:
        assert np.all(g.reshape(-1, 7)[t.reshape(-1) == ignore] == 0)


def test_pytorch_cross_entropy():
    torch = pytest.importorskip("torch")
    x, t = _case(np.float64, shape=(5, 4), V=9, seed=11)
    xt = torch.tensor(x.reshape(-1, 9), requires_grad=True)
    ref = torch.nn.functional.cross_entropy(xt, torch.tensor(t.reshape(-1)), ignore_index=-1)
    ref.backward()
    loss, p = softmax_cross_entropy(x, t)
    g = softmax_cross_entropy_backward(p, t)
    assert abs(loss - ref.item()) <= 1e-12 * abs(ref.item())
    np.testing.assert_allclose(g.reshape(-1, 9), xt.grad.numpy(), rtol=0, atol=1e-13)


@pytest.mark.parametrize("bad,exc,match", [
    (lambda x, t: (x.astype(np.int32), t), TypeError, "logits"),
    (lambda x, t: (x, t.astype(np.float64)), TypeError, "targets must be integers"),
    (lambda x, t: (x, t[:, :2]), ValueError, "targets must have shape"),
    (lambda x, t: (x, np.where(t == -1, 7, t)), ValueError, r"targets must lie in \[0, V\)"),
    (lambda x, t: (x[:, :, ::2], t), ValueError, "C-contiguous"),
    (lambda x, t: (x[0, 0], t[0, 0]), ValueError, "logits must have shape"),
])
def test_bad_input(bad, exc, match):
    x, t = _case(np.float32)
    xb, tb = bad(x, t)
    with pytest.raises(exc, match=match):
        softmax_cross_entropy(xb, tb)


@pytest.mark.parametrize("backend", ["native", "numpy"])
@pytest.mark.parametrize("ignore,exc", [(1.5, TypeError), (None, TypeError), ("x", TypeError), (True, TypeError),
                                        (2**70, ValueError)])
def test_bad_ignore_index(backend, ignore, exc):
    """ignore_index must be an integer within int64: a float was truncated for the kernel while the
    mean counted every position (a silently wrong loss)."""
    x, t = _case(np.float32)
    with rnncore.use_backend(backend):
        with pytest.raises(exc, match="ignore_index"):
            softmax_cross_entropy(x, t, ignore_index=ignore)
        _, p = softmax_cross_entropy(x, t)
        with pytest.raises(exc, match="ignore_index"):
            softmax_cross_entropy_backward(p, t, ignore_index=ignore)
        loss, _ = softmax_cross_entropy(x, np.maximum(t, 0), ignore_index=np.int64(1))  # NumPy integers are
        assert np.isfinite(loss)  # integers too


@pytest.mark.parametrize("where", [0, 5, -1])
@pytest.mark.parametrize("value", [-2, 9, np.iinfo(np.int64).min, np.iinfo(np.int64).max])
def test_one_target_out_of_range_anywhere(where, value):
    """The targets' range is checked in one native pass (min and max together): a single bad
    target at the start, inside or at the end, at either side and at the int64 extremes, is
    named; so are the embedding's ids."""
    from rnncore._checks import int_range
    from rnncore.dense import embedding_backward

    x, t = _case(np.float32)
    t = np.maximum(t, 0)
    flat = t.reshape(-1).astype(np.int64)
    flat[where] = value
    assert int_range(flat) == (flat.min(), flat.max())
    with pytest.raises(ValueError, match=r"targets must lie in \[0, V\)"):
        softmax_cross_entropy(x, flat.reshape(t.shape))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 9\)"):
        embedding_backward(flat, np.ones(flat.shape + (2,), np.float32), np.zeros((9, 2), np.float32))
