"""Side-by-side timing of rnncore (native), its NumPy twin, a textbook NumPy RNN and PyTorch.

A thin wrapper: the engine is :mod:`rnncore.benchmark`, also run by ``rnncore bench``.

    python bench/compare.py                       # the default table (rnn; B 1,8,64,256; H 128,512; 1 and 2 threads)
    python bench/compare.py --cells rnn,lstm,gru --json results.json
    python bench/compare.py --quick               # a tiny grid, seconds
"""
from __future__ import annotations

import sys

from rnncore.benchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
