"""The column-wise JSON Lines path must give exactly the records of the line-by-line path, and
hand a chunk back to it whenever something needs a line number."""

import gzip
import json

import numpy as np
import pytest

from rcond.columnar import parse_chunk
from rcond.sources import FieldNames, PartBatch, RecordError, SourceError, SourceReader


def write_lines(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else (line + "\n").encode() for line in lines))
    return path


def same(a: PartBatch, b: PartBatch) -> None:
    assert a.texts == b.texts
    np.testing.assert_array_equal(a.trainable, b.trainable)
    np.testing.assert_array_equal(a.rtg, b.rtg)  # NaN == NaN here
    np.testing.assert_array_equal(a.fixed, b.fixed)
    np.testing.assert_array_equal(a.doc_start, b.doc_start)
    np.testing.assert_array_equal(a.on, b.on)


def both_paths(path, fmt, size=4, **kw):
    """(concatenated fast batches, the line-by-line records as one batch)."""
    fast = list(SourceReader([str(path)], fmt, **kw).batches(size))
    lines = PartBatch.from_records(list(SourceReader([str(path)], fmt, **kw)))
    return joined(fast), lines


def joined(batches: list[PartBatch]) -> PartBatch:
    """The batches as one, in order."""
    return PartBatch([t for b in batches for t in b.texts], *(np.concatenate([getattr(b, k) for b in batches] or
                     [np.zeros(0)]) for k in ("trainable", "rtg", "fixed", "doc_start", "on")))


def chunk(rows, fmt, fields=FieldNames(), **kw):
    lines = [(r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode()) + b"\n"
             for r in rows]
    return parse_chunk(lines, fmt, fields, needs_reward=kw.pop("needs_reward", True), **kw)


SCORED = [{"prompt": "p1", "response": "r1", "reward": 0.5},
          {"response": "r2", "reward": -1, "extra": {"nested": [1, {"x": None}]}},
          {"prompt": None, "response": "r3 \u2028 \U0001F600", "reward": 3e-5, "extra": "a string this time"},
          {"prompt": "", "response": "r4", "reward": 12}]


def test_scored_same_as_line_path(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(r) for r in SCORED] + ["", "   "] + [json.dumps(SCORED[0])])
    fast, lines = both_paths(path, "scored")
    same(fast, lines)
    # hand-checked layout of the first record: prompt carries the reward, response is trained
    assert fast.texts[:4] == ["p1", "r1", "", "r2"]
    assert fast.rtg[:4].tolist()[0] == 0.5 and np.isnan(fast.rtg[1]) and fast.rtg[2] == -1.0
    assert fast.trainable[:4].tolist() == [False, True, False, True]
    assert fast.doc_start[:4].tolist() == [True, False, True, False] and fast.on.all()


def test_clean_chunks_take_the_fast_path():
    b = chunk(SCORED, "scored")
    assert b is not None and b.records == 4
    assert chunk([{"text": "a doc"}, {"text": "another"}], "text").on.tolist() == [False, False]
    assert chunk([{"turns": []}], "dialog") is None  # dialogs always go line by line


@pytest.mark.parametrize("fmt,rows", [
    ("text", [{"text": "doc one"}, {"text": "doc two", "reward": "ignored"}]),
    ("scored", [{"text": "t1", "reward": 1}, {"text": "t2", "reward": 2.5}]),  # `text` when no row has `response`
    ("pairs", [{"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"},
               {"prompt": "P", "chosen": "c", "rejected": "r", "chosen_score": 2, "rejected_score": -0.5},
               {"prompt": "", "chosen": "c2", "rejected": "r2"}]),
    ("pairs", [{"prompt": "", "chosen": "\n\nHuman: q\n\nAssistant: c", "rejected": "\n\nHuman: q\n\nAssistant: r"}]),
])
def test_formats_same_as_line_path(tmp_path, fmt, rows):
    fast, lines = both_paths(write_lines(tmp_path / "x.jsonl", [json.dumps(r) for r in rows]), fmt)
    same(fast, lines)


def test_pairs_layout_by_hand():
    b = chunk([{"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"},
               {"prompt": "P", "chosen": "c", "rejected": "r", "chosen_score": 2, "rejected_score": -0.5}], "pairs")
    assert b.texts == ["\n\nHuman: q\n\nAssistant:", " good", "\n\nHuman: q\n\nAssistant:", " bad",
                       "P", "c", "P", "r"]
    assert b.fixed.tolist() == [1, 0, -1, 0, 0, 0, 0, 0]  # unscored: chosen top, rejected bottom
    assert np.isnan(b.rtg[[0, 1, 2, 3, 5, 7]]).all() and b.rtg[[4, 6]].tolist() == [2.0, -0.5]
    assert b.records == 4


def test_scorer_applied_to_responses(tmp_path):
    def scorer(texts):
        return [float(len(t)) for t in texts]

    path = write_lines(tmp_path / "s.jsonl", [json.dumps({"prompt": "p", "response": "x" * i}) for i in range(1, 8)])
    fast, lines = both_paths(path, "scored", scorer=scorer)
    same(fast, lines)
    assert fast.rtg[0::2].tolist() == [1, 2, 3, 4, 5, 6, 7]
    pairs = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "p", "chosen": "aaa", "rejected": "b"})])
    fast, lines = both_paths(pairs, "pairs", scorer=scorer)
    same(fast, lines)
    assert fast.rtg[[0, 2]].tolist() == [3.0, 1.0] and (fast.fixed == 0).all()


def test_a_scorer_replaces_pair_scores_which_are_not_read(tmp_path):
    """With a scorer the pairs' own scores are not read: one score of two, or a NaN, is no error."""
    rows = [{"prompt": "p", "chosen": "aaa", "rejected": "b", "chosen_score": 1},
            '{"prompt": "p", "chosen": "cc", "rejected": "d", "chosen_score": NaN, "rejected_score": 2}']
    path = write_lines(tmp_path / "p.jsonl", [r if isinstance(r, str) else json.dumps(r) for r in rows])
    fast, lines = both_paths(path, "pairs", scorer=lambda texts: [float(len(t)) for t in texts])
    same(fast, lines)
    assert fast.rtg[0::2].tolist() == [3.0, 1.0, 2.0, 1.0]


@pytest.mark.parametrize("fmt,row", [("scored", {"prompt": "p", "response": "r"}),
                                     ("pairs", {"prompt": "p", "chosen": "c", "rejected": "r"})])
def test_unscored_reading_leaves_the_same_placeholder_rewards_on_both_paths(tmp_path, fmt, row):
    """batches(score=False) (texts for a tokenizer) skips a configured scorer: every conditioned
    part holds the placeholder 0.0, column-wise (.jsonl) as record by record (.json)."""
    def scorer(texts):
        raise AssertionError("not called")

    write_lines(tmp_path / "a.jsonl", [json.dumps(row)] * 2)
    (tmp_path / "a.json").write_text(json.dumps([row] * 2))
    fast, = SourceReader([str(tmp_path / "a.jsonl")], fmt, scorer=scorer).batches(score=False)
    lines, = SourceReader([str(tmp_path / "a.json")], fmt, scorer=scorer).batches(score=False)
    same(fast, lines)
    assert fast.rtg[0::2].tolist() == [0.0] * (len(fast.texts) // 2) and np.isnan(fast.rtg[1::2]).all()


@pytest.mark.parametrize("fmt,rows,why", [
    ("scored", ['{"response": "a", "reward": 1}{"response": "b", "reward": 2}'], "two objects on one line"),
    ("scored", ['{"response": "a", "reward": 1', ], "malformed"),
    ("text", ['{"text": "a", "x":', '{"q": 1}}', '{"text": "b"} {"text": "c"}'],
     "an object broken over two lines beside a line of two: as many rows as lines"),
    ("text", ['{"text": "a"} ', ' {"text": "b", "x":', '{"q": 1}} ', '{"text": "c"} {"text": "d"}'],
     "the same with spaces around the lines"),
    ("scored", ['[1, 2]'], "not an object"),
    ("scored", [{"response": "a"}], "missing reward"),
    ("scored", [{"response": "a", "reward": None}], "null reward"),
    ("scored", [{"response": "a", "reward": True}], "boolean reward"),
    ("scored", [{"response": "a", "reward": "0.5"}], "string reward (the line path accepts it)"),
    ('scored', ['{"response": "a", "reward": NaN}'], "NaN reward"),
    ("scored", [{"response": "  ", "reward": 1}], "blank response"),
    ("scored", [{"response": 5, "reward": 1}], "non-string response"),
    ("scored", [{"response": None, "reward": 1}], "null response, no text"),
    ("scored", [{"response": None, "text": None, "reward": 1}], "null response, null text"),
    ("text", [b'{"text": "a", "meta": "\xff"}'], "invalid UTF-8 in a field no format reads"),
    ("scored", [{"prompt": 3, "response": "a", "reward": 1}], "non-string prompt"),
    ("scored", ['{"response": "a", "response": "b", "reward": 1}'], "duplicate key"),
    ("text", [{"text": ""}], "empty document"),
    ("text", [{"text": " \u200b\ufeff\n"}], "only invisible characters"),
    ("pairs", [{"chosen": "no assistant turn", "rejected": "\n\nAssistant: x"}], "no Assistant turn"),
    ("pairs", [{"prompt": "p", "chosen": "c", "rejected": "r", "chosen_score": 1}], "one score of two"),
    ("pairs", [{"prompt": "p", "chosen": "\n\nAssistant:", "rejected": "r"}], "explicit prompt, response kept whole"),
])
def test_declines_what_needs_the_line_path(fmt, rows, why):
    b = chunk(rows, fmt)
    if why == "explicit prompt, response kept whole":  # not a decline: the prompt field wins over the HH split
        assert b is not None and b.texts[1] == "\n\nAssistant:"
        return
    assert b is None, why


@pytest.mark.parametrize("first", ["null", "  null", "5", "true", '"s"', "[1]"])
def test_a_line_that_is_not_an_object_never_reaches_arrow(tmp_path, first):
    """A chunk opening with ``null`` crashed the process inside Arrow's JSON reader (pyarrow 26,
    a segmentation fault); any line that does not open an object sends the chunk to the line path."""
    assert chunk([first, {"text": "a"}], "text") is None
    assert chunk([{"text": "a"}, first], "text") is None
    path = write_lines(tmp_path / "n.jsonl", ["", first, json.dumps({"text": "a"})])
    with pytest.raises(SourceError, match=r"n\.jsonl:2: expected a JSON object, got "):
        list(SourceReader([str(path)], "text").batches(4))
    reader = SourceReader([str(path)], "text", on_error="skip")
    assert [t for b in reader.batches(4) for t in b.texts] == ["a"] and reader.skipped.count == 1


def test_scorer_problems_decline():
    assert chunk([{"response": "a"}], "scored", needs_reward=False, scorer=lambda t: [float("nan")]) is None
    assert chunk([{"response": "a"}], "scored", needs_reward=False, scorer=lambda t: [1.0, 2.0]) is None
    pair = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    assert chunk(pair, "pairs", needs_reward=False, scorer=lambda t: [1.0, float("nan")]) is None
    assert chunk(pair, "pairs", needs_reward=False, scorer=lambda t: [1.0]) is None
    assert chunk(pair, "pairs", needs_reward=False, scorer=lambda t: [1.0, 2.0]) is not None


def test_bad_line_in_a_chunk_reported_exactly(tmp_path):
    good = [json.dumps({"response": f"r{i}", "reward": i}) for i in range(9)]
    path = write_lines(tmp_path / "b.jsonl", good[:6] + ['{"response": "x", "reward": 1}{"response": "y"}'] + good[6:])
    with pytest.raises(SourceError, match=r"b\.jsonl:7: malformed JSON \(Extra data"):
        list(SourceReader([str(path)], "scored").batches(4))
    reader = SourceReader([str(path)], "scored", on_error="skip")
    batches = list(reader.batches(4))
    assert sum(b.records for b in batches) == 9 and reader.skipped.count == 1
    assert [t for b in batches for t in b.texts[1::2]] == [f"r{i}" for i in range(9)]


def test_an_object_broken_over_lines_is_refused_whatever_its_neighbours(tmp_path):
    """Arrow reads objects across line breaks: a line cut inside an object, its rest on the next
    line, beside a line of two objects, gave as many rows as lines, and the chunk was read as
    three records. Both paths now give the line path's errors."""
    rows = ['{"text": "alpha", "x":', '{"q": 1}}', '{"text": "beta"} {"text": "gamma"}', '{"text": "delta"}']
    path = write_lines(tmp_path / "s.jsonl", rows)
    with pytest.raises(SourceError, match=r"s\.jsonl:1: malformed JSON"):
        list(SourceReader([str(path)], "text").batches(10))
    reader = SourceReader([str(path)], "text", on_error="skip")
    assert [t for b in reader.batches(10) for t in b.texts] == ["delta"] and reader.skipped.count == 3


def test_bom_crlf_and_gzip(tmp_path):
    rows = [json.dumps(r) for r in SCORED]
    raw = b"\xef\xbb\xbf" + b"\r\n".join(r.encode() for r in rows) + b"\r\n"
    (tmp_path / "crlf.jsonl").write_bytes(raw)
    with gzip.open(tmp_path / "crlf.jsonl.gz", "wb") as f:
        f.write(raw)
    for name in ("crlf.jsonl", "crlf.jsonl.gz"):
        fast, lines = both_paths(tmp_path / name, "scored")
        same(fast, lines)
        assert fast.records == 4 and fast.texts[1] == "r1"


def test_invalid_utf8_names_the_line(tmp_path):
    path = write_lines(tmp_path / "u.jsonl", [json.dumps(SCORED[0]), b'{"response": "\xff", "reward": 1}\n'])
    with pytest.raises(SourceError, match=r"u\.jsonl:2: not valid UTF-8"):
        list(SourceReader([str(path)], "scored").batches())


def test_scored_reads_the_response_where_it_is_not_null_else_the_text_on_both_paths(tmp_path):
    """README: a scored record has "response" or "text". Row by row, a response that is there and
    not null is read, else the text (a CSV with both columns fills one per row; JSON may write the
    key escaped or hold a null); neither is an error naming the response field, on both paths."""
    rows = ['{"response": "r1", "text": "ignored", "reward": 1}', '{"response": null, "text": "t2", "reward": 2}',
            '{"text": "t3", "reward": 3}', '{"respons\\u0065": null, "text": "a\\nb", "reward": 4}',
            '{"r\u00e9ponse": "raw", "reward": 5}']
    path = write_lines(tmp_path / "s.jsonl", rows[:4])
    fast, lines = both_paths(path, "scored")
    same(fast, lines)
    assert fast.texts[1::2] == ["r1", "t2", "t3", "a\nb"]
    assert chunk(rows[:4], "scored") is not None  # read column-wise, no decline
    accented = FieldNames(response="r\u00e9ponse")
    assert chunk([rows[4], rows[2]], "scored", accented).texts[1::2] == ["raw", "t3"]
    path = write_lines(tmp_path / "n.jsonl", [rows[0], '{"response": null, "reward": 9}'])
    for read in (list, lambda r: list(r.batches())):
        with pytest.raises(SourceError, match=r"n\.jsonl:2: field 'response' is null; expected a value"):
            read(SourceReader([str(path)], "scored"))
    csv = tmp_path / "both.csv"
    csv.write_text("response,text,reward\nr1,,1\n,t2,2\n")
    assert [r.parts[1].text for r in SourceReader([str(csv)], "scored")] == ["r1", "t2"]


def test_invalid_utf8_anywhere_in_a_line_is_refused_by_both_paths(tmp_path):
    """Whether a line is accepted must not depend on which path its chunk took."""
    path = write_lines(tmp_path / "u.jsonl", [b'{"text": "a"}\n', b'{"text": "b", "meta": "\xff"}\n', b'{"text": "c"}\n'])
    for read in (list, lambda r: list(r.batches())):
        with pytest.raises(SourceError, match=r"u\.jsonl:2: not valid UTF-8"):
            read(SourceReader([str(path)], "text"))


def test_scorer_nan_is_skipped_by_record_with_its_line(tmp_path):
    """A get_scorer scorer's NaN reaches the reader, which names the file and line, or skips just
    that record under --on-error skip (the scorer itself would raise with a position in a batch)."""
    from rcond.scorers import Scorer

    scorer = Scorer("test", lambda texts: [float("nan") if t == "bad" else 1.0 for t in texts])
    path = write_lines(tmp_path / "s.jsonl", [json.dumps({"response": t}) for t in ("a", "bad", "c")])
    for read in (list, lambda r: list(r.batches(2))):
        with pytest.raises(SourceError, match=r"s\.jsonl:2: scorer returned a non-finite reward nan"):
            read(SourceReader([str(path)], "scored", scorer=scorer))
    skipping = SourceReader([str(path)], "scored", scorer=scorer, on_error="skip")
    assert sum(b.records for b in skipping.batches(2)) == 2 and skipping.skipped.count == 1
    assert [r.parts[1].text for r in SourceReader([str(path)], "scored", scorer=scorer, on_error="skip")] == ["a", "c"]
    pairs = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "p", "chosen": c, "rejected": "r"})
                                               for c in ("a", "bad", "c")])
    with pytest.raises(SourceError, match=r"p\.jsonl:2 \(chosen\): scorer returned a non-finite reward nan$"):
        list(SourceReader([str(pairs)], "pairs", scorer=scorer).batches(2))
    skipping = SourceReader([str(pairs)], "pairs", scorer=scorer, on_error="skip")
    assert [t for b in skipping.batches(2) for t in b.texts] == ["p", "a", "p", "r", "p", "c", "p", "r"]
    assert skipping.skipped.count == 1


@pytest.mark.parametrize("fmt,head", [("text", '{"text": "doc"'), ("scored", '{"text": "do\\u0063", "reward": 1')])
def test_a_line_nested_too_deeply_for_the_line_path_is_refused_whatever_its_neighbours(tmp_path, fmt, head):
    """A field no format reads, nested 5,000 deep: Arrow reads it, Python's decoder cannot. The
    fast path declines the chunk, so the line is refused as nested too deeply (skipped alone under
    --on-error skip) with or without a bad line beside it, and no RecursionError escapes. Many
    brackets in a string only send a chunk down the line path, which reads it."""
    line = head + ', "x": ' + "[" * 5000 + "]" * 5000 + "}"
    wide = head + ', "x": "' + "{[" * 400 + '"}'
    assert chunk([line, {"text": "two", "reward": 2}], fmt) is None
    assert chunk([wide], fmt) is None and chunk([head + "}"], fmt) is not None
    for neighbour, kept in (('{"text": "fine", "reward": 2}', ["fine", "doc"]), ('{"text": "", "reward": 2}', ["doc"])):
        path = write_lines(tmp_path / "d.jsonl", [line, neighbour, wide])
        with pytest.raises(SourceError, match=r"d\.jsonl:1: JSON nested too deeply to read"):
            list(SourceReader([str(path)], fmt).batches(8))
        reader = SourceReader([str(path)], fmt, on_error="skip")
        assert [t for b in reader.batches(8) for t in b.texts if t] == kept
        assert reader.skipped.examples[0].startswith(f"{path}:1: JSON nested too deeply to read")


# ---------------------------------------------------------------------------- batches of Arrow rows
def arrow_file(path, table):
    import pyarrow.parquet as pq

    pq.write_table(table, path, row_group_size=5)
    return path


def test_arrow_tables_same_as_row_path(tmp_path):
    """Parquet batches read column-wise give the records the row-by-row path gives, across batch
    and row-group boundaries: integer and float32 rewards, null and empty prompts, large strings,
    categorical (dictionary) strings, a response column that is null where the text is there, HH
    and explicit pairs with and without scores."""
    import pyarrow as pa

    from rcond.columnar import parse_table

    scored = pa.table({"prompt": pa.array(["p1", None, "", "p4", "p5", "p6", None], pa.large_string()),
                       "response": ["r1", "r2", None, "r4 \U0001F600", "r5", "r6", "r7"],
                       "text": [None, None, "t3", None, "", "x", None],
                       "reward": pa.array([1, -2, 3, 4, 5, 6, 2 ** 40], pa.int64()),
                       "other": [[1], None, [2], [], [3], [4], [5]]})
    floats = scored.set_column(3, "reward", pa.array([0.5, -1.25, 3e-5, 1e30, 0, -0.0, 7], pa.float32()))
    texts = pa.table({"text": pa.array(["a", "b c", "a", "f", "d\u2028e", "a"]).dictionary_encode()})  # categorical
    pairs = pa.table({"chosen": ["\n\nHuman: hi\n\nAssistant: yo", "c2", "c3", "c4", "c5", "c6"],
                      "rejected": ["\n\nHuman: hi\n\nAssistant: no", "r2", "r3", "r4", "r5", "r6"],
                      "prompt": [None, "p2", "p3", "p4", "p5", "p6"],
                      "chosen_score": [None, 1.0, 2.0, None, 0.0, 1],
                      "rejected_score": [None, 0.5, -1.0, None, 0.0, 2]})
    for name, table, fmt in (("s", scored, "scored"), ("f", floats, "scored"), ("t", texts, "text"),
                             ("p", pairs, "pairs")):
        path = arrow_file(tmp_path / f"{name}.parquet", table)
        fast, rows = both_paths(path, fmt, size=3)
        same(fast, rows)
        assert parse_table(table.slice(0, 3), fmt, FieldNames(), needs_reward=True) is not None, name
    fast, _ = both_paths(arrow_file(tmp_path / "s.parquet", scored), "scored", size=3)
    assert fast.texts[:6] == ["p1", "r1", "", "r2", "", "t3"] and fast.rtg[0::2].tolist()[-1] == 2.0 ** 40


@pytest.mark.parametrize("column,why", [
    (("reward", lambda pa: pa.array(["1.5", "2"])), "a reward in strings: the row path converts them"),
    (("reward", lambda pa: pa.array([True, False])), "booleans: the row path refuses them as rewards"),
    (("reward", lambda pa: pa.array([2 ** 53 + 1, 0], pa.int64())), "not exact in float64: the row path rounds it"),
    (("reward", lambda pa: pa.array([1, 2], pa.decimal128(5, 2))), "a decimal"),
    (("response", lambda pa: pa.array([b"r1", b"r2"])), "bytes: the row path refuses them as text"),
    (("response", lambda pa: pa.array([1, 2])), "a number for a text"),
])
def test_parse_table_declines_types_the_row_path_reads_otherwise(column, why):
    import pyarrow as pa

    from rcond.columnar import parse_table

    name, make = column
    table = pa.table({"response": ["r1", "r2"], "reward": [1.0, 2.0]})
    table = table.set_column(table.schema.get_field_index(name), name, make(pa))
    assert parse_table(table, "scored", FieldNames(), needs_reward=True) is None, why


def test_invalid_utf8_in_a_column_no_format_reads_is_a_bad_row_whatever_its_neighbours(tmp_path):
    """A string that is not UTF-8 in a column the format does not read: the row path refuses its
    row (as a JSON line with invalid UTF-8 anywhere), so the column-wise path declines the batch
    instead of keeping the row; it was kept in a clean batch and refused beside another bad row."""
    import pyarrow as pa

    from rcond.columnar import parse_table

    meta = pa.array([b"ok", b"caf\xe9", b"x"]).view(pa.string())  # not validated on the way in
    for rewards, skipped in (([1.0, 2.0, 3.0], 1), ([1.0, 2.0, float("nan")], 2)):
        table = pa.table({"response": ["r1", "r2", "r3"], "reward": rewards, "meta": meta})
        assert parse_table(table, "scored", FieldNames(), needs_reward=True) is None
        path = str(arrow_file(tmp_path / f"m{skipped}.parquet", table))
        with pytest.raises(RecordError, match=r"row 2: field 'meta' is not valid UTF-8 \(byte 4 of the value\)"):
            list(SourceReader([path], "scored").batches(3))
        reader = SourceReader([path], "scored", on_error="skip")
        assert [t for b in reader.batches(3) for t in b.texts[1::2]] == ["r1", "r3"][:3 - skipped]
        assert reader.skipped.count == skipped


def test_parse_table_declines_a_column_named_twice():
    import pyarrow as pa

    from rcond.columnar import parse_table

    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], names=["text", "text"])
    assert parse_table(table, "text", FieldNames(), needs_reward=True) is None


def test_random_arrow_batches_same_records_and_skips_as_row_path(tmp_path):
    """Random scored and pairs tables with nulls, blank texts, NaN and infinite rewards, read with
    --on-error skip: the same records, and the same rows skipped, by either path."""
    import pyarrow as pa

    rng = np.random.default_rng(7)

    def texts(n):
        pool = ["a", "b c", " ", "", "\u200b", "d\n\ne", None]
        return [pool[i] for i in rng.choice(len(pool), n, p=[.3, .3, .08, .08, .08, .08, .08])]

    def numbers(n):
        pool = [0.5, -1.0, 2.0, float("nan"), float("inf"), None]
        return [pool[i] for i in rng.choice(len(pool), n, p=[.3, .3, .25, .05, .05, .05])]

    for trial in range(20):
        n = int(rng.integers(1, 12))
        scored = pa.table({"prompt": texts(n), "response": texts(n), "text": texts(n), "reward": numbers(n)})
        pairs = pa.table({"chosen": texts(n), "rejected": texts(n), "prompt": texts(n),
                          "chosen_score": numbers(n), "rejected_score": numbers(n)})
        for fmt, table in (("scored", scored), ("pairs", pairs)):
            path = arrow_file(tmp_path / f"{fmt}{trial}.parquet", table)
            fast_reader = SourceReader([str(path)], fmt, on_error="skip")
            fast = list(fast_reader.batches(3))
            row_reader = SourceReader([str(path)], fmt, on_error="skip")
            rows = PartBatch.from_records(list(row_reader))
            same(joined(fast), rows)
            assert fast_reader.skipped.examples == row_reader.skipped.examples
            assert fast_reader.skipped.count == row_reader.skipped.count


TEXT_VALUES = ['"a"', '"b c"', '""', '" "', '"\\u200b"', '"\\ud83d\\ude00 x"', '"\\ud800"', '"x\\u0000y"', '"\\r\\n"',
               '"\u00e9"', '"\\u2028"', '"\u2028"', 'null', '5', '["a"]', '{"a": 1}', 'true',
               '"\\n\\nHuman: q\\n\\nAssistant: r"', '"\\n\\nHuman: q\\n\\nAssistant:"', '"\\r\\n\\r\\nAssistant: r"']
NUMBER_VALUES = ['0.5', '-1', '2', '1e308', '1e400', '-1e400', '1e-400', '"0.5"', '"1e400"', '"x"', 'true', 'null',
                 'NaN', 'Infinity', '-0', '9007199254740993', '12345678901234567890123', '[1]', '"1_0"', '1E2', '0.1',
                 '" 2 "', '""']
BROKEN_LINES = ['', '   ', '[1]', '"x"', 'null', '{"text": "a",}', '{"text": "a"} {"text": "b"}', '{"text": "a"}{"text": "b"}',
                '{', '}', '{"text": "a"} }', '\t{"text": "a"}\t', '{}', "{'text': 'a'}", '{"text": "a"', '{"a": [[[[1]]]]}']
KEYS = {"text": ["text"], "scored": ["prompt", "response", "text", "reward"],
        "pairs": ["prompt", "chosen", "rejected", "chosen_score", "rejected_score"]}


def random_jsonl_line(rng, fmt) -> bytes:
    """One line of a fuzzed JSON Lines file: mostly an object of the format's fields (some absent,
    some of the wrong type, keys written with escapes, repeated, or beside an extra field), else a
    line that is not one such object."""
    if rng.random() < 0.12:
        line = BROKEN_LINES[rng.integers(len(BROKEN_LINES))]
    else:
        fields = []
        for key in KEYS[fmt]:
            if rng.random() < 0.2:
                continue
            numeric = key in ("reward", "chosen_score", "rejected_score")
            pool = NUMBER_VALUES if numeric != (rng.random() < 0.05) else TEXT_VALUES
            p = [0.6 / 3] * 3 + [0.4 / (len(pool) - 3)] * (len(pool) - 3)  # mostly one of the first three
            name = json.dumps(key)
            if rng.random() < 0.05:  # the same key, its first letter escaped
                name = f'"\\u{ord(key[0]):04x}{key[1:]}"'
            fields.append(f"{name}:{' ' * int(rng.integers(2))}{pool[rng.choice(len(pool), p=p)]}")
            if rng.random() < 0.03:
                fields.append(f"{json.dumps(key)}: {pool[rng.integers(len(pool))]}")
        if rng.random() < 0.2:
            fields.insert(int(rng.integers(len(fields) + 1)), '"extra": {"nested": [1, null, "s"]}')
        line = "{" + ", ".join(fields) + "}"
    data = line.encode()
    if rng.random() < 0.02:
        data = data.replace(b'"a"', b'"\xff"')
    return data + (b"\r\n" if rng.random() < 0.1 else b"\n")


@pytest.mark.parametrize("fmt", ["scored", "text", "pairs"])
def test_random_jsonl_lines_same_records_skips_and_errors_as_line_path(tmp_path, fmt):
    """Fuzzed JSON Lines files (the values where Arrow's JSON reader and Python's differ: numbers
    as strings, beyond float range, NaN literals, escaped keys and surrogates, duplicate keys, two
    objects on a line...), read in chunks of random size: the column-wise path gives the records,
    the skipped lines with their reasons and counts, and the first error, of the line path."""
    rng = np.random.default_rng({"scored": 1, "text": 2, "pairs": 3}[fmt])
    for trial in range(60):
        lines = [random_jsonl_line(rng, fmt) for _ in range(int(rng.integers(1, 16)))]
        if rng.random() < 0.1:
            lines[0] = b"\xef\xbb\xbf" + lines[0]
        path = tmp_path / f"{fmt}{trial}.jsonl"
        path.write_bytes(b"".join(lines))
        size = int(rng.integers(1, 6))
        fast_reader, line_reader = (SourceReader([str(path)], fmt, on_error="skip") for _ in range(2))
        fast = list(fast_reader.batches(size))
        slow = PartBatch.from_records(list(line_reader))
        same(joined(fast), slow)
        assert (fast_reader.skipped.count, fast_reader.skipped.examples) == \
            (line_reader.skipped.count, line_reader.skipped.examples), path.read_bytes()
        assert (fast_reader.same_pairs, fast_reader.split_prompts) == (line_reader.same_pairs, line_reader.split_prompts)
        errors = []
        for read in (lambda r: list(r.batches(size)), list):
            try:
                read(SourceReader([str(path)], fmt))
                errors.append(None)
            except (RecordError, SourceError) as e:
                errors.append(str(e))
        assert errors[0] == errors[1], path.read_bytes()
        assert (errors[0] is None) == (line_reader.skipped.count == 0)
