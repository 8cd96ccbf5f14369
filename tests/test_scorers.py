"""Tests of rcond.scorers: VADER, user functions imported by spec, and output validation."""

from __future__ import annotations

import re
import sys
import textwrap

import numpy as np
import pytest
import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rcond.scorers import Scorer, ScorerError, get_scorer

TEXTS = ["I love this, it is wonderful!", "Terrible. It broke on day one.", "It is a blender.", ""]

HELPERS = textwrap.dedent(
    """
    import math
    import numpy as np

    def word_count(texts):
        return [float(len(t.split())) for t in texts]

    def as_array(texts):
        return np.array([len(t) for t in texts], dtype=np.float32)

    def as_matrix(texts):
        return np.zeros((len(texts), 2))

    def one_short(texts):
        return [0.0] * (len(texts) - 1)

    def consumes(texts):  # pops its input while scoring: the caller's count must not follow it
        out = []
        while texts:
            out.append(float(len(texts.pop())))
        return out[:-1]

    def edits(texts):
        texts[0] = "changed"
        return [float(len(t)) for t in texts]

    def nan_for_bad(texts):
        return [math.nan if "bad" in t else 1.0 for t in texts]

    def inf_for_bad(texts):
        return [-math.inf if "bad" in t else 1.0 for t in texts]

    def strings(texts):
        return ["0.5" for _ in texts]

    def nested(texts):
        return [[1.0] for _ in texts]

    def scalar(texts):
        return 1.0

    def explodes(texts):
        if "boom" in texts:
            raise RuntimeError("model file missing")
        return [0.0] * len(texts)

    class Namespace:
        @staticmethod
        def length(texts):
            return [len(t) for t in texts]

    NOT_A_FUNCTION = 3
    """
)


@pytest.fixture
def helpers(tmp_path, monkeypatch):
    """A real module, ``rcond_test_rewards``, importable for the duration of one test."""
    (tmp_path / "rcond_test_rewards.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rcond_test_rewards", raising=False)
    yield "rcond_test_rewards"
    sys.modules.pop("rcond_test_rewards", None)


def test_vader_matches_the_analyzer():
    scorer = get_scorer("vader")
    analyzer = SentimentIntensityAnalyzer()
    assert scorer.name == "vader"
    assert scorer(TEXTS) == [analyzer.polarity_scores(t)["compound"] for t in TEXTS]
    assert all(-1.0 <= x <= 1.0 for x in scorer(TEXTS))
    assert scorer(TEXTS)[0] > 0.5 > scorer(TEXTS)[1]


def test_vader_returns_plain_zero_for_neutral_text():
    [x] = get_scorer("vader")(["It weighs 300 grams."])
    assert x == 0.0 and str(x) == "0.0"


def test_score_batched_streams_in_order():
    scorer = get_scorer("vader")
    texts = TEXTS * 3
    out = scorer.score_batched(iter(texts), batch_size=5)
    assert not isinstance(out, list)
    assert list(out) == scorer(texts)
    with pytest.raises(ValueError, match="batch_size"):
        list(scorer.score_batched(texts, batch_size=0))


def test_empty_input_is_not_sent_to_the_function():
    calls = []
    scorer = Scorer("probe", lambda texts: calls.append(texts) or [])
    assert scorer([]) == []
    assert list(scorer.score_batched([], batch_size=4)) == []
    assert calls == []


def test_module_function_happy_path(helpers):
    scorer = get_scorer(f"{helpers}:word_count")
    assert scorer.name == f"{helpers}:word_count"
    assert scorer(TEXTS) == [6.0, 6.0, 4.0, 0.0]
    assert all(type(x) is float for x in scorer(TEXTS))


def test_numpy_and_torch_outputs_are_accepted(helpers):
    assert get_scorer(f"{helpers}:as_array")(["ab", "abcd"]) == [2.0, 4.0]
    scorer = Scorer("tensor", lambda texts: torch.tensor([0.25] * len(texts)))
    assert scorer(["a", "b"]) == [0.25, 0.25]


def test_dotted_attribute_and_file_path(helpers, tmp_path):
    assert get_scorer(f"{helpers}:Namespace.length")(["abc"]) == [3.0]
    assert get_scorer(f"{tmp_path / 'rcond_test_rewards.py'}:word_count")(["a b"]) == [2.0]


def test_module_in_current_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "rcond_cwd_rewards.py").write_text("def score(texts):\n    return [1.0] * len(texts)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "rcond_cwd_rewards", raising=False)
    assert get_scorer("rcond_cwd_rewards:score")(["x", "y"]) == [1.0, 1.0]
    sys.modules.pop("rcond_cwd_rewards", None)


def test_a_scorer_file_imports_the_modules_beside_it(tmp_path, monkeypatch):
    """``--score-with pkg/rewards.py:score``: its folder is on the import path (last), so ``from
    rcond_sibling_helper import f`` finds the helper beside it from any current directory (it said
    the helper 'is not installed'), and a datasets.py beside it does not shadow the library."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "rcond_sibling_helper.py").write_text("def f(t):\n    return float(len(t.split()))\n")
    (pkg / "rcond_sibling_rewards.py").write_text(
        "from rcond_sibling_helper import f\n\ndef score(texts):\n    return [f(t) for t in texts]\n")
    (pkg / "datasets.py").write_text("raise ImportError('the user file, not the library')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(pkg))])
    try:
        assert get_scorer("pkg/rcond_sibling_rewards.py:score")(["a b c"]) == [3.0]
        assert str(pkg) in sys.path  # absolute: the folder stays right if the current directory changes
    finally:
        sys.modules.pop("rcond_sibling_helper", None)
    import importlib.util

    assert "site-packages" in importlib.util.find_spec("datasets").origin  # a file named like a library shadows nothing


def test_wrong_length_names_scorer_and_counts(helpers):
    with pytest.raises(ScorerError, match=r"one_short' returned 3 scores for 4 texts"):
        get_scorer(f"{helpers}:one_short")(TEXTS)


def test_a_reward_model_spec_says_it_is_not_part_of_rcond_yet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScorerError, match=r"scorer 'rm:models/my-rm': a reward model as a scorer \(rm:DIR in "
                                          r"DESIGN\.md\) is not part of rcond yet"):
        get_scorer("rm:models/my-rm")
    with pytest.raises(ScorerError, match=r"scorer 'rm:x': a reward model as a scorer"):
        get_scorer("rm:x")  # a name that would also read as module:function



def test_a_scorer_that_empties_or_edits_its_list_is_judged_on_what_it_was_given(helpers):
    texts = list(TEXTS)
    with pytest.raises(ScorerError, match=r"consumes' returned 3 scores for 4 texts"):
        get_scorer(f"{helpers}:consumes")(texts)
    assert texts == TEXTS
    assert get_scorer(f"{helpers}:edits")(texts)[0] == float(len("changed")) and texts == TEXTS


@pytest.mark.parametrize("fn, what", [("nan_for_bad", "nan"), ("inf_for_bad", "-inf")])
def test_non_finite_score_names_the_text_index(helpers, fn, what):
    scorer = get_scorer(f"{helpers}:{fn}")
    with pytest.raises(ScorerError, match=rf"{fn}': score for text 1 \('a bad one'\) is {what}"):
        scorer(["fine", "a bad one"])
    texts = ["a", "b", "c", "d", "bad"]
    with pytest.raises(ScorerError, match=rf"{fn}': score for text 4 "):
        list(scorer.score_batched(texts, batch_size=2))


@pytest.mark.parametrize("fn", ["strings", "nested"])
def test_non_numeric_score_is_an_error(helpers, fn):
    with pytest.raises(ScorerError, match=rf"{fn}': score for text 0 .* is not a number"):
        get_scorer(f"{helpers}:{fn}")(["x", "y"])


def test_integer_beyond_float_range_is_an_error():
    with pytest.raises(ScorerError, match=r"^scorer 'huge': score for text 1 \('y'\) is an integer too large for a "
                                          r"float \(1,329 bits\): 10000000000000000000\.\.\.$"):  # not cut to look small
        Scorer("huge", lambda texts: [1, 10**400])(["x", "y"])


@pytest.mark.parametrize("fn, match", [("scalar", "returned a float"), ("as_matrix", r"shape \(2, 2\)")])
def test_non_sequence_output_is_an_error(helpers, fn, match):
    with pytest.raises(ScorerError, match=match):
        get_scorer(f"{helpers}:{fn}")(["x", "y"])


def test_exception_in_function_is_reported_with_the_batch(helpers):
    scorer = get_scorer(f"{helpers}:explodes")
    with pytest.raises(ScorerError, match=r"explodes' failed on texts 2\.\.3: RuntimeError: model file missing"):
        list(scorer.score_batched(["a", "b", "c", "boom"], batch_size=2))


def test_non_string_text_is_rejected():
    with pytest.raises(TypeError, match="text 1 is an int"):
        get_scorer("vader")(["fine", 3])


@pytest.mark.parametrize("spec", ["vaderr", "", "nocolon", "mod:", ":fn", "mod:not-an-identifier", "mod:ok.not-ok", "rm"])
def test_unknown_spec_lists_what_is_accepted(spec):
    with pytest.raises(ScorerError, match=r"unknown scorer .*'vader' or 'module:function'"):
        get_scorer(spec)


def test_unimportable_module_missing_attribute_and_non_callable(helpers, tmp_path):
    with pytest.raises(ScorerError, match="cannot import module 'rcond_no_such_module'"):
        get_scorer("rcond_no_such_module:score")
    with pytest.raises(ScorerError, match="has no attribute 'missing'"):
        get_scorer(f"{helpers}:missing")
    with pytest.raises(ScorerError, match="'NOT_A_FUNCTION' is an int, not a function"):
        get_scorer(f"{helpers}:NOT_A_FUNCTION")
    with pytest.raises(ScorerError, match="no such file"):
        get_scorer(f"{tmp_path / 'absent.py'}:score")


BROKEN_MODULES = {
    "syntax": ("def score(texts) return 1\n", r"failed to import: SyntaxError: expected ':' \({file}, line 1\)"),
    "raises": ("raise ValueError('module level failure')\n", "failed to import: ValueError: module level failure"),
    "exits": ("raise SystemExit(4)\n", "failed to import: SystemExit: 4"),
    "own_module_not_found": (  # raised by the module itself, naming no module: not a missing dependency
        "raise ModuleNotFoundError('plugin registry is empty')\n",
        "failed to import: ModuleNotFoundError: plugin registry is empty$",
    ),
    "own_syntax_error": ("raise SyntaxError('bad template')\n", "failed to import: SyntaxError: bad template$"),  # no line
    "missing_dep": (
        "import rcond_absent_dependency\n",
        r"was found, but importing it failed because 'rcond_absent_dependency' is not installed "
        r"\(ModuleNotFoundError: No module named 'rcond_absent_dependency'\)",
    ),
}


@pytest.mark.parametrize("kind", BROKEN_MODULES)
def test_scorer_file_that_fails_to_import(tmp_path, kind):
    source, message = BROKEN_MODULES[kind]
    path = tmp_path / f"rcond_broken_{kind}.py"
    path.write_text(source)
    spec = f"{path}:score"
    before = set(sys.modules)
    where = re.escape(f"scorer '{spec}': file '{path}' ")
    with pytest.raises(ScorerError, match="^" + where + message.format(file=re.escape(str(path)))):
        get_scorer(spec)
    assert set(sys.modules) == before


@pytest.mark.parametrize("kind", BROKEN_MODULES)
def test_dotted_scorer_module_that_fails_to_import(tmp_path, monkeypatch, kind):
    source, message = BROKEN_MODULES[kind]
    name = f"rcond_broken_{kind}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ScorerError, match=rf"^scorer '{name}:score': module '{name}' "
                                          + message.format(file=re.escape(str(tmp_path / f"{name}.py")))):
        get_scorer(f"{name}:score")
    assert name not in sys.modules


def test_missing_submodule_blames_the_scorer_module_not_a_dependency(tmp_path, monkeypatch):
    (tmp_path / "rcond_scorer_pkg").mkdir()
    (tmp_path / "rcond_scorer_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rcond_scorer_pkg", raising=False)
    with pytest.raises(ScorerError, match=r"cannot import module 'rcond_scorer_pkg.absent' \(No module named "
                                          r"'rcond_scorer_pkg.absent'\); it must be importable"):
        get_scorer("rcond_scorer_pkg.absent:score")
    sys.modules.pop("rcond_scorer_pkg", None)


def test_system_exit_in_function_is_reported_like_any_exception():
    def exits(texts):
        raise SystemExit(3)

    with pytest.raises(ScorerError, match=r"^scorer 'exits' failed on texts 0\.\.1: SystemExit: 3$"):
        Scorer("exits", exits)(["a", "b"])


def test_keyboard_interrupt_in_function_passes_through():
    def interrupted(texts):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Scorer("interrupted", interrupted)(["a"])


@pytest.mark.parametrize("output, shown", [
    (lambda texts: [True] * len(texts), "True"),
    (lambda texts: np.array([False] * len(texts)), "np.False_"),
    (lambda texts: [np.float64(1.0) > 0] * len(texts), "np.True_"),
    (lambda texts: torch.tensor([True] * len(texts)), r"tensor\(True\)"),
])
def test_bool_score_is_not_a_number(output, shown):
    with pytest.raises(ScorerError, match=rf"^scorer 'yes_no': score for text 0 \('x'\) is not a number: {shown} "
                                          r"\(a bool\); return 1.0 or 0.0 instead$"):
        Scorer("yes_no", output)(["x", "y"])


def test_a_scorer_error_about_texts_says_which_counted_across_batches():
    """``texts`` holds the (first, last) positions the error is about, counted from the start of
    the texts scores_in_batches was given, whatever the batch that failed; ``reason`` says what
    went wrong without positions."""
    from rcond.scorer_pool import scores_in_batches

    texts = ["a", "b", "c", "bad", "e"]
    word = Scorer("word", lambda ts: ["oops" if t == "bad" else 0.0 for t in ts])
    with pytest.raises(ScorerError) as e:
        scores_in_batches(word, texts, 2)  # calls on [a b], [c bad], [e]: 'bad' is text 1 of the second
    assert e.value.texts == (3, 3)
    assert e.value.reason == "scorer 'word': its score for 'bad' is not a number: 'oops'"

    def boom(ts):
        if "bad" in ts:
            raise ValueError("no")
        return [0.0] * len(ts)

    with pytest.raises(ScorerError) as e:
        scores_in_batches(Scorer("boom", boom), texts, 2)
    assert e.value.texts == (2, 3)
    assert e.value.reason == "scorer 'boom' failed on the texts of these records: ValueError: no"


def test_bytes_are_not_scores():
    """``float(b"0.5")`` is 0.5: bytes must be refused like str, not read as numbers."""
    with pytest.raises(ScorerError, match=r"^scorer 'raw': score for text 0 \('x'\) is not a number: b'0\.5'$"):
        Scorer("raw", lambda texts: [b"0.5"] * len(texts))(["x", "y"])


@pytest.mark.parametrize("output, shown", [
    (lambda texts: [torch.tensor([0.1, 0.9])] * len(texts), r"tensor\(\[0\.1000, 0\.9000\]\) \(Tensor\)"),
    (lambda texts: [np.array("high")] * len(texts), r"array\('high', dtype='<U4'\) \(ndarray of text\)"),
])
def test_a_score_that_float_refuses_with_a_value_error_is_not_a_number(output, shown):
    """``float()`` raises ValueError, not TypeError, for a tensor of two values per text (logits
    returned as they are) and for a NumPy string array: still a ScorerError naming the text."""
    with pytest.raises(ScorerError, match=rf"^scorer 'logits': score for text 0 \('x'\) is not a number: {shown}$"):
        Scorer("logits", output)(["x", "y"])


@pytest.mark.parametrize("score, shown", [
    (np.array("0.5"), r"array\('0\.5', dtype='<U3'\) \(ndarray of text\)"),
    (np.array(b"0.5"), r"array\(b'0\.5', dtype='\|S3'\) \(ndarray of text\)"),
])
def test_a_numpy_string_that_reads_as_a_number_is_not_a_score(score, shown):
    """``float(np.array("0.5"))`` is 0.5, as ``float("0.5")`` is: text is refused in a NumPy array as
    it is in a str or bytes, not read as a number (a scorer returning labels it meant to map)."""
    with pytest.raises(ScorerError, match=rf"^scorer 'labels': score for text 0 \('x'\) is not a number: {shown}$"):
        Scorer("labels", lambda texts: [score] * len(texts))(["x", "y"])


def test_values_and_score_values_leave_non_finite_scores_in_place(helpers):
    """``values`` and ``score_values`` give NaN and infinite scores back for the caller to place
    (calling the scorer refuses them); a plain function is named by its own name."""
    import math

    from rcond.scorers import score_values

    module = __import__(helpers)
    nan_scorer = get_scorer(f"{helpers}:nan_for_bad")
    assert [math.isnan(x) for x in nan_scorer.values(["fine", "a bad one"])] == [False, True]
    assert score_values(module.inf_for_bad, ["bad", "fine"]) == [-math.inf, 1.0]
    assert [math.isnan(x) for x in score_values(nan_scorer, ["a bad one", "fine"])] == [True, False]
    with pytest.raises(ScorerError, match=r"^scorer 'strings': score for text 0 \('x'\) is not a number: '0\.5'$"):
        score_values(module.strings, ["x"])
    with pytest.raises(ScorerError, match=rf"^scorer '{helpers}:strings': score for text 0 "):
        score_values(get_scorer(f"{helpers}:strings"), ["x"])  # a Scorer keeps its own name


def test_a_long_text_is_shown_cut_to_sixty_characters():
    """The text an error names is shown whole up to 60 characters, else its first 60 and '...'."""
    scorer = Scorer("bad", lambda texts: ["no"] * len(texts))
    with pytest.raises(ScorerError, match=r"\('" + "a" * 60 + r"'\) is not"):
        scorer(["a" * 60])
    with pytest.raises(ScorerError, match=r"\('" + "b" * 60 + r"\.\.\.'\) is not"):
        scorer(["b" * 61])


def test_a_non_string_text_is_counted_across_batches():
    """score_batched names a text that is not a string by its position in the whole input, with
    the right article for a type name that starts with a capital vowel."""
    import collections

    scorer = Scorer("length", lambda texts: [float(len(t)) for t in texts])
    with pytest.raises(TypeError, match=r"^scorer 'length': text 3 is an int, expected str$"):
        list(scorer.score_batched(["a", "b", "c", 3], batch_size=2))
    with pytest.raises(TypeError, match=r"text 1 is an OrderedDict, expected str$"):
        scorer(["a", collections.OrderedDict()])


def test_a_scorer_error_from_the_function_passes_unchanged():
    """A function that is itself built on a Scorer raises that Scorer's error, which already says
    which scorer and which text: it is not wrapped as a failure of the outer one."""
    inner = Scorer("inner", lambda texts: [0.0, float("nan")])
    with pytest.raises(ScorerError, match=r"^scorer 'inner': score for text 1 \('b'\) is nan; scores must be finite$"):
        Scorer("outer", inner)(["a", "b"])


@pytest.mark.parametrize("output, message", [
    (lambda texts: {i: 1.0 for i in range(len(texts))}, r"returned a dict for texts 0\.\.1; expected a sequence of 2"),
    (lambda texts: "12", r"returned a str for texts 0\.\.1; expected a sequence of 2 numbers"),
    (lambda texts: b"12", r"returned a bytes for texts 0\.\.1; expected a sequence of 2 numbers"),
    (lambda texts: np.array(0.5), r"returned an array of shape \(\) for 2 texts \(starting at text 0\)"),
    (lambda texts: torch.tensor(0.5), r"returned an array of shape \(\) for 2 texts \(starting at text 0\)"),
    (lambda texts: [0.0] * (len(texts) + 1), r"returned 3 scores for 2 texts \(texts 0\.\.1\); expected one score"),
])
def test_output_that_is_not_one_score_per_text_is_an_error(output, message):
    """A dict (its keys would read as scores), a string of digits, a 0-d array and one score too
    many are refused as a whole, not read element by element."""
    with pytest.raises(ScorerError, match=rf"^scorer 'odd' {message}"):
        Scorer("odd", output)(["x", "y"])


def test_a_wrong_shape_says_where_the_batch_starts():
    """The batch of a score_batched call that returns a matrix is named by its first position."""
    scorer = Scorer("matrix", lambda texts: np.zeros((len(texts), 2)) if "c" in texts else np.zeros(len(texts)))
    with pytest.raises(ScorerError, match=r"shape \(1, 2\) for 1 texts \(starting at text 2\)"):
        list(scorer.score_batched(["a", "b", "c"], batch_size=2))


def test_vader_turns_a_negative_zero_into_zero():
    """VADER gives -0.0 for some balanced texts; the scorer gives 0.0 (it prints as '0.0')."""
    import math

    text = "good hate fine"
    assert math.copysign(1.0, SentimentIntensityAnalyzer().polarity_scores(text)["compound"]) == -1.0
    [x] = get_scorer("vader")([text])
    assert x == 0.0 and math.copysign(1.0, x) == 1.0


def test_vader_is_built_when_the_scorer_is_made(monkeypatch):
    """get_scorer('vader') builds the analyzer at once, so a missing vaderSentiment fails before any
    input is read, not at the first batch (no real way to uninstall it: the import is made to fail)."""
    from rcond import scorers

    scorers._vader_analyzer.cache_clear()
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)
    try:
        with pytest.raises(ImportError):
            get_scorer("vader")
    finally:
        scorers._vader_analyzer.cache_clear()


def test_a_spec_is_stripped_and_must_be_a_string(helpers):
    assert get_scorer(" vader\n").name == "vader"
    assert get_scorer(f"  {helpers}:word_count ")(["a b"]) == [2.0]
    with pytest.raises(ScorerError, match=r"^scorer spec must be a string, got NoneType; expected 'vader' or"):
        get_scorer(None)


def test_a_missing_dotted_attribute_is_named_in_full(helpers):
    with pytest.raises(ScorerError, match=rf"^scorer '{helpers}:Namespace.missing': '{helpers}' has no attribute "
                                          r"'Namespace.missing'$"):
        get_scorer(f"{helpers}:Namespace.missing")


def test_a_bare_file_name_and_a_folder_with_a_colon_are_files(tmp_path, monkeypatch):
    """'rewards.py:score' (no folder) is a file in the current directory, not a module named
    'rewards.py'; a folder whose name holds a colon splits the spec at its last colon."""
    (tmp_path / "rcond_bare_rewards.py").write_text("def score(texts):\n    return [2.0] * len(texts)\n")
    odd = tmp_path / "run:1"
    odd.mkdir()
    (odd / "rewards.py").write_text("def score(texts):\n    return [3.0] * len(texts)\n")
    monkeypatch.chdir(tmp_path)
    assert get_scorer("rcond_bare_rewards.py:score")(["x"]) == [2.0]
    assert get_scorer(f"{odd / 'rewards.py'}:score")(["x"]) == [3.0]
    assert get_scorer("run:1/rewards.py:score")(["x"]) == [3.0]


def test_a_scorer_file_named_like_a_loaded_module_does_not_replace_it(tmp_path, monkeypatch):
    """A scorer file is imported under a name of its own: one named like a module already
    imported (here a dotted scorer module) leaves that module as it was, and loading two scorers
    from one folder puts the folder on the import path once."""
    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "rcond_twin_rewards.py").write_text("def score(texts):\n    return [1.0] * len(texts)\n")
    (tmp_path / "second").mkdir()
    path = tmp_path / "second" / "rcond_twin_rewards.py"
    path.write_text("def score(texts):\n    return [2.0] * len(texts)\n\ndef other(texts):\n    return [0.0] * len(texts)\n")
    monkeypatch.syspath_prepend(str(tmp_path / "first"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "rcond_twin_rewards", raising=False)
    try:
        assert get_scorer("rcond_twin_rewards:score")(["x"]) == [1.0]
        twin = sys.modules["rcond_twin_rewards"]
        assert get_scorer(f"{path}:score")(["x"]) == [2.0]
        assert get_scorer(f"{path}:other")(["x"]) == [0.0]
        assert sys.modules["rcond_twin_rewards"] is twin
        assert sys.path.count(str(tmp_path / "second")) == 1
    finally:
        sys.modules.pop("rcond_twin_rewards", None)


def test_keyboard_interrupt_while_importing_a_scorer_file_passes_through(tmp_path):
    path = tmp_path / "rcond_interrupted.py"
    path.write_text("raise KeyboardInterrupt\n")
    before = set(sys.modules)
    with pytest.raises(KeyboardInterrupt):
        get_scorer(f"{path}:score")
    assert set(sys.modules) == before


def test_the_current_directory_comes_last_on_the_import_path(tmp_path, monkeypatch):
    """A dotted scorer module is looked up on the normal path first: a file of the same name in
    the current directory (added at the end) does not shadow it."""
    (tmp_path / "installed").mkdir()
    (tmp_path / "installed" / "rcond_where_rewards.py").write_text("def score(texts):\n    return [1.0] * len(texts)\n")
    (tmp_path / "rcond_where_rewards.py").write_text("def score(texts):\n    return [2.0] * len(texts)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "installed")] + [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "rcond_where_rewards", raising=False)
    try:
        assert get_scorer("rcond_where_rewards:score")(["x"]) == [1.0]
        assert sys.path[-1] == str(tmp_path)
    finally:
        sys.modules.pop("rcond_where_rewards", None)


def test_a_module_that_imports_from_itself_too_early_failed_to_import(tmp_path, monkeypatch):
    """An ImportError naming the scorer module itself (a circular import: the module is found)
    is a failure while importing it, not 'cannot import module'."""
    name = "rcond_circular_rewards"
    (tmp_path / f"{name}.py").write_text(f"from {name} import helper\n\ndef helper(t):\n    return 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ScorerError, match=rf"^scorer '{name}:score': module '{name}' failed to import: ImportError: "
                                          rf"cannot import name 'helper' from partially initialized module '{name}'"):
        get_scorer(f"{name}:score")
    assert name not in sys.modules


def test_a_wrong_count_is_placed_on_its_whole_batch():
    """A batch that returns too few scores is an error about every text of that batch, counted
    from the start of the texts scores_in_batches was given."""
    from rcond.scorer_pool import scores_in_batches

    short = Scorer("short", lambda ts: [0.0] * (len(ts) - ("c" in ts)))
    with pytest.raises(ScorerError) as e:
        scores_in_batches(short, ["a", "b", "c", "d", "e"], 2)
    assert e.value.texts == (2, 3)
    assert e.value.reason == "scorer 'short' returned 1 scores for the 2 texts of these records; expected one score per text"
