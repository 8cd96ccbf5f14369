"""Part batches -> token ids -> each document's control-token stream, cut into pieces (DESIGN §3).

Encoding: one tokenizer call per batch of parts (prompt, response, dialog turn), two batches in
hand at a time (:func:`encodings`), several short texts per tokenizer input where that gives the
same ids (:mod:`rcond.content_encoder`). A text that recurs within a batch (the prompt a pair's
two sides share, a templated prompt) is encoded once, and its ids are kept for later batches
too (:class:`RecurringTexts`, bounded); tokenization is a pure function of the text, so its ids
are simply reused. Content never encodes to a control or other special token, even with a
tokenizer that already has them (one saved with an earlier corpus or model): the text is
encoded with special-token strings read as plain text, so a literal ``<|rtg:1|>`` or ``</s>`` in
a review is trained as the characters it is; and never truncated or padded by settings the
tokenizer carries (:func:`rcond.content_encoder.content_as_is`).

Conditioning (:func:`condition`): a whole batch of parts becomes documents with a handful of
vectorised numpy operations (a :class:`~rcond.packing.Pool`): the mode token first, in ``on``
mode an RTG token before every part that carries a reward-to-go (a *marker*), ``eos`` last; a
seeded ``uncond_fraction`` of ``on`` records is emitted as ``off`` with no RTG token. Each token
gets a *target weight*: 1 for response / assistant tokens and for the closing ``eos`` after
them, 0 for prompt / user tokens (unless ``train_on_prompt``) and for control tokens. A document
longer than ``block_size`` is split into pieces, each later piece starting with the control
prefix ``mode [rtg-in-force]`` again (or truncated with ``truncate``). A piece in which no token
is trained (a piece of a long prompt, or all ``truncate`` left of a dialog before its first
assistant turn) is left out: it would fill rows and add nothing to the loss; an RTG token left
only in such pieces is not counted in its bin. Control tokens are
placeholder ids (an RTG token's id depends on its bin), and every token carries the index of the
marker in force instead of a bin; :class:`ConditionedStream` numbers the markers corpus-wide and
resolves both: the mode tokens' ids as soon as the control tokens are in the tokenizer, RTG
tokens and bins once the bin edges are fitted (pass 2).
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from .background import in_background, prefetched
from .content_encoder import ContentEncoder
from .packing import CorpusError, PackOptions, Pool, index_within_runs
from .sources import FIXED_BOTTOM, FIXED_TOP, PartBatch, SourceReader
from .tokens import ControlScheme

RTG_SLOT, ON_SLOT, OFF_SLOT = -1, -2, -3  # placeholder ids of the control tokens until resolved
CONTROL_PREFIX = 2  # mode token + RTG token
MAX_MARKERS = np.iinfo(np.int32).max  # markers are numbered corpus-wide in int32


IN_FLIGHT = 2  # batches the encoding stage has in hand at once
CUT_BATCH_BYTES = 1 << 20  # input read into one batch, about, where the encoder cuts long texts


def encodings(batches: Iterable[PartBatch], encoder: ContentEncoder,
              cache: "RecurringTexts | None" = None) -> Iterator[tuple[PartBatch, np.ndarray, np.ndarray]]:
    """Each PartBatch, in order, with the token ids of its texts (offsets [P+1] int64, flat ids [N]
    int32): text p is ``flat[offsets[p]:offsets[p+1]]``. One ``encoder`` call per batch on its
    distinct texts not kept in ``cache`` (:class:`Distinct`).

    :data:`IN_FLIGHT` batches are in hand at once, each encoded in a thread of its own (the
    encoder is thread-safe; the tokenizer releases the GIL). The encoder lets one tokenizer call
    run at a time, its encodings read and freed before the next starts (freeing a batch's
    encodings while the tokenizer's threads allocate the next one's cost 2-3x the CPU time,
    session 27 of benchmarks/PREPROCESS_NOTES.md); what overlaps the next call is the rest of a
    batch's Python side: its runs joined, its ids flattened and cut at the separators, its
    repeated texts spread. With one batch at a time the tokenizer's threads waited 2.5-3 ms
    for that after each batch of 1,000 short texts. Measured on 2 cores (interleaved runs against
    one batch at a time): the build 0.78x -> 0.81x the bare tokenizer's speed at 20k toy reviews
    without repeated texts, 0.80x -> 0.84x at 80k, 1.00x -> 1.02x on the 20k toy reviews; no
    change on corpora of two or three batches. The cache is read and filled here, in batch order,
    so what is sent is the same on every run: a batch is planned while the one before it is
    still being encoded, so a text that recurs within batch k is kept from batch k+2 on."""
    pending: collections.deque = collections.deque()  # (batch, plan, waiter for (offsets, flat, uoff, uflat))
    try:
        for b in batches:
            plan = Distinct(b.texts, cache)
            pending.append((b, plan, in_background(functools.partial(plan.encode, encoder))))
            if len(pending) == IN_FLIGHT:
                yield _finished(*pending.popleft(), cache)
        while pending:
            yield _finished(*pending.popleft(), cache)
    finally:  # stopped early: let the calls under way end, so the tokenizer is left as it was
        for _, _, waiter in pending:
            try:
                waiter()
            except BaseException:
                pass
        close = getattr(batches, "close", None)
        if close is not None:  # a reading thread (prefetched) stops now, not when the traceback is freed
            close()


def _finished(b: PartBatch, plan: "Distinct", waiter,
              cache: "RecurringTexts | None") -> tuple[PartBatch, np.ndarray, np.ndarray]:
    """A batch in hand, once its encoding has ended: its repeated texts kept, its ids handed on."""
    offsets, flat, uoff, uflat = waiter()
    plan.remember(uoff, uflat, cache)
    return b, offsets, flat


class RecurringTexts:
    """The token ids of texts that recurred within a batch, kept for the batches after it (a
    templated prompt, a system prompt, the prompt of many scored responses): such a text is then
    encoded about once per build instead of once per batch. Bounded, so memory stays flat: at most
    ``max_tokens`` ids are held, and the oldest entries leave first. A cache belongs to one
    tokenizer in one setting (a build's: special-token strings read as text)."""

    def __init__(self, max_tokens: int = 1 << 18):
        self.ids: dict[str, np.ndarray] = {}  # text -> its ids [n] int32, oldest first
        self.tokens, self.max_tokens = 0, max_tokens

    def keep(self, text: str, ids: np.ndarray) -> None:
        if len(ids) > self.max_tokens or text in self.ids:
            return
        while self.tokens + len(ids) > self.max_tokens:
            self.tokens -= len(self.ids.pop(next(iter(self.ids))))
        self.ids[text] = ids
        self.tokens += len(ids)


class Distinct:
    """A batch's P texts as U distinct ones, and which of those a cache already holds. Made and
    :meth:`remember`-ed in batch order (they read and fill the cache); :meth:`encode` only reads
    what was planned, so it can run in another thread meanwhile."""

    def __init__(self, texts: list[str], cache: "RecurringTexts | None" = None):
        index: dict[str, int] = {}
        self.inverse = np.fromiter((index.setdefault(t, len(index)) for t in texts), dtype=np.int64,
                                   count=len(texts))                                  # [P]
        self.distinct = list(index)                                                   # [U]
        self.kept = ([None] * len(self.distinct) if cache is None
                     else [cache.ids.get(t) for t in self.distinct])                  # [U] ids, or None
        self.count = np.bincount(self.inverse, minlength=len(self.distinct))          # [U] occurrences

    def encode(self, encoder: ContentEncoder) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(offsets [P+1], flat [N]) of every text, then (offsets [U+1], flat [M]) of the distinct
        ones: one encoder call on the distinct texts not kept (none if all are)."""
        kept = self.kept
        hits = [u for u, k in enumerate(kept) if k is not None]
        if not hits:
            uoff, uflat = _encoded(encoder, self.distinct)                            # [U+1], [M]
        else:
            missing = [u for u, k in enumerate(kept) if k is None]
            moff, mflat = (_encoded(encoder, [self.distinct[u] for u in missing]) if missing  # all kept: no call
                           else (np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.int32)))
            ulens = np.empty(len(kept), dtype=np.int64)                               # [U]
            ulens[missing] = np.diff(moff)
            ulens[hits] = [len(kept[u]) for u in hits]
            uoff = np.zeros(len(kept) + 1, dtype=np.int64)                            # [U+1]
            np.cumsum(ulens, out=uoff[1:])
            if not ulens[hits].any():  # the kept texts have no ids (each record's empty prompt, say)
                uflat = mflat
            else:
                uflat = np.empty(int(uoff[-1]), dtype=np.int32)                       # [M]
                for group, ids in ((missing, mflat), (hits, np.concatenate([kept[u] for u in hits]))):
                    lens = ulens[group]
                    uflat[np.repeat(uoff[group], lens) + index_within_runs(lens)] = ids
        if len(kept) == len(self.inverse):  # every text distinct, in first-seen order
            return uoff, uflat, uoff, uflat
        ulens = np.diff(uoff)                                                         # [U]
        lens = ulens[self.inverse]                                                    # [P]
        offsets = np.zeros(len(self.inverse) + 1, dtype=np.int64)                     # [P+1]
        np.cumsum(lens, out=offsets[1:])
        if (self.count[ulens > 0] == 1).all():
            return offsets, uflat, uoff, uflat  # only texts without ids repeat: the ids in first-seen order
        flat = uflat[np.repeat(uoff[:-1][self.inverse], lens) + index_within_runs(lens)]  # [N]
        return offsets, flat, uoff, uflat

    def remember(self, uoff: np.ndarray, uflat: np.ndarray, cache: "RecurringTexts | None") -> None:
        """Keep in ``cache`` the ids of each text that occurred more than once in the batch."""
        if cache is None or len(self.distinct) == len(self.inverse):
            return
        for u in np.flatnonzero(self.count > 1).tolist():
            if self.kept[u] is None:
                cache.keep(self.distinct[u], uflat[uoff[u]:uoff[u + 1]].copy())


def _encoded(encoder: ContentEncoder, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``encoder(texts)``; a tokenizer that raises on one of them (a WordLevel model whose unk
    token is not in its vocabulary raises on any unknown word) is a :class:`CorpusError` that shows
    the first text it fails on alone, found by encoding them one by one."""
    try:
        return encoder(texts)
    except (MemoryError, CorpusError):
        raise
    except Exception as e:
        for text in texts:
            try:
                encoder([text])
            except Exception as alone:
                shown = text if len(text) <= 200 else text[:200] + f"... ({len(text):,} characters)"
                raise CorpusError(f"the tokenizer cannot encode the text {shown!r}: {type(alone).__name__}: {alone}; "
                                  "fix the tokenizer (an unk token its vocabulary lacks, say), or leave the record "
                                  "out") from None
        raise e  # each text encodes alone: not the tokenizer's doing


def encode_distinct(texts: list[str], encoder: ContentEncoder,
                    cache: RecurringTexts | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ids of P ``texts`` (offsets [P+1] int64, flat ids [N] int32) from one encoder call on
    the distinct texts. With a ``cache``, a text found there is not sent, and a text that occurs
    more than once in ``texts`` joins the cache. One batch at a time: :func:`encodings` does this
    with two batches at the tokenizer."""
    plan = Distinct(texts, cache)
    offsets, flat, uoff, uflat = plan.encode(encoder)
    plan.remember(uoff, uflat, cache)
    return offsets, flat


def batches_for(reader: SourceReader, encoder: ContentEncoder, size: int) -> Iterator[PartBatch]:
    """``reader``'s batches as a build reads them for ``encoder``: ``size`` records at most, and
    about :data:`CUT_BATCH_BYTES` of input where the encoder cuts long texts (``BATCH_BYTES`` where
    it cannot). Read, encoded and conditioned in smaller steps, the first batch reaches the
    tokenizer sooner and the last one leaves less to do after the tokenizer's last call (on 2
    cores, against the bare tokenizer: the movie reviews 0.71x -> 0.78x, 100 book-length
    documents 1.02x -> 1.08x; HH pairs unchanged). A tokenizer whose texts are not cut keeps the
    larger batches: its book-length documents are its inputs, and a call needs as many inputs as
    there are cores."""
    return reader.batches(size, max_bytes=CUT_BATCH_BYTES if encoder.cuts else None)


def conditioned_batches(reader: SourceReader, tokenizer, stream: "ConditionedStream",
                        workers: int = 1) -> Iterator[tuple[PartBatch, Pool, int]]:
    """Each part batch of ``reader`` (:func:`batches_for` its encoder, ``stream.opts.encode_batch``
    records at most), in order, with its pool (markers numbered corpus-wide) and its content
    tokens. One worker: read in one thread, encode in another, condition here; more: worker
    processes encode and condition (:mod:`rcond.parallel`), with the same result."""
    encoder = ContentEncoder(tokenizer.backend_tokenizer)
    batches = batches_for(reader, encoder, stream.opts.encode_batch)
    if workers > 1:
        from .parallel import conditioned_in_workers

        yield from conditioned_in_workers(batches, tokenizer, stream, workers)
        return
    for parts, offsets, flat in prefetched(encodings(prefetched(batches), encoder, RecurringTexts())):
        yield parts, stream.pool(parts, offsets, flat), len(flat)


@dataclass
class Conditioned:
    """One part batch conditioned by :func:`condition`, its markers numbered from 0."""

    pool: Pool
    tokens: int  # content tokens: the tokenizer's output for the batch's parts
    marker_rtg: np.ndarray  # [m] float64 reward-to-go of each marker
    marker_fixed: np.ndarray  # [m] int8 FIXED_TOP / FIXED_BOTTOM / 0
    truncated: int  # tokens --truncate cut away
    cut_markers: np.ndarray  # [c] markers with no RTG token left: --truncate cut it, or its piece trains nothing
    untrained: np.ndarray  # [u] lengths of the pieces left out because no token in them is trained
    off_rewards: np.ndarray  # [o] float64 rewards of the batch's documents that carry no RTG token (off after the draw)
    off_cut: int  # rewards of such documents left out: --truncate cut where their RTG token would be, or all they train


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
    carries = ~np.isnan(rtg) | (fixed != 0)                                         # [P] an RTG token in on mode
    marker = carries & doc_on[doc_of]                                               # [P] RTG token emitted
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
    # each part's tokens (its control tokens, content, and eos if last) take the part's weight and
    # marker in force (a part's own RTG token is its marker); control tokens are then weighted 0
    tw = np.repeat(w, out_len)                                                      # [T]
    mk = np.repeat(force, out_len)                                                  # [T]
    mode_at = out_start[first]                                                      # [D]
    rtg_at = out_start[rtg_parts] + starts[rtg_parts]                               # [m]
    eos_at = out_start[last] + ins[last] + lens[last]                               # [D]
    content = np.ones(T, dtype=bool)                                                # [T] False at mode, RTG, eos
    content[mode_at] = content[rtg_at] = content[eos_at] = False
    ids = np.empty(T, dtype=np.int32)
    ids[content] = flat  # the content tokens, in order, into the places left
    ids[mode_at], tw[mode_at] = np.where(doc_on, ON_SLOT, OFF_SLOT), 0
    ids[rtg_at], tw[rtg_at] = RTG_SLOT, 0
    ids[eos_at] = eos_id
    doc_start = np.append(out_start[first], T)                                      # [D+1]
    (ids, tw, mk, start, length), piece_doc, truncated, cut_markers = _cut(ids, tw, mk, doc_start[:-1],
                                                                            np.diff(doc_start), doc_on, opts)
    lw = _next_weights(tw, start, length)
    keep = _trained(lw, start, length)                                              # [Q]
    start, length, untrained, missing = _trained_pieces(ids, mk, start, length, keep, len(rtg_parts), cut_markers)
    pool = Pool(ids, lw, mk, start, length, doc_on)
    off = ~np.isnan(rtg) & ~doc_on[doc_of]                                          # [P] rewards of off documents
    in_rows = np.zeros(len(first), dtype=bool)                                      # [D] some piece kept
    in_rows[piece_doc[keep]] = True
    kept = off & in_rows[doc_of]                                                    # [P]
    if opts.truncate:  # as a cut RTG token: a part whose RTG token would sit past the block is cut
        would = np.cumsum(carries) - carries                                        # [P] RTG tokens, conditioned,
        before = would - would[first][doc_of]                                       # [P] before each part's own
        kept &= out_start[:-1] + starts + before - out_start[first][doc_of] < opts.block_size
    return Conditioned(pool, len(flat), rtg[rtg_parts], fixed[rtg_parts], truncated, missing, untrained, rtg[kept],
                       int(np.count_nonzero(off & ~kept)))


def _next_weights(tw: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Target weights [T] -> loss weights [T]: each token gets the target weight of the token
    after it, and the last token of every piece gets 0 (a target never crosses a piece's end)."""
    lw = np.empty_like(tw)
    lw[:-1] = tw[1:]
    if len(lw):
        lw[-1] = 0
    lw[start + length - 1] = 0
    return lw


def _trained(lw: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """[Q] whether some token of each piece is trained (a nonzero loss weight): a piece of prompt or
    user text alone (cut from a long prompt, or all --truncate left of a document) adds nothing to
    the loss, only rows."""
    untrained = np.flatnonzero(lw == 0)                                              # [z] sorted positions
    return np.searchsorted(untrained, start + length) - np.searchsorted(untrained, start) < length


def _trained_pieces(ids: np.ndarray, mk: np.ndarray, start: np.ndarray, length: np.ndarray, keep: np.ndarray,
                    markers: int, cut_markers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The pieces [Q] to ``keep`` (:func:`_trained`). Returns their start and length, the lengths
    of the pieces left out, and the batch's markers with no RTG token left in any kept piece
    (``cut_markers``, those --truncate cut, when none is left out)."""
    if keep.all():
        return start, length, length[:0], cut_markers
    untrained, start, length = length[~keep], start[keep], length[keep]
    at = np.repeat(start, length) + index_within_runs(length)                       # [T'] tokens of kept pieces
    present = np.zeros(markers, dtype=bool)                                         # [m]
    present[mk[at[ids[at] == RTG_SLOT]]] = True
    return start, length, untrained, np.flatnonzero(~present)


def _cut(ids: np.ndarray, tw: np.ndarray, mk: np.ndarray, start: np.ndarray, length: np.ndarray, on: np.ndarray,
         opts: PackOptions) -> tuple[tuple[np.ndarray, ...], np.ndarray, int, np.ndarray]:
    """Documents ([T] token columns, each document ``[start, start + length)``) longer than
    block_size: truncate, or split so that each later piece re-opens with ``mode [RTG in force]``;
    the extra pieces' tokens go to the end of the columns, and the pieces [Q] stay in document
    order. Returns the pieces (ids, target weights, markers, start, length), each piece's document
    [Q], the tokens truncated, and the markers whose RTG token was truncated."""
    B = opts.block_size
    long = np.flatnonzero(length > B)
    none = np.zeros(0, dtype=np.int64)
    docs = np.arange(len(start))                                                    # [D]
    if not len(long):
        return (ids, tw, mk, start, length), docs, 0, none
    cut_length = np.minimum(length, B)
    if opts.truncate:
        cut = length[long] - B                                                        # [L] tokens dropped
        at = np.repeat(start[long] + B, cut) + index_within_runs(cut)                # [C] positions cut
        cut_markers = mk[at[ids[at] == RTG_SLOT]].astype(np.int64)                    # markers of cut RTG tokens
        if len(cut_markers):  # tokens before a dialog's first RTG token take its bin: none once it is cut away
            kept = np.repeat(start[long], B) + np.tile(np.arange(B), len(long))          # [L*B] kept of long docs
            kept = kept[np.isin(mk[kept], cut_markers)]
            mk[kept] = -1
        return (ids, tw, mk, start, cut_length), docs, int(cut.sum()), cut_markers
    at, of, T = [], [], len(ids)
    all_ids, all_tw, all_mk, starts, lens = [ids], [tw], [mk], [], []
    for d in long.tolist():
        a, b = int(start[d]), int(start[d] + length[d])
        cut_length[d] = _piece_end(0, B, b - a)
        for piece_ids, piece_tw, piece_mk in _split(ids[a:b], tw[a:b], mk[a:b], bool(on[d]), B, int(cut_length[d])):
            at.append(d + 1)
            of.append(d)
            starts.append(T)
            lens.append(len(piece_ids))
            T += len(piece_ids)
            all_ids.append(piece_ids), all_tw.append(piece_tw), all_mk.append(piece_mk)
    return ((np.concatenate(all_ids), np.concatenate(all_tw), np.concatenate(all_mk),
             np.insert(start, at, starts), np.insert(cut_length, at, lens)), np.insert(docs, at, of), 0, none)


def _piece_end(start: int, room: int, n: int) -> int:
    """Where a piece of a document of ``n`` tokens that starts at ``start`` with ``room`` tokens
    for them ends: as far as it fits, but one token early where what is left after it would be the
    eos alone (a next piece ``[mode rtg eos]`` would train the model to end a text right after its
    control prefix)."""
    end = min(start + room, n)
    return end - 1 if n - end == 1 and end - start > 1 else end


def _split(ids: np.ndarray, tw: np.ndarray, mk: np.ndarray, on: bool, B: int, first: int):
    """The pieces after the first (``ids[:first]``) of a document longer than ``B``, each ending
    at :func:`_piece_end`."""
    start = first
    while start < len(ids):
        if on:
            m = int(mk[start - 1])
            prefix_ids, prefix_mk = [ids[0], RTG_SLOT], [m, m]
            if ids[start] == RTG_SLOT:  # the piece opens with an RTG token of its own, in force from its mode token
                prefix_ids, prefix_mk = prefix_ids[:1], [int(mk[start])]
        else:
            prefix_ids, prefix_mk = [ids[0]], [-1]
        end = _piece_end(start, B - len(prefix_ids), len(ids))
        yield (np.concatenate([prefix_ids, ids[start:end]]).astype(np.int32),
               np.concatenate([np.zeros(len(prefix_ids)), tw[start:end]]).astype(np.float32),
               np.concatenate([prefix_mk, mk[start:end]]).astype(np.int32))
        start = end


class ConditionedStream:
    """Part batches -> each document's control-token stream -> pieces of at most ``block_size``
    (pass 1, with placeholders); placeholders -> ids, and markers -> bins once the scheme is fitted.

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
        self.untrained_pieces = self.untrained_tokens = 0  # pieces left out: no token in them is trained
        self.cut_markers: list[np.ndarray] = []  # markers with no RTG token left in the rows
        self.off_rewards: list[np.ndarray] = []  # per batch: rewards of documents without an RTG token
        self.off_cut = 0  # rewards of such documents that --truncate left out with them

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
        self.off_rewards.append(c.off_rewards)
        self.off_cut += c.off_cut
        if len(c.cut_markers):
            self.cut_markers.append(c.cut_markers + self.markers)
        self.truncated += c.truncated
        self.untrained_pieces += len(c.untrained)
        self.untrained_tokens += int(c.untrained.sum())
        self.markers += len(c.marker_rtg)
        return c.pool

    def pool(self, parts: PartBatch, offsets: np.ndarray, flat: np.ndarray) -> Pool:
        """:func:`condition` and :meth:`adopt` a batch in this process."""
        return self.adopt(condition(parts, offsets, flat, self.draw(parts), self.eos_id, self.opts))

    def fit_rewards(self) -> tuple[np.ndarray, int]:
        """What the bin edges are fitted on, before :meth:`bind`: the rewards of the documents
        without an RTG token (the unconditional draw) that the rows hold, and the reward-to-go of
        every marker whose RTG token the rows hold (not one ``--truncate`` cut, nor one left only in
        a piece that trains nothing); and how many rewards were left out so. When nothing is left
        to fit (every marker's was left out and no unconditional document's reward is in the rows),
        all markers are fitted (and none counts as left out): the edges then still follow the data."""
        off = np.concatenate(self.off_rewards) if self.off_rewards else np.zeros(0)
        rtg = np.concatenate(self.marker_rtg) if self.marker_rtg else np.zeros(0)  # [M]; NaN: an unscored side
        scored = ~np.isnan(rtg)
        kept = scored.copy()
        if self.cut_markers:
            kept[np.concatenate(self.cut_markers)] = False
        if not kept.any() and not len(off):
            kept = scored
        return np.concatenate([off, rtg[kept]]), self.off_cut + int(np.count_nonzero(scored & ~kept))

    # ------------------------------------------------------------------ pass 2
    def use_tokens(self, scheme: ControlScheme, tokenizer) -> None:
        """Take the control tokens' ids from ``tokenizer``, which holds ``scheme``'s tokens (of the
        scheme to be fitted: the ids depend on the number of bins alone). Until :meth:`bind`, only
        rows without markers can be resolved."""
        ids = scheme.token_ids(tokenizer)
        self.on_id, self.off_id = ids[scheme.on_token], ids[scheme.off_token]
        self.rtg_ids = np.array(scheme.rtg_ids(tokenizer), dtype=np.int32)                # [K]
        self.bin_of = np.full(1, -1, dtype=np.int16)  # [1] index -1 (no marker) -> bin -1

    def bind(self, scheme: ControlScheme) -> None:
        """Give every marker its bin under the fitted ``scheme`` (after :meth:`use_tokens`)."""
        K = scheme.num_bins
        if len(self.rtg_ids) != K:
            raise ValueError(f"ConditionedStream.bind: a scheme of {K} bins, the tokens of {len(self.rtg_ids)}")
        rtg = np.concatenate(self.marker_rtg) if self.marker_rtg else np.zeros(0)        # [M]
        fixed = np.concatenate(self.marker_fixed) if self.marker_fixed else np.zeros(0, np.int8)
        b = np.searchsorted(np.asarray(scheme.edges, dtype=np.float64), np.nan_to_num(rtg), side="right")
        b = np.where(fixed == FIXED_TOP, K - 1, np.where(fixed == FIXED_BOTTOM, 0, b))
        self.bin_of = np.append(b, -1).astype(np.int16)  # [M+1] bin of each marker; index -1 (no marker) -> -1
        kept = np.ones(len(b), dtype=bool)
        if self.cut_markers:
            kept[np.concatenate(self.cut_markers)] = False
        self.bin_counts = np.bincount(b[kept], minlength=K)  # markers per bin, less those --truncate cut
        self.marker_rtg, self.marker_fixed, self.off_rewards = [], [], []

    def resolve(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pass 1's rows -> final rows: real control-token ids (written into ``rows["input_ids"]``
        in place), and ``bin_ids`` from the markers. Rows without markers once :meth:`use_tokens`
        has run, any rows once :meth:`bind` has."""
        ids, mk = rows["input_ids"], rows["marker"]                                       # [n]
        bins = self.bin_of[mk]                                                            # [n]; marker -1 -> bin -1
        at = np.flatnonzero(ids < 0)                                                      # control tokens
        slot = ids[at]
        ids[at] = np.where(slot == RTG_SLOT, self.rtg_ids[bins[at]], np.where(slot == ON_SLOT, self.on_id, self.off_id))
        return {"input_ids": ids, "position_ids": rows["position_ids"], "segment_ids": rows["segment_ids"],
                "loss_weight": rows["loss_weight"], "bin_ids": bins}


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
