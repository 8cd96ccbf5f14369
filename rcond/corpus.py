"""Records -> conditioned token streams -> packed rows on disk (DESIGN §3–§4).

Two streaming passes, so memory stays flat as the corpus grows:

1. **Encode.** The reader's :class:`~rcond.sources.PartBatch` es (about 1,000 records each,
   read and parsed one batch ahead in a background thread) are tokenized with one
   ``encode_batch_fast`` call each into *parts* (prompt, response, dialog turn): the part's
   token ids, whether it is trained, and the reward-to-go whose RTG token will precede it.
   Parts are appended to a temporary Arrow file; only the RTG values are kept in memory, to fit
   the bin edges.
2. **Pack.** A whole batch of parts becomes documents with a handful of vectorised numpy
   operations (a :class:`Pool`): the mode token first, in ``on`` mode an RTG token (the bin of
   its reward-to-go) before every part that carries one, ``eos`` last; a seeded
   ``uncond_fraction`` of ``on`` records is emitted as ``off`` with no RTG token. Each token
   gets a *target weight*: 1 for response / assistant tokens and for the closing ``eos`` after
   them, 0 for prompt / user tokens (unless ``train_on_prompt``) and for control tokens. A
   document longer than ``block_size`` is split into pieces, each later piece starting with the
   control prefix ``mode [rtg-in-force]`` again (or truncated with ``truncate``). Pieces are
   packed with *streaming best fit*: each piece goes into the open row with the least free
   space that still fits it; when more than ``open_rows`` rows are open the fullest is written
   out. Unfilled slots are padding (``eos``, segment −1, weight 0). Only the fitting looks at
   one piece at a time, and only at its length; the rows that leave are assembled from the
   pools' tokens with a few gathers.

Python's cyclic garbage collector is paused for the whole build (:func:`collector_paused`).

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
import itertools
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import numpy as np
import pyarrow as pa

from .atomic import atomic_dir
from .sources import FIXED_BOTTOM, FIXED_TOP, PartBatch, SourceReader
from .tokens import ControlScheme, SchemeError

ROWS_FILE = "rows.arrow"
TOKENIZER_DIR = "tokenizer"
COLUMNS = ("input_ids", "position_ids", "segment_ids", "loss_weight", "bin_ids")
ROWS_PER_TABLE = 512  # rows written to the Arrow file at a time
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
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[eos],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos, pad_token=eos)


def resolve_tokenizer(spec: str, reader: SourceReader):
    """``PATH_OR_ID`` loads a tokenizer; ``train:VOCAB`` trains a byte-level BPE on the inputs."""
    if spec.startswith("train:"):
        try:
            vocab = int(spec.split(":", 1)[1])
        except ValueError:
            raise CorpusError(f"--tokenizer {spec!r}: expected train:VOCAB_SIZE, e.g. train:4096") from None
        if vocab < 260:
            raise CorpusError(f"--tokenizer {spec!r}: a byte-level BPE needs a vocabulary of at least 260")
        return train_tokenizer(reader.texts(), vocab)
    from .modeling import load_tokenizer

    return load_tokenizer(spec)


# ---------------------------------------------------------------------------- pass 1: encode
# One row per record *part* (prompt, response, turn): its tokens and what the part needs later.
PART_SCHEMA = pa.schema([
    ("ids", pa.list_(pa.int32())),
    ("trainable", pa.bool_()),
    ("rtg", pa.float64()),        # reward-to-go whose RTG token precedes the part; NaN = none
    ("fixed", pa.int8()),         # FIXED_TOP / FIXED_BOTTOM for unscored pairs, else 0
    ("doc_start", pa.bool_()),    # first part of its document
    ("on", pa.bool_()),           # the record's mode before the unconditional draw
])


def _encode_flat(encode, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """texts -> (offsets [P+1] int32, flat ids [N] int32)."""
    ids = [e.ids for e in encode(texts, add_special_tokens=False)]
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, ids), dtype=np.int32, count=len(ids)), out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(offsets[-1]))
    return offsets, flat


def encode_parts(batches: Iterable[PartBatch], tokenizer) -> Iterator[pa.RecordBatch]:
    """Each PartBatch -> one PART_SCHEMA batch, encoded with one tokenizer call."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    for b in batches:
        offsets, flat = _encode_flat(encode, b.texts)
        yield pa.record_batch([pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
                               pa.array(b.trainable, pa.bool_()), pa.array(b.rtg, pa.float64()),
                               pa.array(b.fixed, pa.int8()), pa.array(b.doc_start), pa.array(b.on)],
                              schema=PART_SCHEMA)


# ---------------------------------------------------------------------------- pass 2: pack
@dataclass
class Pool:
    """The token streams of a batch of documents, cut into pieces: piece q is
    ``[start[q], start[q] + length[q])`` of the flat columns."""

    ids: np.ndarray  # [T] int32
    tw: np.ndarray  # [T] float32 target weight of each token
    bins: np.ndarray  # [T] int16 bin in force
    start: np.ndarray  # [Q] int64
    length: np.ndarray  # [Q] int64
    on: np.ndarray  # [D] bool: each document's mode after the unconditional draw


class ConditionedStream:
    """Part batches -> each document's control-token stream -> pieces of at most ``block_size``."""

    def __init__(self, scheme: ControlScheme, tokenizer, opts: PackOptions):
        ids = scheme.token_ids(tokenizer)
        self.on_id, self.off_id, self.eos_id = ids[scheme.on_token], ids[scheme.off_token], tokenizer.eos_token_id
        self.rtg_ids = np.array(scheme.rtg_ids(tokenizer), dtype=np.int32)
        self.edges = np.asarray(scheme.edges, dtype=np.float64)
        self.scheme, self.opts = scheme, opts
        self.rng = np.random.default_rng(opts.seed)
        self.bin_counts = np.zeros(scheme.num_bins, dtype=np.int64)
        self.truncated = 0

    def pool(self, batch: pa.RecordBatch) -> Pool:
        """Build the streams of every document in a part batch at once, then cut the long ones.

        A document is ``mode [rtg] part [rtg] part ... eos``: the mode token first, an RTG token
        before each part that carries a reward (in ``on`` mode), ``eos`` last.
        """
        col = batch.column("ids")
        offsets = col.offsets.to_numpy().astype(np.int64)                          # [P+1]
        flat = col.values.to_numpy()                                                # [N]
        lens = np.diff(offsets)                                                     # [P]
        trainable = batch.column("trainable").to_numpy(zero_copy_only=False)        # [P]
        rtg = batch.column("rtg").to_numpy()                                        # [P]
        fixed = batch.column("fixed").to_numpy()                                    # [P]
        starts = batch.column("doc_start").to_numpy(zero_copy_only=False)           # [P]
        on = batch.column("on").to_numpy(zero_copy_only=False)                      # [P]
        P, K = len(lens), self.scheme.num_bins
        doc_of = np.cumsum(starts) - 1                                              # [P] document index
        first = np.flatnonzero(starts)                                              # [D] first part of each doc
        D = len(first)
        last = np.append(first[1:], P) - 1                                          # [D] last part of each doc
        doc_on = on[first] & (self.rng.random(D) >= self.opts.uncond_fraction)      # [D]
        marker = (~np.isnan(rtg) | (fixed != 0)) & doc_on[doc_of]                   # [P] RTG token emitted
        part_bin = np.searchsorted(self.edges, np.nan_to_num(rtg), side="right")    # [P]
        part_bin = np.where(fixed == FIXED_TOP, K - 1, np.where(fixed == FIXED_BOTTOM, 0, part_bin))
        part_bin = np.where(marker, part_bin, -1)
        self.bin_counts += np.bincount(part_bin[marker], minlength=K)
        # bin in force: the latest marker's bin in the document, or the first marker's before it
        force = _bin_in_force(part_bin, marker, first, doc_of)                      # [P]
        ins = starts.astype(np.int64) + marker                                      # [P] tokens before content
        is_last = np.zeros(P, dtype=bool)
        is_last[last] = True
        out_len = ins + lens + is_last                                              # [P]
        out_start = np.zeros(P + 1, dtype=np.int64)
        np.cumsum(out_len, out=out_start[1:])
        T = int(out_start[-1])
        w = (trainable | self.opts.train_on_prompt).astype(np.float32)             # [P]
        ids = np.empty(T, dtype=np.int32)
        tw = np.zeros(T, dtype=np.float32)
        bins = np.empty(T, dtype=np.int16)
        dst = np.arange(len(flat)) + np.repeat(out_start[:-1] + ins - offsets[:-1], lens)  # [N]
        ids[dst], tw[dst], bins[dst] = flat, np.repeat(w, lens), np.repeat(force, lens)
        mode_at = out_start[first]                                                  # [D]
        ids[mode_at] = np.where(doc_on, self.on_id, self.off_id)
        bins[mode_at] = force[first]
        rtg_parts = np.flatnonzero(marker)
        rtg_at = out_start[rtg_parts] + starts[rtg_parts]
        ids[rtg_at], bins[rtg_at] = self.rtg_ids[part_bin[rtg_parts]], part_bin[rtg_parts]
        eos_at = out_start[last] + ins[last] + lens[last]
        ids[eos_at], tw[eos_at], bins[eos_at] = self.eos_id, w[last], force[last]
        doc_start = np.append(out_start[first], T)                                  # [D+1]
        return self._cut(Pool(ids, tw, bins, doc_start[:-1], np.diff(doc_start), doc_on))

    def _cut(self, pool: Pool) -> Pool:
        """Documents longer than block_size: truncate, or split so that each later piece
        re-opens with ``mode [RTG in force]``; the extra pieces go to the end of the pool."""
        B = self.opts.block_size
        long = np.flatnonzero(pool.length > B)
        if not len(long):
            return pool
        length = np.minimum(pool.length, B)
        if self.opts.truncate:
            self.truncated += int((pool.length[long] - B).sum())
            return Pool(pool.ids, pool.tw, pool.bins, pool.start, length, pool.on)
        at, T = [], len(pool.ids)
        ids, tw, bins, starts, lens = [pool.ids], [pool.tw], [pool.bins], [], []
        for d in long.tolist():
            a, b = int(pool.start[d]), int(pool.start[d] + pool.length[d])
            for piece_ids, piece_tw, piece_bins in self._split(pool.ids[a:b], pool.tw[a:b], pool.bins[a:b],
                                                                bool(pool.on[d])):
                at.append(d + 1)
                starts.append(T)
                lens.append(len(piece_ids))
                T += len(piece_ids)
                ids.append(piece_ids), tw.append(piece_tw), bins.append(piece_bins)
        return Pool(np.concatenate(ids), np.concatenate(tw), np.concatenate(bins),
                    np.insert(pool.start, at, starts), np.insert(length, at, lens), pool.on)

    def _split(self, ids: np.ndarray, tw: np.ndarray, bins: np.ndarray, on: bool):
        """The pieces after the first of a document longer than block_size."""
        B = self.opts.block_size
        start = B
        is_rtg = np.isin(ids, self.rtg_ids)
        while start < len(ids):
            if on:
                b = int(bins[start - 1])
                prefix_ids, prefix_bins = [ids[0], self.rtg_ids[b]], [b, b]
                if is_rtg[start]:  # the piece opens with an RTG token of its own
                    prefix_ids, prefix_bins = prefix_ids[:1], prefix_bins[:1]
            else:
                prefix_ids, prefix_bins = [ids[0]], [-1]
            end = min(start + B - len(prefix_ids), len(ids))
            yield (np.concatenate([prefix_ids, ids[start:end]]).astype(np.int32),
                   np.concatenate([np.zeros(len(prefix_ids)), tw[start:end]]).astype(np.float32),
                   np.concatenate([prefix_bins, bins[start:end]]).astype(np.int16))
            start = end


def _bin_in_force(part_bin: np.ndarray, marker: np.ndarray, first: np.ndarray, doc_of: np.ndarray) -> np.ndarray:
    """[P] per part: the bin of the latest marker at or before it in its document; parts before a
    document's first marker take the first marker's bin; documents without markers get -1."""
    P = len(part_bin)
    idx = np.where(marker, np.arange(P), -1)
    latest = np.maximum.accumulate(idx)                                             # [P] last marker so far
    latest = np.where(latest >= first[doc_of], latest, -1)                          # not from an earlier doc
    nxt = np.where(marker, np.arange(P), P)
    upcoming = np.minimum.accumulate(nxt[::-1])[::-1]                               # [P] next marker ahead
    doc_end = np.append(first[1:], P)[doc_of]
    upcoming = np.where(upcoming < doc_end, upcoming, -1)
    pick = np.where(latest >= 0, latest, upcoming)
    return np.where(pick >= 0, part_bin[np.maximum(pick, 0)], -1).astype(np.int16)


class BestFitPacker:
    """Streaming best-fit bin packing of pieces into rows of ``block_size`` tokens.

    Each piece goes into the open row with the least free space that still fits it (a new row if
    none does); a row leaves when full, or when more than ``open_rows`` rows are open (the
    fullest leaves). Only lengths are handled one piece at a time; the rows that leave are
    assembled from their pools' tokens at once (:meth:`_assemble`).
    """

    def __init__(self, block_size: int, pad_id: int, open_rows: int):
        self.B, self.pad_id, self.max_open = block_size, pad_id, open_rows
        self.free: list[tuple[int, int]] = []  # sorted (free slots, row key)
        self.rows: dict[int, list[tuple[int, int, int]]] = {}  # row key -> its (pool id, piece, length) in order
        self.next_key = 0
        self.pools: dict[int, Pool] = {}
        self.live: dict[int, int] = {}  # pool id -> its pieces not yet written
        self.next_pool = 0

    def add(self, pool: Pool) -> dict | None:
        """Place every piece of ``pool``; the rows that left, as ``{column: [R, B] array}``."""
        pid = self.next_pool
        self.next_pool += 1
        self.pools[pid], self.live[pid] = pool, len(pool.length)
        done: list[list[tuple[int, int, int]]] = []
        free, rows, B = self.free, self.rows, self.B
        for q, n in enumerate(pool.length.tolist()):
            i = bisect.bisect_left(free, (n, -1))
            if i < len(free):
                space, key = free.pop(i)
            else:
                space, key = B, self.next_key
                self.next_key += 1
                rows[key] = []
            rows[key].append((pid, q, n))
            space -= n
            if space == 0:
                done.append(rows.pop(key))
                continue
            bisect.insort(free, (space, key))
            if len(free) > self.max_open:
                _, fullest = free.pop(0)
                done.append(rows.pop(fullest))
        return self._assemble(done)

    def flush(self) -> dict | None:
        done = [self.rows.pop(key) for _, key in sorted(self.free, key=lambda x: x[1])]
        self.free = []
        return self._assemble(done)

    def _assemble(self, done: list[list[tuple[int, int, int]]]) -> dict | None:
        """Rows (lists of (pool id, piece, length)) -> padded row arrays; drops pools no row still uses."""
        if not done:
            return None
        R, B = len(done), self.B
        counts = np.fromiter(map(len, done), dtype=np.int64, count=R)               # [R] pieces per row
        pool_of, piece, length = (np.array(c, dtype=np.int64) for c in zip(*itertools.chain.from_iterable(done)))  # [M]
        row = np.repeat(np.arange(R), counts)                                         # [M]
        first = np.cumsum(counts) - counts                                            # [R] first piece of each row
        seg = np.arange(len(piece)) - first[row]                                      # [M] segment within its row
        end = np.cumsum(length)                                                       # [M]
        offset = end - length - (end - length)[first][row]                            # [M] where it sits in the row
        fill = np.bincount(row, weights=length, minlength=R).astype(np.int64)         # [R] tokens used
        ids = np.full(R * B, self.pad_id, np.int32)
        pos = (np.arange(B)[None, :] - fill[:, None]).reshape(-1).astype(np.int32)   # padding runs from 0
        seg_ids = np.full(R * B, -1, np.int32)
        lw = np.zeros(R * B, np.float32)
        bins = np.full(R * B, -1, np.int16)
        for p in np.unique(pool_of).tolist():  # the tokens of each pool's pieces, gathered in one go
            pool, sel = self.pools[p], pool_of == p                                   # sel [M]
            n = length[sel]                                                           # [m]
            k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)              # [s] index within its piece
            dst = np.repeat(row[sel] * B + offset[sel], n) + k                        # [s] into the [R*B] rows
            src = np.repeat(pool.start[piece[sel]], n) + k                            # [s] into the pool
            ids[dst], bins[dst], pos[dst], seg_ids[dst] = pool.ids[src], pool.bins[src], k, np.repeat(seg[sel], n)
            nxt = pool.tw[np.minimum(src + 1, len(pool.tw) - 1)]                       # [s] target weight of the next token
            nxt[k == np.repeat(n - 1, n)] = 0                                          # no target across a piece end
            lw[dst] = nxt
            self.live[p] -= len(n)
            if not self.live[p]:
                del self.pools[p], self.live[p]
        shape = (R, B)
        return {"input_ids": ids.reshape(shape), "position_ids": pos.reshape(shape),
                "segment_ids": seg_ids.reshape(shape), "loss_weight": lw.reshape(shape), "bin_ids": bins.reshape(shape)}


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
    """{column: [R, B] array} -> an Arrow table of fixed-size lists."""
    return pa.table({name: pa.FixedSizeListArray.from_arrays(pa.array(rows[name].reshape(-1)), block_size)
                     for name in COLUMNS})


# ---------------------------------------------------------------------------- the builder
CONTROL_PREFIX = 2  # mode token + RTG token


def check_options(opts: PackOptions) -> None:
    """Reject options that cannot work before any input is read."""
    if opts.block_size < CONTROL_PREFIX + 2:
        raise CorpusError(f"--block-size {opts.block_size} is smaller than a control prefix ({CONTROL_PREFIX} "
                          f"tokens: mode + RTG) plus two tokens; use at least {CONTROL_PREFIX + 2}")
    if not 0.0 <= opts.uncond_fraction <= 1.0:
        raise CorpusError(f"--uncond-fraction must be in [0, 1], got {opts.uncond_fraction}")


def prefetched(items: Iterable[Item], depth: int = 2) -> Iterator[Item]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead of the consumer.

    Reading and parsing the next batch (Arrow's JSON reader releases the GIL) then overlaps with
    encoding this one (so does the tokenizer). An exception in the producer is raised here; when
    the consumer stops early (an error, Ctrl-C), the producer stops at its next item.
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
        worker.join()


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


def build(reader: SourceReader, out: str | Path, tokenizer, *, num_bins: int = 10, binning: str = "quantile",
          opts: PackOptions | None = None, overwrite: bool = False, progress: bool = True) -> tuple[ControlScheme, Summary]:
    """Read, encode, fit bins, pack and write a corpus directory atomically."""
    from datasets.arrow_writer import ArrowWriter
    from .modeling import tokenizer_fingerprint

    opts = opts or PackOptions()
    check_options(opts)
    summary = Summary()
    t0 = time.perf_counter()
    with atomic_dir(out, overwrite=overwrite) as tmp, collector_paused():
        # ---- pass 1: records -> documents (temp Arrow) + RTG values
        values: list[np.ndarray] = []
        doc_path = tmp / "parts.arrow"
        bar = _progress(desc="encode", unit="rec", enabled=progress)
        with pa.OSFile(str(doc_path), "wb") as sink, pa.ipc.new_stream(sink, PART_SCHEMA) as writer:
            for batch in encode_parts(prefetched(reader.batches(opts.encode_batch)), tokenizer):
                rtg = batch.column("rtg").to_numpy()
                values.append(rtg[~np.isnan(rtg)])
                n_docs = int(np.count_nonzero(batch.column("doc_start").to_numpy(zero_copy_only=False)))
                summary.content_tokens += len(batch.column("ids").values) + n_docs  # + one eos each
                summary.documents += n_docs
                writer.write_batch(batch)
                bar.update(n_docs)
                bar.set_postfix(tokens=summary.content_tokens)
        bar.close()
        summary.records = summary.documents
        summary.skipped, summary.skipped_examples = reader.skipped.count, list(reader.skipped.examples)
        if summary.documents == 0:
            raise CorpusError("no records were read" + (f" ({summary.skipped} skipped as bad)" if summary.skipped else ""))
        scheme = _fit_scheme(np.concatenate(values).tolist() if values else [], num_bins, binning, reader, opts)
        scheme.add_to_tokenizer(tokenizer)
        # ---- pass 2: documents -> conditioned pieces -> packed rows
        stream = ConditionedStream(scheme, tokenizer, opts)
        packer = BestFitPacker(opts.block_size, tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                               else tokenizer.eos_token_id, opts.open_rows)
        rows_path = tmp / ROWS_FILE
        writer = ArrowWriter(features=_features(opts.block_size), path=str(rows_path))
        pending: list[dict] = []

        def write(rows: dict | None, final: bool = False) -> None:
            """Rows to the file in tables of ROWS_PER_TABLE rows; ``final``: all that is left."""
            if rows is not None:
                pending.append(rows)
                summary.rows += len(rows["input_ids"])
                summary.tokens += int(np.count_nonzero(rows["segment_ids"] >= 0))
                summary.trained_tokens += float(rows["loss_weight"].sum(dtype=np.float64))
            n = sum(len(r["input_ids"]) for r in pending)
            if n == 0 or (n < ROWS_PER_TABLE and not final):
                return
            table = {k: np.concatenate([r[k] for r in pending]) for k in COLUMNS}
            pending.clear()
            if final:
                writer.write_table(_rows_table(table, opts.block_size))
                return
            full = n // ROWS_PER_TABLE * ROWS_PER_TABLE
            for i in range(0, full, ROWS_PER_TABLE):
                writer.write_table(_rows_table({k: v[i:i + ROWS_PER_TABLE] for k, v in table.items()}, opts.block_size))
            if full < n:
                pending.append({k: v[full:] for k, v in table.items()})

        bar = _progress(total=summary.documents, desc="pack", unit="doc", enabled=progress)
        with pa.memory_map(str(doc_path)) as src:
            for batch in pa.ipc.open_stream(src):
                pool = stream.pool(batch)
                summary.on_docs += int(np.count_nonzero(pool.on))
                summary.off_docs += int(len(pool.on) - np.count_nonzero(pool.on))
                summary.pieces += len(pool.length)
                write(packer.add(pool))
                bar.update(len(pool.on))
        write(packer.flush(), final=True)
        writer.finalize()
        writer.close()
        bar.close()
        doc_path.unlink()
        summary.truncated_tokens = stream.truncated
        scheme.counts = stream.bin_counts.tolist()
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        scheme.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
        scheme.options.update(rows=summary.rows, tokens=summary.tokens, rows_sha256=_sha256(rows_path))
        summary.seconds = time.perf_counter() - t0
        scheme.save(tmp)  # last: its presence marks a complete corpus
    return scheme, summary


def _fit_scheme(values: list[float], num_bins: int, binning: str, reader: SourceReader, opts: PackOptions) -> ControlScheme:
    from .sources import fingerprint

    if binning.startswith("edges:") or values:
        scheme = ControlScheme.fit(values, num_bins=num_bins, binning=binning)
    else:  # unscored pairs (chosen = +1, rejected = -1) or only off documents: edges span [-1, 1]
        scheme = ControlScheme.fit([-1.0, 1.0], num_bins=num_bins, binning="uniform")
    scheme.gamma = reader.gamma
    scheme.uncond_fraction = opts.uncond_fraction
    scheme.source_fingerprints = {spec: fingerprint(spec) for spec in reader.inputs}
    scheme.options = {"format": reader.format, "block_size": opts.block_size, "train_on_prompt": opts.train_on_prompt,
                      "truncate": opts.truncate, "seed": opts.seed,
                      "scorer": getattr(reader.scorer, "name", None) if reader.scorer else None}
    return scheme


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------- loading
def load(directory: str | Path, *, verify: bool = True):
    """Open a corpus: returns ``(dataset, scheme, tokenizer)``; checks it is complete and unaltered."""
    from datasets import Dataset
    from .modeling import load_tokenizer, tokenizer_fingerprint

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
    if verify and _sha256(rows) != scheme.options.get("rows_sha256"):
        raise CorpusError(f"{rows}: fingerprint mismatch — the rows changed after preprocessing; re-run rcond preprocess")
    tokenizer = load_tokenizer(str(d / TOKENIZER_DIR))
    if tokenizer_fingerprint(tokenizer) != scheme.tokenizer_fingerprint:
        raise CorpusError(f"{d / TOKENIZER_DIR}: tokenizer fingerprint does not match scheme.json")
    dataset = Dataset.from_file(str(rows))
    return dataset, scheme, tokenizer
