"""pytest-benchmark suites: rnn / lstm / gru forward and forward+backward (BPTT).

Implementations: rnncore native, rnncore's NumPy twin, and torch.nn.RNN/LSTM/GRU when
PyTorch imports (skipped otherwise); T = 50, D = H, float32, B in {1, 64}, H in {128, 512}.
Every test also checks what it timed: native and torch against the twin, the twin against
native (``max|impl - ref| <= TOL * max|ref|``). No assertion here depends on time.

    python -m pytest bench -q --benchmark-disable            # smoke: each case once, checked
    python -m pytest bench                                   # timings, grouped by cell/op/size
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from rnncore import benchmark as rb

#: sequence length of every case
T = 50
#: max|impl - reference| <= TOL * max|reference| (float32, T = 50)
TOL = 1e-4
IMPLS = ["native", "twin", "torch"]
CELLS = ["rnn", "lstm", "gru"]
GRID = pytest.mark.parametrize("B,H", [(1, 128), (1, 512), (64, 128), (64, 512)], ids=str)


@functools.lru_cache(maxsize=None)
def problem(cell, B, H):
    return rb.Problem(cell, T, B, H, "float32", seed=0)


def reference(impl, cell, B, H):
    """Outputs the timed ``impl`` must match: the twin's for native and torch, native's for the twin."""
    return _outputs("native" if impl == "twin" else "twin", cell, B, H)


@functools.lru_cache(maxsize=8)
def _outputs(impl, cell, B, H):
    runner = rb.FACTORIES[impl](problem(cell, B, H))
    with runner.threads(1):  # one thread: robust on a busy machine, and this part is not timed
        runner.forward_backward()
    return runner.result()


def assert_close(name, actual, ref):
    actual, ref = np.asarray(actual), np.asarray(ref)
    assert actual.shape == ref.shape, f"{name}: shape {actual.shape} != {ref.shape}"
    scale = float(np.max(np.abs(ref))) or 1.0
    err = float(np.max(np.abs(actual.astype(np.float64) - ref))) / scale
    assert err <= TOL, f"{name}: max|diff| / max|ref| = {err:.2e} > {TOL:g}"


def _label(benchmark, op, impl, cell, B, H, threads):
    benchmark.group = f"{cell} {op} T={T} B={B} H={H}"
    flops = rb.flops_forward(T, B, H, H, rb.GATES[cell]) * (1 if op == "forward" else 3)
    benchmark.extra_info.update(impl=impl, cell=cell, op=op, T=T, B=B, H=H, D=H, threads=threads,
                                flops=flops)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
@GRID
def test_forward(benchmark, make_runner, threads_info, impl, cell, B, H):
    runner = make_runner(impl, problem(cell, B, H))
    _label(benchmark, "forward", impl, cell, B, H, threads_info)
    hs = benchmark(runner.forward)
    assert_close(f"{impl} {cell} hs", hs, reference(impl, cell, B, H)["hs"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("cell", CELLS)
@GRID
def test_forward_backward(benchmark, make_runner, threads_info, impl, cell, B, H):
    runner = make_runner(impl, problem(cell, B, H))
    _label(benchmark, "forward+backward", impl, cell, B, H, threads_info)
    benchmark(runner.forward_backward)
    ref = reference(impl, cell, B, H)
    got = runner.result()
    for name, r in ref.items():
        assert_close(f"{impl} {cell} {name}", got[name], r)


def test_forward_table_checks_and_reports_per_step(capsys):
    """``rnncore bench --forward`` end to end at its smallest: every implementation's inference
    forward is checked against native's and the table has microseconds per step."""
    assert rb.main(["--quick", "--forward", "--cells", "lstm,gru", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "us/st" in out and "forward only" in out
    rows = [ln for ln in out.splitlines() if ln.startswith(("lstm ", "gru "))]
    assert len(rows) == 2 * 2 * 2  # cells x H x B of --quick
    assert not any("FAILED" in ln or "ERROR" in ln for ln in rows)


def test_gemm_peak_is_a_rate():
    from rnncore.benchmark import ops

    pk = ops.gemm_peak(1, "float32", n=128, min_time=0.01)
    assert pk["gflops"] == max(pk["rnncore"], pk["numpy"]) > 0
    assert pk["n"] == 128 and pk["threads"] == 1


def test_implementations_take_turns_round_by_round(monkeypatch):
    """At each point the implementations are timed in ``--rounds`` rounds, taking turns (native,
    twin, then twin, native, ...: every other round in reverse order), not one block each; every
    record counts its runs of all rounds and keeps each round's median, which the ratio pairs."""
    from rnncore.benchmark import ops

    calls = []

    def logged(name):
        base = ops.FACTORIES[name]

        class Logged(base):
            def forward_backward(self):
                calls.append(name)
                return super().forward_backward()

        return Logged

    monkeypatch.setitem(ops.FACTORIES, "native", logged("native"))
    monkeypatch.setitem(ops.FACTORIES, "twin", logged("twin"))
    cfg = ops._config(ops.build_parser().parse_args(
        ["--quick", "--cells", "lstm", "--batch", "1", "--hidden", "32", "--no-torch", "--no-textbook",
         "--rounds", "3", "--repeat", "2"]))
    rows = ops.run(cfg, say=lambda *a, **k: None)
    assert len(rows) == 1
    for name in ("native", "twin"):
        rec = rows[0]["impls"][name]
        assert rec["status"] == "ok" and rec["rounds"] == 3
        assert rec["fwdbwd"]["runs"] == 3 * 2 and rec["fwd"]["runs"] == 3 * 2
        assert len(rec["fwdbwd"]["round_medians"]) == len(rec["fwd"]["round_medians"]) == 3
    timed = calls[2:]  # after the two warm-ups
    assert timed == ["native"] * 2 + ["twin"] * 4 + ["native"] * 4 + ["twin"] * 2
    from rnncore.benchmark.stats import paired_ratio
    twin, nat = rows[0]["impls"]["twin"]["fwdbwd"], rows[0]["impls"]["native"]["fwdbwd"]
    assert rows[0]["impls"]["twin"]["ratio"] == paired_ratio(twin["round_medians"], nat["round_medians"])


def _run_load_fake(monkeypatch, spells, slow=()):
    """``rnncore bench --load 1 --threads 1 2`` on a fake native op whose run takes 0.01 s times
    the round's slowness (``spells``), 0.9x with 2 threads, and 3x as the timed runs numbered in
    ``slow`` (a slow spell on one run); returns the rows and the thread counts in the order they
    ran."""
    from rnncore.benchmark import ops

    state = {"t": 0.0, "calls": 0, "order": []}

    class Fake:
        def __init__(self, p):
            self.n = 1

        def threads(self, n):
            fake = self

            class Ctx:
                def __enter__(self):
                    self.old, fake.n = fake.n, n

                def __exit__(self, *exc):
                    fake.n = self.old

            return Ctx()

        def forward_backward(self):
            k = state["calls"] - 2  # after the two warm-ups, two runs a round
            state["calls"] += 1
            if k < 0:
                state["t"] += 0.01
                return
            state["order"].append(self.n)
            cost = 3.0 if k in slow else 1.0
            state["t"] += 0.01 * spells[k // 2] * (0.9 if self.n == 2 else 1.0) * cost

    monkeypatch.setitem(ops.FACTORIES, "native", Fake)
    monkeypatch.setattr(ops.time, "perf_counter", lambda: state["t"])
    cfg = ops._config(ops.build_parser().parse_args(
        ["--cells", "rnn", "--batch", "2", "--hidden", "8", "--threads", "1", "2", "--load", "1",
         "--no-torch", "--no-textbook", "--no-twin", "--repeat", str(len(spells))]))
    return ops.run_load(cfg, say=lambda *a, **k: None), state["order"]


def test_load_ratio_pairs_the_runs_of_each_round(monkeypatch):
    """``--load``: the thread counts take turns run by run, and each round's ratio is its time
    over the first count's in that round (combined over rounds by stats.paired_ratio). A
    machine whose speed changes from round to round (up to 4x here), with 2 threads taking 0.9x
    the time of 1 in every round, gives 0.9 exactly; runs paired across rounds would not."""
    spells = [1.0, 3.0, 1.5, 4.0, 2.0, 1.0, 2.5]  # the machine's slowness in each round
    rows, _ = _run_load_fake(monkeypatch, spells)
    assert len(rows) == 1 and rows[0]["rounds"] == len(spells)
    assert abs(rows[0]["ratio"]["2"] - 0.9) < 1e-9


def test_load_counts_go_first_in_turn_and_a_slow_spell_is_left_out(monkeypatch):
    """``--load``: the counts take the first turn of a round in turn (1, 2 then 2, 1), and a slow
    spell on one run (3x) moves only its round's ratio, which the median over the rounds leaves
    out: 2 threads at 0.9x the time of 1 still give 0.9 exactly."""
    from rnncore.benchmark.stats import paired_ratio

    spells = [1.0, 3.0, 1.5, 4.0, 2.0]  # the machine's slowness in each round
    rows, order = _run_load_fake(monkeypatch, spells, slow={5})  # round 2's second run
    assert order == [1, 2, 2, 1, 1, 2, 2, 1, 1, 2]
    assert abs(rows[0]["ratio"]["2"] - 0.9) < 1e-9
    assert paired_ratio([2.0], [4.0]) == 0.5  # one round: its ratio
    assert paired_ratio([1.0, 4.0, 9.0], [1.0, 1.0, 1.0]) == 4.0  # the median of the rounds' ratios
