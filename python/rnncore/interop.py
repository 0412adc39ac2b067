"""Weights in PyTorch's ``state_dict`` names and layout, and ``.npz`` files of them.

rnncore keeps each layer/direction's weights as ``(wx, wh, b_ih, b_hh)`` with the row-vector
layout (``wx = weight_ih.T``); ``torch.nn.RNN``/``LSTM``/``GRU`` store ``weight_ih_l{k}``
(G*H, D), ``weight_hh_l{k}`` (G*H, H), ``bias_ih_l{k}`` and ``bias_hh_l{k}`` (G*H,), with a
``_reverse`` suffix for the backward direction. The functions here convert between the two
without importing torch::

    sd = {k: v.detach().cpu().numpy() for k, v in torch_lstm.state_dict().items()}
    mode, weights, num_layers, bidirectional = rnncore.from_state_dict(sd)
    ...
    torch_lstm.load_state_dict({k: torch.from_numpy(v) for k, v in
                                rnncore.to_state_dict("lstm", weights, num_layers, True).items()})
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import cells
from ._checks import check_size

__all__ = ["to_state_dict", "from_state_dict", "save_npz", "load_npz"]

_KEY = re.compile(r"^(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")
#: name of the metadata entry in files written by :func:`save_npz`
META_KEY = "__rnncore__"
_FORMAT = 1


def _suffix(layer, d):
    return f"_l{layer}" + ("_reverse" if d else "")


Weights = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def to_state_dict(mode: str, weights: Sequence[Weights], num_layers: int = 1, bidirectional: bool = False,
                  prefix: str = "") -> Dict[str, np.ndarray]:
    """``weights`` (as for :func:`rnncore.recurrent_forward`) -> dict of PyTorch names.

    Returns ``{prefix + "weight_ih_l0": wx.T, prefix + "weight_hh_l0": wh.T,
    prefix + "bias_ih_l0": b_ih, prefix + "bias_hh_l0": b_hh, ..._reverse, ...}`` with
    fresh C-contiguous numpy copies, in PyTorch's key order. Load it into torch with
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
    """
    op = "to_state_dict"
    if mode not in cells.cells():
        raise ValueError(f"{op}: mode must be one of {cells.cells()}, got {mode!r}")
    num_layers = check_size(op, "num_layers", num_layers)
    if not isinstance(bidirectional, (bool, np.bool_)):
        raise TypeError(f"{op}: bidirectional must be a bool, got {type(bidirectional).__name__}")
    nd = 2 if bidirectional else 1
    n = num_layers * nd
    if not isinstance(weights, (list, tuple)) or len(weights) != n:
        got = len(weights) if isinstance(weights, (list, tuple)) else type(weights).__name__
        raise ValueError(f"{op}: weights must be a list of num_layers * num_dirs = {n} (wx, wh, b_ih, b_hh) "
                         f"tuples, got {got}")
    G = cells.flavours(mode)[0].gates
    sd = {}
    for k, w in enumerate(weights):
        layer, d = divmod(k, nd)
        if not isinstance(w, (list, tuple)) or len(w) != 4:
            raise ValueError(f"{op}: weights[{k}] must be a tuple (wx, wh, b_ih, b_hh)")
        wx, wh, b_ih, b_hh = (np.asarray(a) for a in w)
        if wh.ndim != 2 or wh.shape[1] != G * wh.shape[0]:
            raise ValueError(f"{op}: weights[{k}] wh must have shape (H, {G}*H) for mode={mode!r}, "
                             f"got {wh.shape}")
        H = wh.shape[0]
        if wx.ndim != 2 or wx.shape[1] != G * H:
            raise ValueError(f"{op}: weights[{k}] wx must have shape (D, {G}*H) = (D, {G * H}), got {wx.shape}")
        if layer > 0 and wx.shape[0] != nd * H:
            raise ValueError(f"{op}: weights[{k}] wx (layer {layer}) takes the layer below's output: D = "
                             f"num_dirs * H = {nd * H}, got {wx.shape}")
        for name, a in (("wx", wx), ("wh", wh), ("b_ih", b_ih), ("b_hh", b_hh)):
            if a.dtype not in (np.float32, np.float64) or a.dtype != wx.dtype:
                raise TypeError(f"{op}: weights[{k}] {name} must be float32 or float64 like wx, got {a.dtype}")
        for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
            if b.shape != (G * H,):
                raise ValueError(f"{op}: weights[{k}] {name} must have shape ({G * H},), got {b.shape}")
        s = _suffix(layer, d)
        sd[f"{prefix}weight_ih{s}"] = np.ascontiguousarray(wx.T).copy()
        sd[f"{prefix}weight_hh{s}"] = np.ascontiguousarray(wh.T).copy()
        sd[f"{prefix}bias_ih{s}"] = np.array(b_ih, copy=True)
        sd[f"{prefix}bias_hh{s}"] = np.array(b_hh, copy=True)
    return sd


def from_state_dict(state_dict: Mapping, mode: Optional[str] = None, prefix: str = "", dtype=None
                    ) -> Tuple[str, List[Weights], int, bool]:
    """PyTorch-named weights -> ``(mode, weights, num_layers, bidirectional)``.

    ``state_dict`` maps names to arrays (numpy arrays, or anything ``np.asarray`` takes, such
    as CPU tensors without grad). Only keys starting with ``prefix`` are read (so a whole
    model's state dict works with ``prefix="rnn."``); below the prefix every key must be one
    of ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` (each with
    an optional ``_reverse``). Without ``mode`` the cell is inferred from the gate count (G*H
    rows of ``weight_hh`` over its H columns: 1 "rnn", 4 "lstm", 3 "gru") where exactly one
    registered cell (:mod:`rnncore.cells`) has it, and a ValueError asks for ``mode=`` where
    several do; ``mode``, if given, must have that gate count. The number of layers, the
    directions and the hidden size come from the names and shapes. A module built with
    ``bias=False`` (no bias entries at all) gets zero biases. ``dtype`` converts
    (float32/float64); by default the arrays keep their floating dtype.

    Returns the inferred ``mode`` and ``weights`` as for :func:`rnncore.recurrent_forward`.
    """
    op = "from_state_dict"
    if mode is not None and mode not in cells.cells():
        raise ValueError(f"{op}: mode must be None or one of {cells.cells()}, got {mode!r}")
    if not hasattr(state_dict, "items"):
        raise TypeError(f"{op}: state_dict must be a mapping of names to arrays, got {type(state_dict).__name__}")
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{op}: dtype must be None, float32 or float64, got {dtype}")
    entries = {}
    for key, value in state_dict.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        m = _KEY.match(name)
        if m is None:
            if re.match(r"^weight_hr_l\d+", name):
                raise ValueError(f"{op}: {key!r}: LSTM projections (proj_size > 0) are not supported")
            raise ValueError(f"{op}: unexpected key {key!r}; expected names like {prefix}weight_ih_l0, "
                             f"{prefix}weight_hh_l0, {prefix}bias_ih_l0, {prefix}bias_hh_l0 (+ '_reverse')")
        if hasattr(value, "detach") and hasattr(value, "requires_grad"):  # a torch tensor (a Parameter too)
            value = value.detach().cpu()
        arr = np.asarray(value)
        if arr.dtype.kind != "f":
            raise TypeError(f"{op}: {key!r} must hold floating-point values, got dtype {arr.dtype}")
        if dtype is not None:
            arr = arr.astype(dtype)
        elif arr.dtype not in (np.float32, np.float64):
            raise TypeError(f"{op}: {key!r} has dtype {arr.dtype}; pass dtype=np.float32 or np.float64 to convert")
        kind, side, layer, rev = m.group(1), m.group(2), int(m.group(3)), m.group(4) is not None
        entries[(layer, int(rev), kind, side)] = (key, arr)
    if not entries:
        raise ValueError(f"{op}: no recurrent weights found under prefix {prefix!r} "
                         f"(expected {prefix}weight_ih_l0, ...)")
    num_layers = max(k[0] for k in entries) + 1
    bidirectional = any(k[1] for k in entries)
    nd = 2 if bidirectional else 1
    has_bias = any(k[2] == "bias" for k in entries)

    def get(layer, d, kind, side):
        name = f"{prefix}{kind}_{side}{_suffix(layer, d)}"
        if (layer, d, kind, side) not in entries:
            raise ValueError(f"{op}: missing {name!r} (the state dict has {num_layers} layer(s), "
                             f"{'bidirectional' if bidirectional else 'unidirectional'})")
        return entries[(layer, d, kind, side)]

    key0, whh0 = get(0, 0, "weight", "hh")
    if whh0.ndim != 2 or whh0.shape[1] < 1 or whh0.shape[0] % whh0.shape[1]:
        raise ValueError(f"{op}: {key0!r} must have shape (G*H, H), got {whh0.shape}")
    H = whh0.shape[1]
    G = whh0.shape[0] // H
    fits = [c for c in cells.cells() if cells.flavours(c)[0].gates == G]
    if not fits:
        expected = [f"{cells.flavours(c)[0].gates} ({c})" for c in cells.cells()]
        raise ValueError(f"{op}: {key0!r} has shape {whh0.shape}: {G} gate blocks of H = {H}; expected "
                         f"{', '.join(expected[:-1])} or {expected[-1]}")
    if mode is None:
        if len(fits) > 1:  # the gate count names no cell: only the caller can
            raise ValueError(f"{op}: {key0!r} has {G} gate blocks, which fits the cells {tuple(fits)}; pass "
                             f"mode= to say which")
        mode = fits[0]
    elif mode not in fits:
        raise ValueError(f"{op}: mode={mode!r} but the weights are of a {'/'.join(fits)!r} ({G} gate blocks in "
                         f"{key0!r} of shape {whh0.shape})")
    key_ih0, wih0 = get(0, 0, "weight", "ih")
    if wih0.ndim != 2 or wih0.shape[0] != G * H or wih0.shape[1] < 1:
        raise ValueError(f"{op}: {key_ih0!r} must have shape (G*H, D) = ({G * H}, D), got {wih0.shape}")
    D = wih0.shape[1]
    dt = whh0.dtype
    weights = []
    for layer in range(num_layers):
        for d in range(nd):
            D_l = D if layer == 0 else nd * H
            arrays = []
            for kind, side, shape in (("weight", "ih", (G * H, D_l)), ("weight", "hh", (G * H, H)),
                                      ("bias", "ih", (G * H,)), ("bias", "hh", (G * H,))):
                if kind == "bias" and not has_bias:
                    arrays.append(np.zeros(shape, dt))
                    continue
                key, a = get(layer, d, kind, side)
                if a.shape != shape:
                    raise ValueError(f"{op}: {key!r} must have shape {shape} (H = {H}, "
                                     f"input size {D_l}), got {a.shape}")
                if a.dtype != dt:
                    raise TypeError(f"{op}: {key!r} has dtype {a.dtype} but {key0!r} has {dt}; pass dtype= to "
                                    f"convert them all")
                arrays.append(a)
            wih, whh, bih, bhh = arrays
            # copies, always: ascontiguousarray would return the caller's own memory when the
            # transpose happens to be contiguous (input size 1, H 1, Fortran-ordered weights)
            weights.append((np.array(wih.T, order="C", copy=True), np.array(whh.T, order="C", copy=True),
                            np.array(bih, copy=True), np.array(bhh, copy=True)))
    return mode, weights, num_layers, bidirectional


def save_npz(path, mode: str, weights: Sequence[Weights], num_layers: int = 1, bidirectional: bool = False) -> None:
    """Write ``weights`` to ``path`` (``.npz``) under PyTorch's names (see
    :func:`to_state_dict`), plus a small JSON metadata entry (mode, num_layers,
    bidirectional). Read it back with :func:`load_npz`; ``np.load`` also reads it.
    """
    sd = to_state_dict(mode, weights, num_layers=num_layers, bidirectional=bidirectional)
    meta = {"format": _FORMAT, "mode": mode, "num_layers": int(num_layers), "bidirectional": bool(bidirectional)}
    sd[META_KEY] = np.array(json.dumps(meta))
    np.savez(path, **sd)


def read_npz(path, what: str) -> dict:
    """Every array of an ``.npz`` file (no pickles), the file closed even when it is damaged:
    FileNotFoundError when it is missing, one ValueError naming it when it cannot be read."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if not zipfile.is_zipfile(path):  # NumPy would read it as one pickled array and say so
        raise ValueError(f"{path} is not a readable .npz {what} (not a zip archive: an .npz is one)")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # zip, format, truncation (EOFError) or object-array errors
        raise ValueError(f"{path} is not a readable .npz {what} ({type(e).__name__}: {e})") from None


def load_npz(path, dtype=None) -> Tuple[str, List[Weights], int, bool]:
    """Read a file written by :func:`save_npz` (or any ``.npz`` of PyTorch-named recurrent
    weights) -> ``(mode, weights, num_layers, bidirectional)``. No pickles are loaded."""
    op = "load_npz"
    if isinstance(path, (str, os.PathLike)) and not os.path.exists(path) and os.path.exists(f"{os.fspath(path)}.npz"):
        path = f"{os.fspath(path)}.npz"  # the name save_npz was given (NumPy added the suffix)
    sd = read_npz(path, "file")
    meta = None
    if META_KEY in sd:
        try:
            meta = json.loads(str(sd.pop(META_KEY)))
        except ValueError as e:
            raise ValueError(f"{op}: {path}: unreadable {META_KEY} entry: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{op}: {path}: unsupported {META_KEY} entry {meta!r}")
    try:
        mode, weights, num_layers, bidirectional = from_state_dict(
            sd, mode=None if meta is None else meta.get("mode"), dtype=dtype)
    except (KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{op}: {path} does not hold recurrent weights in PyTorch's names "
                         f"({type(e).__name__}: {e})") from None
    if meta is not None and (meta.get("num_layers"), meta.get("bidirectional")) != (num_layers, bidirectional):
        raise ValueError(f"{op}: {path}: metadata says num_layers={meta.get('num_layers')}, bidirectional="
                         f"{meta.get('bidirectional')}, but the arrays hold {num_layers}, {bidirectional}")
    return mode, weights, num_layers, bidirectional
