"""Training loop for :class:`rnncore.models.LanguageModel` (what ``rnncore train`` runs).

``train(TrainConfig(...))`` reads a corpus (default: the Python standard library's own
sources), fits a tokenizer, and trains with truncated BPTT: the text is cut into ``batch``
parallel streams read ``seq_len`` tokens at a time, the recurrent state carried from one
chunk to the next and reset at each new pass. Adam with gradient-norm clipping. It shows a
tqdm bar (loss, perplexity), evaluates validation perplexity every ``eval_every`` steps,
prints a sample every ``sample_every`` steps, writes a checkpoint (``model.npz``: weights,
tokenizer, optimizer and recurrent state, so ``resume`` continues the same run exactly) and
a loss plot (``loss.png``, when matplotlib is installed), and finally compares the
validation perplexity with the unigram baseline. Every run writes ``metrics.jsonl`` beside the
checkpoint: one JSON object a training step (``step``, ``loss``, ``seconds``, ``grad_norm``, and
``val_ppl`` on the steps that validate).

With a communicator (``train(cfg, comm=MPI.COMM_WORLD)``, what ``mpiexec -n N rnncore train``
does) the same run is trained data-parallel: rank r reads its contiguous block of the ``batch``
streams, the gradients of the global-batch mean loss are summed with one allreduce of one flat
buffer per step, and every rank applies the same update. Rank 0 alone prints, validates,
samples and writes the checkpoint (which holds the global step and every stream's state, so a
run resumes on any number of ranks) and the metrics.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import cells
from . import data as _data
from . import distributed as _dist
from .models import LanguageModel
from .optim import OPTIMIZERS, clip_grads

__all__ = ["TrainConfig", "train", "checkpoint_path", "metrics_path"]

DEFAULT_LR, DEFAULT_CLIP = 3e-3, 5.0


def _full_path(path):
    return os.path.abspath(os.path.expanduser(path))


#: options a resumed run takes from the checkpoint (they fix the model and the data stream)
_FROM_CHECKPOINT = ("corpus", "level", "max_chars", "max_vocab", "cell", "hidden", "embed", "layers", "dropout",
                    "seq_len", "batch", "seed", "optimizer", "dtype", "val_fraction")


@dataclass
class TrainConfig:
    corpus: Optional[str] = None  # file or folder; None: the stdlib sources
    level: str = "char"  # "char" or "word"
    cell: str = "lstm"
    hidden: int = 256
    embed: Optional[int] = None  # default min(hidden, 64)
    layers: int = 1
    dropout: float = 0.0
    seq_len: int = 64
    batch: int = 32
    steps: int = 1500
    lr: Optional[float] = None  # None: 3e-3, or a resumed run's own
    clip: Optional[float] = None  # None: 5.0, or a resumed run's own; 0: no clipping
    optimizer: str = "adam"
    eval_every: int = 250
    sample_every: int = 500
    sample_len: int = 240
    max_chars: int = 3_000_000
    max_vocab: int = 10000
    val_fraction: float = 0.05
    seed: int = 0
    dtype: str = "float32"
    out: Optional[str] = None
    resume: Optional[str] = None
    backend: Optional[str] = None
    threads: Optional[int] = None
    progress: bool = True
    plot: bool = True

    def validate(self):
        if self.level not in ("char", "word"):
            raise ValueError(f"level must be 'char' or 'word', got {self.level!r}")
        if self.cell not in cells.cells():
            raise ValueError(f"cell must be one of {sorted(cells.cells())}, got {self.cell!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("hidden", "layers", "seq_len", "batch", "eval_every", "sample_every", "max_vocab"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")
        return self


def checkpoint_path(out_dir: str) -> str:
    return os.path.join(out_dir, "model.npz")


def metrics_path(out_dir: str) -> str:
    return os.path.join(out_dir, "metrics.jsonl")


def _default_out(cfg: TrainConfig) -> str:
    return os.path.join("runs", f"{cfg.level}-{cfg.cell}-{time.strftime('%Y%m%d-%H%M%S')}")


@contextlib.contextmanager
def _runtime(backend, threads):
    """Run the block on ``backend`` with ``threads`` threads. NumPy's BLAS is held at one thread
    throughout (every heavy product of a step is rnncore's own, on its team), so its idle pool
    never spins beside rnncore's; on the NumPy backend it gets ``threads`` (or its default)."""
    from ._backend import get_backend, use_backend
    from .threads import hold_numpy_blas, num_threads

    with contextlib.ExitStack() as stack:
        if (backend or get_backend()) != "numpy":
            stack.enter_context(hold_numpy_blas(1))
        if backend:
            stack.enter_context(use_backend(backend))
        if threads:
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(limits=threads))
            if backend != "numpy":
                stack.enter_context(num_threads(threads))
        yield


class _ImmediateInterrupt(KeyboardInterrupt):
    """A second Ctrl-C, raised inside a step."""


class _DeferredInterrupt:
    """Within the block, a first Ctrl-C (SIGINT) is held until the current training step has
    finished (``pending``), so that the checkpoint written on interrupt is that of a completed
    step and a resumed run continues bit for bit; a second Ctrl-C interrupts at once. Outside the
    main thread (where signal handlers cannot be set) interrupts are not deferred."""

    def __init__(self):
        self.pending = False
        self._old = None

    def _handler(self, signum, frame):
        if self.pending:  # the second one: now
            raise _ImmediateInterrupt
        self.pending = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _make_tokenizer(level, train_text, full_text, max_vocab):
    if level == "char":
        return _data.CharTokenizer().fit(full_text)
    return _data.WordTokenizer().fit(train_text, max_vocab=max_vocab)


def _prime_ids(tokenizer, val_ids):
    """Sample prime: a newline where the vocabulary has one, else the first validation id."""
    try:
        ids = tokenizer.encode("\n")
        if len(ids):
            return ids
    except ValueError:
        pass
    return np.asarray(val_ids[:1])


def _save_plot(path, losses, val_hist):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    losses = np.asarray(losses, dtype=np.float64)
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="train loss")
    if len(losses) >= 20:
        w = max(len(losses) // 50, 5)
        smooth = np.convolve(losses, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smooth, lw=1.5, label=f"train loss ({w}-step mean)")
    if val_hist:
        vs, vl = zip(*[(s, math.log(p)) for s, p in val_hist])
        ax.plot(vs, vl, "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


class _AgreedInterrupt(KeyboardInterrupt):
    """A Ctrl-C that every rank has learnt of in the same step's allreduce: all stop after it."""


#: errors whose one-line message says it all (no traceback when a rank aborts on one)
_USER_ERRORS = (OSError, ValueError, TypeError, KeyError, FloatingPointError, _ImmediateInterrupt)


class _Metrics:
    """``metrics.jsonl``: one JSON object a line, flushed as written. A resumed run keeps the
    lines of the steps its checkpoint holds (read from beside that checkpoint) and drops later
    ones (written after that checkpoint by a run that was then killed)."""

    def __init__(self, path, resume_from=None, upto=0):
        self.path = path
        kept = []
        if resume_from is not None and os.path.isfile(resume_from):
            with open(resume_from, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:  # a line cut short by a kill
                        break
                    if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= upto:
                        kept.append(line if line.endswith("\n") else line + "\n")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, rec: dict) -> None:
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class _Parallel:
    """The data-parallel side of a run: this rank's streams ``lo:hi`` of the global batch, the
    flat gradient buffer, and the step's one allreduce."""

    def __init__(self, comm, batch):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        if batch < self.size:
            raise ValueError(f"batch must be at least the number of MPI ranks ({self.size}) so every rank "
                             f"gets a stream, got {batch}")
        self.batch = batch
        self.lo, self.hi = _dist.shard_range(batch, self.rank, self.size)
        self.threads = _dist.threads_per_rank(comm)
        self.flat = None

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def bcast_arrays(self, arrays):
        """Rank 0's values of ``arrays`` on every rank (in place)."""
        for a in arrays:
            buf = np.ascontiguousarray(a)
            self.comm.Bcast(buf, root=0)
            if buf is not a:
                a[...] = buf

    def rows(self, a):
        """This rank's streams of a global state (layers, batch, H)."""
        if a is None:
            return None
        if a.shape[1] != self.batch:
            raise ValueError(f"the checkpoint's recurrent state has {a.shape[1]} streams, the batch is {self.batch}")
        return np.ascontiguousarray(a[:, self.lo:self.hi])

    def gather_rows(self, a):
        """The global state (layers, batch, H) from every rank's streams, on rank 0 (None elsewhere)."""
        parts = self.comm.gather(a, root=0)
        if self.rank != 0 or parts[0] is None:
            return None
        return np.concatenate(parts, axis=1)

    def check_in_step(self, model, opt, step):
        """RuntimeError on every rank unless every rank holds the same weights and optimizer
        state (the same bits: each applies the same update to the same reduced gradients)."""
        import zlib

        crc = 0
        for a in [*model.params, *opt.state_dict().values()]:
            crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).reshape(-1), crc)
        crcs = self.comm.allgather(crc)
        if len(set(crcs)) > 1:
            odd = [r for r, c in enumerate(crcs) if c != crcs[0]]
            raise RuntimeError(f"after step {step} the weights or optimizer state of rank(s) {odd} differ from "
                               f"rank 0's (this MPI's allreduce did not give every rank the same bits)")

    def step(self, model, xs, ts, pending):
        """Forward and backward of this rank's streams of the global chunk (xs, ts), scaled so
        that the sum over ranks is the gradient of the global-batch mean loss, and the one
        allreduce of gradients, loss and the interrupt flag. Returns (global loss, stop, seconds
        in the allreduce)."""
        if self.flat is None:
            self.flat = _dist.FlatGradients(model, scalars=2)
        ignore_index = model.loss_layer.ignore_index
        xl, tl = xs[self.lo:self.hi], ts[self.lo:self.hi]
        n_all = int(np.count_nonzero(ts != ignore_index))
        n_mine = int(np.count_nonzero(tl != ignore_index))
        loss = model.loss(xl, tl)
        model.backward(n_mine / n_all if n_all else 0.0)
        t = time.perf_counter()
        total_loss, stops = self.flat.allreduce(self.comm, (loss * n_mine, 1.0 if pending else 0.0))
        seconds = time.perf_counter() - t
        return (float(total_loss) / n_all if n_all else 0.0), stops > 0, seconds


def _load_resume(path, comm):
    """The checkpoint, read by rank 0 and sent to the others (they need no copy of the file)."""
    if comm is None:
        return LanguageModel.load(path)
    import tempfile

    blob = None
    if comm.Get_rank() == 0:
        model = LanguageModel.load(path)  # checks it
        with open(path, "rb") as f:
            blob = f.read()
    blob = comm.bcast(blob, root=0)
    if comm.Get_rank() == 0:
        return model
    with tempfile.TemporaryDirectory() as d:
        local = os.path.join(d, "model.npz")
        with open(local, "wb") as f:
            f.write(blob)
        return LanguageModel.load(local)


def train(cfg: TrainConfig, log=None, comm=None) -> dict:
    """Train (or resume) a language model; returns a summary dict with ``model`` (the trained
    :class:`LanguageModel`), ``checkpoint``, ``metrics`` (the metrics.jsonl path), ``val_ppl``,
    ``unigram_ppl``, ``losses``, ``val_history``, ``seconds``, ``sample``.

    ``comm``: an mpi4py communicator to train data-parallel over its ranks, or None (one
    process). Every rank calls ``train`` with the same ``cfg``; rank 0 does the printing (``log``
    is called there only), validation, sampling and writing; every rank returns the summary. A
    rank that raises ends the whole job (``comm.Abort``) with its rank and error on stderr.
    """
    _dist._check_comm("train: comm", comm)
    if comm is None or comm.Get_size() == 1:
        return _train(cfg, log, None)
    with _dist.abort_on_error(comm, prog="rnncore train", quiet=_USER_ERRORS, passthrough=(_AgreedInterrupt,)):
        return _train(cfg, log, comm)


def _train(cfg, log, comm) -> dict:
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    root = comm is None or comm.Get_rank() == 0
    say = log or (lambda s: tqdm.write(s, file=sys.stdout))
    if not root:
        say = lambda s: None  # noqa: E731
    model = None
    meta = {}
    if cfg.resume:
        model = _load_resume(cfg.resume, comm)
        meta = model.checkpoint.get("meta", {})
        if "train_config" not in meta or model.tokenizer is None:
            raise ValueError(f"{cfg.resume} has no training state (not written by rnncore train)")
        saved = meta["train_config"]
        default = TrainConfig()

        def same(k, a, b):
            return _full_path(a) == _full_path(b) if k == "corpus" and a and b else a == b

        ignored = [k for k in _FROM_CHECKPOINT
                   if k in saved and getattr(cfg, k) != getattr(default, k) and not same(k, getattr(cfg, k), saved[k])]
        if ignored:
            say(f"resuming: {', '.join('--' + k.replace('_', '-') for k in ignored)} ignored (the checkpoint's "
                f"settings fix the model and the data)")
        # lr and clip: the run's own unless given again (a resumed run may lower them)
        own = {k: saved[k] for k in ("lr", "clip") if getattr(cfg, k) is None and k in saved}
        if "clip" in own and own["clip"] is None:
            own["clip"] = 0.0  # a run the API started with clip=None: no clipping, as then
        cfg = dataclasses.replace(cfg, **{k: saved[k] for k in _FROM_CHECKPOINT if k in saved}, **own)
        if cfg.out is None:
            cfg.out = os.path.dirname(os.path.abspath(cfg.resume))
    elif cfg.corpus is not None:  # a checkpoint names its corpus wherever it is resumed from
        cfg = dataclasses.replace(cfg, corpus=_full_path(cfg.corpus))
    cfg = dataclasses.replace(cfg, lr=DEFAULT_LR if cfg.lr is None else cfg.lr,
                              clip=DEFAULT_CLIP if cfg.clip is None else cfg.clip)
    cfg.validate()
    par = None if comm is None else _Parallel(comm, cfg.batch)  # (a resumed run's batch is the checkpoint's)
    out_dir = cfg.out or _default_out(cfg)
    if par is not None:
        out_dir = par.bcast(out_dir)  # a default name holds the time: rank 0's
    ckpt = checkpoint_path(out_dir)

    if par is None:
        text = _data.load_corpus(cfg.corpus, cfg.max_chars)
    else:  # rank 0's text: the other machines need no copy (and the same stdlib)
        text = par.bcast(_data.load_corpus(cfg.corpus, cfg.max_chars) if root else None)
    train_text, val_text = _data.split_text(text, cfg.val_fraction)
    tok = model.tokenizer if model is not None else _make_tokenizer(cfg.level, train_text, text, cfg.max_vocab)
    train_ids, val_ids = tok.encode(train_text), tok.encode(val_text)
    if len(val_ids) < 4 or len(train_ids) < 2 * cfg.batch:
        raise ValueError(f"corpus too small: {len(train_ids)} training and {len(val_ids)} validation tokens")
    V = tok.vocab_size
    batcher = _data.StreamBatcher(train_ids, cfg.batch, cfg.seq_len)
    source = cfg.corpus or "the Python standard library sources"
    say(f"corpus: {source}: {len(text):,} chars -> {len(train_ids):,} train / {len(val_ids):,} validation "
        f"{cfg.level} tokens, vocabulary {V}")

    if model is None:
        model = LanguageModel(V, cfg.hidden, embed_size=cfg.embed, num_layers=cfg.layers, cell=cfg.cell,
                              dropout=cfg.dropout, dtype=np.dtype(cfg.dtype), seed=cfg.seed)
    model.tokenizer = tok
    opt = OPTIMIZERS[cfg.optimizer](lr=cfg.lr)
    step, losses, val_hist = 0, [], []
    if cfg.resume:
        ck = model.checkpoint
        step = int(meta["step"])
        losses = list(meta.get("losses", []))
        val_hist = [tuple(v) for v in meta.get("val_history", [])]
        opt.load_state_dict({k[len("optim."):]: v for k, v in ck.items() if k.startswith("optim.")})
        opt.lr = cfg.lr
        if "state.h" in ck:
            h, c = ck["state.h"], ck.get("state.c")
            model.set_state((h, c) if par is None else (par.rows(h), par.rows(c)))
        if "rng" in meta:
            model.set_rng_state(meta["rng"])
        say(f"resumed {cfg.resume} at step {step}")
    if par is not None:
        par.bcast_arrays(model.params)  # identical weights on every rank, whatever each machine's numpy
        # each rank's dropout masks are its rows of the global batch's masks
        model.rnn.rng = _dist.shard_generator(model.rnn.rng, par.lo, par.hi, cfg.batch)
        model.drop.rng = _dist.shard_generator(model.drop.rng, par.lo, par.hi, cfg.batch)
    n_params = sum(p.size for p in model.params)
    say(f"model: {cfg.cell} {cfg.layers}x{cfg.hidden}, embedding {model.config['embed_size']}, "
        f"{n_params:,} parameters; batch {cfg.batch} x {batcher.seq_len} steps, {cfg.steps} steps "
        f"({batcher.n_chunks} per pass over the training text)")
    mpath = metrics_path(out_dir)
    metrics = None
    if root:
        metrics = _Metrics(mpath, metrics_path(os.path.dirname(os.path.abspath(cfg.resume))) if cfg.resume else None,
                           step)
        say(f"metrics: {mpath} (one line a step); checkpoint: {ckpt}")

    def save():
        h, c = model.get_state()
        if par is not None:
            h, c = par.gather_rows(h), par.gather_rows(c)
            if not root:
                return ckpt
        arrays = {f"optim.{k}": v for k, v in opt.state_dict().items()}
        if h is not None:
            arrays["state.h"] = h
        if c is not None:
            arrays["state.c"] = c
        m = {"step": step, "train_config": dataclasses.asdict(cfg), "losses": losses,
             "val_history": [list(v) for v in val_hist], "rng": model.get_rng_state()}
        if par is not None:
            m["ranks"] = par.size
        return model.save(ckpt, tokenizer=tok, meta=m, arrays=arrays)

    def sample(n):
        rng = np.random.default_rng([cfg.seed, step])
        prime = _prime_ids(tok, val_ids)
        return tok.decode(np.concatenate([prime, model.generate(prime, n, temperature=0.8, rng=rng)]))

    def evaluate():
        ppl = model.perplexity(val_ids, cfg.batch, cfg.seq_len)
        val_hist.append((step, ppl))
        return ppl

    model.train()
    ema = None
    threads = cfg.threads or (par.threads if par is not None else None)
    stop = False
    try:
        with _runtime(cfg.backend, threads):
            from ._backend import get_backend
            from .threads import get_num_threads

            backend = get_backend()
            say(f"backend {backend}" + (f", {get_num_threads()} threads" if backend == "native" else "")
                + (f"; {par.size} MPI ranks (rank 0: streams {par.lo}-{par.hi - 1} of {cfg.batch})"
                   if par is not None else ""))
            bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), disable=not (cfg.progress and root),
                       unit="step", dynamic_ncols=True, file=sys.stderr, desc="train")
            interrupt = _DeferredInterrupt()
            try:
                with interrupt:
                    while step < cfg.steps:
                        if par is None and interrupt.pending:
                            raise KeyboardInterrupt
                        if stop:
                            raise _AgreedInterrupt
                        t0 = time.perf_counter()
                        if step % batcher.n_chunks == 0:
                            model.reset_state()
                        xs, ts = batcher.chunk(step)
                        try:
                            if par is None:
                                loss = model.loss(xs, ts)
                                model.backward()
                            else:
                                loss, stop, comm_s = par.step(model, xs, ts, interrupt.pending)
                        except ValueError as e:  # the inputs' check: weights an update made non-finite?
                            if not all(np.isfinite(p).all() for p in model.params):
                                raise FloatingPointError(f"the weights became non-finite at step {step}; "
                                                         f"try a lower --lr") from e
                            raise
                        norm = clip_grads(model.grads, cfg.clip)
                        opt.update(model.params, model.grads)
                        if not math.isfinite(loss):
                            raise FloatingPointError(f"loss became {loss} at step {step + 1}; try a lower --lr")
                        step += 1
                        rec = {"step": step, "loss": loss, "seconds": time.perf_counter() - t0, "grad_norm": norm}
                        if par is not None:
                            rec.update(allreduce_seconds=comm_s, ranks=par.size)
                        losses.append(loss)
                        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
                        bar.update(1)
                        bar.set_postfix(loss=f"{ema:.3f}", ppl=f"{math.exp(min(ema, 700.0)):.2f}", refresh=False)
                        validating = step % cfg.eval_every == 0 or step == cfg.steps
                        if validating and root:
                            rec["val_ppl"] = ppl = evaluate()
                        if metrics is not None:
                            metrics.write(rec)  # before the checkpoint: a resume never lacks a step's line
                        if validating:
                            if par is not None:
                                par.check_in_step(model, opt, step)
                            save()
                            if root:
                                say(f"step {step}: train loss {ema:.3f}, validation perplexity {ppl:.3f}")
                        if step % cfg.sample_every == 0 and step < cfg.steps and root:
                            say(f"--- sample at step {step} ---\n{sample(cfg.sample_len)}\n---")
                        if par is not None and (validating or step % cfg.sample_every == 0):
                            _dist.polite_barrier(par.comm)  # rank 0 was busy: the others wait asleep
            except _ImmediateInterrupt:
                bar.close()
                say(f"interrupted twice, inside step {step + 1}: no checkpoint of that unfinished step "
                    f"(the last one written is {ckpt}, if any)")
                raise
            except KeyboardInterrupt as e:
                bar.close()
                if par is not None and not isinstance(e, _AgreedInterrupt):
                    raise  # one rank alone: abort_on_error ends the job
                save()
                say(f"interrupted after step {step}; checkpoint saved to {ckpt} (continue with --resume {ckpt})")
                raise
            bar.close()
            if root and (not val_hist or val_hist[-1][0] != step):
                evaluate()
            final_ppl = val_hist[-1][1] if root else None
            path = save()
            text_sample = sample(cfg.sample_len) if root else None
    finally:
        if metrics is not None:
            metrics.close()
    if par is not None:
        final_ppl, val_hist, text_sample, path = par.bcast((final_ppl, val_hist, text_sample, path))
    unigram = _data.unigram_perplexity(train_ids, val_ids, V)
    plot = (_save_plot(os.path.join(out_dir, "loss.png"), losses, val_hist) if cfg.plot and losses and root
            else None)
    seconds = time.perf_counter() - t_start
    say(f"--- sample ---\n{text_sample}\n---")
    say(f"checkpoint: {path}" + (f"; loss plot: {plot}" if plot else "") + f"; metrics: {mpath}")
    say(f"validation perplexity {final_ppl:.3f} vs unigram baseline {unigram:.3f} "
        f"({cfg.level} level, vocabulary {V}); {step} steps in {seconds:.1f} s")
    return {"model": model, "checkpoint": path, "metrics": mpath, "val_ppl": final_ppl, "unigram_ppl": unigram,
            "losses": losses, "val_history": val_hist, "seconds": seconds, "sample": text_sample, "plot": plot,
            "steps": step}
