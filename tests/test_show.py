"""``rcond show``: rows cut into pieces and runs by hand-made columns, and a built corpus shown
line for line."""

import pytest

from conftest import word_tokenizer, write_jsonl
from rcond.cli import main
from rcond.corpus import PackOptions, build
from rcond.show import CONTEXT, CONTROL, TRAINED, Piece, Run, describe, row_pieces, shown
from rcond.sources import SourceReader

ON, OFF, R0, R1, R2 = 9, 10, 11, 12, 13  # the word tokenizer's control ids with K bins: on, off, rtg:k = 11 + k


def numbers(ids):
    return " ".join(map(str, ids))


def built(tmp_path, fmt, rows, block_size, *, binning="quantile", uncond_fraction=0.05, tokenizer=None):
    """The corpus of ``rows`` (a ``fmt`` JSON Lines file) built in ``tmp_path / "c"`` with the word
    tokenizer, or ``tokenizer``."""
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    build(SourceReader([str(src)], fmt), tmp_path / "c", tokenizer or word_tokenizer(), binning=binning,
          opts=PackOptions(block_size=block_size, uncond_fraction=uncond_fraction), progress=False)
    return tmp_path / "c"


def test_a_row_is_cut_into_pieces_and_runs_by_hand():
    """An `on` response (on rtg:1 | a b | c d eos), an `off` text (off | e f eos) and padding: a
    token is trained where the weight of predicting it, at the position before, is nonzero; a
    piece's first token never is; padding is no piece."""
    columns = {"input_ids":   [ON, R1, 1, 2, 3, 4, 0, OFF, 5, 6, 0, 0, 0],
               "segment_ids": [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, -1, -1],
               "loss_weight": [0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0],
               "bin_ids":     [1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1]}
    assert row_pieces(4, columns, {ON, OFF, R0, R1, R2}, numbers) == [
        Piece(4, 0, [1], [Run(CONTROL, [ON, R1], "9 12"), Run(CONTEXT, [1, 2], "1 2"), Run(TRAINED, [3, 4, 0], "3 4 0")]),
        Piece(4, 1, [], [Run(CONTROL, [OFF], "10"), Run(TRAINED, [5, 6, 0], "5 6 0")])]
    decoded = []
    kept = row_pieces(4, columns, {ON, OFF, R0, R1, R2}, lambda ids: decoded.append(ids) or numbers(ids),
                      keep=lambda bins: not bins)
    assert [(p.segment, p.bins) for p in kept] == [(1, [])] and decoded == [[OFF], [5, 6, 0]]  # piece 0 never decoded


def test_a_dialog_piece_names_each_bin_in_force_in_order():
    """on | user a | rtg:2 | asst b | user c | rtg:0 | asst d eos: the user turn before the first RTG
    token takes its bin; the bins in force are 2 then 0, each named once per change."""
    columns = {"input_ids":   [ON, 1, R2, 2, 3, R0, 4, 0],
               "segment_ids": [0] * 8,
               "loss_weight": [0, 0, 1, 0, 0, 1, 1, 0],
               "bin_ids":     [2, 2, 2, 2, 0, 0, 0, 0]}
    [piece] = row_pieces(0, columns, {ON, OFF, R0, R1, R2}, numbers)
    assert piece.bins == [2, 0]
    assert [(r.kind, r.ids) for r in piece.runs] == [(CONTROL, [ON]), (CONTEXT, [1]), (CONTROL, [R2]), (TRAINED, [2]),
                                                     (CONTEXT, [3]), (CONTROL, [R0]), (TRAINED, [4, 0])]
    assert (piece.tokens, piece.trained) == (8, 3)


def test_long_runs_lose_their_middle():
    assert shown("abcdefghij", 4) == "'ab' ... 6 characters ... 'ij'"
    assert shown("abcdefghij", 0) == shown("abcdefghij", 10) == "'abcdefghij'"
    assert shown("a\nb", 0) == "'a\\nb'"


def test_an_odd_or_tiny_limit_shows_half_of_it_at_each_end_and_counts_the_rest():
    """Each end shows max_chars // 2 characters (so 1 shows none at either end) and the count is
    what is left out between them, with thousands separated."""
    assert shown("abcdefghij", 5) == "'ab' ... 6 characters ... 'ij'"
    assert shown("abc", 1) == "'' ... 3 characters ... ''"
    assert shown("x" * 2004, 4) == "'xx' ... 2,000 characters ... 'xx'"


def test_a_level_shows_the_pieces_conditioned_on_it_from_a_row_on(tmp_path):
    """Six records of rewards 1, -1, 1, -1, 1, 1 at edges:0 (bins 1, 0, ...), packed two to a row:
    level 1 shows the first pieces at bin 1 from the row asked on, level 0 those at bin 0, each
    named by row and piece, and says how many it found when fewer than asked; off finds none."""
    rewards = [1.0, -1.0, 1.0, -1.0, 1.0, 1.0]
    corpus = built(tmp_path, "scored", [{"prompt": "a", "response": "b c", "reward": r} for r in rewards], 12,
                   binning="edges:0", uncond_fraction=0.0)
    heads = [line for line in describe(corpus, level=1, pieces=2).splitlines() if line.startswith("row ")]
    assert heads == ["row 0, piece 0: 6 tokens, 3 trained; bin 1, rewards in [0, inf)",
                     "row 1, piece 0: 6 tokens, 3 trained; bin 1, rewards in [0, inf)"]
    assert describe(corpus, level=1, pieces=2).endswith("(--level 1 --from 2 goes on from the next row)")
    out = describe(corpus, first=1, level="0", pieces=5)
    assert [line for line in out.splitlines() if line.startswith("row ")] == [
        "row 1, piece 1: 6 tokens, 3 trained; bin 0, rewards in [-inf, 0)"]
    assert out.endswith("(1 piece(s) at level 0 from row 1 to the last)")
    assert describe(corpus, level="off").endswith("(0 piece(s) in off mode from row 0 to the last)")


def test_a_level_says_what_the_last_row_read_holds_beyond_the_pieces_asked(tmp_path):
    """The same six records: row 2 holds two pieces at bin 1. Asking for three pieces at level 1
    fills on row 2's first, so its second is counted with the --pieces that shows it (no next
    row to go on from); one piece from row 0 leaves none in that row, and the next row to go on
    from is named; from row 2, one piece leaves one there and nothing after."""
    rewards = [1.0, -1.0, 1.0, -1.0, 1.0, 1.0]
    corpus = built(tmp_path, "scored", [{"prompt": "a", "response": "b c", "reward": r} for r in rewards], 12,
                   binning="edges:0", uncond_fraction=0.0)
    out = describe(corpus, level=1, pieces=3)
    assert [line for line in out.splitlines() if line.startswith("row ")][-1].startswith("row 2, piece 0:")
    assert out.endswith("(row 2 holds 1 more piece(s) at level 1: --pieces 4 shows them too)")
    assert describe(corpus, level=1, pieces=4).endswith("row 2, piece 1: 6 tokens, 3 trained; bin 1, rewards in [0, inf)"
                                                        "\n    control  '<|rlhf:on|> <|rtg:1|>'\n    context  'a'\n    trained  'b c <eos>'")
    assert describe(corpus, level=1, pieces=1).endswith("(--level 1 --from 1 goes on from the next row)")
    assert describe(corpus, first=2, level=1, pieces=1).endswith(
        "(row 2 holds 1 more piece(s) at level 1: --pieces 2 shows them too)")
    assert describe(corpus, first=0, level=0, pieces=1).endswith(
        "(--level 0 --from 1 goes on from the next row)")


def test_a_row_left_with_more_pieces_and_a_next_row_gets_both_notes(tmp_path):
    """Eight records of rewards 1, 1, 1, -1 twice at edges:0, packed four to a row: one piece at
    level 1 is row 0's first; that row holds two more at bin 1 (its bin-0 piece after them is not
    counted), and row 1 is next, so both notes are given, the row's first."""
    rewards = [1.0, 1.0, 1.0, -1.0] * 2
    corpus = built(tmp_path, "scored", [{"prompt": "a", "response": "b c", "reward": r} for r in rewards], 24,
                   binning="edges:0", uncond_fraction=0.0)
    out = describe(corpus, level=1, pieces=1)
    assert [line for line in out.splitlines() if line.startswith("row ")] == [
        "row 0, piece 0: 6 tokens, 3 trained; bin 1, rewards in [0, inf)"]
    assert out.endswith("(row 0 holds 2 more piece(s) at level 1: --pieces 3 shows them too; "
                        "--level 1 --from 1 goes on from the next row)")
    assert describe(corpus, level=1, pieces=3).endswith("(--level 1 --from 1 goes on from the next row)")


def test_a_level_whose_bin_holds_no_token_is_said_so_without_a_scan(tmp_path, monkeypatch):
    """Bins (-inf, -5), [-5, 5), [5, inf) over rewards of 1: bin 2 holds no RTG token (scheme.json's
    counts say so), and the rows are not read through to find that out."""
    import rcond.show

    corpus = built(tmp_path, "scored", [{"prompt": "a", "response": "b", "reward": 1.0}], 12, binning="edges:-5,5",
                   uncond_fraction=0.0)
    assert describe(corpus).splitlines()[0] == (f"corpus {corpus}: format scored, 3 bins (edges:-5,5), 1 row(s) of "
                                                f"12 tokens, 1 records")  # bin 1 is used: not 'none used'
    monkeypatch.setattr(rcond.show, "row_pieces", lambda *a: pytest.fail("the rows were scanned"))
    assert describe(corpus, level=2).endswith(
        "(no piece is at level 2: its bin holds no reward-to-go token in this corpus)")


@pytest.fixture
def corpus(tmp_path):
    return built(tmp_path, "scored", [{"prompt": "a b", "response": "c d", "reward": 1.0},
                                      {"prompt": "e", "response": "f g h", "reward": -1.0}], 16, binning="edges:0",
                 uncond_fraction=0.0)


def test_a_built_corpus_line_for_line(corpus):
    import platform
    from importlib import metadata

    lines = describe(corpus, max_chars=0).splitlines()
    assert lines[0] == f"corpus {corpus}: format scored, 2 bins (edges:0), 1 row(s) of 16 tokens, 2 records"
    versions = {"python": platform.python_version(),
                **{name: metadata.version(name) for name in ("rcond", "tokenizers", "transformers", "pyarrow", "numpy")}}
    assert lines[1] == "  built with " + ", ".join(f"{name} {v}" for name, v in sorted(versions.items()))
    assert lines[2:] == [
        "row 0: 2 piece(s), 2 padding tokens",
        "  piece 0: 7 tokens, 3 trained; bin 1, rewards in [0, inf)",
        "    control  '<|rlhf:on|> <|rtg:1|>'",
        "    context  'a b'",
        "    trained  'c d <eos>'",
        "  piece 1: 7 tokens, 4 trained; bin 0, rewards in [-inf, 0)",
        "    control  '<|rlhf:on|> <|rtg:0|>'",
        "    context  'e'",
        "    trained  'f g h <eos>'"]


def test_the_command_shows_rows_and_names_what_it_cannot(corpus, capsys):
    assert main(["show", str(corpus)]) == 0
    assert "    trained  'c d <eos>'" in capsys.readouterr().out
    for argv, message in [(["--from", "1"], "row 1 does not exist: the corpus has rows 0..0"),
                          (["--rows", "0"], "--rows must be at least 1, got 0"),
                          (["--max-chars", "-1"], "--max-chars must be at least 0, got -1 (0: whole runs)"),
                          (["--pieces", "0"], "--pieces must be at least 1, got 0"),
                          (["--level", "2"], "level 2 does not exist: this scheme has levels 0..1"),
                          (["--level", "top"], "--level must be a level 0..1 or 'off', got 'top'")]:
        assert main(["show", str(corpus), *argv]) == 2
        assert message in capsys.readouterr().err
    assert main(["show", str(corpus.parent / "none")]) == 2
    assert "no such corpus directory" in capsys.readouterr().err


def test_more_rows_than_shown_are_counted(tmp_path):
    rows = [{"text": " ".join(["a"] * 12)} for _ in range(3)]
    out = describe(built(tmp_path, "text", rows, 16), first=1, rows=1)
    assert [line for line in out.splitlines() if line.startswith("row ")] == ["row 1: 1 piece(s), 2 padding tokens"]
    assert out.endswith("(1 more row(s): --from 2 shows the next)")


def test_a_corpus_built_before_versions_were_recorded_is_shown_without_them(corpus):
    """A scheme.json with no options.built_with (an older rcond's, fingerprinted as it was) is
    shown with no 'built with' line."""
    from rcond.corpus import scheme_sha256
    from rcond.tokens import ControlScheme

    scheme = ControlScheme.load(corpus)
    del scheme.options["built_with"]
    scheme.options["scheme_sha256"] = scheme_sha256(scheme)
    scheme.save(corpus)
    assert describe(corpus).splitlines()[1] == "row 0: 2 piece(s), 2 padding tokens"


def test_full_off_rows_are_shown_one_by_default_and_as_many_as_there_are(tmp_path, capsys):
    """Three text documents of 254 words, each a full row of 256 tokens (off, 254 words, eos):
    no padding is named, the piece is labelled off, its trained run (513 characters) loses all but
    150 at each end by default; the command shows row 0 alone by default, --rows past the last row
    shows the rows there are, and a negative --from is refused."""
    text = " ".join("abcdefgh"[i % 8] for i in range(254)) + " <eos>"
    corpus = built(tmp_path, "text", [{"text": text[: -len(" <eos>")]}] * 3, 256)
    assert describe(corpus).splitlines()[0] == (f"corpus {corpus}: format text, 10 bins (uniform, none used), 3 row(s) "
                                                f"of 256 tokens, 3 records")
    assert describe(corpus).splitlines()[2:] == [
        "row 0: 1 piece(s)",
        "  piece 0: 256 tokens, 255 trained; off (no reward-to-go)",
        "    control  '<|rlhf:off|>'",
        f"    trained  {text[:150]!r} ... 213 characters ... {text[-150:]!r}",
        "(2 more row(s): --from 1 shows the next)"]
    assert main(["show", str(corpus)]) == 0
    assert capsys.readouterr().out == describe(corpus) + "\n"
    assert [line for line in describe(corpus, first=1, rows=5).splitlines()[2:] if not line.startswith(" ")] == [
        "row 1: 1 piece(s)", "row 2: 1 piece(s)"]
    assert main(["show", str(corpus), "--from", "-1"]) == 2
    assert "row -1 does not exist: the corpus has rows 0..2" in capsys.readouterr().err


def test_a_dialog_piece_names_a_bin_again_when_it_comes_back(tmp_path):
    """Three assistant turns rewarded 2, -2, 1: rewards-to-go 1, -1, 1 with edges 0 put them in
    bins 1, 0, 1, named in that order, each with its range."""
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reward": 2},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "reward": -2},
             {"role": "user", "content": "e"}, {"role": "assistant", "content": "f", "reward": 1}]
    corpus = built(tmp_path, "dialog", [{"turns": turns}], 16, binning="edges:0", uncond_fraction=0.0)
    assert describe(corpus).splitlines()[3] == (
        "  piece 0: 11 tokens, 4 trained; bin 1, rewards in [0, inf); bin 0, rewards in [-inf, 0); "
        "bin 1, rewards in [0, inf)")


def test_runs_are_shown_as_the_tokenizer_decodes_them_without_cleaning_up_spaces(tmp_path):
    """A word-level tokenizer whose decoder keeps the spaces between words: 'well , so .' is
    shown as its ids decode, not as transformers' clean-up of spaces before punctuation ('well,
    so.') would show it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<eos>", "well", ",", "so", "."])}, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(cleanup=False)
    corpus = built(tmp_path, "text", [{"text": "well , so ."}], 8,
                   tokenizer=PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>"))
    assert describe(corpus).splitlines()[-1] == "    trained  'well , so . <eos>'"
