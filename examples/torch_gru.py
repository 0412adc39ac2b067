"""A PyTorch model on rnncore: nn.Embedding -> GRU -> nn.Linear, trained with torch.optim.

The model is written in plain PyTorch with ``torch.nn.GRU``; one call, ``rnncore.torch.patch``,
makes its GRU run on rnncore (same module, same Parameters, so the optimizer built before
the call keeps working). The script first shows that the patched model computes what the
torch one did, then trains it on a task that needs memory: at each step, output the token
seen ``DELAY`` steps earlier (the first ``DELAY`` positions have no answer and are ignored).
It reports the accuracy on fresh sequences.

    python examples/torch_gru.py
"""
from __future__ import annotations

import time

import torch
from torch import nn

import rnncore.torch

V, DELAY, T, B = 8, 3, 16, 32


class Echo(nn.Module):
    """Embedding -> GRU -> Linear: logits (B, T, V) of the token DELAY steps back."""

    def __init__(self, embed=16, hidden=48):
        super().__init__()
        self.embed = nn.Embedding(V, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, V)

    def forward(self, ids):
        out, _ = self.gru(self.embed(ids))
        return self.head(out)


def batch(generator):
    """Random tokens (B, T) and their targets: the token DELAY steps back, -100 (ignored) before."""
    ids = torch.randint(0, V, (B, T), generator=generator)
    targets = torch.full_like(ids, -100)
    targets[:, DELAY:] = ids[:, :-DELAY]
    return ids, targets


def accuracy(model, generator, batches=4):
    with torch.no_grad():
        hits = total = 0
        for _ in range(batches):
            ids, targets = batch(generator)
            pred = model(ids).argmax(-1)
            keep = targets != -100
            hits += int((pred[keep] == targets[keep]).sum())
            total += int(keep.sum())
    return hits / total


def main(steps: int = 400, seed: int = 0, verbose: bool = True) -> float:
    """Train the patched model; return its accuracy on fresh sequences."""
    torch.manual_seed(seed)
    data = torch.Generator().manual_seed(seed + 1)
    model = Echo()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # built before the patch, on purpose

    ids, _ = batch(data)
    with torch.no_grad():
        before = model(ids)
    rnncore.torch.patch(model)
    with torch.no_grad():
        after = model(ids)
    if verbose:
        print(f"patched: model.gru is {type(model.gru).__module__}.{type(model.gru).__name__}; "
              f"max |logits after - before| = {float((after - before).abs().max()):.2e}")

    loss_fn = nn.CrossEntropyLoss(ignore_index=-100)
    t0 = time.perf_counter()
    for step in range(steps):
        ids, targets = batch(data)
        opt.zero_grad()
        loss = loss_fn(model(ids).reshape(-1, V), targets.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        if verbose and (step + 1) % 100 == 0:
            print(f"step {step + 1:4d}  loss {loss.item():.4f}")
    acc = accuracy(model, data)
    if verbose:
        print(f"{steps} steps in {time.perf_counter() - t0:.1f} s; accuracy on fresh sequences {acc:.3f}")
    return acc


if __name__ == "__main__":
    main()
