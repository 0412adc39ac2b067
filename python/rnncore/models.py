"""A recurrent language model: Embedding -> RNN/LSTM/GRU stack -> Linear -> softmax CE.

:class:`LanguageModel` keeps the textbook model interface (``params``, ``grads``,
``loss(xs, ts)`` / ``forward``, ``backward()``, ``reset_state()``) and adds generation,
perplexity and ``.npz`` checkpoints. Checkpoint names follow PyTorch's
word_language_model (``encoder.weight``, ``rnn.weight_ih_l0``, ..., ``decoder.weight``
(V, H), ``decoder.bias``), so the weights load into an equivalent ``torch.nn`` model; the
configuration and the tokenizer are stored beside them as JSON strings.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from . import cells
from ._checks import check_size
from .layers import GRU, LSTM, RNN, Dropout, Embedding, Linear, Recurrent, SoftmaxCrossEntropy

__all__ = ["LanguageModel", "CELLS", "recurrent_layer"]

#: the layer class of each cell that has its own (any other registered cell is a
#: :class:`rnncore.layers.Recurrent` with ``cell=``)
CELLS = {cls.cell: cls for cls in (RNN, LSTM, GRU)}


def recurrent_layer(cell: str, *args, **kw) -> Recurrent:
    """The stacked layer of ``cell`` (a name from :mod:`rnncore.cells`): ``LSTM(*args, **kw)``
    for "lstm", ``Recurrent(*args, cell=cell, **kw)`` for a cell without its own class."""
    if cell not in cells.cells():
        raise ValueError(f"cell must be one of {sorted(cells.cells())}, got {cell!r}")
    cls = CELLS.get(cell)
    return cls(*args, **kw) if cls is not None else Recurrent(*args, cell=cell, **kw)


class LanguageModel:
    """``LanguageModel(vocab_size, hidden_size=256, *, embed_size=None, num_layers=1,
    cell="lstm", dropout=0.0, dtype=np.float32, seed=0)``.

    The recurrent stack is stateful: consecutive ``loss`` calls continue the text (truncated
    BPTT); call ``reset_state()`` at a new text. xs, ts are (N, T) ids; scores (N, T, V).
    """

    def __init__(self, vocab_size: int, hidden_size: int = 256, *, embed_size: Optional[int] = None,
                 num_layers: int = 1, cell: str = "lstm", dropout: float = 0.0, dtype=np.float32, seed: int = 0):
        if cell not in cells.cells():
            raise ValueError(f"cell must be one of {sorted(cells.cells())}, got {cell!r}")
        op = "LanguageModel"
        V, H = check_size(op, "vocab_size", vocab_size), check_size(op, "hidden_size", hidden_size)
        D = check_size(op, "embed_size", embed_size) if embed_size else min(H, 64)  # 0 or None: the default
        num_layers = check_size(op, "num_layers", num_layers)
        self.config = {"vocab_size": V, "hidden_size": H, "embed_size": D, "num_layers": int(num_layers),
                       "cell": cell, "dropout": float(dropout), "dtype": np.dtype(dtype).name, "seed": int(seed)}
        ss = np.random.SeedSequence(int(seed))
        r_embed, r_rnn, r_lin, r_drop = (np.random.default_rng(s) for s in ss.spawn(4))
        self.embed = Embedding(V, D, dtype=dtype, rng=r_embed)
        self.rnn = recurrent_layer(cell, D, H, int(num_layers), dropout=float(dropout), stateful=True,
                                   batch_first=True, dtype=dtype, rng=r_rnn)
        self.drop = Dropout(float(dropout), rng=r_drop)
        self.linear = Linear(H, V, dtype=dtype, rng=r_lin)
        self.loss_layer = SoftmaxCrossEntropy()
        self.layers = [self.embed, self.rnn, self.drop, self.linear]
        self.params = [p for layer in self.layers for p in layer.params]
        self.grads = [g for layer in self.layers for g in layer.grads]
        self.param_names = (["encoder.weight"] + [f"rnn.{n}" for n in self.rnn.param_names]
                            + ["decoder.weight_t", "decoder.bias"])
        self.training = True
        self.tokenizer = None
        self.checkpoint = {}

    # -- textbook interface -------------------------------------------------------------
    def train(self, mode: bool = True):
        self.training = self.rnn.training = self.drop.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def predict(self, xs, lengths=None, *, inference: bool = False):
        """ids (N, T) -> scores (N, T, V); ``inference``: the recurrent layer keeps no cache (no
        backward after it), as :meth:`perplexity` and :meth:`generate` run it."""
        hs = self.rnn.forward(self.embed.forward(xs), lengths=lengths, inference=inference)
        return self.linear.forward(self.drop.forward(hs))

    def loss(self, xs, ts):
        """Mean cross-entropy of predicting ts (N, T) from xs (N, T)."""
        return self.loss_layer.forward(self.predict(xs), ts)

    forward = loss

    def backward(self, dout=1.0):
        d = self.loss_layer.backward(dout)
        d = self.drop.backward(self.linear.backward(d))
        self.embed.backward(self.rnn.backward(d))
        return None

    def reset_state(self):
        self.rnn.reset_state()

    def get_state(self):
        return self.rnn.h, self.rnn.c

    def set_state(self, state):
        self.rnn.h, self.rnn.c = state

    def get_rng_state(self) -> dict:
        """States of the dropout generators (JSON-able), for an exact resume."""
        return {"rnn": self.rnn.rng.bit_generator.state, "drop": self.drop.rng.bit_generator.state}

    def set_rng_state(self, state: dict) -> None:
        self.rnn.rng.bit_generator.state = state["rnn"]
        self.drop.rng.bit_generator.state = state["drop"]

    @property
    def vocab_size(self) -> int:
        return self.config["vocab_size"]

    # -- evaluation and generation -----------------------------------------------------------
    def perplexity(self, ids, batch_size: int = 32, seq_len: int = 64) -> float:
        """exp(mean cross-entropy) over a token stream, read as ``batch_size`` parallel
        streams in chunks of ``seq_len`` with the state carried. The model's own state and
        training mode are restored afterwards."""
        from .data import StreamBatcher

        ids = np.asarray(ids)
        batch_size = max(1, min(batch_size, (len(ids) - 1) // 2))
        batcher = StreamBatcher(ids, batch_size, seq_len)
        state, mode = self.get_state(), self.training
        self.eval()
        self.reset_state()
        total, count = 0.0, 0
        try:
            for xs, ts in batcher:
                total += self.loss_layer.forward(self.predict(xs, inference=True), ts) * ts.size
                count += ts.size
        finally:
            self.set_state(state)
            self.train(mode)
        mean = total / count
        return float(np.exp(mean)) if mean < 709.0 else float("inf")  # a diverged model: no overflow

    def generate(self, start_ids, n: int, temperature: float = 1.0, top_k=None, rng=None) -> np.ndarray:
        """Sample ``n`` ids continuing ``start_ids`` (at least one id). ``temperature`` > 0
        divides the scores; ``top_k`` keeps the k most likely ids. Starts from a fresh state
        and leaves the model's state and mode as they were. Returns the new ids (int32)."""
        start = np.asarray(start_ids, dtype=np.int64).reshape(-1)
        if start.size == 0:
            raise ValueError("generate: start_ids must hold at least one id")
        if not temperature > 0:
            raise ValueError(f"generate: temperature must be > 0, got {temperature}")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"generate: top_k must be >= 1, got {top_k}")
        n = check_size("generate", "n", n, 0)
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        state, mode = self.get_state(), self.training
        self.eval()
        self.reset_state()
        out = np.empty(int(n), dtype=np.int32)
        try:
            x = start[None, :]
            for i in range(int(n)):
                logits = self.predict(x, inference=True)[0, -1].astype(np.float64) / temperature
                if top_k is not None and top_k < len(logits):
                    kth = np.partition(logits, -int(top_k))[-int(top_k)]
                    logits = np.where(logits >= kth, logits, -np.inf)
                p = np.exp(logits - logits.max())
                p /= p.sum()
                out[i] = rng.choice(len(p), p=p)
                x = out[i:i + 1][None, :].astype(np.int64)
        finally:
            self.set_state(state)
            self.train(mode)
        return out

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Weights under PyTorch's word_language_model names (decoder.weight is (V, H))."""
        sd = {"encoder.weight": self.embed.params[0]}
        sd.update(self.rnn.state_dict(prefix="rnn."))
        sd["decoder.weight"] = self.linear.params[0].T
        sd["decoder.bias"] = self.linear.params[1]
        return {k: np.ascontiguousarray(v) for k, v in sd.items()}

    def load_state_dict(self, sd: dict) -> None:
        """Copy weights (names as :meth:`state_dict`) into the model, in place."""
        def get(name, shape):
            if name not in sd:
                raise ValueError(f"checkpoint lacks {name!r}")
            a = np.asarray(sd[name])
            if a.shape != shape:
                raise ValueError(f"checkpoint {name!r} has shape {a.shape}, expected {shape}")
            return a

        E, (W, b) = self.embed.params[0], self.linear.params
        E[...] = get("encoder.weight", E.shape)
        self.rnn.load_state_dict({k: v for k, v in sd.items() if k.startswith("rnn.")}, prefix="rnn.")
        W[...] = get("decoder.weight", W.T.shape).T
        b[...] = get("decoder.bias", b.shape)

    def save(self, path, *, tokenizer=None, meta=None, arrays=None) -> str:
        """Write an ``.npz``: weights (:meth:`state_dict`), ``config`` and ``tokenizer``
        (JSON), plus ``meta`` (JSON-able dict) and extra ``arrays`` (e.g. optimizer state).
        Written to a temporary file first, then renamed."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        tok = tokenizer if tokenizer is not None else self.tokenizer
        out = dict(self.state_dict())
        out["config"] = np.array(json.dumps(self.config))
        if tok is not None:
            out["tokenizer"] = np.array(json.dumps(tok.to_dict()))
        if meta is not None:
            out["meta"] = np.array(json.dumps(meta))
        for k, v in (arrays or {}).items():
            out[k] = np.asarray(v)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path[:-4] + ".tmp.npz"
        np.savez(tmp, **out)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "LanguageModel":
        """Rebuild a model from :meth:`save`'s file. ``model.tokenizer`` is restored;
        ``model.checkpoint`` holds ``meta`` and every other stored array."""
        from .data import tokenizer_from_dict
        from .interop import read_npz

        path = os.fspath(path)
        data = read_npz(path, "checkpoint")
        if "config" not in data:
            raise ValueError(f"{path} is not an rnncore language-model checkpoint (no config)")
        try:
            cfg = json.loads(str(data.pop("config")))
            model = cls(cfg["vocab_size"], cfg["hidden_size"], embed_size=cfg["embed_size"],
                        num_layers=cfg["num_layers"], cell=cfg["cell"], dropout=cfg["dropout"],
                        dtype=np.dtype(cfg["dtype"]), seed=cfg.get("seed", 0))
            model.load_state_dict(data)
            if "tokenizer" in data:
                model.tokenizer = tokenizer_from_dict(json.loads(str(data.pop("tokenizer"))))
            meta = json.loads(str(data.pop("meta"))) if "meta" in data else {}
            if not isinstance(meta, dict):
                raise TypeError(f"meta is a {type(meta).__name__}, not a dict")
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"{path} is not a valid rnncore language-model checkpoint "
                             f"({type(e).__name__}: {e})") from None
        if model.tokenizer is not None and model.tokenizer.vocab_size != model.vocab_size:
            raise ValueError(f"{path}: its tokenizer has {model.tokenizer.vocab_size} tokens but the model "
                             f"{model.vocab_size}")
        weights = set(model.state_dict())
        model.checkpoint = {"meta": meta, **{k: v for k, v in data.items() if k not in weights}}
        return model
