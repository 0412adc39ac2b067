"""rnncore.models and rnncore.data: the language model's gradients, backends, learning on
real text, generation, checkpoints; tokenizers, corpus, batching, the unigram baseline."""
from __future__ import annotations

import numpy as np
import pytest

import rnncore
from rnncore.data import (CharTokenizer, StreamBatcher, WordTokenizer, load_corpus, split_text, stdlib_corpus,
                          tokenizer_from_dict, unigram_perplexity)
from rnncore.gradcheck import gradcheck
from rnncore.models import LanguageModel
from rnncore.optim import Adam, clip_grads


@pytest.fixture(autouse=True)
def _one_thread():
    with rnncore.num_threads(1):
        yield


@pytest.fixture(scope="module")
def stdlib_text():
    return stdlib_corpus(max_chars=60_000)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_lm_gradients(cell):
    rng = np.random.default_rng(0)
    model = LanguageModel(7, 5, embed_size=4, num_layers=2, cell=cell, dtype=np.float64, seed=1)
    model.embed.params[0][...] = rng.standard_normal((7, 4))  # larger than the 0.01 init: clearer signal
    errs = gradcheck(model, rng.integers(0, 7, (2, 4)), rng.integers(0, 7, (2, 4)), eps=1e-5, max_checks=24)
    assert max(errs.values()) < 1e-4, errs


def _train_losses(dtype, backend, steps=6, cell="lstm"):
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 11, 600).astype(np.int32)
    model = LanguageModel(11, 16, embed_size=8, num_layers=2, cell=cell, dtype=dtype, seed=2)
    opt = Adam(lr=0.01)
    batcher = StreamBatcher(ids, 4, 10)
    losses = []
    with rnncore.use_backend(backend):
        for step in range(steps):
            xs, ts = batcher.chunk(step)
            losses.append(model.loss(xs, ts))
            model.backward()
            clip_grads(model.grads, 1.0)
            opt.update(model.params, model.grads)
    return np.array(losses)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_native_and_numpy_backends_train_alike(cell):
    np.testing.assert_allclose(_train_losses(np.float64, "native", cell=cell),
                               _train_losses(np.float64, "numpy", cell=cell), rtol=1e-10)
    np.testing.assert_allclose(_train_losses(np.float32, "native", cell=cell),
                               _train_losses(np.float32, "numpy", cell=cell), rtol=2e-4)


def test_loss_falls_on_stdlib_source(stdlib_text):
    tok = CharTokenizer().fit(stdlib_text)
    ids = tok.encode(stdlib_text)
    model = LanguageModel(tok.vocab_size, 64, embed_size=16, seed=0)
    opt = Adam(lr=0.01)
    batcher = StreamBatcher(ids, 16, 32)
    losses = []
    for step in range(40):
        xs, ts = batcher.chunk(step)
        losses.append(model.loss(xs, ts))
        model.backward()
        clip_grads(model.grads, 5.0)
        opt.update(model.params, model.grads)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.8, losses
    assert model.perplexity(ids[-4000:], 8, 32) < unigram_perplexity(ids[:-4000], ids[-4000:], tok.vocab_size)


def test_generate_is_seeded_and_leaves_state(tmp_path):
    model = LanguageModel(9, 8, seed=0)
    xs = np.arange(8, dtype=np.int32).reshape(2, 4)
    model.loss(xs, xs)
    h = model.rnn.h.copy()
    a = model.generate([1, 2], 20, temperature=0.7, top_k=3, rng=5)
    b = model.generate([1, 2], 20, temperature=0.7, top_k=3, rng=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (20,) and a.min() >= 0 and a.max() < 9
    np.testing.assert_array_equal(model.rnn.h, h)
    assert model.training
    one = model.generate([3], 50, top_k=1, rng=0)  # greedy: deterministic whatever the rng
    np.testing.assert_array_equal(one, model.generate([3], 50, top_k=1, rng=99))
    with pytest.raises(ValueError):
        model.generate([], 3)


def test_save_load_round_trip(tmp_path):
    model = LanguageModel(10, 6, num_layers=2, cell="gru", seed=4)
    model.tokenizer = CharTokenizer("abcdefghij")
    path = model.save(tmp_path / "m", meta={"step": 3}, arrays={"extra": np.arange(3)})
    assert path.endswith(".npz")
    z = np.load(path)
    assert {"encoder.weight", "rnn.weight_ih_l1", "rnn.bias_hh_l0", "decoder.weight", "decoder.bias"} <= set(z.files)
    assert z["decoder.weight"].shape == (10, 6)
    back = LanguageModel.load(path)
    assert back.config == model.config
    for p, q in zip(model.params, back.params):
        np.testing.assert_array_equal(p, q)
    assert back.tokenizer.chars == "abcdefghij"
    assert back.checkpoint["meta"] == {"step": 3}
    np.testing.assert_array_equal(back.checkpoint["extra"], np.arange(3))
    xs = np.array([[1, 2, 3]], dtype=np.int32)
    assert back.loss(xs, xs) == model.loss(xs, xs)
    with pytest.raises(FileNotFoundError):
        LanguageModel.load(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        LanguageModel.load(tmp_path / "junk.npz")


def test_checkpoint_loads_into_torch_word_language_model(tmp_path):
    torch = pytest.importorskip("torch")
    model = LanguageModel(12, 8, embed_size=5, num_layers=2, dtype=np.float64, seed=0)
    sd = model.state_dict()
    enc, rnn, dec = torch.nn.Embedding(12, 5), torch.nn.LSTM(5, 8, 2, batch_first=True), torch.nn.Linear(8, 12)
    enc.load_state_dict({"weight": torch.from_numpy(sd["encoder.weight"]).float()})
    rnn.load_state_dict({k[4:]: torch.from_numpy(v).float() for k, v in sd.items() if k.startswith("rnn.")})
    dec.load_state_dict({"weight": torch.from_numpy(sd["decoder.weight"]).float(),
                         "bias": torch.from_numpy(sd["decoder.bias"]).float()})
    xs = np.array([[1, 5, 7, 2]], dtype=np.int64)
    ref = dec(rnn(enc(torch.from_numpy(xs)))[0]).detach().numpy()
    model.eval()
    np.testing.assert_allclose(model.predict(xs), ref, rtol=1e-4, atol=1e-5)


def test_perplexity_restores_state_and_mode():
    model = LanguageModel(5, 4, dropout=0.2, seed=0)
    ids = np.tile(np.arange(5, dtype=np.int32), 40)
    model.loss(ids[None, :10], ids[None, 1:11])
    h = model.rnn.h.copy()
    p1 = model.perplexity(ids, 4, 8)
    assert p1 == model.perplexity(ids, 4, 8) and 1 < p1 < 10
    np.testing.assert_array_equal(model.rnn.h, h)
    assert model.training and model.rnn.training


def test_char_tokenizer():
    tok = CharTokenizer().fit("hello world\n")
    assert tok.vocab_size == len(set("hello world\n"))
    ids = tok.encode("low\n")
    assert ids.dtype == np.int32 and tok.decode(ids) == "low\n"
    assert tokenizer_from_dict(tok.to_dict()).chars == tok.chars
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tok.encode("xyz")
    uni = CharTokenizer().fit("é∑😀a")
    assert uni.decode(uni.encode("😀é")) == "😀é"


def test_word_tokenizer():
    tok = WordTokenizer().fit("you say goodbye and I say hello .")
    assert tok.vocab_size == 8 and tok.words[0] == "say" and tok.words[-1] == "<unk>"
    ids = tok.encode("I say goodbye .")
    assert tok.decode(ids) == "I say goodbye ."
    # a word first seen after fit (a validation text, a sampling prime) is <unk>, not an error
    np.testing.assert_array_equal(tok.encode("you say farewell"), [tok.index["you"], 0, 7])
    small = WordTokenizer().fit("a a a b b c d", max_vocab=2)
    assert small.words == ["a", "b", "<unk>"]
    np.testing.assert_array_equal(small.encode("a c z"), [0, 2, 2])
    assert tokenizer_from_dict(small.to_dict()).words == small.words


def test_stdlib_corpus_deterministic_and_capped(stdlib_text):
    assert len(stdlib_text) == 60_000
    assert stdlib_corpus(max_chars=60_000) == stdlib_text
    train, val = split_text(stdlib_text, 0.1)
    assert len(val) == 6000 and train + val == stdlib_text


def test_load_corpus_file_and_folder(tmp_path):
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first\n")
    assert load_corpus(tmp_path) == "first\nsecond\n"
    assert load_corpus(tmp_path / "a.txt") == "first\n"
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "nope.txt")


def test_stream_batcher_continues_streams():
    ids = np.arange(103)
    b = StreamBatcher(ids, 4, 5)
    assert b.data.shape == (4, 25) and b.n_chunks == 4 and len(b) == 4
    xs0, ts0 = b.chunk(0)
    xs1, _ = b.chunk(1)
    np.testing.assert_array_equal(xs0[1], np.arange(25, 30))
    np.testing.assert_array_equal(ts0[1], np.arange(26, 31))
    np.testing.assert_array_equal(xs1[:, 0], xs0[:, -1] + 1)
    np.testing.assert_array_equal(b.chunk(4)[0], xs0)


def test_unigram_perplexity():
    assert unigram_perplexity([0, 1, 2, 3], [0, 1, 2, 3], 4) == pytest.approx(4.0)
    assert unigram_perplexity([0] * 98, [0], 2) == pytest.approx(100 / 99)
