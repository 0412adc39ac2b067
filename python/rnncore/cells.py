"""The cell registry: one :class:`CellSpec` per recurrent cell drives every layer of rnncore.

A spec says what a cell is -- its gate count, what its forward caches, whether it carries a
cell state, the names of its biases, which activations it takes, whether the C++ core has a
kernel for it -- and holds its NumPy twin's step functions. The checks (:mod:`rnncore._checks`),
the functional ops (:mod:`rnncore._ops`), the twin's driver (:mod:`rnncore.reference`), the
stacked layers (:mod:`rnncore.recurrent`, :mod:`rnncore.layers`), the PyTorch names
(:mod:`rnncore.interop`), the models, the command line and the benchmark read it from here
instead of naming the cells themselves.

The built-in cells are registered by :mod:`rnncore.reference`, beside their step functions
(loaded with the package). A cell of your own needs one :func:`register` call::

    rnncore.cells.register(rnncore.cells.CellSpec(
        name="softsign", gates=1, cache_gates=0, has_cell_state=False, biases=("b_ih", "b_hh"),
        step_forward=my_step_forward, step_backward=my_step_backward))

Without a C++ kernel (``native=False``, the default) it runs on the NumPy backend
(``rnncore.set_backend("numpy")``) through ``rnncore.recurrent_forward(name, ...)`` and
``rnncore.layers.Recurrent(..., cell=name)``; the step functions' contract is written above
:func:`rnncore.reference.rnn_step_forward`.

Words: a *cell* is the kind of recurrence a user names ("rnn", "lstm", "gru"; the ``mode``
argument of :func:`rnncore.recurrent_forward` and :mod:`rnncore.interop`, kept for
compatibility); a *flavour* is one of several kernels of the same cell chosen by a keyword
(the GRU's ``reset_after=False`` runs the kernel "gru_reset_before"); ``spec.name`` is the
kernel's name, what a :class:`rnncore.Cache` records.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

__all__ = ["CellSpec", "register", "unregister", "get", "cells", "flavours", "resolve"]


@dataclass(frozen=True)
class CellSpec:
    """One recurrent cell: what the checks, the driver and the layers need to know.

    name : the kernel's name (``Inputs.cell``, what the C++ core dispatches on).
    gates : G, the weight blocks: wx is (D, G*H), wh (H, G*H), each bias (G*H,).
    cache_gates : blocks of H the forward keeps per step in ``cache.gates`` (0: none).
    has_cell_state : the cell carries c (LSTM): c0, c_n, dc_n, dc0.
    biases : the op's bias argument names: one fused bias ``("b",)`` (the Elman op takes
        ``b = b_ih + b_hh``) or ``("b_ih", "b_hh")`` (b_hh may be None).
    step_forward, step_backward : the NumPy twin's per-step functions (see
        :mod:`rnncore.reference`).
    native : the C++ core implements it (else it runs on the NumPy backend only).
    activations : the ``activation`` values it takes; the first is the default.
    cell : the cell users name (defaults to ``name``); several specs of one cell are its
        flavours, told apart by ``flavour``.
    flavour : ``(keyword, value)`` that picks this spec among its cell's, e.g.
        ``("reset_after", False)``; None for a cell with one kernel.
    """

    name: str
    gates: int
    cache_gates: int
    has_cell_state: bool
    biases: Tuple[str, ...]
    step_forward: Callable
    step_backward: Callable
    native: bool = False
    activations: Tuple[str, ...] = ("tanh",)
    cell: str = ""
    flavour: Optional[Tuple[str, object]] = None

    def __post_init__(self):
        if not self.cell:
            object.__setattr__(self, "cell", self.name)
        if self.gates < 1 or self.cache_gates < 0 or len(self.biases) not in (1, 2):
            raise ValueError(f"CellSpec {self.name!r}: gates >= 1, cache_gates >= 0 and one or two bias names")

    @property
    def fused_bias(self) -> bool:
        """The op takes one bias: layers holding (b_ih, b_hh) pass their sum."""
        return len(self.biases) == 1

    @property
    def gate_legend(self) -> str:
        """How the column count reads in messages: "H" or "4*H"."""
        return "H" if self.gates == 1 else f"{self.gates}*H"


_SPECS: Dict[str, CellSpec] = {}  # by kernel name
_CELLS: Dict[str, Tuple[CellSpec, ...]] = {}  # by cell: its flavours, in registration order
_NAMES: Tuple[str, ...] = ()  # the cells, as cells() returns them (kept: the layers ask at every call)
_KEYWORDS: Dict[str, Tuple[str, ...]] = {}  # by cell: its flavour keywords


def _changed() -> None:
    global _NAMES
    _NAMES = tuple(_CELLS)
    _KEYWORDS.clear()
    for c, specs in _CELLS.items():
        _KEYWORDS[c] = tuple(dict.fromkeys(s.flavour[0] for s in specs if s.flavour is not None))


def register(spec: CellSpec) -> CellSpec:
    """Add ``spec`` (its name must be new); returns it."""
    if not isinstance(spec, CellSpec):
        raise TypeError(f"register: spec must be a CellSpec, got {type(spec).__name__}")
    if spec.name in _SPECS:
        raise ValueError(f"register: a cell named {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    _CELLS[spec.cell] = _CELLS.get(spec.cell, ()) + (spec,)
    _changed()
    return spec


def unregister(name: str) -> None:
    """Remove the spec ``name`` (for tests that register a throwaway cell)."""
    spec = _SPECS.pop(name)
    rest = tuple(s for s in _CELLS[spec.cell] if s.name != name)
    if rest:
        _CELLS[spec.cell] = rest
    else:
        del _CELLS[spec.cell]
    _changed()


def get(name: str) -> CellSpec:
    """The spec of kernel ``name`` (KeyError if unknown)."""
    return _SPECS[name]


def cells(native: Optional[bool] = None) -> Tuple[str, ...]:
    """The cells users can name, in registration order; ``native=True`` only those the C++
    core implements (every flavour), ``False`` only the twin-only ones."""
    if native is None:
        return _NAMES
    return tuple(c for c, specs in _CELLS.items() if all(s.native for s in specs) == native)


def flavours(cell: str) -> Tuple[CellSpec, ...]:
    """The specs of ``cell`` (KeyError if unknown)."""
    return _CELLS[cell]


def resolve(cell: str, **choices) -> CellSpec:
    """The spec of ``cell`` for the flavour keywords given (e.g. ``reset_after=False``); a
    keyword or value no flavour matches picks the first flavour (the callers check them)."""
    specs = _CELLS[cell]
    if len(specs) == 1:
        return specs[0]
    for s in specs:
        if s.flavour is not None and s.flavour[0] in choices and choices[s.flavour[0]] == s.flavour[1]:
            return s
    return specs[0]


def flavour_keywords(cell: str) -> Tuple[str, ...]:
    """The keywords that choose among ``cell``'s flavours (("reset_after",) for "gru")."""
    return _KEYWORDS.get(cell, ())
