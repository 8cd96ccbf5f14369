"""Readers (rcond.sources): canonical records from every format and file type, reward-to-go by
hand, and each kind of bad input named by file, line and field."""

import json
import os
import re

import numpy as np
import pytest

from conftest import write_jsonl
from rcond.sources import FieldNames, Record, RecordError, SourceError, SourceReader, iter_rows, reward_to_go, split_hh


def read(tmp_path, fmt, rows, **kw):
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    return list(SourceReader([str(path)], fmt, **kw)), path


def test_reward_to_go_three_turns_hand_computed():
    assert reward_to_go([1.0, -0.5, 2.0], 1.0) == [2.5, 1.5, 2.0]
    # gamma 0.5: R3 = 2, R2 = -0.5 + 1 = 0.5, R1 = 1 + 0.25 = 1.25
    assert reward_to_go([1.0, -0.5, 2.0], 0.5) == [1.25, 0.5, 2.0]


def test_dialog_rtg_per_assistant_turn(tmp_path):
    turns = [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1", "reward": 1.0},
             {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2", "reward": -0.5},
             {"role": "user", "content": "u3"}, {"role": "assistant", "content": "a3", "reward": 2.0}]
    (rec,), _ = read(tmp_path, "dialog", [{"turns": turns}])
    assert [p.rtg for p in rec.parts] == [None, 2.5, None, 1.5, None, 2.0]
    assert [p.trainable for p in rec.parts] == [False, True] * 3


def test_dialog_reward_to_go_beyond_float_range_names_the_turn(tmp_path):
    turns = [{"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1", "reward": 1e308},
             {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2", "reward": 1e308}]
    ok = {"turns": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "reward": 1.0}]}
    with pytest.raises(SourceError, match=r"in\.jsonl:2 turn 2: the reward-to-go of this turn overflows a float"):
        read(tmp_path, "dialog", [ok, {"turns": turns}])
    recs, _ = read(tmp_path, "dialog", [ok, {"turns": turns}], gamma=0.5)  # discounted, the sum fits
    assert recs[1].parts[1].rtg == 1e308 + 0.5e308
    reader = SourceReader([str(tmp_path / "in.jsonl")], "dialog", on_error="skip")
    assert len(list(reader)) == 1 and reader.skipped.count == 1
    # scores from a scorer are summed the same way
    huge = {"turns": [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]}
    path = write_jsonl(tmp_path / "s.jsonl", [huge])
    with pytest.raises(SourceError, match=r"s\.jsonl:1 turn 1: the reward-to-go of this turn overflows"):
        list(SourceReader([str(path)], "dialog", scorer=lambda texts: [1.7e308] * len(texts)))


def test_hh_split_keeps_text():
    d = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ciao"
    prompt, resp = split_hh(d, "x")
    assert prompt.endswith("\n\nAssistant:") and resp == " ciao" and prompt + resp == d


def test_hh_dialogue_opening_with_its_assistant_turn_splits_there():
    assert split_hh("\n\nAssistant: hello", "x") == ("\n\nAssistant:", " hello")


@pytest.mark.parametrize("text,blank", [("", True), (" \n\t", True), ("\u200b", True), (" \u200b \u00ad\u2060 ", True),
                                        ("\u200b \u200b \u200b", True), ("\ufeff\u200bx\u200b", False), ("a\u200bb", False),
                                        ("x", False), ("x \u200b", False), (" \u200bx", False)])
def test_text_of_only_invisible_characters_is_empty(tmp_path, text, blank):
    from rcond.sources import is_blank

    assert is_blank(text) == blank
    if blank and text.strip():
        with pytest.raises(SourceError, match=r"in\.jsonl:1: empty response \(only invisible characters\)"):
            read(tmp_path, "scored", [{"response": text, "reward": 1}])


def test_hh_dialogue_with_crlf_line_breaks_gets_a_hint():
    with pytest.raises(SourceError, match=r"^x: no '\\n\\nAssistant:' turn in the dialogue \(this one breaks lines "
                                          r"with \\r\\n; convert them to \\n\)"):
        split_hh("\r\n\r\nHuman: hi\r\n\r\nAssistant: hello", "x")
    with pytest.raises(SourceError, match=r"dialogue, and no 'prompt' field \(or a null one\); expected the HH-RLHF convention or "
                                          r"the prompt in 'prompt'"):
        split_hh("no turns at all", "x")


def test_a_pair_without_assistant_turn_names_the_configured_prompt_field(tmp_path):
    rows = [{"question": "q", "good": "yes", "bad": "no"}]
    fields = FieldNames(prompt="qestion", chosen="good", rejected="bad")  # the prompt field mistyped
    with pytest.raises(SourceError, match=r"in\.jsonl:1 \(chosen\): no '\\n\\nAssistant:' turn in the dialogue, "
                                          r"and no 'qestion' field \(or a null one\); expected the HH-RLHF convention or the prompt in "
                                          r"'qestion'"):
        list(SourceReader([str(write_jsonl(tmp_path / "in.jsonl", rows))], "pairs", fields=fields))


def test_pairs_unscored_go_to_top_and_bottom(tmp_path):
    row = {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}
    recs, path = read(tmp_path, "pairs", [row])
    assert [r.parts[0].fixed_bin for r in recs] == ["top", "bottom"]
    assert [r.parts[1].text for r in recs] == [" good", " bad"]
    assert recs[0].origin == f"{path}:1 (chosen)"


def test_pairs_explicit_prompt_and_scores(tmp_path):
    row = {"q": "Q?", "good": "yes", "bad": "no", "cs": 0.7, "rs": -0.2}
    recs, _ = read(tmp_path, "pairs", [row], fields=FieldNames(prompt="q", chosen="good", rejected="bad",
                                                               chosen_score="cs", rejected_score="rs"))
    assert [(r.parts[0].text, r.parts[0].rtg, r.parts[1].text) for r in recs] == [("Q?", 0.7, "yes"), ("Q?", -0.2, "no")]


@pytest.mark.parametrize("cs,rs,message", [("lots", 1.0, "cs must be a number, got 'lots'"),
                                            (1.0, "lots", "rs must be a number, got 'lots'"),
                                            (1.0, None, "give both 'cs' and 'rs' or neither"),
                                            (None, 1.0, "give both 'cs' and 'rs' or neither")])
def test_a_pairs_bad_or_lone_score_names_its_field(tmp_path, cs, rs, message):
    row = {"prompt": "Q?", "chosen": "yes", "rejected": "no", "cs": cs, "rs": rs}
    with pytest.raises(SourceError, match=rf"in\.jsonl:1: {re.escape(message)}"):
        read(tmp_path, "pairs", [row], fields=FieldNames(chosen_score="cs", rejected_score="rs"))


def test_pairs_of_one_text_and_of_two_prompts_are_counted_on_both_paths(tmp_path):
    """A pair is the same text twice only if prompt and response both match: two HH dialogues
    ending in one response after different questions split into two prompts, and are not the same."""
    rows = [{"chosen": "\n\nHuman: q1\n\nAssistant: same", "rejected": "\n\nHuman: q2\n\nAssistant: same"},
            {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: a"},
            {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    reader = SourceReader([str(path)], "pairs")
    assert len(list(reader)) == 6 and (reader.same_pairs, reader.split_prompts) == (1, 1)  # record by record
    assert sum(b.records for b in reader.batches()) == 6 and (reader.same_pairs, reader.split_prompts) == (1, 1)


def test_scored_text_field_and_scorer(tmp_path):
    recs, _ = read(tmp_path, "scored", [{"text": "abc"}, {"prompt": "p", "response": "xy"}],
                   scorer=lambda texts: [float(len(t)) for t in texts])
    assert [(r.parts[0].text, r.parts[0].rtg, r.parts[1].text) for r in recs] == [("", 3.0, "abc"), ("p", 2.0, "xy")]


def test_text_is_off(tmp_path):
    (rec,), _ = read(tmp_path, "text", [{"text": "plain"}])
    assert rec.mode == "off" and rec.conditioned_parts == []


# ---------------------------------------------------------------- bad input
def test_malformed_json_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, "", "{broken", {"text": "b"}])
    with pytest.raises(SourceError, match=rf"{path}:3: malformed JSON"):
        list(SourceReader([str(path)], "text"))


def test_invalid_utf8_names_the_line_and_the_byte(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')  # 0xff is byte 11 of line 2
    with pytest.raises(SourceError, match=rf"{path}:2: not valid UTF-8 \(byte 11 of the line\)"):
        list(SourceReader([str(path)], "text"))


def test_a_line_over_the_limit_is_refused_before_it_is_read_whole(tmp_path, monkeypatch):
    """A line of more than MAX_LINE_BYTES (here 1 MiB, the line break counted) is an error naming
    its line, read line by line and in batches, and with --on-error skip too: the file is not JSON
    Lines (a JSON array on one line, say), and a longer line would be read whole into memory. A
    line of exactly the limit is a record."""
    import rcond.sources as sources

    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 1 << 20)
    def line(size):  # one JSON record of ``size`` bytes with its line break
        return '{"text": "' + "a" * (size - len('{"text": ""}\n')) + '"}\n'
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"text": "b"}\n' + line(1 << 20))
    assert [len(r.parts[0].text) for r in SourceReader([str(ok)], "text")] == [1, (1 << 20) - 13]
    big = tmp_path / "big.jsonl"
    big.write_text('{"text": "b"}\n' + line((1 << 20) + 1) + '{"text": "c"}\n')
    for read_all in (list, lambda r: list(r.batches())):
        for on_error in ("fail", "skip"):
            with pytest.raises(SourceError, match=rf"^{re.escape(str(big))}:2: a line longer than 1 MiB; expected one "
                                                  r"JSON record per line \(a JSON array goes in a .json file\); "
                                                  r"--on-error skip does not skip it, since finding where it ends "
                                                  r"would mean reading it whole$"):
                read_all(SourceReader([str(big)], "text", on_error=on_error))


def test_nothing_is_read_past_the_start_of_an_overlong_line(tmp_path, monkeypatch):
    """After 40 short lines, a line of 5 MiB (the limit 1 MiB) and more lines: the error names line
    41, and the file is read no further than the limit's worth of that line, though the reader
    asks for many lines at once."""
    import rcond.sources as sources

    monkeypatch.setattr(sources, "MAX_LINE_BYTES", 1 << 20)
    path = tmp_path / "big.jsonl"
    short = b'{"text": "b"}\n'
    path.write_bytes(short * 40 + b'{"text": "' + b"a" * (5 << 20) + b'"}\n' + short * 40)
    read = []
    opened = sources._open_compressed

    class Counted:
        def __init__(self, f):
            self.f = f

        def readline(self, limit=-1):
            line = self.f.readline(limit)
            read.append(len(line))
            return line

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(sources, "_open_compressed", lambda p: Counted(opened(p)))
    for read_all in (list, lambda r: list(r.batches())):
        read.clear()
        with pytest.raises(SourceError, match=rf"^{re.escape(str(path))}:41: a line longer than 1 MiB"):
            read_all(SourceReader([str(path)], "text"))
        assert sum(read) == 40 * len(short) + (1 << 20) + 1


def test_missing_field_names_field_and_present(tmp_path):
    with pytest.raises(SourceError, match=r"in.jsonl:1: missing field 'reward'; fields present: \['prompt', 'response'\]"):
        read(tmp_path, "scored", [{"prompt": "p", "response": "r"}])


def test_null_field_is_called_null_not_missing(tmp_path):
    """A field that is there but null (JSON null, an empty CSV cell) is named as null, by the
    line-by-line path and the columnar batch path alike."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"response": "ok", "reward": 1}\n{"response": "r", "reward": null}\n')
    csv = tmp_path / "in.csv"
    csv.write_text("response,reward\nok,1\nr,\n")
    for p in (path, csv):
        for read_all in (list, lambda r: list(r.batches())):
            with pytest.raises(SourceError, match=rf"{p}:(row \d+ \(line \d+\)|\d+): field 'reward' is null; expected a value"):
                read_all(SourceReader([str(p)], "scored"))


def test_plain_text_documents_file_folder_and_zip(tmp_path):
    """.txt documents are read whole and exactly; one that is not UTF-8 is named with its line and
    byte (not silently given replacement characters), or skipped alone under --on-error skip."""
    import zipfile

    docs = {"a.txt": "caf\u00e9 one\n".encode(), "b.txt": b"fine line\nsecond \xff line\n", "c.txt": b"three"}
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, data in docs.items():
        (folder / name).write_bytes(data)
    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in docs.items():
            zf.writestr(name, data)
    for spec, origin in ((folder, f"{folder / 'b.txt'}"), (archive, f"{archive}!b.txt"),
                         (folder / "b.txt", f"{folder / 'b.txt'}")):
        with pytest.raises(SourceError, match=rf"^{re.escape(origin)}:2: not valid UTF-8 \(byte 8 of the line\)"):
            list(SourceReader([str(spec)], "text"))
        skipping = SourceReader([str(spec)], "text", on_error="skip")
        texts = [r.parts[0].text for r in skipping]
        assert texts == ([] if spec.suffix == ".txt" else ["caf\u00e9 one\n", "three"])
        assert skipping.skipped.count == 1 and skipping.skipped.examples[0].startswith(f"{origin}:2:")


def _patch_zip_member(path, *, flags=None, method=None):
    """Rewrite the one member's general-purpose flags / compression method in both its local and
    central headers (the standard library writes neither encrypted nor Deflate64 members)."""
    import struct

    data = bytearray(path.read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature)
        if flags is not None:
            struct.pack_into("<H", data, at + flag_at, flags)
        if method is not None:
            struct.pack_into("<H", data, at + flag_at + 2, method)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("patch,why", [({"flags": 1}, "is encrypted"), ({"method": 9}, "not supported")])
def test_zip_member_that_cannot_be_extracted_is_named(tmp_path, patch, why):
    import zipfile

    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "one document")
    _patch_zip_member(archive, **patch)
    with pytest.raises(SourceError, match=rf"^{re.escape(str(archive))}!a\.txt: cannot be extracted \(.*{why}.*\); "
                                          r"expected an unencrypted member"):
        list(SourceReader([str(archive)], "text"))


@pytest.mark.parametrize("method", ["ZIP_DEFLATED", "ZIP_BZIP2", "ZIP_LZMA"])
def test_zip_member_whose_compressed_data_is_damaged_is_named_as_damaged(tmp_path, method):
    """A member whose compressed bytes are damaged was said to need another compression method
    (deflate, lzma), or was a traceback (bzip2's OSError)."""
    import zipfile

    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w", getattr(zipfile, method)) as zf:
        zf.writestr("a.txt", "hello world " * 2000)
    data = bytearray(archive.read_bytes())
    start = 30 + len("a.txt")  # the compressed bytes follow the local header and the name
    data[start + 10:start + 40] = bytes(b ^ 0xFF for b in data[start + 10:start + 40])
    archive.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=rf"^{re.escape(str(archive))}!a\.txt: cannot be extracted \(.+\); "
                                          r"expected intact compressed data \(the archive is damaged\)$"):
        list(SourceReader([str(archive)], "text"))


def test_a_zip_member_whose_data_runs_past_the_end_of_the_archive_is_named_as_cut_short(tmp_path):
    """A member whose sizes in the central directory run past the end of the archive ends in an
    EOFError that carries no message: the error says the member was cut short, where it read
    "cannot be extracted ()", and the document is one bad record, skipped alone."""
    import struct
    import zipfile

    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", "first")
        zf.writestr("b.txt", "second document")
    data = bytearray(archive.read_bytes())
    entry = data.rindex(b"PK\x01\x02")  # b.txt's central-directory entry: sizes at 20 (compressed) and 24
    struct.pack_into("<II", data, entry + 20, 1 << 20, 1 << 20)
    archive.write_bytes(bytes(data))
    with pytest.raises(RecordError, match=rf"^{re.escape(str(archive))}!b\.txt: cannot be extracted \(cut short\); "
                                          r"expected intact compressed data \(the archive is damaged\)$"):
        list(iter_rows(str(archive)))
    skipped = []
    assert [text for _, text in iter_rows(str(archive), on_bad_line=skipped.append)] == ["first"]
    assert len(skipped) == 1


def test_a_decompressor_error_without_a_message_is_said_to_be_cut_short():
    """The message-less EOFError of a zip member can come from any reader's decompressor too (none
    of the standard library's raises one today, so it is raised here by hand): the file is said to
    be cut short, not "(EOFError: )"."""
    from pathlib import Path

    from rcond.sources import _unreadable

    with pytest.raises(SourceError, match=r"^d\.txt\.gz: cannot be read \(EOFError: cut short\); expected a whole "
                                          r"\.gz file$"):
        with _unreadable(Path("d.txt.gz")):
            raise EOFError()


@pytest.mark.parametrize("bad", ["NaN", "Infinity", '"lots"', "true"])
def test_bad_reward_names_record(tmp_path, bad):
    path = tmp_path / "in.jsonl"
    path.write_text('{"response": "ok", "reward": 1}\n{"response": "r", "reward": %s}\n' % bad)
    with pytest.raises(SourceError, match=rf"{path}:2: reward must be a (finite )?number"):
        list(SourceReader([str(path)], "scored"))


@pytest.mark.parametrize("written,got", [
    ("1e400", r"got '1e400' \(beyond the float range, \+-1\.798e\+308\)"), ("-inf", r"got '-inf'$"),
    ("nan", r"got 'nan'$")])
def test_a_reward_beyond_the_float_range_is_named_as_written(tmp_path, written, got):
    """A CSV cell is text: '1e400' (read as inf) is named as written and why it is refused; a
    JSON reader turns Infinity and 1e400 alike into inf, and says both may be meant."""
    path = tmp_path / "r.csv"
    path.write_text(f"response,reward\nhi,{written}\n")
    with pytest.raises(SourceError, match=rf"r\.csv:row 1 \(line 2\): reward must be a finite number, {got}"):
        list(SourceReader([str(path)], "scored"))
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"response": "hi", "reward": 1e400}\n')
    with pytest.raises(SourceError, match=r"r\.jsonl:1: reward must be a finite number, got inf \(Infinity, or a "
                                          r"number beyond the float range"):
        list(SourceReader([str(jsonl)], "scored"))


def test_empty_response(tmp_path):
    with pytest.raises(SourceError, match="in.jsonl:1: empty response"):
        read(tmp_path, "scored", [{"response": "  ", "reward": 1}])
    with pytest.raises(SourceError, match=r"in\.jsonl:1: empty rejected response"):
        read(tmp_path, "pairs", [{"prompt": "p", "chosen": "a", "rejected": " "}])


def test_a_text_field_that_is_a_boolean_says_so(tmp_path):
    with pytest.raises(SourceError, match=r"in\.jsonl:1: field 'text' must be a string, got a boolean"):
        read(tmp_path, "text", [{"text": True}])


def test_a_lone_surrogate_escape_in_capitals_is_refused(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n{"text": "x\\uD800y"}\n')
    with pytest.raises(SourceError, match=rf"{path}:2: a string holds a lone UTF-16 surrogate escape"):
        list(SourceReader([str(path)], "text"))


def test_a_plain_text_document_needs_a_scorer_to_be_scored(tmp_path):
    (tmp_path / "doc.txt").write_text("some text")
    with pytest.raises(SourceError, match=r"doc\.txt: a plain text document has no reward; use --score-with or "
                                          r"--format text"):
        list(SourceReader([str(tmp_path / "doc.txt")], "scored"))


@pytest.mark.parametrize("turns, got", [("p1500", "a string ('p1500')"), ([], "an empty list"), (3, "a number (3)")])
def test_turns_that_are_not_a_list_say_what_they_are(tmp_path, turns, got):
    src = write_jsonl(tmp_path / "in.jsonl", [{"turns": turns}])
    with pytest.raises(SourceError, match=re.escape(f"in.jsonl:1: field 'turns' must be a non-empty list of turns, "
                                                    f"got {got}")):
        list(SourceReader([str(src)], "dialog"))


def test_a_response_field_named_text_is_named_once_when_missing(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"answer": "a", "reward": 1}])
    with pytest.raises(SourceError, match=re.escape("in.jsonl:1: missing field 'text'; fields present: ['answer', ")):
        list(SourceReader([str(src)], "scored", fields=FieldNames(response="text")))


def test_dialog_without_assistant_turn(tmp_path):
    with pytest.raises(SourceError, match="in.jsonl:1: dialog has no assistant turn"):
        read(tmp_path, "dialog", [{"turns": [{"role": "user", "content": "hi"}]}])


def test_a_turn_of_another_role_is_refused(tmp_path):
    turns = [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "a", "reward": 1}]
    with pytest.raises(SourceError, match=r"in\.jsonl:1 turn 1: role must be 'user', 'system' or 'assistant', "
                                          r"got 'bot'"):
        read(tmp_path, "dialog", [{"turns": turns}])


@pytest.mark.parametrize("turn", ["hello", ["user", "hello"], None, 3])
def test_a_turn_that_is_no_object_is_named_by_its_number(tmp_path, turn):
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a", "reward": 1}, turn]
    with pytest.raises(SourceError, match=r"in\.jsonl:1 turn 3: expected an object with 'role' and 'content'$"):
        read(tmp_path, "dialog", [{"turns": turns}])


def test_non_finite_score_from_scorer(tmp_path):
    with pytest.raises(SourceError, match="in.jsonl:2: scorer returned a non-finite reward"):
        read(tmp_path, "scored", [{"text": "a"}, {"text": "b"}],
             scorer=lambda ts: [1.0 if t == "a" else float("nan") for t in ts])


def test_a_plain_function_scorer_is_checked_and_its_errors_name_the_records(tmp_path):
    """A scorer given to the reader as a plain function is checked as the named scorers are: too
    few scores, a score that is no number, or an exception it raises names the records it was given."""
    from rcond.scorers import ScorerError

    def one_short(ts):
        return [1.0] * (len(ts) - 1)

    def says_text(ts):
        return ["0.5" if t == "b" else 1.0 for t in ts]

    def fails(ts):
        raise KeyError("model")

    rows = [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    p = tmp_path / "in.jsonl"
    for scorer, message in [
            (one_short, f"{p}:1 to {p}:3: scorer '{one_short.__qualname__}' returned 2 scores for the 3 texts of "
                        "these records; expected one score per text"),
            (says_text, f"{p}:2: scorer '{says_text.__qualname__}': its score for 'b' is not a number: '0.5'"),
            (fails, f"{p}:1 to {p}:3: scorer '{fails.__qualname__}' failed on the texts of these records: "
                    "KeyError: 'model'")]:
        with pytest.raises(ScorerError) as e:
            read(tmp_path, "scored", rows, scorer=scorer)
        assert str(e.value) == message


@pytest.mark.parametrize("texts,where", [((1, 1), "{p}:2"), ((0, 2), "{p}:1 to {p}:3")])
def test_a_scorer_error_about_some_texts_names_their_records(tmp_path, texts, where):
    from rcond.scorers import ScorerError

    def scorer(ts):
        raise ScorerError("texts by position", texts=texts, reason="boom")

    with pytest.raises(ScorerError) as e:
        read(tmp_path, "scored", [{"text": "a"}, {"text": "b"}, {"text": "c"}], scorer=scorer)
    assert str(e.value) == where.format(p=tmp_path / "in.jsonl") + ": boom"


def test_non_finite_score_of_a_dialog_turn_names_the_turn(tmp_path):
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "fine"},
             {"role": "user", "content": "and?"}, {"role": "assistant", "content": "bad"}]
    with pytest.raises(SourceError, match="in.jsonl:1 turn 4: scorer returned a non-finite reward inf"):
        read(tmp_path, "dialog", [{"turns": turns}],
             scorer=lambda ts: [float("inf") if t == "bad" else 0.5 for t in ts])
    with pytest.raises(SourceError, match="in.jsonl:1 turn 2: scorer returned a non-finite reward nan"):
        read(tmp_path, "dialog", [{"turns": turns}],  # the first of two bad turns is named
             scorer=lambda ts: [float("inf") if t == "bad" else float("nan") for t in ts])


def test_scores_of_dialogs_of_several_turns_go_to_their_own_turns(tmp_path):
    """One scorer call for two dialogs, two assistant turns then one: each turn's reward-to-go is
    the sum of its own score and the later ones of its dialog (gamma 1)."""
    two = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a1"},
           {"role": "user", "content": "v"}, {"role": "assistant", "content": "a2"}]
    one = [{"role": "user", "content": "w"}, {"role": "assistant", "content": "a3"}]
    score = {"a1": 1.0, "a2": 2.0, "a3": 4.0}
    recs, _ = read(tmp_path, "dialog", [{"turns": two}, {"turns": one}], scorer=lambda ts: [score[t] for t in ts])
    assert [[p.rtg for p in r.parts] for r in recs] == [[None, 3.0, None, 2.0], [None, 4.0]]


def test_skip_reports_count_and_which(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"response": "a", "reward": 1}, "{oops", {"response": "b"},
                                               {"response": "c", "reward": 2}])
    reader = SourceReader([str(path)], "scored", on_error="skip")
    assert [r.parts[1].text for r in reader] == ["a", "c"]
    assert reader.skipped.count == 2
    assert reader.skipped.examples[0].startswith(f"{path}:2: malformed JSON")
    assert reader.skipped.examples[1].startswith(f"{path}:3: missing field 'reward'")


def test_skip_keeps_the_first_20_reasons_and_counts_them_all(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"response": f"r{i}"} for i in range(25)])
    reader = SourceReader([str(path)], "scored", on_error="skip")
    assert list(reader) == [] and reader.skipped.count == 25
    assert reader.skipped.examples == [f"{path}:{i}: missing field 'reward'; fields present: ['response']"
                                       for i in range(1, 21)]


def test_skip_file_holds_one_line_per_reason_its_line_breaks_escaped(tmp_path):
    from rcond.sources import SkipLog

    log = SkipLog(path=tmp_path / "skipped.txt")
    log.add("a.jsonl:1: one\ntwo")
    log.add("a.jsonl:2: three")
    log.close()
    assert (tmp_path / "skipped.txt").read_text() == "a.jsonl:1: one\\ntwo\na.jsonl:2: three\n"


def test_csv_through_datasets(tmp_path):
    (tmp_path / "a.csv").write_text("prompt,response,reward\np,r,0.5\nq,s,oops\n")
    with pytest.raises(SourceError, match=r"a.csv:row 2 \(line 3\): reward must be a number"):
        list(SourceReader([str(tmp_path / "a.csv")], "scored"))
    # a quoted cell over several lines (as HH dialogues are): rows, not lines, are counted
    (tmp_path / "m.csv").write_text('prompt,response,reward\n"a\n\nHuman: b",r,0.5\nq,s,oops\n')
    with pytest.raises(SourceError, match=r"m.csv:row 2 \(line 5\): reward must be a number"):
        list(SourceReader([str(tmp_path / "m.csv")], "scored"))
    # a quoted first row keeps its multi-line cell whole, and is as wide as the header: read
    assert [r.parts[1].text for r in SourceReader([str(tmp_path / "m.csv")], "scored", on_error="skip")] == ["r"]


def test_an_input_given_twice_is_refused(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": "x"}])
    os.link(a, tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(a)
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "sub" / "d.txt").write_text("a document")
    cases = [([str(a), str(tmp_path / "." / "a.jsonl")], "the same input as"),
             ([str(a), str(tmp_path / "hard.jsonl")], "the same input as"),
             ([str(tmp_path / "soft.jsonl"), str(a)], "the same input as"),
             ([str(docs), str(docs / "sub")], r"sub: inside the folder .*docs, also given"),
             ([str(docs / "sub" / "d.txt"), str(docs)], r"d\.txt: inside the folder .*docs, also given")]
    for inputs, message in cases:
        with pytest.raises(SourceError, match=message):
            SourceReader(inputs, "text")
    # a folder reads only .txt files: a JSON Lines file inside it is read once
    write_jsonl(docs / "rows.jsonl", [{"text": "y"}])
    assert len(list(SourceReader([str(docs), str(docs / "rows.jsonl")], "text"))) == 2


def test_a_hub_dataset_given_twice_is_refused_however_it_is_written(monkeypatch, tmp_path):
    """``o/n`` reads the train split, so ``o/n`` and ``o/n:train`` are one input, refused before
    anything is read; another split, folder, configuration or revision is another input."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=r"^o/n:train: the same input as o/n, also given"):
        SourceReader(["o/n", "o/n:train"], "text")
    SourceReader(["o/n", "o/n:test", "o/n/sub", "o/n:cfg:train", "o/n@v1"], "text")


def test_a_malformed_hub_id_or_a_missing_file_given_with_a_split_is_named_when_read(monkeypatch, tmp_path):
    """The inputs' check takes neither a malformed hub id (o/n:) nor a missing file given twice,
    once with a split, for one input given twice: each is named as what it is when it is read."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=r"^o/n:: no such file or directory, and not a hub dataset id \(an empty"):
        list(SourceReader(["o/n:"], "text"))
    with pytest.raises(SourceError, match=r"^data/a\.jsonl: no such file or directory$"):
        list(SourceReader(["data/a.jsonl", "data/a.jsonl:train"], "text"))


def test_a_saved_dataset_given_twice_is_refused(tmp_path, monkeypatch):
    """``DIR`` of a saved DatasetDict reads its train split, so ``DIR`` and ``DIR:train`` are one
    input; a shard of a saved dataset given beside it is inside it. Other splits, and a saved
    dataset inside a folder of documents (which reads only .txt files), are read once each."""
    import datasets

    monkeypatch.chdir(tmp_path)
    rows = datasets.Dataset.from_list([{"text": "x"}, {"text": "y"}])
    datasets.DatasetDict({"train": rows, "test": rows}).save_to_disk("dd")
    rows.save_to_disk("docs/one")
    (tmp_path / "docs" / "d.txt").write_text("a document")
    [shard] = (tmp_path / "docs" / "one").glob("*.arrow")
    for inputs, message in [(["dd", "./dd:train"], r"^\./dd:train: the same input as dd, also given"),
                            (["docs/one", str(shard)], r"\.arrow: inside the folder docs/one, also given; its rows")]:
        with pytest.raises(SourceError, match=message):
            SourceReader(inputs, "text")
    assert len(list(SourceReader(["dd", "dd:test", "docs", "docs/one"], "text"))) == 2 + 2 + 1 + 2


def test_csv_header_after_blank_lines_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "h.csv"
    path.write_bytes(b"\xef\xbb\xbfresponse,reward\nhi,0.5\n")  # the mark was read into the first name
    assert [r.parts[0].rtg for r in SourceReader([str(path)], "scored")] == [0.5]
    path.write_text("\n  \ntext\nhello\n\nworld\n")  # blank lines are no rows, before the header too
    assert [(r.origin, r.parts[0].text) for r in SourceReader([str(path)], "text")] == [
        (f"{path}:row 1 (line 4)", "hello"), (f"{path}:row 2 (line 6)", "world")]


@pytest.mark.parametrize("header,message", [
    ("text,", r"h\.csv:1: header column 2 has no name; expected a name for every column"),
    ("\ntext,text", r"h\.csv:2: header names 'text' twice \(columns 1 and 2\); expected each column named once"),
    ("text, ,x", r"h\.csv:1: header column 2 has no name; expected a name for every column"),  # spaces only
    ("\ntext,caf\udce9", r"h\.csv:2: the header is not valid UTF-8; expected a UTF-8 CSV"),  # a Latin-1 byte 0xe9
])
def test_csv_header_must_name_each_column_once(tmp_path, header, message):
    path = tmp_path / "h.csv"
    path.write_bytes(f"{header}\nhello,world\n".encode("utf-8", "surrogateescape"))
    with pytest.raises(SourceError, match=message):
        list(SourceReader([str(path)], "text"))


def test_csv_rows_wider_than_the_header_are_refused_not_shifted(tmp_path):
    (tmp_path / "w.csv").write_text("prompt,response,reward\nhi,there,0.5,\nyo,ok,0.1,\n")
    with pytest.raises(SourceError, match=r"w.csv:row 1 \(line 2\): 4 fields, but the header \(line 1\) names 3"):
        list(SourceReader([str(tmp_path / "w.csv")], "scored"))


def test_a_bad_csv_row_is_named_by_row_and_line_and_skipped_alone(tmp_path):
    """Quoted line breaks in row 1 put row 3 on line 6; a row with a field too many and one with a
    byte that is not UTF-8 are each named, or skipped alone under --on-error skip, the rows after
    them keeping their numbers."""
    path = tmp_path / "q.csv"
    path.write_bytes(b'prompt,response,reward\na,"multi\nline\nresp",1\nb,ok,2\nc,toomany,3,4\nd,caf\xe9,4\ne,ok,5\n')
    with pytest.raises(SourceError, match=r"q\.csv:row 3 \(line 6\): 4 fields, but the header \(line 1\) names 3"):
        list(SourceReader([str(path)], "scored"))
    skipping = SourceReader([str(path)], "scored", on_error="skip")
    assert [(r.origin, r.parts[1].text) for r in skipping] == [
        (f"{path}:row 1 (line 2)", "multi\nline\nresp"), (f"{path}:row 2 (line 5)", "ok"),
        (f"{path}:row 5 (line 8)", "ok")]
    assert skipping.skipped.count == 2
    assert skipping.skipped.examples[1] == f"{path}:row 4 (line 7): not valid UTF-8; expected a UTF-8 CSV"


def test_a_csv_row_whose_last_field_is_not_utf8_is_a_bad_row(tmp_path):
    """Every field of a row is checked for bytes that are not UTF-8, the last one too (here the
    only one): the row is named, not read with the bytes escaped into its text."""
    path = tmp_path / "l.csv"
    path.write_bytes(b"text\nfine\ncaf\xe9\n")
    with pytest.raises(RecordError, match=rf"^{re.escape(str(path))}:row 2 \(line 3\): not valid UTF-8; expected a "
                                          rf"UTF-8 CSV$"):
        list(SourceReader([str(path)], "text"))


def test_a_csv_file_that_ends_inside_a_quoted_cell_is_refused_not_read_as_one_cell(tmp_path):
    """An unclosed quote would make the rest of the file one cell: refused, naming the line its row
    starts on, under --on-error skip too (no row after it can be trusted)."""
    path = tmp_path / "u.csv"
    path.write_text('response,reward\nok,1\n"never closed,2\nthree,3\nfour,4\n')
    message = r'u\.csv:3: the file ends inside a quoted cell of the row that starts on this line; expected every opening " to be closed'
    for on_error in ("fail", "skip"):
        with pytest.raises(SourceError, match=message) as caught:
            list(SourceReader([str(path)], "scored", on_error=on_error))
        assert not isinstance(caught.value, RecordError)
    path.write_text('"response,reward\nok,1\n')  # in the header
    with pytest.raises(SourceError, match=r"u\.csv:1: the file ends inside a quoted cell"):
        list(SourceReader([str(path)], "scored"))


def test_text_after_a_closing_quote_is_kept_and_the_quoted_cell_after_it_stays_whole(tmp_path):
    """``"Q1"x`` is read as spreadsheet programs read it (Q1x); the quoted cell after it, over three
    lines with commas inside, stays one cell and the next row keeps its number. (A reader that
    refused the row dropped the rest of its first line, and read the cell's later lines as rows.)"""
    path = tmp_path / "q.csv"
    path.write_text('prompt,response,reward\n"Q1"x,"Here is a list:\n1, 2, 3\ndone",0.5\nQ2,R2,1.0\n')
    reader = SourceReader([str(path)], "scored", on_error="skip")
    assert [(r.origin, [p.text for p in r.parts]) for r in reader] == [
        (f"{path}:row 1 (line 2)", ["Q1x", "Here is a list:\n1, 2, 3\ndone"]),
        (f"{path}:row 2 (line 5)", ["Q2", "R2"])]
    assert reader.skipped.count == 0
    path.write_text('response,reward\nok,1\n"q""uoted\nend",2')  # closed on the last line, no line break after
    assert [r.parts[1].text for r in SourceReader([str(path)], "scored")] == ["ok", 'q"uoted\nend']


def test_csv_cells_are_text_as_written_and_a_short_row_lacks_its_last_fields(tmp_path):
    """No NA guessing ('NA', 'null' and 'nan' are texts), leading zeros and spaces kept; an empty
    cell is null; a row with fewer fields than the header is missing the last ones."""
    path = tmp_path / "t.csv"
    path.write_text('prompt,response,reward\nNA,null,1\n" 007 ",nan,2\nx,,3\ny\n')
    rows = [row for _, row in iter_rows(str(path))]
    assert rows == [{"prompt": "NA", "response": "null", "reward": "1"},
                    {"prompt": " 007 ", "response": "nan", "reward": "2"},
                    {"prompt": "x", "response": None, "reward": "3"}, {"prompt": "y"}]
    skipping = SourceReader([str(path)], "scored", on_error="skip")
    assert [r.origin for r in skipping] == [f"{path}:row 1 (line 2)", f"{path}:row 2 (line 3)"]
    assert skipping.skipped.examples == [f"{path}:row 3 (line 4): field 'response' is null; expected a value",
                                         f"{path}:row 4 (line 5): missing field 'response' (or 'text'); fields present: ['prompt']"]


def test_parquet_and_arrow_files_read_as_their_jsonl_would_be(tmp_path, monkeypatch):
    """Parquet (several row groups) and Arrow IPC files, stream format as datasets writes it and
    file format (Feather v2), give the records the same rows give as JSON Lines, dialogs' lists of
    turns included; rows are numbered across batches; a file without rows, or an empty file, gives
    none; a file that is not what its name says is an error naming it."""
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    from rcond import sources

    monkeypatch.setattr(sources, "ARROW_BATCH", 3)  # rows cross batch and row-group boundaries
    table = pa.Table.from_pylist(DIALOGS)
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=4)
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table, max_chunksize=5)
    feather.write_feather(table, tmp_path / "f.arrow", chunksize=2)
    reference = _same(SourceReader([str(write_jsonl(tmp_path / "d.jsonl", DIALOGS))], "dialog"))
    for name in ("d.parquet", "d.arrow", "f.arrow"):
        recs = list(SourceReader([str(tmp_path / name)], "dialog"))
        assert _same(recs) == reference, name
        assert [r.origin for r in recs] == [f"{tmp_path / name}:row {i}" for i in range(1, 8)]
    pq.write_table(table.slice(0, 0), tmp_path / "none.parquet")
    (tmp_path / "empty.parquet").write_bytes(b"")
    assert list(iter_rows(str(tmp_path / "none.parquet"))) == list(iter_rows(str(tmp_path / "empty.parquet"))) == []
    feather.write_feather(table.slice(0, 0), tmp_path / "none.arrow")
    (tmp_path / "empty.arrow").write_bytes(b"")  # not memory-mapped: mapping nothing fails
    assert list(iter_rows(str(tmp_path / "none.arrow"))) == list(iter_rows(str(tmp_path / "empty.arrow"))) == []
    (tmp_path / "not.parquet").write_text('{"text": "x"}\n')
    with pytest.raises(SourceError, match=r"not\.parquet: could not be read as Parquet \(ArrowInvalid: "):
        list(SourceReader([str(tmp_path / "not.parquet")], "text"))


@pytest.mark.parametrize("suffix", ["parquet", "arrow"])
def test_a_column_name_given_twice_is_refused(tmp_path, suffix):
    """Read out row by row, a row keeps the last of two same-named columns: a second 'reward' column
    would replace the first silently."""
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays([pa.array(["good", "bad"]), pa.array([1.0, 2.0]), pa.array([-1.0, -2.0])],
                                 names=["response", "reward", "reward"])
    path = tmp_path / f"d.{suffix}"
    (pq.write_table if suffix == "parquet" else feather.write_feather)(table, path)
    for on_error in ("fail", "skip"):
        with pytest.raises(SourceError, match=re.escape(f"{path}: column 'reward' appears 2 times; expected each "
                                                        f"column name once")):
            list(SourceReader([str(path)], "scored", on_error=on_error))
        with pytest.raises(SourceError, match="column 'reward' appears 2 times"):
            list(SourceReader([str(path)], "scored", on_error=on_error).batches(100))


def _same(records) -> list:
    return [(r.mode, [(p.text, p.trainable, p.rtg, p.fixed_bin) for p in r.parts]) for r in records]


DIALOGS = [{"turns": [{"role": "user", "content": f"u{i}"}, {"role": "assistant", "content": f"a{i}", "reward": i / 2},
                      {"role": "user", "content": "more"}, {"role": "assistant", "content": "b", "reward": -1.0}]}
           for i in range(7)]


def test_datasets_saved_to_disk_read_as_their_jsonl_would_be(tmp_path, monkeypatch):
    """A folder written by save_to_disk (Dataset; DatasetDict whole -> its train split, or DIR:SPLIT),
    its .arrow shard alone, and a DatasetDict split named by a relative path (not a hub id) give the
    records the same rows give as JSON Lines; rows are numbered across shards; a format the dataset
    was saved with (numpy) does not change the values."""
    import datasets

    scored = [{"prompt": f"p{i}", "response": f"r{i}", "reward": float(i % 3)} for i in range(25)]
    ds = datasets.Dataset.from_list(scored)
    ds.save_to_disk(str(tmp_path / "one"), num_shards=3)
    reference = list(SourceReader([str(write_jsonl(tmp_path / "s.jsonl", scored))], "scored"))
    recs = list(SourceReader([str(tmp_path / "one")], "scored"))
    assert _same(recs) == _same(reference)
    assert [r.origin for r in recs][::12] == [f"{tmp_path / 'one'}:row {i}" for i in (1, 13, 25)]
    shards = sorted((tmp_path / "one").glob("*.arrow"))
    assert len(shards) == 3
    assert _same(SourceReader([str(s) for s in shards], "scored")) == _same(reference)
    assert next(iter_rows(str(shards[1])))[0] == f"{shards[1]}:row 1"

    dialogs = datasets.Dataset.from_list(DIALOGS)
    dialogs.set_format("numpy")
    datasets.DatasetDict({"train": dialogs, "test": dialogs.select([2, 3])}).save_to_disk(str(tmp_path / "dd"))
    reference = list(SourceReader([str(write_jsonl(tmp_path / "d.jsonl", DIALOGS))], "dialog"))
    assert reference[2].parts[1].rtg == 0.0  # dialog 2: rewards 1.0 then -1.0, so its first turn's reward-to-go is 0
    whole = list(SourceReader([str(tmp_path / "dd")], "dialog"))
    assert _same(whole) == _same(reference) and whole[0].origin == f"{tmp_path / 'dd'}:train:row 1"
    monkeypatch.chdir(tmp_path)
    assert _same(SourceReader(["dd:test"], "dialog")) == _same(reference[2:4])
    assert _same(SourceReader(["./dd:train"], "dialog")) == _same(reference)


def test_a_string_that_is_not_utf8_in_parquet_or_arrow_is_one_bad_row(tmp_path):
    """Arrow checks UTF-8 only when a string is read out: such a row is a bad row naming its field,
    raised, or skipped alone under --on-error skip, on the column-wise and the row-by-row path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    offsets = pa.array([0, 2, 4, 5], pa.int32()).buffers()[1]
    text = pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(b"ok\xff\xfex")])  # not validated
    table = pa.table({"text": text, "reward": [1.0, 2.0, 3.0]})
    pq.write_table(table, tmp_path / "u.parquet")
    with pa.OSFile(str(tmp_path / "u.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    for name in ("u.parquet", "u.arrow"):
        path = str(tmp_path / name)
        message = f"{path}:row 2: field 'text' is not valid UTF-8 (byte 1 of the value); expected UTF-8 text"
        for read in (lambda r: list(r), lambda r: list(r.batches())):
            with pytest.raises(RecordError, match=re.escape(message)):
                read(SourceReader([path], "scored"))
            skipping = SourceReader([path], "scored", on_error="skip")
            got = read(skipping)
            texts = [p.text for r in got for p in r.parts] if isinstance(got[0], Record) else got[0].texts
            assert texts == ["", "ok", "", "x"] and skipping.skipped.examples == [message]


def test_saved_dataset_errors_name_the_folder_split_or_shard(tmp_path):
    import datasets

    rows = [{"text": "a", "reward": 1.0}, {"text": "b", "reward": float("nan")}, {"text": "c", "reward": 2.0}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"dev": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    one, dd = tmp_path / "one", tmp_path / "dd"
    with pytest.raises(SourceError, match=rf"^{one}:row 2: reward must be a finite number, got nan"):
        list(SourceReader([str(one)], "scored"))
    skipping = SourceReader([str(one)], "scored", on_error="skip")
    assert [r.origin for r in skipping] == [f"{one}:row 1", f"{one}:row 3"] and skipping.skipped.count == 1
    with pytest.raises(SourceError, match=rf"^{dd}: a saved DatasetDict without a 'train' split; name one as "
                                          rf"{dd}:SPLIT; its splits: dev$"):
        list(SourceReader([str(dd)], "scored"))
    with pytest.raises(SourceError, match=rf"^{dd}:test: no split 'test'; its splits: dev$"):
        list(SourceReader([f"{dd}:test"], "scored"))
    with pytest.raises(SourceError, match=rf"^{one}:dev: {one} holds one saved dataset, not a DatasetDict"):
        list(SourceReader([f"{one}:dev"], "scored"))
    [shard] = one.glob("*.arrow")
    data = shard.read_bytes()
    for cut, message in [(40, r"could not be read as an Arrow file \(the IPC format datasets writes\)"),
                         (len(data) - 30, r"reading failed after row 0 \(")]:  # in the schema; in the rows
        shard.write_bytes(data[:cut])
        with pytest.raises(SourceError, match=rf"^{shard}: {message}"):
            list(SourceReader([str(one)], "scored"))
    shard.unlink()
    with pytest.raises(SourceError, match=rf"^{shard}: missing; {one / 'state.json'} lists it as a shard"):
        list(SourceReader([str(one)], "scored"))
    (one / "state.json").write_text("{not json")
    with pytest.raises(SourceError, match=rf"^{one / 'state.json'}: not readable as the JSON datasets' save_to_disk"):
        list(SourceReader([str(one)], "scored"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match=r"empty: folder holds no \.txt files, and is no dataset saved by datasets' "
                                          r"save_to_disk \(it has no state\.json or dataset_dict\.json\)$"):
        list(SourceReader([str(tmp_path / "empty")], "scored"))
    (tmp_path / "x.arrow").write_text("not arrow")
    with pytest.raises(SourceError, match=r"x\.arrow: could not be read as an Arrow file \(the IPC format datasets "
                                          r"writes\) \(ArrowInvalid: Expected to read"):  # the stream reader's complaint
        list(SourceReader([str(tmp_path / "x.arrow")], "scored"))
    (tmp_path / "x.arrow.gz").write_bytes(b"")
    with pytest.raises(SourceError, match=r"x\.arrow\.gz: a compressed Arrow file is not read"):
        SourceReader([str(tmp_path / "x.arrow.gz")], "scored")


def test_saved_dataset_fingerprint_is_its_files_and_the_split_read(tmp_path):
    import hashlib

    import datasets

    from rcond.sources import fingerprint

    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "a"}]),
                          "test": datasets.Dataset.from_list([{"text": "b"}])}).save_to_disk(str(tmp_path / "dd"))
    split = tmp_path / "dd" / "test"
    h = hashlib.sha256()
    for p in sorted(split.rglob("*")):  # each file's name within the split's folder, then its bytes
        h.update(str(p.relative_to(split)).encode()), h.update(p.read_bytes())
    assert fingerprint(f"{tmp_path / 'dd'}:test") == "sha256:" + h.hexdigest()
    assert fingerprint(str(tmp_path / "dd")) == fingerprint(f"{tmp_path / 'dd'}:train") != fingerprint(f"{tmp_path / 'dd'}:test")
    from rcond.cli import main
    from rcond.corpus import load

    out = tmp_path / "corpus"
    assert main(["preprocess", f"{tmp_path / 'dd'}:test", "--format", "text", "--out", str(out), "--tokenizer",
                 "train:300", "--no-progress"]) == 0
    _, scheme, _ = load(out)
    assert scheme.source_fingerprints == {f"{tmp_path / 'dd'}:test": "sha256:" + h.hexdigest()}


@pytest.mark.parametrize("content,origins", [
    ('[{"text": "z"}, {"text": "w"}]', ["item 1", "item 2"]),        # an array of objects
    ('\ufeff\n[\n  {"text": "z"},\n  {"text": "w"}\n]\n', ["item 1", "item 2"]),  # BOM, blank line, pretty
    ('{\n  "text": "z"\n}\n', ["item 1"]),                          # one object over several lines
    ('{"text": "z"}\n\n{"text": "w"}\n', ["1", "3"]),               # JSON Lines under a .json name
    ('  [{"text": "z"},\n   {"text": "w"}]', ["item 1", "item 2"]),  # indented: the opening is past the spaces
    ("", []),                                                        # an empty file: no rows, as for JSON Lines
    ("\n  \n", []),                                                  # blank lines only
])
def test_json_shapes(tmp_path, content, origins):
    path = tmp_path / "c.json"
    path.write_text(content, encoding="utf-8")
    recs = list(SourceReader([str(path)], "text"))
    assert [r.origin for r in recs] == [f"{path}:{o}" for o in origins]
    assert [r.parts[0].text for r in recs] == ["z", "w"][:len(origins)]


@pytest.mark.parametrize("content,message", [
    ('null\n{"text": "x"}\n', r"c\.json:1: expected a JSON array of objects, .* starts with 'null'"),  # crashed Arrow
    ("5", r"c\.json:1: expected a JSON array of objects, .* starts with '5'"),
    ("\n  \n5\n", r"c\.json:3: expected a JSON array of objects, .* starts with '5'"),  # the line with text
    ("\n\ufeff[]\n", r"c\.json:2: expected a JSON array of objects, .* starts with '\\ufeff\[\]'"),  # a later BOM
    ('["a", "b"]', r"c\.json:item 1: expected a JSON object, got a string \('a'\)"),  # was a made-up 'text' field
    ('[{"text": "a"}, 5]', r"c\.json:item 2: expected a JSON object, got a number \(5\)"),
    ("[null]", r"c\.json:item 1: expected a JSON object, got null$"),
    ('[{"text": "a"},\n {"text": "b",}]', r"c\.json:2: malformed JSON \(Expecting property name"),
    ('[{"text": "a"},\n {"text": "b"', r"c\.json:2: malformed JSON \(Expecting ',' delimiter at column 14: the text ends "
                                     r"before the JSON value does \(cut short\?\)\); expected a JSON array"),
    ('{"text": "a"}\n{"text": 5}\n', r"c\.json:2: field 'text' must be a string, got a number \(5\)"),
    ('[{"text": "a"},\n {"text": "b\n\n', r"c\.json:2: malformed JSON \(Invalid control character at column 13: the "
                                        r"text ends before the JSON value does \(cut short\?\)\)"),  # only blank after
    ('[{"text": "a"}, {"text": "x\\ud800y"}]', r"c\.json:item 2: a string holds a lone UTF-16 surrogate escape"),
])
def test_json_bad_shapes_name_the_item_or_line(tmp_path, content, message):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(SourceError, match=message):
        list(SourceReader([str(path)], "text"))


@pytest.mark.parametrize("content", ["[" * 100_000 + "]" * 100_000,                 # an array
                                     '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"])  # an object on one line
def test_a_json_file_nested_too_deeply_is_named_not_a_crash(tmp_path, content):
    """Python's decoder cannot read JSON nested 100,000 deep, whether the file opens with an array
    or with an object on its first line (tried as JSON Lines first): a SourceError naming the file,
    not a RecursionError out of the reader."""
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(SourceError, match=rf"^{re.escape(str(path))}: JSON nested too deeply to read"):
        list(SourceReader([str(path)], "text"))


def test_a_json_file_that_is_not_utf8_is_named_by_the_line_of_the_bad_byte(tmp_path):
    """A .json array read whole names the line that holds the byte that is not UTF-8 (here line
    3), counted from 1 as every reader counts lines."""
    path = tmp_path / "c.json"
    path.write_bytes(b'[{"text": "a"},\n {"text": "b"},\n {"text": "\xff"}]\n')
    with pytest.raises(SourceError, match=rf"^{re.escape(str(path))}:3: not valid UTF-8; expected a UTF-8 JSON file"):
        list(SourceReader([str(path)], "text"))


def test_json_bad_items_are_skipped_one_by_one(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[{"text": "a"}, 5, null, {"text": "b"}]')
    reader = SourceReader([str(path)], "text", on_error="skip")
    assert [r.parts[0].text for r in reader] == ["a", "b"]
    assert reader.skipped.count == 2 and "item 3: expected a JSON object, got null" in reader.skipped.examples[1]


def test_unknown_file_type_and_missing_file(tmp_path, monkeypatch):
    (tmp_path / "x.docx").write_text("")
    with pytest.raises(SourceError, match="unknown file type"):
        list(SourceReader([str(tmp_path / "x.docx")], "text"))
    with pytest.raises(SourceError, match="no such file"):
        list(SourceReader([str(tmp_path / "missing.jsonl")], "text"))
    monkeypatch.chdir(tmp_path)  # a mistyped relative path with a folder is a missing file, not a hub id
    with pytest.raises(SourceError, match="data/reviwes.jsonl: no such file"):
        list(SourceReader(["data/reviwes.jsonl"], "text"))
    from rcond import sources

    def offline(*a, **kw):
        raise ConnectionError("Couldn't reach 'someone/nothing' on the Hub (LocalEntryNotFoundError)")

    hub_found(monkeypatch)  # as if the hub's name resolved here and the dataset were there
    monkeypatch.setattr(sources, "_load_streaming", offline)  # a hub id that cannot be read: named, exit 2
    with pytest.raises(SourceError, match=r"someone/nothing: not a file or folder here, and not readable as a hub "
                                          r"dataset \(ConnectionError"):
        list(SourceReader(["someone/nothing"], "text"))

    def breaks_after_two_rows(*a, **kw):
        yield {"text": "a"}
        yield {"text": "b"}
        raise ConnectionError("connection reset")

    monkeypatch.setattr(sources, "_load_streaming", breaks_after_two_rows)
    with pytest.raises(SourceError, match=r"someone/data: reading the hub dataset failed after row 2 \(ConnectionError"):
        list(SourceReader(["someone/data"], "text"))


def test_one_exchange_dialog_is_scored_on_its_assistant_turn(tmp_path):
    """[user, assistant] has the shape of a prompt + response record, but a dialog's RTG goes on
    the assistant turn: the score lands there, and the user turn carries none."""
    src = write_jsonl(tmp_path / "d.jsonl", [
        {"turns": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]},
        {"turns": [{"role": "system", "content": "be kind"}, {"role": "assistant", "content": "ok"}]}])
    reader = SourceReader([str(src)], "dialog", scorer=lambda texts: [float(len(t)) for t in texts])
    parts = [[(p.text, p.trainable, p.rtg) for p in r.parts] for r in reader]
    assert parts == [[("hi", False, None), ("hello there", True, 11.0)], [("be kind", False, None), ("ok", True, 2.0)]]


def test_dialog_rewards_come_from_the_reward_field(tmp_path):
    src = write_jsonl(tmp_path / "d.jsonl", [{"turns": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "score": 2.0},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "score": 1.0}]}])
    reader = SourceReader([str(src)], "dialog", FieldNames(reward="score"), gamma=0.5)
    assert [p.rtg for p in next(iter(reader)).parts if p.trainable] == [2.0 + 0.5 * 1.0, 1.0]
    with pytest.raises(SourceError, match="no assistant turn carries a 'reward'"):
        list(SourceReader([str(src)], "dialog"))


@pytest.mark.parametrize("fmt", ["scored", "pairs", "text"])
def test_gamma_is_refused_where_it_would_change_nothing(fmt):
    with pytest.raises(SourceError, match=rf"--gamma 0.9 discounts reward-to-go across dialog turns; format '{fmt}'"):
        SourceReader(["x.jsonl"], fmt, gamma=0.9)
    SourceReader(["x.jsonl"], fmt, gamma=1.0)  # the default


def test_a_reward_on_a_user_turn_is_an_error_not_dropped(tmp_path):
    turns = [{"role": "user", "content": "u", "reward": 1.0}, {"role": "assistant", "content": "a", "reward": 0.5}]
    with pytest.raises(SourceError, match=r"in\.jsonl:1 turn 1: a user turn carries a 'reward'; rewards belong to "
                                          r"assistant turns"):
        read(tmp_path, "dialog", [{"turns": turns}])


@pytest.mark.parametrize("reward,ok", [("1e3", True), (" 2.5 ", True), ("1_000", False), ("0x10", False),
                                       ("\uff11\uff12", False), ("\u0661\u0662", False)])  # fullwidth, Arabic-Indic 12
def test_reward_text_is_a_plain_decimal_number(tmp_path, reward, ok):
    path = tmp_path / "r.csv"
    path.write_text(f"response,reward\nhi,{reward}\n", encoding="utf-8")
    reader = SourceReader([str(path)], "scored")
    if ok:
        assert [r.parts[0].rtg for r in reader] == [float(reward)]
    else:
        with pytest.raises(SourceError, match=rf"r\.csv:row 1 \(line 2\): reward must be a number, got '{reward}'"):
            list(reader)


def test_suffixes_in_any_case_and_compressed_text(tmp_path):
    import gzip

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "A.TXT").write_text("upper")
    (folder / "b.txt").write_text("lower")
    (folder / "c.md").write_text("not read")
    assert [r.parts[0].text for r in SourceReader([str(folder)], "text")] == ["upper", "lower"]
    (tmp_path / "d.txt.gz").write_bytes(gzip.compress("one whole document\n".encode()))
    assert [r.parts[0].text for r in SourceReader([str(tmp_path / "d.txt.gz")], "text")] == ["one whole document\n"]
    (tmp_path / "E.JSONL.GZ").write_bytes(gzip.compress(b'{"text": "rows"}\n'))
    reader = SourceReader([str(tmp_path / "E.JSONL.GZ")], "text")
    assert [t for b in reader.batches() for t in b.texts] == ["rows"]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
def test_every_compression_the_readme_names_reads_jsonl_and_csv(tmp_path, suffix):
    import bz2
    import gzip
    import lzma

    import zstandard

    compress = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
                ".zst": zstandard.ZstdCompressor().compress}[suffix]
    (tmp_path / f"r.jsonl{suffix}").write_bytes(compress(b'{"response": "one", "reward": 0.5}\n'
                                                        b'{"response": "two", "reward": -1}\n'))
    (tmp_path / f"r.csv{suffix}").write_bytes(compress(b"response,reward\nthree,2\n"))
    for name, texts, rewards in ((f"r.jsonl{suffix}", ["one", "two"], [0.5, -1.0]),
                                 (f"r.csv{suffix}", ["three"], [2.0])):
        records = list(SourceReader([str(tmp_path / name)], "scored"))
        assert [r.parts[1].text for r in records] == texts
        assert [r.parts[0].rtg for r in records] == rewards


def test_a_zst_frame_larger_than_a_read_is_decompressed_across_reads(tmp_path):
    """One frame of ~0.5 MB of compressed JSON Lines (random texts: it compresses to about their
    size) is read 64 KiB at a time, each read continuing the frame: the records are those of the
    plain file, and a second frame after it is read too."""
    import random

    import zstandard

    rng = random.Random(0)
    rows = [{"response": "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(200)), "reward": i}
            for i in range(3000)]
    plain = write_jsonl(tmp_path / "r.jsonl", rows)
    c = zstandard.ZstdCompressor()
    big = c.compress(plain.read_bytes())
    assert len(big) > 4 * (1 << 16)  # several reads of the reader's 64 KiB
    (tmp_path / "r.jsonl.zst").write_bytes(big + c.compress(b'{"response": "last", "reward": -1}\n'))
    got = list(SourceReader([str(tmp_path / "r.jsonl.zst")], "scored"))
    want = list(SourceReader([str(plain)], "scored"))
    assert [r.parts[1].text for r in got] == [r.parts[1].text for r in want] + ["last"]
    assert [r.parts[0].rtg for r in got] == list(range(3000)) + [-1]


def test_zst_frames_are_read_in_turn_and_a_cut_or_foreign_file_is_an_error(tmp_path):
    import zstandard

    c = zstandard.ZstdCompressor()
    rows = b"".join(b'{"response": "r%d", "reward": %d}\n' % (i, i) for i in range(3000))
    whole = c.compress(rows)
    (tmp_path / "two.jsonl.zst").write_bytes(whole + c.compress(b'{"response": "last", "reward": -1}\n'))
    records = list(SourceReader([str(tmp_path / "two.jsonl.zst")], "scored"))
    assert len(records) == 3001 and records[-1].parts[1].text == "last" and records[2999].parts[1].text == "r2999"
    (tmp_path / "cut.jsonl.zst").write_bytes(whole[:len(whole) // 2])  # zstandard.open would end quietly here
    with pytest.raises(SourceError, match=r"cut.jsonl.zst: cannot be read \(EOFError: compressed file ended before "
                                          r"the end of a zstd frame\); expected a whole .zst file"):
        list(SourceReader([str(tmp_path / "cut.jsonl.zst")], "scored").batches())
    (tmp_path / "cut.txt.zst").write_bytes(c.compress(b"a document\n" * 100)[:-4])
    with pytest.raises(SourceError, match=r"cut.txt.zst: cannot be read \(EOFError"):
        list(SourceReader([str(tmp_path / "cut.txt.zst")], "text"))
    (tmp_path / "foreign.jsonl.zst").write_bytes(b"not zstd at all")
    with pytest.raises(SourceError, match=r"foreign.jsonl.zst: cannot be read \(OSError: .*Unknown frame descriptor"):
        list(SourceReader([str(tmp_path / "foreign.jsonl.zst")], "scored").batches())


@pytest.mark.parametrize("gamma", [float("nan"), float("inf"), -0.1, 1.5])
def test_gamma_must_be_a_discount(gamma):
    with pytest.raises(SourceError, match=r"--gamma must be a discount in \[0, 1\]"):
        SourceReader(["x.jsonl"], "dialog", gamma=gamma)


def test_score_batch_must_be_at_least_1():
    SourceReader(["x.jsonl"], "scored", score_batch=1)
    with pytest.raises(SourceError, match="--score-batch must be at least 1, got 0"):
        SourceReader(["x.jsonl"], "scored", score_batch=0)


def test_gamma_0_conditions_each_turn_on_its_own_reward(tmp_path):
    turns = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "reward": 1.0},
             {"role": "user", "content": "v"}, {"role": "assistant", "content": "b", "reward": 2.0}]
    (rec,), _ = read(tmp_path, "dialog", [{"turns": turns}], gamma=0.0)
    assert [p.rtg for p in rec.parts] == [None, 1.0, None, 2.0]


def test_huge_integer_reward_is_a_source_error(tmp_path):
    src = tmp_path / "h.jsonl"
    src.write_text('{"response": "a", "reward": 1' + "0" * 400 + '}\n')
    for read in (list, lambda r: list(r.batches())):  # the line path, and the chunk path (which declines)
        with pytest.raises(SourceError, match=r"h.jsonl:1: reward must be a finite number, got an integer too large"):
            read(SourceReader([str(src)], "scored"))
    skipping = SourceReader([str(src)], "scored", on_error="skip")
    assert list(skipping) == [] and skipping.skipped.count == 1
    assert sum(b.records for b in skipping.batches()) == 0 and skipping.skipped.count == 1


def test_a_byte_order_mark_opening_a_text_document_is_not_text(tmp_path):
    """A .txt that opens with a UTF-8 byte-order mark (as some editors save) is read without it,
    as a file, in a folder and in a zip; a bad byte later is still named on its own line."""
    import zipfile

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_bytes(b"\xef\xbb\xbfHello world\n")
    with zipfile.ZipFile(tmp_path / "docs.zip", "w") as zf:
        zf.writestr("a.txt", b"\xef\xbb\xbfHello world\n")
    for spec in (tmp_path / "docs" / "a.txt", tmp_path / "docs", tmp_path / "docs.zip"):
        assert [r.parts[0].text for r in SourceReader([str(spec)], "text")] == ["Hello world\n"]
    (tmp_path / "b.txt").write_bytes(b"\xef\xbb\xbfab\xff\n")
    with pytest.raises(SourceError, match=r"b\.txt:1: not valid UTF-8 \(byte 6 of the line\)"):
        list(SourceReader([str(tmp_path / "b.txt")], "text"))


def hub_found(monkeypatch, commits=None):
    """As if the hub's name resolved here and every dataset were there, its revisions at commit
    c0ffee (``commits``, a list, gets every ``(repo, revision)`` resolved)."""
    from rcond import sources

    monkeypatch.setattr(sources.hub, "unreachable", lambda: None)
    monkeypatch.setattr(sources.hub, "dataset_commit",
                        lambda repo, revision: (commits.append((repo, revision)) if commits is not None else None)
                        or "c0ffee")


@pytest.mark.parametrize("spec,parts", [
    ("someone/data", ("someone/data", None, None, None, "train")),
    ("someone/data:test", ("someone/data", None, None, None, "test")),
    ("Anthropic/hh-rlhf/harmless-base:test", ("Anthropic/hh-rlhf", None, "harmless-base", None, "test")),
    ("o/n@v1.0/a/b:cfg:validation", ("o/n", "v1.0", "a/b", "cfg", "validation")),
    ("o/n@refs/convert/parquet/default:train", ("o/n", "refs/convert/parquet", "default", None, "train")),
    ("o/n@refs/pr/3", ("o/n", "refs/pr/3", None, None, "train")),
    ("o/n@refs/data:test", ("o/n", "refs", "data", None, "test")),  # refs and one part: a branch, then a folder
])
def test_hub_dataset_ids_by_hand(spec, parts):
    from rcond.hub import parse_dataset_id

    d = parse_dataset_id(spec)
    assert (d.repo, d.revision, d.folder, d.config, d.split) == parts


@pytest.mark.parametrize("spec,problem", [
    ("someone/", "an empty owner, name, folder, configuration or split"),
    ("o/n:", "an empty owner, name, folder, configuration or split"),
    ("o/n/a//b", "an empty owner, name, folder, configuration or split"),
    ("o/n@", "an empty revision after '@'"),
    ("o/n/../m", "a folder '.' or '..'"),
    ("o/n@v1/./m", "a folder '.' or '..'"),
    ("o/n:a:b:c", "more than two ':'"),
])
def test_what_is_no_hub_dataset_id_is_named_before_the_hub_is_asked(monkeypatch, spec, problem):
    from rcond import sources

    monkeypatch.setattr(sources.hub, "unreachable", lambda: pytest.fail("the hub was asked"))
    with pytest.raises(SourceError, match=rf"^{re.escape(spec)}: no such file or directory, and not a hub dataset "
                                          rf"id \({re.escape(problem)}\): expected OWNER/NAME\[@REVISION\]"):
        list(iter_rows(spec))


def test_an_empty_owner_is_no_hub_dataset_id():
    """'/n' is read as a path before it could be taken for a hub id; parse_dataset_id alone refuses
    it too, as it does an empty name."""
    from rcond.hub import parse_dataset_id

    for spec in ("/n", "/n:train"):
        with pytest.raises(ValueError, match=r"^not a hub dataset id \(an empty owner, name, folder"):
            parse_dataset_id(spec)


def test_a_hub_folder_configuration_and_revision_reach_datasets_and_the_corpus_records_the_commit(tmp_path,
                                                                                                 monkeypatch):
    """``OWNER/NAME@REVISION/FOLDER:CONFIG:SPLIT``: the revision is resolved to its commit once,
    the rows are streamed at that commit from the folder (datasets' data_dir), and the corpus's
    scheme.json names the dataset at that commit."""
    from rcond import sources
    from rcond.cli import main
    from rcond.corpus import load

    commits, streamed = [], []
    hub_found(monkeypatch, commits)
    monkeypatch.setattr(sources, "_load_streaming", lambda repo, **kw: streamed.append((repo, kw)) or
                        iter([{"text": "one document"}, {"text": "another"}]))
    spec = "Anthropic/hh-rlhf@main/harmless-base:default:test"
    out = tmp_path / "corpus"
    assert main(["preprocess", spec, "--format", "text", "--out", str(out), "--tokenizer", "train:300",
                 "--no-progress"]) == 0
    assert set(commits) == {("Anthropic/hh-rlhf", "main")}
    assert {(repo, tuple(sorted(kw.items()))) for repo, kw in streamed} == {
        ("Anthropic/hh-rlhf", (("data_dir", "harmless-base"), ("name", "default"), ("revision", "c0ffee"),
                               ("split", "test")))}
    assert load(out)[1].source_fingerprints == {spec: "hub:Anthropic/hh-rlhf@c0ffee/harmless-base:default:test"}
    assert sources.fingerprint("o/n") == "hub:o/n@c0ffee:train"


def test_a_folder_of_a_repository_is_streamed_as_datasets_data_dir(tmp_path):
    """The call that streams a hub dataset, on a local copy of a repository laid out as
    Anthropic/hh-rlhf is (a folder per subset, a file per split): the folder's split alone."""
    import gzip

    import datasets

    from rcond.sources import _load_streaming

    for subset in ("harmless-base", "helpful-base"):
        (tmp_path / subset).mkdir()
        for split in ("train", "test"):
            with gzip.open(tmp_path / subset / f"{split}.jsonl.gz", "wt") as f:
                f.write(json.dumps({"chosen": f"{subset} {split}", "rejected": "r"}) + "\n")
    rows = _load_streaming(str(tmp_path), name=None, data_dir="harmless-base", split="test", revision="main")
    assert isinstance(rows, datasets.IterableDataset)  # streamed, not downloaded whole first
    assert list(rows) == [{"chosen": "harmless-base test", "rejected": "r"}]


def test_the_stream_is_asked_of_datasets_at_the_commit(monkeypatch):
    """The configuration, folder, split and commit reach ``datasets.load_dataset``, streamed (a
    local copy, as above, reads the same whatever the revision and configuration)."""
    import datasets

    from rcond.sources import _load_streaming

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append((a, kw)) or "rows")
    assert _load_streaming("o/n", name="cfg", data_dir="sub", split="test", revision="c0ffee") == "rows"
    assert calls == [(("o/n",), {"name": "cfg", "data_dir": "sub", "split": "test", "revision": "c0ffee",
                                 "streaming": True})]


def test_a_hub_dataset_the_hub_client_cannot_find_is_named(hub_online, monkeypatch):
    """The hub client itself failing to reach the hub (a connection refused: its HTTP library's
    error, which is no OSError) or saying there is no such dataset is named, as the input that is
    no file here and no dataset there."""
    import huggingface_hub.constants

    from rcond import sources

    monkeypatch.setattr(sources.hub, "unreachable", lambda: None)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(SourceError, match=r"^o/n@v2: not a file or folder here, and the hub has no dataset 'o/n' at "
                                          r"revision 'v2' that can be read from here \(ConnectError: "):
        list(iter_rows("o/n@v2"))
    with pytest.raises(SourceError, match=r"^o/n:test: not a file or folder here, and the hub has no dataset 'o/n' "
                                          r"that can be read from here \(ConnectError: "):
        list(iter_rows("o/n:test"))


def test_a_hub_stream_broken_by_the_hub_clients_own_error_is_named(hub_online, monkeypatch):
    """The hub client's HTTP library's errors are no OSError: one that breaks the stream after a
    row (here the client's ConnectError where nothing listens) is named with how far it was read."""
    import huggingface_hub
    import huggingface_hub.constants

    from rcond import sources

    def breaks_after_one_row(*a, **kw):
        yield {"text": "a"}
        huggingface_hub.HfApi().dataset_info("o/n")

    hub_found(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(sources, "_load_streaming", breaks_after_one_row)
    with pytest.raises(SourceError, match=r"^o/n: reading the hub dataset failed after row 1 \(ConnectError: "):
        list(iter_rows("o/n"))


def test_a_revision_is_resolved_to_its_commit_once_per_process(monkeypatch):
    """dataset_commit asks the hub client for the dataset at the revision given (None: its default
    branch) once per dataset and revision, and answers the commit the hub names."""
    import types

    import huggingface_hub

    from rcond import hub

    asked = []

    class Api:
        def dataset_info(self, repo, revision=None):
            asked.append((repo, revision))
            return types.SimpleNamespace(sha=f"commit of {revision}")

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(hub, "_commits", {})
    assert [hub.dataset_commit("o/n", r) for r in ("v1", None, "v1", None)] == [
        "commit of v1", "commit of None", "commit of v1", "commit of None"]
    assert asked == [("o/n", "v1"), ("o/n", None)]


def test_two_threads_asking_for_one_revision_get_one_commit(monkeypatch):
    """A build asks for the commit from its reading and from its background fingerprinting at
    once: the hub is asked once and both get its answer, never two answers of a branch that moved
    between them (the hub here answers each call with a new commit, slowly)."""
    import threading
    import time
    import types

    import huggingface_hub

    from rcond import hub

    answers = []

    class Api:
        def dataset_info(self, repo, revision=None):
            time.sleep(0.2)
            answers.append(f"commit{len(answers) + 1}")
            return types.SimpleNamespace(sha=answers[-1])

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(hub, "_commits", {})
    got = []
    threads = [threading.Thread(target=lambda: got.append(hub.dataset_commit("o/n", "main"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == ["commit1", "commit1"] and answers == ["commit1"]


def test_hub_rows_are_numbered_from_1_as_file_rows_are(monkeypatch):
    from rcond import sources

    rows = [{"response": "a", "reward": 1}, {"response": "b", "reward": "x"}]
    hub_found(monkeypatch)
    monkeypatch.setattr(sources, "_load_streaming", lambda repo, **kw: iter(rows))
    with pytest.raises(SourceError, match=r"^owner/name:row 2: reward must be a number"):
        list(SourceReader(["owner/name"], "scored"))


def test_a_csv_cell_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    """Python's csv module refuses a cell over 128 KiB by default; the header check must not, in
    the first data row or any other."""
    long = "word " * 30000  # 150,000 characters
    path = tmp_path / "long.csv"
    path.write_text(f'prompt,response,reward\na,"{long}",1\nb,ok,2\n')
    assert [r.parts[1].text for r in SourceReader([str(path)], "scored")] == [long, "ok"]


@pytest.mark.parametrize("fmt,fields,scored,message", [
    ("scored", {"chosen": "x"}, False, r"--chosen-field: format 'scored' reads no such field \(it reads 'prompt', "
                                       r"'response', 'text', 'reward'\)"),
    ("text", {"prompt": "q"}, False, r"--prompt-field: format 'text' reads no such field"),
    ("dialog", {"turns": "t", "prompt": "q"}, False, r"--prompt-field: format 'dialog' reads no such field"),
    ("scored", {"reward": "nope"}, True, r"--reward-field: with --score-with the scorer's rewards replace that field"),
    ("pairs", {"chosen_score": "cs"}, True, r"--chosen-score-field: with --score-with"),
    ("dialog", {"reward": "content"}, False, r"--reward-field 'content': every turn's 'content' key holds its content"),
    ("dialog", {"reward": "role"}, False, r"--reward-field 'role': every turn's 'role' key"),
])
def test_a_field_option_the_format_does_not_read_is_refused(fmt, fields, scored, message):
    """As --gamma outside dialogs: an option that would change nothing is a mistake to report."""
    with pytest.raises(SourceError, match=message):
        SourceReader(["x.jsonl"], fmt, fields=FieldNames(**fields), scorer=(lambda ts: [0.0] * len(ts)) if scored else None)


def test_with_a_scorer_a_dialogs_own_reward_keys_are_not_read(tmp_path):
    """--score-with replaces the turns' rewards: a reward that is not a number, or one on a user
    turn, is not read (as the scored and pairs formats ignore their reward fields)."""
    turns = [{"role": "user", "content": "hi", "reward": 3}, {"role": "assistant", "content": "great day", "reward": "n/a"}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"turns": turns}])
    recs = list(SourceReader([str(path)], "dialog", scorer=lambda ts: [0.5] * len(ts)))
    assert [p.rtg for p in recs[0].parts] == [None, 0.5]


def test_a_dialog_reward_error_names_the_configured_key(tmp_path):
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "score": "x"}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"turns": turns}])
    with pytest.raises(SourceError, match=r"d\.jsonl:1 turn 2: score must be a number, got 'x'"):
        list(SourceReader([str(path)], "dialog", fields=FieldNames(reward="score")))


@pytest.mark.parametrize("suffix", [".gz", ".xz", ".zst"])
def test_a_compressed_parquet_file_is_refused_up_front(tmp_path, suffix):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / f"p.parquet{suffix}"
    pq.write_table(pa.table({"response": ["x"], "reward": [1.0]}), path)  # the bytes do not matter: never read
    with pytest.raises(SourceError, match=r"p\.parquet\.\w+: a compressed Parquet file is not read"):
        SourceReader([str(path)], "scored")


def test_folders_and_zips_read_compressed_text_and_name_the_files_they_do_not_read(tmp_path):
    """A folder reads .txt.gz as a .txt given alone is read; files that are no text documents are
    not read, but named (hidden ones and a macOS zip's __MACOSX/ are not), so nothing is dropped
    unseen."""
    import gzip
    import zipfile

    docs = tmp_path / "docs"
    (docs / ".git").mkdir(parents=True)
    (docs / "a.txt").write_text("first")
    (docs / "b.txt.gz").write_bytes(gzip.compress(b"second"))
    (docs / "notes.md").write_text("not a document")
    (docs / ".DS_Store").write_bytes(b"\0")
    (docs / ".git" / "HEAD").write_text("ref")
    reader = SourceReader([str(docs)], "text")
    assert [r.parts[0].text for r in reader] == ["first", "second"]
    assert (reader.ignored.count, reader.ignored.examples) == (1, [str(docs / "notes.md")])
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        zf.writestr("d/a.txt", "first")
        zf.writestr("d/rt-polarity.pos", "a line")
        zf.writestr("__MACOSX/d/._a.txt", "fork")
    reader = SourceReader([str(tmp_path / "d.zip")], "text")
    assert [r.parts[0].text for r in reader] == ["first"]
    assert reader.ignored.examples == [f"{tmp_path / 'd.zip'}!d/rt-polarity.pos"]


def test_a_damaged_document_in_a_folder_or_zip_is_named_and_skipped_alone(tmp_path):
    """A .txt.gz cut short in a folder, or a zip member whose bytes no longer match its CRC, is
    one bad record: named (an error a bare run stops on, with the --on-error hint) or skipped
    alone, the other documents read."""
    import gzip
    import zipfile

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("first")
    (docs / "b.txt.gz").write_bytes(gzip.compress(b"second document")[:-6])
    (docs / "c.txt").write_text("third")
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", "first")
        zf.writestr("b.txt", "second document")
        zf.writestr("c.txt", "third")
    data = archive.read_bytes()
    archive.write_bytes(data.replace(b"second document", b"SECOND document"))  # the stored bytes, not the CRC
    for spec, bad, message in ((docs, f"{docs / 'b.txt.gz'}", r"cannot be read \(EOFError"),
                               (archive, f"{archive}!b.txt", r"cannot be extracted \(Bad CRC-32 for file 'b\.txt'\); "
                                                              r"expected an intact member")):
        with pytest.raises(RecordError, match=rf"^{re.escape(bad)}: {message}"):
            list(SourceReader([str(spec)], "text"))
        reader = SourceReader([str(spec)], "text", on_error="skip")
        assert [r.parts[0].text for r in reader] == ["first", "third"]
        assert reader.skipped.count == 1 and reader.skipped.examples[0].startswith(f"{bad}: ")


def test_a_zip_reads_its_compressed_text_members_as_a_folder_does(tmp_path):
    """Members named .txt.gz / .bz2 / .xz / .zst are documents, decompressed (the same names a
    folder reads); one whose bytes are not what its name says is an error naming it."""
    import bz2
    import gzip
    import lzma
    import zipfile

    import zstandard

    packers = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
               ".zst": zstandard.ZstdCompressor().compress}
    archive = tmp_path / "docs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.txt", "plain")
        for suffix, pack in packers.items():
            zf.writestr(f"b{suffix[1:]}.TXT{suffix.upper()}", pack(f"packed by {suffix}".encode()))
    reader = SourceReader([str(archive)], "text")
    assert [r.parts[0].text for r in reader] == ["plain", "packed by .bz2", "packed by .gz", "packed by .xz",
                                                 "packed by .zst"]
    assert reader.ignored.count == 0
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path / "docs")
    folder = SourceReader([str(tmp_path / "docs")], "text")
    assert [r.parts[0].text for r in folder] == [r.parts[0].text for r in reader] and folder.ignored.count == 0
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("c.txt.gz", gzip.compress(b"a document")[:-6])  # cut short
    with pytest.raises(SourceError, match=rf"^{re.escape(str(bad))}!c\.txt\.gz: cannot be read .*expected a whole "
                                          r"\.gz file"):
        list(SourceReader([str(bad)], "text"))


@pytest.mark.parametrize("last,detail", [
    ('{"response": "b", "rew', r"Unterminated string starting at column 19: the text ends before the JSON value "
                               r"does \(cut short\?\)\)"),
    ('{"response": "b", "reward": 1', r"Expecting ',' delimiter at column 30: the text ends before the JSON value "
                                      r"does \(cut short\?\)\)"),
    ('{"response": "b" "reward": 1}', r"Expecting ',' delimiter at column 18\)"),
    ('{"response": "b", "reward": 1 x', r"Expecting ',' delimiter at column 31\)"),  # the last character is the error
    ('  {"response": "b" "reward": 1}', r"Expecting ',' delimiter at column 20\)"),  # leading spaces count
])
@pytest.mark.parametrize("after", ["", "\n", "\r\n", '\n{"response": "c", "reward": 1}\n'])
def test_malformed_json_names_the_column_and_a_line_cut_short(tmp_path, last, detail, after):
    """The column is the decoder's (1-based), on the line, whether the bad line ends the file or
    not; a line that stops inside its object says so."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(('{"response": "a", "reward": 1}\n' + last + after).encode())
    with pytest.raises(SourceError, match=rf"in\.jsonl:2: malformed JSON \({detail}; expected one JSON object"):
        list(SourceReader([str(path)], "scored"))


def test_a_hub_id_with_no_way_to_the_hub_fails_at_once(no_dns, monkeypatch):
    """When the hub's host name does not resolve (rcond.hub), a hub dataset id is refused before
    the hub client, and its half-minute of retries, is called."""
    from rcond import sources

    def must_not_stream(*a, **kw):
        raise AssertionError("the hub client was called")

    monkeypatch.setattr(sources, "_load_streaming", must_not_stream)
    with pytest.raises(SourceError, match=r"^someone/data: not a file or folder here, and the hub, where it would be "
                                          r"a dataset, cannot be reached \(huggingface.co does not resolve: Name or "
                                          r"service not known\); check the path, or the network"):
        list(SourceReader(["someone/data"], "text"))


def test_jsonl_chunks_hold_about_max_bytes_of_lines(tmp_path):
    """Lines of 100 bytes, 1,000 bytes a chunk: chunks of 10 lines, numbered, every line once; the
    line that reaches 1,000 bytes ends its chunk, so a 5,000-byte line (line 96) ends one of 6
    lines, and 20 short lines follow in two chunks; however the line lengths vary, a chunk holds
    less than 1,000 bytes before its last line. lines_per_chunk still caps."""
    from rcond.sources import jsonl_chunks

    short = [b'{"text": "' + bytes([97 + i % 26]) * 87 + b'"}\n' for i in range(115)]
    lines = short[:95] + [b'{"text": "' + b"y" * 4987 + b'"}\n'] + short[95:115]
    assert {len(line) for line in lines} == {100, 5000}
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(lines))
    chunks = list(jsonl_chunks(path, 1000, max_bytes=1000))
    assert [c for _, chunk in chunks for c in chunk] == lines
    assert [first for first, _ in chunks] == [1 + sum(len(c) for _, c in chunks[:i]) for i in range(len(chunks))]
    assert [len(c) for _, c in chunks] == [10] * 9 + [6, 10, 10]
    assert chunks[9][1][-1] == lines[95]
    assert all(sum(map(len, c[:-1])) < 1000 for _, c in chunks)
    assert [len(c) for _, c in jsonl_chunks(path, 4, max_bytes=1 << 20)][:3] == [4, 4, 4]
    mixed = tmp_path / "mixed.jsonl"  # many short lines, then long ones: no chunk takes many long lines at once
    mixed.write_bytes(short[0] * 511 + lines[95] * 50)
    chunks = list(jsonl_chunks(mixed, 1000, max_bytes=12_000))
    assert max(sum(map(len, c)) for _, c in chunks) < 12_000 + 5000 and len(chunks) >= 20


def test_a_byte_order_mark_on_a_later_line_is_malformed_json_on_both_paths(tmp_path):
    """Only the file's own byte-order mark is dropped: one opening a later line (two files joined
    with cat) makes that line malformed, named by its line, on the line path and the chunk path."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"text": "a"}\n\xef\xbb\xbf{"text": "b"}\n')
    for read in (list, lambda r: list(r.batches())):
        with pytest.raises(RecordError, match=rf"^{re.escape(str(path))}:2: malformed JSON \(Unexpected UTF-8 BOM"):
            read(SourceReader([str(path)], "text"))


def test_jsonl_chunks_drop_a_byte_order_mark_only_at_the_start_of_the_file(tmp_path):
    from rcond.sources import jsonl_chunks

    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "a"}\n\xef\xbb\xbf{"text": "b"}\n')
    assert list(jsonl_chunks(path, 1)) == [(1, [b'{"text": "a"}\n']), (2, [b'\xef\xbb\xbf{"text": "b"}\n'])]


def test_records_read_one_by_one_come_up_to_size_a_batch_and_end_one_at_max_bytes(tmp_path):
    """A .json file is read record by record: a batch ends at ``size`` records, or with the record
    whose texts bring it to ``max_bytes`` characters (4 a record here)."""
    path = tmp_path / "in.json"
    path.write_text(json.dumps([{"text": "abcd"}] * 5))
    reader = SourceReader([str(path)], "text")
    assert [b.records for b in reader.batches(2, max_bytes=1 << 20)] == [2, 2, 1]
    assert [b.records for b in reader.batches(1000, max_bytes=8)] == [2, 2, 1]
    path.write_text(json.dumps([{"prompt": "abc", "response": "d", "reward": 1}] * 4))  # prompt and response count
    assert [b.records for b in SourceReader([str(path)], "scored").batches(1000, max_bytes=8)] == [2, 2]


def test_batches_of_long_documents_hold_about_max_bytes(tmp_path):
    """Long records come fewer to a batch, on every reading path (JSON Lines column-wise, Parquet,
    .arrow, a saved dataset, records one by one), and the records are those of one big batch, in
    order."""
    import datasets
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    rows = [{"response": f"{i} " + "word " * 200, "reward": float(i)} for i in range(60)]  # ~1 kB each
    write_jsonl(tmp_path / "a.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    feather.write_feather(pa.Table.from_pylist(rows), tmp_path / "a.arrow")
    (tmp_path / "a.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    for name in ("a.jsonl", "a.parquet", "a.arrow", "a.json", "saved"):
        reader = SourceReader([str(tmp_path / name)], "scored")
        whole = list(reader.batches(1000, max_bytes=1 << 30))
        cut = list(reader.batches(1000, max_bytes=10_000))
        assert len(whole) == 1, name
        assert 5 <= len(cut) <= 15 and all(b.records <= 12 for b in cut), (name, [b.records for b in cut])
        assert [t for b in cut for t in b.texts] == whole[0].texts, name
        assert [x for b in cut for x in b.rtg.tolist()][0::2] == whole[0].rtg.tolist()[0::2], name


@pytest.mark.parametrize("fmt", ["pairs", "dialog"])
def test_plain_text_documents_are_refused_up_front_for_pairs_and_dialogs(tmp_path, fmt):
    """A .txt file, a folder or a .zip of them holds documents, not rows: refused before reading,
    with --on-error skip too (each document was skipped as bad, ending in 'no records were read')."""
    import zipfile

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("hello")
    (tmp_path / "a.txt").write_text("hello")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("a.txt", "hello")
    for name in ("a.txt", "docs", "a.zip"):
        for on_error in ("fail", "skip"):
            with pytest.raises(SourceError, match=re.escape(f"{tmp_path / name}: format {fmt!r} needs JSON/CSV/Parquet "
                                                            f"rows, not plain-text documents")):
                SourceReader([str(tmp_path / name)], fmt, on_error=on_error)


@pytest.mark.parametrize("fmt,refusal", [("pairs", "format 'pairs' needs JSON/CSV/Parquet rows, not plain-text "
                                                    "documents (.txt files, a folder or a .zip of them); those are read "
                                                    "by --format text, or --format scored with --score-with"),
                                           ("text", "folder holds no .txt files, and is no dataset saved by datasets' "
                                                    "save_to_disk (it has no state.json or dataset_dict.json)")])
def test_a_folder_of_data_files_names_them_as_the_inputs_to_give(tmp_path, fmt, refusal):
    """A copy of a hub repository laid out as Anthropic/hh-rlhf is (a folder per subset, a file
    per split) given as a folder: refused, naming the first three data files it holds (hidden ones
    aside) and how many more, as the inputs to give instead."""
    repo = tmp_path / "hh-rlhf"
    for name in ("harmless-base/test.jsonl.gz", "harmless-base/train.jsonl.gz", "helpful-base/test.jsonl.gz",
                 "helpful-base/train.jsonl.gz", "README.md", ".git/config.json"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_bytes(b"")
    with pytest.raises(SourceError, match=re.escape(
            f"{repo}: {refusal}; it holds 4 data file(s) of rows (harmless-base/test.jsonl.gz, harmless-base/train."
            f"jsonl.gz, helpful-base/test.jsonl.gz and 1 more), which a folder input does not read: give the files "
            f"you mean as inputs (e.g. {repo / 'harmless-base' / 'test.jsonl.gz'})") + "$"):
        list(SourceReader([str(repo)], fmt))
    with pytest.raises(SourceError, match=re.escape(f"{refusal}; it holds 2 data file(s) of rows (test.jsonl.gz, "
                                                    f"train.jsonl.gz), which")):
        list(SourceReader([str(repo / "harmless-base")], fmt))


def test_three_data_files_are_all_named_and_a_folder_named_like_one_is_none(tmp_path):
    """Three data files are named with no 'and 0 more'; a folder named like a data file (a
    partitioned Parquet dataset, t.parquet/) is no file of rows, the files in it are."""
    for name in ("a.csv", "b.jsonl", "t.parquet/part-0.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(SourceError, match=re.escape(
            "; it holds 3 data file(s) of rows (a.csv, b.jsonl, t.parquet/part-0.parquet), which a folder input does "
            f"not read: give the files you mean as inputs (e.g. {tmp_path / 'a.csv'})") + "$"):
        list(SourceReader([str(tmp_path)], "text"))


def length_scorer():
    """A scorer giving each text its length, and the list of the texts of each call it gets."""
    calls = []

    def length(texts):
        calls.append(list(texts))
        return [float(len(t)) for t in texts]

    return calls, length


@pytest.mark.parametrize("n", [4, 5])
def test_records_are_scored_score_batch_at_a_time_and_the_rest_once(tmp_path, n):
    """score_batch 2: four dialogs are scored in two calls of two turns, five in three (the last
    of one); each turn gets its own score."""
    calls, length = length_scorer()

    rows = [{"turns": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * (i + 1)}]}
            for i in range(n)]
    records, _ = read(tmp_path, "dialog", rows, scorer=length, score_batch=2)
    assert calls == [["a" * (i + 1) for i in range(k, min(k + 2, n))] for k in range(0, n, 2)]
    assert [r.parts[1].rtg for r in records] == [float(i + 1) for i in range(n)]


@pytest.mark.parametrize("fmt,rows,want", [
    ("scored", [{"response": t} for t in "abcde"], [["a", "b", "c"], ["d", "e"]]),
    ("pairs", [{"prompt": "p", "chosen": c, "rejected": r} for c, r in ("ab", "cd", "ef")],
     [["a", "b", "c"], ["d"], ["e", "f"]])])
def test_an_odd_score_batch_is_rounded_up_only_for_pairs(tmp_path, fmt, rows, want):
    """score_batch 3: five scored records are scored in rounds of three (calls of three, then the
    two left); pairs' rounds are of four records (two whole pairs), each round called three texts
    at a time, so the second pair's rejected side gets a call of its own."""
    calls, length = length_scorer()

    records, _ = read(tmp_path, fmt, rows, scorer=length, score_batch=3)
    assert calls == want
    assert len(records) == sum(map(len, want))


@pytest.mark.parametrize("score_batch", [1, 2, 3])
def test_a_pair_the_scorer_gives_a_non_finite_score_on_one_side_is_skipped_whole(tmp_path, score_batch):
    """Three pairs, the second's rejected side scored NaN: under --on-error skip that pair goes
    whole (the rejected side named), as a pair with a NaN score of its own does, so the records
    are the two sides of the other two pairs, each scored; an odd score batch never parts a pair's
    sides between rounds (score_batch 1 and 3 included); under fail the side is named."""
    def length(texts):
        return [float("nan") if t == "r1" else float(len(t)) for t in texts]

    rows = [{"prompt": "p", "chosen": f"chosen{i}", "rejected": f"r{i}"} for i in range(3)]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    records_path = SourceReader([str(path)], "pairs", scorer=length, score_batch=score_batch, on_error="skip")
    assert [(r.parts[1].text, r.parts[0].rtg) for r in records_path] == [("chosen0", 7.0), ("r0", 2.0),
                                                                         ("chosen2", 7.0), ("r2", 2.0)]
    batch_path = SourceReader([str(path)], "pairs", scorer=length, score_batch=score_batch, on_error="skip")
    texts = [t for b in batch_path.batches(2) for t in b.texts]
    assert texts == ["p", "chosen0", "p", "r0", "p", "chosen2", "p", "r2"]
    for reader in (records_path, batch_path):
        assert reader.skipped.count == 1
        assert reader.skipped.examples == [f"{path}:2 (rejected): scorer returned a non-finite reward nan"]
    with pytest.raises(SourceError, match=r"in\.jsonl:2 \(rejected\): scorer returned a non-finite reward nan$"):
        list(SourceReader([str(path)], "pairs", scorer=length, score_batch=score_batch))


def test_a_read_left_behind_reports_into_its_own_log_not_the_next_reads(tmp_path):
    """A read left running by an interrupt (its thread in a slow scorer call) skipped its bad
    record into whatever log the reader held when the call returned: the next read's, whose
    count and skipped.txt then held a record twice. Each read now keeps the log it started with."""
    import threading

    calls, in_call, release = [], threading.Event(), threading.Event()

    def slow_then_fast(texts):
        calls.append(texts)
        if len(calls) == 1:  # the first read's call: slow, until the second read is done
            in_call.set()
            release.wait(10)
        return [float("nan") if t == "bad" else 0.5 for t in texts]

    src = write_jsonl(tmp_path / "s.jsonl", [{"response": "bad"}, {"response": "good"}])
    reader = SourceReader([str(src)], "scored", scorer=slow_then_fast, on_error="skip")
    left_behind = threading.Thread(target=lambda: list(reader.batches()))
    left_behind.start()
    assert in_call.wait(10)
    assert sum(b.records for b in reader.batches()) == 1 and reader.skipped.count == 1
    release.set()
    left_behind.join(10)
    assert reader.skipped.count == 1 and reader.skipped.examples == [f"{src}:1: scorer returned a non-finite reward nan"]


@pytest.mark.parametrize("spec,hub", [
    ("someone/data", True), ("someone/data:test", True),
    ("reviews", False),                  # a bare name: a missing file here, not a hub id
    ("./someone/data", False),           # a path relative to here
    ("~/data/reviews", False),           # a path from the home folder
    ("data/reviews.zip", False),         # a data file's suffix: .zip
    ("data/reviews.jsonl.gz", False),    # ... compressed
    ("data/reviews.jsonl:train", False),  # ... before a :split
])
def test_only_owner_slash_name_is_taken_for_a_hub_id_when_no_such_path_exists(tmp_path, monkeypatch, spec, hub):
    """An input that is not here is read from the hub only when it reads as ``owner/name``
    (optionally ``:split``): a bare name, a path from ``~`` or a name ending in a data file's suffix
    (a .zip, a compressed one, one before ``:split``) is a mistyped path, reported as missing
    rather than sent to the hub."""
    from rcond import sources

    asked = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    hub_found(monkeypatch)
    monkeypatch.setattr(sources, "_load_streaming", lambda repo, split, **kw: asked.append((repo, split)) or
                        iter([{"text": "t"}]))
    if hub:
        assert list(iter_rows(spec)) == [(f"{spec}:row 1", {"text": "t"})]
        assert asked == [(spec.partition(":")[0], spec.partition(":")[2] or "train")]
    else:
        with pytest.raises(SourceError, match=rf"^{re.escape(spec)}: no such file or directory$"):
            list(iter_rows(spec))
        assert asked == []


def test_a_name_with_dots_is_read_by_its_last_suffix_and_a_zip_in_capitals_is_a_zip(tmp_path):
    """``reviews.v2.jsonl`` is JSON Lines and ``notes.2024.txt.gz`` a compressed document (the
    suffix that names the format is the last one before any compression suffix); ``DOCS.ZIP`` is
    an archive, as ``.TXT`` and ``.JSONL.GZ`` are read in any case."""
    import gzip
    import zipfile

    write_jsonl(tmp_path / "reviews.v2.jsonl", [{"text": "a"}])
    assert list(iter_rows(str(tmp_path / "reviews.v2.jsonl"))) == [(f"{tmp_path / 'reviews.v2.jsonl'}:1", {"text": "a"})]
    (tmp_path / "notes.2024.txt.gz").write_bytes(gzip.compress(b"a document"))
    assert [t for _, t in iter_rows(str(tmp_path / "notes.2024.txt.gz"))] == ["a document"]
    with zipfile.ZipFile(tmp_path / "DOCS.ZIP", "w") as zf:
        zf.writestr("a.txt", "in the archive")
    assert list(iter_rows(str(tmp_path / "DOCS.ZIP"))) == [(f"{tmp_path / 'DOCS.ZIP'}!a.txt", "in the archive")]


@pytest.mark.parametrize("name", ["p.parquet.gz", "p.arrow.zst"])
def test_iter_rows_refuses_a_compressed_parquet_or_arrow_file_rather_than_read_it_as_csv(tmp_path, name):
    """iter_rows (which ``rcond sample --prompts`` calls directly, without the SourceReader's
    up-front check) refuses a compressed Parquet or Arrow file by name; read past the check, its
    decompressed bytes would go to the CSV reader."""
    import gzip

    (tmp_path / name).write_bytes(gzip.compress(b"prompt\nnot,really,parquet\n"))
    with pytest.raises(SourceError, match=rf"{re.escape(name)}: a compressed (Parquet|Arrow) file is not read"):
        list(iter_rows(str(tmp_path / name)))


def test_an_input_under_the_home_folder_is_read_from_a_tilde_path(tmp_path, monkeypatch):
    """``~/in.jsonl`` and ``~/in.parquet`` are read from the home folder, as a shell would expand
    them (a quoted ``~`` in a config or a script reaches rcond unexpanded); the Parquet file as
    Parquet, not as CSV."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setenv("HOME", str(tmp_path))
    write_jsonl(tmp_path / "in.jsonl", [{"text": "home"}])
    pq.write_table(pa.table({"text": ["home"]}), tmp_path / "in.parquet")
    for spec in ("~/in.jsonl", "~/in.parquet"):
        assert [row for _, row in iter_rows(spec)] == [{"text": "home"}], spec


def test_closing_a_zst_reader_closes_the_file_it_reads(tmp_path):
    """Closing the .zst reader closes the file object it was given (as its docstring says), so
    reading a folder of .txt.zst files does not leave one open file each behind."""
    import zstandard

    from rcond.sources import _decompressing

    path = tmp_path / "a.txt.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"some text"))
    raw = open(path, "rb")
    with _decompressing(raw, ".zst") as f:
        assert f.read() == b"some text"
    assert raw.closed and f.closed


@pytest.mark.parametrize("suffix,error", [(".gz", "error: Error -3 while decompressing data"),
                                          (".xz", "LZMAError: Corrupt input data"),
                                          (".bz2", "OSError: Invalid data stream")])
def test_a_compressed_file_damaged_inside_is_named_not_a_crash(tmp_path, suffix, error):
    """Bytes changed in the middle of a compressed stream raise zlib.error (gzip), LZMAError (xz)
    or OSError (bz2), none of them a subclass of another: each is a SourceError naming the file and
    the decompressor's complaint, on the line path, the chunk path and for a document."""
    import bz2
    import gzip
    import lzma

    compress = {".gz": gzip.compress, ".xz": lzma.compress, ".bz2": bz2.compress}[suffix]
    rows = b"".join(b'{"response": "r%d", "reward": %d}\n' % (i, i) for i in range(3000))
    packed = compress(rows)
    damaged = packed[:40] + bytes(b ^ 0x55 for b in packed[40:60]) + packed[60:]
    (tmp_path / f"r.jsonl{suffix}").write_bytes(damaged)
    (tmp_path / f"d.txt{suffix}").write_bytes(damaged)
    for spec, read in ((f"r.jsonl{suffix}", list), (f"r.jsonl{suffix}", lambda r: list(r.batches())),
                       (f"d.txt{suffix}", list)):
        path = tmp_path / spec
        with pytest.raises(SourceError, match=rf"^{re.escape(str(path))}: cannot be read \({error}"):
            read(SourceReader([str(path)], "scored" if "jsonl" in spec else "text"))


@pytest.mark.parametrize("name,data,message", [
    ("a.jsonl", b'{"text": "a"}\n{broken\n', ":2: malformed JSON"),
    ("a.json", b'[{"text": "a"}, 5]', ":item 2: expected a JSON object, got a number (5)"),
    ("a.csv", b"text\na\nb,c\n", ":row 2 (line 3): 2 fields, but the header (line 1) names 1"),
    ("a.txt", b"fine\n\xff", ":2: not valid UTF-8 (byte 1 of the line)"),
])
def test_a_bad_record_of_every_reader_is_a_record_error(tmp_path, name, data, message):
    """A bad line of JSON Lines, a bad item of a .json array, a bad CSV row and a document that is
    not UTF-8 are each a RecordError (what --on-error skip skips, and what the CLI's hint to pass
    it is shown for), not a plain SourceError about the whole input."""
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(RecordError) as caught:
        list(SourceReader([str(path)], "text"))
    assert str(caught.value).startswith(f"{path}{message}")


def test_a_csv_cell_past_the_csv_modules_field_limit_is_named_by_its_line(tmp_path, monkeypatch):
    """A cell longer than the csv module's field limit (2**31 - 1 characters here, lowered to 10
    for the test) stops the file with an error naming the line its row starts on: the only
    error the csv module raises under the dialect read."""
    import csv

    from rcond import sources

    path = tmp_path / "long.csv"
    path.write_text("text\nshort\n\"" + "x" * 5 + "\n" + "y" * 20 + "\"\n")  # row 2 starts on line 3
    before = csv.field_size_limit(10)
    try:
        monkeypatch.setattr(sources, "CSV_FIELD_LIMIT", 10)
        with pytest.raises(SourceError, match=rf"^{re.escape(str(path))}:3: not readable as CSV \(field larger than "
                                              rf"field limit \(10\)\)"):
            list(iter_rows(str(path)))
    finally:
        csv.field_size_limit(before)


def test_a_parquet_file_in_capitals_is_read_not_taken_for_a_compressed_one(tmp_path):
    """``P.PARQUET`` is a Parquet file (its suffix in capitals), read, not refused by the up-front
    check for a compressed Parquet file (``p.parquet.gz``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"response": ["x"], "reward": [1.0]}), tmp_path / "P.PARQUET")
    assert [r.parts[1].text for r in SourceReader([str(tmp_path / "P.PARQUET")], "scored")] == ["x"]


def _breaks_after_one_row(*a, **kw):
    yield {"text": "a"}
    raise ConnectionError("connection reset")


def _no_such_split(*a, **kw):
    raise ValueError("Bad split: test. Available splits: ['train']")


@pytest.mark.parametrize("stream,spec,message", [
    (_breaks_after_one_row, "someone/data", r"reading the hub dataset failed after row 1 \(ConnectionError: connection "
                                            r"reset\)$"),
    (_no_such_split, "someone/data:test", r"not a file or folder here, and not readable as a hub dataset \(ValueError: "
                                          r"Bad split: test"),
])
def test_a_hub_dataset_that_fails_is_named_with_how_far_it_was_read(monkeypatch, stream, spec, message):
    """A hub dataset whose stream breaks after one row was read is named as failing after row 1,
    not as unreadable: it was found, and its first row read; one the hub client refuses with a
    ValueError (``datasets``' unknown split) is named as not readable."""
    from rcond import sources

    hub_found(monkeypatch)
    monkeypatch.setattr(sources, "_load_streaming", stream)
    with pytest.raises(SourceError, match=rf"^{spec}: {message}"):
        list(iter_rows(spec))


def test_an_arrow_column_of_nulls_only_holds_no_bytes_and_its_rows_are_named(tmp_path):
    """A column Arrow types as null (every value missing) takes no bytes: a batch of it is cut by
    the mean row size without dividing by zero, and each row is named as lacking its text, on the
    record path and the column-wise one."""
    import pyarrow as pa
    import pyarrow.feather as feather

    table = pa.table({"text": pa.array([None, None])})
    assert table.nbytes == 0
    feather.write_feather(table, tmp_path / "n.arrow")
    for read in (list, lambda r: list(r.batches())):
        with pytest.raises(RecordError, match=rf"^{re.escape(str(tmp_path / 'n.arrow'))}:row 1: field 'text' is null"):
            read(SourceReader([str(tmp_path / "n.arrow")], "text"))
    skipping = SourceReader([str(tmp_path / "n.arrow")], "text", on_error="skip")
    assert list(skipping) == [] and skipping.skipped.count == 2


def test_a_parquet_file_of_long_rows_is_decoded_in_batches_of_about_max_bytes(tmp_path, monkeypatch):
    """Parquet batches are bounded where pyarrow decodes them, by the file's mean row size (its
    metadata), not only cut afterwards: 60 rows of about 1 kB in one row group, read with 10 kB a
    batch, come from the Parquet reader about 10 at a time, all in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rcond import sources

    rows = [{"response": f"{i} " + "word " * 200, "reward": float(i)} for i in range(60)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups == 1
    decoded, real = [], sources._parquet_batches

    def watched(*args, **kwargs):
        for batch in real(*args, **kwargs):
            decoded.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(sources, "_parquet_batches", watched)
    batches = list(sources.arrow_batches(str(tmp_path / "a.parquet"), 1000, max_bytes=10_000))
    assert sum(decoded) == 60 and 5 <= len(decoded) <= 15 and max(decoded) <= 12, decoded
    assert [r["response"] for _, _, b in batches for r in b.to_pylist()] == [r["response"] for r in rows]


def test_a_saved_split_is_named_past_the_last_colon_and_a_file_or_folder_of_that_name_is_not_one(tmp_path,
                                                                                               monkeypatch):
    """``DIR:SPLIT`` is cut at its last colon, so a DatasetDict below a folder whose name holds one
    (``runs:v2/dd:test``) is read, from ``~`` too; a file that exists under the very name given
    (``dd:x.jsonl``) is that file, not a split of ``dd``; and a folder of documents holding a
    folder named ``state.json`` is no saved dataset."""
    import datasets

    home = tmp_path / "runs:v2"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "a"}]),
                          "test": datasets.Dataset.from_list([{"text": "b"}])}).save_to_disk(str(home / "dd"))
    monkeypatch.setenv("HOME", str(home))
    for spec in (f"{home}/dd:test", "~/dd:test"):
        assert list(iter_rows(spec)) == [(f"{home / 'dd'}:test:row 1", {"text": "b"})], spec
    with pytest.raises(SourceError, match=rf"^{re.escape(str(home))}/dd:: no such file or directory$"):
        list(iter_rows(f"{home}/dd:"))  # a colon without a split names no split, not the train split
    write_jsonl(home / "dd:x.jsonl", [{"text": "file"}])
    assert list(iter_rows(f"{home}/dd:x.jsonl")) == [(f"{home}/dd:x.jsonl:1", {"text": "file"})]
    (tmp_path / "docs" / "state.json").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("a document")
    assert list(iter_rows(str(tmp_path / "docs"))) == [(str(tmp_path / "docs" / "a.txt"), "a document")]


def test_a_column_given_three_times_is_counted(tmp_path):
    """The refusal of a repeated column name says how many times it appears (here 3)."""
    import pyarrow as pa
    import pyarrow.feather as feather

    table = pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array(["c"])], names=["text"] * 3)
    feather.write_feather(table, tmp_path / "t.arrow")
    with pytest.raises(SourceError, match=r"t\.arrow: column 'text' appears 3 times; expected each column name once"):
        list(iter_rows(str(tmp_path / "t.arrow")))


def test_a_damaged_later_shard_of_a_saved_dataset_counts_its_own_rows(tmp_path):
    """A saved dataset's second shard cut short in its rows is named with the rows read from that
    shard (none), not with the rows of the shards before it, since the message names the shard."""
    import datasets

    datasets.Dataset.from_list([{"text": t} for t in "abcd"]).save_to_disk(str(tmp_path / "two"), num_shards=2)
    first, second = sorted((tmp_path / "two").glob("*.arrow"))
    second.write_bytes(second.read_bytes()[:-30])
    with pytest.raises(SourceError, match=rf"^{re.escape(str(second))}: reading failed after row 0 \("):
        list(iter_rows(str(tmp_path / "two")))


def test_a_saved_dataset_whose_json_is_not_what_save_to_disk_writes_is_named(tmp_path):
    """A state.json or dataset_dict.json that is missing (a split's folder without one), not an
    object, holds no list where one is expected, or lists shard names rather than
    ``{"filename": ...}`` is a SourceError naming that file, not a crash or a misread split."""
    import datasets

    rows = datasets.Dataset.from_list([{"text": "a"}])
    datasets.DatasetDict({"train": rows, "test": rows}).save_to_disk(str(tmp_path / "dd"))
    dd = tmp_path / "dd"
    (dd / "test" / "state.json").unlink()
    with pytest.raises(SourceError, match=rf"^{re.escape(str(dd / 'test' / 'state.json'))}: not readable as the JSON "
                                          rf"datasets' save_to_disk writes"):
        list(iter_rows(f"{dd}:test"))
    state = dd / "train" / "state.json"
    for written, message in (("[]", ": not readable as the JSON datasets' save_to_disk writes"),
                             ('{"_data_files": "data-00000-of-00001.arrow"}', ": no list '_data_files'"),
                             ('{"_data_files": ["data-00000-of-00001.arrow"]}',
                              ": '_data_files' is not a list of {\"filename\": ...}")):
        state.write_text(written)
        with pytest.raises(SourceError, match=rf"^{re.escape(str(state) + message)}"):
            list(iter_rows(str(dd)))
    (dd / "dataset_dict.json").write_text('{"splits": "train"}')  # a string, in which 'train' is found
    with pytest.raises(SourceError, match=rf"^{re.escape(str(dd / 'dataset_dict.json'))}: no list 'splits'"):
        list(iter_rows(str(dd)))


def test_folders_and_zips_pass_over_hidden_names_at_any_depth_and_what_is_no_file(tmp_path):
    """A folder read below a hidden one (``~/.cache/docs``) is read; inside it, a hidden file in a
    subfolder, a macOS ``__MACOSX`` folder and a subfolder named like a document are passed over
    unnamed; a zip's directory entries and hidden members are too, and a zip without one .txt
    member is refused as a folder without one is."""
    import zipfile

    docs = tmp_path / ".cache" / "docs"
    (docs / "sub" / "chapters.txt").mkdir(parents=True)
    (docs / "__MACOSX").mkdir()
    (docs / "a.txt").write_text("first")
    (docs / "sub" / "b.txt").write_text("second")
    (docs / "sub" / ".draft.txt").write_text("hidden")
    (docs / "__MACOSX" / "a.txt").write_text("fork")
    ignored = []
    assert [text for _, text in iter_rows(str(docs), on_ignored=ignored.append)] == ["first", "second"]
    assert ignored == []
    archive = tmp_path / "d.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("d/", "")
        zf.writestr("d/a.txt", "first")
        zf.writestr("d/sub/.draft.txt", "hidden")
        zf.writestr("__MACOSX/d/a.txt", "fork")
    assert [text for _, text in iter_rows(str(archive), on_ignored=ignored.append)] == ["first"]
    assert ignored == []
    with zipfile.ZipFile(tmp_path / "none.zip", "w") as zf:
        zf.writestr("readme.md", "no documents")
    with pytest.raises(SourceError, match=rf"^{re.escape(str(tmp_path / 'none.zip'))}: archive holds no \.txt files$"):
        list(iter_rows(str(tmp_path / "none.zip")))


def test_fingerprints_are_the_sha256_of_what_is_read(tmp_path, monkeypatch):
    """A file's fingerprint is the sha256 of all its bytes (past the first MiB read); a folder's
    covers its .txt documents, each by its name below the folder (a document moved to another
    subfolder changes it) and its bytes, not the files it does not read (notes, hidden ones);
    ``~/docs`` is the folder at home; a hub id is fingerprinted by the dataset it names at the
    commit its revision points to."""
    import hashlib

    from rcond import sources
    from rcond.sources import fingerprint

    big = tmp_path / "big.jsonl"
    big.write_bytes(os.urandom(3 << 19))  # 1.5 MiB
    assert fingerprint(str(big)) == "sha256:" + hashlib.sha256(big.read_bytes()).hexdigest()
    docs = tmp_path / "docs"
    (docs / "one").mkdir(parents=True)
    (docs / "one" / "a.txt").write_text("document")
    expected = "sha256:" + hashlib.sha256(b"one/a.txt" + b"document").hexdigest()
    assert fingerprint(str(docs)) == expected
    (docs / "notes.md").write_text("not read")
    (docs / ".hidden.txt").write_text("not read")
    assert fingerprint(str(docs)) == expected
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fingerprint("~/docs") == expected
    (docs / "one").rename(docs / "two")
    assert fingerprint(str(docs)) == "sha256:" + hashlib.sha256(b"two/a.txt" + b"document").hexdigest() != expected
    hub_found(monkeypatch)
    assert fingerprint("someone/data:test") == "hub:someone/data@c0ffee:test"
    monkeypatch.setattr(sources.hub, "dataset_commit", lambda repo, revision: pytest.fail("the hub was asked"))
    with pytest.raises(SourceError, match=r"^data/reviwes\.jsonl: no such file or directory$"):
        fingerprint("data/reviwes.jsonl")  # a mistyped file, as the build's background fingerprinting meets it


def test_a_saved_datasets_fingerprint_leaves_out_hidden_files(tmp_path):
    """A hidden file left in a saved dataset's folder (a .DS_Store, an editor's lock file) is not
    read, so it does not change the dataset's fingerprint."""
    import datasets

    from rcond.sources import fingerprint

    datasets.Dataset.from_list([{"text": "a"}]).save_to_disk(str(tmp_path / "one"))
    before = fingerprint(str(tmp_path / "one"))
    (tmp_path / "one" / ".DS_Store").write_bytes(b"\0\1")
    assert fingerprint(str(tmp_path / "one")) == before


@pytest.mark.parametrize("data", [b"not a zip archive at all", b"PK\x03\x04" + b"\0" * 40])
def test_a_file_named_zip_that_is_no_readable_archive_is_named(tmp_path, data):
    """A .zip that is not a zip archive (or only its first bytes) is a SourceError naming it as
    unreadable, not zipfile's BadZipFile out of the reader."""
    path = tmp_path / "docs.zip"
    path.write_bytes(data)
    with pytest.raises(SourceError, match=rf"^{re.escape(str(path))}: not a readable zip archive \(File is not a zip "
                                          rf"file\)$"):
        list(iter_rows(str(path)))


def test_an_empty_zst_file_holds_no_rows_and_a_damaged_json_gz_is_named(tmp_path):
    """An empty .jsonl.zst (no frame at all) holds no rows, as an empty .jsonl.gz does; a .json.gz
    that is not gzip is named as unreadable from its very first line (where the reader looks to
    tell an array from JSON Lines), not a BadGzipFile out of the reader."""
    (tmp_path / "e.jsonl.zst").write_bytes(b"")
    assert list(iter_rows(str(tmp_path / "e.jsonl.zst"))) == []
    (tmp_path / "d.json.gz").write_bytes(b'[{"text": "not gzip"}]')
    with pytest.raises(SourceError, match=r"d\.json\.gz: cannot be read \(BadGzipFile: Not a gzipped file"):
        list(iter_rows(str(tmp_path / "d.json.gz")))


def test_csv_line_breaks_inside_quoted_cells_are_kept_as_written(tmp_path):
    """The file is read without newline translation (as the csv module requires): a CRLF or a
    lone CR inside a quoted cell stays in the text, and CRLF row ends are no text."""
    path = tmp_path / "r.csv"
    path.write_bytes(b'text,n\r\n"a\r\nb",1\r\n"c\rd",2\r\n')
    assert [row["text"] for _, row in iter_rows(str(path))] == ["a\r\nb", "c\rd"]


CSV_CELLS = ["", "x", "hello world", "a,b", 'say "hi"', "line1\nline2", "l1\r\nl2", "c\rd", " padded ", "\u00e9",
             "\u2028", "NA", "   ", '""', "\n"]


def random_csv(rng) -> tuple[bytes, list, list]:
    """A CSV written cell by cell (cells quoted where they must be, or by chance), with blank rows,
    short rows, rows a field too wide and rows with a byte that is not UTF-8, and what reading it
    must give, known by construction: ``(origin suffix, row)`` of each good row and ``(row, line)``
    of each bad one. A line ends at ``\\n``, ``\\r\\n`` or a lone ``\\r``, in a quoted cell too."""
    def cell(value: str) -> bytes:
        quote = any(c in value for c in ',"\r\n') or rng.random() < 0.2
        return ('"' + value.replace('"', '""') + '"' if quote else value).encode()

    out, line, rows, good, bad = b"\n" * int(rng.integers(3)), 1, 0, [], []
    line += out.count(b"\n")
    out += b"a,b,c" + (b"\r\n" if rng.random() < 0.3 else b"\n")
    line += 1
    for i in range(int(rng.integers(1, 12))):
        width = int(rng.choice([0, 1, 2, 3, 3, 3, 3, 4]))
        values = [CSV_CELLS[rng.integers(len(CSV_CELLS))] for _ in range(width)]
        raw = b",".join(cell(v) for v in values)
        utf8 = rng.random() > 0.05 or not raw
        if not utf8:
            raw += b"\xe9"
        if not utf8 or "".join(values).strip():
            rows += 1
            where = f":row {rows} (line {line})"
            if not utf8 or width > 3:
                bad.append(where)
            else:
                good.append((where, {k: v or None for k, v in zip("abc", values)}))
        out += raw + (b"\r\n" if rng.random() < 0.3 else b"\n")
        line += 1 + sum(v.count("\n") + v.replace("\r\n", "").count("\r") for v in values)
    return out, good, bad


def test_random_csv_rows_cells_and_line_numbers_as_written(tmp_path):
    """Fuzzed CSV files, read with --on-error skip: every good row with its cells as written (an
    empty cell null) and its row and line number, every bad row named by its row and line."""
    rng = np.random.default_rng(11)
    for trial in range(150):
        data, good, bad = random_csv(rng)
        path = tmp_path / f"f{trial}.csv"
        path.write_bytes(data)
        skipped = []
        rows = list(iter_rows(str(path), skipped.append))
        assert rows == [(f"{path}{where}", row) for where, row in good], data
        assert [m[len(str(path)):m.index(")") + 1] for m in skipped] == bad, data


def test_a_folder_named_like_a_parquet_file_is_a_folder_of_documents(tmp_path):
    """A folder whose name ends in .parquet is read as the folder it is, not opened as Parquet."""
    (tmp_path / "d.parquet").mkdir()
    (tmp_path / "d.parquet" / "a.txt").write_text("a document")
    assert [text for _, text in iter_rows(str(tmp_path / "d.parquet"))] == ["a document"]


def test_files_without_a_suffix_are_named_as_not_read(tmp_path):
    """A folder's or zip's file without any suffix (LICENSE) is no document, and is named as not
    read like any other."""
    import zipfile

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("a document")
    (tmp_path / "docs" / "LICENSE").write_text("terms")
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        zf.writestr("a.txt", "a document")
        zf.writestr("LICENSE", "terms")
    for spec, named in ((tmp_path / "docs", str(tmp_path / "docs" / "LICENSE")),
                        (tmp_path / "d.zip", f"{tmp_path / 'd.zip'}!LICENSE")):
        ignored = []
        assert [text for _, text in iter_rows(str(spec), on_ignored=ignored.append)] == ["a document"]
        assert ignored == [named]


def test_values_that_are_no_object_are_named_by_kind_and_cut_to_40_characters(tmp_path):
    """What a .json item or a Parquet field is, when it is not what was expected: an array, a
    bytes value by its Python type, and a long string or number shown by its first 40 characters
    (repr, so a string's quote opens it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "k.json").write_text(json.dumps(["x" * 100, 10 ** 50, [1]]))
    reader = SourceReader([str(tmp_path / "k.json")], "text", on_error="skip")
    assert list(reader) == []
    assert [e.split(": ", 1)[1] for e in reader.skipped.examples] == [
        "expected a JSON object, got a string ('" + "x" * 39 + ")",
        "expected a JSON object, got a number (" + "1" + "0" * 39 + ")",
        "expected a JSON object, got an array"]
    pq.write_table(pa.table({"text": pa.array([b"raw"], pa.binary())}), tmp_path / "b.parquet")
    with pytest.raises(SourceError, match=r"b\.parquet:row 1: field 'text' must be a string, got a bytes$"):
        list(SourceReader([str(tmp_path / "b.parquet")], "text"))


def test_chat_messages_where_text_is_expected_say_what_rcond_reads_instead(tmp_path):
    """Conversational preference data holds each side as a list of {role, content} messages: the
    error says so and what to give instead, for a pair's side and its prompt, a scored response,
    on the JSON Lines chunk path, the line path (--on-error skip) and from Parquet alike; any other
    array (of numbers, of objects without role and content, empty) gets the plain message."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    chat = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    hint = (r" of chat messages \(\{role, content\}\); rcond reads text, with no chat template: give the text "
            r"itself \(for a pair, each side's response with the prompt in its own field, or whole dialogues in "
            r"the HH-RLHF convention\), or a conversation as --format dialog turns$")
    cases = [("pairs", {"prompt": "p", "chosen": chat, "rejected": "r"}, "chosen"),
             ("pairs", {"prompt": chat[:1], "chosen": "c", "rejected": "r"}, "prompt"),
             ("scored", {"prompt": "p", "response": chat[1:], "reward": 1}, "response"),
             ("scored", {"prompt": chat[:1], "response": "r", "reward": 1}, "prompt")]
    for i, (fmt, row, field) in enumerate(cases):
        src = write_jsonl(tmp_path / f"c{i}.jsonl", [row])
        pq.write_table(pa.Table.from_pylist([row]), tmp_path / f"c{i}.parquet")
        for spec, where in ((src, ":1"), (tmp_path / f"c{i}.parquet", ":row 1")):
            message = rf"c{i}\.\w+{where}: field '{field}' must be a string, got an array{hint}"
            with pytest.raises(SourceError, match=message):
                list(SourceReader([str(spec)], fmt))
            reader = SourceReader([str(spec)], fmt, on_error="skip")
            assert list(reader) == [] and re.search(message, reader.skipped.examples[0])
    for other in ([1, 2], [{"role": "user"}], [{"text": "a"}], []):
        src = write_jsonl(tmp_path / "o.jsonl", [{"prompt": "p", "response": other, "reward": 1}])
        with pytest.raises(SourceError, match=r"o\.jsonl:1: field 'response' must be a string, got an array$"):
            list(SourceReader([str(src)], "scored"))


def test_an_integer_past_pythons_digit_limit_is_read_as_the_float_it_is_not_a_crash(tmp_path):
    """Python refuses to turn more than 4,300 digits into an int (a ValueError that named no line
    and ended ``rcond preprocess`` with a traceback): such an integer is read as the float it is
    (inf), as Arrow's reader has it, so a record holding one in a field no format reads is read on
    the line path as on the chunk path, and one given as its reward is named as not finite."""
    huge = "1" + "0" * 5000
    path = tmp_path / "n.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b", "id": ' + huge + '}\n')
    assert [r.parts[0].text for r in SourceReader([str(path)], "text")] == ["a", "b"]
    assert [t for b in SourceReader([str(path)], "text").batches() for t in b.texts] == ["a", "b"]
    (tmp_path / "n.json").write_text('[{"text": "c", "id": ' + huge + '}]')
    assert [r.parts[0].text for r in SourceReader([str(tmp_path / "n.json")], "text")] == ["c"]
    (tmp_path / "r.jsonl").write_text('{"response": "a", "reward": 1}\n{"response": "b", "reward": ' + huge + '}\n')
    for read in (list, lambda r: list(r.batches())):
        with pytest.raises(RecordError, match=r"r\.jsonl:2: reward must be a finite number, got inf"):
            read(SourceReader([str(tmp_path / "r.jsonl")], "scored"))


# ---------------------------------------------------------------------------- the reading driver
# (check_reading, SourceReader's batches, texts and re-reads): found by a hand-made mutation audit


@pytest.mark.parametrize("inputs,fmt,kw,message", [
    (["x.jsonl"], "rows", {}, "unknown format 'rows'; expected one of pairs, scored, dialog, text"),
    (["x.jsonl"], "scored", {"on_error": "ignore"}, "--on-error must be 'fail' or 'skip', got 'ignore'"),
    ([], "scored", {}, "no input given"),
    ([""], "text", {}, "an input path is empty; give a file, a folder or a hub dataset id"),
    (["x.jsonl", "  "], "text", {}, "an input path is empty; give a file, a folder or a hub dataset id"),
    (["x.jsonl"], "text", {"scorer": len}, "--score-with does not apply to --format text: text documents are always "
                                           "'off' mode"),
    (["x.jsonl"], "scored", {"fields": FieldNames(response="r\udce9sponse")},
     "--response-field 'r\\udce9sponse': not valid UTF-8; expected a field name as the input spells it"),
])
def test_check_reading_refuses_what_no_read_could_use(inputs, fmt, kw, message):
    """Every refusal of check_reading, made before anything is read (an empty path would read the
    current folder; the others would fail later, or change nothing), with its own message."""
    with pytest.raises(SourceError, match=re.escape(message)):
        SourceReader(inputs, fmt, **kw)


def test_a_score_field_the_format_never_reads_is_named_as_such_with_a_scorer(tmp_path):
    """--chosen-score-field means nothing to format scored, scorer or not: the error says the
    format reads no such field, not that the scorer replaces it (as it would --reward-field)."""
    with pytest.raises(SourceError, match=r"^--chosen-score-field: format 'scored' reads no such field \(it reads "
                                          r"'prompt', 'response', 'text'\)"):
        SourceReader(["x.jsonl"], "scored", FieldNames(chosen_score="cs"), scorer=lambda ts: [0.0] * len(ts))


def test_two_field_options_naming_one_field_are_both_named():
    """One column cannot be both the prompt and the response: the error names both options, in
    the order the format reads them."""
    with pytest.raises(SourceError, match=r"^--prompt-field and --response-field both name the field 'q'; each must "
                                          r"name its own field"):
        SourceReader(["x.jsonl"], "scored", FieldNames(prompt="q", response="q"))


def test_a_dialog_turns_reward_key_may_share_the_name_of_the_turns_field(tmp_path):
    """A turn's reward key is looked up in each turn, not in the record: it may be spelled as the
    record's turns field is ('reward' both here), unlike two record fields of one name."""
    turns = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a", "reward": 0.25}]
    (rec,), _ = read(tmp_path, "dialog", [{"reward": turns}], fields=FieldNames(turns="reward"))
    assert [p.rtg for p in rec.parts] == [None, 0.25]


def test_a_zip_of_documents_is_refused_for_pairs_whatever_the_case_of_its_suffix(tmp_path):
    """Suffixes are read in any case: D.ZIP is a zip of documents too, refused up front for pairs
    and dialogs, not read document by document into as many errors."""
    import zipfile

    with zipfile.ZipFile(tmp_path / "D.ZIP", "w") as zf:
        zf.writestr("a.txt", "hello")
    with pytest.raises(SourceError, match=re.escape(f"{tmp_path / 'D.ZIP'}: format 'pairs' needs JSON/CSV/Parquet rows, "
                                                    f"not plain-text documents")):
        SourceReader([str(tmp_path / "D.ZIP")], "pairs")


@pytest.mark.parametrize("name,fmt", [("gone.jsonl", "scored"), ("gone.txt", "pairs")])
def test_a_missing_file_is_named_missing_on_the_batch_path_too(tmp_path, name, fmt):
    """batches() (the build's path) reads JSON Lines chunk by chunk, but a .jsonl that is not
    there is the same one-line error as when iterating, not a raw FileNotFoundError; and a .txt
    that is not there is missing, not refused as a document that pairs cannot read."""
    missing = tmp_path / name
    for read_all in (list, lambda reader: list(reader.batches())):
        with pytest.raises(SourceError, match=re.escape(f"{missing}: no such file or directory")):
            read_all(SourceReader([str(missing)], fmt))


def test_files_a_folder_does_not_read_are_named_on_the_batch_path_too(tmp_path):
    """batches() (the build's path) names the files of a folder that are no documents, as
    iterating does, so that the build's summary can list them."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("first")
    (tmp_path / "docs" / "notes.md").write_text("not a document")
    reader = SourceReader([str(tmp_path / "docs")], "text")
    assert [t for b in reader.batches() for t in b.texts] == ["first"]
    assert reader.ignored.examples == [str(tmp_path / "docs" / "notes.md")]


def test_a_batch_whose_records_were_all_skipped_is_not_handed_on(tmp_path):
    """Under --on-error skip, a chunk of lines that were all bad yields no (empty) batch, on the
    column-wise path and on the record one."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"response": "a", "reward": 1}, "{oops", "{oops", "{oops"])
    (tmp_path / "in.json").write_text(json.dumps([{"response": "a", "reward": 1}] + [{"response": "b"}] * 3))
    for source in (path, tmp_path / "in.json"):
        reader = SourceReader([str(source)], "scored", on_error="skip")
        assert [b.records for b in reader.batches(1)] == [1]
        assert reader.skipped.count == 3


def test_texts_are_read_without_the_scorer_and_without_empty_ones(tmp_path):
    """texts() feeds the tokenizer's training: with a scorer set the rows need no reward field and
    the scorer is never called (rewards are not needed for texts), and a record's empty prompt
    gives no empty text."""
    calls = []

    def scorer(texts):
        calls.append(texts)
        return [0.0] * len(texts)

    path = write_jsonl(tmp_path / "in.jsonl", [{"response": "first"}, {"prompt": "", "response": "second"},
                                               {"prompt": "q", "response": "third"}])
    (tmp_path / "in.json").write_text(path.read_text().replace("\n", ",").join("[]").replace(",]", "]"))
    for source in (path, tmp_path / "in.json"):  # the column-wise path and the record one
        reader = SourceReader([str(source)], "scored", scorer=scorer)
        assert list(reader.texts()) == ["first", "second", "q", "third"], source
    assert calls == []


def test_reading_again_counts_skipped_records_afresh(tmp_path):
    """Each read (iteration or batches) starts its own skip log: a second read of the same input
    reports its bad records once, not twice."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"response": "a", "reward": 1}, "{oops", {"response": "b"}])
    reader = SourceReader([str(path)], "scored", on_error="skip")
    for read_once in (list, list, lambda r: list(r.batches()), lambda r: list(r.batches())):
        read_once(reader)
        assert reader.skipped.count == 2
        assert [e.split(": ")[0] for e in reader.skipped.examples] == [f"{path}:2", f"{path}:3"]


def test_a_dialog_with_two_non_finite_turn_scores_names_the_first(tmp_path):
    """The error names the first turn the scorer gave no finite reward, and that reward."""
    turns = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "x"},
             {"role": "user", "content": "v"}, {"role": "assistant", "content": "y"}]
    path = write_jsonl(tmp_path / "d.jsonl", [{"turns": turns}])
    scores = {"x": float("inf"), "y": float("nan")}
    with pytest.raises(SourceError, match=re.escape(f"{path}:1 turn 2: scorer returned a non-finite reward inf")):
        list(SourceReader([str(path)], "dialog", scorer=lambda ts: [scores[t] for t in ts]))
