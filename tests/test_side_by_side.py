"""The two directions of a bidirectional layer run at once on the native backend: same bits
as running them one after the other, exceptions surface, thread caps are restored."""
from __future__ import annotations

import numpy as np
import pytest

import rnncore
from rnncore import recurrent


def _sequential(f0, f1):
    return [f0(), f1()]


@pytest.mark.parametrize("mode", ["rnn", "lstm", "gru"])
def test_side_by_side_equals_sequential(mode, monkeypatch):
    rng = np.random.default_rng(3)
    T, B, D, H = 9, 5, 6, 32
    x = rng.standard_normal((B, T, D)).astype(np.float32)
    w = recurrent.init_weights(mode, D, H, num_layers=2, bidirectional=True, rng=1)
    lengths = np.array([9, 3, 7, 1, 9])
    dout = rng.standard_normal((B, T, 2 * H)).astype(np.float32)

    def run():
        out, h_n, c_n, cache = rnncore.recurrent_forward(mode, x, w, num_layers=2, bidirectional=True,
                                                         batch_first=True, lengths=lengths)
        dx, dw, dh0, dc0 = rnncore.recurrent_backward(dout, cache)
        return [out, h_n, dx, dh0] + [g for gs in dw for g in gs]

    with rnncore.num_threads(2):
        together = run()
        assert rnncore.get_num_threads() == 2  # the caps were lifted again
    monkeypatch.setattr(recurrent, "_side_by_side", _sequential)
    with rnncore.num_threads(2):
        apart = run()
    for a, b in zip(together, apart):
        np.testing.assert_array_equal(a, b)


def test_helper_thread_errors_surface():
    def boom():
        raise ValueError("from the helper")

    with rnncore.num_threads(2):
        with pytest.raises(ValueError, match="from the helper"):
            recurrent._side_by_side(lambda: 1, boom)
        assert recurrent._side_by_side(lambda: 1, lambda: 2) == [1, 2]
        assert rnncore.get_num_threads() == 2


def test_train_step_benchmark_smoke():
    """``rnncore bench --train-step`` end to end at its smallest: a real rnncore training step
    in its own process, the interference probe, and the textbook SimpleRnnlm on both layer
    sets, whose loss traces must agree."""
    from rnncore.benchmark import train_step

    lines = []
    res = train_step.run(cells=("gru",), steps=2, rounds=1, torch=False, textbook_models=("SimpleRnnlm",),
                         interference_reps=2, textbook_iters={"SimpleRnnlm": (6, 1)}, say=lines.append)
    step = res["train_step"]["gru"]
    assert 0 < step["rnncore_min_ms"] <= step["rnncore_ms"], lines
    assert res["interference"]["ratio"] > 0, lines
    tb = res["textbook"]["SimpleRnnlm"]
    book, mine = tb["losses"]
    assert len(book) == len(mine) == 7
    np.testing.assert_allclose(mine, book, rtol=1e-5)
    assert book[0] != book[-1]  # it trained
    assert 0 < tb["rnncore_min_ms"] <= tb["rnncore_ms"] and 0 < tb["book_min_ms"] <= tb["book_ms"]
    assert any("SimpleRnnlm" in line for line in lines)


def test_train_step_benchmark_pairs_its_rounds(monkeypatch):
    """``rnncore bench --train-step``: the two sides of a comparison go first in turn, round by
    round, and the ratio is paired round by round (benchmark.stats.paired_ratio): with torch at
    1.2x rnncore's time, the machine 1-4x slower from round to round and a slow spell (3x) on one
    process, table 1's ratio and table 3's speed-up come out 1.2 exactly (the ratio of the
    medians over all rounds would not)."""
    from rnncore.benchmark import train_step

    spells = [1.0, 3.0, 1.5, 4.0, 2.0]  # the machine's slowness in each round
    log = []
    state = {"round": 0, "in_round": 0}

    def fake_spawn(kind, *args):
        side = kind if kind in ("rnncore", "torch") else args[1]  # textbook: args (model, side, ...)
        log.append((kind, side))
        base = 1.2 if side in ("torch", "book") else 1.0
        spell = 3.0 if (state["round"], side) in ((2, "rnncore"), (3, "book")) else 1.0
        t = base * spells[state["round"]] * spell
        state["in_round"] += 1
        if state["in_round"] == 2:
            state["round"], state["in_round"] = (state["round"] + 1) % len(spells), 0
        return {"times": [t, t, t], "losses": [1.0, 0.5]}

    monkeypatch.setattr(train_step, "_spawn", fake_spawn)
    monkeypatch.setattr(train_step, "_have_torch", lambda: True)
    res = train_step.run(cells=("lstm",), rounds=len(spells), interference_reps=0,
                         textbook_models=("SimpleRnnlm",), say=lambda *a: None)
    firsts = [side for (kind, side) in log[0:2 * len(spells):2]]
    assert firsts == ["rnncore", "torch", "rnncore", "torch", "rnncore"]
    assert abs(res["train_step"]["lstm"]["ratio"] - 1.2) < 1e-12
    firsts = [side for (kind, side) in log[2 * len(spells)::2]]
    assert firsts == ["book", "rnncore", "book", "rnncore", "book"]
    assert abs(res["textbook"]["SimpleRnnlm"]["speedup"] - 1.2) < 1e-12
