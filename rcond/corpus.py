"""Records -> conditioned token streams -> packed rows on disk (DESIGN §3–§4).

Two streaming passes, so memory stays flat as the corpus grows. The bin edges (fitted, by
quantile, uniform or given, on the rewards whose RTG tokens the rows hold, and those of the
unconditional records they hold) are known only after the last record, but nothing else depends
on them, so
the first pass does all the work and leaves placeholders where a bin is needed:

1. **Read, encode, condition, pack.** The reader's :class:`~rcond.sources.PartBatch` es (up to
   1,000 rows each, a pair giving two records, or about 1 MiB of input for long documents where
   the tokenizer's inputs are cut, 4 MiB where they are not; of
   *parts*: prompt, response, dialog turn) are read and parsed in one
   background thread and tokenized in a second (:mod:`rcond.background`); in the main thread each
   batch becomes documents with their control tokens, cut into pieces of at most ``block_size``
   (:mod:`rcond.conditioning`; a piece in which no token is trained, prompt or user text alone,
   is left out and counted), and the pieces are packed into rows by streaming best fit
   (:mod:`rcond.packing`). With ``workers`` > 1, worker processes encode and condition whole
   batches instead (:mod:`rcond.parallel`), and the corpus is byte-identical. The control
   tokens join the tokenizer first (their ids depend on the number of bins alone), but an RTG
   token is a placeholder id until its bin is known, and every token carries the index of the
   marker (RTG token) in force instead of a bin. Full tables of rows go to a temporary spill
   file, or, while no RTG token has been placed (plain text documents, say), straight to
   ``rows.arrow``, final as they are (:class:`RowsFile`); memory holds the reward-to-go of each
   marker.
2. **Resolve.** The edges are fitted, every marker gets its bin, and each spilled table of rows
   is rewritten with the real RTG-token ids and ``bin_ids`` after those already written.

Python's cyclic garbage collector is paused for the whole build (:func:`collector_paused`). The
inputs are fingerprinted in a background thread beside the reading; the tokenizer, final once the
control tokens have joined it, is fingerprinted in another while the tokenizer encodes the second
batch (its JSON work then shares the cores with the tokenizer's instead of adding ~13 ms after the
last call), and saved beside pass 2; ``rows.arrow`` is hashed as it is written.

Row columns (all ``block_size`` long):

- ``input_ids``; ``position_ids`` restarting at 0 for every piece (and for the padding run);
- ``segment_ids``: 0, 1, ... per piece in the row, −1 for padding;
- ``loss_weight[i]``: the weight of predicting ``input_ids[i+1]`` at position ``i`` (shifted,
  so it lines up with the hidden state that makes the prediction). It is the target weight of
  token ``i+1``, and 0 at the last position of every piece: a target never crosses a document
  boundary. Control tokens have target weight 0, so no position is trained to emit them;
- ``bin_ids``: the RTG bin in force for each token (the latest RTG token of its document; tokens
  before a dialog's first RTG take the first one), −1 for ``off`` documents and padding, and for
  what ``truncate`` keeps of an ``on`` dialog cut before its first RTG token: no token of the
  rows then conditions it, and the per-bin counts leave that bin out (only ``train_on_prompt``
  keeps such a piece; otherwise it trains nothing and is left out).

The directory holds ``rows.arrow`` (a ``datasets`` Arrow file), ``tokenizer/`` and
``scheme.json``; ``scheme.json`` is written last and records the sha256 of ``rows.arrow`` and
the tokenizer fingerprint, both checked by :func:`load`. A build that skipped bad records
(``on_error="skip"``) also leaves ``skipped.txt``, every one with its reason, a line each.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import time
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np
import pyarrow as pa

from .atomic import OutputKind, atomic_dir, raise_if_interrupted
from .background import collector_paused, in_background
from .conditioning import CONTROL_PREFIX, ConditionedStream, conditioned_batches
from .packing import BestFitPacker, CorpusError, PackOptions, Spill, fill_layout
from .parallel import too_many_processes
from .sources import SourceReader, file_sha256, fingerprint
from .tokens import SCHEME_FILE, ControlScheme, SchemeError, resolve_bins

ROWS_FILE = "rows.arrow"
TOKENIZER_DIR = "tokenizer"
SKIPPED_FILE = "skipped.txt"  # with --on-error skip: every skipped record's reason, one per line
CORPUS = OutputKind("an rcond corpus", (SCHEME_FILE, ROWS_FILE, TOKENIZER_DIR + "/"),
                    (SKIPPED_FILE,))  # what --overwrite may replace
COLUMNS = ("input_ids", "position_ids", "segment_ids", "loss_weight", "bin_ids")
TABLE_TOKENS = 128 * 1024  # tokens of packed rows written to the Arrow file at a time (at least one row);
# the last table leaves after the tokenizer's last call: 512K tokens took ~18 ms there (movie reviews)
MAX_BLOCK_SIZE = 2 ** 20  # tokens per row; rows this long already hold ~20 MB of columns each
MAX_TRAINED_VOCAB = 2 ** 20  # train:VOCAB; the largest vocabularies in use are ~256k


@dataclass
class Summary:
    records: int = 0
    documents: int = 0
    pieces: int = 0
    rows: int = 0
    tokens: int = 0  # non-padding tokens written
    trained_tokens: float = 0.0  # sum of loss weights
    truncated_tokens: int = 0
    untrained_pieces: int = 0  # pieces left out: no token in them is trained (prompt or user text alone)
    untrained_tokens: int = 0
    on_docs: int = 0
    off_docs: int = 0
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    ignored_files: int = 0  # files of folder or zip inputs that are no .txt documents, not read
    ignored_examples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    content_tokens: int = 0  # tokenizer output, before control tokens
    rewards: int = 0  # reward values read or scored; 0 for preference pairs without scores (top / bottom bins)
    cut_rewards: int = 0  # rewards left out of the bin edges: their RTG tokens, or their unconditional records, were cut
    unscored_sides: int = 0  # sides of preference pairs without scores: chosen to the top bin, rejected the bottom
    same_pairs: int = 0  # preference pairs whose chosen and rejected sides are the same text
    split_prompts: int = 0  # preference pairs whose two HH dialogues split into different prompts
    prompts: int = 0  # records whose first part is a prompt or user turn with text (scored, pairs, dialog)
    multiline_prompts: int = 0  # of those, the ones whose prompt holds a line break (HH dialogues all do)

    def efficiency(self, block_size: int) -> float:
        return self.tokens / max(1, self.rows * block_size)


# ---------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: Iterable[str], vocab_size: int, *, progress: bool = False):
    """Train a byte-level BPE on ``texts``; returns a PreTrainedTokenizerFast with eos = pad. With
    ``progress``, a bar counts the texts read, then says the merges are being learnt."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    bpe = ByteLevelBPETokenizer()
    bar = _progress(desc="tokenizer: reading", unit="text", enabled=progress)

    def counted() -> Iterator[str]:
        for text in texts:
            bar.update()
            yield text
        bar.set_description_str(f"tokenizer: learning the merges (vocabulary {vocab_size:,})")

    # in a thread of its own: the Rust trainer waits for the texts without checking for signals,
    # so Ctrl-C is noticed only while this thread waits on it (an input that never ends, a fifo)
    try:
        in_background(lambda: bpe.train_from_iterator(counted(), vocab_size=vocab_size, min_frequency=2,
                                                      special_tokens=[eos], show_progress=False))()
    finally:
        bar.close()
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos, pad_token=eos)


def trained_vocab_size(spec: str) -> int | None:
    """The VOCAB of a ``train:VOCAB`` tokenizer spec (None for a path or id), checked before any
    input is read; an empty spec is refused (as a path it would be the current directory)."""
    if not spec.strip():
        raise CorpusError("--tokenizer is empty; expected a tokenizer directory, a hub id, or train:VOCAB_SIZE")
    if not spec.startswith("train:"):
        return None
    digits = spec.split(":", 1)[1]
    if not (digits.isascii() and digits.isdigit()):  # int() would also take ' 300', '+300', '3_00', full-width digits
        raise CorpusError(f"--tokenizer {spec!r}: expected train:VOCAB_SIZE, e.g. train:4096")
    vocab = int(digits)
    if not 260 <= vocab <= MAX_TRAINED_VOCAB:
        raise CorpusError(f"--tokenizer {spec!r}: a byte-level BPE needs a vocabulary of 260 to "
                          f"{MAX_TRAINED_VOCAB:,} tokens")
    return vocab


def resolve_tokenizer(spec: str, reader: SourceReader, *, progress: bool = False):
    """``PATH_OR_ID`` loads a tokenizer; ``train:VOCAB`` trains a byte-level BPE on the inputs."""
    vocab = trained_vocab_size(spec)
    if vocab is not None:
        return train_tokenizer(reader.texts(), vocab, progress=progress)
    from .tokenizer import load_tokenizer

    return load_tokenizer(spec)


# ---------------------------------------------------------------------------- the rows file
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
    if too_many := too_many_processes("--workers", opts.workers):
        raise CorpusError(f"{too_many}; each worker is a process with its own tokenizer, and beyond one per core "
                          f"they only wait")


def check_special_tokens(tokenizer, control_tokens: list[str], where: Path | None = None) -> None:
    """The tokenizer's eos, pad and unk must not be control tokens (a tokenizer saved with a corpus
    and edited, say): every document ends with eos and padding fills rows, so either one would put
    a control token where the model learns to end a text or where nothing is; and a piece of text
    the tokenizer does not know would read as that control token. ``where``: the tokenizer's
    folder, named in the error."""
    for role in ("eos", "pad", "unk"):
        token = getattr(tokenizer, f"{role}_token", None)
        if token is not None and token in control_tokens:
            raise CorpusError(f"{f'{where}: ' if where else ''}the tokenizer's {role} token is {token!r}, one of "
                              f"rcond's control tokens; give it a {role} token of its own ({role}_token in its "
                              f"tokenizer_config.json)")


def _progress(total=None, desc="", unit="it", enabled=True):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, leave=False)


def build(reader: SourceReader, out: str | Path, tokenizer, *, num_bins: int | None = None,
          binning: str = "quantile", opts: PackOptions | None = None, overwrite: bool = False,
          progress: bool = True) -> tuple[ControlScheme, Summary]:
    """Read, encode, condition and pack; fit the bins; resolve and write a corpus directory atomically.
    ``num_bins`` None: as many as explicit edges make, else 10 (:func:`~rcond.tokens.resolve_bins`).
    ``tokenizer`` (a ``PreTrainedTokenizerFast``) must have an eos token; it gets the control tokens,
    and eos as its pad token if it has none (as :func:`~rcond.tokenizer.load_tokenizer` gives it),
    before any input is read: a build that fails leaves them in it too. Control tokens it already
    holds keep their ids; RTG tokens beyond this scheme's K (from a scheme of more bins) stay in the
    saved tokenizer, unused, and the sampler bans them like the scheme's own."""
    from .tokenizer import pad_with_eos, tokenizer_fingerprint

    opts = opts or PackOptions()
    check_options(opts)
    num_bins = resolve_bins(num_bins, binning)
    if tokenizer.eos_token is None:
        raise CorpusError("the tokenizer has no eos token; rcond ends every document with eos: give it one "
                          "(tokenizer.eos_token = ..., or eos_token in its tokenizer_config.json)")
    control = ControlScheme(num_bins=num_bins)  # its tokens; the scheme itself is fitted after pass 1
    check_special_tokens(tokenizer, control.control_tokens)
    pad_with_eos(tokenizer)
    B = opts.block_size
    summary = Summary()
    t0 = time.perf_counter()
    with (atomic_dir(out, overwrite=overwrite, keep=tuple(reader.inputs), kind=CORPUS) as tmp, collector_paused(),
          ExitStack() as stack):
        source_fingerprints = in_background(lambda: {spec: fingerprint(spec) for spec in reader.inputs})
        versions = in_background(lambda: built_with(_scorer_name(reader)))
        # ---- pass 1: records -> conditioned pieces -> packed rows (rows.arrow, or with placeholders the spill
        # file) + RTG values
        # the control tokens' ids depend on the number of bins alone: they join the tokenizer now
        control.add_to_tokenizer(tokenizer)
        stream = ConditionedStream(tokenizer.eos_token_id, opts)
        stream.use_tokens(control, tokenizer)
        pad_id = tokenizer.pad_token_id

        def emit(rows: dict[str, np.ndarray]) -> None:
            """A table of packed rows -> ``rows.arrow`` while no RTG token has been placed (the
            rows are final), else the spill file (the packer reuses the arrays after)."""
            summary.rows += len(rows["input_ids"]) // B
            summary.tokens += int(rows["lengths"].sum())
            summary.trained_tokens += float(rows["loss_weight"].sum(dtype=np.float64))
            if stream.markers or spill.sizes:  # an RTG token's bin waits for the edges: pass 2
                spill.write(rows)
            else:
                rows_file.write_packed(rows)

        bar = _progress(desc="encode+pack", unit="rec", enabled=progress)
        skipped_file = tmp / SKIPPED_FILE if reader.on_error == "skip" else None
        rows_file = stack.enter_context(RowsFile(tmp / ROWS_FILE, B, stream))
        with Spill(tmp / "packed.bin", B) as spill, _skips_written_to(reader, skipped_file):
            packer = BestFitPacker(B, pad_id, opts.open_rows, max(1, TABLE_TOKENS // B), emit)
            fingerprinted = None
            for parts, pool, tokens in conditioned_batches(reader, tokenizer, stream, opts.workers):
                raise_if_interrupted()  # a Ctrl-C Python dropped stops the build here, not at the end
                if fingerprinted is None:  # the tokenizer is final: fingerprinted while it works on batch 2
                    # (reading its JSON meanwhile is safe: the fingerprint leaves out the truncation and
                    # padding the encoder switches off around its calls)
                    fingerprinted = in_background(lambda: tokenizer_fingerprint(tokenizer))
                summary.rewards += int(np.count_nonzero(~np.isnan(parts.rtg)))
                summary.unscored_sides += int(np.count_nonzero(parts.fixed))
                firsts = [parts.texts[i] for i in np.flatnonzero(parts.doc_start & ~parts.trainable).tolist()]
                summary.prompts += sum(1 for text in firsts if text)
                summary.multiline_prompts += sum(1 for text in firsts if "\n" in text)
                if num_bins == 1 and summary.unscored_sides:
                    raise CorpusError(f"{', '.join(reader.inputs)}: preference pairs without scores put the chosen "
                                      "response in the top bin and the rejected one in the bottom bin, which --bins 1 "
                                      "makes the same bin: the corpus could not tell them apart; expected --bins 2 or "
                                      "more (or scores for every pair: --chosen-score-field/--rejected-score-field, "
                                      "--score-with)")
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
        summary.untrained_pieces, summary.untrained_tokens = stream.untrained_pieces, stream.untrained_tokens
        summary.skipped, summary.skipped_examples = reader.skipped.count, list(reader.skipped.examples)
        summary.ignored_files, summary.ignored_examples = reader.ignored.count, list(reader.ignored.examples)
        summary.same_pairs, summary.split_prompts = reader.same_pairs, reader.split_prompts
        if summary.documents == 0:
            raise CorpusError(f"no records were read from {', '.join(reader.inputs)}"
                              + (f" ({summary.skipped} skipped as bad)" if summary.skipped else "")
                              + "; expected at least one record"
                              + "".join(f"\n  skipped: {m}" for m in summary.skipped_examples[:5]))
        if summary.rows == 0:
            raise CorpusError(f"no token is left to train at --block-size {B}: --truncate cut every document "
                              "before its first trained (response or assistant) token; raise --block-size, "
                              "drop --truncate (long documents are then split), or add --train-on-prompt")
        # ---- pass 2: fit the bins; placeholders -> RTG-token ids and bin ids, in the final rows file
        # the edges follow the rewards whose RTG tokens the rows hold (and those of the unconditional
        # documents the rows hold): not those --truncate cut, so that quantile bins share the corpus's
        # RTG tokens evenly
        values, summary.cut_rewards = stream.fit_rewards()
        scheme = _fit_scheme(values, num_bins, binning, reader, opts)
        stream.bind(scheme)
        scheme.counts = stream.bin_counts.tolist()
        tokenizer_saved = in_background(lambda: tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR)))  # beside pass 2
        try:
            rows_sha256 = _resolve_rows(spill, rows_file, packer.table)
        except BaseException:  # let the saving thread finish before the temp dir is removed
            with suppress(BaseException):
                tokenizer_saved()
            raise
        tokenizer_saved()
        scheme.tokenizer_fingerprint = fingerprinted()
        scheme.source_fingerprints = source_fingerprints()
        scheme.options["built_with"] = versions()  # looked up beside pass 1: ~15 ms the first time
        # records, those of them that open with a prompt or user turn with text, and those prompts that
        # span lines: `rcond sample` tells a user who gives no prompts when the model mostly saw responses
        # follow a prompt, and one who gives a .txt (a prompt a line) when its prompts mostly spanned lines
        scheme.options.update(rows=summary.rows, tokens=summary.tokens, records=summary.records,
                              prompts=summary.prompts, multiline_prompts=summary.multiline_prompts,
                              rows_sha256=rows_sha256)
        scheme.options["scheme_sha256"] = scheme_sha256(scheme)
        summary.seconds = time.perf_counter() - t0
        scheme.save(tmp)  # last: its presence marks a complete corpus
    return scheme, summary


@contextmanager
def _skips_written_to(reader: SourceReader, path: Path | None) -> Iterator[None]:
    """Within: pass 1, the reader writing every skipped record to ``path`` (its ``skips_to``; None:
    to no file); after, that file is closed and the reader writes none again (it is the caller's,
    and may read again elsewhere)."""
    reader.skips_to = path
    try:
        yield
    finally:
        reader.skipped.close()
        reader.skips_to = None


def _fit_scheme(values: np.ndarray, num_bins: int, binning: str, reader: SourceReader, opts: PackOptions) -> ControlScheme:
    if binning.startswith("edges:") or len(values):
        scheme = ControlScheme.fit(values, num_bins=num_bins, binning=binning)
    else:  # unscored pairs (chosen = +1, rejected = -1) or only off documents: edges span [-1, 1]
        scheme = ControlScheme.fit([-1.0, 1.0], num_bins=num_bins, binning="uniform")
    scheme.gamma = reader.gamma
    scheme.uncond_fraction = opts.uncond_fraction
    scheme.options = {"format": reader.format, "block_size": opts.block_size, "train_on_prompt": opts.train_on_prompt,
                      "truncate": opts.truncate, "seed": opts.seed,
                      "scorer": _scorer_name(reader),
                      "fields": asdict(reader.fields), "on_error": reader.on_error,
                      "skipped": reader.skipped.count}
    return scheme


def _scorer_name(reader: SourceReader) -> str | None:
    """The ``--score-with`` spec of the reader's scorer (``vader``, ``module:function``), None without one."""
    return getattr(reader.scorer, "name", None) if reader.scorer else None


BUILT_WITH = ("rcond", "tokenizers", "transformers", "pyarrow", "numpy")  # what reads, encodes and writes the rows


def built_with(scorer: str | None) -> dict[str, str | None]:
    """The versions of what made a corpus: Python, rcond and the libraries that read, encode and
    write its rows, and vaderSentiment where VADER scored its rewards (``None`` for a package
    that is not installed, as rcond run from a source tree without installing it)."""
    from importlib import metadata

    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in (*BUILT_WITH, *(("vaderSentiment",) if scorer == "vader" else ())):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _resolve_rows(spill: Spill, rows_file: "RowsFile", into: dict[str, np.ndarray]) -> str:
    """Pass 2: pass 1's spilled tables (if any) -> after the tables already in ``rows.arrow`` (then
    the spill file goes); returns the rows file's sha256, hashed as it is written. The tables are
    read back into ``into``, the packer's table (:meth:`~rcond.packing.Spill.tables`)."""
    for rows in spill.tables(into):
        rows_file.write(rows)
    spill.path.unlink()
    return rows_file.finish()


class RowsFile:
    """``rows.arrow`` as it is written, a table of rows at a time, each resolved by the stream
    (:meth:`~rcond.conditioning.ConditionedStream.resolve`) and hashed on the way
    (:class:`HashingWriter`). Pass 1 writes its tables here while no RTG token has been placed:
    such rows are final as packed (a mode token's id depends on the number of bins alone, and
    every ``bin_ids`` is -1), so a corpus of plain text documents, or one whose RTG tokens all
    come later, skips the spill file for them, and writes them while the tokenizer works instead
    of after it (2 cores, against the bare tokenizer, interleaved runs: the movie reviews as text
    0.79x -> 0.80x and 0.82x, 100 book-length documents 1.06x -> 1.10x). Pass 2 appends the
    spilled tables."""

    def __init__(self, path: Path, block_size: int, stream: ConditionedStream):
        from datasets.arrow_writer import ArrowWriter

        self.B, self.stream = block_size, stream
        self.file = HashingWriter(open(path, "wb"))
        self.writer = ArrowWriter(features=_features(block_size), stream=self.file)
        self.layout: dict[str, np.ndarray] = {}  # position_ids, segment_ids [n] int32 of pass 1's tables, reused

    def __enter__(self) -> "RowsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def write(self, rows: dict[str, np.ndarray]) -> None:
        """A table of rows ``{column: [R * B] array}`` with its ``position_ids`` and ``segment_ids``."""
        self.writer.write_table(_rows_table(self.stream.resolve(rows), self.B))

    def write_packed(self, rows: dict[str, np.ndarray]) -> None:
        """A table as the packer emits it, its layout as ``pieces`` and ``lengths``
        (:func:`~rcond.packing.fill_layout` gives its positions and segments)."""
        n = len(rows["input_ids"])
        if len(self.layout.get("position_ids", ())) < n:
            self.layout = {k: np.empty(n, np.int32) for k in ("position_ids", "segment_ids")}
        laid = {k: v[:n] for k, v in self.layout.items()}                              # [R * B] each
        fill_layout(rows["pieces"], rows["lengths"], self.B, laid["position_ids"], laid["segment_ids"])
        self.write({**rows, **laid})

    def finish(self) -> str:
        """The last table written: the file closed; its ``sha256:<hex>``."""
        self.writer.finalize()
        self.file.close()
        return self.file.hexdigest()


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


def scheme_sha256(scheme: ControlScheme) -> str:
    """``sha256:<hex>`` of the scheme's fields as canonical JSON, leaving out this fingerprint itself
    (``options.scheme_sha256``): the rows' fingerprint does not cover the scheme, and an edit to it
    (tokens swapped, edges moved, the format changed) would silently change what the rows mean."""
    d = scheme.to_dict()
    d["options"] = {k: v for k, v in d["options"].items() if k != "scheme_sha256"}
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # surrogatepass: a path that is not UTF-8 (a source fingerprint's key) is held with surrogates
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# ---------------------------------------------------------------------------- loading
_SCHEME_EDITED = ("{scheme_file}: edited after preprocessing (its fields no longer match the fingerprint they were "
                  "written with, options.scheme_sha256); it records how the rows were built, so preprocess the "
                  "corpus again instead")


def load(directory: str | Path, *, verify: bool = True):
    """Open a corpus: returns ``(dataset, scheme, tokenizer)``; checks it is complete and unaltered."""
    from datasets import Dataset
    from .tokenizer import TokenizerError, load_tokenizer, tokenizer_fingerprint

    d = Path(directory)
    if not d.is_dir():
        raise CorpusError(f"{d}: is a file, not a corpus directory" if d.exists() else f"{d}: no such corpus directory")
    if not (d / SCHEME_FILE).exists():
        if not (d / ROWS_FILE).exists() and not (d / TOKENIZER_DIR).exists():
            raise CorpusError(f"{d}: not an rcond corpus (a corpus holds {SCHEME_FILE}, {ROWS_FILE} and "
                              f"{TOKENIZER_DIR}/, as rcond preprocess writes them)")
        raise CorpusError(f"{d}: not a complete rcond corpus: it has no {SCHEME_FILE} (the file a build writes last); "
                          f"preprocess the corpus again")
    try:
        scheme = ControlScheme.load(d)
    except SchemeError as e:  # names the file and what is wrong in it
        raise CorpusError(str(e)) from None
    rows = d / ROWS_FILE
    if not rows.exists():
        raise CorpusError(f"{d}: missing {ROWS_FILE}")
    if not rows.is_file():
        raise CorpusError(f"{rows}: is not a file; expected the corpus's rows (an Arrow file written by rcond "
                          f"preprocess)")
    if verify and file_sha256(rows) != scheme.options.get("rows_sha256"):
        if scheme.options.get("scheme_sha256") != scheme_sha256(scheme):  # the rows' fingerprint is in the scheme
            raise CorpusError(_SCHEME_EDITED.format(scheme_file=d / SCHEME_FILE))
        raise CorpusError(f"{rows}: fingerprint mismatch — the rows changed after preprocessing, or the scheme.json "
                          f"is another corpus's; re-run rcond preprocess")
    if not (d / TOKENIZER_DIR).is_dir():
        raise CorpusError(f"{d}: has no {TOKENIZER_DIR}/ folder (the tokenizer its rows were encoded with, saved by "
                          f"rcond preprocess); restore it or preprocess the corpus again")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # both written by save_pretrained, both fingerprinted
        if not (d / TOKENIZER_DIR / name).is_file():
            raise CorpusError(f"{d / TOKENIZER_DIR}: has no {name} (rcond preprocess saved it with the tokenizer the "
                              f"rows were encoded with); restore it or preprocess the corpus again")
    try:
        tokenizer = load_tokenizer(str(d / TOKENIZER_DIR))
    except TokenizerError as e:
        raise CorpusError(f"the corpus's tokenizer cannot be loaded: {e}") from None
    check_special_tokens(tokenizer, scheme.control_tokens, where=d / TOKENIZER_DIR)  # before: it says more
    if tokenizer_fingerprint(tokenizer) != scheme.tokenizer_fingerprint:
        if verify and scheme.options.get("scheme_sha256") != scheme_sha256(scheme):  # the fingerprint is in the scheme
            raise CorpusError(_SCHEME_EDITED.format(scheme_file=d / SCHEME_FILE))
        raise CorpusError(f"{d / TOKENIZER_DIR}: tokenizer fingerprint does not match scheme.json (the tokenizer was "
                          f"edited or is another corpus's, or the corpus was built by an older rcond, whose "
                          f"fingerprint left out tokenizer_config.json); preprocess the corpus again")
    missing = scheme.missing_tokens(tokenizer)
    if missing:  # the fingerprint covers the tokenizer, not the scheme's token names
        raise CorpusError(f"{d / SCHEME_FILE}: control token {missing[0]!r} is not in the corpus's tokenizer "
                          f"({d / TOKENIZER_DIR}), which holds the tokens the rows were conditioned with; the "
                          f"scheme.json was edited or belongs to another corpus: preprocess the corpus again")
    try:
        dataset = Dataset.from_file(str(rows))
    except (OSError, ValueError) as e:  # verify=False skipped the fingerprint that would have caught it (Arrow's
        # errors are ValueErrors; so is the JSON error of damaged schema metadata)
        raise CorpusError(f"{rows}: not readable as the corpus's rows ({e}); the file is damaged: preprocess the "
                          f"corpus again") from None
    check_scheme_fits_rows(d, scheme, dataset.data)
    if verify and scheme.options.get("scheme_sha256") != scheme_sha256(scheme):
        raise CorpusError(_SCHEME_EDITED.format(scheme_file=d / SCHEME_FILE))
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
