"""Texts -> token ids as flat arrays, with several texts in each tokenizer input.

The tokenizer's batch call makes one ``Encoding`` per text (a Rust object with a vector of ids,
type ids, token strings, masks), and reading its ids makes one Python list per text. For short
texts (reviews, dialog turns: ~35 tokens each) making, reading and freeing those objects costs
about a tenth of the tokenizer's CPU (``benchmarks/content_encoder.py``, 80k toy reviews, 2.75M
tokens, 2 cores: 6.51 s of CPU one encoding per text, 5.85 s joined). :class:`ContentEncoder` instead
joins a run of consecutive texts with a separator, added as an ordinary (non-special) token to a
private copy of the tokenizer, encodes each run as one input, and cuts the ids at the separators.

Why the ids are the same: the tokenizer first splits its input at added tokens, then normalises,
pre-tokenises and runs the model on each piece by itself; a text between two separators is one
such piece, exactly as when it is encoded alone. The exception is a step that looks at where a
piece starts in the whole input: in ``tokenizers`` that is ``Metaspace`` with
``prepend_scheme="first"`` (a ``▁`` only on the piece at offset 0, as Llama and Mistral
tokenizers do). So runs are used only when every normaliser, pre-tokeniser and the model are of
the kinds listed here, with that one excluded (:data:`PIECEWISE`); and, as a check of that
reasoning on the real tokenizer and texts, the first texts of the first joined call
(:func:`checked_sample`) are also encoded one by one and must get the same ids. The copy itself
is checked when it is made (:func:`faithful_copy`): it is read back from the tokenizer's JSON,
which does not always hold what the tokenizer in memory does, and a difference there could show
on any later text. A text that holds the separator's string sends its batch through the per-text
path; so does a run whose separator count is not what was joined. Anything else (a tokenizer that
cannot be copied or whose copy differs, a component not listed, a separator id the model already
gives, a check that fails) encodes text by text, the tokenizer's own way, for the whole build.

Both ways encode content as it is (:func:`content_as_is`): special-token strings as text, and no
truncation or padding the tokenizer carries.
"""

from __future__ import annotations

import itertools
import json
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

SEPARATOR = "\ue000rcond:sep\ue001"  # private-use characters around a name: absent from real text
RUN_CHARS = 2048  # characters per joined input: short enough for many runs per batch (one thread each)
CHECKED_TEXTS = 64  # texts of the first joined call also encoded one by one, at most
CHECKED_CHARS = 1 << 16  # and at most this many characters of them (the first text whatever its length)
PIECEWISE = {  # component types whose result on a piece does not depend on the rest of the input
    "normalizer": {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "Nmt", "Precompiled", "Prepend",
                   "Replace", "Strip", "StripAccents", "ByteLevel", "Sequence"},
    "pre_tokenizer": {"BertPreTokenizer", "ByteLevel", "CharDelimiterSplit", "Digits", "Metaspace", "Punctuation",
                      "Sequence", "Split", "UnicodeScripts", "Whitespace", "WhitespaceSplit"},
    "model": {"BPE", "Unigram", "WordLevel", "WordPiece"},
}


@contextmanager
def content_as_is(backend) -> Iterator[None]:
    """Within: the backend tokenizer encodes content as it is. Special-token strings in the input
    (``<|rtg:1|>``, ``</s>``) are read as ordinary text, never as their ids; and no truncation or
    padding is applied, whatever the tokenizer holds: a ``tokenizer.json`` saved with
    ``"truncation": {"max_length": 512}``, or a tokenizer last called with ``truncation=True`` or
    ``padding=True`` (transformers leaves that state on the backend), would otherwise cut every text
    at 512 tokens or pad it with pad ids, silently. The settings are restored after. They belong
    to the tokenizer object, so hold this only around an encode call: another thread encoding with
    the same tokenizer meanwhile would see them too."""
    before = backend.encode_special_tokens, backend.truncation, backend.padding
    _as_is(backend)
    try:
        yield
    finally:
        special, truncation, padding = before
        backend.encode_special_tokens = special
        if truncation is not None:
            backend.enable_truncation(**truncation)
        if padding is not None:
            backend.enable_padding(**padding)


def _as_is(backend) -> None:
    """Set ``backend`` to read special-token strings as text and to neither truncate nor pad."""
    backend.encode_special_tokens = True
    backend.no_truncation()
    backend.no_padding()


def _components(state: dict) -> Iterator[tuple[str, dict]]:
    """(kind, component) for the normaliser, pre-tokeniser and model of a tokenizer's JSON state,
    the members of a ``Sequence`` included."""
    for kind in PIECEWISE:
        stack = [state.get(kind)]
        while stack:
            c = stack.pop()
            if c is None:
                continue
            yield kind, c
            stack += c.get("normalizers") or c.get("pretokenizers") or []


def piecewise(state: dict) -> bool:
    """Whether every component of the tokenizer (its JSON state) is of a kind listed in
    :data:`PIECEWISE`, and no ``Metaspace`` prepends only at the start of the input."""
    for kind, c in _components(state):
        if not isinstance(c, dict) or c.get("type") not in PIECEWISE[kind]:
            return False
        if c["type"] == "Metaspace" and c.get("prepend_scheme") == "first":
            return False
    return True


def faithful_copy(backend, text: str | None = None):
    """A copy of ``backend`` (a ``tokenizers.Tokenizer``) read back from its JSON (``text``, its
    ``to_str()`` if not given), or None where that copy would not encode as ``backend`` does. The
    JSON does not always hold what the tokenizer in memory holds: Unigram scores set from Python
    floats come back a unit in the last place away (ties between segmentations then break the
    other way), an added token whose id a model trained after it reuses gets another id, and a
    special token added again as an ordinary one is written as ordinary but still read as
    special in memory. So the copy's own JSON must be ``text``, and every added token must encode
    alike in both (content as is), alone and between other characters. None too where there is
    no copy: a component only Python holds, or JSON the tokenizer writes but cannot read (a score
    of -inf, written as null)."""
    from tokenizers import Tokenizer

    try:
        text = backend.to_str() if text is None else text
        copy = Tokenizer.from_str(text)
        if copy.to_str() != text:
            return None
    except Exception:
        return None
    added = [t.content for t in backend.get_added_tokens_decoder().values()]
    probes = [p for c in added for p in (c, f"a{c}a", f" {c} ")]
    if probes:
        with content_as_is(backend), content_as_is(copy):
            want = [e.ids for e in backend.encode_batch_fast(probes, add_special_tokens=False)]
            got = [e.ids for e in copy.encode_batch_fast(probes, add_special_tokens=False)]
        if got != want:
            return None
    return copy


def checked_sample(texts: list[str]) -> list[int]:
    """Which texts of the first joined call are also encoded one by one to check it: the first
    ones, in order, that keep the sample within :data:`CHECKED_TEXTS` texts and
    :data:`CHECKED_CHARS` characters, a longer text passed over (the first text when none fits).
    Bounded by characters because the check encodes its texts a second time: 64 book-length
    documents would double the tokenizer's work on a batch; passing over a long text rather than
    stopping keeps short texts, joined several to a run, in the check when a long one comes first."""
    sample, chars = [], 0
    for i, text in enumerate(texts):
        if chars + len(text) <= CHECKED_CHARS:
            sample.append(i)
            chars += len(text)
            if len(sample) == CHECKED_TEXTS:
                break
    return sample or [0]


class ContentEncoder:
    """``encoder(texts)`` -> (offsets [T+1] int64, flat ids [N] int32): text t is
    ``flat[offsets[t]:offsets[t+1]]``, its ids as the backend gives them for the text alone (no
    special tokens added). Runs of texts joined by a separator where that is exact (module
    docstring), else text by text. Thread-safe: calls from several threads take turns at the
    tokenizer, each with its encodings read and freed before the next call starts (and the
    backend's settings switched only around its own call), and do the rest side by side (runs
    joined, ids flattened and cut); calls made while the first joined call is checked wait for its
    verdict. The backend must not be used elsewhere during a call (:func:`content_as_is`)."""

    def __init__(self, backend):
        self.backend = backend
        self.joined = self.sep_id = None  # a private copy with the separator, when runs are exact
        self._unchecked = True  # the first joined call is checked against the texts one by one
        self._first_call = threading.Lock()  # held by the checked call
        self._turn = threading.Lock()  # one tokenizer call at a time, with its encodings read and freed
        try:
            text = backend.to_str()
        except Exception:  # a custom (Python) component: the tokenizer cannot be copied
            return
        if not piecewise(json.loads(text)):
            return
        joined = faithful_copy(backend, text)
        if joined is None:
            return
        from tokenizers import AddedToken

        _as_is(joined)  # for good: the copy is this encoder's own
        joined.add_tokens([AddedToken(SEPARATOR, normalized=False, special=False)])
        sep_id = joined.token_to_id(SEPARATOR)
        if backend.id_to_token(sep_id) is not None:  # a vocabulary with gaps: the new id is one the model gives
            return
        self.joined, self.sep_id = joined, sep_id

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._unchecked and self.joined is not None:
            with self._first_call:  # other threads wait for the check's verdict
                if self._unchecked:
                    return self._checked_call(texts)
        joined = self.joined
        if joined is not None and texts and not any(SEPARATOR in t for t in texts):
            out = self._in_runs(joined, texts)
            if out is not None:
                return out
        return self._per_text(texts)

    def _checked_call(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The first joined call: its sampled texts encoded one by one must agree, or this
        encoder goes text by text from now on."""
        if not texts or any(SEPARATOR in t for t in texts):
            return self._per_text(texts)  # not a joined call: the check waits for one
        out = self._in_runs(self.joined, texts)
        if out is None or not self._agrees(texts, out):
            self.joined = None  # the reasoning does not hold for this tokenizer: text by text
            out = self._per_text(texts)
        self._unchecked = False
        return out

    def _agrees(self, texts: list[str], joined: tuple[np.ndarray, np.ndarray]) -> bool:
        """Whether a joined call's ids for the texts of :func:`checked_sample` are those texts'
        ids encoded one by one."""
        sample = checked_sample(texts)                                                      # [S]
        offsets, flat = self._per_text([texts[i] for i in sample])                          # [S+1], [n]
        at, ids = joined                                                                    # [T+1], [N]
        got = [ids[at[i]:at[i + 1]] for i in sample]                                        # S arrays
        return (np.array_equal(np.diff(offsets), [len(g) for g in got])
                and np.array_equal(np.concatenate(got), flat))

    def _in_runs(self, joined, texts: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Runs of consecutive texts of about :data:`RUN_CHARS` characters, joined by the separator,
        one input each; None if a run's separator count is not what was joined."""
        T = len(texts)
        chars = np.fromiter(map(len, texts), dtype=np.int64, count=T) + len(SEPARATOR)   # [T]
        run_of = np.cumsum(chars) // RUN_CHARS                                             # [T] nondecreasing
        starts = np.flatnonzero(np.diff(run_of, prepend=-1)).tolist() + [T]                # [runs + 1]
        runs = [SEPARATOR.join(texts[a:b]) for a, b in zip(starts, starts[1:])]
        with self._turn:
            lists = [e.ids for e in joined.encode_batch_fast(runs, add_special_tokens=False)]
        for ids in lists:
            ids.append(self.sep_id)  # a separator after every text, the last of each run too
        ids = np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32,
                          count=sum(map(len, lists)))                                      # [N + T]
        is_sep = ids == self.sep_id
        ends = np.flatnonzero(is_sep)                                                      # [T] each text's separator
        if len(ends) != T:
            return None
        offsets = np.zeros(T + 1, dtype=np.int64)                                         # [T+1]
        offsets[1:] = ends - np.arange(T)  # ids before text t's separator, separators left out
        return offsets, ids[~is_sep]

    def _per_text(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The backend's batch call, one encoding per text, as the tokenizer does it."""
        with self._turn:
            with content_as_is(self.backend):  # only around the call: never left set by an error
                encodings = self.backend.encode_batch_fast(texts, add_special_tokens=False)
            lists = [e.ids for e in encodings]
            del encodings  # freed here, before the next call
        lens = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))             # [T]
        offsets = np.zeros(len(lists) + 1, dtype=np.int64)                                # [T+1]
        np.cumsum(lens, out=offsets[1:])
        return offsets, np.fromiter(itertools.chain.from_iterable(lists), dtype=np.int32, count=int(offsets[-1]))
