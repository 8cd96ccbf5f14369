"""The `rcond` command as a user meets it: exit codes, error messages, atomic output."""

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import running, write_jsonl
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
    assert out.rstrip().splitlines()[-1] == f"  its rows as the model sees them: rcond show {tmp_path / 'c'}"
    ds, scheme, tok = load(tmp_path / "c")
    assert scheme.num_bins == 4 and sum(scheme.counts) > 0 and len(ds) > 0


def test_inputs_may_also_follow_the_options(tmp_path, capsys):
    """`rcond preprocess a.jsonl --format ... --out X b.jsonl` (a shell glob at the end) reads both, in
    command-line order; an option nobody knows is still argparse's error."""
    a = write_jsonl(tmp_path / "a.jsonl", [{"response": "first", "reward": 1}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"response": "second", "reward": 2}, {"response": "third", "reward": 3}])
    common = ["--format", "scored", "--tokenizer", "train:300", "--no-progress", "--block-size", "64"]
    assert main(["preprocess", str(a), *common, "--out", str(tmp_path / "c"), str(b)]) == 0
    assert "records        3" in capsys.readouterr().out
    assert list(load(tmp_path / "c")[1].source_fingerprints) == [str(a), str(b)]
    with pytest.raises(SystemExit) as e:
        main(["preprocess", str(a), *common, "--out", str(tmp_path / "d"), str(b), "--no-such-option"])
    assert e.value.code == 2 and "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


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
    # quantiles 0.5, 0.5, 0.5625; the second edge sends the thirty 0.5s down (30 below it is nearer its
    # target 20 than 0), to 0.625, which lifts the third: a 0.5 passes one edge (bin 1), the rest three
    _, scheme, _ = load(tmp_path / "c")
    assert scheme.edges == [0.5, 0.625, 0.625]
    assert scheme.counts[0] == scheme.counts[2] == 0 and scheme.counts[1] and scheme.counts[3]
    assert preprocess(tmp_path, [{"response": f"r {i}", "reward": i} for i in range(40)], "--bins", "4",
                      out="spread") == 0
    assert "note:" not in capsys.readouterr().out


@pytest.mark.parametrize("binning", ["quantile", "uniform"])
def test_summary_notes_rewards_that_are_all_the_same(tmp_path, capsys, binning):
    """Equal rewards fill one bin (the top under quantile, the bottom under uniform): the note says
    the rewards are the same, not that they are spread unevenly."""
    rows = [{"response": f"reply {i}", "reward": 0.5} for i in range(20)]
    assert preprocess(tmp_path, rows, "--bins", "4", "--binning", binning) == 0
    out = capsys.readouterr().out
    assert "note: every reward-to-go token is in one bin: the rewards the edges were fitted on are all the same" in out
    assert "spread unevenly" not in out and "tie at the quantile edges" not in out


def test_summary_explains_bins_of_pairs_without_scores(tmp_path, capsys):
    pairs = [{"chosen": f"\n\nHuman: hi {i}\n\nAssistant: glad to help {i}",
              "rejected": f"\n\nHuman: hi {i}\n\nAssistant: go away {i}"} for i in range(30)]
    assert preprocess(tmp_path, pairs, "--bins", "4", "--uncond-fraction", "0", fmt="pairs") == 0
    out = capsys.readouterr().out  # chosen -> bin 3, rejected -> bin 0 (DESIGN §3); bins 1 and 2 stay empty
    assert ("bins (uniform over [-1, 1]: the pairs carry no scores, so each chosen response takes the top bin and "
            "each rejected one the bottom bin)") in out
    assert ("note: 2 of 4 bins hold no reward-to-go token (pairs without scores fill only the top and bottom bins); "
            "nothing trains those levels. Use --bins 2, or give the pairs scores") in out
    assert "--binning quantile" not in out  # the advice for rewards spread unevenly would not help here
    _, scheme, _ = load(tmp_path / "c")
    assert scheme.counts == [30, 0, 0, 30]
    assert preprocess(tmp_path, pairs, "--bins", "2", "--uncond-fraction", "0", fmt="pairs", out="two") == 0
    assert "note:" not in capsys.readouterr().out
    assert load(tmp_path / "two")[1].counts == [30, 30]
    scored = [dict(p, chosen_score=1.0 + i, rejected_score=-1.0 - i) for i, p in enumerate(pairs)]
    assert preprocess(tmp_path, scored, "--bins", "4", fmt="pairs", out="scored") == 0
    out = capsys.readouterr().out
    assert "bins (quantile)" in out and "carry no scores" not in out


def test_summary_notes_uniform_and_explicit_bins_that_no_reward_reaches(tmp_path, capsys):
    skewed = [{"response": f"reply {i}", "reward": 0.0 if i < 39 else 10.0} for i in range(40)]
    assert preprocess(tmp_path, skewed, "--bins", "4", "--binning", "uniform") == 0
    out = capsys.readouterr().out  # edges 2.5, 5, 7.5: bins 1 and 2 hold nothing
    assert ("note: 2 of 4 bins hold no reward-to-go token (no reward falls in their equal-width ranges: the rewards "
            "are spread unevenly); nothing trains those levels. Use fewer --bins, or --binning quantile") in out
    assert preprocess(tmp_path, skewed, "--binning", "edges:1,2,3", out="explicit") == 0
    out = capsys.readouterr().out
    assert "note: 2 of 4 bins hold no reward-to-go token (no reward falls between their edges)" in out
    _, scheme, _ = load(tmp_path / "explicit")
    assert scheme.num_bins == 4 and scheme.counts[1:3] == [0, 0] and scheme.counts[0] and scheme.counts[3]


@pytest.mark.parametrize("options,message", [
    (["--bins", "4", "--binning", "edges:0,1"], "--bins 4 contradicts --binning 'edges:0,1': 2 edges make 3 bins; "
                                                "leave out --bins, or give 3 edges"),
    (["--bins", "0"], "--bins must be between 1 and 1024, got 0"),
    (["--bins", "5000"], "--bins must be between 1 and 1024, got 5000 (each bin is a vocabulary token"),
    (["--binning", "median"], "unknown binning 'median': expected quantile, uniform or edges:a,b,..."),
    (["--block-size", "2000000"], "--block-size 2000000 is more than 1,048,576 tokens per row"),
    (["--tokenizer", "train:99999999"], "--tokenizer 'train:99999999': a byte-level BPE needs a vocabulary of 260 "
                                        "to 1,048,576 tokens"),
    (["--tokenizer", ""], "--tokenizer is empty; expected a tokenizer directory, a hub id, or train:VOCAB_SIZE"),
    *[(["--tokenizer", spec], f"--tokenizer {spec!r}: expected train:VOCAB_SIZE, e.g. train:4096")
      for spec in ("train:abc", "train: 300", "train:+300", "train:3_00", "train:\uff13\uff10\uff10", "train:")],
])
def test_options_that_cannot_work_are_refused_before_the_input_is_read(tmp_path, capsys, options, message):
    """The input's second line is broken: an option error shows it was checked before reading."""
    assert preprocess(tmp_path, [{"response": "a", "reward": 1}, "{broken"], *options) == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "malformed JSON" not in err, err
    assert not (tmp_path / "c").exists()


def test_bins_agreeing_with_explicit_edges_is_accepted(tmp_path):
    assert preprocess(tmp_path, [{"response": f"r {i}", "reward": i} for i in range(6)], "--bins", "3",
                      "--binning", "edges:1,3", "--uncond-fraction", "0") == 0
    _, scheme, _ = load(tmp_path / "c")
    assert scheme.num_bins == 3 and scheme.edges == [1.0, 3.0] and scheme.counts == [1, 2, 3]


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


def test_summary_says_how_many_rewards_the_edges_leave_out(tmp_path, capsys):
    """Dialogs cut by --truncate lose the RTG token of their last turn: the summary says the edges
    were fitted without those rewards, and how many; the counts per bin hold only the kept tokens."""
    long = {"role": "user", "content": "tell me about the weather today " * 8}
    dialogs = [{"turns": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "fine", "reward": i},
                          long, {"role": "assistant", "content": "sunny", "reward": -i}]} for i in range(12)]
    assert preprocess(tmp_path, dialogs, "--truncate", "--bins", "2", "--uncond-fraction", "0", "--block-size", "24",
                      fmt="dialog") == 0
    out = capsys.readouterr().out
    _, scheme, _ = load(tmp_path / "c")
    assert sum(scheme.counts) == 12
    assert "bins (quantile; fitted on 12 rewards, those of the RTG tokens below and of the unconditional records, " \
           "leaving out the 12 whose RTG tokens or records were cut)" in out, out


def test_toyworld_refusals_are_exit_2_without_traceback(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert main(["toyworld", "--out", str(tmp_path / "full"), "--reviews", "3", "--no-progress"]) == 2
    assert "is not a toy world (which holds reviews.jsonl, dialogs.jsonl, text.jsonl, meta.json); only an earlier " \
           "output of this kind is replaced" in capsys.readouterr().err
    assert (tmp_path / "full" / "x").read_text() == "keep me"
    assert main(["toyworld", "--out", str(tmp_path / "neg"), "--reviews", "-5", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "error: --reviews must be a non-negative integer, got -5" in err and "Traceback" not in err
    assert not (tmp_path / "neg").exists()
    for flag in ("--texts", "--dialogs", "--seed"):
        assert main(["toyworld", "--out", str(tmp_path / "neg"), flag, "-3", "--no-progress"]) == 2
        assert f"error: {flag} must be a non-negative integer, got -3" in capsys.readouterr().err
    assert not (tmp_path / "neg").exists()


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])  # the column-wise JSONL path and the record path
def test_summary_notes_pairs_whose_two_sides_split_into_different_prompts(tmp_path, capsys, suffix):
    """An '\\n\\nAssistant:' inside the chosen response moves the split: its prompt holds 'step one.',
    the rejected side's does not. Counted in a note; pairs with one prompt are not."""
    rows = [{"chosen": "\n\nHuman: how?\n\nAssistant: step one.\n\nAssistant: step two.",
             "rejected": "\n\nHuman: how?\n\nAssistant: no idea."},
            {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"}]
    if suffix == "jsonl":
        src = write_jsonl(tmp_path / "in.jsonl", rows)
    else:
        import csv

        src = tmp_path / "in.csv"
        with open(src, "w", newline="") as f:
            csv.writer(f).writerows([["chosen", "rejected"]] + [[r["chosen"], r["rejected"]] for r in rows])
    assert main(["preprocess", str(src), "--format", "pairs", "--out", str(tmp_path / "c"), "--tokenizer",
                 "train:300", "--bins", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "note: 1 preference pairs split into different prompts for their two sides" in out


def test_a_prompt_field_no_record_has_is_noted(tmp_path, capsys):
    """--prompt-field mistyped: the responses are read without prompts, and the summary says so;
    the right name gives prompts and no note."""
    rows = [{"question": f"q {i}", "response": f"r {i}", "reward": i} for i in range(4)]
    assert preprocess(tmp_path, rows, "--prompt-field", "qestion") == 0
    assert "note: no record has a 'qestion' field with text (--prompt-field)" in capsys.readouterr().out
    assert preprocess(tmp_path, rows, "--prompt-field", "question", out="right") == 0
    assert "--prompt-field" not in capsys.readouterr().out


def test_input_names_and_field_names_that_are_not_utf8(tmp_path, capsys, monkeypatch):
    """A file named in Latin-1 (caf\\xe9.jsonl), or such a .txt in an input folder, is read and
    fingerprinted (the corpus loads); a field name with such a byte is exit 2 naming the option."""
    monkeypatch.chdir(tmp_path)
    rows = [{"response": "a b", "reward": 1}, {"response": "c", "reward": 0}]
    latin = os.fsdecode(b"caf\xe9.jsonl")
    write_jsonl(tmp_path / latin, rows)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("one document")
    (docs / os.fsdecode(b"b\xe9.txt")).write_text("another")
    for src, fmt in ((latin, "scored"), ("docs", "text")):
        assert main(["preprocess", src, "--format", fmt, "--out", f"c_{fmt}", "--tokenizer", "train:300",
                     "--no-progress"]) == 0
        _, scheme, _ = load(tmp_path / f"c_{fmt}")
        assert list(scheme.source_fingerprints) == [src]
    capsys.readouterr()
    assert main(["preprocess", latin, "--format", "scored", "--out", "c", "--tokenizer", "train:300", "--no-progress",
                 "--reward-field", os.fsdecode(b"r\xe9ward")]) == 2
    assert "error: --reward-field 'r\\udce9ward': not valid UTF-8" in capsys.readouterr().err


def test_options_a_reader_refuses_are_refused_before_the_scorer_is_built(tmp_path, capsys):
    """--score-with on text, or --gamma on scored, is exit 2 before the scorer module is imported
    (a reward model would be loaded, in every --score-workers process, only to be refused)."""
    scorer = tmp_path / "heavy.py"
    scorer.write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\n\ndef score(texts):\n"
                      f"    return [0.0] * len(texts)\n")
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a b", "response": "a b"}])
    for extra, message in ((["--format", "text"], "--score-with does not apply to --format text"),
                           (["--format", "scored", "--gamma", "0.5"], "--gamma 0.5 discounts reward-to-go")):
        assert main(["preprocess", str(src), *extra, "--out", str(tmp_path / "c"), "--tokenizer", "train:300",
                     "--score-with", f"{scorer}:score", "--score-workers", "2", "--no-progress"]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "imported").exists()


def test_overwrite(tmp_path, capsys):
    rows = [{"response": "a b", "reward": 1}, {"response": "c", "reward": 0}]
    assert preprocess(tmp_path, rows) == 0
    assert preprocess(tmp_path, rows) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert preprocess(tmp_path, rows, "--overwrite") == 0
    load(tmp_path / "c")


def test_overwrite_replaces_only_an_earlier_output_of_the_command(tmp_path, capsys):
    """--overwrite on a folder that is no corpus (a project) is exit 2 before any work, and the
    folder is kept; so for rcond toyworld and a folder that is no toy world."""
    rows = [{"response": "a b", "reward": 1}, {"response": "c", "reward": 0}]
    (tmp_path / "c" / "src").mkdir(parents=True)
    (tmp_path / "c" / "src" / "main.py").write_text("code")
    assert preprocess(tmp_path, rows, "--overwrite") == 2
    assert "is not an rcond corpus (which holds scheme.json, rows.arrow, tokenizer/)" in capsys.readouterr().err
    assert main(["toyworld", "--out", str(tmp_path / "c"), "--reviews", "3", "--no-progress", "--overwrite"]) == 2
    assert "is not a toy world (which holds reviews.jsonl" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "c").rglob("*")] == ["src", "main.py"]


def test_overwrite_keeps_an_earlier_corpus_that_holds_a_users_files_or_another_corpus(tmp_path, capsys):
    """A corpus written inside an earlier one, or a user's notes beside its files, make
    --overwrite of the outer one exit 2 before any work, deleting nothing."""
    rows = [{"response": "a b", "reward": 1}, {"response": "c", "reward": 0}]
    assert preprocess(tmp_path, rows) == 0
    src = write_jsonl(tmp_path / "in2.jsonl", rows)
    assert main(["preprocess", str(src), "--format", "scored", "--out", str(tmp_path / "c" / "sub"),
                 "--tokenizer", "train:300", "--no-progress"]) == 0
    (tmp_path / "c" / "notes.md").write_text("mine")
    capsys.readouterr()
    assert preprocess(tmp_path, rows, "--overwrite") == 2
    assert "holds an rcond corpus and also notes.md, sub, which an rcond corpus does not hold" in capsys.readouterr().err
    load(tmp_path / "c" / "sub")
    assert (tmp_path / "c" / "notes.md").read_text() == "mine"
    load(tmp_path / "c")


def test_an_input_or_tokenizer_name_too_long_for_the_file_system_is_a_clear_error(tmp_path, capsys, monkeypatch):
    """A path with a 300-byte name, where the system answers ENAMETOOLONG to any look at it, is
    exit 2 naming it, not an OSError traceback; no output appears."""
    from rcond.atomic import name_max

    monkeypatch.chdir(tmp_path)
    rows = [{"response": "a b", "reward": 1}, {"response": "c", "reward": 0}]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    long = "n" * 300
    for args in ([f"{long}.jsonl", "--tokenizer", "train:300"], [str(src), "--tokenizer", long]):
        assert main(["preprocess", *args, "--format", "scored", "--out", "c", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"error: {long}" in err
        assert f"file name too long; expected a path whose every name has at most {name_max(tmp_path)} bytes" in err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_pairs_summary_counts_skips_in_pairs(tmp_path, capsys):
    rows = [{"prompt": "q", "chosen": "good", "rejected": "bad"}, "{x", {"prompt": "q", "chosen": "", "rejected": "b"}]
    assert preprocess(tmp_path, rows, "--on-error", "skip", "--bins", "2", fmt="pairs") == 0
    assert "records        2  (2 on, 0 off; the two sides of 1 preference pairs); skipped 2 bad pairs" in \
        capsys.readouterr().out


def test_skip_reports(tmp_path, capsys):
    rows = [{"response": "a", "reward": 1}, "{x", {"response": "b", "reward": "nan?"}, {"response": "c", "reward": 2}]
    assert preprocess(tmp_path, rows, "--on-error", "skip") == 0
    out = capsys.readouterr().out
    assert "skipped 2 bad" in out and "in.jsonl:2: malformed JSON" in out and "in.jsonl:3: reward" in out


def test_every_skipped_record_is_listed_in_the_corpus(tmp_path, capsys):
    """The summary names the first five; skipped.txt in the corpus names all of them, one per line,
    in input order, read once though train:VOCAB reads the input twice. A build that skips nothing
    writes no such file, and --overwrite replaces a corpus that holds one."""
    rows = [{"response": f"r{i}", "reward": i} if i % 4 else {"bad": i} for i in range(1, 121)]  # 30 bad
    assert preprocess(tmp_path, rows, "--on-error", "skip") == 0
    out = capsys.readouterr().out
    listed = (tmp_path / "c" / "skipped.txt").read_text().splitlines()
    assert listed == [f"{tmp_path / 'in.jsonl'}:{i}: missing field 'response' (or 'text'); fields present: ['bad']"
                      for i in range(4, 121, 4)]
    assert "skipped 30 bad" in out and "... and 25 more skipped" in out
    assert f"every skipped record, with why: {tmp_path / 'c' / 'skipped.txt'}" in out
    ds, _, _ = load(tmp_path / "c")
    assert preprocess(tmp_path, rows[:3], "--on-error", "skip", "--overwrite") == 0
    assert not (tmp_path / "c" / "skipped.txt").exists() and "every skipped record" not in capsys.readouterr().out


def test_a_text_corpus_summary_has_no_bin_table(tmp_path, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": "one document"}, {"text": "another"}])
    assert main(["preprocess", str(src), "--format", "text", "--out", str(tmp_path / "c"), "--tokenizer", "train:300",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bins           none used: every record is 'off' mode" in out and "<|rtg:" not in out


def test_skip_with_every_record_bad_says_why(tmp_path, capsys):
    rows = ["{x", {"response": "b", "reward": "nan?"}]
    assert preprocess(tmp_path, rows, "--on-error", "skip") == 2
    err = capsys.readouterr().err
    assert "no records were read from" in err and "(2 skipped as bad)" in err
    assert "skipped: " + str(tmp_path / "in.jsonl") + ":1: malformed JSON" in err and "in.jsonl:2: reward" in err
    assert not (tmp_path / "c").exists()


SLOW_SCORER = "import time\ndef score(texts):\n    time.sleep(0.2)\n    return [1.0] * len(texts)\n"


def _process_tree(pid: int) -> dict[int, int]:
    """The processes below ``pid`` (Linux /proc), each with its parent: the build's forkserver and
    resource tracker, and the workers the forkserver started."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            parent_of[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    tree, frontier = {}, {pid}
    while frontier:
        frontier = {p for p, parent in parent_of.items() if parent in frontier} - set(tree)
        tree.update({p: parent_of[p] for p in frontier})
    return tree


@pytest.mark.parametrize("sig,workers", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGKILL, 1),
                                         (signal.SIGINT, 2)])
def test_interrupted_run_leaves_nothing_loadable(tmp_path, sig, workers):
    """With worker processes too: the signal comes once they are running; they ignore Ctrl-C, the
    build stops them, and none is left behind."""
    (tmp_path / "slowscore.py").write_text(SLOW_SCORER)
    n = 5000 if workers == 1 else 20000  # 0.2 s of scoring per 1,000: outlasts the workers' start-up
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": f"text {i}"} for i in range(n)])
    out = tmp_path / "c"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-m", "rcond.cli", "preprocess", str(src), "--format", "scored",
                             "--score-with", "slowscore:score", "--tokenizer", "train:300", "--out", str(out),
                             "--no-progress", "--workers", str(workers)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".c.tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".c.tmp-*")), "the run never started writing"
    time.sleep(0.3)
    helpers: dict[int, int] = {}
    if workers > 1 and Path("/proc").is_dir():  # wait for a worker: a process below one of the build's children
        while time.time() < deadline:
            helpers = _process_tree(proc.pid)
            if any(parent != proc.pid for parent in helpers.values()):
                break
            time.sleep(0.05)
        assert any(parent != proc.pid for parent in helpers.values()), f"no worker ever started: {helpers}"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0, err
    assert not out.exists()
    with pytest.raises(CorpusError):
        load(out)
    if sig != signal.SIGKILL:  # cleaned up on catchable signals
        assert not list(tmp_path.glob(".c.tmp-*"))
    else:  # what SIGKILL left goes with the next run for the same output
        from rcond.atomic import remove_leftovers

        assert len(remove_leftovers(out)) == 1 and not list(tmp_path.glob(".c.tmp-*"))
    time.sleep(0.5)  # the forkserver and the resource tracker leave once their parent has
    assert not [p for p in helpers if running(p)], "processes of the build outlived it"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("trained,sig", [(True, signal.SIGINT), (False, signal.SIGINT), (False, signal.SIGTERM)])
def test_interrupt_while_an_input_never_opens(tmp_path, trained, sig):
    """A fifo no one writes to blocks the reading thread in open(); the signal still ends the run
    (the tokenizer trainer, and the build's wait for its reader, used to wait on that thread for good)."""
    from rcond.corpus import train_tokenizer

    fifo = tmp_path / "in.jsonl"
    os.mkfifo(fifo)
    tokenizer = "train:300"
    if not trained:
        train_tokenizer(["some words to learn from"] * 20, 300).save_pretrained(tmp_path / "tok")
        tokenizer = str(tmp_path / "tok")
    out = tmp_path / "c"
    proc = subprocess.Popen([sys.executable, "-m", "rcond.cli", "preprocess", str(fifo), "--format", "text",
                             "--tokenizer", tokenizer, "--out", str(out), "--no-progress"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(4)  # imports done, the reader waiting in open()
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    # SIGTERM before the output is opened (while the tokenizer trains) ends the process as it would any program
    assert proc.returncode == -signal.SIGTERM or (proc.returncode != 0 and b"interrupted; no output was left" in err)
    assert not out.exists() and not list(tmp_path.glob(".c.tmp-*"))


def test_help_has_examples():
    r = subprocess.run([sys.executable, "-m", "rcond.cli", "preprocess", "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "examples:" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["--resume", "--weights", "0.3", "0.7"], "drop --weights"),
    (["--resume", "--steps", "0"], "drop --steps"),
    (["--corpus", "c", "--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--corpus", "c", "--weights", "1", "2"], "--weights has 2 values for 1 corpus; expected one per corpus"),
    (["--corpus", "c", "--lr", "-1"], "lr must be a positive number, got -1.0"),
    (["--corpus", "c", "--batch-size", "0"], "batch_size must be an integer of at least 1, got 0"),
    (["--resume", "--config", "stages.toml"], "drop --config"),
    (["--config", "stages.toml", "--steps", "5"], "--steps and --weights belong to the stages file when --config"),
    (["--config", "stages.toml", "--weights", "1"], "--steps and --weights belong to the stages file when --config"),
    ([], "give --corpus DIR (repeatable), --config STAGES.toml, or --resume"),
])
def test_train_flags_are_not_dropped(tmp_path, capsys, args, message):
    """A flag `rcond train` would not use is refused before anything runs (exit 2, nothing written)."""
    assert main(["train", "--out", str(tmp_path / "run"), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_sample_refuses_a_folder_out_before_loading_a_model(tmp_path, capsys):
    """The --out check comes first: the model named here does not even exist."""
    (tmp_path / "folder").mkdir()
    assert main(["sample", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "folder"), "--overwrite",
                 "--no-progress"]) == 2
    assert f"{tmp_path / 'folder'}: is a folder; the output is one file" in capsys.readouterr().err
    assert main(["sample", "--model", str(tmp_path / "no-model"), "--out", ""]) == 2
    assert "the output path is empty" in capsys.readouterr().err


@pytest.mark.parametrize("code", [0, 2, 130])
def test_the_command_skips_pythons_shutdown_only_after_an_interrupt(tmp_path, code):
    """After an interrupt the command runs the exit handlers and ends without Python's shutdown
    (which, with the tokenizer trainer's threads still in Rust, aborted the process); any other
    exit is an ordinary one."""
    script = tmp_path / "run.py"
    script.write_text(
        "import atexit, sys\n"
        "import rcond.cli as cli\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        print('shut down', flush=True)\n"
        "kept = Finalized()\n"
        "atexit.register(print, 'exit handlers ran', flush=True)\n"
        f"cli.main = lambda: {code}\n"
        "cli.entry()\n")
    run = subprocess.run([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == code
    assert "exit handlers ran" in run.stdout
    assert ("shut down" in run.stdout) == (code != 130)


def _handles(pid: int, sig: int) -> bool:
    """Process ``pid`` has a handler of its own for ``sig`` (Linux: the SigCgt mask in /proc)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path(f"/proc/{pid}/status").read_text()
        return bool(int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
                    >> (sig - 1) & 1)
    return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal handlers from /proc")
def test_ctrl_c_while_a_tokenizer_is_trained_exits_130_not_abort(tmp_path):
    """Ctrl-C and SIGTERM at several moments of `--tokenizer train:8192` on 20k toy reviews, timed from
    when the command has its handlers (start-up speed varies): every run exits 130 with its
    message. Before the command skipped Python's shutdown after an interrupt, about 10 of these 12
    runs ended in SIGABRT ("FATAL: exception not rethrown") on the 2-core machine; the window
    depends on the machine's speed, so a pass without the fix is possible, a failure with it is not."""
    from rcond.toyworld import generate

    src = generate(tmp_path / "world", seed=1, n_reviews=20000, n_dialogs=1, n_text=1, progress=False)["reviews"]
    for i, delay in enumerate((0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.4)):
        sig = signal.SIGINT if i % 2 == 0 else signal.SIGTERM
        proc = subprocess.Popen([sys.executable, "-m", "rcond.cli", "preprocess", str(src), "--format", "scored",
                                 "--tokenizer", "train:8192", "--out", str(tmp_path / "c"), "--no-progress"],
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while not _handles(proc.pid, signal.SIGTERM) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert _handles(proc.pid, signal.SIGTERM), "the command never set up its signal handlers"
        time.sleep(delay)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()  # a run that outlived the timeout (a slow machine) is not left training on its own
        if proc.returncode == 0:  # finished before the signal: nothing to check
            continue
        assert proc.returncode == 130, (sig, delay, err[-400:])
        assert "FATAL" not in err and "interrupted" in err
        assert not (tmp_path / "c").exists()


def test_a_reader_that_stops_reading_ends_the_command_quietly(tmp_path):
    """``rcond preprocess ... | head -0``: the summary meets a closed pipe. No traceback: the exit
    status of a process SIGPIPE ended (141), and the corpus, written before the summary, is whole."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": f"reply {i}", "reward": i} for i in range(20)])
    read, write = os.pipe()
    os.close(read)  # nobody will read what the command prints
    with os.fdopen(write, "wb") as stdout:
        run = subprocess.run([sys.executable, "-m", "rcond.cli", "preprocess", str(src), "--format", "scored",
                              "--out", str(tmp_path / "c"), "--tokenizer", "train:300", "--no-progress"],
                             stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 141
    assert run.stderr == ""
    load(tmp_path / "c")


def test_summary_notes_pairs_scored_and_unscored_side_by_side(tmp_path, capsys):
    rows = [{"prompt": "q", "chosen": "good", "rejected": "bad", "chosen_score": 2, "rejected_score": 1},
            {"prompt": "q", "chosen": "fine", "rejected": "poor"}]
    assert preprocess(tmp_path, rows, "--bins", "2", fmt="pairs") == 0
    assert "note: 2 pair sides carry no score beside 2 that do" in capsys.readouterr().out
    assert preprocess(tmp_path, rows[1:], "--bins", "2", fmt="pairs", out="d") == 0
    assert "beside" not in capsys.readouterr().out


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])  # the column-wise JSONL path and the record path
def test_summary_notes_pairs_whose_two_sides_are_the_same(tmp_path, capsys, suffix):
    rows = [{"prompt": "q", "chosen": "same", "rejected": "same"}, {"prompt": "q", "chosen": "good", "rejected": "bad"},
            {"prompt": "q", "chosen": "x y", "rejected": "x y"}]
    if suffix == "jsonl":
        src = write_jsonl(tmp_path / "in.jsonl", rows)
    else:
        src = tmp_path / "in.csv"
        src.write_text("prompt,chosen,rejected\n" + "".join(f"{r['prompt']},{r['chosen']},{r['rejected']}\n"
                                                             for r in rows))
    assert main(["preprocess", str(src), "--format", "pairs", "--out", str(tmp_path / "c"), "--tokenizer",
                 "train:300", "--bins", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "note: 2 preference pairs have the same chosen and rejected text" in out
    assert "records        6" in out and "the two sides of 3 preference pairs)" in out  # kept: a note, not a skip


def test_user_errors_are_named_by_the_modules_that_define_them():
    """The command catches a bad-input error only from a module it has imported (no import of
    torch to name the training errors): each must be listed under its own module."""
    import importlib

    from rcond.cli import USER_ERRORS

    for module, names in USER_ERRORS.items():
        for name in names:
            assert getattr(importlib.import_module(module), name).__module__ == module


def test_a_preprocess_error_exits_without_importing_torch(tmp_path):
    """Every error exit imported rcond.train, rcond.modeling and rcond.sample to name their
    errors, and with them torch: ~5 s more for a build that fails at line 2, and a Ctrl-C during
    that import lost the message."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "a", "reward": 1}, {"response": "b"}])
    script = ("import sys; from rcond.cli import main; "
              f"code = main(['preprocess', {str(src)!r}, '--format', 'scored', '--out', {str(tmp_path / 'c')!r}, "
              "'--tokenizer', 'train:300', '--no-progress']); print(code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert "in.jsonl:2: missing field 'reward'" in proc.stderr


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """A disk that fills while the corpus is written ended the command with a traceback (two,
    chained, from the spill file's close); now one line naming the output, exit 1, and, as before,
    nothing of the output left."""
    from rcond import corpus

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(corpus.HashingWriter, "write", full)
    rows = [{"response": f"reply number {i}", "reward": i / 10} for i in range(40)]
    assert preprocess(tmp_path, rows) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {tmp_path / 'c'}: No space left on device; nothing was left half-written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_ctrl_c_after_the_corpus_is_in_place_says_it_was_written(tmp_path, monkeypatch, capsys):
    """A Ctrl-C that lands while the summary prints, the corpus already in place: the command said
    'no output was left half-written', which read as if none had been written. It still exits 130,
    and names the corpus as written in full; the corpus loads."""
    from rcond import cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "format_preprocess_summary", interrupted)
    rows = [{"response": f"reply number {i}", "reward": i / 10} for i in range(40)]
    assert preprocess(tmp_path, rows) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"interrupted after {tmp_path / 'c'} had been written in full; nothing was left half-written"
    load(tmp_path / "c")
    from rcond import corpus

    monkeypatch.setattr(corpus, "build", interrupted)  # the next command starts with none written
    assert preprocess(tmp_path, rows, out="d") == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "interrupted; no output was left half-written"


def test_a_ctrl_c_dropped_while_the_summary_prints_still_exits_130(tmp_path, monkeypatch, capsys):
    """A Ctrl-C whose KeyboardInterrupt Python drops (inside a finalizer) as the command ends: the
    command still ends as interrupted (130), naming the corpus, which was complete, as written."""
    from conftest import DropsACtrlC
    from rcond import cli

    real = cli.format_preprocess_summary

    def summary(*a, **k):
        DropsACtrlC()  # its KeyboardInterrupt is dropped: the summary goes on
        return real(*a, **k)

    monkeypatch.setattr(sys, "unraisablehook", lambda u: None)
    monkeypatch.setattr(cli, "format_preprocess_summary", summary)
    rows = [{"response": f"reply number {i}", "reward": i / 10} for i in range(40)]
    assert preprocess(tmp_path, rows) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"interrupted after {tmp_path / 'c'} had been written in full; nothing was left half-written"
    load(tmp_path / "c")


def test_an_output_holding_the_input_is_refused_before_the_input_is_read(tmp_path, capsys):
    """--out naming the folder the input lies in (with --overwrite): exit 2 saying so, before the
    input is read (its broken second line is not reported), and the input is kept."""
    data = tmp_path / "data"
    data.mkdir()
    src = write_jsonl(data / "in.jsonl", [{"response": "a", "reward": 1}, "{broken"])
    assert main(["preprocess", str(src), "--format", "scored", "--out", str(data), "--overwrite",
                 "--tokenizer", "train:300", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"error: {data}: holds the input {src}, which writing the output would replace" in err, err
    assert "malformed JSON" not in err and src.exists()


@pytest.mark.parametrize("bad,shown", [(5, 5), (6, 5)])
def test_summary_names_five_skipped_records_and_counts_the_rest(tmp_path, capsys, bad, shown):
    """Five bad records are all named; a sixth is counted ('... and 1 more skipped'), not named."""
    rows = [{"response": "good", "reward": 1}] + [{"bad": i} for i in range(bad)]
    assert preprocess(tmp_path, rows, "--on-error", "skip") == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("  skipped: ")] == \
        [f"  skipped: {tmp_path / 'in.jsonl'}:{i}: missing field 'response' (or 'text'); fields present: ['bad']"
         for i in range(2, 2 + shown)]
    assert [line for line in out.splitlines() if "more skipped" in line] == (["  ... and 1 more skipped"] if bad > 5
                                                                            else [])


@pytest.mark.parametrize("others", [3, 4])
def test_summary_notes_files_of_an_input_folder_that_were_not_read(tmp_path, capsys, others):
    """A folder of .txt documents with other files in it: the summary counts those and names three,
    with ', ...' only when there are more."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("one document")
    for i in range(others):
        (docs / f"img{i}.png").write_bytes(b"\x89PNG")
    assert main(["preprocess", str(docs), "--format", "text", "--out", str(tmp_path / "c"), "--tokenizer",
                 "train:300", "--no-progress"]) == 0
    names = ", ".join(str(docs / f"img{i}.png") for i in range(3))
    assert f"note: {others} file(s) in the input folders or archives are no .txt documents and were not read: " \
           f"{names}{', ...' if others > 3 else ''}\n" in capsys.readouterr().out


def test_one_bin_is_no_cause_for_a_note(tmp_path, capsys):
    """--bins 1 puts every reward-to-go token in its one bin by choice: no note that the rewards
    are all the same (they are not) or that bins are empty."""
    rows = [{"response": f"reply {i}", "reward": i} for i in range(20)]
    assert preprocess(tmp_path, rows, "--bins", "1") == 0
    out = capsys.readouterr().out
    assert "<|rtg:0|>" in out and "note:" not in out, out


def test_top_level_help_puts_each_command_beside_its_help(capsys, monkeypatch):
    """`rcond --help` lists the commands with their help in one column, the longest name
    (preprocess) included: argparse alone measured the names one indent short and wrapped it."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    assert e.value.code == 0
    assert "    preprocess  input data -> conditioned, packed corpus" in lines
    assert "    demo        the whole flow on the embedded toy world" in lines


def test_help_shows_each_default_once_and_none_for_flags(capsys):
    """An option's help shows its default, unless it has none (None, a flag) or the help already
    says it: '--block-size ... (default: 1024)', but no '(default: None)' after --bins' own words,
    and no '(default: False)' after a flag."""
    with pytest.raises(SystemExit) as e:
        main(["preprocess", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # the same words however the terminal wraps them
    assert e.value.code == 0
    assert "--block-size BLOCK_SIZE tokens per packed row (default: 1024) --uncond-fraction" in out
    assert ("--bins BINS number of reward-to-go bins K (default: 10, or as many as --binning edges: make) "
            "--binning") in out
    assert "--train-on-prompt give prompt / user tokens loss weight 1 --truncate" in out
    assert "--score-batch N texts per call of the --score-with scorer (default: 256) --gamma" in out
    assert "(default: None)" not in out and "(default: False)" not in out


@pytest.mark.parametrize("code,filename", [(errno.EDQUOT, None), (errno.EROFS, None), (errno.EIO, None),
                                           (errno.EACCES, "tokenizer.json")])
def test_every_storage_error_is_one_line_exit_1_naming_the_file_it_met(tmp_path, monkeypatch, capsys, code, filename):
    """A quota, a read-only disk, an I/O error or a permission refused while the corpus is written:
    like a full disk, one line and exit 1, naming the file the system named (else the output), and
    nothing left."""
    from rcond import corpus

    where = tmp_path / "c" / filename if filename else tmp_path / "c"

    def refused(self, data):
        raise OSError(code, os.strerror(code), *((str(where),) if filename else ()))

    monkeypatch.setattr(corpus.HashingWriter, "write", refused)
    rows = [{"response": f"reply number {i}", "reward": i / 10} for i in range(40)]
    assert preprocess(tmp_path, rows) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"error: {where}: {os.strerror(code)}; nothing was left half-written"
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_scorer_is_called_on_256_texts_at_a_time_by_default(tmp_path, capsys):
    """--score-batch's documented default: a --score-with scorer gets the texts 256 at a time (the
    last call the rest), in one process."""
    calls = tmp_path / "calls.txt"
    (tmp_path / "counting.py").write_text(f"def score(texts):\n    with open({str(calls)!r}, 'a') as f:\n"
                                          f"        f.write(f'{{len(texts)}}\\n')\n    return [1.0] * len(texts)\n")
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": f"text {i}"} for i in range(300)])
    assert main(["preprocess", str(src), "--format", "scored", "--out", str(tmp_path / "c"), "--tokenizer",
                 "train:300", "--score-with", f"{tmp_path / 'counting.py'}:score", "--no-progress"]) == 0
    assert calls.read_text().split() == ["256", "44"]


def test_inputs_after_the_options_are_read_after_those_before(tmp_path, capsys):
    """Command-line order: in `rcond preprocess z.jsonl --format ... a.jsonl` z is read first, so
    its bad line is the one reported. (The corpus's fingerprints are kept sorted by name, so the
    test above, whose names sort in command-line order, cannot tell.)"""
    z = write_jsonl(tmp_path / "z.jsonl", [{"response": "first"}])
    a = write_jsonl(tmp_path / "a.jsonl", [{"response": "second"}])
    assert main(["preprocess", str(z), "--format", "scored", "--out", str(tmp_path / "c"), "--tokenizer",
                 "train:300", "--no-progress", str(a)]) == 2
    assert f"{z}:1: missing field 'reward'" in capsys.readouterr().err


@pytest.mark.parametrize("rank", ["0", "1"])
def test_an_interrupted_training_exits_130_on_every_rank(tmp_path, monkeypatch, capsys, rank):
    """Under torchrun every process runs the command: an interrupted run exits 130 on each rank (a
    rank ending 0 would read as done), and only rank 0 says where the checkpoint is. Training
    itself is a stand-in here that reports an interrupt at step 3."""
    from types import SimpleNamespace

    from rcond import train

    interrupted = SimpleNamespace(interrupted=True, steps_done=3)
    monkeypatch.setattr(train, "train", lambda cfg, out, resume, progress: interrupted)
    monkeypatch.setenv("RANK", rank)
    out = tmp_path / "run"
    assert main(["train", "--corpus", str(tmp_path / "c"), "--out", str(out), "--no-progress"]) == 130
    captured = capsys.readouterr()
    expected = (f"interrupted at step 3; checkpoint saved in {out / 'checkpoint'}\n"
                f"continue with: rcond train --out {out} --resume\n")
    assert captured.err == (expected if rank == "0" else "") and captured.out == ""


def test_an_empty_score_with_is_no_scorer_for_score_workers(tmp_path, capsys):
    """`--score-with "$SCORER"` with the variable unset: an empty --score-with names no scorer, so
    --score-workers has nothing to run and is refused, as without --score-with."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "good", "reward": 1}])
    assert main(["preprocess", str(src), "--format", "scored", "--out", str(tmp_path / "c"), "--score-with", "",
                 "--score-workers", "2", "--no-progress"]) == 2
    assert "error: --score-workers sets how the scorer of --score-with runs; give --score-with too" in \
        capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_toyworld_names_each_file_it_wrote(tmp_path, capsys):
    """`rcond toyworld` says where each file is, the paths a user passes on to preprocess."""
    out = tmp_path / "toy"
    assert main(["toyworld", "--out", str(out), "--reviews", "3", "--dialogs", "2", "--texts", "2",
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"toy world written to {out}", f"  reviews  {out / 'reviews.jsonl'}", f"  dialogs  {out / 'dialogs.jsonl'}",
        f"  text     {out / 'text.jsonl'}", f"  meta     {out / 'meta.json'}"]
    assert sorted(p.name for p in out.iterdir()) == ["dialogs.jsonl", "meta.json", "reviews.jsonl", "text.jsonl"]
