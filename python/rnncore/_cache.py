"""What a forward pass keeps for its backward: the same for both backends."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ._checks import Inputs


def cache_kind(cache) -> str:
    """How a backward's error message names what it got instead of a cache."""
    return "None (a forward with inference=True keeps no cache)" if cache is None else type(cache).__name__


@dataclass
class Cache:
    """Inputs of the forward call (referenced, not copied: do not modify them before the
    backward) and what it computed, in x's layout: hs (..., H), gates (..., 4H) for LSTM and
    GRU, cs (..., H) for LSTM. Past a sequence's length all three are zero, on both backends
    (so either backend's backward can read either's cache)."""

    inputs: Inputs
    hs: np.ndarray
    gates: Optional[np.ndarray]
    cs: Optional[np.ndarray]

    @property
    def cell(self) -> str:
        return self.inputs.cell

    def __repr__(self) -> str:
        i = self.inputs
        layout = "batch_first" if i.batch_first else "time_major"
        return f"Cache({i.cell}, T={i.T}, B={i.B}, D={i.D}, H={i.H}, {layout}, {i.x.dtype})"
