"""The textbook NumPy Elman RNN (the seed's layer classes), as the benchmarks time it.

``RNN`` is one time step (``params``/``grads``, ``forward(x, h_prev)``, ``backward(dh_next)``);
``TimeRNN`` runs one RNN object per step, batch-first ``xs (N, T, D) -> hs (N, T, H)``, with a
Python loop in backward. The classes live in :mod:`rnncore.benchmark` so that ``rnncore bench``
works from an installed package; this module re-exports them for ``bench/``.
"""
from __future__ import annotations

from rnncore.benchmark import _TextbookRNN as RNN
from rnncore.benchmark import _TextbookTimeRNN as TimeRNN

__all__ = ["RNN", "TimeRNN"]
