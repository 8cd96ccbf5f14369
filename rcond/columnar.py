"""A chunk of JSON Lines, or a batch of Arrow rows -> a :class:`~rcond.sources.PartBatch`, column by column.

The fast path of :mod:`rcond.sources`. The chunk is parsed in one call by Arrow's JSON reader
against an explicit schema of the fields the format reads (any other field is ignored, whatever
its type), then validated a column at a time, and its parts are laid out with numpy. It must give
exactly the records that the line-by-line path (:func:`rcond.sources.decode_lines` and the
format's converter) gives, so it *declines* the chunk (returns ``None``) at the first sign of
anything that path treats specially:

- a non-blank line that does not start with ``{`` (Arrow's reader crashes the process on a
  chunk that opens with ``null``: pyarrow 26, a segmentation fault, so such a chunk never
  reaches it) or does not end with ``}`` (Arrow reads an object across line breaks; see
  :func:`_object_lines`);
- a line that may nest deeper than Python's JSON decoder can follow (more ``{`` and ``[`` than
  half the recursion limit): Arrow reads any depth, even in a field no format reads, but the line
  path calls such a line nested too deeply, and both must say the same;
- Arrow cannot parse it (bad JSON, not an object, a field of another type, a duplicate key, a
  number too big, invalid UTF-8), or it finds a different number of rows than there are
  non-blank lines (two objects on one line);
- a required field is missing or null; a text that is empty or all whitespace and invisible characters;
- a reward or score that is not finite, a pair with only one of its two scores, a scorer that
  returns a non-finite value or the wrong number of values;
- a ``pairs`` dialogue without a ``"\\n\\nAssistant:"`` turn; a ``scored`` row with neither a
  response nor a text.

The caller then decodes that chunk line by line, which raises or skips with the exact line. A
chunk declined for what its scorer returned is scored again on that path, so a slow scorer pays
twice for such a chunk (and only for it): the price of naming the records exactly.
``dialog`` records (nested turns) always take the line-by-line path.

A batch of rows from a Parquet or Arrow file (:func:`parse_table`) is already a table: it is cast
to the same columns and validated the same way, declined as well where a column's type is one the
row-by-row path reads differently, and then read row by row.
"""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as paj

from .scorer_pool import scores_in_batches
from .scorers import ScorerError
from .sources import FIXED_BOTTOM, FIXED_TOP, FieldNames, PartBatch, SourceError, is_blank, split_hh

Scorer = Callable[[list[str]], list[float]]
NESTING_CHECKED = sys.getrecursionlimit() // 2  # brackets per line past which the line path must decide


def parse_chunk(lines: list[bytes], fmt: str, fields: FieldNames, *, needs_reward: bool,
                scorer: Scorer | None = None, score_batch: int = 256) -> PartBatch | None:
    """Records of the ``fmt`` lines as a PartBatch, or None where the line-by-line path must decide.

    ``needs_reward``: rewards/scores come from the rows (no scorer configured); ``scorer``: apply it
    to the responses (None also when a scorer is configured but scoring is not wanted).
    """
    if fmt not in ("scored", "text", "pairs"):
        return None
    names = _columns(fmt, fields, needs_reward)
    rows = _object_lines(lines)
    if rows is None:
        return None
    if rows == 0:
        return _empty()
    schema = pa.schema([(name, pa.float64() if kind == "number" else pa.string()) for name, kind in names.items()])
    data = b"".join(lines)
    if _may_nest_deeply(data, lines, rows):
        return None
    try:  # the line path rejects invalid UTF-8 anywhere in a line; Arrow checks only the fields it reads
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    try:
        table = paj.read_json(pa.py_buffer(data),
                              read_options=paj.ReadOptions(use_threads=False, block_size=1 << 30),
                              parse_options=paj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"))
    except (pa.ArrowInvalid, ValueError):
        return None
    if table.num_rows != rows:
        return None
    return _records(table, fmt, fields, needs_reward, scorer, score_batch)


def parse_table(table: pa.Table, fmt: str, fields: FieldNames, *, needs_reward: bool,
                scorer: Scorer | None = None, score_batch: int = 256) -> PartBatch | None:
    """Records of a table of rows (a batch of a Parquet or Arrow file) as a PartBatch, or None
    where the row-by-row path must decide: for the reasons :func:`parse_chunk` declines a chunk,
    and also when a column the format reads holds a type that path reads otherwise than as a
    string or a number (a reward in strings or booleans, a text in bytes, a decimal, a column
    named twice) or an integer that a float64 cannot hold exactly, or when a string in any column,
    read or not, is not UTF-8: the row path refuses that row, as a JSON line with invalid UTF-8
    anywhere is refused (Arrow checks only when a string is read out). A column that is absent is
    null in every row, as a JSON field that is absent."""
    if fmt not in ("scored", "text", "pairs"):
        return None
    try:
        table.validate(full=True)  # UTF-8 of every string, at several GB/s
    except pa.ArrowInvalid:
        return None
    columns = {}
    for name, kind in _columns(fmt, fields, needs_reward).items():
        target = pa.float64() if kind == "number" else pa.string()
        found = table.schema.get_all_field_indices(name)
        if not found:
            columns[name] = pa.nulls(table.num_rows, target)
            continue
        t = table.schema.field(found[0]).type
        if pa.types.is_dictionary(t):  # a categorical column (pandas writes one so): its values decide
            t = t.value_type
        fits = pa.types.is_floating(t) or pa.types.is_integer(t) if kind == "number" else \
            pa.types.is_string(t) or pa.types.is_large_string(t)
        if len(found) > 1 or not (fits or pa.types.is_null(t)):
            return None
        try:
            columns[name] = table.column(found[0]).cast(target)  # safe: an integer past 2**53 refuses
        except pa.ArrowInvalid:
            return None
    return _records(pa.table(columns), fmt, fields, needs_reward, scorer, score_batch)


def _records(table: pa.Table, fmt: str, fields: FieldNames, needs_reward: bool, scorer: Scorer | None,
             score_batch: int) -> PartBatch | None:
    """A table with a string or float64 column for every field the format reads -> its records."""
    try:  # Arrow checks UTF-8 only when a string is read out
        if fmt == "text":
            return _text(table, fields)
        if fmt == "scored":
            return _scored(table, fields, needs_reward, scorer, score_batch)
        return _pairs(table, fields, needs_reward, scorer, score_batch)
    except UnicodeDecodeError:
        return None


def _object_lines(lines: list[bytes]) -> int | None:
    """The number of non-blank lines, or None if one of them does not open a JSON object with its
    first character and close one with its last (whitespace aside).

    Arrow's reader reads the chunk as one stream of objects, across line breaks. With every line
    so, an object that Arrow finds cannot run on into the next line: a ``}`` and then a ``{`` are
    valid JSON only between two top-level objects (and a line break inside a string is refused).
    So each line holds one object or more, and as many rows as lines means one object per line:
    an object broken over two lines beside a line holding two is not read as three rows."""
    n = len(lines)
    if [line[:1] for line in lines].count(b"{") == n and [line[-2:] for line in lines].count(b"}\n") == n:
        return n  # the usual case: every line opens an object and closes one just before its line break
    rows = 0
    for line in lines:
        line = line.strip()
        if line:
            if line[:1] != b"{" or line[-1:] != b"}":
                return None
            rows += 1
    return rows


def _may_nest_deeply(data: bytes, lines: list[bytes], rows: int) -> bool:
    """Whether a line holds more than ``NESTING_CHECKED`` brackets (``{`` or ``[``, in strings too),
    so that its depth may be past what :func:`json.loads` follows. Counted over the whole chunk
    first (each row opens one object): one pass over the bytes when no line comes close."""
    if data.count(b"{") + data.count(b"[") - rows <= NESTING_CHECKED:
        return False
    return any(line.count(b"{") + line.count(b"[") > NESTING_CHECKED for line in lines)


def _columns(fmt: str, f: FieldNames, needs_reward: bool) -> dict[str, str]:
    if fmt == "text":
        return {f.text: "string"}
    if fmt == "scored":
        out = {f.prompt: "string", f.response: "string", f.text: "string"}
        if needs_reward:
            out[f.reward] = "number"
        return out
    return {f.prompt: "string", f.chosen: "string", f.rejected: "string",
            f.chosen_score: "number", f.rejected_score: "number"}


def _empty() -> PartBatch:
    return PartBatch([], np.zeros(0, bool), np.zeros(0), np.zeros(0, np.int8), np.zeros(0, bool), np.zeros(0, bool))


def _strings(col: pa.ChunkedArray) -> list[str] | None:
    """A required, non-empty string column as a list; None if any value is null or blank."""
    if col.null_count:
        return None
    values = col.to_pylist()
    if any(map(is_blank, values)):
        return None
    return values


def _numbers(table: pa.Table, name: str) -> np.ndarray | None:
    """A required finite number column; None if any value is null or not finite."""
    col = table.column(name)
    if col.null_count:
        return None
    values = col.to_numpy()
    return values if np.isfinite(values).all() else None


def _score(texts: list[str], scorer: Scorer, score_batch: int) -> np.ndarray | None:
    try:
        scores = scores_in_batches(scorer, texts, score_batch)
    except ScorerError:  # the line-by-line path scores the chunk again and names the records it is about
        return None
    values = np.array(scores, dtype=np.float64)
    return values if np.isfinite(values).all() else None


def _layout(texts: list[str], trainable: list[bool], rtg: np.ndarray, fixed: np.ndarray, parts_per_record: int,
            on: bool) -> PartBatch:
    """Records of ``parts_per_record`` parts each; per-part columns given for one record
    (``trainable``) or for all parts (``rtg``, ``fixed``)."""
    P = len(texts)
    n = P // parts_per_record
    start = np.zeros(parts_per_record, dtype=bool)
    start[0] = True
    return PartBatch(texts, np.tile(np.array(trainable, dtype=bool), n), rtg, fixed, np.tile(start, n),
                     np.full(P, on, dtype=bool))


def _text(table: pa.Table, f: FieldNames) -> PartBatch | None:
    texts = _strings(table.column(f.text))
    if texts is None:
        return None
    P = len(texts)
    return _layout(texts, [True], np.full(P, np.nan), np.zeros(P, np.int8), 1, on=False)


def _scored(table: pa.Table, f: FieldNames, needs_reward: bool, scorer: Scorer | None,
            score_batch: int) -> PartBatch | None:
    # as the line path: `response` where it is there and not null, else `text`
    responses = _strings(pc.coalesce(table.column(f.response), table.column(f.text)))
    if responses is None:
        return None
    prompts = table.column(f.prompt).fill_null("").to_pylist()
    if needs_reward:
        reward = _numbers(table, f.reward)
    elif scorer is not None:
        reward = _score(responses, scorer, score_batch)
    else:  # scoring skipped (texts for a tokenizer): placeholders, as the line path leaves them
        reward = np.zeros(len(responses))
    if reward is None:
        return None
    n = len(responses)
    texts: list[str] = [""] * (2 * n)
    texts[0::2], texts[1::2] = prompts, responses
    rtg = np.full(2 * n, np.nan)
    rtg[0::2] = reward
    return _layout(texts, [False, True], rtg, np.zeros(2 * n, np.int8), 2, on=True)


def _pairs(table: pa.Table, f: FieldNames, needs_reward: bool, scorer: Scorer | None,
           score_batch: int) -> PartBatch | None:
    chosen, rejected = table.column(f.chosen), table.column(f.rejected)
    if chosen.null_count or rejected.null_count:
        return None
    chosen, rejected = chosen.to_pylist(), rejected.to_pylist()
    prompt = table.column(f.prompt).to_pylist()
    n = len(chosen)
    prompts_c, prompts_r = list(prompt), list(prompt)
    try:
        for i in (i for i, p in enumerate(prompt) if p is None):  # HH dialogues: split at the last Assistant turn
            prompts_c[i], chosen[i] = split_hh(chosen[i], "")
            prompts_r[i], rejected[i] = split_hh(rejected[i], "")
    except SourceError:
        return None
    if any(map(is_blank, chosen)) or any(map(is_blank, rejected)):
        return None
    cs, rs = table.column(f.chosen_score), table.column(f.rejected_score)
    has_c, has_r = pc.is_valid(cs).to_numpy(zero_copy_only=False), pc.is_valid(rs).to_numpy(zero_copy_only=False)
    cs, rs = cs.to_numpy(zero_copy_only=False), rs.to_numpy(zero_copy_only=False)  # nulls -> NaN
    if needs_reward and ((has_c != has_r).any() or not (np.isfinite(cs[has_c]).all() and np.isfinite(rs[has_r]).all())):
        return None  # the scores are read: the line path names what is wrong with them
    # record order: chosen then rejected per row; parts: prompt (carries the reward), response
    texts: list[str] = [""] * (4 * n)
    texts[0::4], texts[1::4], texts[2::4], texts[3::4] = prompts_c, chosen, prompts_r, rejected
    rtg = np.full(4 * n, np.nan)
    fixed = np.zeros(4 * n, np.int8)
    if scorer is not None:
        both = [""] * (2 * n)
        both[0::2], both[1::2] = chosen, rejected
        scores = _score(both, scorer, score_batch)
        if scores is None:
            return None
        rtg[0::2] = scores
    elif needs_reward:  # a pair without scores: chosen to the top bin, rejected to the bottom
        rtg[0::4] = np.where(has_c, cs, np.nan)
        rtg[2::4] = np.where(has_r, rs, np.nan)
        fixed[0::4] = np.where(has_c, 0, FIXED_TOP)
        fixed[2::4] = np.where(has_r, 0, FIXED_BOTTOM)
    else:  # scoring skipped (texts for a tokenizer): placeholders, as the line path leaves them
        rtg[0::4] = rtg[2::4] = 0.0
    batch = _layout(texts, [False, True], rtg, fixed, 2, on=True)
    batch.same_pairs = sum(c == r and p == q for c, r, p, q in zip(chosen, rejected, prompts_c, prompts_r))
    batch.split_prompts = sum(p != q for p, q in zip(prompts_c, prompts_r))
    return batch
