"""Kernels chosen at run time (csrc/isa.h, csrc/dispatch.cpp): every variant this CPU runs
(avx512, avx2, generic) against the NumPy twin, the same bits for any thread count within a
variant, the variants really being different code, RNNCORE_ISA and set_isa, kernel_info."""
from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

import rnncore
from rnncore import dense, losses
from rnncore.optim import Adam

from helpers import CELLS, TOL, assert_close, make_case, run_backward, run_forward

ALL_ISAS = ["avx512", "avx2", "generic"]
SUPPORTED = rnncore.kernel_info()["supported"]
DTYPES = [np.float32, np.float64]


def _isa_param(isa):
    why = f"this CPU cannot run the {isa} kernels (it runs {', '.join(SUPPORTED)})"
    return pytest.param(isa, id=isa, marks=pytest.mark.skipif(isa not in SUPPORTED, reason=why))


ISAS = [_isa_param(i) for i in ALL_ISAS]


@pytest.fixture
def isa(request):
    """Run the test on the variant of the parameter; the default afterwards."""
    rnncore.set_isa(request.param)
    assert rnncore.kernel_info()["isa"] == request.param
    yield request.param
    rnncore.set_isa(None)


def _run(impl, cell, kw, case, batch_first):
    x, params, h0, c0, dhs, dh_n, dc_n, lens = case
    outs, cache = run_forward(impl, cell, x, params, h0, c0, lengths=lens, batch_first=batch_first, **kw)
    grads = run_backward(impl, cell, cache, dhs, dh_n, dc_n)
    return {k: v for d in (outs, grads) for k, v in d.items() if v is not None}


# B 1, 8, 33 and 260: the step GEMM's 1, 8 and 12-row blocks and their remainders (small_gemm.h);
# 3-7, 10 and 11: a last block of every other size (a block takes all of the 3-12 rows left;
# 3-6 rows in all take both panels of a pair at once with AVX-512).
# H 37: unit blocks that end inside a vector (the last one partly padding), two or three of them
# (kernel_info()["unit_block"]), so two threads own different blocks.
BATCHES = [1, 3, 4, 5, 6, 7, 8, 10, 11, 33, 260]


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=[c[0] for c in CELLS])
def test_variant_matches_twin(isa, cid, cell, kw, dtype, batch_first, B):
    T, D, H = 5, 7, 37
    case = make_case(cell, T, B, D, H, dtype, zlib.crc32(repr((cid, B, batch_first)).encode()), batch_first)
    nat = _run("native", cell, kw, case, batch_first)
    ref = _run("reference", cell, kw, case, batch_first)
    assert nat.keys() == ref.keys()
    for k in nat:
        assert_close(nat[k], ref[k], TOL[dtype], f"{isa} {k}")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("B", [1, 8, 33, 260])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("cid,cell,kw", [c for c in CELLS if c[0] in ("rnn-tanh", "lstm", "gru", "gru-reset-before")],
                         ids=["rnn", "lstm", "gru", "gru-reset-before"])
def test_variant_same_bits_for_any_thread_count(isa, cid, cell, kw, dtype, B):
    """H 150: the step GEMM's columns and the hidden units split over the team."""
    case = make_case(cell, 4, B, 9, 150, dtype, 7, False)
    runs = []
    for n in (1, 2, 3):
        with rnncore.num_threads(n):
            runs.append(_run("native", cell, kw, case, False))
    for other in runs[1:]:
        for k in runs[0]:
            np.testing.assert_array_equal(runs[0][k], other[k], err_msg=f"{isa} {k}")


def _dense_ops(rng, dtype):
    """Every native dense op once: affine forward/backward, softmax + cross-entropy forward and
    backward, the embedding's scatter-add, two Adam steps, the sum of squares, all_finite."""
    N, D, M, V = 70, 33, 45, 301
    x = rng.standard_normal((N, D)).astype(dtype)
    W = rng.standard_normal((D, M)).astype(dtype)
    b = rng.standard_normal(M).astype(dtype)
    dy = rng.standard_normal((N, M)).astype(dtype)
    logits = (3 * rng.standard_normal((N, V))).astype(dtype)
    t = rng.integers(0, V, N)
    t[3] = -1
    ids = rng.integers(0, 20, N)

    def run():
        out = {"y": dense.affine_forward(x, W, b)}
        out["dx"], out["dW"], out["db"] = dense.affine_backward(dy, x, W, bias=True)
        loss, probs = losses.softmax_cross_entropy(logits, t, ignore_index=-1)
        out["loss"], out["probs"] = np.asarray(loss), probs
        out["dlogits"] = losses.softmax_cross_entropy_backward(probs, t, ignore_index=-1)
        dE = np.zeros((20, D), dtype)
        dense.embedding_backward(ids, x, dE)
        out["dE"] = dE
        p = [x.copy()]
        opt = Adam(lr=0.01)
        for _ in range(2):
            opt.update(p, [dy[:, :D] if M >= D else x])
        out["adam"] = p[0]
        out["ss"] = np.asarray(dense.sum_squares(logits))
        return out

    return run


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_variant_dense_ops_match_twin(isa, dtype, rng):
    run = _dense_ops(rng, dtype)
    nat = run()
    with rnncore.use_backend("numpy"):
        ref = run()
    for k in nat:
        if k == "adam":  # no fused multiply-adds in Adam (dense.h): the twin's bits on every variant
            np.testing.assert_array_equal(nat[k], ref[k], err_msg=f"{isa} adam")
        else:
            assert_close(nat[k], ref[k], TOL[dtype], f"{isa} {k}")
    core = rnncore._native.core
    # the scan (a max over the sign-cleared bits), alone and shared by the threads from 256K
    # elements: each kind of non-finite value, at the ends and inside, and the largest finite
    # values and subnormals, which must pass
    big = np.finfo(dtype).max
    for n in (1, 17, 5000, 300_001):
        a = rng.standard_normal(n).astype(dtype)
        a[[0, -1]] = big, -np.finfo(dtype).tiny / 4
        assert core.all_finite(a) and core.first_nonfinite([a[:1], a]) == -1
        for where in {0, n // 2, n - 1}:
            for bad in (np.nan, np.inf, -np.inf):
                b = a.copy()
                b[where] = bad
                assert not core.all_finite(b), (n, where, bad)
                assert core.first_nonfinite([a, b]) == 1


@pytest.mark.skipif(len(SUPPORTED) < 2, reason="this CPU runs only the generic kernels")
def test_variants_are_different_code(rng):
    """Were the linker to merge the variants' inline code (the trap isa.h describes), every
    variant would compute the same bits. The generic kernels have no fused multiply-add, and
    the softmax's row sums are vector reductions summed in an order that depends on the vector
    width (16, 32 or 64 bytes): each variant rounds differently somewhere. (A sanitizer build
    leaves those reductions scalar, so there only the FMA difference shows.)"""
    logits = rng.standard_normal((64, 4099)).astype(np.float32)
    case = make_case("lstm", 6, 8, 16, 64, np.float32, 3, False)
    results = {}
    for isa in SUPPORTED:
        with rnncore.use_isa(isa):
            p, _ = rnncore._native.core.softmax_xent_forward(logits, np.zeros(64, np.int64), -100)
            results[isa] = (p, _run("native", "lstm", {}, case, False)["hs"])
    vectorized = not rnncore.kernel_info()["sanitizers"]
    for i, a in enumerate(SUPPORTED):
        for b in SUPPORTED[i + 1:]:
            if vectorized or b == "generic":
                assert not np.array_equal(results[a][0], results[b][0]), f"{a} and {b} softmax: the same bits"
            if b == "generic":
                assert not np.array_equal(results[a][1], results[b][1]), f"{a} and {b} LSTM: the same bits"


# -- choosing -------------------------------------------------------------------------------------

def test_kernel_info_reports_the_switch():
    info = rnncore.kernel_info()
    assert info["supported"][-1] == "generic" and info["isa"] in info["supported"]
    if os.environ.get("RNNCORE_ISA", "auto") == "auto":
        assert info["isa"] == info["supported"][0]  # the best this CPU runs
    else:
        assert info["isa"] == os.environ["RNNCORE_ISA"]
    assert info["build"] in ("native", "portable") and isinstance(info["sanitizers"], bool)
    assert "GEMM" in info["step_kernel"]
    assert set(info["unit_block"]) == {"float32", "float64"}
    assert info["l2_bytes"] >= 64 * 1024
    core = rnncore._native.core
    for key, setter, names in (("step_split", core.set_step_split, ("auto", "units", "rows")),
                               ("step_balance", core.set_step_balance, ("timed", "fixed", "probe"))):
        assert info[key] == names[0]  # the default
        try:
            for mode in (1, 2, 0):
                setter(mode)
                assert rnncore.kernel_info()[key] == names[mode]
        finally:
            setter(0)
    widths = {"avx512": 64, "avx2": 32, "generic": 16}
    for isa in SUPPORTED:
        with rnncore.use_isa(isa):
            k = rnncore.kernel_info()
            assert k["isa"] == isa and k["vector_bytes"] == widths[isa]
            # a block is one panel: two vectors of the dtype
            assert k["unit_block"] == {"float32": widths[isa] // 2, "float64": widths[isa] // 4}
            assert rnncore.blas_info()["rnncore_kernels"] == isa
        assert rnncore.kernel_info()["isa"] == info["isa"]  # restored
    rnncore.set_isa("generic")
    rnncore.set_isa("auto")
    assert rnncore.kernel_info()["isa"] == SUPPORTED[0]
    rnncore.set_isa(None)
    assert rnncore.kernel_info()["isa"] == info["isa"]


@pytest.mark.parametrize("bad", ["avx", "AVX512", "sse", ""])
def test_set_isa_rejects_unknown(bad):
    before = rnncore.kernel_info()["isa"]
    if bad == "":  # '' is the C-level spelling of None: the default again
        rnncore.set_isa(bad)
    else:
        with pytest.raises(ValueError, match="not a kernel variant.*this CPU runs"):
            rnncore.set_isa(bad)
    assert rnncore.kernel_info()["isa"] == before
    with pytest.raises(ValueError):
        rnncore.set_isa(3)


@pytest.mark.parametrize("isa", [i for i in ALL_ISAS if i not in SUPPORTED] or ["none"])
def test_set_isa_rejects_unsupported(isa):
    if isa == "none":
        pytest.skip(f"this CPU runs every variant ({', '.join(SUPPORTED)})")
    with pytest.raises(ValueError, match=f"cannot run the {isa} kernels"):
        rnncore.set_isa(isa)


def _python(code, **env):
    e = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120)


def test_rnncore_isa_environment_variable():
    code = ("import numpy as np, rnncore; print(rnncore.kernel_info()['isa']); "
            "x = np.ones((2, 1, 3), np.float32); wx = np.ones((3, 4), np.float32); wh = np.ones((4, 4), np.float32); "
            "print(rnncore.rnn_forward(x, wx, wh, np.zeros(4, np.float32))[0].shape)")
    for isa in SUPPORTED:
        r = _python(code, RNNCORE_ISA=isa)
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == [isa, "(2,", "1,", "4)"]
    r = _python(code, RNNCORE_ISA="auto")
    assert r.stdout.split()[0] == SUPPORTED[0]


@pytest.mark.parametrize("bad", ["bogus"] + [i for i in ALL_ISAS if i not in SUPPORTED])
def test_rnncore_isa_unknown_or_unsupported_fails_clearly(bad):
    """rnncore imports (the NumPy backend stays usable), and every native call raises a
    RuntimeError that names RNNCORE_ISA and the variants this CPU runs."""
    code = ("import numpy as np, rnncore\n"
            "x = np.ones((2, 1, 3), np.float32); wx = np.ones((3, 4), np.float32); wh = np.ones((4, 4), np.float32)\n"
            "with rnncore.use_backend('numpy'): rnncore.rnn_forward(x, wx, wh, np.zeros(4, np.float32))\n"
            "print(rnncore.blas_info()['rnncore_kernels'])\n"
            "try:\n    rnncore.rnn_forward(x, wx, wh, np.zeros(4, np.float32))\n"
            "except RuntimeError as e:\n    print('RuntimeError', e)\n"
            "rnncore.set_isa('generic'); print(rnncore.kernel_info()['isa'])\n")
    r = _python(code, RNNCORE_ISA=bad)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("error: RNNCORE_ISA=")
    assert lines[1].startswith(f"RuntimeError RNNCORE_ISA='{bad}'") and "this CPU runs:" in lines[1]
    assert lines[2] == "generic"  # set_isa overrides the variable


# -- a CPU without some variants --------------------------------------------------------------
# RNNCORE_TEST_HIDE_ISA (dispatch.cpp, for tests only) makes this process treat the CPU as
# lacking the variants it names: what an AVX2-only or a pre-AVX2 CPU would see.

@pytest.mark.parametrize("hide,runs", [("avx512", ["avx2", "generic"]), ("avx512,avx2", ["generic"])],
                         ids=["avx2-only", "sse-only"])
def test_a_cpu_without_some_variants(hide, runs):
    code = ("import rnncore\n"
            "print(rnncore.kernel_info()['supported'], rnncore.kernel_info()['isa'])\n"
            "for isa in ('avx512', 'avx2'):\n"
            "    try:\n        rnncore.set_isa(isa); print(isa, 'ok')\n"
            "    except ValueError as e:\n        print(isa, 'ValueError', e)\n")
    r = _python(code, RNNCORE_TEST_HIDE_ISA=hide)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"{runs} {runs[0]}"
    for line, isa in zip(lines[1:], ("avx512", "avx2")):
        if isa in runs:
            assert line == f"{isa} ok"
        else:
            assert line.startswith(f"{isa} ValueError isa='{isa}': this CPU cannot run the {isa} kernels")
            assert line.endswith(f"(this CPU runs: {', '.join(runs)})")
    r = _python("import rnncore; rnncore.kernel_info()", RNNCORE_TEST_HIDE_ISA=hide, RNNCORE_ISA="avx512")
    assert r.returncode != 0 and "RuntimeError: RNNCORE_ISA='avx512': this CPU cannot run the avx512 kernels" in r.stderr


def _this_rnncore_path():
    """PYTHONPATH for a child in another folder that imports this rnncore (not an installed one)."""
    return os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(rnncore.__file__))),
                            *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


@pytest.mark.skipif("RNNCORE_TEST_HIDE_ISA" in os.environ, reason="already inside the emulated CPU")
def test_this_file_on_an_avx2_only_cpu():
    """This test file itself on an emulated AVX2-only CPU: the avx512 cases skip with their
    reason, the rest pass."""
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-x",
                        os.path.join(here, "test_isa.py"), "-k", "not a_cpu_without and not avx2_only_cpu and (twin or reports or rejects)"],
                       env={**os.environ, "RNNCORE_TEST_HIDE_ISA": "avx512", "PYTHONPATH": _this_rnncore_path()},
                       capture_output=True, text=True,
                       timeout=600, cwd=here)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "this CPU cannot run the avx512 kernels (it runs avx2, generic)" in r.stdout
    assert " passed" in r.stdout and " failed" not in r.stdout


def test_benchmark_header_names_the_peers_isa_caps(monkeypatch):
    """An AVX2 comparison on an AVX-512 machine holds the peers to AVX2 too (oneDNN's and MKL's
    caps); the benchmark's header says so, and says nothing when they are unset."""
    from rnncore.benchmark import ops

    for k in ops.PEER_ISA_CAPS:
        monkeypatch.delenv(k, raising=False)
    env = ops.environment(want_torch=False)
    assert env["peer_isa_caps"] == {}
    assert not any("ISA capped" in line for line in ops.machine_lines(env))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    env = ops.environment(want_torch=False)
    assert env["peer_isa_caps"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    line, = [line for line in ops.machine_lines(env) if "ISA capped" in line]
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in line and "MKL_ENABLE_INSTRUCTIONS=AVX2" in line
