"""The example scripts: each has a main() returning its final metric."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import rnncore

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _one_thread():
    with rnncore.num_threads(1):
        yield


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
def test_tiny_word_lm_reaches_perplexity_near_one(cell):
    assert _load("tiny_lm").main(steps=200, cell=cell, verbose=False) < 1.1


def test_sentiment_learns_negation(capsys):
    acc = _load("sentiment").main(steps=200)
    assert acc >= 0.95
    assert "negated sentences" in capsys.readouterr().out


def test_torch_gru_example_trains_the_patched_model(capsys):
    """examples/torch_gru.py: the patched model computes what the torch one did, and trains."""
    torch = pytest.importorskip("torch")
    import re

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # like rnncore's above: one thread, robust on a busy machine
    try:
        acc = _load("torch_gru").main(steps=200)
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "model.gru is rnncore.torch.GRU" in out
    diff = float(re.search(r"max \|logits after - before\| = (\S+)$", out, re.M).group(1))
    assert diff < 1e-5
    assert acc >= 0.95
