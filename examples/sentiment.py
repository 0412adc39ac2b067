"""Many-to-one: a sentiment classifier that has to learn negation.

Embedding -> LSTM -> the state at each sentence's last word (``LastStep`` with ``lengths``)
-> Linear -> softmax, on a generated corpus: "this movie is good" (positive), "this movie
is not good" (negative), "the film was not bad at all" (positive), ... Sentences have 4 to
8 words and are padded into one (N, T) array; ``lengths`` keeps the padding out. A quarter
of the distinct sentences are held out, and the script reports the accuracy on the held-out
*negated* ones, where the words alone are misleading.

    python examples/sentiment.py
"""
from __future__ import annotations

import itertools

import numpy as np

from rnncore.layers import LSTM, Embedding, LastStep, Linear, SoftmaxCrossEntropy
from rnncore.optim import Adam, clip_grads

SUBJECTS = ["this movie", "the film", "the show", "this book", "the plot", "the acting"]
VERBS = ["is", "was"]
ADVERBS = ["", "really", "very"]
POSITIVE = ["good", "great", "fun", "nice", "excellent"]
NEGATIVE = ["bad", "boring", "awful", "terrible", "dull"]
TAILS = ["", "at all", "to me"]


def make_corpus():
    """Every sentence with its label (1 positive, 0 negative) and whether it is negated."""
    rows = []
    for subj, verb, adv, (adj, pos), neg, tail in itertools.product(
            SUBJECTS, VERBS, ADVERBS, [(a, 1) for a in POSITIVE] + [(a, 0) for a in NEGATIVE], (False, True), TAILS):
        if tail == "at all" and not neg:
            continue
        words = [*subj.split(), verb, *(["not"] if neg else []), *([adv] if adv else []), adj, *tail.split()]
        rows.append((" ".join(words), pos ^ neg, neg))
    return rows


def encode(sentences, vocab):
    """Pad to the longest sentence with id 0; returns ids (N, T) and lengths (N,)."""
    toks = [s.split() for s in sentences]
    T = max(len(t) for t in toks)
    ids = np.zeros((len(toks), T), dtype=np.int32)
    for i, t in enumerate(toks):
        ids[i, :len(t)] = [vocab[w] for w in t]
    return ids, np.array([len(t) for t in toks], dtype=np.int32)


class Classifier:
    """Embedding -> LSTM -> LastStep -> Linear, with a softmax cross-entropy loss."""

    def __init__(self, V, D=16, H=32, classes=2, seed=0):
        rng = np.random.default_rng(seed)
        self.embed = Embedding(V, D, rng=rng)
        self.lstm = LSTM(D, H, rng=rng)
        self.last = LastStep()
        self.head = Linear(H, classes, rng=rng)
        self.loss_layer = SoftmaxCrossEntropy()
        self.layers = [self.embed, self.lstm, self.head]
        self.params = [p for layer in self.layers for p in layer.params]
        self.grads = [g for layer in self.layers for g in layer.grads]

    def predict(self, ids, lengths):
        hs = self.lstm.forward(self.embed.forward(ids), lengths=lengths)
        return self.head.forward(self.last.forward(hs, lengths))

    def loss(self, ids, lengths, labels):
        return self.loss_layer.forward(self.predict(ids, lengths), labels)

    def backward(self):
        d = self.last.backward(self.head.backward(self.loss_layer.backward()))
        self.embed.backward(self.lstm.backward(d))


def main(steps: int = 300, seed: int = 0, verbose: bool = True) -> float:
    """Train; return the accuracy on the held-out negated sentences."""
    rows = make_corpus()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    n_test = len(rows) // 4
    test = [rows[i] for i in order[:n_test]]
    train = [rows[i] for i in order[n_test:]]
    vocab = {"<pad>": 0}
    for s, _, _ in rows:
        for w in s.split():
            vocab.setdefault(w, len(vocab))
    x_tr, len_tr = encode([s for s, _, _ in train], vocab)
    y_tr = np.array([y for _, y, _ in train], dtype=np.int32)
    model = Classifier(len(vocab), seed=seed)
    opt = Adam(lr=0.01)
    batch = 64
    for step in range(steps):
        idx = rng.choice(len(train), batch, replace=False)
        loss = model.loss(x_tr[idx], len_tr[idx], y_tr[idx])
        model.backward()
        clip_grads(model.grads, 5.0)
        opt.update(model.params, model.grads)
        if verbose and (step + 1) % 50 == 0:
            print(f"step {step + 1:4d}  loss {loss:.4f}")

    def accuracy(subset):
        ids, lengths = encode([s for s, _, _ in subset], vocab)
        pred = model.predict(ids, lengths).argmax(axis=-1)
        return float(np.mean(pred == np.array([y for _, y, _ in subset]))), pred

    acc_all, _ = accuracy(test)
    negated = [r for r in test if r[2]]
    acc_neg, pred = accuracy(negated)
    if verbose:
        print(f"{len(train)} training sentences, {len(test)} held out ({len(negated)} negated)")
        print(f"held-out accuracy {acc_all:.3f}; on negated sentences {acc_neg:.3f}")
        for (s, y, _), p in list(zip(negated, pred))[:6]:
            print(f"  {'pos' if p else 'neg'} ({'ok' if p == y else 'WRONG'})  {s}")
    return acc_neg


if __name__ == "__main__":
    main()
