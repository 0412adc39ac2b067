"""The ``rnncore`` command line: ``train``, ``sample``, ``export`` and ``bench``.

``rnncore train`` with no arguments trains a character-level LSTM language model on the
Python standard library's own sources (no download) and reports its validation perplexity
against the unigram baseline. ``rnncore sample CHECKPOINT`` writes text from a trained model;
``rnncore export CHECKPOINT OUT.onnx`` writes it as an ONNX graph (:mod:`rnncore.onnx`).
``rnncore bench`` prints the backend comparison table (:mod:`rnncore.benchmark`).
Bad arguments give a one-line message on stderr and a non-zero exit, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from . import cells

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(cast, ok, expected):
    """An argparse type: cast the string, then check it, with a one-line message."""

    def parse(s):
        try:
            v = cast(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}")
        return v

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")
_fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def build_parser() -> argparse.ArgumentParser:
    from .train import TrainConfig

    d = TrainConfig()
    ap = _Parser(prog="rnncore", description="Fast CPU recurrent networks: train and sample language models, "
                                              "compare backends.")
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="command", metavar="{train,sample,export,bench}")

    t = sub.add_parser("train", help="train a language model (default: character LSTM on the stdlib sources)",
                       description="Train a recurrent language model with truncated BPTT. With no options: a "
                                   "character-level LSTM on the Python standard library's own sources.")
    t.add_argument("--corpus", metavar="PATH", help="UTF-8 text file or folder (default: the stdlib .py sources)")
    t.add_argument("--level", choices=("char", "word"), default=d.level, help="tokens (default %(default)s)")
    t.add_argument("--cell", choices=cells.cells(), default=d.cell, help="recurrent cell (default %(default)s)")
    t.add_argument("--hidden", type=_positive_int, default=d.hidden, help="hidden units (default %(default)s)")
    t.add_argument("--embed", type=_positive_int, default=None, help="embedding size (default min(hidden, 64))")
    t.add_argument("--layers", type=_positive_int, default=d.layers, help="stacked layers (default %(default)s)")
    t.add_argument("--dropout", type=_fraction, default=d.dropout, help="dropout (default %(default)s)")
    t.add_argument("--seq-len", type=_positive_int, default=d.seq_len, help="BPTT steps per chunk (default %(default)s)")
    t.add_argument("--batch", type=_positive_int, default=d.batch, help="parallel streams (default %(default)s)")
    t.add_argument("--steps", type=_nonneg_int, default=d.steps, help="training steps (default %(default)s)")
    t.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default 3e-3; a resumed run: its own)")
    t.add_argument("--clip", type=_positive_float, default=None,
                   help="max gradient norm (default 5.0; a resumed run: its own)")
    t.add_argument("--optimizer", choices=("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"),
                   default=d.optimizer, help="(default %(default)s)")
    t.add_argument("--eval-every", type=_positive_int, default=d.eval_every,
                   help="validate and checkpoint every N steps (default %(default)s)")
    t.add_argument("--sample-every", type=_positive_int, default=d.sample_every,
                   help="print a sample every N steps (default %(default)s)")
    t.add_argument("--max-chars", type=_nonneg_int, default=d.max_chars,
                   help="read at most this many characters of the corpus, 0 for all (default %(default)s)")
    t.add_argument("--dtype", choices=("float32", "float64"), default=d.dtype, help="(default %(default)s)")
    t.add_argument("--seed", type=_nonneg_int, default=d.seed, help="random seed; the same seed gives the same run "
                                                            "(default %(default)s)")
    t.add_argument("--out", metavar="DIR", help="output folder (default runs/<level>-<cell>-<time>)")
    t.add_argument("--resume", metavar="CKPT", help="continue from a checkpoint (model, data and optimizer "
                                                    "settings come from it)")
    t.add_argument("--backend", choices=("native", "numpy"), help="implementation of the recurrent ops")
    t.add_argument("--threads", type=_positive_int, help="threads for rnncore and NumPy's BLAS")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Generate text from a checkpoint written by rnncore train.")
    s.add_argument("checkpoint", metavar="CHECKPOINT", help="model.npz from rnncore train")
    s.add_argument("--length", type=_nonneg_int, default=500, help="tokens to generate (default %(default)s)")
    s.add_argument("--temperature", type=_positive_float, default=0.8, help="(default %(default)s)")
    s.add_argument("--top-k", type=_positive_int, default=None, help="sample among the k most likely tokens")
    s.add_argument("--prime", default=None, help="text to start from (default a newline)")
    s.add_argument("--seed", type=_nonneg_int, default=None, help="random seed (default: fresh randomness)")
    s.add_argument("--backend", choices=("native", "numpy"), help="implementation of the recurrent ops")

    _add_export_parser(sub)
    sub.add_parser("bench", help="compare rnncore's backends (and PyTorch if installed); see rnncore bench --help",
                   add_help=False)
    return ap


def _add_export_parser(sub):
    e = sub.add_parser("export", help="write a checkpoint's language model as an ONNX graph",
                       description="Write the language model of a checkpoint from rnncore train as an ONNX graph "
                                   "(needs the onnx package: pip install 'rnncore[onnx]'). The graph maps tokens "
                                   "[batch, time] int64 to scores [batch, time, vocab], the logits "
                                   "LanguageModel.predict returns from a fresh state.")
    e.add_argument("checkpoint", metavar="CHECKPOINT", help="model.npz from rnncore train")
    e.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    e.add_argument("--lengths", action="store_true",
                   help="add the input lengths [batch] int64: each sequence's valid steps")
    e.add_argument("--state", action="store_true",
                   help="add the inputs h0 (and c0) and outputs h_n (and c_n) to carry the state between calls")
    e.add_argument("--dtype", choices=("float32", "float64"), default=None,
                   help="float type of the graph (default the checkpoint's; onnxruntime runs the recurrent "
                        "operators in float32 only)")


def _version():
    try:
        from ._version import __version__

        return f"rnncore {__version__}"
    except ImportError:  # pragma: no cover
        return "rnncore"


def train_config(args):
    """The :class:`rnncore.train.TrainConfig` of parsed ``rnncore train`` arguments."""
    from .train import TrainConfig

    return TrainConfig(corpus=args.corpus, level=args.level, cell=args.cell, hidden=args.hidden, embed=args.embed,
                       layers=args.layers, dropout=args.dropout, seq_len=args.seq_len, batch=args.batch,
                       steps=args.steps, lr=args.lr, clip=args.clip, optimizer=args.optimizer,
                       eval_every=args.eval_every, sample_every=args.sample_every, max_chars=args.max_chars,
                       dtype=args.dtype, seed=args.seed, out=args.out, resume=args.resume, backend=args.backend,
                       threads=args.threads, progress=not args.no_progress)


def _cmd_train(args) -> int:
    from .distributed import world_from_launcher
    from .train import train

    train(train_config(args), comm=world_from_launcher())  # under mpiexec -n N (N > 1): data-parallel
    return 0


def _cmd_sample(args) -> int:
    import contextlib

    import numpy as np

    from ._backend import use_backend
    from .models import LanguageModel

    model = LanguageModel.load(args.checkpoint)
    tok = model.tokenizer
    if tok is None:
        raise ValueError(f"{args.checkpoint} has no tokenizer")
    prime = args.prime
    if prime is None:
        prime = "\n" if tok.kind == "char" and "\n" in tok.chars else None
        ids = tok.encode(prime) if prime is not None else np.zeros(1, np.int32)
        prime = tok.decode(ids)
    else:
        ids = tok.encode(prime)
        if len(ids) == 0:
            raise ValueError("--prime gives no tokens")
    ctx = use_backend(args.backend) if args.backend else contextlib.nullcontext()
    with ctx:
        new = model.generate(ids, args.length, temperature=args.temperature, top_k=args.top_k,
                             rng=np.random.default_rng(args.seed))
    sep = " " if tok.kind == "word" and len(new) else ""
    sys.stdout.write(prime + sep + tok.decode(new) + "\n")
    return 0


def _signature(values) -> str:
    """``name [dim, ...]`` of a graph's inputs or outputs, symbolic dims by name."""
    return ", ".join(f"{v.name} [{', '.join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)}]"
                     for v in values)


def _cmd_export(args) -> int:
    import os

    from .models import LanguageModel

    try:
        from . import onnx as rnncore_onnx

        rnncore_onnx.require()
    except ImportError as e:
        print(f"rnncore export: error: {e}", file=sys.stderr)
        return 1
    model = LanguageModel.load(args.checkpoint)
    if os.path.exists(args.out) and os.path.samefile(args.out, args.checkpoint):
        raise ValueError(f"OUT.onnx {args.out!r} is the checkpoint itself; give another file name")
    proto = rnncore_onnx.export_model(model, args.out, lengths=args.lengths, state=args.state, dtype=args.dtype)
    cfg = model.config
    dtype = args.dtype or cfg["dtype"]
    print(f"wrote {args.out}: {cfg['cell']}, {cfg['num_layers']} layer(s), vocab {cfg['vocab_size']}, {dtype}, "
          f"opset {rnncore_onnx.OPSET}; {_signature(proto.graph.input)} -> {_signature(proto.graph.output)}")
    if dtype == "float64":
        print("rnncore export: note: onnxruntime's CPU provider runs RNN/LSTM/GRU in float32 only; "
              "export with --dtype float32 to run the graph there", file=sys.stderr)
    return 0


def main(argv=None) -> int:
    """Entry point of the ``rnncore`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":
            try:
                from . import benchmark
            except ImportError as e:
                print(f"rnncore bench: error: the benchmark module is not available ({e})", file=sys.stderr)
                return 1
            return int(benchmark.main(argv[1:]) or 0)
        ap = build_parser()
        try:
            args = ap.parse_args(argv)
        except SystemExit as e:  # argparse: --help/--version (0) or a bad argument (2, message printed)
            return e.code if isinstance(e.code, int) else 0
        if args.command is None:
            ap.print_help(sys.stderr)
            return 2
        if args.command == "train":
            return _cmd_train(args)
        if args.command == "export":
            return _cmd_export(args)
        return _cmd_sample(args)
    except KeyboardInterrupt:
        print("rnncore: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError, RuntimeError, KeyError, FloatingPointError) as e:
        cmd = argv[0] if argv and argv[0] in ("train", "sample", "export") else ""
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"rnncore{' ' + cmd if cmd else ''}: error: {msg}", file=sys.stderr)
        return 1
