"""Run by tests/test_mpi.py under ``mpiexec -n N``: ``rnncore train`` through the library API, with
an optional fault, then a check that every rank ends with the same weights.

    mpiexec -n 2 python tests/mpi_worker.py MODE [rnncore train options]

MODE: ``train`` (train, then rank 0 prints ``WORKER {json}`` with one weight digest per rank),
``fail`` (rank 1 raises RuntimeError in its 3rd backward, after printing ``RAISING <time>`` on
stderr), ``kill`` (rank 1 kills itself with SIGKILL in its 7th backward), ``drift`` (rank 1
nudges one weight in its 2nd backward).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time

from mpi4py import MPI

from rnncore.cli import build_parser, train_config
from rnncore.models import LanguageModel
from rnncore.train import train


def _fault(comm, at, action):
    original = LanguageModel.backward
    calls = [0]

    def backward(self, dout=1.0):
        calls[0] += 1
        if comm.Get_rank() == 1 and calls[0] == at:
            action()
        return original(self, dout)

    LanguageModel.backward = backward


def _raise():
    sys.stderr.write(f"RAISING {time.time():.6f}\n")
    sys.stderr.flush()
    raise RuntimeError("injected failure")


def _remember_model():
    original = LanguageModel.loss

    def loss(self, xs, ts):
        LanguageModel.last = self
        return original(self, xs, ts)

    LanguageModel.loss = loss


def _nudge(model):
    w = model.params[0]
    w.flat[0] = w.dtype.type(w.flat[0] + abs(w.flat[0]) * 1e-12 + 1e-300)


def main(argv):
    mode, rest = argv[0], argv[1:]
    comm = MPI.COMM_WORLD
    cfg = train_config(build_parser().parse_args(["train", *rest]))
    if mode == "fail":
        _fault(comm, 3, _raise)
    elif mode == "kill":
        _fault(comm, 7, lambda: os.kill(os.getpid(), signal.SIGKILL))
    elif mode == "drift":  # rank 1 nudges one of its weights in step 2
        _fault(comm, 2, lambda: _nudge(LanguageModel.last))
        _remember_model()
    elif mode != "train":
        raise SystemExit(f"unknown mode {mode!r}")
    summary = train(cfg, comm=comm)
    model = summary["model"]
    digest = hashlib.sha256(b"".join(p.tobytes() for p in model.params)).hexdigest()
    digests = comm.allgather(digest)
    if comm.Get_rank() == 0:
        print("WORKER " + json.dumps({"digests": digests, "ranks": comm.Get_size(), "steps": summary["steps"],
                                      "val_ppl": summary["val_ppl"]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
