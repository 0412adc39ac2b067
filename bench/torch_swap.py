"""A PyTorch training step with and without ``rnncore.torch.patch``, in one process.

The model is what a PyTorch user writes: ``nn.Embedding`` (vocabulary 96, 64 features) ->
``nn.LSTM`` or ``nn.GRU`` (one layer, batch_first) -> ``nn.Linear`` -> ``cross_entropy``,
``torch.optim.Adam``; one step is zero_grad, forward, loss, backward, optimizer step. Four
variants of the same model (same initial weights) are timed in turn, round after round:

- ``torch``: the model as it is (torch's intra-op threads at their setting);
- ``rnncore``: a copy after ``rnncore.torch.patch`` (the recurrence and its BPTT on rnncore's
  team, ``rnncore.get_num_threads()`` threads; the rest of the step on torch's threads);
- ``torch 1 thr`` and ``rnncore, torch 1 thr``: the same two with ``torch.set_num_threads(1)``
  for their steps (rnncore's team unchanged): whether torch's pool, idle while rnncore works,
  costs rnncore anything, and what torch itself does on one thread.

Before timing, the first step's loss of the patched copy must match torch's (float32,
relative 1e-4). Times are medians over rounds of each round's median step; each ``x`` is
torch's time over rnncore's at the same torch thread setting (> 1: rnncore is faster).

    python bench/torch_swap.py                                # lstm and gru; B 1, 8, 64; H 256; T 64
    python bench/torch_swap.py --cells gru --batch 32 --threads 1 --rounds 5 --json swap.json
    OMP_WAIT_POLICY=PASSIVE python bench/torch_swap.py        # torch's OpenMP threads sleep at once after each op

torch's intra-op pool is OpenMP (libgomp): after each parallel op its threads spin for a while
before sleeping (``OMP_WAIT_POLICY``, read once when torch loads). The patched model's
rnncore calls start right after torch's ops, so that spinning can take the cores from rnncore's
team; the header prints the policy in force.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import time

VOCAB, EMBED = 96, 64
#: name -> (patched, torch threads: None = the setting at the start)
VARIANTS = {"torch": (False, None), "rnncore": (True, None), "torch 1 thr": (False, 1),
            "rnncore, torch 1 thr": (True, 1)}
#: each rnncore variant against the torch one at the same torch threads
PAIRS = {"rnncore": "torch", "rnncore, torch 1 thr": "torch 1 thr"}


def build(cell, hidden, seed=0):
    import torch
    from torch import nn

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, EMBED)
            self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](EMBED, hidden, batch_first=True)
            self.head = nn.Linear(hidden, VOCAB)

        def forward(self, ids):
            return self.head(self.rnn(self.embed(ids))[0])

    torch.manual_seed(seed)
    return Model()


def make_step(model):
    """One training step of ``model`` (its own Adam); returns the loss."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(ids, targets):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids).reshape(-1, VOCAB), targets.reshape(-1))
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _timed(step, data, torch_threads):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    gc.collect()
    gc.disable()
    try:
        times = []
        for ids, targets in data:
            t0 = time.perf_counter()
            step(ids, targets)
            times.append(time.perf_counter() - t0)
    finally:
        gc.enable()
        torch.set_num_threads(before)
    return times


def run(cells=("lstm", "gru"), batches=(1, 8, 64), hidden=256, seq_len=64, steps=10, rounds=3, warmup=2,
        say=print):
    """Time the variants for every (cell, batch); print the table through ``say``; return the rows."""
    import torch

    import rnncore.torch

    torch_threads = torch.get_num_threads()
    say(f"model: Embedding({VOCAB}, {EMBED}) -> <cell>({EMBED}, {hidden}, batch_first) -> Linear({hidden}, "
        f"{VOCAB}), cross_entropy, Adam; T={seq_len}; float32")
    say(f"threads: rnncore {rnncore.get_num_threads()}, torch {torch_threads} (OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY') or '(unset)'}); {rounds} rounds of {steps} timed steps a variant "
        f"(after {warmup} warm-up steps), variants in turn")
    say(f"{'cell':<5} {'B':>4} | {'torch ms':>9} {'rnncore ms':>11} {'x':>6} | {'torch 1 thr ms':>15} "
        f"{'rnncore, torch 1 thr ms':>24} {'x':>6} | {'|loss diff|':>11}")
    rows = []
    for cell in cells:
        for B in batches:
            ref = build(cell, hidden)
            mine = rnncore.torch.patch(copy.deepcopy(ref))
            gen = torch.Generator().manual_seed(1)
            data = [(torch.randint(0, VOCAB, (B, seq_len), generator=gen),
                     torch.randint(0, VOCAB, (B, seq_len), generator=gen)) for _ in range(steps + warmup)]
            with torch.no_grad():  # the check: the same model computes the same loss
                losses = [torch.nn.functional.cross_entropy(m(data[0][0]).reshape(-1, VOCAB),
                                                            data[0][1].reshape(-1)).item() for m in (ref, mine)]
            diff = abs(losses[0] - losses[1])
            if not diff <= 1e-4 * abs(losses[0]):
                raise AssertionError(f"{cell} B={B}: patched loss {losses[1]} != torch's {losses[0]}")
            steppers = {v: (make_step(mine if patched else ref), n or torch_threads)
                        for v, (patched, n) in VARIANTS.items()}
            medians = {v: [] for v in VARIANTS}
            for _ in range(rounds):
                for v, (step, n) in steppers.items():
                    medians[v].append(statistics.median(_timed(step, data, n)[warmup:]))
            ms = {v: statistics.median(medians[v]) * 1e3 for v in VARIANTS}
            row = {"cell": cell, "B": B, "H": hidden, "T": seq_len, "ms": ms, "loss_diff": diff,
                   "ratio": {v: ms[t] / ms[v] for v, t in PAIRS.items()}}
            rows.append(row)
            r = row["ratio"]
            say(f"{cell:<5} {B:>4} | {ms['torch']:>9.2f} {ms['rnncore']:>11.2f} {r['rnncore']:>5.2f}x | "
                f"{ms['torch 1 thr']:>15.2f} {ms['rnncore, torch 1 thr']:>24.2f} {r['rnncore, torch 1 thr']:>5.2f}x | "
                f"{diff:>11.1e}")
    return rows


def _ints(text):
    return [int(v) for v in text.replace(",", " ").split()]


def build_parser():
    ap = argparse.ArgumentParser(prog="bench/torch_swap.py", description=__doc__.splitlines()[0])
    ap.add_argument("--cells", nargs="+", choices=("rnn", "lstm", "gru"), default=["lstm", "gru"])
    ap.add_argument("--batch", nargs="+", type=int, default=[1, 8, 64])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps a variant and round (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the variants in turn (default 3)")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for both rnncore and torch (default 0: each its own default)")
    ap.add_argument("--json", metavar="PATH", help="also write the rows and the environment as JSON")
    return ap


def main(argv=None) -> int:
    import torch

    import rnncore
    from rnncore.benchmark import environment, machine_lines
    from rnncore.threads import team_stats

    args = build_parser().parse_args(argv)
    if min(args.batch + [args.hidden, args.seq_len, args.steps, args.rounds]) < 1:
        print("torch_swap.py: --batch, --hidden, --seq-len, --steps and --rounds must be >= 1", file=sys.stderr)
        return 2
    if args.threads:
        rnncore.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    env = environment(want_torch=True)
    for line in machine_lines(env):
        print(line)
    print()
    rows = run(cells=args.cells, batches=args.batch, hidden=args.hidden, seq_len=args.seq_len, steps=args.steps,
               rounds=args.rounds, say=lambda s: print(s, flush=True))
    print(f"rnncore team: {team_stats()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
