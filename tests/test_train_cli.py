"""The training loop and the ``rnncore`` command line, end to end with tiny settings."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from rnncore.cli import main
from rnncore.models import LanguageModel

TINY = ["--hidden", "16", "--embed", "8", "--batch", "4", "--seq-len", "16", "--max-chars", "20000",
        "--eval-every", "10", "--sample-every", "10", "--no-progress", "--threads", "1"]


def _losses(ckpt):
    return LanguageModel.load(ckpt).checkpoint["meta"]["losses"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--steps", "20", "--out", str(out), *TINY]) == 0
    return out


def test_train_writes_checkpoint_plot_and_baseline(trained, capsys):
    ckpt = trained / "model.npz"
    assert ckpt.is_file()
    pytest.importorskip("matplotlib")
    assert (trained / "loss.png").is_file()
    model = LanguageModel.load(ckpt)
    meta = model.checkpoint["meta"]
    assert meta["step"] == 20 and len(meta["losses"]) == 20
    assert [s for s, _ in meta["val_history"]] == [10, 20]
    assert model.tokenizer.kind == "char" and model.config["cell"] == "lstm"


def test_same_seed_same_run_and_resume_continues_exactly(trained, tmp_path, capsys):
    again = tmp_path / "again"
    assert main(["train", "--steps", "20", "--out", str(again), *TINY]) == 0
    full = _losses(trained / "model.npz")
    assert _losses(again / "model.npz") == full
    half = tmp_path / "half"
    assert main(["train", "--steps", "10", "--out", str(half), *TINY]) == 0
    assert _losses(half / "model.npz") == full[:10]
    assert main(["train", "--steps", "20", "--resume", str(half / "model.npz"), "--no-progress"]) == 0
    assert _losses(half / "model.npz") == full
    out = capsys.readouterr().out
    assert "resumed" in out and "unigram baseline" in out


def test_sample_command(trained, capsys):
    ckpt = str(trained / "model.npz")
    assert main(["sample", ckpt, "--length", "40", "--seed", "3", "--prime", "def "]) == 0
    a = capsys.readouterr().out
    assert a.startswith("def ") and len(a) >= 44
    assert main(["sample", ckpt, "--length", "40", "--seed", "3", "--prime", "def ", "--top-k", "5",
                 "--temperature", "0.5", "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.startswith("def ")
    assert main(["sample", ckpt, "--length", "40", "--seed", "3", "--prime", "def "]) == 0
    assert capsys.readouterr().out == a


def test_word_level_gru_on_own_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("you say goodbye and I say hello .\n" * 200)
    out = tmp_path / "w"
    assert main(["train", "--corpus", str(corpus), "--level", "word", "--cell", "gru", "--steps", "30",
                 "--lr", "0.01", "--out", str(out), *TINY]) == 0
    model = LanguageModel.load(out / "model.npz")
    assert model.tokenizer.kind == "word" and model.vocab_size == 9  # 7 words, newline, <unk>
    meta = model.checkpoint["meta"]
    assert meta["val_history"][-1][1] < 3.0
    assert "unigram baseline" in capsys.readouterr().out
    assert main(["sample", str(out / "model.npz"), "--length", "5", "--prime", "you say", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("you say ")


def test_numpy_backend_matches_native(tmp_path, capsys):
    args = ["train", "--steps", "4", "--eval-every", "4", "--dtype", "float64", *TINY]
    assert main([*args, "--out", str(tmp_path / "n"), "--backend", "native"]) == 0
    assert main([*args, "--out", str(tmp_path / "p"), "--backend", "numpy"]) == 0
    np.testing.assert_allclose(_losses(tmp_path / "n" / "model.npz"), _losses(tmp_path / "p" / "model.npz"),
                               rtol=1e-10)


def test_bad_arguments_in_process(capsys, tmp_path):
    assert main(["train", "--hidden", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--hidden" in err
    assert main(["sample", str(tmp_path / "none.npz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err
    assert main([]) == 2
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    for args in (["train", "--seed", "-1"], ["sample", str(tmp_path / "none.npz"), "--seed", "-3"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--seed" in err
    assert main(["bench", "--load", "-1"]) == 2
    assert "--load" in capsys.readouterr().err


def test_a_learning_rate_that_breaks_the_weights_says_so(tmp_path, capsys):
    assert main(["train", "--steps", "4", "--lr", "1e300", "--out", str(tmp_path / "x"), *TINY]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "try a lower --lr" in err


@pytest.mark.parametrize("args,needle", [
    (["train", "--bogus"], "unrecognized"),
    (["train", "--cell", "transformer"], "--cell"),
    (["train", "--lr", "-1"], "--lr"),
    (["train", "--corpus", "/no/such/file.txt"], "not found"),
    (["train", "--resume", "/no/such/model.npz"], "not found"),
    (["sample"], "CHECKPOINT"),
    (["sample", "/no/such/model.npz"], "not found"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_subprocess(args, needle, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "rnncore", *args], capture_output=True, text=True, cwd=tmp_path,
                       env=env, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert needle in r.stderr


def test_sample_rejects_non_checkpoint(tmp_path, capsys):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.arange(3))
    assert main(["sample", str(bad)]) == 1
    assert "not an rnncore" in capsys.readouterr().err
    assert main(["sample", str(bad.with_name("y.txt"))]) == 1
    text = bad.with_name("notes.txt")
    text.write_text("not a checkpoint\n")
    for args in (["sample", str(text)], ["train", "--resume", str(text)]):
        capsys.readouterr()
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a zip archive" in err and "pickle" not in err


def test_bench_is_passed_through(capsys):
    assert main(["bench", "--no-such-option"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "bench" in err


def test_diverging_run_ends_in_one_line(tmp_path, capsys):
    """A learning rate that makes the loss explode gives no OverflowError traceback (from the
    progress display or the perplexity): the run either ends with one message naming --lr, or
    finishes and reports an infinite perplexity."""
    rc = main(["train", "--steps", "30", "--lr", "1e6", "--out", str(tmp_path), *TINY])
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "OverflowError" not in out.err
    if rc:
        assert "lower --lr" in out.err, out.err
    else:
        assert "validation perplexity" in out.out


@pytest.mark.parametrize("where", ["forward", "backward", "update"])
def test_ctrl_c_inside_a_step_checkpoints_that_step_and_resumes_exactly(where, tmp_path, monkeypatch, capsys):
    """A real SIGINT delivered inside step 7's forward, backward or optimizer update: the step
    finishes, the checkpoint is that of step 7 (the counter, the weights, the optimizer and the
    recurrent state together), and resuming gives the uninterrupted run's losses and weights."""
    import signal

    from rnncore import models, optim

    full = tmp_path / "full"
    assert main(["train", "--steps", "12", "--out", str(full), *TINY]) == 0
    calls = {"n": 0}
    target = {"forward": (models.LanguageModel, "loss"), "backward": (models.LanguageModel, "backward"),
              "update": (optim.Adam, "update")}[where]
    original = getattr(*target)

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            signal.raise_signal(signal.SIGINT)  # arrives in the middle of the step
        return original(self, *a, **k)

    monkeypatch.setattr(*target, interrupted)
    cut = tmp_path / "cut"
    assert main(["train", "--steps", "12", "--out", str(cut), *TINY]) == 130
    monkeypatch.setattr(*target, original)
    ck = LanguageModel.load(cut / "model.npz").checkpoint["meta"]
    assert ck["step"] == 7 and len(ck["losses"]) == 7
    assert main(["train", "--steps", "12", "--resume", str(cut / "model.npz"), "--no-progress"]) == 0
    assert _losses(cut / "model.npz") == _losses(full / "model.npz")
    a, b = LanguageModel.load(cut / "model.npz"), LanguageModel.load(full / "model.npz")
    for p, q in zip(a.params, b.params):
        np.testing.assert_array_equal(p, q)
    assert "interrupted after step 7" in capsys.readouterr().out


def test_word_level_validation_words_unseen_in_training(tmp_path, capsys):
    """Validation text holds words the training text does not: they are <unk>, the run goes on."""
    import argparse

    out = tmp_path / "w"
    assert main(["train", "--corpus", argparse.__file__, "--level", "word", "--steps", "3", "--out", str(out),
                 *TINY]) == 0
    assert "validation perplexity" in capsys.readouterr().out


def test_damaged_checkpoints_give_one_value_error(trained, tmp_path):
    import json
    import zipfile

    from rnncore import load_npz

    with np.load(trained / "model.npz") as good:
        arrays = {k: good[k] for k in good.files}
    cases = {"truncated": None, "bad_json": dict(arrays, config=np.array("{not json")),
             "no_key": dict(arrays, config=np.array(json.dumps({"vocab_size": 3}))),
             "short_tokenizer": dict(arrays, tokenizer=np.array(json.dumps({"kind": "char", "chars": ["a", "b"]})))}
    for name, content in cases.items():
        path = tmp_path / f"{name}.npz"
        if content is None:
            data = (trained / "model.npz").read_bytes()
            path.write_bytes(data[: len(data) // 2])
        else:
            np.savez(path, **content)
        with pytest.raises(ValueError, match=str(path.name)):
            LanguageModel.load(path)
        assert main(["sample", str(path), "--length", "3"]) != 0
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(tmp_path / "truncated.npz")
    assert zipfile.is_zipfile(trained / "model.npz")


def test_resume_keeps_the_runs_lr_and_clip(tmp_path, capsys):
    """A run with its own --lr and --clip, cut and resumed without them, continues with them (the
    defaults took their place: other losses, and the checkpoint rewritten with the defaults); a
    flag that the checkpoint fixes is named as ignored."""
    own = ["--lr", "0.02", "--clip", "0.05"]
    full, half = tmp_path / "full", tmp_path / "half"
    assert main(["train", "--steps", "8", "--out", str(full), *TINY, *own]) == 0
    assert main(["train", "--steps", "4", "--out", str(half), *TINY, *own]) == 0
    capsys.readouterr()
    assert main(["train", "--steps", "8", "--resume", str(half / "model.npz"), "--no-progress",
                 "--hidden", "7"]) == 0
    assert "--hidden ignored" in capsys.readouterr().out
    assert _losses(half / "model.npz") == _losses(full / "model.npz")
    cfg = LanguageModel.load(half / "model.npz").checkpoint["meta"]["train_config"]
    assert (cfg["lr"], cfg["clip"], cfg["hidden"]) == (0.02, 0.05, LanguageModel.load(full / "model.npz").config["hidden_size"])


def test_corpus_path_kept_whole_for_a_resume_elsewhere(tmp_path, monkeypatch, capsys):
    """A corpus given as ~/... (unexpanded, as --corpus=~/x leaves it) or relative is stored as its
    absolute path, so that a resume from another folder reads the same file."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    (home / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog.\n" * 300)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    tiny = [a for a in TINY]
    assert main(["train", "--corpus", "~/corpus.txt", "--steps", "3", "--out", str(tmp_path / "a"), *tiny]) == 0
    assert main(["train", "--corpus", "corpus.txt", "--steps", "3", "--out", str(tmp_path / "b"), *tiny]) == 0
    for run in ("a", "b"):
        cfg = LanguageModel.load(tmp_path / run / "model.npz").checkpoint["meta"]["train_config"]
        assert cfg["corpus"] == str(home / "corpus.txt")
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--steps", "5", "--resume", str(tmp_path / "b" / "model.npz"), "--no-progress"]) == 0
    assert "ignored" not in capsys.readouterr().out
