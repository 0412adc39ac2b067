"""rnncore.distributed without MPI: gradient averaging over a fake communicator (ranks as threads),
the batch split, the sharded dropout generator, the flat gradient buffer, launcher detection,
abort_on_error; and metrics.jsonl of a one-process run, also across a killed run and its resume.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from rnncore import distributed as dist
from rnncore.cli import main
from rnncore.models import LanguageModel


class FakeWorld:
    """``size`` ranks run as threads; ``comm(r)`` is rank r's communicator (sum Allreduce only)."""

    def __init__(self, size):
        self.size = size
        self.slots = [None] * size
        self.barrier = threading.Barrier(size)
        self.aborted = []

    def comm(self, rank):
        world = self

        class Comm:
            def Get_rank(self):
                return rank

            def Get_size(self):
                return world.size

            def Allreduce(self, sendbuf, recvbuf):
                world.slots[rank] = np.array(sendbuf)
                world.barrier.wait()
                total = world.slots[0].copy()
                for s in world.slots[1:]:
                    total += s
                world.barrier.wait()
                recvbuf[...] = total

            def Abort(self, code):
                world.aborted.append((rank, code))

        return Comm()

    def run(self, fn):
        """fn(rank, comm) on every rank at once; the results in rank order."""
        out, errors = [None] * self.size, []

        def body(r):
            try:
                out[r] = fn(r, self.comm(r))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)
                self.barrier.abort()

        threads = [threading.Thread(target=body, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        if errors:
            raise errors[0]
        return out


def test_allreduce_grads_averages_in_place_and_every_rank_agrees(rng):
    grads = [[rng.standard_normal((3, 4)), rng.standard_normal(5)] for _ in range(3)]
    expect = [np.mean([g[i] for g in grads], axis=0) for i in range(2)]
    mine = [[g.copy() for g in gs] for gs in grads]
    totals = FakeWorld(3).run(lambda r, comm: dist.allreduce_grads(mine[r], comm))
    assert totals == [3.0] * 3
    for r in range(3):
        for got, want in zip(mine[r], expect):
            np.testing.assert_allclose(got, want, rtol=1e-14)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(mine[r], mine[0]))


def test_allreduce_grads_reduces_a_shared_gradient_once(rng):
    g = [rng.standard_normal(4) for _ in range(2)]
    want = (g[0] + g[1]) / 2
    lists = [[g[r], g[r]] for r in range(2)]  # the same array twice (a tied weight)
    FakeWorld(2).run(lambda r, comm: dist.allreduce_grads(lists[r], comm))
    np.testing.assert_allclose(g[0], want, rtol=1e-14)


def test_weighted_average_is_the_gradient_of_the_global_batch_mean_loss():
    """Uneven shares of the streams and ignored targets: the token-weighted average of the ranks'
    gradients equals the one-process gradient of the mean loss over the whole batch."""
    model = LanguageModel(11, 8, embed_size=4, cell="gru", dtype=np.float64, seed=2)
    r = np.random.default_rng(0)
    xs = r.integers(0, 11, (7, 5))
    ts = r.integers(0, 11, (7, 5))
    ts[1, :3] = -1  # ignored positions, only in rank 0's rows
    ts[5, 1] = -1
    model.loss(xs, ts)
    model.backward()
    full = [g.copy() for g in model.grads]
    parts = [(0, 3), (3, 5), (5, 7)]
    local, weights = [], []
    for lo, hi in parts:
        model.reset_state()
        model.loss(xs[lo:hi], ts[lo:hi])
        model.backward()
        local.append([g.copy() for g in model.grads])
        weights.append(int(np.count_nonzero(ts[lo:hi] != -1)))
    totals = FakeWorld(3).run(lambda rank, comm: dist.allreduce_grads(local[rank], comm, weight=weights[rank]))
    assert totals == [float(np.count_nonzero(ts != -1))] * 3
    for name, got, want in zip(model.param_names, local[1], full):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-15, err_msg=name)


def test_allreduce_grads_one_process_and_bad_input(rng):
    g = [rng.standard_normal(3)]
    before = g[0].copy()
    assert dist.allreduce_grads(g, None) == 1.0
    assert dist.allreduce_grads(g, None, weight=7) == 7.0
    np.testing.assert_array_equal(g[0], before)
    with pytest.raises(TypeError, match="grads\\[1\\]"):
        dist.allreduce_grads([g[0], [1.0, 2.0]], None)
    with pytest.raises(TypeError, match="floating-point"):
        dist.allreduce_grads([np.arange(3)], None)
    with pytest.raises(TypeError, match="one dtype"):
        dist.allreduce_grads([g[0], g[0].astype(np.float32)], None)
    with pytest.raises(ValueError, match="weight"):
        dist.allreduce_grads(g, None, weight=-1)
    with pytest.raises(TypeError, match="comm"):
        dist.allreduce_grads(g, object())


def test_shard_range_covers_the_batch_in_contiguous_blocks():
    for total in (1, 5, 6, 13):
        for size in range(1, total + 1):
            blocks = [dist.shard_range(total, r, size) for r in range(size)]
            assert blocks[0][0] == 0 and blocks[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
            sizes = [hi - lo for lo, hi in blocks]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="3 rows cannot be split over 4"):
        dist.shard_range(3, 0, 4)
    with pytest.raises(ValueError, match="rank"):
        dist.shard_range(4, 2, 2)


@pytest.mark.parametrize("bitgen", [np.random.PCG64, np.random.MT19937])
def test_shard_generator_gives_the_rows_of_the_global_draw(bitgen):
    total, shape = 7, (5, 3)
    full = np.random.Generator(bitgen(9))
    want = [full.random((total, *shape)) for _ in range(2)]
    then = full.random(6)  # what comes after the two global draws
    for lo, hi in [(0, 3), (3, 5), (5, 7), (0, 7)]:
        base = np.random.Generator(bitgen(9))
        g = dist.shard_generator(base, lo, hi, total)
        for w in want:
            np.testing.assert_array_equal(g.random((hi - lo, *shape)), w[lo:hi])
        assert g.bit_generator is base.bit_generator
        np.testing.assert_array_equal(base.random(6), then)  # in step with the global draws
        assert np.random.default_rng(g) is g  # layers take it as their generator
    g = dist.shard_generator(np.random.Generator(bitgen(9)), 1, 3, total)
    np.testing.assert_array_equal(g.random(4), np.random.Generator(bitgen(9)).random(4))  # other shapes: as is
    with pytest.raises(ValueError, match="lo"):
        dist.shard_generator(np.random.default_rng(), 3, 3, 5)
    with pytest.raises(TypeError, match="rng"):
        dist.shard_generator(3, 0, 1, 2)


def test_flat_gradients_backs_every_layer_and_sums_with_the_scalars():
    kw = dict(embed_size=4, num_layers=2, cell="lstm", dtype=np.float64, seed=1)
    plain, flat_model = LanguageModel(13, 6, **kw), LanguageModel(13, 6, **kw)
    fg = dist.FlatGradients(flat_model, scalars=2)
    assert fg.flat.size == sum(p.size for p in flat_model.params) + 2
    layer_grads = [g for layer in flat_model.layers for g in layer.grads]
    assert all(a is b for a, b in zip(layer_grads, flat_model.grads))
    assert all(np.shares_memory(g, fg.flat) for g in flat_model.grads)
    xs = np.random.default_rng(0).integers(0, 13, (3, 4))
    for m in (plain, flat_model):
        m.loss(xs, xs[:, ::-1])
        m.backward()
    for a, b in zip(plain.grads, flat_model.grads):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fg.grads_flat, np.concatenate([g.ravel() for g in plain.grads]))
    assert fg.allreduce(None, (2.5,)).tolist() == [2.5, 0.0]
    worlds = [dist.FlatGradients(LanguageModel(13, 6, **kw)) for _ in range(2)]
    for w in worlds:
        w.grads_flat[:] = 1.0
    sums = FakeWorld(2).run(lambda r, comm: worlds[r].allreduce(comm, (), average=False))
    assert all(s.size == 0 for s in sums) and all((w.grads_flat == 2.0).all() for w in worlds)
    with pytest.raises(TypeError, match="grads list"):
        dist.FlatGradients(object())


def test_launcher_detection(monkeypatch):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "RNNCORE_MPI"):
        monkeypatch.delenv(var, raising=False)
    assert dist.launcher_size() == 1 and dist.world_from_launcher() is None
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    assert dist.launcher_size() == 4
    monkeypatch.setenv("RNNCORE_MPI", "0")
    assert dist.launcher_size() == 1
    assert dist.threads_per_rank(None) >= 1 and dist.local_size(None) == 1


def test_rnncore_never_imports_mpi4py():
    code = ("import sys, rnncore, rnncore.train, rnncore.distributed, rnncore.cli;"
            "from rnncore.distributed import world_from_launcher; assert world_from_launcher() is None;"
            "assert not [m for m in sys.modules if m.startswith('mpi4py')], 'mpi4py imported'")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_abort_on_error_names_the_rank_and_aborts(capsys):
    world = FakeWorld(2)
    comm = world.comm(1)
    with pytest.raises(RuntimeError):
        with dist.abort_on_error(comm, prog="job"):
            raise RuntimeError("disk on fire")
    err = capsys.readouterr().err
    assert "job: rank 1 of 2: RuntimeError: disk on fire; aborting all 2 ranks" in err and "Traceback" in err
    assert world.aborted == [(1, 1)]
    with pytest.raises(ValueError):
        with dist.abort_on_error(comm, quiet=(ValueError,)):
            raise ValueError("bad --corpus")
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(KeyError):
        with dist.abort_on_error(comm, passthrough=(KeyError,)):
            raise KeyError("all ranks")
    assert world.aborted == [(1, 1), (1, 1)]
    with dist.abort_on_error(None):  # one process: nothing to do
        pass


TINY = ["--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "16", "--max-chars", "20000",
        "--eval-every", "5", "--sample-every", "100", "--no-progress", "--threads", "1"]


def _metrics(path):
    return [json.loads(s) for s in path.read_text().splitlines()]


def test_metrics_of_a_killed_and_resumed_run_have_every_step_once(tmp_path, monkeypatch, capsys):
    full = tmp_path / "full"
    assert main(["train", "--steps", "12", "--out", str(full), *TINY]) == 0
    ref = _metrics(full / "metrics.jsonl")
    assert [r["step"] for r in ref] == list(range(1, 13))
    assert [r["step"] for r in ref if "val_ppl" in r] == [5, 10, 12]
    assert {"step", "loss", "seconds", "grad_norm"} <= set(ref[0])
    assert f"metrics: {full / 'metrics.jsonl'}" in capsys.readouterr().out

    original, calls = LanguageModel.backward, [0]

    def dies_in_step_8(self, dout=1.0):
        calls[0] += 1
        if calls[0] == 8:
            raise SystemExit(9)  # as if killed: no checkpoint of steps 6 and 7
        return original(self, dout)

    killed = tmp_path / "killed"
    monkeypatch.setattr(LanguageModel, "backward", dies_in_step_8)
    with pytest.raises(SystemExit):
        main(["train", "--steps", "12", "--out", str(killed), *TINY])
    monkeypatch.setattr(LanguageModel, "backward", original)
    assert [r["step"] for r in _metrics(killed / "metrics.jsonl")] == list(range(1, 8))
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "lo')  # a line cut short
    assert main(["train", "--resume", str(killed / "model.npz"), "--steps", "12", *TINY]) == 0
    got = _metrics(killed / "metrics.jsonl")
    assert [(r["step"], r["loss"], r.get("val_ppl")) for r in got] == \
           [(r["step"], r["loss"], r.get("val_ppl")) for r in ref]


def test_mpiexec_command(monkeypatch, tmp_path):
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\necho 'mpiexec (Open MPI) 5.0.5'\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))  # mpiexec "next to" this Python
    cmd = dist.mpiexec_command(3)
    assert cmd[0] == str(fake) and "--oversubscribe" in cmd and cmd[-2:] == ["-n", "3"]
    fake.write_text("#!/bin/sh\necho 'HYDRA build details:'\n")
    assert dist.mpiexec_command(2) == [str(fake), "-n", "2"]
    with pytest.raises(ValueError, match="n must be"):
        dist.mpiexec_command(0)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    fake.unlink()
    with pytest.raises(FileNotFoundError, match="mpiexec"):
        dist.mpiexec_command(2)
