"""Records -> conditioned token streams -> packed rows on disk (DESIGN §3–§4).

Two streaming passes, so memory stays flat as the corpus grows:

1. **Encode.** Records are tokenized in batches (one ``encode_batch`` call per batch) into
   documents: the content tokens, a per-token *target weight* (1 for response / assistant
   tokens and the closing ``eos``, 0 for prompt / user tokens unless ``train_on_prompt``), and
   markers ``(position, reward-to-go)`` where an RTG token will go. Documents are appended to a
   temporary Arrow file; only the RTG values are kept in memory, to fit the bin edges.
2. **Pack.** Each document gets its mode token and, in ``on`` mode, an RTG token per marker
   (the bin of its reward-to-go); a seeded ``uncond_fraction`` of ``on`` records is emitted as
   ``off`` with no RTG token. A document longer than ``block_size`` is split into pieces, each
   later piece starting with the control prefix ``mode [rtg-in-force]`` again (or truncated with
   ``truncate``). Pieces are packed with *streaming best fit*: each piece goes into the open row
   with the least free space that still fits it; when more than ``open_rows`` rows are open the
   fullest is written out. Unfilled slots are padding (``eos``, segment −1, weight 0).

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
import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from .atomic import atomic_dir
from .sources import Record, SourceReader
from .tokens import ControlScheme, SchemeError

ROWS_FILE = "rows.arrow"
TOKENIZER_DIR = "tokenizer"
COLUMNS = ("input_ids", "position_ids", "segment_ids", "loss_weight", "bin_ids")
FIXED_TOP, FIXED_BOTTOM = 1, -1


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
DOC_SCHEMA = pa.schema([
    ("ids", pa.list_(pa.int32())),
    ("tw", pa.list_(pa.float32())),
    ("marker_pos", pa.list_(pa.int32())),
    ("marker_val", pa.list_(pa.float64())),
    ("marker_fixed", pa.list_(pa.int8())),
    ("on", pa.bool_()),
])


def _encode_fn(tokenizer):
    backend = tokenizer.backend_tokenizer
    fast = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
    return lambda texts: [e.ids for e in fast(texts, add_special_tokens=False)]


def encode_documents(records: Iterable[Record], tokenizer, opts: PackOptions) -> Iterator[dict]:
    """Batches of records -> column dicts of documents (DOC_SCHEMA)."""
    encode = _encode_fn(tokenizer)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CorpusError("the tokenizer has no eos token; every document must end with one")
    batch: list[Record] = []

    def flush(recs: list[Record]) -> dict:
        texts = [p.text for r in recs for p in r.parts]
        encoded = encode(texts)
        cols = {k: [] for k in DOC_SCHEMA.names}
        j = 0
        for r in recs:
            ids: list[int] = []
            tw: list[float] = []
            pos, val, fixed = [], [], []
            for p in r.parts:
                if p.rtg is not None or p.fixed_bin is not None:
                    pos.append(len(ids))
                    val.append(math.nan if p.fixed_bin else p.rtg)
                    fixed.append(0 if not p.fixed_bin else (FIXED_TOP if p.fixed_bin == "top" else FIXED_BOTTOM))
                toks = encoded[j]
                j += 1
                ids.extend(toks)
                w = 1.0 if (p.trainable or opts.train_on_prompt) else 0.0
                tw.extend([w] * len(toks))
            ids.append(eos)
            tw.append(1.0 if (r.parts[-1].trainable or opts.train_on_prompt) else 0.0)
            cols["ids"].append(ids)
            cols["tw"].append(tw)
            cols["marker_pos"].append(pos)
            cols["marker_val"].append(val)
            cols["marker_fixed"].append(fixed)
            cols["on"].append(r.mode == "on")
        return cols

    for rec in records:
        batch.append(rec)
        if len(batch) >= opts.encode_batch:
            yield flush(batch)
            batch = []
    if batch:
        yield flush(batch)


# ---------------------------------------------------------------------------- pass 2: pack
@dataclass
class Piece:
    ids: np.ndarray  # [L] int32
    tw: np.ndarray  # [L] float32 target weight of each token
    bins: np.ndarray  # [L] int16


class ConditionedStream:
    """One document -> its control-token stream -> pieces of at most ``block_size`` tokens."""

    def __init__(self, scheme: ControlScheme, tokenizer, opts: PackOptions):
        ids = scheme.token_ids(tokenizer)
        self.on_id, self.off_id = ids[scheme.on_token], ids[scheme.off_token]
        self.rtg_ids = np.array(scheme.rtg_ids(tokenizer), dtype=np.int32)
        self.scheme, self.opts = scheme, opts
        self.rng = random.Random(opts.seed)
        self.bin_counts = [0] * scheme.num_bins
        self.truncated = 0

    def bin_of(self, value: float, fixed: int) -> int:
        if fixed == FIXED_TOP:
            return self.scheme.num_bins - 1
        if fixed == FIXED_BOTTOM:
            return 0
        return self.scheme.bin_of(value)

    def stream(self, ids, tw, marker_pos, marker_val, marker_fixed, on: bool) -> tuple[Piece, bool]:
        """Build the full conditioned stream of one document; returns it and its final mode."""
        if on and self.rng.random() < self.opts.uncond_fraction:
            on = False
        if not on or len(marker_pos) == 0:
            return Piece(np.concatenate([[self.off_id if not on else self.on_id], ids]).astype(np.int32),
                         np.concatenate([[0.0], tw]).astype(np.float32),
                         np.full(len(ids) + 1, -1, np.int16)), on
        bins = [self.bin_of(v, f) for v, f in zip(marker_val, marker_fixed)]
        for b in bins:
            self.bin_counts[b] += 1
        n = len(ids) + 1 + len(bins)
        out_ids = np.empty(n, np.int32)
        out_tw = np.zeros(n, np.float32)
        out_bins = np.empty(n, np.int16)
        out_ids[0], out_bins[0] = self.on_id, bins[0]
        src, dst = 0, 1
        for k, (p, b) in enumerate(zip(marker_pos, bins)):
            m = p - src  # content tokens before this marker, governed by the previous bin
            out_ids[dst:dst + m], out_tw[dst:dst + m] = ids[src:p], tw[src:p]
            out_bins[dst:dst + m] = bins[k - 1] if k else b
            dst += m
            out_ids[dst], out_bins[dst] = self.rtg_ids[b], b
            dst += 1
            src = p
        m = len(ids) - src
        out_ids[dst:], out_tw[dst:], out_bins[dst:] = ids[src:], tw[src:], bins[-1]
        return Piece(out_ids, out_tw, out_bins), on

    def pieces(self, doc: Piece, on: bool) -> list[Piece]:
        """Split a stream longer than block_size; each later piece re-opens with mode [+ RTG in force]."""
        B = self.opts.block_size
        if len(doc.ids) <= B:
            return [doc]
        if self.opts.truncate:
            self.truncated += len(doc.ids) - B
            return [Piece(doc.ids[:B], doc.tw[:B], doc.bins[:B])]
        out = [Piece(doc.ids[:B], doc.tw[:B], doc.bins[:B])]
        start = B
        is_rtg = np.isin(doc.ids, self.rtg_ids)
        while start < len(doc.ids):
            if on:
                b = int(doc.bins[start - 1])
                prefix_ids = [doc.ids[0], self.rtg_ids[b]]
                prefix_bins = [b, b]
                if is_rtg[start]:  # the piece opens with an RTG token of its own
                    prefix_ids, prefix_bins = prefix_ids[:1], prefix_bins[:1]
            else:
                prefix_ids, prefix_bins = [doc.ids[0]], [-1]
            take = B - len(prefix_ids)
            end = min(start + take, len(doc.ids))
            out.append(Piece(np.concatenate([prefix_ids, doc.ids[start:end]]).astype(np.int32),
                             np.concatenate([np.zeros(len(prefix_ids)), doc.tw[start:end]]).astype(np.float32),
                             np.concatenate([prefix_bins, doc.bins[start:end]]).astype(np.int16)))
            start = end
        return out


class BestFitPacker:
    """Streaming best-fit bin packing of pieces into rows of ``block_size`` tokens."""

    def __init__(self, block_size: int, pad_id: int, open_rows: int):
        self.B, self.pad_id, self.max_open = block_size, pad_id, open_rows
        self.free: list[tuple[int, int]] = []  # sorted (free slots, row key)
        self.rows: dict[int, list[Piece]] = {}
        self.next_key = 0

    def add(self, piece: Piece) -> Iterator[dict]:
        n = len(piece.ids)
        i = bisect.bisect_left(self.free, (n, -1))
        if i < len(self.free):
            space, key = self.free.pop(i)
        else:
            space, key = self.B, self.next_key
            self.next_key += 1
            self.rows[key] = []
        self.rows[key].append(piece)
        space -= n
        if space == 0:
            yield self._emit(key)
            return
        bisect.insort(self.free, (space, key))
        if len(self.free) > self.max_open:
            _, fullest = self.free.pop(0)
            yield self._emit(fullest)

    def flush(self) -> Iterator[dict]:
        for _, key in sorted(self.free, key=lambda x: x[1]):
            yield self._emit(key)
        self.free = []

    def _emit(self, key: int) -> dict:
        pieces = self.rows.pop(key)
        B = self.B
        ids = np.full(B, self.pad_id, np.int32)
        pos = np.zeros(B, np.int32)
        seg = np.full(B, -1, np.int32)
        lw = np.zeros(B, np.float32)
        bins = np.full(B, -1, np.int16)
        at = 0
        for s, p in enumerate(pieces):
            n = len(p.ids)
            ids[at:at + n] = p.ids
            pos[at:at + n] = np.arange(n)
            seg[at:at + n] = s
            lw[at:at + n - 1] = p.tw[1:]
            bins[at:at + n] = p.bins
            at += n
        pos[at:] = np.arange(B - at)
        return {"input_ids": ids, "position_ids": pos, "segment_ids": seg, "loss_weight": lw, "bin_ids": bins}


def _features(block_size: int):
    from datasets import Features, List, Value

    return Features({
        "input_ids": List(Value("int32"), length=block_size),
        "position_ids": List(Value("int32"), length=block_size),
        "segment_ids": List(Value("int32"), length=block_size),
        "loss_weight": List(Value("float32"), length=block_size),
        "bin_ids": List(Value("int16"), length=block_size),
    })


def _rows_table(rows: list[dict], block_size: int) -> pa.Table:
    cols = {}
    for name in COLUMNS:
        flat = np.concatenate([r[name] for r in rows])
        cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat), block_size)
    return pa.table(cols)


# ---------------------------------------------------------------------------- the builder
CONTROL_PREFIX = 2  # mode token + RTG token


def check_options(opts: PackOptions) -> None:
    """Reject options that cannot work before any input is read."""
    if opts.block_size < CONTROL_PREFIX + 2:
        raise CorpusError(f"--block-size {opts.block_size} is smaller than a control prefix ({CONTROL_PREFIX} "
                          f"tokens: mode + RTG) plus two tokens; use at least {CONTROL_PREFIX + 2}")
    if not 0.0 <= opts.uncond_fraction <= 1.0:
        raise CorpusError(f"--uncond-fraction must be in [0, 1], got {opts.uncond_fraction}")


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
    with atomic_dir(out, overwrite=overwrite) as tmp:
        # ---- pass 1: records -> documents (temp Arrow) + RTG values
        values: list[float] = []
        doc_path = tmp / "documents.arrow"
        bar = _progress(desc="encode", unit="rec", enabled=progress)
        with pa.OSFile(str(doc_path), "wb") as sink, pa.ipc.new_stream(sink, DOC_SCHEMA) as writer:
            for cols in encode_documents(_counted(reader, summary, bar), tokenizer, opts):
                for vals, fixed in zip(cols["marker_val"], cols["marker_fixed"]):
                    values.extend(v for v, f in zip(vals, fixed) if f == 0)
                summary.content_tokens += sum(len(x) for x in cols["ids"])
                summary.documents += len(cols["ids"])
                writer.write_batch(pa.record_batch(cols, schema=DOC_SCHEMA))
                bar.set_postfix(tokens=summary.content_tokens)
        bar.close()
        summary.skipped, summary.skipped_examples = reader.skipped.count, list(reader.skipped.examples)
        if summary.documents == 0:
            raise CorpusError("no records were read" + (f" ({summary.skipped} skipped as bad)" if summary.skipped else ""))
        scheme = _fit_scheme(values, num_bins, binning, reader, opts)
        scheme.add_to_tokenizer(tokenizer)
        # ---- pass 2: documents -> conditioned pieces -> packed rows
        stream = ConditionedStream(scheme, tokenizer, opts)
        packer = BestFitPacker(opts.block_size, tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                               else tokenizer.eos_token_id, opts.open_rows)
        rows_path = tmp / ROWS_FILE
        writer = ArrowWriter(features=_features(opts.block_size), path=str(rows_path))
        pending: list[dict] = []

        def write(rows: Iterable[dict]) -> None:
            for r in rows:
                pending.append(r)
                summary.rows += 1
                summary.tokens += int((r["segment_ids"] >= 0).sum())
                summary.trained_tokens += float(r["loss_weight"].sum())
            if len(pending) >= 512:
                writer.write_table(_rows_table(pending, opts.block_size))
                pending.clear()

        bar = _progress(total=summary.documents, desc="pack", unit="doc", enabled=progress)
        with pa.memory_map(str(doc_path)) as src:
            for batch in pa.ipc.open_stream(src):
                for doc in _iter_docs(batch):
                    full, on = stream.stream(*doc)
                    summary.on_docs += on
                    summary.off_docs += not on
                    for piece in stream.pieces(full, on):
                        summary.pieces += 1
                        write(packer.add(piece))
                bar.update(batch.num_rows)
        write(packer.flush())
        if pending:
            writer.write_table(_rows_table(pending, opts.block_size))
        writer.finalize()
        writer.close()
        bar.close()
        doc_path.unlink()
        summary.truncated_tokens = stream.truncated
        scheme.counts = stream.bin_counts
        tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        scheme.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
        scheme.options.update(rows=summary.rows, tokens=summary.tokens, rows_sha256=_sha256(rows_path))
        summary.seconds = time.perf_counter() - t0
        scheme.save(tmp)  # last: its presence marks a complete corpus
    return scheme, summary


def _counted(reader: SourceReader, summary: Summary, bar) -> Iterator[Record]:
    for rec in reader:
        summary.records += 1
        bar.update(1)
        yield rec


def _iter_docs(batch: pa.RecordBatch) -> Iterator[tuple]:
    cols = []
    for name in ("ids", "tw", "marker_pos", "marker_val", "marker_fixed"):
        arr = batch.column(name)
        cols.append((arr.offsets.to_numpy(), arr.values.to_numpy(zero_copy_only=False)))
    on = batch.column("on").to_numpy(zero_copy_only=False)
    for i in range(batch.num_rows):
        yield tuple(v[o[i]:o[i + 1]] for o, v in cols) + (bool(on[i]),)


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
