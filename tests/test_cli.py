"""The `rcond` command as a user meets it: exit codes, error messages, atomic output."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_jsonl
from rcond.cli import main
from rcond.corpus import CorpusError, load

ROOT = Path(__file__).resolve().parents[1]


def preprocess(tmp_path, rows, *extra, fmt="scored", out="c"):
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    return main(["preprocess", str(src), "--format", fmt, "--out", str(tmp_path / out), "--tokenizer", "train:300",
                 "--block-size", "64", "--no-progress", *extra])


def test_preprocess_happy_path_and_summary(tmp_path, capsys):
    rows = [{"prompt": "Say", "response": f"reply number {i}", "reward": i / 10} for i in range(40)]
    assert preprocess(tmp_path, rows, "--bins", "4") == 0
    out = capsys.readouterr().out
    assert "corpus written to" in out and "packing efficiency" in out and "<|rtg:3|>" in out
    ds, scheme, tok = load(tmp_path / "c")
    assert scheme.num_bins == 4 and sum(scheme.counts) > 0 and len(ds) > 0


@pytest.mark.parametrize("rows,message", [
    ([{"response": "a", "reward": 1}, "{not json"], r"in.jsonl:2: malformed JSON"),
    ([{"response": "a"}], r"in.jsonl:1: missing field 'reward'; fields present: \['response'\]"),
    ([{"response": "a", "reward": "high"}], r"in.jsonl:1: reward must be a number"),
    ([{"response": "", "reward": 1}], r"in.jsonl:1: empty response"),
])
def test_bad_input_exit_2_names_place(tmp_path, capsys, rows, message):
    import re

    assert preprocess(tmp_path, rows) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "--on-error skip" in err
    assert not (tmp_path / "c").exists()


def test_block_size_too_small(tmp_path, capsys):
    assert preprocess(tmp_path, [{"response": "a", "reward": 1}], "--block-size", "2") == 2
    assert "smaller than a control prefix" in capsys.readouterr().err


def test_summary_notes_quantile_bins_left_empty_by_ties(tmp_path, capsys):
    tied = [{"response": f"reply {i}", "reward": 0.5 if i < 30 else i / 40} for i in range(40)]
    assert preprocess(tmp_path, tied, "--bins", "4") == 0
    out = capsys.readouterr().out
    assert "note: 2 of 4 bins hold no reward-to-go token" in out
    _, scheme, _ = load(tmp_path / "c")  # edges 0.5, 0.5, 0.5625: a 0.5 passes two edges (bin 2), the rest three
    assert scheme.edges[:2] == [0.5, 0.5] and scheme.counts[:2] == [0, 0] and all(scheme.counts[2:])
    assert preprocess(tmp_path, [{"response": f"r {i}", "reward": i} for i in range(40)], "--bins", "4",
                      out="spread") == 0
    assert "note:" not in capsys.readouterr().out


def test_an_output_that_cannot_be_created_is_exit_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert preprocess(tmp_path, [{"response": "a", "reward": 1}], out="afile/c") == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'afile' / 'c'}: cannot create the output there" in err and "Traceback" not in err


def test_skip_is_suggested_only_where_it_would_help(tmp_path, capsys):
    """A missing input file is not a bad record: --on-error skip would not get past it."""
    missing = tmp_path / "nope.jsonl"
    assert main(["preprocess", str(missing), "--format", "scored", "--out", str(tmp_path / "c"),
                 "--tokenizer", "train:300", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: no such file or directory" in err and "--on-error" not in err


def test_a_tokenizer_that_cannot_be_loaded_is_exit_2_without_traceback(tmp_path, capsys):
    assert preprocess(tmp_path, [{"response": "a", "reward": 1}], "--tokenizer", str(tmp_path / "no_tok")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'no_tok'}: no such directory") and "Traceback" not in err
    assert not (tmp_path / "c").exists()


def test_toyworld_refusals_are_exit_2_without_traceback(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert main(["toyworld", "--out", str(tmp_path / "full"), "--reviews", "3", "--no-progress"]) == 2
    assert "already exists and is not empty; choose another directory or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    assert main(["toyworld", "--out", str(tmp_path / "neg"), "--reviews", "-5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "n_reviews must be a non-negative integer, got -5" in err and "Traceback" not in err
    assert not (tmp_path / "neg").exists()


def test_overwrite(tmp_path, capsys):
    rows = [{"response": "a b", "reward": 1}, {"response": "c", "reward": 0}]
    assert preprocess(tmp_path, rows) == 0
    assert preprocess(tmp_path, rows) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert preprocess(tmp_path, rows, "--overwrite") == 0
    load(tmp_path / "c")


def test_skip_reports(tmp_path, capsys):
    rows = [{"response": "a", "reward": 1}, "{x", {"response": "b", "reward": "nan?"}, {"response": "c", "reward": 2}]
    assert preprocess(tmp_path, rows, "--on-error", "skip") == 0
    out = capsys.readouterr().out
    assert "skipped 2 bad" in out and "in.jsonl:2: malformed JSON" in out and "in.jsonl:3: reward" in out


SLOW_SCORER = "import time\ndef score(texts):\n    time.sleep(0.2)\n    return [1.0] * len(texts)\n"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_leaves_nothing_loadable(tmp_path, sig):
    (tmp_path / "slowscore.py").write_text(SLOW_SCORER)
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": f"text {i}"} for i in range(5000)])
    out = tmp_path / "c"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-m", "rcond.cli", "preprocess", str(src), "--format", "scored",
                             "--score-with", "slowscore:score", "--tokenizer", "train:300", "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".c.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".c.tmp-*")), "the run never started writing"
    time.sleep(0.3)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    with pytest.raises(CorpusError):
        load(out)
    if sig != signal.SIGKILL:  # cleaned up on catchable signals
        assert not list(tmp_path.glob(".c.tmp-*"))


def test_help_has_examples():
    r = subprocess.run([sys.executable, "-m", "rcond.cli", "preprocess", "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "examples:" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--resume", "--weights", "0.3", "0.7"], "drop --weights"),
    (["--resume", "--steps", "0"], "drop --steps"),
    (["--corpus", "c", "--steps", "0"], "steps must be an integer >= 1, got 0"),
    (["--corpus", "c", "--lr", "-1"], "lr must be a positive number, got -1.0"),
    (["--corpus", "c", "--batch-size", "0"], "batch_size must be an integer of at least 1, got 0"),
])
def test_train_flags_are_not_dropped(tmp_path, capsys, args, message):
    """A flag `rcond train` would not use is refused before anything runs (exit 2, nothing written)."""
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
