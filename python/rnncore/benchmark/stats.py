"""The benchmarks' one statistic of two programs timed in turns."""
from __future__ import annotations

import statistics

__all__ = ["paired_ratio", "in_turn"]


def paired_ratio(a, b):
    """How many times b's time a takes, from rounds in which both ran, one right after the
    other: the median over the rounds of each round's ratio a[i] / b[i]. A change of the
    machine's speed between rounds touches both runs of a round alike and cancels; a slow spell
    that falls on one run of a round moves that round's ratio only, which the median leaves
    out. (The callers also let the two go first in turn, round by round, so that neither always
    runs right after the other.)

    >>> paired_ratio([0.5, 1.5, 6.0, 1.0], [1.0, 3.0, 2.0, 2.0])  # a slow spell on a's third run
    0.5
    """
    r = [x / y for x, y in zip(a, b)]
    if not r:
        raise ValueError("paired_ratio: no rounds")
    return statistics.median(r)


def in_turn(items, i):
    """``items`` in order in round ``i`` when it is even, reversed when odd: the sides of a
    comparison take the first turn of a round in turn.

    >>> [in_turn(("a", "b"), i) for i in range(3)]
    [('a', 'b'), ('b', 'a'), ('a', 'b')]
    """
    return items if i % 2 == 0 else items[::-1]
