"""``rnncore bench --train-step``: whole programs, against what a user would pick instead.

Three tables, each from one run on this machine:

1. **The default training step** of ``rnncore train`` (character LM: embedding 64, one layer
   of 256 units, vocabulary 96, batch 32 x 64 steps, Adam, gradient clipping at 5) through
   rnncore's layers, and the same model in PyTorch (``nn.Embedding`` -> ``nn.LSTM``/``nn.GRU``
   -> ``nn.Linear``, ``cross_entropy``, ``clip_grad_norm_``, ``Adam``) when it is installed.
   Each side runs in its own process, the processes alternate round by round (which goes first
   too), and the table gives the median step time of each and their ratio paired round by round
   (:func:`rnncore.benchmark.stats.paired_ratio`).
2. **Interference**: an rnncore LSTM forward + backward (B=32, T=64, H=256, D=64) alone (with
   NumPy's BLAS idle), and the same call right after two NumPy matmuls (2048x256 @ 256x96)
   whose BLAS keeps its default threads, as in a user's own NumPy code; 8 blocks, each kind
   first in turn; only the rnncore call is timed.
3. **The textbook's language models** (:mod:`rnncore.textbook.models`: SimpleRnnlm, Rnnlm,
   BetterRnnlm at the book's sizes) on the book's plain-NumPy layers and on
   ``rnncore.time_layers``, each in its own process, the processes alternating round by round
   (as in table 1, the speed-up paired the same way), forward + backward + SGD per iteration,
   the same weights, batches and dropout masks, so their losses must agree.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from .. import cells
from .stats import in_turn, paired_ratio

#: the default model of ``rnncore train``
V, B, T, H, E = 96, 32, 64, 256, 64
#: the book's settings: (vocab, wordvec, hidden, batch, time) per model
TEXTBOOK = {"SimpleRnnlm": (418, 100, 100, 10, 5), "Rnnlm": (10000, 100, 100, 20, 35),
            "BetterRnnlm": (10000, 650, 650, 20, 35)}
#: (timed iterations, warm-up iterations) per model: many for the sub-millisecond SimpleRnnlm
TEXTBOOK_ITERS = {"SimpleRnnlm": (1000, 50), "Rnnlm": (30, 3), "BetterRnnlm": (5, 1)}
#: a worker waits this long after its imports before it starts: NumPy's OpenBLAS pool, started by
#: its import, spins for about a quarter of a second, beside either layer set's first iterations
SETTLE_S = 0.3


def _batches(n, vocab, batch, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, vocab, (batch, steps)), rng.integers(0, vocab, (batch, steps))) for _ in range(n)]


def _time_steps(step, data, warmup, before=None):
    """Time step(i, xs, ts) for each batch; ``before(i)``, when given, runs first, untimed."""
    times, losses = [], []
    for i, (xs, ts) in enumerate(data):
        if before is not None:
            before(i)
        t0 = time.perf_counter()
        loss = step(i, xs, ts)
        dt = time.perf_counter() - t0
        losses.append(float(loss))
        if i >= warmup:
            times.append(dt)
    return times, losses


# -- workers (each in a process of its own) -------------------------------------------------------

def worker_rnncore(cell, steps, threads):
    from ..models import LanguageModel
    from ..optim import Adam, clip_grads
    from ..threads import hold_numpy_blas, set_num_threads, get_num_threads

    set_num_threads(threads)
    model = LanguageModel(V, H, embed_size=E, cell=cell)
    opt = Adam(lr=3e-3)

    def step(i, xs, ts):
        loss = model.loss(xs, ts)
        model.backward()
        clip_grads(model.grads, 5.0)
        opt.update(model.params, model.grads)
        return loss

    with hold_numpy_blas(1):  # as rnncore train does
        times, losses = _time_steps(step, _batches(steps + 5, V, B, T), 5)
    return {"times": times, "threads": get_num_threads()}


def worker_torch(cell, steps, threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](E, H, batch_first=True)
    emb, lin = torch.nn.Embedding(V, E), torch.nn.Linear(H, V)
    params = list(emb.parameters()) + list(rnn.parameters()) + list(lin.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)

    def step(i, xs, ts):
        opt.zero_grad()
        out, _ = rnn(emb(torch.from_numpy(xs)))
        loss = torch.nn.functional.cross_entropy(lin(out).reshape(-1, V), torch.from_numpy(ts).reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        return loss.item()

    times, _ = _time_steps(step, _batches(steps + 5, V, B, T), 5)
    return {"times": times, "threads": torch.get_num_threads(), "version": torch.__version__}


def worker_interference(reps, threads):
    from .._ops import lstm_backward, lstm_forward
    from ..threads import set_num_threads

    set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, E)).astype(np.float32)
    wx = (rng.standard_normal((E, 4 * H)) * 0.1).astype(np.float32)
    wh = (rng.standard_normal((H, 4 * H)) * 0.05).astype(np.float32)
    b = np.zeros(4 * H, np.float32)
    dhs = np.ones((B, T, H), np.float32)
    a, w = rng.standard_normal((2048, 256)).astype(np.float32), rng.standard_normal((256, 96)).astype(np.float32)

    def call():
        t0 = time.perf_counter()
        hs, _, _, cache = lstm_forward(x, wx, wh, b, b, batch_first=True)
        lstm_backward(dhs, cache)
        return time.perf_counter() - t0

    alone, beside = [], []
    for _ in range(3):
        call()
    # 8 blocks, alone, beside, beside, alone, ..., so that both kinds meet the same machine
    # and neither always comes first: with 4 blocks of 10 calls (alone, beside, alone, beside) the
    # ratio moved 0.65-1.29x from run to run on the 2-core Xeon, whose speed changes by a third
    # within seconds
    per = max(1, reps // 4)  # reps calls of each kind
    for block in range(8):
        if block % 4 in (0, 3):
            time.sleep(0.3)  # NumPy's idle BLAS threads stop spinning (OpenBLAS: about 0.1 s)
            alone += [call() for _ in range(per)]
        else:
            for _ in range(per):
                a @ w
                a @ w
                beside.append(call())
    return {"alone": alone, "beside": beside}


def worker_textbook(model_name, layers_name, iters, warmup=1):
    from ..textbook import models

    if layers_name == "rnncore":
        from .. import time_layers as layers
    else:
        from ..textbook import layers
    vocab, wordvec, hidden, batch, steps = TEXTBOOK[model_name]
    model = models.MODELS[model_name](layers, vocab, wordvec, hidden)
    lr = np.float32(0.1)

    def step(i, xs, ts):
        loss = model.forward(xs, ts)
        model.backward()
        for p, g in zip(model.params, model.grads):
            p -= lr * g
        return loss

    data = _batches(iters + warmup, vocab, batch, steps)
    time.sleep(SETTLE_S)
    # the same dropout masks on both layer sets: NumPy's global generator seeded before each
    # step (untimed: 4 us, 1% of a SimpleRnnlm iteration, that neither layer set spends)
    times, losses = _time_steps(step, data, warmup, before=np.random.seed)
    return {"times": times, "losses": losses}


def _worker_main(argv):
    kind, args = argv[0], argv[1:]
    if kind == "rnncore":
        out = worker_rnncore(args[0], int(args[1]), int(args[2]))
    elif kind == "torch":
        out = worker_torch(args[0], int(args[1]), int(args[2]))
    elif kind == "interference":
        out = worker_interference(int(args[0]), int(args[1]))
    else:
        out = worker_textbook(args[0], args[1], int(args[2]), int(args[3]))
    print(json.dumps(out))


def _spawn(*args):
    """Run a worker in a fresh process; its JSON result, or {'error': ...}."""
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-m", "rnncore.benchmark.train_step", "--worker", *map(str, args)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _have_torch():
    r = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    return r.returncode == 0


# -- the tables -----------------------------------------------------------------------------------

def run(cells=("lstm", "gru"), steps=20, rounds=3, threads=2, torch=True, textbook=True,
        textbook_models=tuple(TEXTBOOK), interference_reps=64, textbook_iters=None, say=print):
    """Run the three comparisons; print the tables through ``say``; return the results."""
    results = {"train_step": {}, "interference": None, "textbook": {}}
    textbook_iters = textbook_iters or {}
    torch = torch and _have_torch()
    say(f"1. default training step (char LM: V={V}, embedding {E}, 1x{H}, batch {B} x {T}, Adam, clip 5); "
        f"{rounds} alternating rounds of {steps} steps a process, {threads} threads each")
    say("   medians of the rounds' medians; the ratio: the median over the rounds of each round's ratio of")
    say("   its two medians (which side went first alternating); then the fastest step of all rounds (on a")
    say("   shared machine other tenants' work adds time at random; the fastest steps show each side")
    say("   undisturbed)")
    say(f"{'cell':<5} {'rnncore ms':>11} {'torch ms':>9} {'torch/rnncore':>14} | {'fastest: rnncore':>16} "
        f"{'torch':>6} {'ratio':>6}")
    for cell in cells:
        mine, theirs, mine_all, theirs_all = [], [], [], []
        for i in range(rounds):
            sides = ("rnncore", "torch") if torch else ("rnncore",)
            got = {}
            for side in in_turn(sides, i):  # which goes first, in turn
                got[side] = _spawn(side, cell, steps, threads)
            if "error" in got["rnncore"]:
                say(f"{cell:<5} rnncore failed: {got['rnncore']['error']}")
                break
            if torch and "error" in got["torch"]:
                say(f"  torch failed: {got['torch']['error']}")
                torch, theirs, theirs_all = False, [], []
            mine.append(statistics.median(got["rnncore"]["times"]))
            mine_all += got["rnncore"]["times"]
            if torch:
                theirs.append(statistics.median(got["torch"]["times"]))
                theirs_all += got["torch"]["times"]
        if not mine:
            continue
        m, m0 = statistics.median(mine), min(mine_all)
        row = {"rnncore_ms": m * 1e3, "rnncore_min_ms": m0 * 1e3}
        if theirs:
            tt, t0, ratio = statistics.median(theirs), min(theirs_all), paired_ratio(theirs, mine)
            row.update(torch_ms=tt * 1e3, ratio=ratio, torch_min_ms=t0 * 1e3, min_ratio=t0 / m0,
                       rounds_ms=[[a * 1e3, b * 1e3] for a, b in zip(mine, theirs)])
            say(f"{cell:<5} {m * 1e3:>11.1f} {tt * 1e3:>9.1f} {ratio:>13.2f}x | {m0 * 1e3:>16.1f} {t0 * 1e3:>6.1f} "
                f"{t0 / m0:>5.2f}x")
        else:
            say(f"{cell:<5} {m * 1e3:>11.1f} {'-':>9} {'-':>14} | {m0 * 1e3:>16.1f} {'-':>6} {'-':>6}")
        results["train_step"][cell] = row

    if interference_reps:
        r = _spawn("interference", interference_reps, threads)
        if "error" not in r:
            a, b = statistics.median(r["alone"]), statistics.median(r["beside"])
            results["interference"] = {"alone_ms": a * 1e3, "beside_ms": b * 1e3, "ratio": b / a}
            say("")
            say(f"2. interference: LSTM forward+backward B={B} T={T} H={H} D={E}, {threads} threads, "
                f"median of {interference_reps}")
            say(f"   alone {a * 1e3:.1f} ms; between two NumPy matmuls (2048x256 @ 256x96, NumPy's BLAS at its "
                f"default threads) {b * 1e3:.1f} ms: {b / a:.2f}x its time alone")
        else:
            say(f"2. interference failed: {r['error']}")

    if textbook:
        say("")
        say("3. the textbook's language models, book sizes (vocab, wordvec, hidden, batch, time); "
            f"forward + backward + SGD per iteration; {rounds} alternating rounds of a process each; median over "
            "all rounds' timed iterations after the warm-up ones; the speed-up paired round by round as in 1.")
        say(f"{'model':<12} {'sizes':<26} {'iters':>5} {'book layers ms':>15} {'rnncore ms':>11} "
            f"{'speed-up':>9} {'max loss diff':>14} | {'fastest: book':>13} {'rnncore':>8} {'ratio':>6}")
        for name in textbook_models:
            iters, warmup = textbook_iters.get(name, TEXTBOOK_ITERS[name])
            ref, mine, failed = None, None, None
            book_meds, mine_meds = [], []
            for i in range(rounds):  # the two layer sets take turns, as the training steps above
                got = {}
                for side in in_turn(("book", "rnncore"), i):
                    got[side] = _spawn("textbook", name, side, iters, warmup)
                r, m = got["book"], got["rnncore"]
                if "error" in r or "error" in m:
                    failed = r.get("error") or m.get("error")
                    break
                book_meds.append(statistics.median(r["times"]))
                mine_meds.append(statistics.median(m["times"]))
                if ref is None:
                    ref, mine = r, m
                else:  # the same batches and masks every round: the first round's losses stand for all
                    ref["times"] += r["times"]
                    mine["times"] += m["times"]
            if failed:
                say(f"{name:<12} failed: {failed}")
                continue
            a, b = statistics.median(ref["times"]), statistics.median(mine["times"])
            speedup = paired_ratio(book_meds, mine_meds)
            a0, b0 = min(ref["times"]), min(mine["times"])
            diff = float(np.max(np.abs(np.subtract(ref["losses"], mine["losses"]))))
            results["textbook"][name] = {"book_ms": a * 1e3, "rnncore_ms": b * 1e3, "speedup": speedup,
                                         "book_min_ms": a0 * 1e3, "rnncore_min_ms": b0 * 1e3, "min_speedup": a0 / b0,
                                         "loss_diff": diff, "losses": [ref["losses"], mine["losses"]]}
            say(f"{name:<12} {str(TEXTBOOK[name]):<26} {iters:>5} {a * 1e3:>15.3g} {b * 1e3:>11.3g} "
                f"{speedup:>8.2f}x {diff:>14.2g} | {a0 * 1e3:>13.3g} {b0 * 1e3:>8.3g} {a0 / b0:>5.2f}x")
    return results


def build_parser():
    ap = argparse.ArgumentParser(prog="rnncore bench --train-step", description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", choices=cells.cells(native=True), default=["lstm", "gru"])
    ap.add_argument("--steps", type=int, default=20, help="timed steps a process (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of processes (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="threads of each side (default 2)")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--no-textbook", action="store_true", help="leave the textbook models out")
    ap.add_argument("--textbook-models", nargs="+", choices=tuple(TEXTBOOK), default=list(TEXTBOOK))
    ap.add_argument("--interference-reps", type=int, default=64,
                    help="calls of each kind in the interference test (default 64); 0 leaves it out")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return ap


def main(argv=None) -> int:
    from .ops import environment, machine_lines

    args = build_parser().parse_args(argv)
    for line in machine_lines(environment(not args.no_torch)):
        print(line)
    print()
    res = run(cells=args.cells, steps=args.steps, rounds=args.rounds, threads=args.threads, torch=not args.no_torch,
              textbook=not args.no_textbook, textbook_models=args.textbook_models,
              interference_reps=args.interference_reps, say=lambda s: print(s, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2:])
    else:
        sys.exit(main())
