"""Data-parallel ``rnncore train`` on real MPI processes (``mpiexec``, 2 to 4 ranks on this machine).

A small model and a few steps, against the one-process run of the same global batch: the losses
and validation perplexities agree to float rounding, every rank ends with the same weights, a
rank that raises ends the job within seconds naming itself, and a killed job resumes (on the same
or another number of ranks) with exactly the steps of an uninterrupted run. Skipped where mpi4py
or mpiexec is missing. Every launch has a timeout, so a hang fails instead of blocking.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import rnncore
from rnncore.cli import main
from rnncore.distributed import mpiexec_command
from rnncore.models import LanguageModel

_why = None
if importlib.util.find_spec("mpi4py") is None:
    _why = "mpi4py is not installed (pip install 'rnncore[mpi]')"
elif shutil.which("mpiexec", path=os.path.dirname(sys.executable)) is None and shutil.which("mpiexec") is None:
    _why = "no mpiexec next to the Python executable or on PATH"
pytestmark = pytest.mark.skipif(_why is not None, reason=_why or "")


WORKER = str(Path(__file__).with_name("mpi_worker.py"))
PKG_PARENT = str(Path(rnncore.__file__).resolve().parent.parent)
# batch 6: 3 + 3 streams on 2 ranks, 2 + 2 + 1 + 1 on 4 (uneven); 2 layers with dropout between and after
TINY = ["--hidden", "16", "--embed", "8", "--layers", "2", "--dropout", "0.3", "--batch", "6", "--seq-len", "12",
        "--max-chars", "20000", "--eval-every", "4", "--sample-every", "100", "--no-progress", "--seed", "3"]
STEPS = ["--steps", "10"]
RESUME = [*STEPS, "--eval-every", "4", "--no-progress"]  # the schedule options a resume takes from its command
TIMEOUT = 120


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_PARENT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("RNNCORE_MPI", None)
    return env


def _mpiexec(n, *args, timeout=TIMEOUT):
    """Run ``mpiexec -n n python ARGS``; (returncode, stdout, stderr, seconds). A hang is killed
    (the whole process group) and fails the test."""
    cmd = [*mpiexec_command(n), sys.executable, *args]
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{' '.join(cmd)} hung for {timeout} s\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}")
    return p.returncode, out, err, time.time() - t0


def _ok(n, *args):
    rc, out, err, _ = _mpiexec(n, *args)
    assert rc == 0, f"exit {rc}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    return out


def _worker(n, mode, out_dir, *extra):
    out = _ok(n, WORKER, mode, *TINY, *STEPS, "--out", str(out_dir), *extra)
    line = [s for s in out.splitlines() if s.startswith("WORKER ")]
    assert line, out
    return json.loads(line[-1][len("WORKER "):])


def _metrics(out_dir):
    return [json.loads(s) for s in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def _close(a, b, rtol):
    """Same steps, validation steps and, to ``rtol``, losses and perplexities."""
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [("val_ppl" in r) for r in a] == [("val_ppl" in r) for r in b]
    la, lb = np.array([r["loss"] for r in a]), np.array([r["loss"] for r in b])
    np.testing.assert_allclose(lb, la, rtol=rtol, atol=0)
    va = np.array([r["val_ppl"] for r in a if "val_ppl" in r])
    vb = np.array([r["val_ppl"] for r in b if "val_ppl" in r])
    np.testing.assert_allclose(vb, va, rtol=rtol, atol=0)


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    """The one-process runs (no MPI), float64 and float32."""
    runs = {}
    for dtype in ("float64", "float32"):
        out = tmp_path_factory.mktemp(f"one-{dtype}")
        assert main(["train", *TINY, *STEPS, "--dtype", dtype, "--threads", "1", "--out", str(out)]) == 0
        runs[dtype] = out
    return runs


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """``mpiexec -n 2 python -m rnncore train`` (the command line), float64."""
    out = tmp_path_factory.mktemp("two")
    _ok(2, "-m", "rnncore", "train", *TINY, *STEPS, "--dtype", "float64", "--out", str(out))
    return out


def test_one_process_writes_metrics(one):
    recs = _metrics(one["float64"])
    assert [r["step"] for r in recs] == list(range(1, 11))
    assert all(isinstance(r["loss"], float) and r["seconds"] > 0 and "ranks" not in r for r in recs)
    assert [r["step"] for r in recs if "val_ppl" in r] == [4, 8, 10]
    meta = LanguageModel.load(one["float64"] / "model.npz").checkpoint["meta"]
    assert [r["loss"] for r in recs] == meta["losses"]
    assert [[r["step"], r["val_ppl"]] for r in recs if "val_ppl" in r] == meta["val_history"]


def test_two_ranks_command_line_match_one_process(one, two):
    recs = _metrics(two)
    assert all(r["ranks"] == 2 and r["allreduce_seconds"] >= 0 for r in recs)
    _close(_metrics(one["float64"]), recs, rtol=1e-10)
    a = LanguageModel.load(one["float64"] / "model.npz")
    b = LanguageModel.load(two / "model.npz")
    for name, p, q in zip(a.param_names, a.params, b.params):
        np.testing.assert_allclose(q, p, rtol=1e-9, atol=1e-12, err_msg=name)
    state_a, state_b = a.checkpoint["state.h"], b.checkpoint["state.h"]  # every stream's state, gathered
    assert state_b.shape == state_a.shape == (2, 6, 16)
    np.testing.assert_allclose(state_b, state_a, rtol=1e-9, atol=1e-12)
    assert b.checkpoint["meta"]["rng"] == a.checkpoint["meta"]["rng"]  # dropout generators in step


def test_four_ranks_uneven_split_same_run_and_same_weights_on_every_rank(one, tmp_path):
    res = _worker(4, "train", tmp_path / "four", "--dtype", "float64")
    assert res["ranks"] == 4 and res["steps"] == 10
    assert len(set(res["digests"])) == 1, "the ranks' weights differ after training"
    _close(_metrics(one["float64"]), _metrics(tmp_path / "four"), rtol=1e-10)


def test_two_ranks_float32_match_to_float32_rounding(one, tmp_path):
    res = _worker(2, "train", tmp_path / "f32", "--dtype", "float32")
    assert len(set(res["digests"])) == 1
    _close(_metrics(one["float32"]), _metrics(tmp_path / "f32"), rtol=2e-5)


def test_a_rank_that_raises_ends_the_job_quickly_with_its_rank_and_error(tmp_path):
    rc, out, err, _ = _mpiexec(2, WORKER, "fail", *TINY, "--steps", "500", "--out", str(tmp_path / "f"), timeout=60)
    ended = time.time()
    assert rc != 0
    assert "rank 1 of 2" in err and "RuntimeError: injected failure" in err, err
    raised = float(next(s.split()[1] for s in err.splitlines() if s.startswith("RAISING ")))
    assert ended - raised < 5.0, f"the job took {ended - raised:.1f} s to end after the raise"


def test_killed_job_resumes_exactly_on_the_same_and_other_numbers_of_ranks(one, two, tmp_path):
    killed = tmp_path / "killed"
    rc, out, err, _ = _mpiexec(2, WORKER, "kill", *TINY, *STEPS, "--dtype", "float64", "--out", str(killed))
    assert rc != 0, "rank 1 was to kill itself in step 7"
    ck = LanguageModel.load(killed / "model.npz").checkpoint["meta"]
    assert ck["step"] == 4 and ck["ranks"] == 2
    before = _metrics(killed)
    assert [r["step"] for r in before][:5] == [1, 2, 3, 4, 5]  # steps past the checkpoint, to be dropped
    copies = {n: tmp_path / f"resume-{n}" for n in (1, 3)}
    for d in copies.values():
        shutil.copytree(killed, d)

    _ok(2, "-m", "rnncore", "train", "--resume", str(killed / "model.npz"), *RESUME)
    after = _metrics(killed)
    assert [r["step"] for r in after] == list(range(1, 11))  # none lost, none repeated
    full = _metrics(two)
    assert [(r["step"], r["loss"], r.get("val_ppl")) for r in after] == \
           [(r["step"], r["loss"], r.get("val_ppl")) for r in full]  # same ranks: the same bits

    _ok(3, "-m", "rnncore", "train", "--resume", str(copies[3] / "model.npz"), *RESUME)
    _close(full, _metrics(copies[3]), rtol=1e-10)
    assert all(r["ranks"] == 3 for r in _metrics(copies[3])[4:])
    assert main(["train", "--resume", str(copies[1] / "model.npz"), *RESUME, "--threads", "1"]) == 0
    _close(_metrics(one["float64"]), _metrics(copies[1]), rtol=1e-10)


def test_batch_smaller_than_the_ranks_is_an_error(tmp_path):
    rc, out, err, seconds = _mpiexec(2, "-m", "rnncore", "train", *TINY, "--batch", "1", "--steps", "2",
                                     "--out", str(tmp_path / "b"), timeout=60)
    assert rc != 0
    assert "batch must be at least the number of MPI ranks (2)" in err, err
    assert "Traceback" not in err


def test_ctrl_c_stops_every_rank_after_the_same_step_with_a_checkpoint(two, tmp_path):
    out = tmp_path / "int"
    cmd = [*mpiexec_command(2), sys.executable, "-m", "rnncore", "train", *TINY, "--dtype", "float64",
           "--steps", "1000000", "--eval-every", "1000000", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                         start_new_session=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (
                (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 12):
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)  # what Ctrl-C does to mpiexec: it passes SIGINT on to every rank
        stdout, stderr = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        stdout, stderr = p.communicate()
        pytest.fail(f"no clean stop after Ctrl-C\nstdout:\n{stdout[-2000:]}\nstderr:\n{stderr[-2000:]}")
    assert p.returncode == 130, stderr
    recs = _metrics(out)
    step = LanguageModel.load(out / "model.npz").checkpoint["meta"]["step"]
    assert step == len(recs) >= 12 and [r["step"] for r in recs] == list(range(1, step + 1))
    assert f"interrupted after step {step}; checkpoint saved" in stdout
    assert [r["loss"] for r in recs[:10]] == [r["loss"] for r in _metrics(two)]


def test_ranks_whose_weights_drift_apart_are_caught_at_the_next_validation(tmp_path):
    rc, out, err, _ = _mpiexec(2, WORKER, "drift", *TINY, *STEPS, "--dtype", "float64", "--out", str(tmp_path / "d"),
                               timeout=60)
    assert rc != 0
    assert "after step 4 the weights or optimizer state of rank(s) [1] differ from rank 0's" in err, err
    assert not (tmp_path / "d" / "model.npz").exists()  # no checkpoint of a split run
