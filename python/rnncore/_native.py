"""The native implementation: rnncore._core behind the driver interface of reference.py."""
from __future__ import annotations

try:
    from . import _core as core
except ImportError as exc:  # a source checkout without a build
    core = None
    import_error = exc
else:
    import_error = None


_quiet_other_pools = None  # threads.quiet_other_pools, bound at the first call (threads imports this module)


def _quiet():
    global _quiet_other_pools
    if _quiet_other_pools is None:
        from .threads import quiet_other_pools as _quiet_other_pools
    _quiet_other_pools()


def forward(inp):
    _quiet()
    return core.forward(inp.cell, inp.x, inp.wx, inp.wh, inp.b_ih, inp.b_hh, inp.h0, inp.c0, inp.lengths,
                        inp.batch_first, inp.activation)


def backward(cache, dhs, dh_n, dc_n):
    _quiet()
    i = cache.inputs
    return core.backward(i.cell, i.activation, i.batch_first, i.x, i.wx, i.wh, i.b_ih, i.b_hh, i.h0, i.c0,
                         i.lengths, cache.hs, cache.gates, cache.cs, dhs, dh_n, dc_n)
