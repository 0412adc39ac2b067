"""``rnncore.torch``: drop-in replacements for ``torch.nn.RNN``, ``nn.LSTM`` and ``nn.GRU``.

:class:`RNN`, :class:`LSTM` and :class:`GRU` subclass the torch modules: the same constructor,
parameters (names, shapes, initialisation), ``state_dict`` and forward signature and outputs
(``output, h_n`` / ``output, (h_n, c_n)``; batched or unbatched input; ``hx`` optional;
``PackedSequence`` in and out, sorted or not). Only the forward differs: the whole stack runs
as one :func:`rnncore.recurrent_forward` call and autograd's backward as one
:func:`rnncore.recurrent_backward` call (native C++ on rnncore's thread team, or the NumPy twin
under ``rnncore.use_backend("numpy")``), through a ``torch.autograd.Function``. The input,
states, weights and output gradients reach rnncore as views of the tensors' own memory when
they are C-contiguous (the weight matrices in torch's layout, ``weight_layout="torch"``, which
the kernels read as they are), a ``PackedSequence`` is padded (rnncore's ``lengths`` then
keep the padding out), and a one-direction stack's output is copied out of the buffer the
backward reads, so the caller may change it in place as with torch's module. Importing this
module imports torch; ``import rnncore`` never does.

:func:`patch` turns every ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` inside an existing model into
these classes in place (the modules, their Parameters, hooks and training mode stay the same
objects, so an optimizer built earlier keeps working); :func:`unpatch` turns them back, and
``with patched(model):`` does both around a block.

What it runs: CPU tensors of float32 or float64 (input, states and parameters all of one
dtype), every cell (``nonlinearity`` "tanh" or "relu"), ``num_layers``, ``bidirectional``,
``bias=False``, ``batch_first`` and dropout between layers. In training mode with
``dropout > 0`` the masks are inverted dropout (kept outputs scaled by ``1 / (1 - dropout)``)
drawn from a seed that is itself drawn from torch's default generator, so ``torch.manual_seed``
reproduces a run; the masks are not the same draws as torch's own module makes. What it
does not run raises before any work, naming the argument: tensors on another device,
``proj_size > 0``, float16 / bfloat16 and mixed dtypes, shapes that do not fit, and a second
derivative (the backward is ``once_differentiable``).

Threads: torch's intra-op pool is OpenMP (libgomp), whose threads spin for a while after each
parallel op before they sleep. rnncore's own team, starting right after torch's embedding or
linear layer, would find its cores taken: measured on 2 cores (``bench/torch_swap.py``), a
patched LSTM step at batch 8 took 1.7x the time of torch's own. So at its first call this
module has rnncore run its parallel regions on torch's OpenMP team instead
(:func:`rnncore.threads.borrow_openmp`): its threads are awake when rnncore's call starts, and the
program has one team. rnncore's thread count stays its own (``rnncore.set_num_threads`` /
``RNNCORE_NUM_THREADS``; torch's ops keep ``torch.set_num_threads``), and so do the work split
and the results (the same bits as on rnncore's workers, for any thread count).
:func:`share_threads` turns this off or on (before the first call, or at any time after it).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .recurrent import recurrent_backward, recurrent_forward
from .threads import borrow_openmp, openmp_of

__all__ = ["RNN", "LSTM", "GRU", "patch", "unpatch", "patched", "share_threads"]

#: torch's ``module.mode`` -> (rnncore's mode, Elman activation)
_MODES = {"RNN_TANH": ("rnn", "tanh"), "RNN_RELU": ("rnn", "relu"), "LSTM": ("lstm", "tanh"),
          "GRU": ("gru", "tanh")}
_DTYPES = (torch.float32, torch.float64)


# -- threads ----------------------------------------------------------------------------------

_sharing = None  # share_threads' last word, or None: decided at the first call (on)


def share_threads(on: bool = True) -> bool:
    """Run rnncore's parallel regions on torch's OpenMP team (``on``, what the first call of this
    module's layers does by itself) or on rnncore's own workers; returns whether they now run
    on torch's. False when torch's OpenMP runtime is not libgomp (or not found): rnncore's own
    workers then stay."""
    global _sharing
    if not isinstance(on, (bool, np.bool_)):
        raise TypeError(f"share_threads: on must be a bool, got {type(on).__name__}")
    _sharing = bool(on)
    if not on:
        return borrow_openmp(None)
    path = openmp_of(os.path.join(os.path.dirname(torch.__file__), "lib"))
    return borrow_openmp(path) if path else False


def _first_call() -> None:
    if _sharing is None:
        share_threads(True)


# -- the autograd function --------------------------------------------------------------------

@dataclass(frozen=True, eq=False)  # holds an array: compared and hashed by identity
class _Spec:
    """Everything of one call that is not a tensor."""

    mode: str                      # "rnn", "lstm" or "gru"
    activation: str                # the Elman nonlinearity ("tanh" for the gated cells)
    num_layers: int
    bidirectional: bool
    bias: bool
    batch_first: bool
    dropout: float
    training: bool
    seed: Optional[int]            # dropout masks' seed (drawn from torch's generator), or None
    lengths: Optional[np.ndarray]  # (B,) valid steps of each sequence, or None (all T)
    inference: bool = False        # no gradient can be asked for: rnncore keeps no cache

    @property
    def num_dirs(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def per_direction(self) -> int:
        """Parameter tensors of one layer and direction: w_ih, w_hh (, b_ih, b_hh)."""
        return 4 if self.bias else 2


def _view(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    """The tensor's memory as a C-contiguous array: no copy when it is contiguous already."""
    if t is None:
        return None
    return t.detach().contiguous().numpy()


def _rnncore_weights(spec: _Spec, params) -> list:
    """torch's flat parameter list -> ``(w_ih, w_hh, b_ih, b_hh)`` per layer and direction, in
    torch's own layout (``recurrent_forward(..., weight_layout="torch")``): views of the
    parameters' memory, the biases zeros without them."""
    weights = []
    k = spec.per_direction
    for i in range(0, len(params), k):
        w_ih, w_hh = _view(params[i]), _view(params[i + 1])
        if spec.bias:
            b_ih, b_hh = _view(params[i + 2]), _view(params[i + 3])
        else:
            b_ih = b_hh = np.zeros(w_hh.shape[0], w_hh.dtype)
        weights.append((w_ih, w_hh, b_ih, b_hh))
    return weights


def _output(a: np.ndarray) -> torch.Tensor:
    """The forward's output as a tensor the caller owns. When it is the read-only view of what
    the backward reads (the last layer's ``hs`` of a one-direction stack) it is copied, so that
    in-place use of it (``out += residual``) works as with torch's module; a bidirectional
    stack's concatenated output is fresh already and is shared as it is."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


class _Recurrent(torch.autograd.Function):
    """``(output, h_n[, c_n]) = recurrent(x, h0, c0, *params)`` on rnncore, with its BPTT."""

    @staticmethod
    def forward(ctx, spec, x, h0, c0, *params):
        _first_call()
        out, h_n, c_n, cache = recurrent_forward(
            spec.mode, _view(x), _rnncore_weights(spec, params), _view(h0), _view(c0),
            num_layers=spec.num_layers, bidirectional=spec.bidirectional, dropout=spec.dropout,
            training=spec.training, rng=spec.seed, batch_first=spec.batch_first, lengths=spec.lengths,
            activation=spec.activation, weight_layout="torch", inference=spec.inference)
        ctx.spec, ctx.cache = spec, cache
        ctx.set_materialize_grads(False)  # unused outputs' gradients arrive as None: no work for them
        # rnncore's cache reads x, h0, c0 and the biases themselves: saved, autograd's version
        # counters make an in-place change of any of them before backward an error (as torch's does)
        ctx.save_for_backward(x, h0, c0, *params)
        if spec.mode == "lstm":
            return _output(out), torch.from_numpy(h_n), torch.from_numpy(c_n)
        return _output(out), torch.from_numpy(h_n)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dh_n, dc_n=None):
        ctx.saved_tensors  # noqa: B018 -- raises if any of them was modified in place since the forward
        dx, dweights, dh0, dc0 = recurrent_backward(_view(dout), ctx.cache, _view(dh_n), _view(dc_n))
        # per input of forward: spec, x, h0, c0, *params (the weight gradients in torch's layout)
        grads = [None, dx, dh0, dc0]
        for dwx, dwh, db_ih, db_hh in dweights:
            grads += [dwx, dwh] + ([db_ih, db_hh] if ctx.spec.bias else [])
        return tuple(torch.from_numpy(a) if a is not None and need else None
                     for a, need in zip(grads, ctx.needs_input_grad))


# -- checks -------------------------------------------------------------------------------------

def _cell(module, where: str):
    """(rnncore mode, activation) of a torch recurrent module; raises for what rnncore lacks."""
    if getattr(module, "proj_size", 0):
        raise NotImplementedError(f"{where}: proj_size={module.proj_size} (LSTM projections) is not supported "
                                  f"by rnncore.torch; use torch.nn.LSTM")
    if module.mode not in _MODES:
        raise ValueError(f"{where}: unknown recurrent mode {module.mode!r}")
    return _MODES[module.mode]


def _check_params(params, where: str) -> torch.dtype:
    """Every parameter a CPU tensor of one supported dtype; returns it."""
    dtype = params[0][1].dtype
    for name, p in params:
        if p.device.type != "cpu":
            raise NotImplementedError(f"{where}: parameter {name} is on {p.device}; rnncore.torch runs on CPU "
                                      f"tensors only (keep the model on the CPU, or use torch.nn's module)")
        if p.dtype not in _DTYPES:
            raise TypeError(f"{where}: parameter {name} has dtype {p.dtype}; rnncore.torch supports float32 and "
                            f"float64 (call .float() or .double() on the module)")
        if p.dtype != dtype:
            raise TypeError(f"{where}: parameter {name} has dtype {p.dtype} but {params[0][0]} has {dtype}; "
                            f"every parameter must have one dtype")
    return dtype


def _check_tensor(t, name: str, dtype: torch.dtype, where: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise NotImplementedError(f"{where}: {name} is on {t.device}; rnncore.torch runs on CPU tensors only")
    if t.dtype != dtype:
        raise TypeError(f"{where}: {name} has dtype {t.dtype} but the module's parameters are {dtype}; "
                        f"rnncore.torch never converts precision (convert {name} or the module)")


def _named_params(module) -> list:
    return [(name, getattr(module, name)) for names in module._all_weights for name in names]


# -- the forward --------------------------------------------------------------------------------

def _unpack(module, input, dtype, where):
    """The input as (x, lengths, batch_first, batched, packed): x a padded (T, B, D) tensor (or
    the user's own, unchanged) and packed = (batch_sizes, sorted_indices, unsorted_indices)."""
    if isinstance(input, PackedSequence):
        data, batch_sizes, sorted_idx, unsorted_idx = input
        _check_tensor(data, "input.data", dtype, where)
        if data.dim() != 2 or data.shape[-1] != module.input_size:
            raise ValueError(f"{where}: input.data (a PackedSequence's) must have shape (sum of lengths, "
                             f"input_size) = (N, {module.input_size}), got {tuple(data.shape)}")
        # sorted order, time-major: the batch in the order of the packed data
        x, lengths = pad_packed_sequence(PackedSequence(data, batch_sizes), batch_first=False)
        return x, lengths.numpy().astype(np.int32), False, True, (batch_sizes, sorted_idx, unsorted_idx)
    _check_tensor(input, "input", dtype, where)
    if input.dim() not in (2, 3):
        raise ValueError(f"{where}: input must be 3-D ({'(B, T, D)' if module.batch_first else '(T, B, D)'}) or "
                         f"2-D (T, D) unbatched, got shape {tuple(input.shape)}")
    if input.shape[-1] != module.input_size:
        raise ValueError(f"{where}: input.size(-1) must be input_size = {module.input_size}, "
                         f"got shape {tuple(input.shape)}")
    if min(input.shape) < 1:
        raise ValueError(f"{where}: input must have every size >= 1, got shape {tuple(input.shape)}")
    if input.dim() == 2:
        return input.unsqueeze(1), None, False, False, None
    return input, None, bool(module.batch_first), True, None


def _states(module, hx, mode, B, batched, sorted_idx, dtype, where):
    """``hx`` as the (h0, c0) the function takes ((L * dirs, B, H) each, or None), in the
    order of the packed batch when the input was packed."""
    if hx is None:
        return None, None
    L, H = module.num_layers * (2 if module.bidirectional else 1), module.hidden_size
    if mode == "lstm":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{where}: hx must be a tuple (h_0, c_0) for an LSTM, got {type(hx).__name__}")
        states = [(f"hx[{i}] ({n})", s) for i, (n, s) in enumerate(zip(("h_0", "c_0"), hx))]
    else:
        if not isinstance(hx, torch.Tensor):
            raise TypeError(f"{where}: hx must be a torch.Tensor (h_0), got {type(hx).__name__}")
        states = [("hx", hx)]
    expected = (L, B, H) if batched else (L, H)
    legend = "(num_layers * num_directions, B, hidden_size)" if batched else \
        "(num_layers * num_directions, hidden_size) for unbatched input"
    out = []
    for name, s in states:
        _check_tensor(s, name, dtype, where)
        if tuple(s.shape) != expected:
            raise ValueError(f"{where}: {name} must have shape {legend} = {expected}, got {tuple(s.shape)}")
        if not batched:
            s = s.unsqueeze(1)
        elif sorted_idx is not None:
            s = s.index_select(1, sorted_idx)
        out.append(s)
    return out[0], (out[1] if mode == "lstm" else None)


def _raise_non_finite(where, named_tensors, error):
    """Raise naming the first of ``(name, tensor)`` that holds a NaN or infinity, if any (the
    error path of a call rnncore refused: its own message names the op's arguments)."""
    for name, t in named_tensors:
        if t is not None and not bool(torch.isfinite(t.detach()).all()):
            raise ValueError(f"{where}: {name} contains NaN or infinity; rnncore computes with finite "
                             f"values only") from error


def _dropout_seed(module) -> Optional[int]:
    """A seed for the dropout masks, drawn from torch's default generator (only when the masks
    are used, so eval-mode and dropout-free calls leave the generator as they found it)."""
    if module.training and module.dropout > 0 and module.num_layers > 1:
        return int(torch.randint(0, 2**62, (), dtype=torch.int64))
    return None


def _forward(module, input, hx=None):
    where = f"rnncore.torch.{type(module).__name__}"
    mode, activation = _cell(module, where)
    named = _named_params(module)
    dtype = _check_params(named, where)
    x, lengths, batch_first, batched, packed = _unpack(module, input, dtype, where)
    B = x.shape[0 if batch_first else 1]
    sorted_idx = packed[1] if packed is not None else None
    h0, c0 = _states(module, hx, mode, B, batched, sorted_idx, dtype, where)
    params = [p for _, p in named]
    # under torch.no_grad() / inference_mode(), or with nothing that requires a gradient, autograd
    # records no graph: the forward keeps no cache for a backward that cannot come
    inference = not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in [x, h0, c0] + params))
    spec = _Spec(mode, activation, module.num_layers, bool(module.bidirectional), bool(module.bias), batch_first,
                 float(module.dropout), bool(module.training), _dropout_seed(module), lengths, inference)
    try:
        out, *state = _Recurrent.apply(spec, x, h0, c0, *params)
    except ValueError as e:  # what only rnncore checks: finite values; say which tensor in torch's names
        hx_names = ("hx[0] (h_0)", "hx[1] (c_0)") if mode == "lstm" else ("hx", None)
        _raise_non_finite(where, [("input", x), (hx_names[0], h0), (hx_names[1], c0)] + named, e)
        raise
    if packed is not None:
        batch_sizes, sorted_idx, unsorted_idx = packed
        data = pack_padded_sequence(out, torch.from_numpy(lengths.astype(np.int64)), enforce_sorted=True).data
        out = PackedSequence(data, batch_sizes, sorted_idx, unsorted_idx)
        if unsorted_idx is not None:
            state = [s.index_select(1, unsorted_idx) for s in state]
    elif not batched:
        out = out.squeeze(1)
        state = [s.squeeze(1) for s in state]
    return (out, tuple(state)) if mode == "lstm" else (out, state[0])


# -- the modules --------------------------------------------------------------------------------

class RNN(nn.RNN):
    """``torch.nn.RNN`` (same arguments, parameters and outputs) computed by rnncore."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _cell(self, "rnncore.torch.RNN")

    forward = _forward


class LSTM(nn.LSTM):
    """``torch.nn.LSTM`` (same arguments, parameters and outputs) computed by rnncore;
    ``proj_size > 0`` raises NotImplementedError."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _cell(self, "rnncore.torch.LSTM")

    forward = _forward


class GRU(nn.GRU):
    """``torch.nn.GRU`` (same arguments, parameters and outputs) computed by rnncore."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _cell(self, "rnncore.torch.GRU")

    forward = _forward


# -- swapping them into a model -----------------------------------------------------------------

_TO_RNNCORE = {nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU}
_TO_TORCH = {v: k for k, v in _TO_RNNCORE.items()}


def _swap(model, table, what):
    """Change the class of every module of ``model`` whose exact type is in ``table``; returns
    the modules changed. Subclasses of the torch modules (a user's own) are left alone."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what}: model must be a torch.nn.Module, got {type(model).__name__}")
    found = [(name or "model", m) for name, m in model.named_modules() if type(m) in table]
    if table is _TO_RNNCORE:  # everything checked before anything is changed
        for name, m in found:
            where = f"{what}: {name} ({type(m).__name__})"
            _cell(m, where)
            _check_params(_named_params(m), where)
    for _, m in found:
        m.__class__ = table[type(m)]
    return [m for _, m in found]


def patch(model):
    """Make every ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` in ``model`` (``model`` itself included)
    run on rnncore, in place; returns ``model``.

    Each module's class becomes :class:`RNN` / :class:`LSTM` / :class:`GRU`: the module, its
    Parameters, buffers, hooks and training mode stay the very same objects, so references to
    it and optimizers built before the call keep working. Subclasses of the torch modules are
    left as they are. Raises, changing nothing, if one of the modules cannot run on rnncore
    (``proj_size > 0``, parameters not on the CPU or not float32/float64).
    """
    _swap(model, _TO_RNNCORE, "rnncore.torch.patch")
    return model


def unpatch(model):
    """Undo :func:`patch`: every rnncore module in ``model`` back to the torch class; returns
    ``model``."""
    _swap(model, _TO_TORCH, "rnncore.torch.unpatch")
    return model


@contextlib.contextmanager
def patched(model):
    """``with patched(model): ...`` runs the block with ``model``'s recurrent modules on rnncore
    and restores those it changed afterwards (modules already on rnncore stay so)."""
    changed = _swap(model, _TO_RNNCORE, "rnncore.torch.patched")
    try:
        yield model
    finally:
        for m in changed:
            m.__class__ = _TO_TORCH[type(m)]
