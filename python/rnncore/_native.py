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
    """inp: the call's Inputs (_checks.py), read by name on the C++ side, as in backward."""
    _quiet()
    return core.forward(inp)


def backward(cache, dhs, dh_n, dc_n):
    _quiet()
    return core.backward(cache.inputs, cache.hs, cache.gates, cache.cs, dhs, dh_n, dc_n)
