"""Text data for language models: tokenizers, the default corpus, and BPTT batching.

- :class:`CharTokenizer` / :class:`WordTokenizer`: ``fit(text)``, ``encode(text)`` -> int32
  ids, ``decode(ids)`` -> str, ``to_dict()`` / :func:`tokenizer_from_dict` (saved with a
  checkpoint).
- :func:`stdlib_corpus`: real text every Python install carries, the standard library's
  own ``.py`` sources, read deterministically (sorted paths) up to a size cap.
- :func:`load_corpus` a file, a directory of text files, or the stdlib default.
- :class:`StreamBatcher`: a token stream cut into B parallel streams and read in chunks of
  T steps, so a stateful model carries its state from one chunk to the next (truncated
  BPTT).
- :func:`unigram_perplexity`: the baseline a language model must beat.
"""
from __future__ import annotations

import collections
import os
import re
import sysconfig
from pathlib import Path

import numpy as np

from ._checks import check_size

__all__ = ["CharTokenizer", "WordTokenizer", "tokenizer_from_dict", "stdlib_corpus", "load_corpus",
           "split_text", "StreamBatcher", "unigram_perplexity"]

#: stdlib folders left out of the default corpus: tests (odd encodings, huge data literals),
#: codec tables, and installed third-party packages.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings", "__pycache__"}


class CharTokenizer:
    """One id per character, in sorted code-point order."""

    kind = "char"

    def __init__(self, chars: str = ""):
        self.chars = "".join(sorted(set(chars)))
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    def fit(self, text: str) -> "CharTokenizer":
        self.__init__(text)
        return self

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        if not text:
            return np.zeros(0, np.int32)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        ok = ids < len(self._codes)
        ok[ok] = self._codes[ids[ok]] == codes[ok]
        if not ok.all():
            bad = sorted({chr(c) for c in codes[~ok]})[:10]
            raise ValueError(f"characters not in the vocabulary: {''.join(bad)!r}")
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": self.chars}


class WordTokenizer:
    """Words and punctuation (``\\w+`` or one other non-space character; newlines kept as a
    token), the ``max_vocab`` most frequent kept; ``<unk>`` (always in the vocabulary, last)
    stands for every other word, including words first seen after ``fit``."""

    kind = "word"
    UNK = "<unk>"
    _pattern = re.compile(r"\w+|[^\w\s]|\n")

    def __init__(self, words=(), lower: bool = False):
        self.lower = lower
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    def tokenize(self, text: str) -> list:
        if self.lower:
            text = text.lower()
        return self._pattern.findall(text)

    def fit(self, text: str, max_vocab: int = 10000) -> "WordTokenizer":
        counts = collections.Counter(self.tokenize(text))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        words = [w for w, _ in ranked[:max_vocab]]
        words.append(self.UNK)  # validation and sampling text may hold words training did not
        self.__init__(words, self.lower)
        return self

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> np.ndarray:
        unk = self.index.get(self.UNK)
        out = []
        for w in self.tokenize(text):
            i = self.index.get(w, unk)
            if i is None:
                raise ValueError(f"word not in the vocabulary: {w!r}")
            out.append(i)
        return np.array(out, dtype=np.int32)

    def decode(self, ids) -> str:
        s = " ".join(self.words[int(i)] for i in np.asarray(ids).reshape(-1))
        return s.replace(" \n ", "\n").replace("\n ", "\n").replace(" \n", "\n")

    def to_dict(self) -> dict:
        return {"kind": "word", "words": self.words, "lower": self.lower}


def tokenizer_from_dict(d: dict):
    """Rebuild a tokenizer saved with ``to_dict()``."""
    if d.get("kind") == "char":
        return CharTokenizer(d["chars"])
    if d.get("kind") == "word":
        return WordTokenizer(d["words"], d.get("lower", False))
    raise ValueError(f"unknown tokenizer kind {d.get('kind')!r}")


def _read(path: Path):
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _walk(folder: Path, suffix: str, skip):
    """Files under ``folder`` ending in ``suffix``, in sorted path order, lazily."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if e.name not in skip:
                yield from _walk(Path(e.path), suffix, skip)
        elif e.is_file() and e.name.endswith(suffix):
            yield Path(e.path)


def _read_tree(root: Path, suffix: str, max_chars: int, skip=frozenset()) -> str:
    parts, total = [], 0
    for p in _walk(root, suffix, skip):
        text = _read(p)
        if not text:
            continue
        parts.append(text if text.endswith("\n") else text + "\n")
        total += len(parts[-1])
        if max_chars and total >= max_chars:
            break
    text = "".join(parts)
    return text[:max_chars] if max_chars else text


def stdlib_corpus(max_chars: int = 3_000_000) -> str:
    """The running interpreter's standard-library ``.py`` sources (``sysconfig`` stdlib
    path; tests, codec tables and site-packages left out), concatenated in sorted path
    order and cut at ``max_chars`` characters."""
    root = Path(sysconfig.get_paths()["stdlib"])
    text = _read_tree(root, ".py", max_chars, _SKIP_DIRS)
    if not text:
        raise FileNotFoundError(f"no readable .py files under the standard library folder {root}")
    return text


def load_corpus(path=None, max_chars: int = 3_000_000) -> str:
    """Text of ``path`` (a UTF-8 file, or every readable file under a folder, sorted), or
    the stdlib sources when ``path`` is None; at most ``max_chars`` characters (0: all)."""
    if path is None:
        return stdlib_corpus(max_chars)
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        text = _read_tree(p, "", max_chars, frozenset({".git", "__pycache__"}))
        if not text:
            raise ValueError(f"no readable UTF-8 text files under {p}")
        return text
    if not p.is_file():
        raise FileNotFoundError(f"corpus not found: {p}")
    text = _read(p)
    if text is None:
        raise ValueError(f"corpus {p} is not UTF-8 text")
    if max_chars:
        text = text[:max_chars]
    if len(text) < 2:
        raise ValueError(f"corpus {p} is empty")
    return text


def split_text(text: str, val_fraction: float = 0.05, max_val_chars: int = 100_000):
    """(train, validation): the last ``val_fraction`` of the text (at most
    ``max_val_chars``) is held out."""
    n_val = int(min(len(text) * val_fraction, max_val_chars))
    n_val = max(n_val, 1)
    return text[:-n_val], text[-n_val:]


class StreamBatcher:
    """Cut ids into ``batch_size`` parallel streams (row b starts at b * len/B) and serve
    chunk k as ``xs = data[:, kT:(k+1)T]``, ``ts`` the next tokens. Chunk k's state
    continues chunk k-1's: keep the model stateful and reset it when ``k % n_chunks == 0``
    (a new epoch)."""

    def __init__(self, ids, batch_size: int, seq_len: int):
        batch_size = check_size("StreamBatcher", "batch_size", batch_size)
        seq_len = check_size("StreamBatcher", "seq_len", seq_len)
        ids = np.asarray(ids, dtype=np.int32)
        L = len(ids) // batch_size
        if L < 2:
            raise ValueError(f"{len(ids)} tokens are too few for batch size {batch_size}")
        self.data = np.ascontiguousarray(ids[:batch_size * L].reshape(batch_size, L))
        self.batch_size, self.seq_len = batch_size, min(seq_len, L - 1)
        self.n_chunks = (L - 1) // self.seq_len

    def chunk(self, k: int):
        """(xs, ts) of chunk ``k`` (taken modulo ``n_chunks``), each (B, T) int32."""
        i = (k % self.n_chunks) * self.seq_len
        T = self.seq_len
        return self.data[:, i:i + T], self.data[:, i + 1:i + 1 + T]

    def __iter__(self):
        for k in range(self.n_chunks):
            yield self.chunk(k)

    def __len__(self):
        return self.n_chunks


def unigram_perplexity(train_ids, eval_ids, vocab_size: int) -> float:
    """Perplexity of ``eval_ids`` under the add-one-smoothed token frequencies of
    ``train_ids``: the score of a model that ignores context."""
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(np.exp(-logp[np.asarray(eval_ids)].mean()))
