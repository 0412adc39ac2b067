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
