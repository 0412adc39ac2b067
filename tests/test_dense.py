"""rnncore.dense (csrc/dense.h): the affine layer, the embedding's scatter-add, Adam and the
sum of squares, native against the NumPy twin, with finite differences, thread-count
independence, and the layers that use them."""
from __future__ import annotations

import numpy as np
import pytest

import rnncore
from rnncore import dense, reference
from rnncore.gradcheck import gradcheck
from rnncore.layers import Embedding, Linear
from rnncore.optim import Adam, clip_grads

from helpers import TOL, assert_close

DTYPES = [np.float32, np.float64]


def _both(fn):
    """fn() on the native backend and on the twin."""
    out = fn()
    with rnncore.use_backend("numpy"):
        ref = fn()
    return out, ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 3), (300, 64, 96), (2048, 256, 96), (64, 700, 33)])
def test_affine_native_matches_twin(rng, dtype, bias, shape):
    N, D, M = shape
    x = rng.standard_normal((N, D)).astype(dtype)
    W = rng.standard_normal((D, M)).astype(dtype)
    b = rng.standard_normal(M).astype(dtype) if bias else None
    dy = rng.standard_normal((N, M)).astype(dtype)
    (y, g), (y_ref, g_ref) = _both(lambda: (dense.affine_forward(x, W, b),
                                            dense.affine_backward(dy, x, W, bias=bias)))
    k = TOL[dtype]
    assert_close(y, y_ref, k, "y")
    if dtype == np.float64:
        assert_close(y, x @ W + (0 if b is None else b), k, "y vs NumPy")
    for name, a, r in zip(("dx", "dW", "db"), g, g_ref):
        assert_close(a, r, k, name)
    assert (g[2] is None) == (not bias)


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_transposed_weight_and_grad_buffers(rng, dtype):
    """A tied weight (a transposed view) and F-ordered gradient buffers need no copies and
    give the same numbers; the buffers passed in are the ones returned, written in place."""
    D, M = 12, 40
    E = rng.standard_normal((M, D)).astype(dtype)
    W = E.T  # (D, M), F-ordered view
    x = rng.standard_normal((5, 10, D)).astype(dtype)
    dy = rng.standard_normal((5, 10, M)).astype(dtype)
    b = np.zeros(M, dtype)
    dW, db = np.zeros_like(W), np.zeros_like(b)
    assert dW.flags.f_contiguous and not dW.flags.c_contiguous
    y = dense.affine_forward(x, W, b)
    dx, gW, gb = dense.affine_backward(dy, x, W, dW=dW, db=db)
    assert gW is dW and gb is db
    x2, dy2 = x.reshape(-1, D).astype(np.float64), dy.reshape(-1, M).astype(np.float64)
    k = TOL[dtype]
    assert y.shape == (5, 10, M) and dx.shape == x.shape
    assert_close(y.astype(np.float64), x2.reshape(5, 10, D) @ W.astype(np.float64), k, "y")
    assert_close(dW.astype(np.float64), x2.T @ dy2, k, "dW")
    assert_close(dx.astype(np.float64), (dy2 @ W.T.astype(np.float64)).reshape(x.shape), k, "dx")
    assert_close(db.astype(np.float64), dy2.sum(0), k, "db")


def test_affine_gradcheck_float64(rng):
    for bias in (True, False):
        lin = Linear(6, 4, bias=bias, dtype=np.float64, rng=rng)
        errs = gradcheck(lin, rng.standard_normal((3, 5, 6)))
        assert max(errs.values()) < 1e-7, errs


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_duplicates(rng, dtype):
    V, D = 11, 70
    ids = rng.integers(0, V, (9, 13))
    ids[0, :5] = 3  # many duplicates
    dout = rng.standard_normal((9, 13, D)).astype(dtype)
    dW, dW_ref = np.full((V, D), 7, dtype), np.full((V, D), 7, dtype)  # stale contents are cleared
    dense.embedding_backward(ids, dout, dW)
    with rnncore.use_backend("numpy"):
        dense.embedding_backward(ids, dout, dW_ref)
    exact = np.zeros((V, D))
    for n, i in enumerate(ids.reshape(-1)):
        exact[i] += dout.reshape(-1, D)[n]
    assert_close(dW, dW_ref, TOL[dtype], "native vs twin")
    assert_close(dW.astype(np.float64), exact, TOL[dtype], "vs loop")


def test_embedding_backward_rejects_bad_ids():
    dW = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\)"):
        dense.embedding_backward(np.array([0, 4]), np.zeros((2, 3), np.float32), dW)
    with pytest.raises(TypeError, match="ids must be integers"):
        dense.embedding_backward(np.array([0.5]), np.zeros((1, 3), np.float32), dW)
    with pytest.raises(ValueError, match="dout must have shape"):
        dense.embedding_backward(np.array([0, 1]), np.zeros((3, 3), np.float32), dW)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adam_same_bits_on_both_backends(rng, dtype):
    """The native Adam evaluates the twin's expressions in its order, without fused
    multiply-adds: the same bits, step after step."""
    shapes = [(33, 17), (5,), (1000,)]
    ps = [rng.standard_normal(s).astype(dtype) for s in shapes]
    gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    a, b = [p.copy() for p in ps], [p.copy() for p in ps]
    oa, ob = Adam(lr=0.01), Adam(lr=0.01)
    for _ in range(5):
        oa.update(a, gs)
        with rnncore.use_backend("numpy"):
            ob.update(b, gs)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(oa.state["v"], ob.state["v"]):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], ps[0])


def test_adam_one_step_formula(rng):
    p, g = rng.standard_normal(10), rng.standard_normal(10)
    q = p.copy()
    Adam(lr=0.1, beta1=0.8, beta2=0.9, eps=1e-3).update([q], [g])
    m, v = 0.2 * g, 0.1 * g * g
    expect = p - 0.1 * (m / 0.2) / (np.sqrt(v / 0.1) + 1e-3)
    np.testing.assert_allclose(q, expect, rtol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_squares_and_clip(rng, dtype):
    a = rng.standard_normal(100_003).astype(dtype)
    assert dense.sum_squares(a) == pytest.approx(float(np.sum(a.astype(np.float64) ** 2)), rel=1e-12)
    gs = [a.copy(), np.full(7, 3.0, dtype)]
    norm = clip_grads(gs, 1.0)
    assert norm == pytest.approx(np.sqrt(np.sum(a.astype(np.float64) ** 2) + 63), rel=1e-12)
    assert dense.sum_squares(gs[0]) + dense.sum_squares(gs[1]) == pytest.approx(1.0, rel=1e-5)


def test_dense_ops_same_bits_for_any_thread_count(rng):
    x = rng.standard_normal((4096, 256)).astype(np.float32)
    W = rng.standard_normal((256, 96)).astype(np.float32)
    dy = rng.standard_normal((4096, 96)).astype(np.float32)
    ids = rng.integers(0, 50, 4096)
    outs = []
    for n in (1, 2, 3):
        with rnncore.num_threads(n):
            dW = np.zeros((50, 256), np.float32)
            dense.embedding_backward(ids, x, dW)
            outs.append((dense.affine_forward(x, W), *dense.affine_backward(dy, x, W), dW, dense.sum_squares(x)))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("tied", [False, True])
def test_small_batch_wide_layer_cut_by_columns(rng, tied):
    """40 rows before 1024 outputs (one row chunk, several column chunks): the output and dx
    are cut by columns, the same bits for any thread count, and equal to NumPy's products
    to rounding; a tied weight (W.T of the embedding) as well."""
    x = rng.standard_normal((40, 512)).astype(np.float32)
    E = rng.standard_normal((1024, 512)).astype(np.float32)
    W = E.T if tied else np.ascontiguousarray(E.T)
    b = rng.standard_normal(1024).astype(np.float32)
    dy = rng.standard_normal((40, 1024)).astype(np.float32)
    outs = []
    for n in (1, 2, 3):
        with rnncore.num_threads(n):
            outs.append((dense.affine_forward(x, W, b), *dense.affine_backward(dy, x, W)))
    for other in outs[1:]:
        for a, c in zip(outs[0], other):
            np.testing.assert_array_equal(a, c)
    x64, W64, dy64 = x.astype(np.float64), W.astype(np.float64), dy.astype(np.float64)
    for got, ref in zip(outs[0], (x64 @ W64 + b, dy64 @ W64.T, x64.T @ dy64, dy64.sum(0))):
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_mixed_dtypes_follow_numpy(rng):
    """Inputs the native kernels do not take (mixed or integer dtypes) run on the twin, with
    NumPy's promotion, as the textbook's layers would."""
    x = rng.standard_normal((4, 3))  # float64
    W = rng.standard_normal((3, 2)).astype(np.float32)
    y = dense.affine_forward(x, W)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, x @ W)
    xi = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(dense.affine_forward(xi, np.ones((3, 2), np.int64)), xi @ np.ones((3, 2)))


def test_linear_and_embedding_layers_on_both_backends(rng):
    for dtype in DTYPES:
        lin = Linear(8, 5, dtype=dtype, rng=0)
        emb = Embedding(20, 8, dtype=dtype, rng=1)
        ids = rng.integers(0, 20, (3, 4))
        dy = rng.standard_normal((3, 4, 5)).astype(dtype)

        def run():
            y = lin.forward(emb.forward(ids))
            emb.backward(lin.backward(dy))
            return y, lin.grads[0].copy(), lin.grads[1].copy(), emb.grads[0].copy()

        for name, a, b in zip(("y", "dW", "db", "dE"), *_both(run)):
            assert_close(a, b, TOL[dtype], name)


def test_reference_names_mirror_the_native_core():
    core = rnncore._native.core
    for name in ("affine_forward", "affine_backward", "embedding_backward", "adam_update", "sum_squares",
                 "softmax_xent_forward", "softmax_xent_backward"):
        assert callable(getattr(reference, name)) and callable(getattr(core, name)), name


def test_large_outputs_reuse_freed_buffers_without_aliasing(rng):
    """Outputs of 1 MiB and more come from a cache of freed buffers (csrc/buffers.h): a freed
    output's memory serves the next call of that size, live outputs never share memory, and
    they are ordinary writeable, aligned arrays that outlive everything else."""
    core = rnncore._native.core
    x = rng.standard_normal((1000, 64)).astype(np.float32)
    W = rng.standard_normal((64, 500)).astype(np.float32)  # y: 2 MB
    y1 = dense.affine_forward(x, W)
    y2 = dense.affine_forward(x, W)
    assert not np.shares_memory(y1, y2)
    assert y1.flags.writeable and y1.flags.c_contiguous and y1.ctypes.data % 64 == 0
    np.testing.assert_array_equal(y1, y2)
    addr = y1.ctypes.data
    before = core.cached_output_bytes()
    del y1
    assert core.cached_output_bytes() >= before + 1000 * 500 * 4
    y3 = dense.affine_forward(x, W)
    assert y3.ctypes.data == addr  # the freed buffer, reused
    np.testing.assert_array_equal(y3, y2)
    y3[...] = 0  # writing one output leaves the others alone
    assert np.array_equal(y2, dense.affine_forward(x, W))
    for _ in range(50):  # the cache stays bounded whatever passes through it
        big = dense.affine_forward(rng.standard_normal((3000, 64)).astype(np.float32), W)
        del big
    assert core.cached_output_bytes() <= 512 << 20


@pytest.mark.parametrize("backend", ["native", "numpy"])
def test_bad_gradient_buffers_and_weights(rng, backend):
    """The caller's gradient buffers and weights are checked before any work, on both backends:
    a dW of the transposed shape (same size) was filled natively with the (D, M) bytes."""
    x = rng.standard_normal((4, 3)).astype(np.float32)
    W = rng.standard_normal((3, 5)).astype(np.float32)
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    ro = np.zeros((3, 5), np.float32)
    ro.flags.writeable = False
    with rnncore.use_backend(backend):
        for kw, exc, match in [(dict(dW=np.zeros((5, 3), np.float32)), ValueError, r"dW must have shape \(3, 5\)"),
                               (dict(dW=[[0.0] * 5] * 3), TypeError, "dW must be a numpy.ndarray"),
                               (dict(dW=ro), ValueError, "dW is read-only"),
                               (dict(db=np.zeros(4, np.float32)), ValueError, r"db must have shape \(5,\)")]:
            with pytest.raises(exc, match=match):
                dense.affine_backward(dy, x, W, **kw)
        with pytest.raises(ValueError, match="W must be 2-D"):
            dense.affine_backward(dy, x, W[0])
        with pytest.raises(TypeError, match="dW must be a 2-D numpy.ndarray"):
            dense.embedding_backward(np.array([0, 1]), np.zeros((2, 3), np.float32), [[0.0] * 3] * 4)
        with pytest.raises(ValueError, match=r"dW must be 2-D \(V, D\)"):
            dense.embedding_backward(np.array([0, 1]), np.zeros((2, 3), np.float32), np.zeros(12, np.float32))
        with pytest.raises(ValueError, match="dW is read-only"):
            dense.embedding_backward(np.array([0, 1]), np.zeros((2, 5), np.float32), ro)
        p, m, v = (np.ones(4, np.float32) for _ in range(3))
        with pytest.raises(ValueError, match="g must have the parameter's shape"):
            dense.adam_update(p, np.full(1, 0.5, np.float32), m, v, 0.1, 0.9, 0.999, 1e-8, 0.001)
        assert (p == 1).all()
        with pytest.raises(ValueError, match=r"grads\[0\] must have the shape of params\[0\]"):
            Adam(lr=0.1).update([np.ones((4, 2), np.float32)[:, 0]], [np.full(1, 0.5, np.float32)])
        with pytest.raises(TypeError, match="lr must be a real number"):
            Adam(lr="a")
        with pytest.raises(TypeError, match=r"grads\[0\] must be a numpy.ndarray"):
            clip_grads([[1.0, 2.0]], 1.0)
        with pytest.raises(TypeError, match="max_norm must be a real number"):
            clip_grads([np.ones(3)], "a")
        # a layer of no inputs (D 0) gives its bias
        y = dense.affine_forward(np.zeros((2, 0), np.float32), np.zeros((0, 5), np.float32), np.arange(5, dtype=np.float32))
        np.testing.assert_array_equal(y, np.tile(np.arange(5, dtype=np.float32), (2, 1)))
