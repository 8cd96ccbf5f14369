"""Records -> conditioned token streams -> packed rows on disk (DESIGN §3–§4).

Two streaming passes, so memory stays flat as the corpus grows. The bin edges (quantiles of
every reward-to-go) are known only after the last record, but nothing else depends on them, so
the first pass does all the work and leaves placeholders where a bin is needed:

1. **Read, encode, condition, pack.** The reader's :class:`~rcond.sources.PartBatch` es (about
   1,000 records each) are read and parsed in one background thread and tokenized in a second,
   one ``encode_batch_fast`` call per batch, into *parts* (prompt, response, dialog turn): the
   part's token ids, whether it is trained, and the reward-to-go whose RTG token will precede
   it. (Arrow's JSON reader and the tokenizer release the GIL, so this overlaps the packing.)
   With ``workers`` > 1, worker processes encode and condition whole batches instead
   (:mod:`rcond.parallel`), and the corpus is byte-identical.
   A text that recurs within a batch (the prompt a pair's two sides share, a templated prompt)
   is encoded once, and its ids are kept for later batches too (:class:`RecurringTexts`,
   bounded); tokenization is a pure function of the text, so its ids are simply reused.
   In the main thread a whole batch of parts becomes documents with a handful of vectorised
   numpy operations (a :class:`Pool`): the mode token first, in ``on`` mode an RTG token before
   every part that carries a reward-to-go (a *marker*), ``eos`` last; a seeded
   ``uncond_fraction`` of ``on`` records is emitted as ``off`` with no RTG token. Each token
   gets a *target weight*: 1 for response / assistant tokens and for the closing ``eos`` after
   them, 0 for prompt / user tokens (unless ``train_on_prompt``) and for control tokens. A
   document longer than ``block_size`` is split into pieces, each later piece starting with the
   control prefix ``mode [rtg-in-force]`` again (or truncated with ``truncate``). Pieces are
   packed with *streaming best fit*: each piece goes into the open row with the least free
   space that still fits it; when more than ``open_rows`` rows are open the fullest is written
   out. Unfilled slots are padding (``eos``, segment −1, weight 0). Only the fitting looks at
   one piece at a time, and only at its length; the rows that leave are assembled from the
   pools' tokens with a few gathers, in place, into one reused table of rows. Control tokens
   are written as placeholder ids (the tokens join the tokenizer only once the scheme exists),
   and every token carries the index of the marker in force instead of a bin. Content never
   encodes to a control or other special token, even with a tokenizer that already has them
   (one saved with an earlier corpus or model): the text is encoded with special-token strings
   read as plain text (:func:`special_tokens_as_text`), so a literal ``<|rtg:1|>`` or ``</s>`` in
   a review is trained as the characters it is. Full tables go to a temporary spill file; memory
   holds the reward-to-go of each marker.
2. **Resolve.** The edges are fitted, every marker gets its bin, and each temporary table of
   rows is rewritten with the real control-token ids and ``bin_ids``.

Python's cyclic garbage collector is paused for the whole build (:func:`collector_paused`). The
inputs are fingerprinted in a background thread beside the reading, and the tokenizer is saved and
fingerprinted in another beside pass 2; ``rows.arrow`` is hashed as it is written.

Row columns (all ``block_size`` long):

- ``input_ids``; ``position_ids`` restarting at 0 for every piece (and for the padding run);
- ``segment_ids``: 0, 1, ... per piece in the row, −1 for padding;
- ``loss_weight[i]``: the weight of predicting ``input_ids[i+1]`` at position ``i`` (shifted,
  so it lines up with the hidden state that makes the prediction). It is the target weight of
  token ``i+1``, and 0 at the last position of every piece: a target never crosses a document
  boundary. Control tokens have target weight 0, so no position is trained to emit them;
- ``bin_ids``: the RTG bin in force for each token (the latest RTG token of its document; tokens
  before a dialog's first RTG take the first one), −1 for ``off`` documents and padding.

The directory holds ``rows.arrow`` (a ``datasets`` Arrow file), ``tokenizer/`` and
``scheme.json``; ``scheme.json`` is written last and records the sha256 of ``rows.arrow`` and
the tokenizer fingerprint, both checked by :func:`load`.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
import io
import itertools
import os
import queue
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, TypeVar

import numpy as np
import pyarrow as pa

from .atomic import atomic_dir, raise_if_interrupted
from .sources import FIXED_BOTTOM, FIXED_TOP, PartBatch, SourceReader, file_sha256, fingerprint
from .tokens import SCHEME_FILE, ControlScheme, SchemeError, resolve_bins

ROWS_FILE = "rows.arrow"
TOKENIZER_DIR = "tokenizer"
COLUMNS = ("input_ids", "position_ids", "segment_ids", "loss_weight", "bin_ids")
PACKED_DTYPES = {"input_ids": np.int32, "position_ids": np.int32, "segment_ids": np.int32,
                 "loss_weight": np.float32, "marker": np.int32}  # pass 1's rows: flat, [R * B] per table
PACKED_COLUMNS = tuple(PACKED_DTYPES)
RTG_SLOT, ON_SLOT, OFF_SLOT = -1, -2, -3  # placeholder ids of the control tokens until pass 2
TABLE_TOKENS = 512 * 1024  # tokens of packed rows written to the Arrow file at a time (at least one row)
MAX_BLOCK_SIZE = 2 ** 20  # tokens per row; rows this long already hold ~20 MB of columns each
MAX_TRAINED_VOCAB = 2 ** 20  # train:VOCAB; the largest vocabularies in use are ~256k
KEY_BITS = 40  # the packer's open rows are ints: free slots << KEY_BITS | row key (keys below 2**40)
KEY_MASK = (1 << KEY_BITS) - 1
MAX_MARKERS = np.iinfo(np.int32).max  # markers are numbered corpus-wide in int32
Item = TypeVar("Item")


class CorpusError(ValueError):
    pass


@dataclass
class PackOptions:
    block_size: int = 1024
    uncond_fraction: float = 0.05
    train_on_prompt: bool = False
    truncate: bool = False
    seed: int = 0
    open_rows: int = 64
    encode_batch: int = 1000
    workers: int = 1  # processes that encode and condition batches (rcond.parallel); 1 = this process


@dataclass
class Summary:
    records: int = 0
    documents: int = 0
    pieces: int = 0
    rows: int = 0
    tokens: int = 0  # non-padding tokens written
    trained_tokens: float = 0.0  # sum of loss weights
    truncated_tokens: int = 0
    on_docs: int = 0
    off_docs: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    content_tokens: int = 0  # tokenizer output, before control tokens

    def efficiency(self, block_size: int) -> float:
        return self.tokens / max(1, self.rows * block_size)


# ---------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE on ``texts``; returns a PreTrainedTokenizerFast with eos = pad."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    bpe = ByteLevelBPETokenizer()
    # in a thread of its own: the Rust trainer waits for the texts without checking for signals,
    # so Ctrl-C is noticed only while this thread waits on it (an input that never ends, a fifo)
    in_background(lambda: bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                                                  special_tokens=[eos], show_progress=False))()
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos, pad_token=eos)


def trained_vocab_size(spec: str) -> int | None:
    """The VOCAB of a ``train:VOCAB`` tokenizer spec (None for a path or id), checked before any
    input is read; an empty spec is refused (as a path it would be the current directory)."""
    if not spec.strip():
        raise CorpusError("--tokenizer is empty; expected a tokenizer directory, a hub id, or train:VOCAB_SIZE")
    if not spec.startswith("train:"):
        return None
    try:
        vocab = int(spec.split(":", 1)[1])
    except ValueError:
        raise CorpusError(f"--tokenizer {spec!r}: expected train:VOCAB_SIZE, e.g. train:4096") from None
    if not 260 <= vocab <= MAX_TRAINED_VOCAB:
        raise CorpusError(f"--tokenizer {spec!r}: a byte-level BPE needs a vocabulary of 260 to "
                          f"{MAX_TRAINED_VOCAB:,} tokens")
    return vocab


def resolve_tokenizer(spec: str, reader: SourceReader):
    """``PATH_OR_ID`` loads a tokenizer; ``train:VOCAB`` trains a byte-level BPE on the inputs."""
    vocab = trained_vocab_size(spec)
    if vocab is not None:
        return train_tokenizer(reader.texts(), vocab)
    from .tokenizer import load_tokenizer

    return load_tokenizer(spec)


# ---------------------------------------------------------------------------- pass 1: encode
@contextmanager
def special_tokens_as_text(tokenizer) -> Iterator[None]:
    """Within: the backend tokenizer reads special-token strings in its input (``<|rtg:1|>``,
    ``</s>``) as ordinary text, never as their ids; the setting is restored after. The setting
    belongs to the tokenizer object, so hold it only around an encode call: another thread
    encoding with the same tokenizer meanwhile would see it too."""
    backend = tokenizer.backend_tokenizer
    before = backend.encode_special_tokens
    backend.encode_special_tokens = True
    try:
        yield
    finally:
        backend.encode_special_tokens = before


def encodings(batches: Iterable[PartBatch], tokenizer, cache: "RecurringTexts | None" = None,
              ) -> Iterator[tuple[PartBatch, list, np.ndarray]]:
    """Each PartBatch with an entry per *distinct* text (its encoding, or its ids from ``cache``)
    and, per text, the index of its entry [P]: one tokenizer call per batch, and a text that
    recurs in the batch (the prompt shared by a pair's two sides, a templated prompt) is encoded
    once (:func:`encode_distinct`). Special-token strings in the texts are encoded as text
    (:func:`special_tokens_as_text`)."""
    for b in batches:
        with special_tokens_as_text(tokenizer):  # only around the call: never left set by an error
            encoded, inverse = encode_distinct(b.texts, tokenizer.backend_tokenizer, cache)
        yield b, encoded, inverse


class RecurringTexts:
    """The token ids of texts that recurred within a batch, kept for the batches after it (a
    templated prompt, a system prompt, the prompt of many scored responses): such a text is then
    encoded about once per build instead of once per batch. Bounded, so memory stays flat: at most
    ``max_tokens`` ids are held, and the oldest entries leave first. A cache belongs to one
    tokenizer in one setting (a build's, with special-token strings read as text)."""

    def __init__(self, max_tokens: int = 1 << 18):
        self.ids: dict[str, list[int]] = {}  # text -> its ids, oldest first
        self.tokens, self.max_tokens = 0, max_tokens

    def keep(self, text: str, ids: list[int]) -> None:
        if len(ids) > self.max_tokens or text in self.ids:
            return
        while self.tokens + len(ids) > self.max_tokens:
            self.tokens -= len(self.ids.pop(next(iter(self.ids))))
        self.ids[text] = ids
        self.tokens += len(ids)


def encode_distinct(texts: list[str], backend, cache: RecurringTexts | None = None) -> tuple[list, np.ndarray]:
    """One call of the backend tokenizer on the distinct ``texts``: (per distinct text, in order of
    first appearance, its encoding; per text, the index of its entry [P]). With a ``cache``, a text
    found there is not sent and its entry is its ids (a list), and a text that occurs more than
    once in ``texts`` joins the cache (its entry too becomes its ids)."""
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    index: dict[str, int] = {}
    inverse = np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.int64, count=len(texts))  # [P]
    distinct = list(index)                                                            # [U]
    if cache is None:
        return encode(distinct, add_special_tokens=False), inverse
    entries = [cache.ids.get(t) for t in distinct]                                    # [U] ids, or None: to encode
    missing = [u for u, e in enumerate(entries) if e is None]
    for u, e in zip(missing, encode([distinct[u] for u in missing], add_special_tokens=False)):
        entries[u] = e
    if len(distinct) < len(texts):
        for u in np.flatnonzero(np.bincount(inverse, minlength=len(distinct)) > 1).tolist():
            if type(entries[u]) is not list:
                entries[u] = entries[u].ids
                cache.keep(distinct[u], entries[u])
    return entries, inverse


def flat_ids(encoded: list, inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The entries of U distinct texts (encodings, or id lists) and the entry of each of P texts
    [P] -> (offsets [P+1] int64, flat ids [N] int32): text p is ``flat[offsets[p]:offsets[p+1]]``."""
    ids = [e if type(e) is list else e.ids for e in encoded]
    ulens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))               # [U]
    uflat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(ulens.sum()))
    lens = ulens[inverse]                                                             # [P]
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)                                # [P+1]
    np.cumsum(lens, out=offsets[1:])
    if len(ids) == len(inverse):  # every text distinct, and encodings come in first-seen order
        return offsets, uflat
    ustart = np.cumsum(ulens) - ulens                                                 # [U]
    return offsets, uflat[np.repeat(ustart[inverse], lens) + _index_within_runs(lens)]  # [N]


def conditioned_batches(batches: Iterable[PartBatch], tokenizer, stream: "ConditionedStream",
                        workers: int = 1) -> Iterator[tuple[PartBatch, "Pool", int]]:
    """Each part batch, in order, with its pool (markers numbered corpus-wide) and its content
    tokens. One worker: read in one thread, encode in another, condition here; more: worker
    processes encode and condition (:mod:`rcond.parallel`), with the same result."""
    if workers > 1:
        from .parallel import conditioned_in_workers

        yield from conditioned_in_workers(batches, tokenizer, stream, workers)
        return
    for parts, encoded, inverse in prefetched(encodings(prefetched(batches), tokenizer, RecurringTexts())):
        offsets, flat = flat_ids(encoded, inverse)
        yield parts, stream.pool(parts, offsets, flat), len(flat)


# ---------------------------------------------------------------------------- pass 1: condition and pack
@dataclass
class Pool:
    """The token streams of a batch of documents, cut into pieces: piece q is
    ``[start[q], start[q] + length[q])`` of the flat columns."""

    ids: np.ndarray  # [T] int32; control tokens as RTG_SLOT / ON_SLOT / OFF_SLOT
    lw: np.ndarray  # [T] float32 loss weight: the target weight of the next token in its piece, 0 at a piece's end
    marker: np.ndarray  # [T] int32 index of the marker in force (its bin comes in pass 2), -1 none
    start: np.ndarray  # [Q] int64
    length: np.ndarray  # [Q] int64
    on: np.ndarray  # [D] bool: each document's mode after the unconditional draw


@dataclass
class Conditioned:
    """One part batch conditioned by :func:`condition`, its markers numbered from 0."""

    pool: Pool
    tokens: int  # content tokens: the tokenizer's output for the batch's parts
    marker_rtg: np.ndarray  # [m] float64 reward-to-go of each marker
    marker_fixed: np.ndarray  # [m] int8 FIXED_TOP / FIXED_BOTTOM / 0
    truncated: int  # tokens --truncate cut away
    cut_markers: np.ndarray  # [c] markers whose RTG token --truncate cut away


def condition(parts: PartBatch, offsets: np.ndarray, flat: np.ndarray, draws: np.ndarray, eos_id: int,
              opts: PackOptions) -> Conditioned:
    """Build the streams of every document in a part batch at once, then cut the long ones.
    ``offsets`` [P+1] and ``flat`` [N]: the parts' token ids (:func:`flat_ids`); ``draws`` [D]:
    one uniform draw per document, which keeps an ``on`` document ``on`` when it is at least
    ``uncond_fraction``. A pure function of its arguments, so a worker process can run it.

    A document is ``mode [rtg] part [rtg] part ... eos``: the mode token first, an RTG token
    before each part that carries a reward (in ``on`` mode), ``eos`` last.
    """
    lens = np.diff(offsets)                                                         # [P]
    trainable, rtg, fixed = parts.trainable, parts.rtg, parts.fixed                 # [P] each
    starts, on = parts.doc_start, parts.on                                          # [P] each
    P = len(lens)
    doc_of = np.cumsum(starts) - 1                                                  # [P] document index
    first = np.flatnonzero(starts)                                                  # [D] first part of each doc
    last = np.append(first[1:], P) - 1                                              # [D] last part of each doc
    doc_on = on[first] & (draws >= opts.uncond_fraction)                            # [D]
    marker = (~np.isnan(rtg) | (fixed != 0)) & doc_on[doc_of]                       # [P] RTG token emitted
    rtg_parts = np.flatnonzero(marker)                                              # [m]
    part_marker = np.full(P, -1, dtype=np.int32)                                    # [P] marker index in the batch
    part_marker[rtg_parts] = np.arange(len(rtg_parts))
    # marker in force: the document's latest marker, or its first one before it
    force = _marker_in_force(part_marker, marker, first, doc_of)                    # [P]
    ins = starts.astype(np.int64) + marker                                          # [P] tokens before content
    is_last = np.zeros(P, dtype=bool)
    is_last[last] = True
    out_len = ins + lens + is_last                                                  # [P]
    out_start = np.zeros(P + 1, dtype=np.int64)
    np.cumsum(out_len, out=out_start[1:])
    T = int(out_start[-1])
    w = (trainable | opts.train_on_prompt).astype(np.float32)                       # [P]
    ids = np.empty(T, dtype=np.int32)
    tw = np.zeros(T, dtype=np.float32)
    mk = np.empty(T, dtype=np.int32)
    dst = np.arange(len(flat)) + np.repeat(out_start[:-1] + ins - offsets[:-1], lens)  # [N]
    ids[dst], tw[dst], mk[dst] = flat, np.repeat(w, lens), np.repeat(force, lens)
    mode_at = out_start[first]                                                      # [D]
    ids[mode_at] = np.where(doc_on, ON_SLOT, OFF_SLOT)
    mk[mode_at] = force[first]
    rtg_at = out_start[rtg_parts] + starts[rtg_parts]                               # [m]
    ids[rtg_at], mk[rtg_at] = RTG_SLOT, part_marker[rtg_parts]
    eos_at = out_start[last] + ins[last] + lens[last]
    ids[eos_at], tw[eos_at], mk[eos_at] = eos_id, w[last], force[last]
    doc_start = np.append(out_start[first], T)                                      # [D+1]
    (ids, tw, mk, start, length), truncated, cut_markers = _cut(ids, tw, mk, doc_start[:-1], np.diff(doc_start),
                                                                 doc_on, opts)
    pool = Pool(ids, _next_weights(tw, start, length), mk, start, length, doc_on)
    return Conditioned(pool, len(flat), rtg[rtg_parts], fixed[rtg_parts], truncated, cut_markers)


def _next_weights(tw: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Target weights [T] -> loss weights [T]: each token gets the target weight of the token
    after it, and the last token of every piece gets 0 (a target never crosses a piece's end)."""
    lw = np.empty_like(tw)
    lw[:-1] = tw[1:]
    if len(lw):
        lw[-1] = 0
    lw[start + length - 1] = 0
    return lw


def _cut(ids: np.ndarray, tw: np.ndarray, mk: np.ndarray, start: np.ndarray, length: np.ndarray, on: np.ndarray,
         opts: PackOptions) -> tuple[tuple[np.ndarray, ...], int, np.ndarray]:
    """Documents ([T] token columns, each document ``[start, start + length)``) longer than
    block_size: truncate, or split so that each later piece re-opens with ``mode [RTG in force]``;
    the extra pieces go to the end of the columns. Returns the pieces (ids, target weights,
    markers, start, length), the tokens truncated, and the markers whose RTG token was truncated."""
    B = opts.block_size
    long = np.flatnonzero(length > B)
    none = np.zeros(0, dtype=np.int64)
    if not len(long):
        return (ids, tw, mk, start, length), 0, none
    cut_length = np.minimum(length, B)
    if opts.truncate:
        cut = length[long] - B                                                        # [L] tokens dropped
        at = np.repeat(start[long] + B, cut) + _index_within_runs(cut)                # [C] positions cut
        cut_markers = mk[at[ids[at] == RTG_SLOT]].astype(np.int64)                    # markers of cut RTG tokens
        return (ids, tw, mk, start, cut_length), int(cut.sum()), cut_markers
    at, T = [], len(ids)
    all_ids, all_tw, all_mk, starts, lens = [ids], [tw], [mk], [], []
    for d in long.tolist():
        a, b = int(start[d]), int(start[d] + length[d])
        for piece_ids, piece_tw, piece_mk in _split(ids[a:b], tw[a:b], mk[a:b], bool(on[d]), B):
            at.append(d + 1)
            starts.append(T)
            lens.append(len(piece_ids))
            T += len(piece_ids)
            all_ids.append(piece_ids), all_tw.append(piece_tw), all_mk.append(piece_mk)
    return ((np.concatenate(all_ids), np.concatenate(all_tw), np.concatenate(all_mk),
             np.insert(start, at, starts), np.insert(cut_length, at, lens)), 0, none)


def _split(ids: np.ndarray, tw: np.ndarray, mk: np.ndarray, on: bool, B: int):
    """The pieces after the first of a document longer than ``B``."""
    start = B
    while start < len(ids):
        if on:
            m = int(mk[start - 1])
            prefix_ids, prefix_mk = [ids[0], RTG_SLOT], [m, m]
            if ids[start] == RTG_SLOT:  # the piece opens with an RTG token of its own
                prefix_ids, prefix_mk = prefix_ids[:1], prefix_mk[:1]
        else:
            prefix_ids, prefix_mk = [ids[0]], [-1]
        end = min(start + B - len(prefix_ids), len(ids))
        yield (np.concatenate([prefix_ids, ids[start:end]]).astype(np.int32),
               np.concatenate([np.zeros(len(prefix_ids)), tw[start:end]]).astype(np.float32),
               np.concatenate([prefix_mk, mk[start:end]]).astype(np.int32))
        start = end


class ConditionedStream:
    """Part batches -> each document's control-token stream -> pieces of at most ``block_size``
    (pass 1, with placeholders); then, once the scheme is fitted, placeholders -> ids and bins.

    The stream owns what must follow record order: the seeded draws that make ``on`` documents
    unconditional, and the corpus-wide numbering of markers. :func:`condition` does the rest, in
    this process or in a worker (:func:`conditioned_batches`)."""

    def __init__(self, eos_id: int, opts: PackOptions):
        self.eos_id, self.opts = eos_id, opts
        self.rng = np.random.default_rng(opts.seed)
        self.marker_rtg: list[np.ndarray] = []  # per batch: [m] float64 reward-to-go of each marker
        self.marker_fixed: list[np.ndarray] = []  # per batch: [m] int8 FIXED_TOP / FIXED_BOTTOM / 0
        self.markers = 0
        self.truncated = 0
        self.cut_markers: list[np.ndarray] = []  # markers whose RTG token --truncate cut away

    def draw(self, parts: PartBatch) -> np.ndarray:
        """The next batch's draws [D], one per document, in record order."""
        return self.rng.random(parts.records)

    def adopt(self, c: Conditioned) -> Pool:
        """Number a conditioned batch's markers after those of the batches before it; its pool."""
        mk = c.pool.marker
        if self.markers + len(c.marker_rtg) > MAX_MARKERS:
            raise CorpusError(f"more than {MAX_MARKERS:,} reward-to-go tokens in one corpus; split the input")
        np.add(mk, self.markers, out=mk, where=mk >= 0)
        self.marker_rtg.append(c.marker_rtg)
        self.marker_fixed.append(c.marker_fixed)
        if len(c.cut_markers):
            self.cut_markers.append(c.cut_markers + self.markers)
        self.truncated += c.truncated
        self.markers += len(c.marker_rtg)
        return c.pool

    def pool(self, parts: PartBatch, offsets: np.ndarray, flat: np.ndarray) -> Pool:
        """:func:`condition` and :meth:`adopt` a batch in this process."""
        return self.adopt(condition(parts, offsets, flat, self.draw(parts), self.eos_id, self.opts))

    # ------------------------------------------------------------------ pass 2
    def bind(self, scheme: ControlScheme, tokenizer) -> None:
        """Give every marker its bin under the fitted ``scheme`` (whose tokens are now in ``tokenizer``)."""
        ids = scheme.token_ids(tokenizer)
        self.on_id, self.off_id = ids[scheme.on_token], ids[scheme.off_token]
        self.rtg_ids = np.array(scheme.rtg_ids(tokenizer), dtype=np.int32)                # [K]
        K = scheme.num_bins
        rtg = np.concatenate(self.marker_rtg) if self.marker_rtg else np.zeros(0)        # [M]
        fixed = np.concatenate(self.marker_fixed) if self.marker_fixed else np.zeros(0, np.int8)
        b = np.searchsorted(np.asarray(scheme.edges, dtype=np.float64), np.nan_to_num(rtg), side="right")
        b = np.where(fixed == FIXED_TOP, K - 1, np.where(fixed == FIXED_BOTTOM, 0, b))
        self.bin_of = np.append(b, -1).astype(np.int16)  # [M+1] bin of each marker; index -1 (no marker) -> -1
        kept = np.ones(len(b), dtype=bool)
        if self.cut_markers:
            kept[np.concatenate(self.cut_markers)] = False
        self.bin_counts = np.bincount(b[kept], minlength=K)  # markers per bin, less those --truncate cut
        self.marker_rtg, self.marker_fixed = [], []

    def resolve(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pass 1's rows -> final rows: real control-token ids (written into ``rows["input_ids"]``
        in place), and ``bin_ids`` from the markers."""
        ids, mk = rows["input_ids"], rows["marker"]                                       # [n]
        bins = self.bin_of[mk]                                                            # [n]; marker -1 -> bin -1
        at = np.flatnonzero(ids < 0)                                                      # control tokens
        slot = ids[at]
        ids[at] = np.where(slot == RTG_SLOT, self.rtg_ids[bins[at]], np.where(slot == ON_SLOT, self.on_id, self.off_id))
        return {"input_ids": ids, "position_ids": rows["position_ids"], "segment_ids": rows["segment_ids"],
                "loss_weight": rows["loss_weight"], "bin_ids": bins}


def _index_within_runs(lengths: np.ndarray) -> np.ndarray:
    """Runs of ``lengths`` [R] laid end to end -> each element's index within its run [Σ lengths]."""
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _marker_in_force(part_marker: np.ndarray, marker: np.ndarray, first: np.ndarray, doc_of: np.ndarray) -> np.ndarray:
    """[P] per part: the latest marker at or before it in its document; parts before a document's
    first marker take the first marker; documents without markers get -1."""
    P = len(part_marker)
    idx = np.where(marker, np.arange(P), -1)
    latest = np.maximum.accumulate(idx)                                             # [P] last marker so far
    latest = np.where(latest >= first[doc_of], latest, -1)                          # not from an earlier doc
    nxt = np.where(marker, np.arange(P), P)
    upcoming = np.minimum.accumulate(nxt[::-1])[::-1]                               # [P] next marker ahead
    doc_end = np.append(first[1:], P)[doc_of]
    upcoming = np.where(upcoming < doc_end, upcoming, -1)
    pick = np.where(latest >= 0, latest, upcoming)
    return np.where(pick >= 0, part_marker[np.maximum(pick, 0)], -1)


class BestFitPacker:
    """Streaming best-fit bin packing of pieces into rows of ``block_size`` tokens.

    Each piece goes into the open row with the least free space that still fits it (a new row if
    none does); a row leaves when full, or when more than ``open_rows`` rows are open (the
    fullest leaves). Only lengths are handled one piece at a time; the rows that leave are
    assembled from their pools' tokens with a few gathers (:meth:`_assemble`), in place, into a
    table of ``table_rows`` rows that is reused: each time it is full it goes to ``emit`` as
    ``{column: [table_rows * B] array}`` (the last one, from :meth:`flush`, may be shorter).
    ``emit`` must be done with the arrays when it returns.
    """

    def __init__(self, block_size: int, pad_id: int, open_rows: int, table_rows: int,
                 emit: Callable[[dict[str, np.ndarray]], None]):
        self.B, self.pad_id, self.max_open = block_size, pad_id, open_rows
        self.free: list[int] = []  # open rows, sorted, each as free slots << KEY_BITS | row key
        self.rows: dict[int, list[int]] = {}  # row key -> its pieces in order, by global piece number
        self.next_key = 0
        self.pools: dict[int, Pool] = {}  # pool id -> pool, while some piece of it is not written
        self.first: dict[int, int] = {}  # pool id -> global number of its first piece
        self.live: dict[int, int] = {}  # pool id -> its pieces not yet written
        self.next_pool = self.next_piece = 0
        self.table_rows, self.emit, self.filled = table_rows, emit, 0
        self.table = {k: np.empty(table_rows * block_size, dtype)
                      for k, dtype in PACKED_DTYPES.items()}  # [table_rows * B] each, reused

    def add(self, pool: Pool) -> None:
        """Place every piece of ``pool``; the rows that leave go into the table."""
        if not len(pool.length):  # nothing to place, and nothing would ever release it
            return
        pid = self.next_pool
        self.next_pool += 1
        self.pools[pid], self.first[pid], self.live[pid] = pool, self.next_piece, len(pool.length)
        done: list[list[int]] = []
        free, rows, B, g = self.free, self.rows, self.B, self.next_piece
        for n in pool.length.tolist():  # one int per open row keeps the search a plain int compare
            i = bisect.bisect_left(free, n << KEY_BITS)
            if i < len(free):
                slot = free.pop(i)
                space, key = slot >> KEY_BITS, slot & KEY_MASK
            else:
                space, key = B, self.next_key
                self.next_key += 1
                rows[key] = []
            rows[key].append(g)
            g += 1
            space -= n
            if space == 0:
                done.append(rows.pop(key))
                continue
            bisect.insort(free, space << KEY_BITS | key)
            if len(free) > self.max_open:
                done.append(rows.pop(free.pop(0) & KEY_MASK))
        self.next_piece = g
        self._place(done)

    def flush(self) -> None:
        """Every open row leaves, in the order they were opened; the table goes out as it is."""
        self._place([self.rows.pop(key) for key in sorted(slot & KEY_MASK for slot in self.free)])
        self.free = []
        if self.filled:
            self.emit({k: v[:self.filled * self.B] for k, v in self.table.items()})
            self.filled = 0

    def _place(self, done: list[list[int]]) -> None:
        """Rows into the table, as many as fit; a full table goes out and is refilled."""
        while done:
            room = self.table_rows - self.filled
            head, done = done[:room], done[room:]
            a, b = self.filled * self.B, (self.filled + len(head)) * self.B
            self._assemble(head, {k: v[a:b] for k, v in self.table.items()})
            self.filled += len(head)
            if self.filled == self.table_rows:
                self.emit(self.table)
                self.filled = 0

    def _assemble(self, done: list[list[int]], out: dict[str, np.ndarray]) -> None:
        """Rows (lists of global piece numbers) -> padded rows written into ``out`` (flat
        ``[R * B]`` views, row after row); drops pools no row still uses."""
        R, B = len(done), self.B
        counts = np.fromiter(map(len, done), dtype=np.int64, count=R)               # [R] pieces per row
        number = np.fromiter(itertools.chain.from_iterable(done), dtype=np.int64, count=int(counts.sum()))  # [M]
        live = list(self.first)                                                       # [L] live pool ids, ascending
        first = np.fromiter(self.first.values(), dtype=np.int64, count=len(live))    # [L] their first pieces
        at = np.searchsorted(first, number, side="right") - 1                         # [M] index into live
        piece = number - first[at]                                                    # [M] within its pool
        used = [(live[i], at == i) for i in np.unique(at).tolist()]                  # (pool id, its pieces [M])
        length = np.empty(len(number), dtype=np.int64)                               # [M]
        for p, sel in used:
            length[sel] = self.pools[p].length[piece[sel]]
        row = np.repeat(np.arange(R), counts)                                         # [M]
        row_first = np.cumsum(counts) - counts                                        # [R] first piece of each row
        seg = np.arange(len(piece)) - row_first[row]                                  # [M] segment within its row
        end = np.cumsum(length)                                                       # [M]
        offset = end - length - (end - length)[row_first][row]                        # [M] where it sits in the row
        ids, pos, seg_ids, lw, mk = (out[k] for k in PACKED_COLUMNS)                  # [R * B] each
        for p, sel in used:  # the tokens of each pool's pieces, gathered in one go
            pool = self.pools[p]
            n = length[sel]                                                           # [m]
            k = _index_within_runs(n)                                                 # [s] index within its piece
            dst = np.repeat(row[sel] * B + offset[sel], n) + k                        # [s] into the [R*B] rows
            src = np.repeat(pool.start[piece[sel]], n) + k                            # [s] into the pool
            ids[dst], lw[dst], mk[dst], pos[dst], seg_ids[dst] = (pool.ids[src], pool.lw[src], pool.marker[src], k,
                                                                   np.repeat(seg[sel], n))
            self.live[p] -= len(n)
            if not self.live[p]:
                del self.pools[p], self.first[p], self.live[p]
        pad = B - np.bincount(row, weights=length, minlength=R).astype(np.int64)     # [R] free slots per row
        k = _index_within_runs(pad)                                                   # [f] index within the padding
        dst = np.repeat(np.arange(R) * B + B - pad, pad) + k                          # [f] the padding slots
        ids[dst], pos[dst], seg_ids[dst], lw[dst], mk[dst] = self.pad_id, k, -1, 0, -1  # padding runs from 0


def _features(block_size: int):
    from datasets import Features, List, Value

    return Features({
        "input_ids": List(Value("int32"), length=block_size),
        "position_ids": List(Value("int32"), length=block_size),
        "segment_ids": List(Value("int32"), length=block_size),
        "loss_weight": List(Value("float32"), length=block_size),
        "bin_ids": List(Value("int16"), length=block_size),
    })


def _rows_table(rows: dict[str, np.ndarray], block_size: int) -> pa.Table:
    """{column: [R * B] array} -> an Arrow table of fixed-size lists."""
    return pa.table({name: pa.FixedSizeListArray.from_arrays(pa.array(rows[name]), block_size)
                     for name in COLUMNS})


# ---------------------------------------------------------------------------- the builder
CONTROL_PREFIX = 2  # mode token + RTG token


def check_options(opts: PackOptions) -> None:
    """Reject options that cannot work before any input is read."""
    if opts.block_size < CONTROL_PREFIX + 2:
        raise CorpusError(f"--block-size {opts.block_size} is smaller than a control prefix ({CONTROL_PREFIX} "
                          f"tokens: mode + RTG) plus two tokens; use at least {CONTROL_PREFIX + 2}")
    if opts.block_size > MAX_BLOCK_SIZE:
        raise CorpusError(f"--block-size {opts.block_size} is more than {MAX_BLOCK_SIZE:,} tokens per row; a "
                          f"training row is one model context, so give the context length you will train at")
    if not 0.0 <= opts.uncond_fraction <= 1.0:
        raise CorpusError(f"--uncond-fraction must be in [0, 1], got {opts.uncond_fraction}")
    if opts.seed < 0:  # numpy's generators take non-negative seeds only
        raise CorpusError(f"--seed must be a non-negative integer, got {opts.seed}")
    if opts.workers < 1:
        raise CorpusError(f"--workers must be at least 1, got {opts.workers}")
    cores = usable_cores()
    if opts.workers > max(8, 4 * cores):
        raise CorpusError(f"--workers {opts.workers} is more than 4 per core ({cores} cores here, at least 8 allowed); "
                          f"each worker is a process with its own tokenizer, and beyond one per core they only wait")


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_special_tokens(tokenizer, control_tokens: list[str]) -> None:
    """The tokenizer's eos and pad must not be control tokens (a tokenizer saved with a corpus and
    edited, say): every document ends with eos and padding fills rows, so either one would put a
    control token where the model learns to end a text or where nothing is."""
    for role in ("eos", "pad"):
        token = getattr(tokenizer, f"{role}_token")
        if token in control_tokens:
            raise CorpusError(f"the tokenizer's {role} token is {token!r}, one of rcond's control tokens; give it a "
                              f"{role} token of its own ({role}_token in its tokenizer_config.json)")


ABANDON_AFTER = 2.0  # seconds a stopped consumer waits for its producer thread


def prefetched(items: Iterable[Item], depth: int = 2) -> Iterator[Item]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    Stages chained this way run side by side: reading and parsing (Arrow's JSON reader releases
    the GIL), encoding (so does the tokenizer) and packing. An exception in the producer is raised
    here; when the consumer stops early (an error, Ctrl-C), the producer stops at its next item,
    and is left behind (a daemon thread) if it cannot get there in ``ABANDON_AFTER`` seconds:
    blocked opening a fifo no one writes to, say.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((None, item)):
                    return
            put((None, done))
        except BaseException as e:  # handed to the consumer, which raises it
            put((e, None))
        finally:  # a generator (another prefetched stage) stops its own thread now
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="rcond-reader", daemon=True)
    worker.start()
    try:
        while True:
            error, item = q.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        worker.join(ABANDON_AFTER)


def in_background(fn: Callable[[], Item]) -> Callable[[], Item]:
    """Start ``fn()`` in a daemon thread now; the returned callable waits for its result (or
    raises its exception). For side work (hashing inputs, saving the tokenizer) that can use a core
    the main work leaves idle instead of adding to its time. A daemon thread does not hold up an
    interrupted run."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # raised by the waiter
            box["error"] = e

    worker = threading.Thread(target=run, name="rcond-background", daemon=True)
    worker.start()

    def result() -> Item:
        worker.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the bulk work, restoring its state after.

    Every batch creates thousands of short-lived acyclic objects (the tokenizer's encodings, id
    lists, strings), which reference counting frees at once; but their number keeps triggering
    collections that walk the whole heap (hundreds of thousands of objects once transformers is
    imported). Measured here: the tokenizer's own batch call runs about 20% faster with the
    collector paused.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _progress(total=None, desc="", unit="it", enabled=True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=False)


def build(reader: SourceReader, out: str | Path, tokenizer, *, num_bins: int | None = None,
          binning: str = "quantile", opts: PackOptions | None = None, overwrite: bool = False,
          progress: bool = True) -> tuple[ControlScheme, Summary]:
    """Read, encode, condition and pack; fit the bins; resolve and write a corpus directory atomically.
    ``num_bins`` None: as many as explicit edges make, else 10 (:func:`~rcond.tokens.resolve_bins`)."""
    opts = opts or PackOptions()
    check_options(opts)
    num_bins = resolve_bins(num_bins, binning)
    check_special_tokens(tokenizer, ControlScheme(num_bins=num_bins).control_tokens)
    B = opts.block_size
    summary = Summary()
    t0 = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite, keep=tuple(reader.inputs)) as tmp, collector_paused():
        source_fingerprints = in_background(lambda: {spec: fingerprint(spec) for spec in reader.inputs})
        # ---- pass 1: records -> conditioned pieces -> packed rows with placeholders (spill file) + RTG values
        values: list[np.ndarray] = []
        stream = ConditionedStream(tokenizer.eos_token_id, opts)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        def emit(rows: dict[str, np.ndarray]) -> None:
            """A table of packed rows -> the spill file (the packer reuses the arrays after)."""
            summary.rows += len(rows["input_ids"]) // B
            summary.tokens += int(np.count_nonzero(rows["segment_ids"] >= 0))
            summary.trained_tokens += float(rows["loss_weight"].sum(dtype=np.float64))
            spill.write(rows)

        bar = _progress(desc="encode+pack", unit="rec", enabled=progress)
        with Spill(tmp / "packed.bin", B) as spill:
            packer = BestFitPacker(B, pad_id, opts.open_rows, max(1, TABLE_TOKENS // B), emit)
            for parts, pool, tokens in conditioned_batches(reader.batches(opts.encode_batch), tokenizer, stream,
                                                           opts.workers):
                raise_if_interrupted()  # a Ctrl-C Python dropped stops the build here, not at the end
                values.append(parts.rtg[~np.isnan(parts.rtg)])
                summary.content_tokens += tokens + len(pool.on)  # + one eos each
                summary.documents += len(pool.on)
                summary.on_docs += int(np.count_nonzero(pool.on))
                summary.pieces += len(pool.length)
                packer.add(pool)
                bar.update(len(pool.on))
                bar.set_postfix(tokens=summary.content_tokens)
            packer.flush()
        bar.close()
        summary.records = summary.documents
        summary.off_docs = summary.documents - summary.on_docs
        summary.truncated_tokens = stream.truncated
        summary.skipped, summary.skipped_examples = reader.skipped.count, list(reader.skipped.examples)
        if summary.documents == 0:
            raise CorpusError(f"no records were read from {', '.join(reader.inputs)}"
                              + (f" ({summary.skipped} skipped as bad)" if summary.skipped else "")
                              + "; expected at least one record"
                              + "".join(f"\n  skipped: {m}" for m in summary.skipped_examples[:5]))
        # ---- pass 2: fit the bins; placeholders -> control-token ids and bin ids, in the final rows file
        scheme = _fit_scheme(np.concatenate(values) if values else np.zeros(0), num_bins, binning, reader, opts)
        scheme.add_to_tokenizer(tokenizer)
        stream.bind(scheme, tokenizer)
        scheme.counts = stream.bin_counts.tolist()
        tokenizer_saved = in_background(lambda: _save_tokenizer(tokenizer, tmp / TOKENIZER_DIR))  # beside pass 2
        try:
            rows_sha256 = _resolve_rows(spill, tmp / ROWS_FILE, stream, B)
        except BaseException:  # let the saving thread finish before the temp dir is removed
            with suppress(BaseException):
                tokenizer_saved()
            raise
        scheme.tokenizer_fingerprint = tokenizer_saved()
        scheme.source_fingerprints = source_fingerprints()
        scheme.options.update(rows=summary.rows, tokens=summary.tokens, rows_sha256=rows_sha256)
        summary.seconds = time.perf_counter() - t0
        scheme.save(tmp)  # last: its presence marks a complete corpus
    return scheme, summary


def _fit_scheme(values: np.ndarray, num_bins: int, binning: str, reader: SourceReader, opts: PackOptions) -> ControlScheme:
    if binning.startswith("edges:") or len(values):
        scheme = ControlScheme.fit(values, num_bins=num_bins, binning=binning)
    else:  # unscored pairs (chosen = +1, rejected = -1) or only off documents: edges span [-1, 1]
        scheme = ControlScheme.fit([-1.0, 1.0], num_bins=num_bins, binning="uniform")
    scheme.gamma = reader.gamma
    scheme.uncond_fraction = opts.uncond_fraction
    scheme.options = {"format": reader.format, "block_size": opts.block_size, "train_on_prompt": opts.train_on_prompt,
                      "truncate": opts.truncate, "seed": opts.seed,
                      "scorer": getattr(reader.scorer, "name", None) if reader.scorer else None}
    return scheme


class Spill:
    """Pass 1's tables of packed rows in a temporary file of the build's own, raw: each table's
    columns one after another (``PACKED_DTYPES`` order, ``rows * B`` values each). Pass 2 reads
    the tables back into one reused set of buffers: nothing to decode, no fresh memory per table."""

    def __init__(self, path: Path, block_size: int):
        self.path, self.B = path, block_size
        self.table_rows: list[int] = []  # rows in each table, in file order
        self.f = open(path, "wb")

    def __enter__(self) -> "Spill":
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, rows: dict[str, np.ndarray]) -> None:
        """Append a table ``{column: [R * B] array}``."""
        for k in PACKED_COLUMNS:
            self.f.write(rows[k])
        self.table_rows.append(len(rows["input_ids"]) // self.B)

    def tables(self) -> Iterator[dict[str, np.ndarray]]:
        """Each table back, as views into buffers that the next table overwrites."""
        most = max(self.table_rows, default=0)
        buffers = {k: np.empty(most * self.B, dtype) for k, dtype in PACKED_DTYPES.items()}
        with open(self.path, "rb") as f:
            for n in self.table_rows:
                table = {k: b[:n * self.B] for k, b in buffers.items()}
                for k, column in table.items():
                    if f.readinto(column) != column.nbytes:
                        raise CorpusError(f"{self.path}: the temporary file of packed rows ended early")
                yield table


def _resolve_rows(spill: Spill, rows_path: Path, stream: ConditionedStream, block_size: int) -> str:
    """Pass 2: pass 1's spilled tables -> the final ``rows.arrow`` (then the spill file goes);
    returns the rows file's sha256, hashed as it is written."""
    from datasets.arrow_writer import ArrowWriter

    rows_file = HashingWriter(open(rows_path, "wb"))
    writer = ArrowWriter(features=_features(block_size), stream=rows_file)
    try:
        for rows in spill.tables():
            writer.write_table(_rows_table(stream.resolve(rows), block_size))
        writer.finalize()
    finally:
        rows_file.close()
    spill.path.unlink()
    return rows_file.hexdigest()


def _save_tokenizer(tokenizer, directory: Path) -> str:
    """``save_pretrained`` into ``directory``; returns the tokenizer's fingerprint."""
    from .tokenizer import tokenizer_fingerprint

    tokenizer.save_pretrained(str(directory))
    return tokenizer_fingerprint(tokenizer)


class HashingWriter(io.RawIOBase):
    """A binary file being written, hashed (sha256) on the way: the hash of a file is known the
    moment it is closed, without reading it back."""

    def __init__(self, f: BinaryIO):
        self.f, self.sha = f, hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes first
            self.f.close()

    def hexdigest(self) -> str:
        """``sha256:<hex>`` of everything written, as :func:`~rcond.sources.file_sha256` gives for the file."""
        return "sha256:" + self.sha.hexdigest()


# ---------------------------------------------------------------------------- loading
def load(directory: str | Path, *, verify: bool = True):
    """Open a corpus: returns ``(dataset, scheme, tokenizer)``; checks it is complete and unaltered."""
    from datasets import Dataset
    from .tokenizer import load_tokenizer, tokenizer_fingerprint

    d = Path(directory)
    if not d.is_dir():
        raise CorpusError(f"{d}: no such corpus directory")
    try:
        scheme = ControlScheme.load(d)
    except SchemeError as e:
        raise CorpusError(f"{d}: not a complete rcond corpus ({e})") from None
    rows = d / ROWS_FILE
    if not rows.exists():
        raise CorpusError(f"{d}: missing {ROWS_FILE}")
    if verify and file_sha256(rows) != scheme.options.get("rows_sha256"):
        raise CorpusError(f"{rows}: fingerprint mismatch — the rows changed after preprocessing; re-run rcond preprocess")
    if not (d / TOKENIZER_DIR).is_dir():
        raise CorpusError(f"{d}: has no {TOKENIZER_DIR}/ folder (the tokenizer its rows were encoded with, saved by "
                          f"rcond preprocess); restore it or preprocess the corpus again")
    tokenizer = load_tokenizer(str(d / TOKENIZER_DIR))
    if tokenizer_fingerprint(tokenizer) != scheme.tokenizer_fingerprint:
        raise CorpusError(f"{d / TOKENIZER_DIR}: tokenizer fingerprint does not match scheme.json")
    missing = scheme.missing_tokens(tokenizer)
    if missing:  # the fingerprint covers the tokenizer, not the scheme's token names
        raise CorpusError(f"{d / SCHEME_FILE}: control token {missing[0]!r} is not in the corpus's tokenizer "
                          f"({d / TOKENIZER_DIR}), which holds the tokens the rows were conditioned with; the "
                          f"scheme.json was edited or belongs to another corpus: preprocess the corpus again")
    dataset = Dataset.from_file(str(rows))
    check_scheme_fits_rows(d, scheme, dataset.data)
    return dataset, scheme, tokenizer


def check_scheme_fits_rows(d: Path, scheme: ControlScheme, table: pa.Table) -> None:
    """What a hand-edited scheme.json can break that the rows' fingerprint does not cover (it
    fingerprints the rows, not the scheme): ``options.block_size`` must be the rows' length, and
    ``num_bins`` must cover every bin id in the rows."""
    import pyarrow.compute as pc

    scheme_file = d / SCHEME_FILE
    block_size = scheme.options.get("block_size")
    length = table.schema.field("bin_ids").type.list_size
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size != length:
        raise CorpusError(f"{scheme_file}: options.block_size must be the length the rows were packed to, "
                          f"{length}; got {block_size!r}. The scheme.json does not belong to these rows: preprocess "
                          f"the corpus again")
    top = pc.max(pc.list_flatten(table.column("bin_ids"))).as_py()
    if top is not None and top >= scheme.num_bins:
        raise CorpusError(f"{scheme_file}: the rows hold bin id {top} but num_bins is {scheme.num_bins}; the "
                          f"scheme.json does not belong to these rows: preprocess the corpus again")
