"""rnncore's benchmarks, one job a module.

- :mod:`rnncore.benchmark.ops`: the side-by-side table of the recurrent ops against the NumPy
  twin, textbook NumPy code and PyTorch (``rnncore bench``; ``--load N`` runs it beside N busy
  processes).
- :mod:`rnncore.benchmark.train_step`: whole programs (``rnncore bench --train-step``): the
  default training step against PyTorch, an rnncore call beside NumPy matmuls, and the
  textbook's language models on both layer sets.
"""
from __future__ import annotations

import sys

from .ops import FACTORIES, GATES, Problem, environment, flops_forward, machine_lines, run

__all__ = ["main", "FACTORIES", "GATES", "Problem", "environment", "flops_forward", "machine_lines", "run"]


def main(argv=None) -> int:
    """``rnncore bench [--train-step] [options]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--train-step" in argv:
        from . import train_step

        argv.remove("--train-step")
        return train_step.main(argv)
    from . import ops

    return ops.main(argv)
