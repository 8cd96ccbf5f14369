"""Texts -> token ids as flat arrays, with several texts in each tokenizer input and long texts cut.

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
(:func:`checked_sample`; the first text's opening characters when all are book-length) are also
encoded one by one and must get the same ids. The copy itself
is checked when it is made (:func:`faithful_copy`; the last one made is kept for the next encoder
of a tokenizer with the same JSON, :func:`_joined_copy`): it is read back from the tokenizer's JSON,
which does not always hold what the tokenizer in memory does, and a difference there could show
on any later text. A text that holds the separator's string sends its batch through the per-text
path; so does a run whose separator count is not what was joined. Anything else (a tokenizer that
cannot be copied or whose copy differs, a component not listed, a separator id the model already
gives, a check that fails) encodes text by text, the tokenizer's own way, for the whole build.

The other way round, on the joined path a long text (book-length documents) is cut into inputs
of about :data:`CUT_CHARS` characters, joined into runs like short texts, and its pieces' ids put
back together. The tokenizer's cost per token grows with an input's length (the bare batch call
encodes the movie reviews of ../shared/data at ~2.15M tokens/s, the same reviews joined 50 to a
document at ~1.55-1.73M, on 2 cores), and a batch of a few long documents gives its threads a few
inputs to share; cut, 100 documents of ~196k characters built in 2.8 s instead of 3.55 s (CPU
4.95 s instead of 6.4 s). A cut is made only where the ids cannot change: before a lone space
between two ASCII letters or digits, for the pre-tokenisers, normalisers and added tokens of
:func:`cuttable` (its docstring gives the reason for each); the first-call check covers cut texts
too (it caught a first version that cut after the space instead of before it).

Both ways encode content as it is (:func:`content_as_is`): special-token strings as text, and no
truncation or padding the tokenizer carries.
"""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager, nullcontext
from typing import Iterator

import numpy as np

SEPARATOR = "\ue000rcond:sep\ue001"  # private-use characters around a name: absent from real text
RUN_CHARS = 2048  # characters per joined input: short enough for many runs per batch (one thread each)
CUT_CHARS = 1024  # a text of twice this or more is cut, where exact, into inputs of about this many characters
CUT_AT = re.compile(r"[A-Za-z0-9] (?=[A-Za-z0-9])")  # a lone space between ASCII letters or digits: cut before it
CHECKED_TEXTS = 64  # texts of the first joined call also encoded one by one, at most
CHECKED_CHARS = 1 << 16  # and at most this many characters of them (when none fits: the first text's opening ones)
CALL_CHARS = 4 << 20  # characters of runs per tokenizer call, about: a batch of a reader's largest size
                      # (sources.BATCH_BYTES) is one call; one longer record is several (each call's encodings are held until read)
PIECEWISE = {  # component types whose result on a piece does not depend on the rest of the input
    "normalizer": {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "Nmt", "Precompiled", "Prepend",
                   "Replace", "Strip", "StripAccents", "ByteLevel", "Sequence"},
    "pre_tokenizer": {"BertPreTokenizer", "ByteLevel", "CharDelimiterSplit", "Digits", "Metaspace", "Punctuation",
                      "Sequence", "Split", "UnicodeScripts", "Whitespace", "WhitespaceSplit"},
    "model": {"BPE", "Unigram", "WordLevel", "WordPiece"},
}
CUTTABLE_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "Nmt", "StripAccents", "Sequence"}
CUTTABLE_SPLITS = {  # Split patterns (isolated matches) that a cut before a lone space between letters or digits keeps
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",  # Llama 3, cl100k
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",  # Qwen 2
}


SWITCHING = threading.RLock()  # held while content_as_is has a tokenizer's settings switched
_last_copy: tuple | None = None  # the last joined copy made: (the tokenizer's JSON, copy, separator id)


@contextmanager
def content_as_is(backend) -> Iterator[None]:
    """Within: the backend tokenizer encodes content as it is. Special-token strings in the input
    (``<|rtg:1|>``, ``</s>``) are read as ordinary text, never as their ids; and no truncation or
    padding is applied, whatever the tokenizer holds: a ``tokenizer.json`` saved with
    ``"truncation": {"max_length": 512}``, or a tokenizer last called with ``truncation=True`` or
    ``padding=True`` (transformers leaves that state on the backend), would otherwise cut every text
    at 512 tokens or pad it with pad ids, silently. The settings are restored after. They belong
    to the tokenizer object, so hold this only around an encode call: another thread encoding with
    the same tokenizer meanwhile would see them too. One block at a time in the process
    (:data:`SWITCHING`, nested blocks in one thread allowed): a block entered while another had the
    settings switched would save the switched ones and put them back after the other had restored
    the real ones (a build interrupted while its encoding thread was in a long call, and built
    again at once, left the caller's tokenizer reading special-token strings as text)."""
    with SWITCHING:
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


def cuttable(state: dict) -> bool:
    """Whether a long text may be cut into several inputs at :data:`CUT_AT` (before a lone space
    between two ASCII letters or digits) with the ids unchanged, for a piecewise tokenizer (its
    JSON state). The pre-tokeniser must split there whatever surrounds the cut, and see the same
    input on each side: one of

    - ``ByteLevel`` with its regex (the GPT-2 pattern): no match takes a space after a non-space
      character, so a match ends at the cut, and the match starting there depends only on what
      follows (the pattern looks ahead, never behind); the input after the cut starts with a space,
      so no prefix space is added to it;
    - ``Whitespace``, ``WhitespaceSplit``, ``BertPreTokenizer``: they split at every space and drop it;
    - ``Metaspace`` that splits (each ``▁`` starts a word) and prepends always or never: the input
      after the cut starts with ``▁``, so nothing is prepended;
    - the ``Sequence`` of Llama 3 and Qwen 2 tokenizers: a ``Split`` with one of the patterns of
      :data:`CUTTABLE_SPLITS` (isolated matches), then ``ByteLevel`` on each match. As with the
      GPT-2 pattern, no alternative takes a space after a letter or digit (the letters alternative
      may start with one character that is neither letter, digit nor line break, and the others
      hold no space or only spaces), and the only look-around is ahead (the whitespace
      alternative's "not followed by a non-space", which sees the same character within
      the text before the cut); a digit run starts after the space on either side.

    No other ``Sequence``, nor a ``Split`` with another pattern. The
    normalisers must act character by character and leave ASCII letters, digits and the space as
    they are (up to case): the kinds in :data:`CUTTABLE_NORMALIZERS` (not ``Replace``, ``Prepend``,
    ``Strip``, ``Precompiled``, nor ``ByteLevel``, which turns the space into another character).
    And no ordinary added token: one is matched before normalising, and may span the cut or, with
    ``rstrip``, take the space after it. The model sees each pre-tokenised word alone in any case."""
    for kind, c in _components(state):
        if kind == "normalizer" and c.get("type") not in CUTTABLE_NORMALIZERS:
            return False
    pre = state.get("pre_tokenizer") or {}
    kind = pre.get("type")
    if kind == "Sequence":
        members = pre.get("pretokenizers") or []
        split = members[0] if members else {}
        if not (len(members) == 2 and split.get("type") == "Split" and split.get("behavior") == "Isolated"
                and not split.get("invert") and (split.get("pattern") or {}).get("Regex") in CUTTABLE_SPLITS
                and members[1].get("type") == "ByteLevel"):
            return False
    elif not (kind in ("Whitespace", "WhitespaceSplit", "BertPreTokenizer")
              or kind == "ByteLevel" and pre.get("use_regex", True)
              or kind == "Metaspace" and pre.get("split", True) and pre.get("prepend_scheme") in ("always", "never")):
        return False
    return not any(not t.get("special") for t in state.get("added_tokens") or [])


def cut_texts(texts: list[str]) -> tuple[list[str], list[int]]:
    """Each text of :data:`CUT_CHARS` x 2 characters or more cut into pieces: at the first
    :data:`CUT_AT` point at least :data:`CUT_CHARS` characters into what is left, while at least
    half that is left after it. (pieces in order, the number of pieces of each text)."""
    pieces, counts = [], []
    for text in texts:
        n, start, before = len(text), 0, len(pieces)
        if n >= 2 * CUT_CHARS:
            while (m := CUT_AT.search(text, start + CUT_CHARS, n - CUT_CHARS // 2)) is not None:
                cut = m.start() + 1  # the space starts the next piece
                pieces.append(text[start:cut])
                start = cut
        pieces.append(text[start:] if start else text)
        counts.append(len(pieces) - before)
    return pieces, counts


def faithful_copy(backend, text: str | None = None):
    """A copy of ``backend`` (a ``tokenizers.Tokenizer``) read back from its JSON (``text``, its
    ``to_str()`` if not given), or None where that copy would not encode as ``backend`` does. The
    JSON does not always hold what the tokenizer in memory holds: Unigram scores set from Python
    floats come back a unit in the last place away (ties between segmentations then break the
    other way), an added token whose id a model trained after it reuses gets another id, and a
    special token added again as an ordinary one is written as ordinary but still read as
    special in memory. So the copy's own JSON must be ``text``, and every added token must encode
    alike in both (:func:`added_tokens_alike`). None too where there is no copy: a component only
    Python holds, or JSON the tokenizer writes but cannot read (a score of -inf, written as null)."""
    from tokenizers import Tokenizer

    try:
        text = backend.to_str() if text is None else text
        copy = Tokenizer.from_str(text)
        if copy.to_str() != text:
            return None
    except Exception:
        return None
    return copy if added_tokens_alike(backend, copy) else None


def added_tokens_alike(backend, copy, copy_as_is: bool = False) -> bool:
    """Whether every added token of ``backend`` encodes alike in ``copy`` (content as is), alone
    and between other characters. A probe that neither can encode (a WordLevel model without its
    unk token) is alike when both fail with the same error. ``copy_as_is``: the copy already reads
    content as is for good, and its settings are left untouched (other threads may be encoding
    with it, and a setting switched meanwhile would be theirs too)."""
    added = [t.content for t in backend.get_added_tokens_decoder().values()]
    probes = [p for c in added for p in (c, f"a{c}a", f" {c} ")]
    if not probes:
        return True
    with content_as_is(backend), (nullcontext() if copy_as_is else content_as_is(copy)):
        return _probed(copy, probes) == _probed(backend, probes)


def _probed(tokenizer, probes: list[str]) -> list[list[int] | str]:
    """Each probe's ids; where the tokenizer cannot encode one (a WordLevel model without its unk
    token raises on any unknown word), the probes one by one, a failing one as its error's text."""
    try:
        return [e.ids for e in tokenizer.encode_batch_fast(probes, add_special_tokens=False)]
    except Exception:
        pass
    out: list[list[int] | str] = []
    for probe in probes:
        try:
            out.append(tokenizer.encode(probe, add_special_tokens=False).ids)
        except Exception as e:
            out.append(f"{type(e).__name__}: {e}")
    return out


def checked_sample(texts: list[str]) -> list[int]:
    """Which texts of the first joined call are also encoded one by one to check it: the first
    ones, in order, that keep the sample within :data:`CHECKED_TEXTS` texts and
    :data:`CHECKED_CHARS` characters, a longer text passed over (none when none fits: the check
    then takes the first text's opening characters, :meth:`ContentEncoder._agrees`).
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
    return sample


def group_starts(lengths: np.ndarray, size: int) -> list[int]:
    """Consecutive groups of items of about ``size`` in all: the items whose running totals of
    ``lengths [n]`` (each item's own included) have the same quotient by ``size``, so a group
    passes ``size`` by less than its first item's length. The first index of each group, then n."""
    group = np.cumsum(lengths) // size                                                     # [n] nondecreasing
    return np.flatnonzero(np.diff(group, prepend=-1)).tolist() + [len(lengths)]


def ids_of(encodings, sep: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One tokenizer call's encodings -> (each one's length [E] int64, their ids one after another
    [N] int32, with ``sep`` after each one's where given). The ids are read one encoding at a
    time, each Python list of them written into the array and freed before the next is made: a
    call's lists held all at once (~250,000 ints for 1 MiB of text) took fresh memory for their
    int objects at every call, and reading 1,000 movie reviews' ids (~1M) took 75 ms against 37 ms
    this way (2 cores; ``len(encoding)`` gives each length without its list)."""
    lens = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))         # [E]
    step = 0 if sep is None else 1
    flat = np.empty(int(lens.sum()) + step * len(lens), dtype=np.int32)                   # [N (+ E)]
    at = 0
    for e, n in zip(encodings, lens.tolist()):
        flat[at:at + n] = e.ids
        at += n
        if step:
            flat[at] = sep
            at += 1
    return lens, flat


def _joined_copy(backend, text: str):
    """(copy, separator id): :func:`faithful_copy` of ``backend`` (its JSON ``text``) with the
    separator added as an ordinary token and content read as is for good; None where there is no
    faithful copy or the separator's id is one the model gives (a vocabulary with gaps).

    The last copy made is kept and given again for a tokenizer whose JSON is the same (its added
    tokens probed against this ``backend`` again; the copy is never changed after it is made, and
    concurrent encode calls on it are safe). Each new copy that encodes keeps memory after it is
    dropped (``tokenizers`` 0.23.3: ~8.5 MB a build of the 2,000 movie reviews), so a process
    building one corpus after another grew by that much a build, and making the copy cost every
    build its JSON read back and checked."""
    global _last_copy
    last = _last_copy  # one read: another thread may replace it meanwhile
    if last is not None and last[0] == text:
        return last[1:] if added_tokens_alike(backend, last[1], copy_as_is=True) else None
    joined = faithful_copy(backend, text)
    if joined is None:
        return None
    from tokenizers import AddedToken

    _as_is(joined)  # for good: the copy is the encoders' own
    joined.add_tokens([AddedToken(SEPARATOR, normalized=False, special=False)])
    sep_id = joined.token_to_id(SEPARATOR)
    if backend.id_to_token(sep_id) is not None:  # a vocabulary with gaps: the new id is one the model gives
        return None
    _last_copy = (text, joined, sep_id)
    return joined, sep_id


class ContentEncoder:
    """``encoder(texts)`` -> (offsets [T+1] int64, flat ids [N] int32): text t is
    ``flat[offsets[t]:offsets[t+1]]``, its ids as the backend gives them for the text alone (no
    special tokens added). Runs of texts joined by a separator, long texts cut into several
    inputs, where that is exact (module docstring), else text by text. Thread-safe: calls from
    several threads take turns at the tokenizer, each with its encodings read and freed before the
    next call starts (and the backend's settings switched only around its own call), and do the
    rest side by side (runs joined, ids flattened and cut); calls made while the first joined call
    is checked wait for its verdict. The backend must not be encoded with or changed elsewhere
    during a call; what reads its settings meanwhile may see them switched (:func:`content_as_is`)."""

    def __init__(self, backend):
        self.backend = backend
        self.joined = self.sep_id = None  # a private copy with the separator, when runs are exact
        self.cuts = False  # long texts cut into several inputs (on the joined path), when that is exact
        self._unchecked = True  # the first joined call is checked against the texts one by one
        self._first_call = threading.Lock()  # held by the checked call
        self._turn = threading.Lock()  # one tokenizer call at a time, with its encodings read and freed
        try:
            text = backend.to_str()
        except Exception:  # a custom (Python) component: the tokenizer cannot be copied
            return
        state = json.loads(text)
        if not piecewise(state):
            return
        made = _joined_copy(backend, text)
        if made is None:
            return
        self.joined, self.sep_id = made
        self.cuts = cuttable(state)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self.joined is None or not texts or any(SEPARATOR in t for t in texts):
            return self._per_text(texts)  # not a joined call (a first-call check waits for one)
        if self._unchecked:
            with self._first_call:  # other threads wait for the check's verdict
                if self._unchecked:
                    return self._checked_call(texts)
        joined = self.joined  # None if the check said so meanwhile
        out = None if joined is None else self._in_runs(joined, texts)
        return self._per_text(texts) if out is None else out

    def _checked_call(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The first joined call: its sampled texts encoded one by one must agree, or this
        encoder goes text by text from now on."""
        out = self._in_runs(self.joined, texts)
        if out is None or not self._agrees(texts, out):
            self.joined = None  # the reasoning does not hold for this tokenizer: text by text
            out = self._per_text(texts)
        self._unchecked = False
        return out

    def _agrees(self, texts: list[str], joined: tuple[np.ndarray, np.ndarray]) -> bool:
        """Whether a joined call's ids for the texts of :func:`checked_sample` are those texts'
        ids encoded one by one. When every text is longer than :data:`CHECKED_CHARS` (book-length
        documents), the first text's first :data:`CHECKED_CHARS` characters are encoded both ways
        as a text of their own (cut into pieces as the long texts are, where they are cut):
        encoding a whole document as one input, as before, took ~8 s and ~1.2 GB for a 10 MB one."""
        sample = checked_sample(texts)                                                      # [S]
        if not sample:
            head = [texts[0][:CHECKED_CHARS]]
            got = self._in_runs(self.joined, head)
            return got is not None and np.array_equal(got[1], self._per_text(head)[1])
        offsets, flat = self._per_text([texts[i] for i in sample])                          # [S+1], [n]
        at, ids = joined                                                                    # [T+1], [N]
        got = [ids[at[i]:at[i + 1]] for i in sample]                                        # S arrays
        return (np.array_equal(np.diff(offsets), [len(g) for g in got])
                and np.array_equal(np.concatenate(got), flat))

    def _in_runs(self, joined, texts: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """The texts' ids from :meth:`_runs_of` their pieces, long texts cut where that is exact
        (:func:`cuttable`, :func:`cut_texts`); None if a run's separator count is not what was joined."""
        if self.cuts and max(map(len, texts), default=0) >= 2 * CUT_CHARS:  # a text long enough to cut
            pieces, counts = cut_texts(texts)                                              # [Q], [T]
            if len(pieces) > len(texts):
                out = self._runs_of(joined, pieces)
                if out is None:
                    return None
                offsets, ids = out                                                         # [Q+1], [N]
                ends = np.zeros(len(texts) + 1, dtype=np.int64)                            # [T+1] pieces before each text
                np.cumsum(counts, out=ends[1:])
                return offsets[ends], ids
        return self._runs_of(joined, texts)

    def _runs_of(self, joined, texts: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Runs of consecutive texts of about :data:`RUN_CHARS` characters, joined by the separator,
        one input each, sent to the tokenizer about :data:`CALL_CHARS` characters a call (a
        call's encodings, ~100 bytes a token, are all held until its ids are read: a 10 MB
        document cut into runs made 250 MB of them at once); None if a run's separator count is
        not what was joined."""
        T = len(texts)
        starts = group_starts(np.fromiter(map(len, texts), dtype=np.int64, count=T) + len(SEPARATOR),
                              RUN_CHARS)                                                   # [runs + 1]
        runs = [SEPARATOR.join(texts[a:b]) for a, b in zip(starts, starts[1:])]
        calls = group_starts(np.fromiter(map(len, runs), dtype=np.int64, count=len(runs)), CALL_CHARS)
        parts = []
        for a, b in zip(calls, calls[1:]):
            with self._turn:
                parts.append(ids_of(joined.encode_batch_fast(runs[a:b], add_special_tokens=False),
                                    self.sep_id)[1])  # this call's ids, a separator after every text
        ids = parts[0] if len(parts) == 1 else np.concatenate(parts)                       # [N + T]
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
            lens, flat = ids_of(encodings)                                                # [T], [N]
            del encodings  # freed here, before the next call
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)                                 # [T+1]
        np.cumsum(lens, out=offsets[1:])
        return offsets, flat
