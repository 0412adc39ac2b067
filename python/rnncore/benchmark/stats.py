"""The benchmarks' one statistic of two programs timed in turns."""
from __future__ import annotations

import math
import statistics

__all__ = ["paired_ratio"]


def paired_ratio(a, b):
    """How many times b's time a takes, from rounds in which both ran once, one after the other,
    and which ran first alternating from round to round: a[i] / b[i] is round i's ratio, the
    geometric mean of two consecutive rounds' ratios (one of each order) cancels a cost that
    falls on whichever runs second (or first), and the median over those overlapping pairs
    leaves out a disturbed round. One round alone: its ratio.

    >>> round(paired_ratio([0.9 * 1.3, 0.9], [1.0, 1.3]), 12)  # the second run of a round: 1.3x
    0.9
    """
    r = [x / y for x, y in zip(a, b)]
    if not r:
        raise ValueError("paired_ratio: no rounds")
    if len(r) == 1:
        return r[0]
    return statistics.median(math.sqrt(r[i] * r[i + 1]) for i in range(len(r) - 1))
