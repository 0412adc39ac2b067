"""The textbook's language models (chapters 5 and 6), written against a layers module.

``Rnnlm(layers, ...)`` builds the model from ``layers.TimeEmbedding``, ``layers.TimeLSTM`` ...,
so the same code runs on the book's plain-NumPy layers (:mod:`rnncore.textbook.layers`) and on
rnncore's drop-in (:mod:`rnncore.time_layers`). Weights come from a seeded generator (the book
draws from np.random); their scales are the book's: embeddings randn / 100, recurrent weights
randn / sqrt(fan-in) (Xavier), biases zero.
"""
from __future__ import annotations

import numpy as np

__all__ = ["SimpleRnnlm", "Rnnlm", "BetterRnnlm", "MODELS"]


class _Model:
    def _collect(self):
        self.params, self.grads = [], []
        for layer in self.layers:
            self.params += layer.params
            self.grads += layer.grads

    def predict(self, xs, train_flg=False):
        for layer in getattr(self, "drop_layers", []):
            layer.train_flg = train_flg
        for layer in self.layers:
            xs = layer.forward(xs)
        return xs

    def forward(self, xs, ts, train_flg=True):
        return self.loss_layer.forward(self.predict(xs, train_flg), ts)

    def backward(self, dout=1):
        dout = self.loss_layer.backward(dout)
        for layer in reversed(self.layers):
            dout = layer.backward(dout)
        return dout

    def reset_state(self):
        for layer in self.rnn_layers:
            layer.reset_state()


class SimpleRnnlm(_Model):
    """Chapter 5: TimeEmbedding -> TimeRNN -> TimeAffine -> TimeSoftmaxWithLoss."""

    def __init__(self, layers, vocab_size, wordvec_size, hidden_size, seed=0):
        V, D, H = vocab_size, wordvec_size, hidden_size
        rn = np.random.default_rng(seed).standard_normal
        self.layers = [
            layers.TimeEmbedding((rn((V, D)) / 100).astype("f")),
            layers.TimeRNN((rn((D, H)) / np.sqrt(D)).astype("f"), (rn((H, H)) / np.sqrt(H)).astype("f"),
                           np.zeros(H, "f"), stateful=True),
            layers.TimeAffine((rn((H, V)) / np.sqrt(H)).astype("f"), np.zeros(V, "f")),
        ]
        self.loss_layer = layers.TimeSoftmaxWithLoss()
        self.rnn_layers = [self.layers[1]]
        self._collect()


class Rnnlm(_Model):
    """Chapter 6: TimeEmbedding -> TimeLSTM -> TimeAffine -> TimeSoftmaxWithLoss."""

    def __init__(self, layers, vocab_size=10000, wordvec_size=100, hidden_size=100, seed=0):
        V, D, H = vocab_size, wordvec_size, hidden_size
        rn = np.random.default_rng(seed).standard_normal
        self.layers = [
            layers.TimeEmbedding((rn((V, D)) / 100).astype("f")),
            layers.TimeLSTM((rn((D, 4 * H)) / np.sqrt(D)).astype("f"), (rn((H, 4 * H)) / np.sqrt(H)).astype("f"),
                            np.zeros(4 * H, "f"), stateful=True),
            layers.TimeAffine((rn((H, V)) / np.sqrt(H)).astype("f"), np.zeros(V, "f")),
        ]
        self.loss_layer = layers.TimeSoftmaxWithLoss()
        self.rnn_layers = [self.layers[1]]
        self._collect()


class BetterRnnlm(_Model):
    """Chapter 6's improved model: two LSTM layers, dropout between every layer, and the output
    layer tied to the embedding (``TimeAffine(embed_W.T, b)``); wordvec_size == hidden_size."""

    def __init__(self, layers, vocab_size=10000, wordvec_size=650, hidden_size=650, dropout_ratio=0.5, seed=0):
        V, D, H = vocab_size, wordvec_size, hidden_size
        rn = np.random.default_rng(seed).standard_normal
        embed_W = (rn((V, D)) / 100).astype("f")

        def lstm(d):
            return layers.TimeLSTM((rn((d, 4 * H)) / np.sqrt(d)).astype("f"),
                                   (rn((H, 4 * H)) / np.sqrt(H)).astype("f"), np.zeros(4 * H, "f"), stateful=True)

        self.layers = [
            layers.TimeEmbedding(embed_W),
            layers.TimeDropout(dropout_ratio), lstm(D),
            layers.TimeDropout(dropout_ratio), lstm(H),
            layers.TimeDropout(dropout_ratio),
            layers.TimeAffine(embed_W.T, np.zeros(V, "f")),  # weight tying
        ]
        self.loss_layer = layers.TimeSoftmaxWithLoss()
        self.rnn_layers = [self.layers[2], self.layers[4]]
        self.drop_layers = [self.layers[1], self.layers[3], self.layers[5]]
        self._collect()


MODELS = {"SimpleRnnlm": SimpleRnnlm, "Rnnlm": Rnnlm, "BetterRnnlm": BetterRnnlm}
