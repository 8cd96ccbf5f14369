"""Reward functions that score texts: VADER sentiment or any Python function.

A scorer maps a batch of texts to one finite float per text. ``get_scorer(spec)`` builds one
from a spec string:

- ``"vader"``: VADER's compound sentiment score in [-1, 1] (vaderSentiment's
  ``SentimentIntensityAnalyzer``, built once per process and shared).
- ``"module:function"``: ``function`` imported from ``module`` (a dotted module path, or a
  ``.py`` file path such as ``./rewards.py``). The function takes ``list[str]`` and returns a
  sequence of numbers of the same length (a list, tuple, NumPy array or 1-D tensor). Dotted
  modules are looked up on the normal import path, with the current directory added at its
  end so that a ``rewards.py`` beside the command line is found. ``function`` may be a dotted
  attribute path (``Class.method``).

A module that cannot be imported raises :class:`ScorerError` naming the spec and the module or
file: one that is not found at all, or one that was found but failed while importing (with the
exception's type and message; for a syntax error also its file and line; for a missing
dependency the name of the package that is not installed).

An exception raised by the function while scoring, ``SystemExit`` included, becomes a
:class:`ScorerError` naming the scorer, the batch and the exception; only ``KeyboardInterrupt``
passes through. Every batch a scorer returns is checked: a wrong count, a value that is not a
number (a bool counts as not a number, as it does in the data readers), or a NaN/infinite value
raises :class:`ScorerError` naming the scorer and the position of the offending text (counted
across the whole input in :meth:`Scorer.score_batched`).
:func:`score_values` leaves NaN/infinite values in place instead, for a caller that knows which
record each text came from (the corpus readers: they name the file and line, or skip the record).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import os
import sys
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .tokens import is_bool

ACCEPTED = "'vader' or 'module:function' (e.g. 'mypkg.rewards:score' or './rewards.py:score')"
USER_CODE_FAILURES = (Exception, SystemExit)  # what a scorer's own code may raise that rcond reports


class ScorerError(ValueError):
    """A scorer spec cannot be resolved, or a scorer returned unusable scores. When it is about
    some of the texts scored: ``texts``, their (first, last) positions in the scorer call, and
    ``reason``, the message without those positions, for a caller that names the records instead."""

    def __init__(self, message: str, texts: tuple[int, int] | None = None, reason: str | None = None):
        super().__init__(message)
        self.texts, self.reason = texts, reason

    def shifted(self, by: int) -> "ScorerError":
        """The same error with its positions counted ``by`` texts further (a sub-batch's)."""
        return self if self.texts is None else ScorerError(str(self), (self.texts[0] + by, self.texts[1] + by),
                                                           self.reason)


def _number(v: object, finite: bool) -> tuple[float, str | None]:
    """A score as a float, or why it is not one (the end of a sentence about it)."""
    if isinstance(v, (str, bytes)):
        return math.nan, f"is not a number: {v!r}"
    if getattr(getattr(v, "dtype", None), "kind", None) in ("U", "S"):  # float() reads np.array("0.5") as 0.5
        return math.nan, f"is not a number: {v!r} ({type(v).__name__} of text)"
    if is_bool(v):
        return math.nan, f"is not a number: {v!r} (a bool); return 1.0 or 0.0 instead"
    try:
        x = float(v)
    except OverflowError:
        bits = getattr(v, "bit_length", None)
        return math.nan, ("is an integer too large for a float" + (f" ({bits():,} bits)" if bits else "")
                          + f": {str(v)[:20]}...")
    except (TypeError, ValueError):
        return math.nan, f"is not a number: {v!r} ({type(v).__name__})"
    if finite and not math.isfinite(x):
        return x, f"is {x}; scores must be finite"
    return x, None


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


class Scorer:
    """A named reward function over batches of texts, with its output validated.

    Call it on a list of strings to get a list of floats, one per string, in order.
    """

    def __init__(self, name: str, fn: Callable[[list[str]], Sequence[float]]):
        self.name = name
        self._fn = fn

    def __repr__(self) -> str:
        return f"Scorer({self.name!r})"

    def __call__(self, texts: Sequence[str]) -> list[float]:
        return self._score(list(texts), offset=0)

    def values(self, texts: Sequence[str]) -> list[float]:
        """As calling it, but a NaN or infinite score comes back as it is instead of raising."""
        return self._score(list(texts), offset=0, finite=False)

    def score_batched(self, texts: Iterable[str], batch_size: int = 256) -> Iterator[float]:
        """Score an iterable of texts lazily, ``batch_size`` at a time; yields one float per text.

        Only one batch is held at a time, so this streams over corpora of any size. Error
        messages give positions counted from the start of ``texts``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        it = iter(texts)
        offset = 0
        while batch := list(islice(it, batch_size)):
            yield from self._score(batch, offset)
            offset += len(batch)

    def _score(self, texts: list[str], offset: int, finite: bool = True) -> list[float]:
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(
                    f"scorer {self.name!r}: text {offset + i} is {_a(type(t).__name__)}, expected str"
                )
        if not texts:
            return []
        try:
            raw = self._fn(list(texts))  # a copy: a scorer that empties or edits its list leaves ours whole
        except ScorerError:
            raise
        except USER_CODE_FAILURES as e:
            raise ScorerError(
                f"scorer {self.name!r} failed on texts {offset}..{offset + len(texts) - 1}: "
                f"{type(e).__name__}: {e}", (0, len(texts) - 1),
                f"scorer {self.name!r} failed on the texts of these records: {type(e).__name__}: {e}"
            ) from e
        return self._validate(raw, texts, offset, finite)

    def _validate(self, raw: object, texts: list[str], offset: int, finite: bool) -> list[float]:
        every = (0, len(texts) - 1)
        if isinstance(raw, (str, bytes, dict)) or not hasattr(raw, "__len__"):
            raise ScorerError(
                f"scorer {self.name!r} returned a {type(raw).__name__} for texts "
                f"{offset}..{offset + len(texts) - 1}; expected a sequence of {len(texts)} numbers", every,
                f"scorer {self.name!r} returned a {type(raw).__name__} for the texts of these records; expected "
                f"a sequence of {len(texts)} numbers")
        if getattr(raw, "ndim", 1) != 1:
            raise ScorerError(
                f"scorer {self.name!r} returned an array of shape {tuple(raw.shape)} for "
                f"{len(texts)} texts (starting at text {offset}); expected one number per text", every,
                f"scorer {self.name!r} returned an array of shape {tuple(raw.shape)} for the {len(texts)} texts "
                f"of these records; expected one number per text")
        if len(raw) != len(texts):
            raise ScorerError(
                f"scorer {self.name!r} returned {len(raw)} scores for {len(texts)} texts "
                f"(texts {offset}..{offset + len(texts) - 1}); expected one score per text", every,
                f"scorer {self.name!r} returned {len(raw)} scores for the {len(texts)} texts of these records; "
                f"expected one score per text")
        out = []
        for i, v in enumerate(raw):
            x, why = _number(v, finite)
            if why is not None:
                raise ScorerError(f"scorer {self.name!r}: score for text {offset + i} ({_preview(texts[i])}) {why}",
                                  (i, i), f"scorer {self.name!r}: its score for {_preview(texts[i])} {why}")
            out.append(x)
        return out


def score_values(scorer: Callable[[list[str]], Sequence[float]], texts: list[str]) -> list[float]:
    """Scores of ``texts`` as floats, NaN/infinite ones left in place (:meth:`Scorer.values`; a
    plain function is checked as a :class:`Scorer` named for it, so a failure or a score that is no
    number names its texts)."""
    if not isinstance(scorer, Scorer):
        scorer = Scorer(getattr(scorer, "__qualname__", None) or type(scorer).__name__, scorer)
    return scorer.values(texts)


@functools.lru_cache(maxsize=1)
def _vader_analyzer():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_compound(texts: list[str]) -> list[float]:
    """VADER compound score of each text, in [-1, 1] (a negative zero is returned as 0.0)."""
    polarity = _vader_analyzer().polarity_scores
    return [polarity(t)["compound"] + 0.0 for t in texts]


def _import_failed(spec: str, what: str, e: BaseException) -> ScorerError:
    """The error for a scorer module (``what``) that was found but raised ``e`` while importing."""
    if isinstance(e, ModuleNotFoundError) and e.name:
        return ScorerError(
            f"scorer {spec!r}: {what} was found, but importing it failed because {e.name!r} is not "
            f"installed ({type(e).__name__}: {e})"
        )
    detail = f"{e.msg} ({e.filename}, line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else e
    return ScorerError(f"scorer {spec!r}: {what} failed to import: {type(e).__name__}: {detail}")


def _import_file(path: Path, spec: str):
    """The module of a .py file, with its folder on ``sys.path`` (last, as the current directory is
    for a dotted scorer), so that it can import the modules beside it without a file there named
    like a library (``datasets.py``) shadowing what rcond imports later."""
    if not path.is_file():
        raise ScorerError(f"scorer {spec!r}: no such file {str(path)!r}")
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.append(folder)
    name = f"rcond_user_scorer_{path.stem}"
    loader_spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = mod
    try:
        loader_spec.loader.exec_module(mod)
    except BaseException as e:
        del sys.modules[name]
        if isinstance(e, USER_CODE_FAILURES):
            raise _import_failed(spec, f"file {str(path)!r}", e) from e
        raise
    return mod


def _import_dotted(module: str, spec: str):
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    parts = module.split(".")
    itself = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # the module and its packages
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name not in itself:
            raise _import_failed(spec, f"module {module!r}", e) from e
        raise ScorerError(
            f"scorer {spec!r}: cannot import module {module!r} ({e}); it must be importable "
            f"from the current directory or the installed packages, or be a path to a .py file"
        ) from e
    except USER_CODE_FAILURES as e:
        raise _import_failed(spec, f"module {module!r}", e) from e


def _import_module(module: str, spec: str):
    if module.endswith(".py") or os.sep in module or "/" in module:
        return _import_file(Path(module), spec)
    return _import_dotted(module, spec)


def _load_function(spec: str) -> Callable[[list[str]], Sequence[float]]:
    module, _, attr = spec.rpartition(":")
    mod = _import_module(module, spec)
    obj = mod
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ScorerError(f"scorer {spec!r}: {module!r} has no attribute {attr!r}") from e
    if not callable(obj):
        raise ScorerError(f"scorer {spec!r}: {attr!r} is {_a(type(obj).__name__)}, not a function")
    return obj


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: 'an int', 'a list'."""
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def get_scorer(spec: str) -> Scorer:
    """Build the scorer named by ``spec``: ``"vader"`` or ``"module:function"``."""
    if not isinstance(spec, str):
        raise ScorerError(f"scorer spec must be a string, got {type(spec).__name__}; expected {ACCEPTED}")
    spec = spec.strip()
    if spec == "vader":
        _vader_analyzer()
        return Scorer("vader", vader_compound)
    if spec.startswith("rm:"):  # DESIGN's name for a reward model, before any module named rm is tried
        raise ScorerError(f"scorer {spec!r}: a reward model as a scorer (rm:DIR in DESIGN.md) is not part of rcond "
                          f"yet; wrap the model in a module:function scorer for now")
    module, sep, attr = spec.rpartition(":")
    if sep and module and attr and all(p.isidentifier() for p in attr.split(".")):
        return Scorer(spec, _load_function(spec))
    raise ScorerError(f"unknown scorer {spec!r}: expected {ACCEPTED}")
