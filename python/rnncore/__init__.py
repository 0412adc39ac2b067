"""rnncore: fast CPU recurrent networks.

Functional ops (NumPy arrays in and out) for the Elman RNN, LSTM and GRU: a forward over
all time steps and its backpropagation through time, in C++ (thread team + BLAS) with a
NumPy twin in :mod:`rnncore.reference`. Pick the implementation with :func:`set_backend`.

The cells are registered in :mod:`rnncore.cells` (one spec each: the built-in Elman RNN, LSTM
and GRU, and any of one's own). The library's modules load with the package
(``rnncore.cells``, ``rnncore.layers``, ``rnncore.time_layers``,
``rnncore.optim``, ``rnncore.models``, ``rnncore.data``, ``rnncore.gradcheck``); the
applications and the optional integrations load when imported: ``rnncore.train``,
``rnncore.cli``, ``rnncore.benchmark``, ``rnncore.textbook``, and ``rnncore.torch``,
``rnncore.onnx``, ``rnncore.distributed`` (which need PyTorch, onnx, mpi4py).
"""
from __future__ import annotations

from . import cells, data, gradcheck, layers, models, optim, reference, time_layers
from ._backend import get_backend, set_backend, use_backend
from ._cache import Cache
from ._ops import gru_backward, gru_forward, lstm_backward, lstm_forward, rnn_backward, rnn_forward
from ._version import __version__
from .interop import from_state_dict, load_npz, save_npz, to_state_dict
from .losses import softmax_cross_entropy, softmax_cross_entropy_backward
from .recurrent import init_weights, recurrent_backward, recurrent_forward
from .threads import blas_info, get_num_threads, kernel_info, num_threads, set_isa, set_num_threads, use_isa

__all__ = [
    "rnn_forward", "rnn_backward", "lstm_forward", "lstm_backward", "gru_forward", "gru_backward",
    "recurrent_forward", "recurrent_backward", "init_weights",
    "to_state_dict", "from_state_dict", "save_npz", "load_npz",
    "softmax_cross_entropy", "softmax_cross_entropy_backward",
    "set_backend", "get_backend", "use_backend", "get_num_threads", "set_num_threads", "num_threads",
    "blas_info", "kernel_info", "set_isa", "use_isa", "reference", "Cache", "__version__",
    "cells", "layers", "time_layers", "optim", "models", "data", "gradcheck",
]
