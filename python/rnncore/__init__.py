"""rnncore: fast CPU recurrent networks.

Functional ops (NumPy arrays in and out) for the Elman RNN, LSTM and GRU: a forward over
all time steps and its backpropagation through time, in C++ (OpenMP + BLAS) with a NumPy
twin in :mod:`rnncore.reference`. Pick the implementation with :func:`set_backend`.
"""
from __future__ import annotations

from . import reference
from ._backend import get_backend, implementation as _implementation, set_backend, use_backend
from ._cache import Cache
from ._ops import make_ops as _make_ops
from .threads import blas_info, get_num_threads, kernel_info, num_threads, set_isa, set_num_threads, use_isa

__version__ = "0.1.0"

(rnn_forward, rnn_backward, lstm_forward, lstm_backward, gru_forward, gru_backward) = _make_ops(
    _implementation, __name__)

__all__ = [
    "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
    "recurrent_forward", "recurrent_backward", "init_weights",
    "to_state_dict", "from_state_dict", "save_npz", "load_npz",
    "softmax_cross_entropy", "softmax_cross_entropy_backward",
    "set_backend", "get_backend", "use_backend", "get_num_threads", "set_num_threads", "num_threads",
    "blas_info", "kernel_info", "set_isa", "use_isa", "reference", "Cache", "__version__",
]

from .losses import softmax_cross_entropy, softmax_cross_entropy_backward  # noqa: E402
from .interop import from_state_dict, load_npz, save_npz, to_state_dict  # noqa: E402
from .recurrent import init_weights, recurrent_backward, recurrent_forward  # noqa: E402

# Larger submodules load on first use: rnncore.layers, rnncore.time_layers, rnncore.optim, ...
_SUBMODULES = ("layers", "time_layers", "optim", "models", "data", "train", "gradcheck", "benchmark", "cli")


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
