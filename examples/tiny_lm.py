"""The smallest language model: "you say goodbye and I say hello ." read as a word stream.

The textbook's first RNN language model, on rnncore's layers: the sentence repeated into a
stream, cut into parallel streams for truncated BPTT (the state is carried across chunks),
trained with Adam. Every next word is determined by the words before it ("say" is followed
by "goodbye" after "you", by "hello" after "I"), so the perplexity falls to about 1.

    python examples/tiny_lm.py
"""
from __future__ import annotations

import numpy as np

from rnncore.data import StreamBatcher, WordTokenizer
from rnncore.models import LanguageModel
from rnncore.optim import Adam, clip_grads

TEXT = "you say goodbye and I say hello ."


def main(steps: int = 300, cell: str = "lstm", hidden: int = 32, seed: int = 0, verbose: bool = True) -> float:
    """Train and return the final perplexity on the stream."""
    tok = WordTokenizer().fit(TEXT)
    ids = tok.encode(" ".join([TEXT] * 50))  # 400 tokens
    model = LanguageModel(tok.vocab_size, hidden, embed_size=16, cell=cell, seed=seed)
    opt = Adam(lr=0.01)
    batcher = StreamBatcher(ids, batch_size=5, seq_len=8)
    for step in range(steps):
        if step % batcher.n_chunks == 0:
            model.reset_state()
        xs, ts = batcher.chunk(step)
        loss = model.loss(xs, ts)
        model.backward()
        clip_grads(model.grads, 5.0)
        opt.update(model.params, model.grads)
        if verbose and (step + 1) % 50 == 0:
            print(f"step {step + 1:4d}  loss {loss:.4f}  perplexity {np.exp(loss):.3f}")
    ppl = model.perplexity(ids, batch_size=5, seq_len=8)
    text = tok.decode(np.concatenate([tok.encode("you"), model.generate(tok.encode("you"), 7, temperature=0.5,
                                                                          rng=seed)]))
    if verbose:
        print(f"vocabulary {tok.vocab_size}: {' '.join(tok.words)}")
        print(f"final perplexity {ppl:.4f}")
        print(f"sample: {text}")
    return ppl


if __name__ == "__main__":
    main()
