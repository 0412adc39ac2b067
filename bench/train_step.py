"""Whole programs against their peers: the default training step of ``rnncore train`` against
the same model in PyTorch (each in its own process), an rnncore call beside NumPy matmuls, and
the textbook's language models on the book's layers and on rnncore.time_layers.

A thin wrapper: the engine is :mod:`rnncore.benchmark.train_step`, also run by
``rnncore bench --train-step``.

    python bench/train_step.py                    # all three tables
    python bench/train_step.py --cells lstm --no-textbook --json step.json
"""
from __future__ import annotations

import sys

from rnncore.benchmark.train_step import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
