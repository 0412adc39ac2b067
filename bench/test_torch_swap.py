"""Smoke check of bench/torch_swap.py (PyTorch's training step with and without rnncore.torch.patch):
its smallest run, end to end; the script itself checks the patched model's loss against torch's."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _script():
    spec = importlib.util.spec_from_file_location("torch_swap", Path(__file__).with_name("torch_swap.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_torch_swap_smoke():
    pytest.importorskip("torch")
    lines = []
    rows = _script().run(cells=("lstm", "gru"), batches=(2,), hidden=8, seq_len=5, steps=1, rounds=1, warmup=1,
                         say=lines.append)
    assert [(r["cell"], r["B"]) for r in rows] == [("lstm", 2), ("gru", 2)]
    for r in rows:
        assert r["loss_diff"] <= 1e-4
        assert all(ms > 0 for ms in r["ms"].values()) and all(x > 0 for x in r["ratio"].values())
    assert any(line.startswith("gru ") for line in lines), lines


def test_torch_swap_command_line(capsys):
    pytest.importorskip("torch")
    assert _script().main(["--cells", "rnn", "--batch", "1", "--hidden", "4", "--seq-len", "3", "--steps", "1",
                           "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "CPU:" in out and "rnncore BLAS:" in out and "rnncore team:" in out
    assert _script().main(["--steps", "0"]) == 2
