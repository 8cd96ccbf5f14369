import json
import math
import time

import numpy as np
import pytest
from scipy import stats

from rcond.metrics import (MetricsError, ScoreSummary, bleu, calibration, distinct_n, diversity, evenly_spaced,
                           rankdata, read_samples, self_bleu, spearman)
from rcond.tokens import ControlScheme, SchemeError


def scheme3():
    """Bins (-inf, 0), [0, 1), [1, inf)."""
    return ControlScheme.fit([], binning="edges:0,1")


def rec(level, score, reward=None, mode="on"):
    return {"prompt": "", "mode": mode, "level": level, "reward": reward, "guidance": None, "text": "x", "score": score}


# ---------------------------------------------------------------------------- ranks and Spearman

def test_rankdata_average_ties():
    assert rankdata([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert rankdata([3, 1, 3, 3]).tolist() == [3, 1, 3, 3]
    assert rankdata([]).tolist() == []


def test_spearman_hand_computed():
    # no ties: d = rank differences (-1, 1, -1, 1, 0), rho = 1 - 6*4 / (5*(25-1)) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # ties: ranks x (1, 2.5, 2.5, 4), y (1, 3, 2, 4); centred dot 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / math.sqrt(10))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7, 50, 400):
        x = rng.integers(0, 5, n).astype(float)  # many ties
        y = x + rng.normal(0, 2, n).round(1)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_undefined_is_nan():
    assert math.isnan(spearman([1], [2]))
    assert math.isnan(spearman([], []))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


# ---------------------------------------------------------------------------- calibration

def test_score_summary_hand_computed():
    s = ScoreSummary.of([4, 1, 3, 2])
    assert (s.n, s.mean, s.median) == (4, 2.5, 2.5)
    assert s.sd == pytest.approx(math.sqrt(5 / 3))  # sample sd, ddof = 1
    assert (s.p10, s.p90) == pytest.approx((1.3, 3.7))  # positions 0.3 and 2.7 of the sorted values
    one = ScoreSummary.of([2.0])
    assert one.mean == one.median == one.p10 == 2.0 and math.isnan(one.sd)
    empty = ScoreSummary.of([])
    assert empty.n == 0 and all(math.isnan(v) for v in (empty.mean, empty.sd, empty.median, empty.p10, empty.p90))


def test_score_summary_two_scores_have_a_sample_sd():
    """Two scores are the fewest with a sample sd (the docstring's NaN is for n < 2 only):
    sd of (1, 4) = sqrt(((1 - 2.5)² + (4 - 2.5)²) / 1) = sqrt(4.5)."""
    s = ScoreSummary.of([1.0, 4.0])
    assert (s.n, s.mean, s.median) == (2, 2.5, 2.5)
    assert s.sd == pytest.approx(math.sqrt(4.5))
    assert (s.p10, s.p90) == pytest.approx((1.3, 3.7))


def test_calibration_hand_computed():
    scheme = scheme3()
    samples = [rec(0, -1.0), rec(0, 0.5), rec(2, 2.0), rec(2, 3.0), rec(2, 0.5),
               rec(None, 0.2, reward=0.4),          # requested as a raw reward: bin 1
               rec(None, 9.0, mode="off")]          # requested nothing
    cal = calibration(samples, scheme)
    assert cal.n == 6 and cal.unrequested == 1
    l0, l1, l2 = cal.levels
    assert (l0.level, l0.bin_low, l0.bin_high) == (0, -math.inf, 0.0)
    assert (l0.scores.n, l0.scores.mean, l0.in_bin) == (2, -0.25, 0.5)
    assert (l1.scores.n, l1.scores.mean, l1.in_bin) == (1, 0.2, 1.0)
    assert (l2.scores.n, l2.in_bin) == (3, pytest.approx(2 / 3))
    assert l2.scores.mean == pytest.approx(5.5 / 3)
    assert cal.spearman_levels == pytest.approx(1.0)  # means -0.25 < 0.2 < 1.83
    ks, ys = [0, 0, 2, 2, 2, 1], [-1.0, 0.5, 2.0, 3.0, 0.5, 0.2]
    assert cal.spearman_samples == pytest.approx(stats.spearmanr(ks, ys).statistic)


def test_calibration_level_wins_over_a_raw_reward():
    """A sample that gives both ``level`` and ``reward`` requested its ``level`` (the reward's bin
    is only the fallback when level is null): here level 2 although reward -5 falls in bin 0. A raw
    reward of 0.0 is a request like any other (null, not falsy, means none)."""
    cal = calibration([rec(2, 0.5, reward=-5.0), rec(None, -1.0, reward=-5.0), rec(None, 0.3, reward=0.0)], scheme3())
    assert [lc.scores.n for lc in cal.levels] == [1, 1, 1]  # reward 0.0 is a request (of bin 1), not "none"
    assert cal.unrequested == 0
    assert cal.levels[2].scores.mean == 0.5 and cal.levels[0].scores.mean == -1.0


def test_calibration_empty_level_and_single_level():
    scheme = scheme3()
    cal = calibration([rec(2, 1.5), rec(2, 0.5)], scheme)
    assert cal.levels[0].scores.n == 0 and math.isnan(cal.levels[0].scores.mean) and math.isnan(cal.levels[0].in_bin)
    assert math.isnan(cal.spearman_levels) and math.isnan(cal.spearman_samples)  # one level: rho undefined
    none = calibration([], scheme)
    assert none.n == 0 and all(lc.scores.n == 0 for lc in none.levels) and math.isnan(none.spearman_levels)


def test_calibration_rejects_bad_samples():
    with pytest.raises(MetricsError, match="score-with"):
        calibration([rec(0, None)], scheme3())
    with pytest.raises(MetricsError):
        calibration([rec(0, float("nan"))], scheme3())
    with pytest.raises(SchemeError, match="level 3"):
        calibration([rec(3, 0.0)], scheme3())
    with pytest.raises(SchemeError, match="^reward 'x' is not a number$"):
        calibration([rec(None, 0.0, reward="x")], scheme3())
    with pytest.raises(MetricsError) as e:  # the bad sample is named by its 0-based index
        calibration([rec(0, 0.1), rec(1, 0.2), rec(2, None)], scheme3())
    assert str(e.value).startswith("sample 2: score None is not a finite number")


def test_read_samples(tmp_path):
    good = tmp_path / "s.jsonl"
    good.write_text(json.dumps(rec(1, 0.5)) + "\n\n \t \r\n" + json.dumps(rec(None, 0.1, mode="off")) + "\n")
    assert [r["level"] for r in read_samples(good)] == [1, None]  # blank lines, spaces only too, are skipped
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rec(1, 0.5)) + "\n{oops\n")
    with pytest.raises(MetricsError, match=r"bad.jsonl:2: not valid JSON \(Expecting property name enclosed in double quotes at column 2\)"):
        read_samples(bad)
    unscored = tmp_path / "unscored.jsonl"
    unscored.write_text(json.dumps({"text": "hi", "level": 0}) + "\n")
    with pytest.raises(MetricsError, match="unscored.jsonl:1.*score-with"):
        read_samples(unscored)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_read_samples_line_cut_short_names_its_column(tmp_path, newline):
    """A line cut short inside its JSON value: the column is the end of that line (the newline,
    LF or CRLF, is not part of the value), not column 1 of a line that does not exist."""
    path = tmp_path / "cut.jsonl"
    path.write_bytes((json.dumps(rec(1, 0.5)) + newline + '{"text": "a", "score": ' + newline).encode())
    with pytest.raises(MetricsError) as e:
        read_samples(path)
    assert str(e.value) == (f"{path}:2: not valid JSON (Expecting value at column 24: "
                            "the text ends before the JSON value does (cut short?))")


@pytest.mark.parametrize("line", ['[1, 2]', '"text"', '{"score": 0.1}', '{"text": 3, "score": 0.1}',
                                  '{"text": null, "score": 0.1}'])
def test_read_samples_needs_an_object_with_a_string_text(tmp_path, line):
    """A line that is not a JSON object, or has no string ``text``, is a MetricsError naming the
    file and line (not an AttributeError from deep inside, nor a sample without text)."""
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(rec(None, 0.1)) + "\n" + line + "\n")
    with pytest.raises(MetricsError) as e:
        read_samples(path)
    assert str(e.value) == f"{path}:2: expected a sample object with a string 'text' field"


@pytest.mark.parametrize("field, value, message", [
    ("reward", "x", "reward 'x' is not a finite number or null"),
    ("reward", float("inf"), "reward inf is not a finite number or null"),
    ("guidance", "abc", "guidance 'abc' is not a finite number or null"),
    ("guidance", True, "guidance True is not a finite number or null"),
    ("level", "3", "level '3' is not an integer or null"),
    ("level", 1.0, "level 1.0 is not an integer or null"),
    ("level", True, "level True is not an integer or null"),  # a bool is an int in Python, not a level
])
def test_read_samples_checks_field_types(tmp_path, field, value, message):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(rec(None, 0.1)) + "\n" + json.dumps(dict(rec(None, 0.2), **{field: value})) + "\n")
    with pytest.raises(MetricsError) as e:
        read_samples(path)
    assert str(e.value) == f"{path}:2: {message}"


def test_read_samples_integer_beyond_float_range(tmp_path):
    """JSON reads 1 followed by 400 zeros as a Python int that no float holds: as a score or a
    reward it is "not a finite number" naming the file and line, not an OverflowError from
    math.isfinite without either."""
    huge = 10 ** 400
    for field, message in (("score", f"score {huge} is not a finite number"),
                           ("reward", f"reward {huge} is not a finite number or null")):
        path = tmp_path / f"{field}.jsonl"
        path.write_text(json.dumps(rec(None, 0.1)) + "\n" + json.dumps(dict(rec(None, 0.2), **{field: huge})) + "\n")
        with pytest.raises(MetricsError) as e:
            read_samples(path)
        assert str(e.value).startswith(f"{path}:2: {message}")


@pytest.mark.parametrize("line, message", [
    ('{"text": "a", "score": ' + "1" * 5000 + "}", "cannot read this JSON (Exceeds the limit (4300 digits)"),
    ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply to read"),
])
def test_read_samples_json_python_cannot_read(tmp_path, line, message):
    """Valid JSON that Python's reader refuses (an integer past its 4,300-digit limit, nesting past
    its recursion limit) is a MetricsError naming the file and line, not a bare ValueError or
    RecursionError without either."""
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(rec(None, 0.1)) + "\n" + line + "\n")
    with pytest.raises(MetricsError) as e:
        read_samples(path)
    assert str(e.value).startswith(f"{path}:2: {message}")


def test_read_samples_null_and_numbers_are_fine(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(dict(rec(None, 0.1, reward=0.5), guidance=2)) + "\n"
                    + json.dumps(dict(rec(2, 0.2), guidance=1.5)) + "\n")
    assert [(r["reward"], r["guidance"]) for r in read_samples(path)] == [(0.5, 2), (None, 1.5)]


def test_read_samples_unreadable_files(tmp_path):
    with pytest.raises(MetricsError) as e:
        read_samples(tmp_path / "nope.jsonl")
    assert str(e.value) == f"{tmp_path / 'nope.jsonl'}: cannot read this JSONL file (No such file or directory)"
    with pytest.raises(MetricsError) as e:
        read_samples(tmp_path)
    assert str(e.value) == f"{tmp_path}: cannot read this JSONL file (Is a directory)"
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(json.dumps(rec(0, 0.5)).encode() + b'\n{"text": "caf\xe9", "score": 0.1}\n')
    with pytest.raises(MetricsError) as e:
        read_samples(latin1)
    assert str(e.value) == f"{latin1}:2: not UTF-8 text (byte 14 of the line)"


# ---------------------------------------------------------------------------- diversity

def test_distinct_hand_computed():
    toks = [["a", "b", "a"], ["a", "b"]]
    assert distinct_n(toks, 1) == pytest.approx(2 / 5)
    assert distinct_n(toks, 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(toks, 3) == 1.0
    assert math.isnan(distinct_n([["a"]], 2))


def test_bleu_hand_computed():
    hyp, ref = "the cat sat on the mat".split(), "the cat is on the mat".split()
    # p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = no match -> eps / 3; c = r = 6 -> BP = 1
    assert bleu(hyp, [ref]) == pytest.approx((5 / 6 * 3 / 5 * 1 / 4 * 0.1 / 3) ** 0.25)
    # shorter than the reference: BP = exp(1 - 3/2); p1 = p2 = 1; no 3- or 4-grams -> eps / 1 each
    assert bleu(["the", "cat"], [["the", "cat", "sat"]]) == pytest.approx(math.exp(-0.5) * 0.01 ** 0.25)
    # clipping by the maximum count over references; closest length tie (3 vs 5 for c = 4) -> shorter, BP = 1
    assert bleu("a b c d".split(), ["a b c".split(), "a b c d e".split()]) == pytest.approx(1.0)
    # the closest length can be the longer one: c = 4 against lengths 1 and 5 -> r = 5, BP = exp(1 - 5/4)
    assert bleu("a b c d".split(), [["a"], "a b c d e".split()]) == pytest.approx(math.exp(1 - 5 / 4))
    assert bleu("a a a a".split(), ["a b".split(), "a a c".split()]) == pytest.approx(
        (2 / 4 * 1 / 3 * 0.1 / 2 * 0.1 / 1) ** 0.25)
    assert bleu("x y".split(), ["a b".split()]) == 0.0
    assert bleu([], ["a b".split()]) == 0.0
    with pytest.raises(ValueError, match="^bleu: at least one reference is needed$"):
        bleu(["a"], [])


def test_self_bleu_matches_pairwise_definition():
    rng = np.random.default_rng(1)
    words = list("abcdef")
    texts = [list(rng.choice(words, rng.integers(0, 12))) for _ in range(40)] + [list("abcabc")] * 2
    naive = np.mean([bleu(t, texts[:i] + texts[i + 1:]) for i, t in enumerate(texts)])
    assert self_bleu(texts) == pytest.approx(naive, abs=1e-12)
    assert self_bleu([list("abcd"), list("abcd")]) == pytest.approx(1.0)
    assert math.isnan(self_bleu([list("abcd")]))


def test_self_bleu_own_length_is_not_a_reference_length():
    """The brevity penalty of text i uses the other texts' lengths only: "a b c" (c = 3) against
    the one other text of length 5 has BP = exp(1 - 5/3), though 3 is the closest length overall.
    Hand-computed: text 1 p = (1, 1, 1, eps/1); text 2 p = (3/5, 2/4, 1/3, eps/2), BP = 1."""
    texts = ["a b c".split(), "a b c d e".split()]
    first = math.exp(1 - 5 / 3) * 0.1 ** 0.25
    second = (3 / 5 * 2 / 4 * 1 / 3 * 0.1 / 2) ** 0.25
    assert self_bleu(texts) == pytest.approx((first + second) / 2, abs=1e-12)
    assert self_bleu(texts) == pytest.approx(np.mean([bleu(texts[0], texts[1:]), bleu(texts[1], texts[:1])]), abs=1e-12)


def test_evenly_spaced():
    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert evenly_spaced([1, 2], 4) == [1, 2]
    # positions 0, 3.33, 6.67, 10: the nearest indices, not the ones below
    assert evenly_spaced(list(range(11)), 4) == [0, 3, 7, 10]


def test_diversity_fields_cap_and_empty():
    d = diversity(["a b a", "a b"])
    assert d["n"] == 2 and d["mean_length"] == 2.5 and d["self_bleu_texts"] == 2
    assert (d["distinct_1"], d["distinct_2"], d["distinct_3"]) == pytest.approx((0.4, 2 / 3, 1.0))
    capped = diversity([f"w{i} common words here" for i in range(10)], max_texts=4)
    assert capped["n"] == 10 and capped["self_bleu_texts"] == 4
    empty = diversity([])
    assert empty["n"] == 0 and all(math.isnan(empty[k]) for k in
                                   ("distinct_1", "distinct_2", "distinct_3", "self_bleu", "mean_length"))
    assert math.isnan(diversity(["", ""])["distinct_1"])


def test_diversity_cap_applies_to_self_bleu_only():
    """With more texts than ``max_texts``, self-BLEU uses the evenly spaced subset (here texts 0
    and 2 of 3) while distinct-n and the mean length count every text. Hand-computed:
    all tokens a b | c | a b c d -> distinct-1 4/7, bigrams (a b)x2 (b c) (c d) -> 3/4, trigrams 2/2;
    self-BLEU of "a b" vs "a b c d": BP e^-1, p = (1, 1, eps, eps); of "a b c d" vs "a b":
    p = (2/4, 1/3, eps/2, eps/1), BP = 1."""
    d = diversity(["a b", "c", "a b c d"], max_texts=2)
    assert d["n"] == 3 and d["self_bleu_texts"] == 2
    assert (d["distinct_1"], d["distinct_2"], d["distinct_3"]) == pytest.approx((4 / 7, 3 / 4, 1.0))
    assert d["mean_length"] == pytest.approx(7 / 3)
    short = math.exp(-1) * (0.1 * 0.1) ** 0.25
    long = (2 / 4 * 1 / 3 * 0.1 / 2 * 0.1) ** 0.25
    assert d["self_bleu"] == pytest.approx((short + long) / 2, abs=1e-12)


def test_diversity_needs_two_texts_for_self_bleu():
    """``max_texts`` below 2 could never give a self-BLEU: a ValueError saying so."""
    with pytest.raises(ValueError, match="^max_texts must be >= 2, got 1$"):
        diversity(["a b", "c d"], max_texts=1)


def test_diversity_is_fast_at_the_cap():
    rng = np.random.default_rng(2)
    words = [f"w{i}" for i in range(200)]
    texts = [" ".join(rng.choice(words, 40)) for _ in range(2000)]
    t0 = time.perf_counter()
    d = diversity(texts)
    assert time.perf_counter() - t0 < 3.0
    assert d["self_bleu_texts"] == 500 and 0 < d["self_bleu"] < 1
