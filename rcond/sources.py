"""Readers that turn input data into canonical records.

A canonical :class:`Record` is a list of :class:`Part` s (text pieces, each either context —
prompt, user turn — or trainable response text) plus a mode (``on``/``off``) and an origin
(``file:line``) for error messages. Four formats are read:

- ``pairs``: ``{"chosen", "rejected"}`` whole dialogues in the HH-RLHF convention, split at the
  last ``"\\n\\nAssistant:"`` (prompt = everything up to and including it, response = the rest),
  or explicit ``{"prompt", "chosen", "rejected"}``. Optional ``chosen_score``/``rejected_score``
  become the rewards; without scores (and without a scorer) chosen goes to the top bin and
  rejected to the bottom bin (DESIGN §3). Each pair yields two records, which stand or fall
  together: a pair with a bad side (a non-finite score of its own or from the scorer) is skipped
  whole under ``--on-error skip``.
- ``scored``: ``{"prompt"?, "response" | "text", "reward"}``.
- ``dialog``: ``{"turns": [{"role": "user"|"system"|"assistant", "content", "reward"?}, ...]}``
  (a reward on a user or system turn is an error). The
  reward-to-go of assistant turn t is R_t = sum_{t' >= t} gamma^(t'-t) r_t' over the assistant
  turns t' (a turn without a reward contributes 0; at least one turn must carry one).
- ``text``: plain documents, always ``off`` mode.

The RTG token of a record precedes the part that carries ``rtg``: the prompt for single
responses (``<on> <rtg> prompt response``), each assistant turn for dialogs.

Hub datasets (``OWNER/NAME[@REVISION][/FOLDER...][:SPLIT | :CONFIG:SPLIT]``, :mod:`rcond.hub`) are
read through ``datasets`` in streaming mode, at the commit their revision pointed to when first
asked (once per process). Parquet files, datasets saved
with ``save_to_disk`` (a folder; ``DIR:SPLIT`` for a split of a DatasetDict: :func:`saved_dataset`)
and single ``.arrow`` files are read by pyarrow in batches (:func:`arrow_batches`; Arrow files
memory-mapped), each validated column by column where it can be, like a JSON Lines chunk (below),
else row by row: ``datasets``' streaming reader spends 60-90 us per row on Parquet, 17x pyarrow's
time (``benchmarks/readers.py``), and its ``load_from_disk`` imports torch for a dataset saved with
a torch format. ``.json`` files are
read with the standard library (:func:`_iter_json` says why), and so is CSV (:func:`_iter_csv`):
through ``datasets`` (pandas) a row with one field too many, or one line that is not UTF-8, failed
the whole file with a line number that miscounts quoted line breaks, and could not be skipped
alone. JSON Lines are read here, up to 1,000 lines at a time, fewer where they reach about
4 MiB (:func:`jsonl_chunks`; every reader bounds its batches so, :data:`BATCH_BYTES`): a chunk is parsed at once by Arrow's JSON reader and
validated column by column (:mod:`rcond.columnar`); a chunk in which anything is off is decoded
again line by line with the standard library, so a bad line is reported with its exact number and
can be skipped alone. Both ways give the same records; the column-wise one is what keeps ``rcond
preprocess`` near the tokenizer's own speed. Plain ``.txt`` documents, folders of them and
``.zip`` archives of them are read with the standard library too: ``datasets``' text builder
spends about 40 ms per small file (76 s for the 2,000 movie reviews, measured here), far slower
than the tokenizer.

Records reach :mod:`rcond.corpus` as :class:`PartBatch` es: the parts of many records in
columns, one entry per part.
"""

from __future__ import annotations

import bisect
import contextlib
import csv
import hashlib
import functools
import io
import itertools
import json
import lzma
import math
import os
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Iterable, Iterator, TextIO

import numpy as np

from . import hub
from .json_errors import json_error
from .scorer_pool import scores_in_batches
from .scorers import ScorerError

FORMATS = ("pairs", "scored", "dialog", "text")
HH_ASSISTANT = "\n\nAssistant:"
ROW_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
UNCOMPRESSED = {".parquet": "a compressed Parquet file is not read (Parquet compresses its own columns)",
                ".arrow": "a compressed Arrow file is not read (it is memory-mapped as it is)"}
ARROW_BATCH = 1000  # rows of a Parquet, .arrow or saved dataset turned into Python values at a time
JSONL_CHUNK = 1000  # lines read, parsed and validated together
BATCH_BYTES = 4 << 20  # input read into one batch at most, about (at least one row): long documents come fewer a batch
MAX_LINE_BYTES = 32 << 20  # a longer JSON Lines line is not a record (a JSON array, a binary file): refused unread


class SourceError(ValueError):
    """Bad input: the message names the file, the line or row, and what was expected."""


class RecordError(SourceError):
    """Bad input confined to one record (a malformed line, a missing field, a bad reward): what
    ``on_error="skip"`` skips. Errors that are not about one record (no such file, a scorer that
    breaks a whole batch) stay plain :class:`SourceError`."""


@dataclass
class Part:
    text: str
    trainable: bool
    rtg: float | None = None  # reward-to-go whose RTG token precedes this part
    fixed_bin: str | None = None  # "top" | "bottom": unscored preference pairs


@dataclass
class Record:
    parts: list[Part]
    mode: str  # "on" | "off"
    origin: str  # "file:line N" for messages

    @property
    def conditioned_parts(self) -> list[Part]:
        return [p for p in self.parts if p.rtg is not None or p.fixed_bin is not None]


FIXED_TOP, FIXED_BOTTOM = 1, -1  # PartBatch.fixed codes of unscored preference pairs


@dataclass
class PartBatch:
    """The parts of consecutive records in columns, in record order; what the corpus encodes."""

    texts: list[str]  # [P]
    trainable: np.ndarray  # [P] bool
    rtg: np.ndarray  # [P] float64: reward-to-go whose RTG token precedes the part; NaN = none
    fixed: np.ndarray  # [P] int8: FIXED_TOP / FIXED_BOTTOM for unscored pairs, else 0
    doc_start: np.ndarray  # [P] bool: first part of its record
    on: np.ndarray  # [P] bool: the record's mode is on
    same_pairs: int = 0  # preference pairs whose two sides are the same text (prompt and response)
    split_prompts: int = 0  # preference pairs whose two HH dialogues split into different prompts

    @property
    def records(self) -> int:
        return int(np.count_nonzero(self.doc_start))

    @classmethod
    def from_records(cls, recs: list[Record]) -> "PartBatch":
        parts = [p for r in recs for p in r.parts]
        starts = np.zeros(len(parts), dtype=bool)
        on = np.empty(len(parts), dtype=bool)
        at = 0
        for r in recs:
            starts[at] = True
            on[at:at + len(r.parts)] = r.mode == "on"
            at += len(r.parts)
        fixed = [0 if not p.fixed_bin else (FIXED_TOP if p.fixed_bin == "top" else FIXED_BOTTOM) for p in parts]
        rtg = [math.nan if p.rtg is None or p.fixed_bin else p.rtg for p in parts]
        return cls([p.text for p in parts], np.array([p.trainable for p in parts], dtype=bool),
                   np.array(rtg, dtype=np.float64), np.array(fixed, dtype=np.int8), starts, on)


@dataclass
class FieldNames:
    prompt: str = "prompt"
    response: str = "response"
    reward: str = "reward"
    chosen: str = "chosen"
    rejected: str = "rejected"
    chosen_score: str = "chosen_score"
    rejected_score: str = "rejected_score"
    turns: str = "turns"
    text: str = "text"


@dataclass
class SkipLog:
    """Bad records skipped under ``--on-error skip``: how many, the first few reasons, and, with a
    ``path``, every reason, one per line, written to that file as they come (created at the first;
    memory stays flat however many there are)."""

    count: int = 0
    examples: list[str] = field(default_factory=list)
    keep: int = 20
    path: Path | None = None
    _file: TextIO | None = field(default=None, init=False, repr=False, compare=False)

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(message)
        if self.path is not None:
            if self._file is None:
                self._file = open(self.path, "w", encoding="utf-8", errors="backslashreplace")
            self._file.write(message.replace("\n", "\\n") + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


# ---------------------------------------------------------------------------- raw rows
def _is_hub_id(spec: str) -> bool:
    """``owner/name`` (optionally ``:split``) that is not a path here; a name ending in a data
    file's suffix (``data/reviews.jsonl``) is a missing file, not a hub id."""
    path = Path(spec)
    return (not path.exists() and "/" in spec and not spec.startswith((".", "/", "~"))
            and data_suffix(Path(spec.partition(":")[0])) not in (*ROW_SUFFIXES, ".txt", ".zip"))


COMPRESSED = (".gz", ".bz2", ".xz", ".zst")  # suffixes of the compressions every reader undoes


def data_suffix(path: Path) -> str:
    """The suffix that names a file's format, past any compression suffix (``a.jsonl.gz`` -> ``.jsonl``),
    in lower case (``A.JSONL.GZ`` -> ``.jsonl``)."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in COMPRESSED]
    return suffixes[-1] if suffixes else ""


def iter_rows(spec: str, on_bad_line: Callable[[str], None] | None = None,
              on_ignored: Callable[[str], None] | None = None) -> Iterator[tuple[str, object]]:
    """Yield ``(origin, row)`` for every row of one input; ``row`` is a dict, or a str for documents.

    ``on_bad_line(message)`` receives malformed JSON lines when given; otherwise they raise.
    ``on_ignored(name)`` receives each file of a folder or zip that is no text document (not
    ``.txt``, compressed or not; hidden files are not named).
    """
    batches = arrow_batches(spec)
    if batches is not None:
        for where, first, batch in batches:
            yield from arrow_rows(where, first, batch, on_bad_line)
        return
    path = Path(spec).expanduser()
    if path.is_dir():
        yield from _iter_text_files(path, on_bad_line, on_ignored)
        return
    if not path.exists():
        if _is_hub_id(spec):
            yield from _iter_hub(spec)
            return
        raise SourceError(f"{spec}: no such file or directory")
    if path.suffix.lower() == ".zip":
        yield from _iter_zip(path, on_bad_line, on_ignored)
        return
    if data_suffix(path) == ".txt":  # one document, maybe compressed
        yield from _documents([(str(path), lambda: _read_all(path))], on_bad_line)
        return
    _refuse_compressed_columnar(path)
    kind = ROW_SUFFIXES.get(data_suffix(path))
    if kind is None:
        raise SourceError(f"{path}: unknown file type; expected .jsonl, .json, .csv, .txt (optionally .gz, .bz2, "
                          f".xz, .zst), .parquet, .arrow, a .zip of .txt files, a folder of .txt files, a dataset "
                          f"saved by datasets' save_to_disk, or a hub dataset id")
    if kind == "jsonl":
        yield from _iter_jsonl(path, on_bad_line)
    elif kind == "json":
        yield from _iter_json(path, on_bad_line)
    else:
        yield from _iter_csv(path, on_bad_line)  # Parquet and Arrow files were read above (arrow_batches)


def _load_streaming(repo: str, *, name: str | None, data_dir: str | None, split: str, revision: str):
    """The rows of a hub dataset's split, streamed by ``datasets``."""
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(repo, name=name, data_dir=data_dir, split=split, revision=revision, streaming=True)


def _open_compressed(path: Path):
    """A binary file object over ``path``, decompressing .gz/.bz2/.xz/.zst by suffix."""
    return _decompressing(path, path.suffix)


def _decompressing(source: str | os.PathLike | BinaryIO, suffix: str):
    """A binary file object reading ``source`` (a path, or a file object such as a zip member's
    bytes in an ``io.BytesIO``) through the decompressor that ``suffix`` names, if any. Closing
    the result closes a file object given with a .zst suffix or none, not one read through gzip,
    bz2 or lzma: give one whose closing does not matter."""
    import bz2
    import gzip

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix.lower())
    if opener is not None:
        return opener(source, "rb")
    raw = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source
    return io.BufferedReader(_ZstdReader(raw)) if suffix.lower() == ".zst" else raw


class _ZstdReader(io.RawIOBase):
    """A .zst stream (a binary file object, closed with the reader) decompressed frame after frame.
    Unlike ``zstandard.open`` (which has no ``readline`` and ends quietly where a cut file ends), a
    file cut inside a frame raises EOFError, as gzip's reader does, and data that is not zstd raises
    OSError."""

    CHUNK = 1 << 16

    def __init__(self, raw: BinaryIO):
        import zstandard

        self._error = zstandard.ZstdError
        self._dctx = zstandard.ZstdDecompressor()
        self._file = raw
        self._frame = None  # the decompressor of the frame being read; None between frames
        self._left = b""  # compressed bytes read past the end of the last frame
        self._out = b""  # decompressed bytes not yet returned

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            data = self._left or self._file.read(self.CHUNK)
            self._left = b""
            if not data:
                if self._frame is not None and not self._frame.eof:
                    raise EOFError("compressed file ended before the end of a zstd frame")
                return 0
            if self._frame is None or self._frame.eof:
                self._frame = self._dctx.decompressobj()
            try:
                self._out = self._frame.decompress(data)
            except self._error as e:
                raise OSError(str(e)) from None
            if self._frame.eof:
                self._left = self._frame.unused_data
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


def _read_all(path: Path) -> bytes:
    with _open_compressed(path) as f, _unreadable(path):
        return f.read()


@contextlib.contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    """A compressed file that is not what its suffix says, or is cut short: an error naming it."""
    try:
        yield
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise SourceError(f"{path}: cannot be read ({type(e).__name__}: {str(e) or 'cut short'}); expected a whole "
                          f"{path.suffix or 'plain'} file") from None


def jsonl_chunks(path: Path, lines_per_chunk: int, max_bytes: int = BATCH_BYTES) -> Iterator[tuple[int, list[bytes]]]:
    """``(number of the chunk's first line, its raw lines)`` for a JSON Lines file, in order: up to
    ``lines_per_chunk`` lines, fewer where they reach ``max_bytes`` (the line that reaches it is
    the chunk's last), so that a chunk of long documents holds a bounded amount of text.

    Lines are split on ``\\n`` only (a U+2028 inside a string is not a line break); a UTF-8
    byte-order mark at the start of the file is dropped. A line longer than ``MAX_LINE_BYTES``
    (its line break counted) is a SourceError, raised once that much of it is read, with nothing
    read after it: a file that is one huge line (a JSON array, or no text at all) would otherwise
    be read whole into memory, without end for a device.
    """
    with _open_compressed(path) as f, _unreadable(path):
        first, lines, size = 1, [], 0
        for line in iter(functools.partial(f.readline, MAX_LINE_BYTES + 1), b""):
            if len(line) > MAX_LINE_BYTES:
                raise SourceError(f"{path}:{first + len(lines)}: a line longer than {MAX_LINE_BYTES >> 20} MiB; "
                                  f"expected one JSON record per line (a JSON array goes in a .json file); "
                                  f"--on-error skip does not skip it, since finding where it ends would mean "
                                  f"reading it whole")
            lines.append(line)
            size += len(line)
            if len(lines) == lines_per_chunk or size >= max_bytes:
                yield first, _without_bom(lines, first)
                first, lines, size = first + len(lines), [], 0
        if lines:
            yield first, _without_bom(lines, first)


def _without_bom(lines: list[bytes], first: int) -> list[bytes]:
    """A chunk's lines, a UTF-8 byte-order mark dropped from the file's first line."""
    if first == 1 and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]
    return lines


def decode_lines(path: Path, first: int, lines: list[bytes], on_bad_line) -> Iterator[tuple[str, dict]]:
    """One JSON object per non-blank line -> ``(origin "file:line", row)``; bad lines raise or go to
    ``on_bad_line(message)``."""
    for i, raw in enumerate(lines, start=first):
        try:
            line = raw.decode("utf-8")
            if not line.strip():
                continue
            obj = _json_loads(line.rstrip("\r\n"))  # without its line break, an error's column is on the line
        except UnicodeDecodeError as e:
            msg = f"{path}:{i}: not valid UTF-8 (byte {e.start + 1} of the line); expected UTF-8 JSON Lines"
        except json.JSONDecodeError as e:
            msg = f"{path}:{i}: malformed JSON ({json_error(e)}); expected one JSON object per line"
        except RecursionError:
            msg = f"{path}:{i}: JSON nested too deeply to read; expected one flat JSON object per line"
        else:
            if not isinstance(obj, dict):
                msg = f"{path}:{i}: expected a JSON object, got {kind_of(obj)}"
            elif _lone_surrogate(raw, obj):
                msg = (f"{path}:{i}: a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its "
                       f"pair); expected valid Unicode text")
            else:
                yield f"{path}:{i}", obj
                continue
        if on_bad_line is None:
            raise RecordError(msg)
        on_bad_line(msg)


def _json_loads(text: str):
    """``json.loads``, except that an integer past Python's int-from-text limit (4,300 digits) is
    read as the float it is (inf), as Arrow's JSON reader has it, where ``json.loads`` raises a
    ValueError that names no line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError:  # the int-from-text limit: json raises nothing else that is not a JSONDecodeError
        return json.loads(text, parse_int=_json_int)


def _json_int(digits: str) -> int | float:
    try:
        return int(digits)
    except ValueError:
        return float(digits)


def _lone_surrogate(raw: bytes, obj: dict) -> bool:
    """Whether a decoded line holds a lone surrogate (escaped as ``\\udXXX``), which no tokenizer
    can encode; only lines with such an escape are checked."""
    if b"\\ud" not in raw.lower():
        return False
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _iter_jsonl(path: Path, on_bad_line) -> Iterator[tuple[str, object]]:
    for first, lines in jsonl_chunks(path, JSONL_CHUNK):
        yield from decode_lines(path, first, lines, on_bad_line)


def _first_line(path: Path) -> tuple[int, bytes] | None:
    """The first non-blank line of a (compressed) file and its number, the file's byte-order mark
    dropped; None if there is none."""
    with _open_compressed(path) as f, _unreadable(path):
        for i, line in enumerate(f, start=1):
            if i == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if line.strip():
                return i, line
    return None


def _iter_json(path: Path, on_bad_line) -> Iterator[tuple[str, object]]:
    """A ``.json`` file: an array of objects (``FILE:item N``), one object (``FILE:item 1``), or
    JSON Lines under a ``.json`` name (``FILE:LINE``, streamed). Read with the standard library:
    ``datasets``' JSON builder hands the file to Arrow's reader, which crashes the process on a
    file that opens with ``null`` (pyarrow 26, a segmentation fault), and turns an array of
    strings into rows of a made-up ``text`` field."""
    first = _first_line(path)
    if first is None:
        return
    number, head = first
    opening = head.lstrip()[:1]
    if opening == b"{":
        try:
            one_per_line = isinstance(_json_loads(head), dict)
        except (ValueError, RecursionError):  # an object over several lines
            one_per_line = False
        if one_per_line:
            yield from _iter_jsonl(path, on_bad_line)
            return
    elif opening != b"[":
        raise SourceError(f"{path}:{number}: expected a JSON array of objects, a JSON object, or one object per "
                          f"line; the file's first line with text starts with "
                          f"{head.strip()[:40].decode('utf-8', 'replace')!r}")
    data = _read_all(path).removeprefix(b"\xef\xbb\xbf")
    try:
        value = _json_loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SourceError(f"{path}:{line}: not valid UTF-8; expected a UTF-8 JSON file") from None
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}:{e.lineno}: malformed JSON ({json_error(e)}); expected a JSON array "
                          f"of objects") from None
    except RecursionError:
        raise SourceError(f"{path}: JSON nested too deeply to read; expected an array of flat objects") from None
    rows = value if isinstance(value, list) else [value]
    for i, row in enumerate(rows, start=1):
        origin = f"{path}:item {i}"
        if not isinstance(row, dict):
            msg = f"{origin}: expected a JSON object, got {kind_of(row)}"
        elif _lone_surrogate(data, row):
            msg = f"{origin}: a string holds a lone UTF-16 surrogate escape; expected valid Unicode text"
        else:
            yield origin, row
            continue
        if on_bad_line is None:
            raise RecordError(msg)
        on_bad_line(msg)


def _refuse_compressed_columnar(path: Path) -> None:
    suffix = data_suffix(path)
    if suffix in UNCOMPRESSED and path.suffix.lower() != suffix:
        raise SourceError(f"{path}: {UNCOMPRESSED[suffix]}; decompress it first, e.g. with gunzip / unxz / unzstd")


def _parquet_batches(path: Path, size: int, max_bytes: int = BATCH_BYTES) -> Iterator:
    """Record batches of a Parquet file, ``size`` rows at most, fewer where the file's mean row
    (uncompressed, by its metadata) says they would pass ``max_bytes``, read by pyarrow. Not through
    ``datasets``: its streaming reader spends 60-90 us per row (``benchmarks/readers.py``)."""
    import pyarrow.parquet as pq

    if path.stat().st_size == 0:
        return iter(())  # nothing to read, as for an empty file of any other format
    try:
        f = pq.ParquetFile(path)
        meta = f.metadata
        data = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        return f.iter_batches(batch_size=_rows_within(size, max_bytes, meta.num_rows, data))
    except Exception as e:  # not Parquet, a broken footer: Arrow's message names the cause, not the file
        raise SourceError(f"{path}: could not be read as Parquet ({type(e).__name__}: {e})") from None


CSV_FIELD_LIMIT = 2 ** 31 - 1  # characters in one CSV cell (the csv module's default, 128 KiB, refuses long texts)


def _iter_csv(path: Path, on_bad_line: Callable[[str], None] | None = None) -> Iterator[tuple[str, dict]]:
    """Rows of a CSV (standard dialect: comma, double quotes) as ``{column: text or None}``.

    - The header is the first row that is not blank (a UTF-8 byte-order mark is dropped); it must
      name every column, each once. Blank rows (empty, or spaces only) are no rows.
    - Data rows are numbered from 1 (``row K``): a quoted cell may span lines, so a row number is
      not a line number, and errors about a row give both. Lines end at ``\\n``, ``\\r\\n`` or a lone
      ``\\r`` (as the csv module reads a file's lines; a lone ``\\r`` inside a quoted cell too).
    - Every cell is its text as written (no guessing of ``NA`` or numbers: a reward is converted
      from its text like any other); an empty cell is None, a field that is there but null. A row
      with fewer fields than the header lacks the last columns (the field error names them).
    - A row with more fields than the header, or with bytes that are not UTF-8, is a bad row:
      raised, or given to ``on_bad_line`` and skipped alone. Text after a closing quote
      (``"a"b``) is kept as written around the quotes (``ab``), as spreadsheet programs read it:
      refusing it would lose the line's place in a quoted cell that goes on over later lines.
    - A file that ends inside a quoted cell is a SourceError naming the line its row starts on:
      everything after an unclosed quote would be one cell, so no row after it can be trusted.
    """
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    header: list[str] | None = None
    header_line = row = 0
    with _open_compressed(path) as raw, _unreadable(path), \
            io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        lines = _Lines(f)
        reader = csv.reader(lines)
        start = 1  # the line the next record starts on
        while True:
            line = start
            try:
                fields = next(reader, None)
            except csv.Error as e:  # a cell past the csv module's field limit
                raise SourceError(f"{path}:{line}: not readable as CSV ({e})") from None
            if fields is None:
                return
            if lines.ended:  # the reader asked for more lines inside this row: a quote never closed
                raise SourceError(f"{path}:{line}: the file ends inside a quoted cell of the row that starts on this "
                                  f"line; expected every opening \" to be closed (a quote inside a quoted cell is "
                                  f"written \"\")")
            start = reader.line_num + 1
            if not "".join(fields).strip():
                continue
            if header is None:
                header, header_line = fields, line
                _check_csv_header(path, header, header_line)
                continue
            row += 1
            problem = _bad_csv_row(fields, header, header_line)
            if problem is None:
                yield f"{path}:row {row} (line {line})", {k: v or None for k, v in zip(header, fields)}
                continue
            message = f"{path}:row {row} (line {line}): {problem}"
            if on_bad_line is None:
                raise RecordError(message)  # as the other readers' bad records: skippable, and the CLI says so
            on_bad_line(message)


class _Lines:
    """The lines of a text file for ``csv.reader``, noting when they run out (``ended``): the
    reader asks past the last line only while a quoted cell is still open."""

    def __init__(self, f):
        self.lines, self.ended = iter(f), False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        try:
            return next(self.lines)
        except StopIteration:
            self.ended = True
            raise


def _check_csv_header(path: Path, header: list[str], line: int) -> None:
    for j, name in enumerate(header, start=1):
        if _undecodable(name):
            raise SourceError(f"{path}:{line}: the header is not valid UTF-8; expected a UTF-8 CSV")
        if not name.strip():
            raise SourceError(f"{path}:{line}: header column {j} has no name; expected a name for every "
                              f"column (a trailing comma adds an unnamed one)")
        if j > 1 and name in header[:j - 1]:
            raise SourceError(f"{path}:{line}: header names {name!r} twice (columns {header.index(name) + 1} "
                              f"and {j}); expected each column named once")


def _bad_csv_row(fields: list[str], header: list[str], header_line: int) -> str | None:
    """What makes a CSV row unreadable, or None."""
    if len(fields) > len(header):
        return (f"{len(fields)} fields, but the header (line {header_line}) names {len(header)}; expected one "
                f"field per header name (a trailing comma adds an empty field)")
    if any(map(_undecodable, fields)):
        return "not valid UTF-8; expected a UTF-8 CSV"
    return None


def _undecodable(text: str) -> bool:
    """``text`` holds bytes that were not UTF-8 (read with ``errors="surrogateescape"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def hub_dataset(spec: str) -> tuple[hub.DatasetId, str]:
    """A hub dataset id (:func:`rcond.hub.parse_dataset_id`) and the commit its revision points to;
    a SourceError where it is no such id, the hub cannot be reached, or the hub has no such
    dataset or revision."""
    try:
        dataset = hub.parse_dataset_id(spec)
    except ValueError as e:
        raise SourceError(f"{spec}: no such file or directory, and {e}") from None
    unreachable = hub.unreachable()
    if unreachable:
        raise SourceError(f"{spec}: not a file or folder here, and the hub, where it would be a dataset, cannot be "
                          f"reached ({unreachable}); check the path, or the network")
    try:
        return dataset, hub.dataset_commit(dataset.repo, dataset.revision)
    except hub.request_errors() as e:  # no such repository or revision, a gated one, offline mode
        revision = f" at revision {dataset.revision!r}" if dataset.revision else ""
        raise SourceError(f"{spec}: not a file or folder here, and the hub has no dataset {dataset.repo!r}{revision} "
                          f"that can be read from here ({type(e).__name__}: {e})") from None


def _iter_hub(spec: str) -> Iterator[tuple[str, dict]]:
    dataset, commit = hub_dataset(spec)
    i = 0
    try:
        rows = _load_streaming(dataset.repo, name=dataset.config, data_dir=dataset.folder, split=dataset.split,
                               revision=commit)
        for i, row in enumerate(rows, start=1):  # rows from 1, as in a file
            yield f"{spec}:row {i}", row
    except hub.request_errors() as e:  # an unknown split or folder, a broken stream
        if i > 0:
            raise SourceError(f"{spec}: reading the hub dataset failed after row {i} "
                              f"({type(e).__name__}: {e})") from None
        raise SourceError(f"{spec}: not a file or folder here, and not readable as a hub dataset "
                          f"({type(e).__name__}: {e})") from None


SAVED_DATASET, SAVED_DICT = "state.json", "dataset_dict.json"  # what datasets' save_to_disk leaves in a folder


def saved_dataset(spec: str) -> tuple[Path, str | None] | None:
    """``(folder, split)`` when ``spec`` names a dataset saved by ``datasets``' ``save_to_disk``:
    a folder holding one ``Dataset`` (``split`` None), or a ``DatasetDict``, either whole
    (``DIR``: ``split`` None, its ``train`` split is read, as for a hub id) or one split of it
    (``DIR:SPLIT``). None for anything else."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return (path, None) if (path / SAVED_DATASET).is_file() or (path / SAVED_DICT).is_file() else None
    folder, colon, split = spec.rpartition(":")
    folder_path = Path(folder).expanduser()
    if colon and split and not path.exists() and folder_path.is_dir() and (
            (folder_path / SAVED_DICT).is_file() or (folder_path / SAVED_DATASET).is_file()):
        return folder_path, split
    return None


def _saved_rows(folder: Path, split: str | None) -> tuple[Path, str | None]:
    """The folder of a saved dataset (:func:`saved_dataset`) that its rows are read from, and the
    split read: a DatasetDict's split folder (its ``train`` split when none is named), or the
    folder itself (split None) for a single Dataset."""
    if (folder / SAVED_DICT).is_file():
        name = split or "train"
        return folder / name, name
    return folder, None


def _rows_within(size: int, max_bytes: int, rows: int, nbytes: int) -> int:
    """Rows to a batch: at most ``size``, and as many as ``rows`` rows of ``nbytes`` bytes hold in
    ``max_bytes`` by their mean size; at least one."""
    return max(1, min(size, max_bytes * rows // max(1, nbytes)))


def arrow_batches(spec: str, size: int = ARROW_BATCH, max_bytes: int = BATCH_BYTES
                  ) -> "Iterator[tuple[str, int, object]] | None":
    """For an input held in Arrow (a Parquet file, an ``.arrow`` file, a dataset saved by
    ``save_to_disk``): ``(where, number of its first row, pyarrow RecordBatch of at most size
    rows, fewer where their mean size passes max_bytes)`` for each batch, rows numbered from 1
    (across the shards of a saved dataset; its rows are named ``DIR:row N``, or ``DIR:SPLIT:row N``
    for a split of a DatasetDict). None for any other input. Arrow files are memory-mapped;
    nothing is copied or held beyond a batch."""
    saved = saved_dataset(spec)
    if saved is not None:
        return _saved_batches(*saved, spec, size, max_bytes)
    path = Path(spec).expanduser()
    kind = ROW_SUFFIXES.get(data_suffix(path))
    if kind not in ("parquet", "arrow") or not path.is_file() or path.suffix.lower() != data_suffix(path):
        return None  # a compressed one is refused by the caller
    if kind == "parquet":
        return _numbered(lambda: _parquet_batches(path, size, max_bytes), str(path), str(path), 1, size, max_bytes)
    return _numbered(lambda: _arrow_file_batches(path), str(path), str(path), 1, size, max_bytes)


def arrow_rows(where: str, first: int, batch, on_bad_line: Callable[[str], None] | None = None
               ) -> Iterator[tuple[str, dict]]:
    """``(origin, row)`` for each row of a batch from :func:`arrow_batches`, as plain Python values
    (a list of structs -> a list of dicts). A row with a string that is not UTF-8 (Arrow checks
    only when it is read out) is a bad row named by its field: raised, or given to ``on_bad_line``
    and skipped alone, as a JSON line that is not UTF-8."""
    try:
        rows = batch.to_pylist()
    except UnicodeDecodeError:
        rows = None
    for j in range(batch.num_rows):
        origin = f"{where}:row {first + j}"
        if rows is not None:
            yield origin, rows[j]
            continue
        row = {}
        for name, column in zip(batch.schema.names, batch.columns):
            try:
                row[name] = column[j].as_py()
            except UnicodeDecodeError as e:
                message = (f"{origin}: field {name!r} is not valid UTF-8 (byte {e.start + 1} of the value); "
                           f"expected UTF-8 text")
                if on_bad_line is None:
                    raise RecordError(message) from None
                on_bad_line(message)
                break
        else:
            yield origin, row


def _numbered(open_batches: Callable[[], Iterator], where: str, file: str, first: int, size: int,
             max_bytes: int = BATCH_BYTES) -> Iterator:
    """``(where, first row number, batch)`` for the batches ``open_batches()`` gives, each cut to
    ``size`` rows, or fewer where their mean size passes ``max_bytes``; an error while reading them
    is a SourceError naming ``file``."""
    import pyarrow as pa

    i = first - 1
    try:
        for batch in open_batches():
            names = batch.schema.names
            if len(set(names)) < len(names):  # a row read out as a dict would keep the last of them
                twice = next(n for n in names if names.count(n) > 1)
                raise SourceError(f"{file}: column {twice!r} appears {names.count(twice)} times; expected each "
                                  f"column name once (rows are read by column name); rename or drop the others")
            rows = _rows_within(size, max_bytes, batch.num_rows, batch.nbytes)
            for start in range(0, batch.num_rows, rows):
                piece = batch.slice(start, rows)
                yield where, i + 1, piece
                i += piece.num_rows
    except SourceError:
        raise
    except (OSError, ValueError, pa.ArrowException) as e:  # a file damaged past its header
        raise SourceError(f"{file}: reading failed after row {i - first + 1} ({type(e).__name__}: {e})") from None


def _saved_batches(folder: Path, split: str | None, spec: str, size: int, max_bytes: int) -> Iterator:
    """The batches of a dataset saved by ``save_to_disk`` (:func:`saved_dataset`): those of the
    Arrow shards its ``state.json`` lists, in order (:func:`_arrow_file_batches`). Read so rather
    than with ``datasets.load_from_disk``, which restores the format the dataset was saved with
    and so imports torch for one saved with ``set_format("torch")``."""
    rows_folder, name = _saved_rows(folder, split)
    if name is not None:
        splits = _saved_json(folder / SAVED_DICT, "splits", spec)
        if name not in splits:
            how = f"no split {name!r}" if split else f"a saved DatasetDict without a 'train' split; name one as {folder}:SPLIT"
            raise SourceError(f"{spec}: {how}; its splits: {', '.join(map(str, splits))}")
    elif split is not None:
        raise SourceError(f"{spec}: {folder} holds one saved dataset, not a DatasetDict with splits; give it as {folder}")
    where = spec if name is None else f"{folder}:{name}"
    state = rows_folder / SAVED_DATASET
    files = _saved_json(state, "_data_files", spec)
    try:
        shards = [rows_folder / f["filename"] for f in files]
    except (TypeError, KeyError):
        raise SourceError(f"{state}: '_data_files' is not a list of {{\"filename\": ...}}; expected "
                          f"the state.json of datasets' save_to_disk") from None
    rows = 0
    for shard in shards:
        if not shard.is_file():
            raise SourceError(f"{shard}: missing; {state} lists it as a shard of the saved dataset")
        for entry in _numbered(lambda shard=shard: _arrow_file_batches(shard), where, str(shard), rows + 1, size,
                               max_bytes):
            rows += entry[2].num_rows
            yield entry


def _saved_json(path: Path, key: str, spec: str) -> list:
    """The list under ``key`` in a JSON file ``save_to_disk`` wrote, or a SourceError naming it."""
    try:
        value = json.loads(path.read_bytes()).get(key)
    except (ValueError, AttributeError, OSError) as e:
        raise SourceError(f"{path}: not readable as the JSON datasets' save_to_disk writes ({e})") from None
    if not isinstance(value, list):
        raise SourceError(f"{path}: no list {key!r}; expected the JSON datasets' save_to_disk writes (given as {spec})")
    return value


def _arrow_file_batches(path: Path) -> Iterator:
    """Record batches of one Arrow IPC file as it holds them, memory-mapped: the streaming format
    ``datasets`` writes (a ``save_to_disk`` shard, a cache file), or the file format (Feather v2)."""
    import pyarrow as pa

    if path.stat().st_size == 0:
        return iter(())
    try:
        source = pa.memory_map(str(path))
        try:
            return pa.ipc.open_stream(source)
        except pa.ArrowInvalid as stream_error:
            try:
                whole = pa.ipc.open_file(source)
            except pa.ArrowInvalid:
                raise stream_error from None  # the format datasets writes: its complaint is the one to show
            return (whole.get_batch(i) for i in range(whole.num_record_batches))
    except (OSError, ValueError, pa.ArrowException) as e:
        raise SourceError(f"{path}: could not be read as an Arrow file (the IPC format datasets writes) "
                          f"({type(e).__name__}: {e})") from None


def _documents(sources: Iterable[tuple[str, Callable[[], bytes]]], on_bad_line) -> Iterator[tuple[str, str]]:
    """(origin, read its bytes) per plain-text document -> (origin, text). A document that is not
    UTF-8 is named with the line and byte where it breaks, and raised, or given to ``on_bad_line``
    (it is one record, as a JSON line is); so is one that cannot be read (a damaged ``.txt.gz``, a
    zip member whose CRC does not match)."""
    for origin, read in sources:
        try:
            data = read()
        except SourceError as e:
            if on_bad_line is None:
                raise RecordError(str(e)) from None
            on_bad_line(str(e))
            continue
        try:
            text = data.decode("utf-8").removeprefix("\ufeff")  # a byte-order mark is no text to train on
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            byte = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
            msg = f"{origin}:{line}: not valid UTF-8 (byte {byte} of the line); expected UTF-8 text"
            if on_bad_line is None:
                raise RecordError(msg) from None
            on_bad_line(msg)
            continue
        yield origin, text


def _text_files(folder: Path, on_ignored: Callable[[str], None] | None = None) -> list[Path]:
    """The documents of a folder: its .txt files (any case: .TXT too; compressed too: .txt.gz) at
    any depth (not folders named so, not broken links, not hidden ones). Every other file that is
    not hidden goes to ``on_ignored``."""
    files = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or _hidden(p.relative_to(folder).as_posix()):
            continue
        if data_suffix(p) == ".txt":
            files.append(p)
        elif on_ignored is not None:
            on_ignored(str(p))
    return files


def _hidden(name: str) -> bool:
    """A name no one means as a document: hidden (``.DS_Store``, an editor's ``.~lock.a.txt#``) or
    below a hidden folder, or the resource forks a macOS zip carries (``__MACOSX/``)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/"))


def data_files_hint(folder: Path) -> str:
    """For a folder that is read as documents: the files in it that rcond reads as rows, which are
    inputs of their own (a copy of a hub repository holds a file per split), as a hint; else ''."""
    not_documents: list[str] = []
    _text_files(folder, not_documents.append)  # the files a folder input passes over, hidden ones aside
    found = [Path(p).relative_to(folder).as_posix() for p in not_documents if data_suffix(Path(p)) in ROW_SUFFIXES]
    if not found:
        return ""
    named = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    return (f"; it holds {len(found)} data file(s) of rows ({named}), which a folder input does not read: give the "
            f"files you mean as inputs (e.g. {folder / found[0]})")


def _iter_text_files(folder: Path, on_bad_line=None, on_ignored=None) -> Iterator[tuple[str, str]]:
    files = _text_files(folder, on_ignored)
    if not files:
        raise SourceError(f"{folder}: folder holds no .txt files, and is no dataset saved by datasets' save_to_disk "
                          f"(it has no {SAVED_DATASET} or {SAVED_DICT}){data_files_hint(folder)}")
    yield from _documents(((str(p), lambda p=p: _read_all(p)) for p in files), on_bad_line)


def _iter_zip(path: Path, on_bad_line=None, on_ignored=None) -> Iterator[tuple[str, str]]:
    try:
        with zipfile.ZipFile(path) as zf:
            members = sorted(n for n in zf.namelist() if not n.endswith("/") and not _hidden(n))
            is_text = {n: data_suffix(PurePosixPath(n)) == ".txt" for n in members}
            names = [n for n in members if is_text[n]]
            for n in members:
                if on_ignored is not None and not is_text[n]:
                    on_ignored(f"{path}!{n}")
            if not names:
                raise SourceError(f"{path}: archive holds no .txt files")
            yield from _documents(((f"{path}!{n}", lambda n=n: _zip_member(zf, path, n)) for n in names), on_bad_line)
    except zipfile.BadZipFile as e:  # not a zip, cut short, or a member whose CRC does not match
        raise SourceError(f"{path}: not a readable zip archive ({e})") from None


def _zip_member(zf: zipfile.ZipFile, path: Path, name: str) -> bytes:
    """One member's bytes, decompressed if its name says so (``a.txt.gz``); an encrypted member,
    or one compressed by a method the standard library cannot undo (Deflate64, say), is an error
    naming it."""
    try:
        data = zf.read(name)
    except zipfile.BadZipFile as e:
        raise SourceError(f"{path}!{name}: cannot be extracted ({e}); expected an intact member (the archive is "
                          f"damaged)") from None
    except (zlib.error, EOFError, lzma.LZMAError, OSError) as e:  # OSError: bz2's "Invalid data stream"
        raise SourceError(f"{path}!{name}: cannot be extracted ({str(e) or 'cut short'}); expected intact compressed "
                          f"data (the archive is damaged)") from None  # EOFError: data that ends early, no message
    except (RuntimeError, NotImplementedError) as e:
        raise SourceError(f"{path}!{name}: cannot be extracted ({e}); expected an unencrypted member stored, "
                          f"deflated, bzip2- or lzma-compressed") from None
    if not name.lower().endswith(COMPRESSED):  # the common case, without a Path made per member
        return data
    member = Path(f"{path}!{name}")
    with _decompressing(io.BytesIO(data), member.suffix) as f, _unreadable(member):  # a .txt.gz member
        return f.read()


def file_sha256(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes, read in 1 MiB chunks."""
    return "sha256:" + _hashed(hashlib.sha256(), path).hexdigest()


def _hashed(h, path: str | Path):
    """``h`` updated with a file's bytes, read in 1 MiB chunks."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def fingerprint(spec: str) -> str:
    """sha256 of a file's bytes, of a folder's .txt files, or of the files of a saved dataset (the
    split read, for a DatasetDict); a hub id by the dataset it names at the commit it is read at
    (``hub:OWNER/NAME@COMMIT[/FOLDER]:[CONFIG:]SPLIT``)."""
    saved = saved_dataset(spec)
    path = Path(spec).expanduser()
    if saved is not None:
        folder, _ = _saved_rows(*saved)
        return _files_sha256(folder, [p for p in sorted(folder.rglob("*"))
                                      if p.is_file() and not _hidden(p.relative_to(folder).as_posix())])
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        if not _is_hub_id(spec):  # a missing file: nothing to ask the hub
            raise SourceError(f"{spec}: no such file or directory")
        dataset, commit = hub_dataset(spec)
        return f"hub:{dataset.name(commit)}"
    return _files_sha256(path, _text_files(path))


def _files_sha256(folder: Path, files: list[Path]) -> str:
    """``sha256:<hex>`` of files below ``folder``: each one's name relative to it, then its bytes."""
    h = hashlib.sha256()
    for p in files:
        h.update(os.fsencode(p.relative_to(folder)))  # the name's bytes, UTF-8 or not
        _hashed(h, p)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------- field access
def kind_of(value) -> str:
    """A value's kind in JSON words (``null``, ``number``...), else its Python type (a Parquet
    column may hold bytes or timestamps)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({value!r:.40})"
    if isinstance(value, str):
        return f"a string ({value!r:.40})"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _field(row: dict, name: str, origin: str, *, optional: bool = False):
    """``row[name]``; an absent or null field is None when ``optional``, else an error that says which."""
    value = row.get(name)
    if value is not None or optional:
        return value
    if name in row:  # JSON null, or an empty cell of a CSV / Parquet column
        raise SourceError(f"{origin}: field {name!r} is null; expected a value")
    raise SourceError(f"{origin}: missing field {name!r}; fields present: {sorted(row)}")


def _text(row: dict, name: str, origin: str, optional: bool = False) -> str | None:
    """The string in field ``name``; with ``optional``, None where the field is absent or null."""
    value = _field(row, name, origin, optional=optional)
    if not isinstance(value, str) and not (optional and value is None):
        raise SourceError(f"{origin}: field {name!r} must be a string, got {kind_of(value)}{_chat_hint(value)}")
    return value


def _chat_hint(value) -> str:
    """For a list of chat messages (``{"role", "content"}`` objects, as conversational preference data
    holds them): what rcond reads instead, which has no chat template to render them with."""
    if not (isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m
                                                         for m in value)):
        return ""
    return (" of chat messages ({role, content}); rcond reads text, with no chat template: give the text itself "
            "(for a pair, each side's response with the prompt in its own field, or whole dialogues in the "
            "HH-RLHF convention), or a conversation as --format dialog turns")


def _reward(value, name: str, origin: str) -> float:
    if isinstance(value, bool) or (isinstance(value, str) and ("_" in value or not value.isascii())):
        # float() also reads "1_000" and other scripts' digits ("１２", "١٢")
        raise SourceError(f"{origin}: {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise SourceError(f"{origin}: {name} must be a finite number, got an integer too large for a float") from None
    except (TypeError, ValueError):
        raise SourceError(f"{origin}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        beyond = f"beyond the float range, +-{sys.float_info.max:.4g}"
        if isinstance(value, str):  # as written: '1e400' is read as inf
            why = f" ({beyond})" if math.isinf(number) and "inf" not in value.lower() else ""
        else:  # a JSON reader gives inf for Infinity and for 1e400 alike
            why = f" (Infinity, or a number {beyond})" if math.isinf(number) else ""
        raise SourceError(f"{origin}: {name} must be a finite number, got {value!r}{why}")
    return number


INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad"  # zero-width space/joiners, word joiner, BOM, soft hyphen


def is_blank(text: str) -> bool:
    """Nothing but whitespace and invisible characters: an empty text to a reader, and to the model."""
    head = text[:1]
    if head and not head.isspace() and head not in INVISIBLE:  # the usual case, without copying the text
        return False
    stripped = text.strip()
    while stripped and (stripped[0] in INVISIBLE or stripped[-1] in INVISIBLE):
        stripped = stripped.strip(INVISIBLE).strip()
    return not stripped


def _nonempty(text: str, what: str, origin: str) -> str:
    if is_blank(text):
        raise SourceError(f"{origin}: empty {what}" + ("" if not text.strip() else " (only invisible characters)"))
    return text


# ---------------------------------------------------------------------------- converters
def split_hh(dialogue: str, origin: str, prompt_field: str = "prompt") -> tuple[str, str]:
    """HH-RLHF dialogue -> (prompt through the last '\\n\\nAssistant:', the final response).
    ``prompt_field``: the field that would have given the prompt instead, for the error."""
    cut = dialogue.rfind(HH_ASSISTANT)
    if cut < 0:
        crlf = " (this one breaks lines with \\r\\n; convert them to \\n)" if "\r\n\r\nAssistant:" in dialogue else ""
        raise SourceError(f"{origin}: no '\\n\\nAssistant:' turn in the dialogue{crlf}, and no {prompt_field!r} "
                          f"field (or a null one); expected the HH-RLHF convention or the prompt in {prompt_field!r}")
    cut += len(HH_ASSISTANT)
    return dialogue[:cut], dialogue[cut:]


def pairs_records(row: dict, origin: str, f: FieldNames, scored: bool) -> list[Record]:
    chosen, rejected = _text(row, f.chosen, origin), _text(row, f.rejected, origin)
    prompt = _text(row, f.prompt, origin, optional=True)
    if prompt is None:
        prompt_c, chosen = split_hh(chosen, origin + " (chosen)", f.prompt)
        prompt_r, rejected = split_hh(rejected, origin + " (rejected)", f.prompt)
    else:
        prompt_c = prompt_r = prompt
    _nonempty(chosen, "chosen response", origin)
    _nonempty(rejected, "rejected response", origin)
    if scored:  # the scorer's rewards replace any scores: they are not read
        cs = rs = None
    else:
        cs = _field(row, f.chosen_score, origin, optional=True)
        rs = _field(row, f.rejected_score, origin, optional=True)
    if (cs is None) != (rs is None):
        raise SourceError(f"{origin}: give both {f.chosen_score!r} and {f.rejected_score!r} or neither")
    out = []
    for prompt_i, resp, score, side, name in ((prompt_c, chosen, cs, "top", f.chosen_score),
                                              (prompt_r, rejected, rs, "bottom", f.rejected_score)):
        if scored:
            head = Part(prompt_i, False, rtg=0.0)  # placeholder: the scorer fills it in
        elif score is not None:
            head = Part(prompt_i, False, rtg=_reward(score, name, origin))
        else:
            head = Part(prompt_i, False, fixed_bin=side)
        out.append(Record([head, Part(resp, True)], "on", f"{origin} ({'chosen' if side == 'top' else 'rejected'})"))
    return out


def scored_record(row, origin: str, f: FieldNames, scored: bool) -> Record:
    if isinstance(row, str):  # a plain document: the whole text is the response
        if not scored:
            raise SourceError(f"{origin}: a plain text document has no reward; use --score-with or --format text")
        return Record([Part("", False, rtg=0.0), Part(_nonempty(row, "document", origin), True)], "on", origin)
    name = f.response if f.response in row else f.text
    if row.get(f.response) is None and row.get(f.text) is not None:  # "response" null (an empty CSV cell), "text" given
        name = f.text
    if name not in row:
        either = f"{f.response!r}" + (f" (or {f.text!r})" if f.text != f.response else "")
        raise SourceError(f"{origin}: missing field {either}; fields present: {sorted(row)}")
    response = _nonempty(_text(row, name, origin), "response", origin)
    prompt = _text(row, f.prompt, origin, optional=True) or ""
    reward = 0.0 if scored else _reward(_field(row, f.reward, origin), f.reward, origin)
    return Record([Part(prompt, False, rtg=reward), Part(response, True)], "on", origin)


def dialog_record(row: dict, origin: str, f: FieldNames, scored: bool, gamma: float) -> Record:
    turns = _field(row, f.turns, origin)
    if not isinstance(turns, list) or not turns:
        got = "an empty list" if isinstance(turns, list) else kind_of(turns)
        raise SourceError(f"{origin}: field {f.turns!r} must be a non-empty list of turns, got {got}")
    parts: list[Part] = []
    rewards: list[float | None] = []
    for j, turn in enumerate(turns, start=1):
        where = f"{origin} turn {j}"
        if not isinstance(turn, dict):
            raise SourceError(f"{where}: expected an object with 'role' and 'content'")
        role = _field(turn, "role", where)
        content = _nonempty(_text(turn, "content", where), "content", where)
        if role == "assistant":
            r = None if scored else turn.get(f.reward)  # the scorer's rewards replace the turns' own: not read
            rewards.append(None if r is None else _reward(r, f.reward, where))
            parts.append(Part(content, True, rtg=0.0))
        elif role in ("user", "system"):
            if not scored and turn.get(f.reward) is not None:
                raise SourceError(f"{where}: a {role} turn carries a {f.reward!r}; rewards belong to assistant turns "
                                  f"(the reward-to-go conditions what the model says)")
            parts.append(Part(content, False))
        else:
            raise SourceError(f"{where}: role must be 'user', 'system' or 'assistant', got {role!r}")
    if not rewards:
        raise SourceError(f"{origin}: dialog has no assistant turn; expected at least one")
    if not scored:
        if all(r is None for r in rewards):
            raise SourceError(f"{origin}: no assistant turn carries a {f.reward!r}; give rewards or --score-with")
        set_dialog_rtg(parts, [0.0 if r is None else r for r in rewards], gamma, origin)
    return Record(parts, "on", origin)


def _at_records(e: ScorerError, batch: list[Record], texts_per_record: list[int]) -> ScorerError:
    """A scorer's error about some of the texts of ``batch``, named by the records they came from
    (``in.jsonl:2500``, or ``in.jsonl:2305 to in.jsonl:2560`` for a failed call) instead of by the
    texts' positions in the scorer call."""
    if e.texts is None:
        return e
    ends = list(itertools.accumulate(texts_per_record))  # [R] texts up to and including each record
    first, last = (batch[bisect.bisect_right(ends, t)].origin for t in e.texts)
    return ScorerError(f"{first if first == last else f'{first} to {last}'}: {e.reason}")


def reward_to_go(rewards: list[float], gamma: float) -> list[float]:
    """R_t = r_t + gamma * R_{t+1}, computed right to left."""
    out, acc = [0.0] * len(rewards), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        acc = rewards[t] + gamma * acc
        out[t] = acc
    return out


def _trained_turns(parts: list[Part]) -> list[int]:
    """The numbers (from 1) of a dialog's assistant turns, one part per turn."""
    return [j for j, p in enumerate(parts, start=1) if p.trainable]


def set_dialog_rtg(parts: list[Part], rewards: list[float], gamma: float, origin: str) -> None:
    """The reward-to-go of each assistant turn (the trainable parts, one part per turn); a sum
    beyond float range is an error naming the turn (numbered from 1), not an infinite reward."""
    for j, rtg in zip(_trained_turns(parts), reward_to_go(rewards, gamma)):
        if not math.isfinite(rtg):
            raise SourceError(f"{origin} turn {j}: the reward-to-go of this turn overflows a float ({rtg}); "
                              f"expected rewards whose discounted sum stays below 1.8e308 in magnitude")
        parts[j - 1].rtg = rtg


def text_record(row, origin: str, f: FieldNames) -> Record:
    text = row if isinstance(row, str) else _text(row, f.text, origin)
    return Record([Part(_nonempty(text, "document", origin), True)], "off", origin)


# ---------------------------------------------------------------------------- scoring
def _single_response(record: Record) -> bool:
    """A prompt + response record (scored, pairs), whose RTG sits on the prompt part; a dialog puts
    it on each assistant turn instead, even a dialog of one user and one assistant turn."""
    parts = record.parts
    return len(parts) == 2 and not parts[0].trainable and parts[1].trainable and parts[1].rtg is None


def score_targets(record: Record) -> list[str]:
    """The texts a scorer must score for a record: the conditioned responses, in order."""
    if _single_response(record):
        return [record.parts[1].text]
    return [p.text for p in record.parts if p.trainable]


def _scored_text_at(record: Record, k: int) -> str:
    """Where the ``k``-th of a record's :func:`score_targets` is: the record, or for a dialog the
    record and its turn."""
    if _single_response(record):
        return record.origin
    return f"{record.origin} turn {_trained_turns(record.parts)[k]}"


def apply_scores(record: Record, scores: list[float], gamma: float) -> None:
    if _single_response(record):
        record.parts[0].rtg, record.parts[0].fixed_bin = float(scores[0]), None
    else:
        set_dialog_rtg(record.parts, list(scores), gamma, record.origin)


# ---------------------------------------------------------------------------- the reader
def _check_inputs(inputs: list[str]) -> None:
    """Refuse an empty input path (it would read the current directory) and inputs whose records
    would be read twice: one file given twice (by another path, a link, a hard link), one split of a
    saved dataset given twice (``DIR`` and ``DIR:train``), one hub dataset given twice (``o/n`` and
    ``o/n:train``), a file or folder of documents inside a folder that is given too, or a ``.arrow``
    shard of a saved dataset that is given too."""
    seen: dict[object, str] = {}
    folders: dict[str, list[tuple[Path, str]]] = {"documents": [], "rows": []}  # text folders, saved datasets' rows
    saved_specs: set[str] = set()
    for spec in inputs:
        if not spec.strip():
            raise SourceError("an input path is empty; give a file, a folder or a hub dataset id")
        path = Path(spec).expanduser()
        _refuse_compressed_columnar(path)
        saved = saved_dataset(spec)
        if saved is not None:  # the folder its rows are read from
            path, _ = _saved_rows(*saved)
            saved_specs.add(spec)
        if not path.exists():  # a hub id (one dataset however it is written), or a missing file reported when read
            try:
                key: object = hub.parse_dataset_id(spec) if _is_hub_id(spec) else spec
            except ValueError:  # reported when it is read
                key = spec
        else:
            st = path.stat()
            key = (st.st_dev, st.st_ino)
            if path.is_dir():
                folders["rows" if saved else "documents"].append((path.resolve(), spec))
        if key in seen:
            raise SourceError(f"{spec}: the same input as {seen[key]}, also given; its records would be read twice")
        seen[key] = spec
    for spec in inputs:
        path = Path(spec).expanduser()
        what = (None if spec in saved_specs else "rows" if data_suffix(path) == ".arrow" else
                "documents" if path.is_dir() or data_suffix(path) == ".txt" else None)  # what a folder input reads
        inner = path.resolve()
        for folder, folder_spec in folders.get(what, []):
            if folder in inner.parents:
                raise SourceError(f"{spec}: inside the folder {folder_spec}, also given; its {what} would be read twice")


READ_FIELDS = {"text": ["text"], "scored": ["prompt", "response", "text", "reward"],
               "pairs": ["prompt", "chosen", "rejected", "chosen_score", "rejected_score"],
               "dialog": ["turns", "reward"]}  # the fields each format reads (dialog: a turn's reward key)
SCORE_FIELDS = ("reward", "chosen_score", "rejected_score")  # replaced by --score-with, so not read


def _check_fields(fmt: str, f: FieldNames, scored: bool) -> None:
    """A field option must name a field the format reads (``--chosen-field`` means nothing to
    ``scored``, ``--reward-field`` nothing beside ``--score-with``), and the fields read must have
    distinct names: one column cannot be both the prompt and the reward. (``response`` and
    ``text`` are alternatives for one role in ``scored``.) A dialog turn's reward key cannot be
    ``role`` or ``content``, the keys every turn has."""
    read = [r for r in READ_FIELDS[fmt] if not (scored and r in SCORE_FIELDS)]
    for role in FieldNames.__dataclass_fields__:
        if _undecodable(getattr(f, role)):
            raise SourceError(f"--{role.replace('_', '-')}-field {getattr(f, role)!r}: not valid UTF-8; expected a "
                              f"field name as the input spells it (in UTF-8)")
        if getattr(f, role) != role and role not in read:
            flag = f"--{role.replace('_', '-')}-field"
            if scored and role in SCORE_FIELDS and role in READ_FIELDS[fmt]:
                raise SourceError(f"{flag}: with --score-with the scorer's rewards replace that field, so it is "
                                  f"not read; drop one of the two")
            raise SourceError(f"{flag}: format {fmt!r} reads no such field (it reads "
                              f"{', '.join(repr(r) for r in read)}); drop the option or change --format")
    if fmt == "dialog" and not scored and f.reward in ("role", "content"):
        raise SourceError(f"--reward-field {f.reward!r}: every turn's {f.reward!r} key holds its "
                          f"{f.reward}; a turn's reward needs a key of its own")
    roles = [r for r in read if not (fmt == "dialog" and r == "reward")]  # a turn's key, not a record's field
    names: dict[str, str] = {}
    for role in roles:
        name = getattr(f, role)
        other = names.get(name)
        if other is not None and {other, role} != {"response", "text"}:
            raise SourceError(f"--{other.replace('_', '-')}-field and --{role.replace('_', '-')}-field both name "
                              f"the field {name!r}; each must name its own field")
        names.setdefault(name, role)


def check_reading(inputs: list[str], fmt: str, fields: FieldNames, *, scored: bool, gamma: float = 1.0,
                  on_error: str = "fail", score_batch: int = 256) -> None:
    """What a :class:`SourceReader` refuses, checked on its own: the CLI calls it before it builds
    a scorer (``scored``: one is asked for), which may load a model in several processes."""
    if fmt not in FORMATS:
        raise SourceError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if on_error not in ("fail", "skip"):
        raise SourceError(f"--on-error must be 'fail' or 'skip', got {on_error!r}")
    if not inputs:
        raise SourceError("no input given")
    if score_batch < 1:
        raise SourceError(f"--score-batch must be at least 1, got {score_batch}")
    if not 0.0 <= gamma <= 1.0:  # also refuses NaN
        raise SourceError(f"--gamma must be a discount in [0, 1], got {gamma!r}")
    if gamma != 1.0 and fmt != "dialog":
        raise SourceError(f"--gamma {gamma:g} discounts reward-to-go across dialog turns; format "
                          f"{fmt!r} has one response per record, so it would change nothing")
    _check_inputs(inputs)
    if fmt in ("pairs", "dialog"):
        for spec in inputs:
            path = Path(spec).expanduser()
            if saved_dataset(spec) is None and (path.is_dir() or path.suffix.lower() == ".zip"
                                                or (path.is_file() and data_suffix(path) == ".txt")):
                raise SourceError(f"{spec}: format {fmt!r} needs JSON/CSV/Parquet rows, not plain-text documents "
                                  f"(.txt files, a folder or a .zip of them); those are read by --format text, or "
                                  f"--format scored with --score-with"
                                  + (data_files_hint(path) if path.is_dir() else ""))
    _check_fields(fmt, fields, scored=scored)
    if scored and fmt == "text":
        raise SourceError("--score-with does not apply to --format text: text documents are always 'off' "
                          "mode and carry no reward; use --format scored to score them")


@dataclass
class ReadLog:
    """What one read of a :class:`SourceReader` reports. Each read writes into the log it started
    with: a read left behind by an interrupt (its thread still in a slow scorer call) cannot add
    to the next read's counts or ``skipped.txt``."""

    skipped: SkipLog  # bad records skipped under --on-error skip (every reason also to skips_to, when set)
    ignored: SkipLog = field(default_factory=SkipLog)  # files of a folder or zip input that are no .txt documents
    same_pairs: int = 0  # pairs read whose chosen and rejected sides are the same text
    split_prompts: int = 0  # pairs read whose two sides' HH dialogues split into different prompts


@dataclass
class SourceReader:
    """Reads inputs of one format into records; optional scorer applied in batches. ``skipped``,
    ``ignored``, ``same_pairs`` and ``split_prompts`` report the latest read (:class:`ReadLog`)."""

    inputs: list[str]
    format: str
    fields: FieldNames = field(default_factory=FieldNames)
    scorer: Callable[[list[str]], list[float]] | None = None  # or a ScorerPool (rcond.scorer_pool), entered
    gamma: float = 1.0
    on_error: str = "fail"
    score_batch: int = 256
    skips_to: Path | None = None  # with --on-error skip: a file for every skipped record's reason (a build's own)

    def __post_init__(self) -> None:
        check_reading(self.inputs, self.format, self.fields, scored=self.scorer is not None, gamma=self.gamma,
                      on_error=self.on_error, score_batch=self.score_batch)
        self._reset_logs()

    def _reset_logs(self) -> ReadLog:
        """A new log for a read that starts now (every skipped record's reason also goes to the
        file ``skips_to`` names, when it is set); the last read's file is closed."""
        if getattr(self, "_log", None) is not None:
            self._log.skipped.close()
        self._log = ReadLog(SkipLog(path=self.skips_to))
        return self._log

    skipped = property(lambda self: self._log.skipped, doc="the latest read's skipped records (ReadLog)")
    ignored = property(lambda self: self._log.ignored, doc="the latest read's files that are no documents")
    same_pairs = property(lambda self: self._log.same_pairs, doc="the latest read's pairs of one text twice")
    split_prompts = property(lambda self: self._log.split_prompts, doc="the latest read's pairs of two prompts")

    def _convert(self, origin: str, row, log: ReadLog) -> list[Record]:
        f, scored = self.fields, self.scorer is not None
        if self.format == "text":
            return [text_record(row, origin, f)]
        if self.format == "scored":
            return [scored_record(row, origin, f, scored)]
        if isinstance(row, str):
            raise SourceError(f"{origin}: format {self.format!r} needs JSON/CSV/Parquet rows, not plain text")
        if self.format == "pairs":
            recs = pairs_records(row, origin, f, scored)
            log.same_pairs += [p.text for p in recs[0].parts] == [p.text for p in recs[1].parts]
            log.split_prompts += recs[0].parts[0].text != recs[1].parts[0].text
            return recs
        return [dialog_record(row, origin, f, scored, self.gamma)]

    def _bad_line(self, log: ReadLog):
        return log.skipped.add if self.on_error == "skip" else None

    def _records(self, rows: Iterable[tuple[str, object]], log: ReadLog) -> Iterator[Record]:
        for origin, row in rows:
            try:
                yield from self._convert(origin, row, log)
            except SourceError as e:
                if self.on_error == "fail":
                    raise RecordError(str(e)) from None
                log.skipped.add(str(e))

    def _scorer(self, score: bool):
        return self.scorer if score else None

    def _scored(self, records: Iterable[Record], scorer, log: ReadLog) -> Iterator[Record]:
        if scorer is None:
            yield from records
            return
        batch: list[Record] = []
        per_round = self.score_batch * getattr(scorer, "workers", 1)  # a pool scores one batch per worker at once
        per_round += per_round % self._per_row()  # a pair's two records in one round
        for rec in records:
            batch.append(rec)
            if len(batch) >= per_round:
                yield from self._score(batch, log)
                batch = []
        if batch:
            yield from self._score(batch, log)

    def _is_jsonl(self, spec: str) -> bool:
        path = Path(spec).expanduser()
        return path.is_file() and ROW_SUFFIXES.get(data_suffix(path)) == "jsonl"

    def batches(self, size: int = JSONL_CHUNK, *, score: bool = True, max_bytes: int | None = None
                ) -> Iterator[PartBatch]:
        """Records in input order as PartBatches of up to ``size`` records (a pairs row gives
        two), fewer where they hold more than about ``max_bytes`` of input (None: ``BATCH_BYTES``,
        4 MiB; of text, where records are read one by one): long documents come fewer to a batch,
        so that what a batch holds, and its encodings, stay bounded however long the documents
        are. Iterating again re-reads the inputs and resets the skip log. ``score=False`` skips
        the scorer (rewards are then placeholders): for reading texts only.

        JSON Lines chunks and batches of Arrow rows (Parquet, ``.arrow``, saved datasets) are read
        column-wise (:mod:`rcond.columnar`) where they can be, else row by row; other inputs row
        by row."""
        import pyarrow as pa

        from .columnar import parse_chunk, parse_table

        log = self._reset_logs()
        scorer = self._scorer(score)
        max_bytes = BATCH_BYTES if max_bytes is None else max_bytes
        read = dict(needs_reward=self.scorer is None, scorer=scorer, score_batch=self.score_batch)
        for spec in self.inputs:
            if self._is_jsonl(spec):
                path = Path(spec).expanduser()
                for first, lines in jsonl_chunks(path, size, max_bytes):
                    yield from self._nonempty(parse_chunk(lines, self.format, self.fields, **read), scorer, log,
                                              lambda: decode_lines(path, first, lines, self._bad_line(log)))
                continue
            arrow = arrow_batches(spec, size, max_bytes)
            if arrow is not None:
                for where, first, rows in arrow:
                    yield from self._nonempty(
                        parse_table(pa.Table.from_batches([rows]), self.format, self.fields, **read), scorer, log,
                        lambda: arrow_rows(where, first, rows, self._bad_line(log)))
                continue
            recs: list[Record] = []
            chars = 0
            rows = iter_rows(spec, self._bad_line(log), log.ignored.add)
            for rec in self._scored(self._records(rows, log), scorer, log):
                recs.append(rec)
                chars += sum(len(p.text) for p in rec.parts)
                if len(recs) >= size or chars >= max_bytes:
                    yield PartBatch.from_records(recs)
                    recs, chars = [], 0
            if recs:
                yield PartBatch.from_records(recs)

    def _nonempty(self, fast: PartBatch | None, scorer, log: ReadLog,
                  rows: Callable[[], Iterable[tuple[str, object]]]):
        """The batch the column-wise path read, or, where it declined (None), the records of
        ``rows()`` read one by one (exact origins, skips); yielded unless it holds no record."""
        if fast is None:
            batch = PartBatch.from_records(list(self._scored(self._records(rows(), log), scorer, log)))
        else:
            batch = fast
            log.same_pairs += batch.same_pairs
            log.split_prompts += batch.split_prompts
        if batch.records:
            yield batch

    def texts(self) -> Iterator[str]:
        """Every part's text, unscored (for training a tokenizer on the inputs)."""
        for batch in self.batches(score=False):
            yield from (t for t in batch.texts if t)

    def __iter__(self) -> Iterator[Record]:
        """Records in input order, one at a time (the line-by-line path; :meth:`batches` is the
        fast one). Iterating again re-reads the inputs and resets the skip log."""
        log = self._reset_logs()
        scorer = self._scorer(True)
        for spec in self.inputs:
            yield from self._scored(self._records(iter_rows(spec, self._bad_line(log), log.ignored.add), log), scorer, log)

    def _score(self, batch: list[Record], log: ReadLog) -> Iterable[Record]:
        targets = [score_targets(r) for r in batch]
        flat = [t for ts in targets for t in ts]
        try:
            scores = scores_in_batches(self.scorer, flat, self.score_batch)
        except ScorerError as e:
            raise _at_records(e, batch, [len(ts) for ts in targets]) from e.__cause__
        ends = list(itertools.accumulate(len(ts) for ts in targets))  # [R] texts up to and including each record
        chunks = [scores[end - len(ts):end] for ts, end in zip(targets, ends)]
        step = self._per_row()
        for r in range(0, len(batch), step):  # a pair's two sides are skipped together, as a bad pair is read
            try:
                for rec, chunk in zip(batch[r:r + step], chunks[r:r + step]):
                    bad = [k for k, s in enumerate(chunk) if not math.isfinite(s)]
                    if bad:
                        raise SourceError(f"{_scored_text_at(rec, bad[0])}: scorer returned a non-finite reward "
                                          f"{chunk[bad[0]]!r}")
                for rec, chunk in zip(batch[r:r + step], chunks[r:r + step]):
                    apply_scores(rec, chunk, self.gamma)
            except SourceError as e:
                if self.on_error == "fail":
                    raise RecordError(str(e)) from None
                log.skipped.add(str(e))
                continue
            yield from batch[r:r + step]

    def _per_row(self) -> int:
        """Records an input row gives: two for a pair (its sides, always together), else one."""
        return 2 if self.format == "pairs" else 1
