"""Threads: the count is visible and settable, threadpoolctl sees the vendored BLAS, results are
the same bits for any thread count, concurrent Python threads are safe, the GIL is released."""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import threadpoolctl

import rnncore
from helpers import CELLS, run_backward, run_forward
from helpers import make_case as _case

CELL_IDS = [c[0] for c in CELLS]


@pytest.fixture(autouse=True)
def follow_openmp_default():
    """Every test starts and ends with the default setting (0: follow OpenMP)."""
    rnncore.set_num_threads(0)
    yield
    rnncore.set_num_threads(0)


def _package_dir():
    import rnncore._core

    return os.path.dirname(os.path.realpath(rnncore._core.__file__))


def _run(cell, kw, case):
    x, params, h0, c0, dhs, dh_n, dc_n, lens = case
    outs, cache = run_forward("native", cell, x, params, h0, c0, lengths=lens, **kw)
    grads = run_backward("native", cell, cache, dhs, dh_n, dc_n)
    return {**{k: v for k, v in outs.items() if v is not None}, **{k: v for k, v in grads.items() if v is not None}}


def _assert_equal(a, b, what=""):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{what}{k}")


# -- the count ------------------------------------------------------------------------------------

def test_get_set_round_trip():
    default = rnncore.get_num_threads()
    assert isinstance(default, int) and default >= 1
    for n in (1, 2, 3, 1):
        rnncore.set_num_threads(n)
        assert rnncore.get_num_threads() == n
    rnncore.set_num_threads(0)
    assert rnncore.get_num_threads() == default
    rnncore.set_num_threads(2)
    rnncore.set_num_threads(None)  # None: the default again
    assert rnncore.get_num_threads() == default


def test_count_is_process_wide():
    rnncore.set_num_threads(1)
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(rnncore.get_num_threads).result() == 1
    rnncore.set_num_threads(2)
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(rnncore.get_num_threads).result() == 2


@pytest.mark.parametrize("bad", [-1, 1.5, "2"])
def test_set_num_threads_rejects(bad):
    rnncore.set_num_threads(2)
    with pytest.raises(ValueError, match="n must be"):
        rnncore.set_num_threads(bad)
    assert rnncore.get_num_threads() == 2


def test_num_threads_context_manager():
    rnncore.set_num_threads(2)
    with rnncore.num_threads(1):
        assert rnncore.get_num_threads() == 1
        with rnncore.num_threads(3):
            assert rnncore.get_num_threads() == 3
        assert rnncore.get_num_threads() == 1
    assert rnncore.get_num_threads() == 2
    with pytest.raises(KeyError):
        with rnncore.num_threads(1):
            raise KeyError("boom")
    assert rnncore.get_num_threads() == 2


def test_threadpool_limits_rule_the_default():
    """threadpoolctl sees rnncore's team and threadpool_limits lowers it, then restores it."""
    before = rnncore.get_num_threads()
    with threadpoolctl.threadpool_limits(1):
        assert rnncore.get_num_threads() == 1
    assert rnncore.get_num_threads() == before
    with threadpoolctl.threadpool_limits(1, user_api="rnncore"):
        assert rnncore.get_num_threads() == 1


def test_threadpoolctl_lists_the_team():
    pkg = _package_dir()
    team = [lib for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "rnncore"]
    assert len(team) == 1, threadpoolctl.threadpool_info()
    assert os.path.dirname(os.path.realpath(team[0]["filepath"])) == pkg
    assert team[0]["num_threads"] == rnncore.get_num_threads()
    assert team[0]["version"] == rnncore.__version__


def test_no_openmp_runtime_loaded_by_rnncore():
    """rnncore brings no OpenMP runtime of its own: its one pool is the team."""
    import subprocess
    import sys

    code = ("import rnncore, threadpoolctl; "
            "print(sorted({l['user_api'] for l in threadpoolctl.threadpool_info()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "openmp" not in out and "rnncore" in out, out


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_rnncore_openblas_starts_no_thread_pool():
    """Importing rnncore starts no thread in the process (its OpenBLAS initialises for one
    thread, so no idle pool spins after the import), and the environment is left as it was."""
    import subprocess
    import sys

    code = ("import os, numpy\n"
            "before = len(os.listdir('/proc/self/task'))\n"
            "import rnncore\n"
            "print(before, len(os.listdir('/proc/self/task')), os.environ.get('OPENBLAS_NUM_THREADS'), "
            "rnncore.blas_info()['num_threads'])\n")
    # NumPy's own OpenBLAS keeps its thread count, even when rnncore is the first import
    first = ("import os, rnncore, threadpoolctl, numpy\n"
             "pkg = os.path.dirname(os.path.realpath(rnncore.__file__))\n"
             "print([c.num_threads for c in threadpoolctl.ThreadpoolController().select(user_api='blas').lib_controllers"
             " if os.path.dirname(os.path.realpath(c.filepath)) != pkg])\n")
    if len(os.sched_getaffinity(0)) > 1:
        env = {k: v for k, v in os.environ.items()
               if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_DEFAULT_NUM_THREADS")}
        out = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, env=env, check=True)
        assert all(n > 1 for n in json.loads(out.stdout)), out.stdout
    for value in (None, "2"):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
        if value:
            env["OPENBLAS_NUM_THREADS"] = value
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        before, after, seen, blas = out.stdout.split()
        assert after == before and seen == str(value) and blas == "1", out.stdout


def test_borrow_openmp_refuses_what_is_not_libgomp():
    """rnncore's own OpenBLAS has no GOMP_parallel: refused, and the team stays rnncore's."""
    from rnncore.threads import borrow_openmp

    blas = [lib["filepath"] for lib in threadpoolctl.threadpool_info()
            if os.path.dirname(os.path.realpath(lib["filepath"])) == _package_dir() and lib["user_api"] == "blas"]
    assert blas
    before = rnncore._native.core.team_borrowing()  # (on if an earlier test ran rnncore.torch)
    with pytest.raises(TypeError, match="is not libgomp"):
        borrow_openmp(blas[0])
    assert rnncore._native.core.team_borrowing() == before


def test_hold_numpy_blas_limits_numpy_only():
    from rnncore.threads import hold_numpy_blas

    def blas_threads():
        mine = rnncore.blas_info()["filepath"]
        return {lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                if lib["user_api"] == "blas" and lib["filepath"] != mine}

    before, team = blas_threads(), rnncore.get_num_threads()
    with hold_numpy_blas():
        assert all(n == 1 for n in blas_threads().values())
        assert rnncore.get_num_threads() == team
    assert blas_threads() == before


def test_num_threads_block_restores_follow_default():
    with rnncore.num_threads(1):
        pass
    with threadpoolctl.threadpool_limits(1):
        assert rnncore.get_num_threads() == 1


# -- threadpoolctl and the vendored BLAS ----------------------------------------------------------

def test_threadpoolctl_lists_vendored_openblas():
    pkg = _package_dir()
    ours = [lib for lib in threadpoolctl.threadpool_info()
            if lib.get("prefix") == "libscipy_openblas"
            and os.path.dirname(os.path.realpath(lib["filepath"])) == pkg]
    assert len(ours) == 1, threadpoolctl.threadpool_info()
    assert ours[0]["internal_api"] == "openblas"


def test_blas_info():
    info = rnncore.blas_info()
    assert info["prefix"] == "libscipy_openblas"
    assert os.path.dirname(os.path.realpath(info["filepath"])) == _package_dir()
    assert isinstance(info["corename"], str) and info["corename"]
    assert "OpenBLAS" in info["config"]


# -- same bits for any thread count ---------------------------------------------------------------

BIT_CASES = [pytest.param(cid, cell, kw, np.float32, id=f"{cid}-f32") for cid, cell, kw in CELLS] + [
    pytest.param(cid, cell, kw, np.float64, id=f"{cid}-f64") for cid, cell, kw in CELLS
    if cid in ("rnn-tanh", "lstm", "gru")]


@pytest.mark.parametrize("cid,cell,kw,dtype", BIT_CASES)
def test_one_and_two_threads_bit_identical(cid, cell, kw, dtype):
    # big enough for the native code to open a team of 2 on each step's (B, H) block
    case = _case(cell, T=12, B=64, D=32, H=256, dtype=dtype, seed=len(cid))
    with rnncore.num_threads(1):
        assert rnncore.get_num_threads() == 1
        one = _run(cell, kw, case)
    core = rnncore._native.core
    core.team_set_adaptive(False)  # the team runs even if the machine is busy right now
    try:
        with rnncore.num_threads(2):
            assert rnncore.get_num_threads() == 2
            before = rnncore.threads.team_stats()["regions"]
            two = _run(cell, kw, case)
            assert rnncore.threads.team_stats()["regions"] > before  # two threads did run
    finally:
        core.team_set_adaptive(True)
    _assert_equal(two, one)
    with threadpoolctl.threadpool_limits(1):
        limited = _run(cell, kw, case)
    _assert_equal(limited, one, "threadpool_limits(1): ")


def test_bulk_calls_with_workers_asleep_or_late_give_the_same_bits():
    """Workers that sleep after every call (no idle spin, no barrier spin) come late to most
    regions: a bulk call (affine, loss) then runs on whoever joined before its caller ran out
    of chunks, and the step loop of the recurrent call between them waits for all. Every
    result is bit-identical to one thread's, and the team serves both kinds of region in turn."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((512, 128)).astype(np.float32)
    W = rng.standard_normal((128, 256)).astype(np.float32)
    b = rng.standard_normal(256).astype(np.float32)
    dy = rng.standard_normal((512, 256)).astype(np.float32)
    t = rng.integers(0, 256, 512)
    case = _case("lstm", T=6, B=64, D=32, H=256, dtype=np.float32, seed=2)

    def calls():
        y = rnncore.dense.affine_forward(x, W, b)
        dx, dW, db = rnncore.dense.affine_backward(dy, x, W)
        loss, probs = rnncore.softmax_cross_entropy(y, t)
        return {"y": y, "dx": dx, "dW": dW, "db": db, "loss": np.float64(loss), "probs": probs,
                **_run("lstm", {}, case)}

    with rnncore.num_threads(1):
        one = calls()
    core = rnncore._native.core
    core.team_set_adaptive(False)
    core.team_set_spin(0, 0)
    try:
        with rnncore.num_threads(2):
            before = rnncore.threads.team_stats()
            runs = [calls() for _ in range(40)]
            after = rnncore.threads.team_stats()
    finally:
        core.team_set_spin(50, 2000)
        core.team_set_adaptive(True)
    assert after["regions"] - before["regions"] >= 40 * 4  # each call of the round ran on the team
    for got in runs:
        _assert_equal(got, one)


def test_brisk_small_gemms_give_the_same_bits():
    """The textbook SimpleRnnlm's output layer (50 x 100 x 418), called back to back: while calls
    come that briskly the workers stay awake and the GEMMs split over the threads (unless the
    cores are far apart); whichever way each call ran, the bits are one thread's."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((10, 5, 100)).astype(np.float32)
    W = (rng.standard_normal((100, 418)) / 10).astype(np.float32)
    b = rng.standard_normal(418).astype(np.float32)
    dy = rng.standard_normal((10, 5, 418)).astype(np.float32)

    def calls():
        y = rnncore.dense.affine_forward(x, W, b)
        dx, dW, db = rnncore.dense.affine_backward(dy, x, W)
        return {"y": y, "dx": dx, "dW": dW, "db": db}

    with rnncore.num_threads(1):
        one = calls()
    with rnncore.num_threads(2):
        runs = [calls() for _ in range(200)]
    for got in runs:
        _assert_equal(got, one)


# -- the cores: taken by other work, visited, near or far -----------------------------------------

def _other_processes_busy(seconds):
    """Cores that other processes kept busy over the next ``seconds`` (/proc/stat's busy time
    of this process's CPUs less its own CPU time), as the team's meter reads it."""
    mine = os.sched_getaffinity(0)

    def busy():
        total = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *v = line.split()
                if name.startswith("cpu") and name != "cpu" and int(name[3:]) in mine:
                    total += sum(int(v[i]) for i in (0, 1, 2, 5, 6))
        return total / os.sysconf("SC_CLK_TCK")

    b0, s0, t0 = busy(), time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return max(0.0, (busy() - b0) - (time.process_time() - s0)) / (time.perf_counter() - t0)


def _long_lstm_case():
    return _case("lstm", T=100, B=32, D=64, H=256, dtype=np.float32, seed=5, lengths=False)[:2]


@contextlib.contextmanager
def _own_team():
    """rnncore's own workers for the block (rnncore.torch's layers borrow torch's OpenMP team,
    whose threads count as the team's own whether they run or not)."""
    core = rnncore._native.core
    borrowing = core.team_borrowing()
    if borrowing:
        from rnncore import torch as rtorch

        rtorch.share_threads(False)
    try:
        yield
    finally:
        if borrowing:
            rtorch.share_threads(True)


def test_cores_far_apart_keep_small_steps_on_one_thread():
    """While the team's cores count as far apart (a host that moved the vCPUs to cores that
    share no cache: every step's meeting of the threads costs microseconds more), a time loop of
    small steps (GRU B 1, H 128: 49K multiply-adds a thread a step) stays on the caller; near,
    it takes the team. A loop whose weights fit half of L2 is cut by rows when far (LSTM B 8,
    H 128). The bits are the same every way."""
    core = rnncore._native.core
    small = _case("gru", T=100, B=1, D=128, H=128, dtype=np.float32, seed=3, lengths=False)
    rows = _case("lstm", T=30, B=8, D=128, H=128, dtype=np.float32, seed=4)
    with rnncore.num_threads(1):
        want = (_run("gru", {}, small), _run("lstm", {}, rows))
    regions = {}
    core.team_set_adaptive(False)
    try:
        with _own_team(), rnncore.num_threads(2):
            for far in (0, 1):
                core.team_set_far(far)
                assert core.team_far() == bool(far)
                before = rnncore.threads.team_stats()["regions"]
                x, (wx, wh, b_ih, b_hh) = small[:2]
                rnncore.gru_forward(x, wx, wh, b_ih, b_hh, inference=True)
                regions[far] = rnncore.threads.team_stats()["regions"] - before
                _assert_equal(_run("gru", {}, small), want[0], f"far={far}: ")
                _assert_equal(_run("lstm", {}, rows), want[1], f"far={far}: ")
    finally:
        core.team_set_far(0)  # as conftest.cores_near keeps it
        core.team_set_adaptive(True)
    assert regions[0] >= 1 and regions[1] == 0


def test_cores_measured_near_or_far():
    """Left to measure (the default outside the tests), the team says near or far from the
    handoffs it saw, and a call gives one thread's bits either way."""
    core = rnncore._native.core
    case = _case("lstm", T=30, B=8, D=128, H=128, dtype=np.float32, seed=4)
    with rnncore.num_threads(1):
        want = _run("lstm", {}, case)
    core.team_set_far(-1)
    try:
        with rnncore.num_threads(2):
            for _ in range(5):
                _assert_equal(_run("lstm", {}, case), want)
            assert core.team_far() in (True, False)
    finally:
        core.team_set_far(0)


def test_a_long_call_that_finds_the_cores_taken_runs_on_the_caller():
    """A long region starting while another process spins on a core the team would use (or
    another runtime's pool after its last op) runs on the calling thread alone, with the same
    bits; with the team's adaptivity off it takes the team."""
    import subprocess
    import sys

    cpus = len(os.sched_getaffinity(0))
    if not 2 <= cpus <= 8:
        pytest.skip("needs 2-8 CPUs, so that one busy process takes a core the team would use")
    core = rnncore._native.core
    x, (wx, wh, b_ih, b_hh) = _long_lstm_case()
    out = {}
    with _own_team(), rnncore.num_threads(cpus):
        core.team_set_adaptive(False)
        try:
            before = rnncore.threads.team_stats()
            out["team"] = rnncore.lstm_forward(x, wx, wh, b_ih, b_hh)[0]
            on_team = rnncore.threads.team_stats()["regions"] - before["regions"]
            assert on_team > 0
        finally:
            core.team_set_adaptive(True)
        busy = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
        try:
            time.sleep(0.3)  # started and runnable
            before = rnncore.threads.team_stats()
            out["alone"] = rnncore.lstm_forward(x, wx, wh, b_ih, b_hh)[0]
            after = rnncore.threads.team_stats()
        finally:
            busy.kill()
            busy.wait()
    assert after["inline_contended"] > before["inline_contended"]
    # the time loop went to the caller. The call's one other region, the finiteness scan of wh
    # (256K elements, a short bulk region, never looked at first), comes before it: it takes the
    # team unless a backoff already holds, and then the loop runs on the caller too; so fewer
    # regions than with adaptivity off means exactly that the loop ran on the caller
    assert on_team == 2
    assert after["regions"] - before["regions"] < on_team
    np.testing.assert_array_equal(out["alone"], out["team"])


def test_short_visits_of_another_process_leave_long_calls_on_the_team():
    """A process that holds a core for 3 ms every 20 ms (as the kernel's and a sandbox's own
    threads do on an idle VM) is not a busy one: long calls keep the team. (Looking only at
    the runnable threads when a call starts, some of these calls went to the caller alone for
    a tenth of a second each.)"""
    import subprocess
    import sys

    cpus = len(os.sched_getaffinity(0))
    if not 2 <= cpus <= 8:
        pytest.skip("needs 2-8 CPUs, so that the visitor lands on a core the team uses")
    if _other_processes_busy(0.3) > 0.2:
        pytest.skip("other processes keep the machine busy: the team would rightly leave it")
    x, (wx, wh, b_ih, b_hh) = _long_lstm_case()
    visitor = subprocess.Popen([sys.executable, "-c", (
        "import time\n"
        "while 1:\n"
        "    t = time.perf_counter()\n"
        "    while time.perf_counter() - t < 0.003: pass\n"
        "    time.sleep(0.017)\n")])
    try:
        with _own_team(), rnncore.num_threads(cpus):
            deadline = time.perf_counter() + 0.3  # the team's view of the load fills first
            while time.perf_counter() < deadline:
                rnncore.lstm_forward(x, wx, wh, b_ih, b_hh, inference=True)
            before = rnncore.threads.team_stats()
            for _ in range(40):
                rnncore.lstm_forward(x, wx, wh, b_ih, b_hh, inference=True)
            after = rnncore.threads.team_stats()
    finally:
        visitor.kill()
        visitor.wait()
    assert after["regions"] - before["regions"] >= 40
    assert after["inline_contended"] == before["inline_contended"]


def test_a_spinning_pool_of_this_process_sends_long_calls_to_the_caller():
    """Another pool of this process that keeps a core busy (here a Python thread in a loop of
    large memsets, which run without the GIL) holds that core as a busy process would: the
    long call runs on the calling thread alone, with the same bits."""
    import ctypes

    cpus = len(os.sched_getaffinity(0))
    if not 2 <= cpus <= 8:
        pytest.skip("needs 2-8 CPUs, so that the spinning thread takes a core the team would use")
    core = rnncore._native.core
    x, (wx, wh, b_ih, b_hh) = _long_lstm_case()
    with _own_team(), rnncore.num_threads(cpus):
        core.team_set_adaptive(False)
        try:
            team = rnncore.lstm_forward(x, wx, wh, b_ih, b_hh)[0]
        finally:
            core.team_set_adaptive(True)
        buf = ctypes.create_string_buffer(64 << 20)
        stop = threading.Event()

        def spin():
            while not stop.is_set():
                ctypes.memset(buf, 0, len(buf))

        spinner = threading.Thread(target=spin)
        spinner.start()
        try:
            time.sleep(0.1)
            before = rnncore.threads.team_stats()
            alone = rnncore.lstm_forward(x, wx, wh, b_ih, b_hh)[0]
            after = rnncore.threads.team_stats()
        finally:
            stop.set()
            spinner.join()
    assert after["inline_contended"] > before["inline_contended"]
    np.testing.assert_array_equal(alone, team)


# -- several Python threads at once ---------------------------------------------------------------

def test_a_call_of_a_few_tiny_steps_stays_on_the_caller():
    """The textbook's SimpleRnnlm call (T 5, B 10, H 100): waking a worker would cost more than
    the whole call; a long sequence of the same steps opens the team."""
    core = rnncore._native.core
    core.team_set_adaptive(False)
    try:
        with rnncore.num_threads(2):
            small = _case("rnn", T=5, B=10, D=100, H=100, dtype=np.float32, seed=1)
            before = rnncore.threads.team_stats()["regions"]
            rnncore.rnn_forward(small[0], *small[1][:3])
            assert rnncore.threads.team_stats()["regions"] == before
            long = _case("rnn", T=400, B=10, D=100, H=100, dtype=np.float32, seed=1)
            rnncore.rnn_forward(long[0], *long[1][:3])
            assert rnncore.threads.team_stats()["regions"] > before
    finally:
        core.team_set_adaptive(True)


def test_concurrent_python_threads_match_serial():
    jobs = []
    for i, (cid, cell, kw) in enumerate(CELLS * 2):
        dtype = np.float32 if i % 2 else np.float64
        jobs.append((cell, kw, _case(cell, T=25, B=16, D=12, H=48, dtype=dtype, seed=100 + i)))
    serial = [_run(cell, kw, case) for cell, kw, case in jobs]
    for _ in range(2):
        with ThreadPoolExecutor(max_workers=4) as pool:
            concurrent = list(pool.map(lambda j: _run(*j), jobs))
        for s, c in zip(serial, concurrent):
            _assert_equal(c, s, "concurrent: ")


def test_backend_choice_is_per_thread():
    """use_backend affects this thread's block only; another thread sees the process default."""
    with rnncore.use_backend("numpy"):
        assert rnncore.get_backend() == "numpy"
        with ThreadPoolExecutor(max_workers=1) as pool:
            assert pool.submit(rnncore.get_backend).result() == "native"

            def nested():  # a block in another thread, nested, while this one is open
                with rnncore.use_backend("numpy"):
                    with rnncore.use_backend("native"):
                        inner = rnncore.get_backend()
                    return inner, rnncore.get_backend()
            assert pool.submit(nested).result() == ("native", "numpy")
            assert pool.submit(rnncore.get_backend).result() == "native"
        assert rnncore.get_backend() == "numpy"  # the other thread's blocks closed, this one is open
    assert rnncore.get_backend() == "native"


def test_gil_released_during_native_call():
    """While a long native call runs in a worker thread, the main thread keeps running Python.

    The worker stamps the time right before and right after the call; were the GIL held
    throughout the call, no main-thread tick could fall in its middle half (the interpreter
    hands the GIL over every few ms only between bytecodes, i.e. near the stamps).
    """
    def inputs(T):
        x, (wx, wh, b_ih, b_hh), h0, c0 = _case("lstm", T=T, B=32, D=32, H=128, dtype=np.float64, seed=7,
                                                lengths=False)[:4]
        return x, wx, wh, b_ih, b_hh, h0, c0

    with rnncore.num_threads(1):  # size the call to last ~0.2 s on this machine
        start = time.perf_counter()
        rnncore.lstm_forward(*inputs(50))
        T = int(min(5000, max(50, 50 * 0.2 / (time.perf_counter() - start))))
    args = inputs(T)
    span = []
    done = threading.Event()

    def work():
        try:
            t0 = time.perf_counter()
            rnncore.lstm_forward(*args)
            span.extend([t0, time.perf_counter()])
        finally:
            done.set()

    ticks = []
    with rnncore.num_threads(1):
        worker = threading.Thread(target=work)
        worker.start()
        while not done.is_set():
            ticks.append(time.perf_counter())
            sum(range(200))  # pure Python: needs the GIL
        worker.join()
    t0, t1 = span
    q = (t1 - t0) / 4
    inside = sum(t0 + q < t < t1 - q for t in ticks)
    assert t1 - t0 > 0.05, "call too short to tell"
    assert inside > 10, f"main thread ran {inside} Python iterations during a {t1 - t0:.3f} s native call"


# -- one pool during a training step --------------------------------------------------------------

_STEP_PROBE = r'''
import json, os, threading
import numpy as np, threadpoolctl
from rnncore.models import LanguageModel
from rnncore.optim import Adam, clip_grads

def cpu_ticks():
    """{tid: (name, utime + stime)} of this process's threads."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        out[int(tid)] = (name, int(fields[11]) + int(fields[12]))
    return out

def foreign(before, after):
    """CPU ticks spent by threads that are neither this (main) thread nor rnncore's team."""
    me = threading.get_native_id()
    return sum(t - before.get(tid, ("", 0))[1] for tid, (name, t) in after.items()
               if tid != me and name != "rnncore-team")

threadpoolctl.threadpool_limits(2, user_api="blas")  # NumPy's pool would wake for any matmul
from rnncore import _native
_native.core.team_set_adaptive(False)  # the team runs even when other processes hold the cores now
model, opt = LanguageModel(96, 256, cell=os.environ["CELL"]), Adam(lr=1e-3)
rng = np.random.default_rng(0)
xs, ts = rng.integers(0, 96, (32, 64)), rng.integers(0, 96, (32, 64))
for i in range(40):
    if i == 5:
        a = cpu_ticks()
    model.loss(xs, ts); model.backward(); clip_grads(model.grads, 5.0); opt.update(model.params, model.grads)
b = cpu_ticks()
x = rng.standard_normal((1200, 1200))
for _ in range(8):
    x @ x  # the control: NumPy's own BLAS threads
c = cpu_ticks()
names = sorted({n for n, _ in c.values()})
print(json.dumps({"step": foreign(a, b), "control": foreign(b, c), "team": "rnncore-team" in names}))
'''


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="needs Linux /proc and two CPUs")
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_training_step_wakes_no_other_pool(cell):
    """35 training steps of the default model spend no CPU in any thread but the caller and
    rnncore's team (NumPy's BLAS pool, held at 2 threads, stays asleep), while NumPy matmuls
    in the same process do wake that pool (the control, so the probe can fail)."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, CELL=cell)
    out = subprocess.run([sys.executable, "-c", _STEP_PROBE], capture_output=True, text=True, env=env, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["team"], r
    assert r["step"] == 0, r
    assert r["control"] > 0, r


_QUIET_PROBE = r'''
import json, os, threading
import numpy as np
import rnncore
from rnncore.threads import set_quiet_other_pools

def nthreads():
    return len(os.listdir("/proc/self/task"))

rng = np.random.default_rng(0)
a = rng.standard_normal((600, 600))
ref = a @ a
x = rng.standard_normal((5, 4, 3)); wx = rng.standard_normal((3, 8)); wh = rng.standard_normal((8, 8)); b = np.zeros(8)
out = {}
a @ a  # NumPy's pool is up and spinning
before = nthreads()
rnncore.rnn_forward(x, wx, wh, b)
out["after_call"] = before - nthreads()  # NumPy's idle workers were stopped
out["numpy_ok"] = bool(np.array_equal(a @ a, ref))  # ... and come back for NumPy's next matmul
out["restarted"] = nthreads() - (before - out["after_call"])
t = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
t.start()  # with a second Python thread, NumPy's pool is left alone
n = nthreads()
rnncore.rnn_forward(x, wx, wh, b)
out["with_thread"] = n - nthreads()
print(json.dumps(out))
'''


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
                    reason="needs Linux /proc and two CPUs")
def test_other_openblas_pools_are_quieted_safely():
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _QUIET_PROBE], capture_output=True, text=True, env=env, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["after_call"] >= 1, r
    assert r["numpy_ok"] and r["restarted"] >= 1, r
    assert r["with_thread"] == 0, r


@contextlib.contextmanager
def _time_loop_settings(sleep=False):
    """The team forced to run (no falling back to the caller while the machine is busy), its
    workers sleeping at every wait when ``sleep`` (3 threads on 2 cores); afterwards the time
    loops' split and balance settings and the team back to their defaults. Yields the core."""
    core = rnncore._native.core
    core.team_set_adaptive(False)
    if sleep:
        core.team_set_spin(0, 0)
    try:
        yield core
    finally:
        core.set_step_split(0)
        core.set_step_balance(0)
        if sleep:
            core.team_set_spin(50, 2000)
        core.team_set_adaptive(True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_unit_blocks_moved_between_threads_keep_the_bits(cid, cell, kw, batch_first, dtype):
    """A unit split moves unit blocks between its threads as their speeds differ (driver.h:
    Balance). Forced to another split at every interval (all spare blocks on one thread, the
    next interval on another: step_balance 2), and kept fixed (1), on 2 and 3 threads, with
    sequence lengths: one thread's bits, forward (T 70: intervals of whole chunks) and backward
    (every 16 steps), H 150 (5 unit blocks in float32, 10 in float64)."""
    case = _case(cell, T=70, B=9, D=24, H=150, dtype=dtype, seed=11 + len(cid), batch_first=batch_first)
    kw = {**kw, "batch_first": batch_first}
    core = rnncore._native.core
    assert core.step_balance() == 0  # the default: timed
    # other numbers of the same sizes, run before each call: the memory a call's outputs come
    # from (reused from the last call's) then holds those, never this case's, wherever a moved
    # block would miss a write
    other = _case(cell, T=70, B=9, D=24, H=150, dtype=dtype, seed=12 + len(cid), batch_first=batch_first)
    with rnncore.num_threads(1):
        one = _run(cell, kw, case)
    with _time_loop_settings(sleep=True):  # 3 threads on 2 cores: sleep at every wait
        core.set_step_split(1)
        for mode in (2, 1, 0):
            core.set_step_balance(mode)
            for n in (2, 3):
                with rnncore.num_threads(n):
                    _run(cell, kw, other)
                    _assert_equal(_run(cell, kw, case), one, f"balance {mode}, {n} threads: ")


@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_row_and_unit_splits_of_the_time_loop_give_the_same_bits(cid, cell, kw, batch_first):
    """The time loop splits a step among its threads by hidden units (barriers between the
    phases) or by batch rows (no barrier; driver.h, split_rows). Both, forced on 2 and 3 threads
    with workers that sleep at every wait, with a batch two threads share unevenly (9 rows), and
    sequence lengths: one thread's bits, forward and backward."""
    case = _case(cell, T=64, B=9, D=32, H=128, dtype=np.float64, seed=7 + len(cid), batch_first=batch_first)
    kw = {**kw, "batch_first": batch_first}
    core = rnncore._native.core
    assert core.step_split() == 0  # the default: chosen from the sizes
    with rnncore.num_threads(1):
        one = _run(cell, kw, case)
    with _time_loop_settings(sleep=True):
        for mode in (1, 2):
            core.set_step_split(mode)
            for n in (2, 3):
                with rnncore.num_threads(n):
                    before = rnncore.threads.team_stats()["regions"]
                    _assert_equal(_run(cell, kw, case), one, f"split {mode}, {n} threads: ")
                    assert rnncore.threads.team_stats()["regions"] >= before + 2  # both loops on a team


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["tm", "bf"])
@pytest.mark.parametrize("cid,cell,kw", CELLS, ids=CELL_IDS)
def test_rows_moved_between_threads_keep_the_bits(cid, cell, kw, batch_first, dtype):
    """A row split's thread that has finished its rows takes half the rows of the group with
    the most work left, from that group's next step on (driver.h: RowSteal). Forced (step_balance
    2: all rows in one group, which the other threads must take rows from, down to one row and
    one step), timed (0) and never (1), on 2 and 3 threads, with sequence lengths, mid-chunk
    and at chunk starts: one thread's bits, forward and backward, and rows did move. Another case of the same sizes
    runs before each call, so that outputs a moved row failed to write would hold its numbers."""
    case = _case(cell, T=64, B=9, D=32, H=128, dtype=dtype, seed=21 + len(cid), batch_first=batch_first)
    other = _case(cell, T=64, B=9, D=32, H=128, dtype=dtype, seed=22 + len(cid), batch_first=batch_first)
    kw = {**kw, "batch_first": batch_first}
    with rnncore.num_threads(1):
        one = _run(cell, kw, case)
    with _time_loop_settings() as core:  # workers that spin: they come in time to take rows
        core.set_step_split(2)
        for mode in (2, 0, 1):
            core.set_step_balance(mode)
            for n in (2, 3):
                with rnncore.num_threads(n):
                    before = core.row_moves()
                    for rep in range(20):  # until a move was seen: a worker may come late
                        _run(cell, kw, other)
                        _assert_equal(_run(cell, kw, case), one, f"balance {mode}, {n} threads: ")
                        if mode != 2 or core.row_moves() > before:
                            break
                    if mode == 2:
                        assert core.row_moves() > before
                    elif mode == 1:
                        assert core.row_moves() == before
