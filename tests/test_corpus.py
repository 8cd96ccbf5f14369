"""Packing checked against rows computed by hand with a word-level tokenizer (a=1, b=2, ...,
eos=0). With K=2 and edges:0 the control ids are on=9, off=10, rtg:0=11, rtg:1=12."""

import sys
from contextlib import suppress

import numpy as np
import pytest

from conftest import word_tokenizer, write_jsonl
from rcond.corpus import CorpusError, PackOptions, build, load
from rcond.sources import FieldNames, RecordError, SourceReader

ON, OFF, R0, R1 = 9, 10, 11, 12


def make(tmp_path, fmt, rows, *, block_size=16, uncond=0.0, binning="edges:0", name="c", num_bins=None, **kw):
    src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    opts = PackOptions(block_size=block_size, uncond_fraction=uncond, **kw)
    scheme, summary = build(SourceReader([str(src)], fmt), tmp_path / name, word_tokenizer(), binning=binning,
                            num_bins=num_bins, opts=opts, progress=False)
    ds, scheme2, tok = load(tmp_path / name)
    rows = {k: np.array(ds[k]) for k in ds.column_names}
    return rows, scheme2, summary


def test_three_documents_packed_by_hand(tmp_path):
    docs = [{"prompt": "a", "response": "b c", "reward": 0.5},   # [on r1 a b c eos]      6 tokens
            {"prompt": "d", "response": "e", "reward": -1.0},    # [on r0 d e eos]        5 tokens
            {"prompt": "", "response": "f", "reward": 2.0}]      # [on r1 f eos]          4 tokens
    rows, scheme, s = make(tmp_path, "scored", docs)
    assert rows["input_ids"].tolist() == [[ON, R1, 1, 2, 3, 0, ON, R0, 4, 5, 0, ON, R1, 6, 0, 0]]
    assert rows["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 0, 1, 2, 3, 0]]
    assert rows["segment_ids"].tolist() == [[0] * 6 + [1] * 5 + [2] * 4 + [-1]]
    # loss_weight[i] weighs the prediction of token i+1: control-token and prompt targets 0,
    # response and eos targets 1, the target across a document boundary 0, padding 0
    assert rows["loss_weight"].tolist() == [[0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0]]
    assert rows["bin_ids"].tolist() == [[1] * 6 + [0] * 5 + [1] * 4 + [-1]]
    assert scheme.counts == [1, 2]
    assert (s.rows, s.tokens, s.documents, s.records, s.trained_tokens) == (1, 15, 3, 3, 7.0)
    assert (scheme.options["rows"], scheme.options["tokens"]) == (1, 15)
    assert s.efficiency(16) == pytest.approx(15 / 16)


def test_scheme_counts_the_records_that_open_with_a_prompt(tmp_path):
    """options.records, options.prompts (records whose first part is a prompt or user turn with
    text) and options.multiline_prompts (those prompts holding a line break), which `rcond sample`
    reads: an empty or missing prompt does not count, a pair is two records (an HH pair's two
    prompts both span lines), a dialog opening with a user turn counts, plain text has none."""
    scored = [{"prompt": "a", "response": "b", "reward": 1}, {"prompt": "c\nd", "response": "e", "reward": 0},
              {"prompt": "", "response": "f", "reward": 1}, {"response": "g\nh", "reward": 0},
              {"prompt": "a\n", "response": "b", "reward": 1}]
    _, scheme, s = make(tmp_path, "scored", scored, name="scored")
    assert (scheme.options["records"], scheme.options["prompts"], scheme.options["multiline_prompts"]) == (5, 3, 2)
    assert (s.prompts, s.multiline_prompts) == (3, 2)
    pairs = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "d", "chosen": "e", "rejected": "f"},
             {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}]
    _, scheme, _ = make(tmp_path, "pairs", pairs, name="pairs")
    assert (scheme.options["records"], scheme.options["prompts"], scheme.options["multiline_prompts"]) == (6, 6, 2)
    turns = [{"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "b\nc", "reward": 1}]
    _, scheme, _ = make(tmp_path, "dialog", [{"turns": turns}, {"turns": turns[1:]}], name="dialog")
    assert (scheme.options["records"], scheme.options["prompts"], scheme.options["multiline_prompts"]) == (2, 1, 1)
    _, scheme, _ = make(tmp_path, "text", [{"text": "a\nb"}], name="text")
    assert (scheme.options["records"], scheme.options["prompts"], scheme.options["multiline_prompts"]) == (1, 0, 0)


def test_prompt_counts_add_up_over_the_builds_batches(tmp_path):
    """The scored records of the test above, encoded 2 records a batch (3 batches): the counts are
    the whole corpus's, 5 records, 3 prompts with text, 2 of them spanning lines, not the last batch's
    (1 record, its prompt "a\\n" spanning lines) nor the first's."""
    scored = [{"prompt": "a", "response": "b", "reward": 1}, {"prompt": "c\nd", "response": "e", "reward": 0},
              {"prompt": "", "response": "f", "reward": 1}, {"response": "g\nh", "reward": 0},
              {"prompt": "a\n", "response": "b", "reward": 1}]
    _, scheme, s = make(tmp_path, "scored", scored, encode_batch=2)
    assert (scheme.options["records"], scheme.options["prompts"], scheme.options["multiline_prompts"]) == (5, 3, 2)
    assert (s.prompts, s.multiline_prompts) == (3, 2)


def test_best_fit_fills_the_tightest_row(tmp_path):
    # block 10: doc A (5 tokens) leaves 5 free, doc B (6) leaves 4 free; doc C (4 tokens) fits both
    # rows — first fit would put it beside A, best fit puts it beside B, filling that row exactly.
    docs = [{"response": "a b", "reward": 1},    # [on r1 a b eos]
            {"response": "c d e", "reward": 1},  # [on r1 c d e eos]
            {"response": "g", "reward": 1}]      # [on r1 g eos]
    rows, _, s = make(tmp_path, "scored", docs, block_size=10)
    assert rows["input_ids"].tolist() == [[ON, R1, 3, 4, 5, 0, ON, R1, 7, 0],
                                          [ON, R1, 1, 2, 0, 0, 0, 0, 0, 0]]
    assert s.rows == 2


def test_off_records_carry_no_rtg(tmp_path):
    rows, scheme, s = make(tmp_path, "scored", [{"response": "a b", "reward": 1}] * 5, uncond=1.0)
    ids = rows["input_ids"]
    assert not np.isin(ids, [ON, R0, R1]).any()
    assert (ids == OFF).sum() == 5
    assert (rows["bin_ids"] == -1).all()
    assert scheme.counts == [0, 0] and s.off_docs == 5


def test_bin_ids_past_127_and_the_column_types_on_disk(tmp_path):
    edges = ",".join(str(i) for i in range(1, 200))  # 200 bins: a reward of 500 is in the last, 199
    rows, scheme, _ = make(tmp_path, "scored", [{"response": "a", "reward": 500}], binning=f"edges:{edges}")
    assert scheme.num_bins == 200 and rows["bin_ids"][0][:4].tolist() == [199] * 4  # [on rtg:199 a eos]
    ds = load(tmp_path / "c")[0]
    assert {k: ds.features[k].feature.dtype for k in ds.column_names} == {
        "input_ids": "int32", "position_ids": "int32", "segment_ids": "int32", "loss_weight": "float32",
        "bin_ids": "int16"}


def test_text_format_is_off(tmp_path):
    rows, _, _ = make(tmp_path, "text", [{"text": "a b c"}])
    assert rows["input_ids"][0][:5].tolist() == [OFF, 1, 2, 3, 0]
    assert rows["loss_weight"][0][:5].tolist() == [1, 1, 1, 1, 0]


def test_long_document_split_with_prefix_repeated(tmp_path):
    rows, _, s = make(tmp_path, "scored", [{"prompt": "a", "response": "b c d e f", "reward": 1}], block_size=6)
    # stream [on r1 a b c d e f eos] (9) -> [on r1 a b c d] + [on r1 e f eos]
    assert sorted(r[r != 0].tolist() for r in rows["input_ids"]) == [[ON, R1, 1, 2, 3, 4], [ON, R1, 5, 6]]
    second = [i for i, r in enumerate(rows["input_ids"]) if r[2] == 5][0]
    assert rows["loss_weight"][second][:5].tolist() == [0, 1, 1, 1, 0]
    assert rows["position_ids"][second][:5].tolist() == [0, 1, 2, 3, 4]
    assert s.pieces == 2


def test_truncate(tmp_path):
    rows, _, s = make(tmp_path, "scored", [{"prompt": "a", "response": "b c d e f", "reward": 1}], block_size=6,
                      truncate=True)
    assert rows["input_ids"].tolist() == [[ON, R1, 1, 2, 3, 4]]
    assert rows["loss_weight"].tolist() == [[0, 0, 1, 1, 1, 0]]
    assert s.truncated_tokens == 3


def test_truncated_rtg_tokens_are_not_counted(tmp_path):
    """A dialog cut at 6 tokens keeps its first RTG token (bin 0) only: the per-bin counts leave
    out the marker the truncation cut, [1, 0], not the [1, 1] the record had."""
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reward": -1},
             {"role": "user", "content": "c c c c c"}, {"role": "assistant", "content": "d", "reward": 2}]
    rows, scheme, s = make(tmp_path, "dialog", [{"turns": turns}], block_size=6, binning="edges:1.5", truncate=True)
    assert rows["input_ids"].tolist() == [[ON, 1, R0, 2, 3, 3]]
    assert scheme.counts == [1, 0] and s.truncated_tokens == 6
    _, split, _ = make(tmp_path, "dialog", [{"turns": turns}], block_size=6, binning="edges:1.5", name="split")
    assert split.counts == [1, 1]  # split, not truncated: both RTG tokens are in the corpus


def test_quantile_edges_leave_out_rewards_whose_rtg_tokens_were_cut(tmp_path):
    """Three dialogs cut at 6 tokens keep the RTG token of their first assistant turn only (R = 1+4,
    2+5, 3+6 with gamma 1), and lose the second (R = 4, 5, 6). The 2-bin quantile edge is the
    median of the RTG values the rows hold, 7 (of 5, 7, 9), not the 5.5 of all six; so the bins
    share the three tokens 1 / 2, as quantile bins should. Split instead of cut, all six stay."""
    dialogs = [{"turns": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reward": r},
                          {"role": "user", "content": "c c c c c"},
                          {"role": "assistant", "content": "d", "reward": r + 3}]} for r in (1, 2, 3)]
    rows, scheme, s = make(tmp_path, "dialog", dialogs, block_size=6, binning="quantile", num_bins=2,
                           truncate=True)
    assert scheme.edges == [7.0] and scheme.counts == [1, 2]
    assert (s.rewards, s.cut_rewards) == (6, 3)
    assert sorted(r.tolist() for r in rows["input_ids"]) == [[ON, 1, R0, 2, 3, 3], [ON, 1, R1, 2, 3, 3],
                                                              [ON, 1, R1, 2, 3, 3]]
    _, split, s2 = make(tmp_path, "dialog", dialogs, block_size=6, binning="quantile", num_bins=2,
                              name="split")
    assert split.edges == [5.5] and split.counts == [3, 3] and s2.cut_rewards == 0


def test_edges_leave_out_the_rewards_of_unconditional_dialog_turns_that_truncate_cut(tmp_path):
    """The three dialogs of the test above, all drawn unconditional: [off a b c c c c c d eos] cut
    at 6 keeps [off a b c c c]. The first turn's RTG token would sit at 2 (kept), the second's at 8
    (cut): the edges follow R = 5, 7, 9 only, as they do for conditioned dialogs (uniform: 7, not the
    6.5 of all six), and the three cut rewards are counted."""
    dialogs = [{"turns": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reward": r},
                          {"role": "user", "content": "c c c c c"},
                          {"role": "assistant", "content": "d", "reward": r + 3}]} for r in (1, 2, 3)]
    rows, scheme, s = make(tmp_path, "dialog", dialogs, block_size=6, binning="uniform", num_bins=2, truncate=True,
                           uncond=1.0)
    assert rows["input_ids"].tolist() == [[OFF, 1, 2, 3, 3, 3]] * 3
    assert scheme.edges == [7.0] and (s.rewards, s.cut_rewards) == (6, 3)
    # one user word: [off a b c d eos] at 5 keeps d (position 4), but conditioned the second RTG token
    # sits at 5, after the first one, and is cut: the unconditional turn is cut too, both ways edge 7
    short = [{"turns": [{**t, "content": "c"} if t["content"].startswith("c") else t for t in d["turns"]]}
             for d in dialogs]
    for uncond in (0.0, 1.0):
        _, scheme, s = make(tmp_path, "dialog", short, block_size=5, binning="uniform", num_bins=2, truncate=True,
                            uncond=uncond, name=f"short{uncond}")
        assert scheme.edges == [7.0] and s.cut_rewards == 3, uncond


def test_edges_leave_out_the_reward_of_an_unconditional_record_truncated_to_nothing_trained(tmp_path):
    """All three records drawn unconditional (no RTG token), cut at 6 tokens. The first, whose
    prompt fills the block, keeps [off a a a a a] and no trained token: it is left out of the rows,
    and so is its reward (100) from the edges. Uniform 2-bin edges over the rewards of the two
    records the rows hold (0 and 4): 2, not the 50 of all three. Split instead of cut, its second
    piece [off a b eos] trains the response: it stays, and its reward counts (edge 50)."""
    docs = [{"prompt": "a a a a a a", "response": "b", "reward": 100.0},  # [off a a a a a a b eos]
            {"prompt": "c", "response": "d", "reward": 0.0},              # [off c d eos]
            {"response": "e", "reward": 4.0}]                             # [off e eos]
    rows, scheme, s = make(tmp_path, "scored", docs, block_size=6, uncond=1.0, binning="uniform", num_bins=2,
                           truncate=True)
    assert scheme.edges == [2.0]
    assert (s.rewards, s.cut_rewards, s.untrained_pieces, s.off_docs) == (3, 1, 1, 3)
    assert sorted(rows["input_ids"].tolist()) == [[OFF, 3, 4, 0, 0, 0], [OFF, 5, 0, 0, 0, 0]]
    _, split, s2 = make(tmp_path, "scored", docs, block_size=6, uncond=1.0, binning="uniform", num_bins=2,
                        name="split")
    assert split.edges == [50.0] and s2.cut_rewards == 0


def test_edges_leave_out_a_cut_rtg_token_when_only_unconditional_rewards_remain(tmp_path):
    """Seed 0 draws the first record conditioned and the three short ones unconditional. Cut at 4
    tokens, the first keeps [on r a b] and trains nothing: left out, with its reward (100). The
    2-bin quantile edge is then the median of the rewards the rows hold (0, 1, 2): 1, not the 1.5
    of all four; the fallback to every marker is for a corpus with nothing else to fit."""
    docs = [{"prompt": "a b c d e", "response": "f", "reward": 100}, {"response": "a", "reward": 0},
            {"response": "b", "reward": 1}, {"response": "c", "reward": 2}]
    rows, scheme, s = make(tmp_path, "scored", docs, block_size=4, uncond=0.5, binning="quantile", num_bins=2,
                           truncate=True, seed=0)
    assert rows["input_ids"].tolist() == [[OFF, 1, 0, 0], [OFF, 2, 0, 0], [OFF, 3, 0, 0]]
    assert scheme.edges == [1.0]
    assert (s.rewards, s.cut_rewards, s.untrained_pieces, s.off_docs) == (4, 1, 1, 3)


def test_edges_follow_every_reward_read_when_every_rtg_token_was_cut(tmp_path):
    """With --train-on-prompt a dialog cut inside its first user turn stays, with no RTG token
    left: the edges then follow all the reward-to-go values read (uniform over R = 2+3 and 3: edge
    4), not the [-1, 1] of a corpus with no rewards."""
    long = [{"role": "user", "content": "a a a a a a a"}, {"role": "assistant", "content": "b", "reward": 2},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "reward": 3}]
    _, scheme, s = make(tmp_path, "dialog", [{"turns": long}], block_size=6, binning="uniform", num_bins=2,
                        truncate=True, train_on_prompt=True)
    assert scheme.edges == [4.0] and scheme.counts == [0, 0] and s.cut_rewards == 0


def test_a_dialog_truncated_before_its_first_rtg_token_is_left_out(tmp_path):
    """Cut at 6 tokens, a dialog whose first user turn is longer keeps no RTG token and no trained
    token, [on a a a a a]: it is left out (counted in the summary), and the counts leave out the
    RTG token that was cut. The short dialog beside it stays: [on c r0 d eos]."""
    long = [{"role": "user", "content": "a a a a a a a"}, {"role": "assistant", "content": "b", "reward": 2}]
    short = [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "reward": 1}]
    rows, scheme, s = make(tmp_path, "dialog", [{"turns": long}, {"turns": short}], block_size=6,
                           binning="edges:1.5", truncate=True)
    assert rows["input_ids"].tolist() == [[ON, 3, R0, 4, 0, 0]]
    assert rows["bin_ids"].tolist() == [[0, 0, 0, 0, 0, -1]]
    assert scheme.counts == [1, 0]
    assert (s.documents, s.pieces, s.untrained_pieces, s.untrained_tokens, s.truncated_tokens) == (2, 1, 1, 6, 5)
    _, split, _ = make(tmp_path, "dialog", [{"turns": long}], block_size=6, binning="edges:1.5", name="split")
    assert split.counts == [0, 1]  # split, not truncated: the RTG token (bin 1) is in the corpus


def test_a_truncated_dialog_with_trained_user_text_stays_without_a_bin(tmp_path):
    """With --train-on-prompt the same cut dialog trains its user text: it stays, and its tokens
    carry bin -1, not the bin of the RTG token that was cut."""
    long = [{"role": "user", "content": "a a a a a a a"}, {"role": "assistant", "content": "b", "reward": 2}]
    rows, scheme, s = make(tmp_path, "dialog", [{"turns": long}], block_size=6, binning="edges:1.5", truncate=True,
                           train_on_prompt=True)
    assert rows["input_ids"].tolist() == [[ON, 1, 1, 1, 1, 1]]
    assert rows["loss_weight"].tolist() == [[1, 1, 1, 1, 1, 0]]
    assert rows["bin_ids"].tolist() == [[-1] * 6]
    assert scheme.counts == [0, 0] and s.untrained_pieces == 0


def test_a_piece_of_prompt_alone_is_left_out(tmp_path):
    """Split at 6, [on r1 a a a a a a b eos] gives [on r1 a a a a], which trains nothing (prompt
    targets weigh 0), and [on r1 a a b eos]: only the second is packed. With --train-on-prompt
    both are."""
    doc = [{"prompt": "a a a a a a", "response": "b", "reward": 1}]
    rows, scheme, s = make(tmp_path, "scored", doc, block_size=6)
    assert rows["input_ids"].tolist() == [[ON, R1, 1, 1, 2, 0]]
    assert rows["loss_weight"].tolist() == [[0, 0, 0, 1, 1, 0]]
    assert (s.pieces, s.untrained_pieces, s.untrained_tokens, s.rows) == (1, 1, 6, 1)
    assert scheme.counts == [0, 1]
    rows, _, s = make(tmp_path, "scored", doc, block_size=6, train_on_prompt=True, name="all")
    assert sorted(rows["input_ids"].tolist()) == [[ON, R1, 1, 1, 1, 1], [ON, R1, 1, 1, 2, 0]]
    assert (s.pieces, s.untrained_pieces) == (2, 0)


@pytest.mark.parametrize("response,pieces", [
    ("b c d", [[ON, R1, 1, 2, 3], [ON, R1, 4, 0]]),                                    # 7 tokens: B + 1
    ("b c d e f g h", [[ON, R1, 1, 2, 3, 4], [ON, R1, 5, 6, 7], [ON, R1, 8, 0]]),       # the second split
])
def test_no_piece_holds_the_eos_alone_after_its_prefix(tmp_path, response, pieces):
    """Split at 6, [on r1 a b c d eos] would leave [on r1 eos], a piece teaching the model to end a
    text right after its control prefix: the piece before it ends a token early, and its last
    token goes with the eos (at the first split or a later one)."""
    rows, _, s = make(tmp_path, "scored", [{"prompt": "a", "response": response, "reward": 1}], block_size=6)
    assert sorted(rows["input_ids"].tolist()) == sorted(p + [0] * (6 - len(p)) for p in pieces)
    assert s.pieces == len(pieces)


def test_no_record_read_is_an_error_that_names_the_skipped_ones(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "a"}, {"response": "b", "reward": "x"}])
    with pytest.raises(CorpusError, match=rf"^no records were read from {src} \(2 skipped as bad\); expected at "
                                          rf"least one record\n  skipped: {src}:1: missing field 'reward'"):
        build(SourceReader([str(src)], "scored", on_error="skip"), tmp_path / "c", word_tokenizer(),
              binning="edges:0", progress=False, opts=PackOptions(block_size=16))
    assert not (tmp_path / "c").exists()


def test_nothing_left_to_train_is_an_error(tmp_path):
    long = [{"role": "user", "content": "a a a a a a a"}, {"role": "assistant", "content": "b", "reward": 2}]
    with pytest.raises(CorpusError, match="no token is left to train at --block-size 6: --truncate cut every"):
        make(tmp_path, "dialog", [{"turns": long}], block_size=6, binning="edges:1.5", truncate=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_special_token_strings_in_content_stay_text(tmp_path):
    """Reusing a tokenizer that already holds the control tokens (one saved beside an earlier
    corpus), a literal "<|rtg:1|>" or "<|rlhf:on|>" in a text is encoded as text: the only
    control ids in the rows are the ones the corpus placed, and none is a trained target."""
    make(tmp_path, "scored", [{"prompt": "a", "response": "b", "reward": 1}], name="first")
    _, scheme, tok = load(tmp_path / "first")
    src = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a <|rtg:1|>", "response": "b <|rlhf:on|> c", "reward": 1}])
    build(SourceReader([str(src)], "scored"), tmp_path / "second", tok, binning="edges:0",
          opts=PackOptions(block_size=16, uncond_fraction=0.0), progress=False)
    ds, scheme2, tok2 = load(tmp_path / "second")
    ids, lw = np.array(ds["input_ids"][0]), np.array(ds["loss_weight"][0])
    control = set(scheme2.token_ids(tok2).values())
    assert [i for i, t in enumerate(ids.tolist()) if t in control] == [0, 1]  # mode and RTG, nothing else
    assert not any(lw[i] > 0 and ids[i + 1] in control for i in range(len(ids) - 1))


def test_control_token_strings_stay_text_with_a_tokenizer_that_holds_them_as_ordinary_tokens(tmp_path):
    """A tokenizer given the control tokens as ordinary added tokens (``add_tokens``) would read a
    literal "<|rlhf:on|>" in a text as that token; the build makes them special before any text is
    encoded, so the literal stays text (an unknown word here, the eos id) and the only control ids
    in the rows are the ones the corpus placed."""
    tok = word_tokenizer()
    tok.add_tokens(["<|rlhf:on|>", "<|rtg:1|>"])
    src = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a <|rtg:1|>", "response": "b <|rlhf:on|> c", "reward": 1}])
    build(SourceReader([str(src)], "scored"), tmp_path / "c", tok, binning="edges:0",
          opts=PackOptions(block_size=12, uncond_fraction=0.0), progress=False)
    ds, scheme, tok2 = load(tmp_path / "c")
    on, r1 = scheme.token_ids(tok2)["<|rlhf:on|>"], scheme.token_ids(tok2)["<|rtg:1|>"]
    assert ds["input_ids"][0] == [on, r1, 1, 0, 2, 0, 3, 0, 0, 0, 0, 0]  # [on r1 a ? b ? c eos] + padding


def test_rows_without_rtg_tokens_are_written_in_pass_1_and_the_rest_in_pass_2(tmp_path, monkeypatch):
    """Tables of rows packed before the first RTG token go to rows.arrow as they leave the packer;
    from the first RTG token on they go to the spill file, resolved once the edges are fitted. One
    row per table, one document per row, two records per batch: with draws that make the first six
    records unconditional, the six rows of the first three batches are written in pass 1, the four
    after them in pass 2, and every row is as computed by hand."""
    from rcond import corpus
    from rcond.packing import Spill

    seed = next(s for s in range(100_000)  # the stream's draws: one per record, in record order
                if ((r := np.random.default_rng(s).random(10))[:6] < 0.5).all() and (r[6:] >= 0.5).all())
    docs = ([{"response": "a b c d", "reward": 1}] * 6                                # [off a b c d eos]
            + [{"response": "e f g", "reward": r} for r in (1, -1, 1, -1)])           # [on rtg e f g eos]
    written = {"pass 1": 0, "spill": 0}
    real_write, real_spill = corpus.RowsFile.write_packed, Spill.write

    def count(where, real):
        def wrapped(self, rows):
            written[where] += len(rows["pieces"])
            return real(self, rows)
        return wrapped

    monkeypatch.setattr(corpus, "TABLE_TOKENS", 6)
    monkeypatch.setattr(corpus.RowsFile, "write_packed", count("pass 1", real_write))
    monkeypatch.setattr(Spill, "write", count("spill", real_spill))
    rows, scheme, s = make(tmp_path, "scored", docs, block_size=6, uncond=0.5, seed=seed, encode_batch=2)
    assert written == {"pass 1": 6, "spill": 4}
    assert rows["input_ids"].tolist() == ([[OFF, 1, 2, 3, 4, 0]] * 6
                                          + [[ON, R1, 5, 6, 7, 0], [ON, R0, 5, 6, 7, 0]] * 2)
    assert rows["bin_ids"].tolist() == [[-1] * 6] * 6 + [[1] * 6, [0] * 6] * 2
    assert rows["position_ids"].tolist() == [list(range(6))] * 10
    assert rows["segment_ids"].tolist() == [[0] * 6] * 10
    assert rows["loss_weight"].tolist() == [[1, 1, 1, 1, 1, 0]] * 6 + [[0, 1, 1, 1, 1, 0]] * 4
    assert scheme.counts == [2, 2] and (s.off_docs, s.on_docs) == (6, 4)


def test_a_tokenizer_without_a_pad_token_gives_a_corpus_that_loads(tmp_path):
    """A tokenizer made in Python without a pad token (rcond's own loader gives one eos as pad):
    rows are padded with eos, and the corpus loads, its tokenizer the one fingerprinted (before,
    the saved tokenizer came back from load with pad = eos, and load refused the corpus)."""
    tok = word_tokenizer(pad_token=None)
    assert tok.pad_token is None
    src = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "response": "b c", "reward": 1}])
    build(SourceReader([str(src)], "scored"), tmp_path / "c", tok, binning="edges:0",
          opts=PackOptions(block_size=8, uncond_fraction=0.0), progress=False)
    ds, _, tok2 = load(tmp_path / "c")
    assert ds["input_ids"][0] == [ON, R1, 1, 2, 3, 0, 0, 0]  # [on r1 a b c eos] + two eos of padding
    assert tok.pad_token == tok2.pad_token == "<eos>"


def test_a_tokenizer_without_an_eos_token_is_refused_before_anything_is_written(tmp_path):
    tok = word_tokenizer(eos_token=None, pad_token=None)
    src = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a", "response": "b c", "reward": 1}])
    with pytest.raises(CorpusError, match="the tokenizer has no eos token; rcond ends every document with eos"):
        build(SourceReader([str(src)], "scored"), tmp_path / "c", tok, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl"]


def test_a_tokenizer_given_to_a_failed_build_keeps_its_tokens_and_a_build_of_fewer_bins_loads(tmp_path):
    """The control tokens join the tokenizer before any input is read, so a build that fails keeps
    them (the docstring says so); a second build of 3 bins on the same object writes a corpus that
    loads, its scheme of 3 RTG tokens, the saved tokenizer holding the first build's other 7 as
    ordinary special tokens that no row uses."""
    tok = word_tokenizer()
    before = len(tok)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"response": "a", "reward": 1}, {"response": "b"}])
    with pytest.raises(RecordError, match="bad.jsonl:2: missing field 'reward'"):
        build(SourceReader([str(bad)], "scored"), tmp_path / "c1", tok, opts=PackOptions(block_size=8), progress=False)
    assert len(tok) == before + 12 and not (tmp_path / "c1").exists()  # on, off and 10 RTG tokens
    good = write_jsonl(tmp_path / "good.jsonl", [{"response": "a b", "reward": r} for r in range(6)])
    build(SourceReader([str(good)], "scored"), tmp_path / "c2", tok, num_bins=3,
          opts=PackOptions(block_size=8, uncond_fraction=0.0), progress=False)
    ds, scheme, saved = load(tmp_path / "c2")
    assert scheme.rtg_tokens == ["<|rtg:0|>", "<|rtg:1|>", "<|rtg:2|>"] and len(saved) == before + 12
    stale = {saved.convert_tokens_to_ids(f"<|rtg:{k}|>") for k in range(3, 10)}
    assert not stale & {i for row in ds["input_ids"] for i in row}

def test_truncation_and_padding_the_tokenizer_carries_are_not_applied(tmp_path):
    """A tokenizer saved with truncation on (as some hub tokenizers are), or last called with
    ``truncation=True``/``padding=True`` (transformers leaves that state on the backend), must not
    cut or pad the content: the rows hold every word, and the tokenizer's settings are as before."""
    tok = word_tokenizer()
    backend = tok.backend_tokenizer
    backend.enable_truncation(max_length=2)
    backend.enable_padding(pad_id=0, pad_token="<eos>", length=9)
    src = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "a b c", "response": "d e f g", "reward": 1}])
    build(SourceReader([str(src)], "scored"), tmp_path / "c", tok, binning="edges:0",
          opts=PackOptions(block_size=12, uncond_fraction=0.0), progress=False)
    ds, _, _ = load(tmp_path / "c")
    assert ds["input_ids"][0] == [ON, R1, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0]  # [on r1 a b c d e f g eos] + padding
    assert backend.truncation["max_length"] == 2 and backend.padding["length"] == 9
    assert backend.encode_special_tokens is False


def test_dialog_bins_follow_the_rtg_in_force(tmp_path):
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reward": -1},
             {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "reward": 2}]
    rows, _, _ = make(tmp_path, "dialog", [{"turns": turns}], binning="edges:1.5")
    # RTG = [1, 2] -> bins [0, 1]; stream [on a r0 b c r1 d eos]
    assert rows["input_ids"][0][:8].tolist() == [ON, 1, R0, 2, 3, R1, 4, 0]
    assert rows["bin_ids"][0][:8].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert rows["loss_weight"][0][:8].tolist() == [0, 0, 1, 0, 0, 1, 1, 0]


def test_control_tokens_and_bins_resolved_after_packing(tmp_path):
    """Pass 1 packs with placeholder control ids and marker indices; pass 2 resolves them. On
    random dialogs split across many pieces: every id is real, mode tokens open every piece, an
    ``off`` piece has no RTG token and no bin, and every trained position carries the bin of the
    latest RTG token before it in its piece (checked by walking the rows)."""
    rng = np.random.default_rng(7)
    words = "a b c d e f g h".split()
    dialogs = []
    for _ in range(60):
        turns = []
        for _ in range(int(rng.integers(1, 5))):
            turns.append({"role": "user", "content": " ".join(rng.choice(words, int(rng.integers(1, 6))))})
            turns.append({"role": "assistant", "content": " ".join(rng.choice(words, int(rng.integers(1, 9)))),
                          "reward": float(rng.normal())})
        dialogs.append({"turns": turns})
    src = write_jsonl(tmp_path / "d.jsonl", dialogs)
    scheme, _ = build(SourceReader([str(src)], "dialog"), tmp_path / "c", word_tokenizer(), num_bins=4,
                      opts=PackOptions(block_size=12, uncond_fraction=0.3, encode_batch=7), progress=False)
    ds, scheme, tok = load(tmp_path / "c")
    ids = scheme.token_ids(tok)
    on, off = ids[scheme.on_token], ids[scheme.off_token]
    rtg_bin = {ids[t]: k for k, t in enumerate(scheme.rtg_tokens)}
    rows = {k: np.array(ds[k]) for k in ds.column_names}
    assert (rows["input_ids"] >= 0).all() and (rows["input_ids"] < len(tok)).all()
    pieces = modes = rtg_tokens = 0
    for r in range(len(rows["input_ids"])):
        seg = rows["segment_ids"][r]
        for s_id in np.unique(seg[seg >= 0]):
            at = np.flatnonzero(seg == s_id)
            x, b, w = rows["input_ids"][r][at], rows["bin_ids"][r][at], rows["loss_weight"][r][at]
            pieces += 1
            assert x[0] in (on, off)
            modes += 1
            if x[0] == off:
                assert not any(t in rtg_bin for t in x.tolist()) and (b == -1).all()
                continue
            latest = None
            for i, t in enumerate(x.tolist()):
                if t in rtg_bin:
                    latest = rtg_bin[t]
                    rtg_tokens += 1
                    assert b[i] == latest
                if w[i] > 0:
                    assert b[i] == latest
    assert pieces > len(dialogs) and modes == pieces and rtg_tokens >= sum(scheme.counts) > 0


def test_each_rtg_token_carries_its_own_records_bin_across_batches(tmp_path):
    """Markers are numbered across batches: with batches of 3 records, every RTG token still takes
    the bin of its own record's reward ("a" marks a negative reward, "b" a positive one)."""
    rng = np.random.default_rng(3)
    rewards = rng.normal(size=40)
    docs = [{"response": "a" if r < 0 else "b", "reward": float(r)} for r in rewards]
    rows, _, _ = make(tmp_path, "scored", docs, block_size=8, encode_batch=3)
    ids = rows["input_ids"]
    after_rtg = ids[:, 1:][np.isin(ids[:, :-1], [R0, R1])]         # the content token after each RTG token
    rtg = ids[:, :-1][np.isin(ids[:, :-1], [R0, R1])]
    assert len(rtg) == len(docs)
    assert ((rtg == R0) == (after_rtg == 1)).all() and ((rtg == R1) == (after_rtg == 2)).all()


def test_prompts_kept_from_earlier_batches_still_carry_their_own_ids(tmp_path):
    """With batches of 3 records, "a b" recurs in the first batch and "c" in the third, so later
    batches take their ids from the build's cache of recurring texts: every document still holds
    exactly its own words' ids (a=1, b=2, ...), between its control prefix and its eos."""
    prompts = ["a b", "a b", "c", "a b", "c", "d", "c", "c", "a b", "a b", "d", "e f"]
    responses = ["h", "g h", "f", "e", "d e", "c", "b", "a", "g", "h h", "f g", "e"]
    docs = [{"prompt": p, "response": r, "reward": 0.5 * i - 3} for i, (p, r) in enumerate(zip(prompts, responses))]
    rows, _, s = make(tmp_path, "scored", docs, block_size=32, encode_batch=3)
    got = sorted(tuple(ids[seg == k][2:-1].tolist())                # [on rtg ... eos] -> the content
                 for ids, seg in zip(rows["input_ids"], rows["segment_ids"]) for k in range(seg.max() + 1))
    want = sorted(tuple(" abcdefgh".index(w) for w in f"{p} {r}".split()) for p, r in zip(prompts, responses))
    assert got == want and s.documents == len(docs)


def test_train_on_prompt(tmp_path):
    rows, _, _ = make(tmp_path, "scored", [{"prompt": "a", "response": "b", "reward": 1}], train_on_prompt=True)
    assert rows["loss_weight"][0][:4].tolist() == [0, 1, 1, 1]


def test_uncond_fraction_is_seeded_and_near_target(tmp_path):
    docs = [{"response": "a", "reward": i} for i in range(400)]
    _, _, s1 = make(tmp_path, "scored", docs, uncond=0.25, name="u1", binning="quantile")
    _, _, s2 = make(tmp_path, "scored", docs, uncond=0.25, name="u2", binning="quantile")
    assert s1.off_docs == s2.off_docs and 60 <= s1.off_docs <= 140


def test_scheme_records_the_discount_unconditional_fraction_and_seed(tmp_path):
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reward": 1}]
    src = write_jsonl(tmp_path / "in.jsonl", [{"turns": turns}])
    build(SourceReader([str(src)], "dialog", gamma=0.5), tmp_path / "c", word_tokenizer(), binning="edges:0",
          progress=False, opts=PackOptions(block_size=16, uncond_fraction=0.25, seed=7))
    scheme = load(tmp_path / "c")[1]
    assert (scheme.gamma, scheme.uncond_fraction, scheme.options["seed"]) == (0.5, 0.25, 7)


def test_block_size_smaller_than_prefix(tmp_path):
    with pytest.raises(CorpusError, match="smaller than a control prefix"):
        make(tmp_path, "scored", [{"response": "a", "reward": 1}], block_size=3)
    with pytest.raises(CorpusError, match="--seed must be a non-negative integer, got -1"):
        make(tmp_path, "scored", [{"response": "a", "reward": 1}], seed=-1)
    assert not (tmp_path / "c").exists()
    for fraction in (-0.1, 1.5, float("nan"), float("inf")):
        with pytest.raises(CorpusError, match=rf"^--uncond-fraction must be in \[0, 1\], got {fraction}$"):
            make(tmp_path, "scored", [{"response": "a", "reward": 1}], uncond=fraction)
        assert not (tmp_path / "c").exists()


def test_the_largest_block_size_and_the_smallest_trained_vocabulary_are_accepted():
    from rcond.corpus import check_options, trained_vocab_size

    check_options(PackOptions(block_size=2 ** 20))
    with pytest.raises(CorpusError, match="--block-size 1048577 is more than 1,048,576 tokens per row"):
        check_options(PackOptions(block_size=2 ** 20 + 1))
    assert trained_vocab_size("train:260") == 260
    with pytest.raises(CorpusError, match="--tokenizer is empty"):
        trained_vocab_size("  ")
    with pytest.raises(CorpusError, match="'train:259': a byte-level BPE needs a vocabulary of 260 to"):
        trained_vocab_size("train:259")


def test_existing_output_refused(tmp_path):
    make(tmp_path, "scored", [{"response": "a", "reward": 1}])
    from rcond.atomic import OutputExistsError

    with pytest.raises(OutputExistsError, match="--overwrite"):
        make(tmp_path, "scored", [{"response": "b", "reward": 1}])


def test_load_checks_fingerprints(tmp_path):
    make(tmp_path, "scored", [{"response": "a", "reward": 1}])
    rows = tmp_path / "c" / "rows.arrow"
    data = bytearray(rows.read_bytes())
    data[-20] ^= 0xFF
    rows.write_bytes(bytes(data))
    with pytest.raises(CorpusError, match="fingerprint mismatch"):
        load(tmp_path / "c")
    (tmp_path / "c" / "scheme.json").unlink()
    with pytest.raises(CorpusError, match="not a complete rcond corpus"):
        load(tmp_path / "c")


def test_load_says_what_a_folder_is_when_it_is_no_usable_corpus(tmp_path):
    """A folder of something else, a newer rcond's corpus, a tokenizer folder missing a file, and
    (with verify=False, which skips the fingerprint) damaged rows: each a CorpusError saying so."""
    import json
    import shutil

    make(tmp_path, "scored", [{"response": "a", "reward": 1}])
    good = tmp_path / "c"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(CorpusError, match=r"other: not an rcond corpus \(a corpus holds scheme\.json, rows\.arrow and "
                                          r"tokenizer/"):
        load(tmp_path / "other")
    for part in ("rows.arrow", "tokenizer"):  # a build cut short: scheme.json is the file it writes last
        partial = tmp_path / f"partial_{part}"
        partial.mkdir()
        (shutil.copytree if part == "tokenizer" else shutil.copy)(good / part, partial / part)
        with pytest.raises(CorpusError, match=rf"partial_{part}: not a complete rcond corpus: it has no scheme\.json"):
            load(partial)
    newer = tmp_path / "newer"
    shutil.copytree(good, newer)
    scheme = json.loads((newer / "scheme.json").read_text())
    (newer / "scheme.json").write_text(json.dumps({**scheme, "version": 2}))
    with pytest.raises(CorpusError, match=r"newer/scheme\.json: scheme version 2 is newer than this rcond reads \(1\): "
                                          r"it was written by a newer rcond; upgrade rcond"):
        load(newer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        lost = tmp_path / f"lost_{name}"
        shutil.copytree(good, lost)
        (lost / "tokenizer" / name).unlink()
        with pytest.raises(CorpusError, match=rf"tokenizer: has no {name} \(rcond preprocess saved it .*\); restore "
                                              rf"it or preprocess the corpus again"):
            load(lost)
    for cut in (0, 100):
        damaged = tmp_path / f"damaged{cut}"
        shutil.copytree(good, damaged)
        (damaged / "rows.arrow").write_bytes((good / "rows.arrow").read_bytes()[:cut])
        with pytest.raises(CorpusError, match=r"rows\.arrow: not readable as the corpus's rows \(.*\); the file is "
                                              r"damaged"):
            load(damaged, verify=False)
    norows = tmp_path / "norows"
    shutil.copytree(good, norows)
    (norows / "rows.arrow").unlink()
    with pytest.raises(CorpusError, match=rf"^{norows}: missing rows\.arrow$"):
        load(norows)
    for name, text in (("tokenizer.json", "{not json"), ("tokenizer.json", "[]"), ("tokenizer_config.json", "{")):
        broken = tmp_path / f"broken_{name}_{len(text)}"
        shutil.copytree(good, broken)
        (broken / "tokenizer" / name).write_text(text)
        with pytest.raises(CorpusError, match=r"^the corpus's tokenizer cannot be loaded: "):
            load(broken)


def test_load_checks_the_scheme_against_the_rows_and_the_tokenizer_folder(tmp_path):
    """A scheme.json edited by hand, an edited tokenizer config or a lost tokenizer/ folder is
    refused by load itself, naming the file and, where it can, what the rows hold."""
    import json
    import shutil

    make(tmp_path, "scored", [{"response": f"r{i}", "reward": i} for i in range(8)], binning="edges:1.5,3.5,5.5")
    good = tmp_path / "c"
    load(good)

    def edited(name, edit):
        d = tmp_path / name
        shutil.copytree(good, d)
        scheme = json.loads((d / "scheme.json").read_text())
        edit(scheme)
        (d / "scheme.json").write_text(json.dumps(scheme))
        return d

    d = edited("size", lambda s: s["options"].update(block_size=32))
    with pytest.raises(CorpusError, match=rf"^{d}/scheme.json: options.block_size must be the length the rows were "
                                          rf"packed to, 16; got 32\."):
        load(d)
    d = edited("nosize", lambda s: s["options"].pop("block_size"))
    with pytest.raises(CorpusError, match="packed to, 16; got None"):
        load(d)
    d = edited("bins", lambda s: s.update(num_bins=2, edges=[1.5], binning="edges:1.5", counts=s["counts"][:2]))
    with pytest.raises(CorpusError, match=rf"^{d}/scheme.json: the rows hold bin id 3 but num_bins is 2; the "
                                          rf"scheme.json does not belong to these rows"):
        load(d)
    d = edited("template", lambda s: s.update(rtg_template="<|bin:{k}|>"))  # the tokenizer is untouched
    with pytest.raises(CorpusError, match=rf"^{d}/scheme.json: control token '<\|bin:0\|>' is not in the corpus's "
                                          rf"tokenizer \({d}/tokenizer\).*the scheme.json was edited or belongs to "
                                          rf"another corpus"):
        load(d)
    d = tmp_path / "notok"
    shutil.copytree(good, d)
    shutil.rmtree(d / "tokenizer")
    with pytest.raises(CorpusError, match=rf"^{d}: has no tokenizer/ folder"):
        load(d)
    d = tmp_path / "eos"  # tokenizer_config.json's settings are in the fingerprint, beside tokenizer.json
    shutil.copytree(good, d)
    config = json.loads((d / "tokenizer" / "tokenizer_config.json").read_text())
    (d / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|rlhf:on|>"}))
    with pytest.raises(CorpusError, match=rf"^{d}/tokenizer: the tokenizer's eos token is '<\|rlhf:on\|>', one of "
                                          rf"rcond's control tokens"):
        load(d)
    for setting in ({"split_special_tokens": True}, {"model_max_length": 8}):  # edits only the fingerprint sees
        (d / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({**config, **setting}))
        with pytest.raises(CorpusError, match=rf"^{d}/tokenizer: tokenizer fingerprint does not match scheme.json"):
            load(d)  # split_special_tokens would encode '<|rlhf:on|>' in a prompt as its characters
    d = edited("tok_and_scheme", lambda s: s["counts"].__setitem__(0, s["counts"][0] + 1))
    (d / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 8}))
    with pytest.raises(CorpusError, match=rf"^{d}/tokenizer: tokenizer fingerprint does not match scheme.json"):
        load(d, verify=False)  # the scheme's own fingerprint is not checked then; the tokenizer's still is
    d = edited("tokfp", lambda s: s.update(tokenizer_fingerprint="sha256:0"))  # the tokenizer is untouched
    with pytest.raises(CorpusError, match=rf"^{d}/scheme.json: edited after preprocessing"):
        load(d)
    d = tmp_path / "meta"  # damaged schema metadata that only the fingerprint would have caught
    shutil.copytree(good, d)
    data = bytearray((d / "rows.arrow").read_bytes())
    at = data.index(b'{"info"')
    data[at:at + 1] = b"!"
    (d / "rows.arrow").write_bytes(bytes(data))
    with pytest.raises(CorpusError, match=rf"^{d}/rows.arrow: not readable as the corpus's rows"):
        load(d, verify=False)
    d = edited("rowsfp", lambda s: s["options"].update(rows_sha256="sha256:0"))  # the rows are untouched
    with pytest.raises(CorpusError, match=rf"^{d}/scheme.json: edited after preprocessing"):
        load(d)
    with pytest.raises(CorpusError, match=rf"^{d}/rows.arrow: is a file, not a corpus directory"):
        load(d / "rows.arrow")
    d = tmp_path / "rowsdir"
    shutil.copytree(good, d)
    (d / "rows.arrow").unlink()
    (d / "rows.arrow").mkdir()
    with pytest.raises(CorpusError, match=rf"^{d}/rows.arrow: is not a file"):
        load(d)
    for name, edit in [("swapped", lambda s: s.update(on_token=s["off_token"], off_token=s["on_token"])),
                       ("format", lambda s: s["options"].update(format="dialog")),
                       ("edges", lambda s: s.update(edges=[2.5, 3.5, 5.5], binning="edges:2.5,3.5,5.5")),
                       ("counts", lambda s: s["counts"].__setitem__(0, s["counts"][0] + 1))]:
        d = edited(name, edit)  # what the other checks cannot see: the scheme's own fingerprint does
        with pytest.raises(CorpusError, match=rf"^{d}/scheme.json: edited after preprocessing"):
            load(d)
        load(d, verify=False)  # verify=False skips the fingerprints, as for the rows
    d = edited("deep", lambda s: None)
    (d / "scheme.json").write_text("[" * 100_000)
    with pytest.raises(CorpusError, match="nested too deeply"):
        load(d)


@pytest.mark.parametrize("role", ["eos", "pad", "unk"])
def test_an_eos_pad_or_unk_token_that_is_a_control_token_is_refused(tmp_path, role):
    tok = word_tokenizer()
    tok.add_special_tokens({f"{role}_token": "<|rtg:1|>"})
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "a", "reward": 1}])
    with pytest.raises(CorpusError, match=rf"^the tokenizer's {role} token is '<\|rtg:1\|>', one of rcond's "
                                          rf"control tokens; give it a {role} token of its own"):
        build(SourceReader([str(src)], "scored"), tmp_path / "c", tok, num_bins=4, progress=False)
    assert not (tmp_path / "c").exists()
    tok.add_special_tokens({f"{role}_token": "<|rtg:7|>"})  # not a control token when there are 4 bins
    build(SourceReader([str(src)], "scored"), tmp_path / "c", tok, num_bins=4, progress=False)


@pytest.mark.parametrize("table_tokens", [8, 16, 48])
def test_rows_do_not_depend_on_how_many_go_to_the_file_at_a_time(tmp_path, monkeypatch, table_tokens):
    """Tables of TABLE_TOKENS // B rows (at least one, however long a row is) hold the same rows."""
    import rcond.corpus

    docs = [{"prompt": f"p {i}", "response": " ".join(["w"] * (i % 7 + 1)), "reward": i % 5} for i in range(40)]
    whole, _, _ = make(tmp_path, "scored", docs, name="whole")
    monkeypatch.setattr(rcond.corpus, "TABLE_TOKENS", table_tokens)
    split, _, _ = make(tmp_path, "scored", docs, name="split")
    assert len(whole["input_ids"]) > 3
    for k in whole:
        np.testing.assert_array_equal(whole[k], split[k])


@pytest.mark.parametrize("fmt", ["scored", "dialog"])
def test_rows_do_not_depend_on_how_many_bytes_a_batch_holds_or_on_compacted_pools(tmp_path, monkeypatch, fmt):
    """Batches cut at ~200 bytes of input instead of 1,000 records, and every pool compacted to its
    pieces waiting in open rows: the same rows, bins and summary (long documents split over rows,
    seeded unconditional draws, markers numbered across batches)."""
    import rcond.conditioning
    import rcond.packing
    import rcond.sources

    def doc(i):
        words = " ".join(["w"] * (i * 7 % 40 + 1))
        if fmt == "scored":
            return {"prompt": f"p {i}", "response": words, "reward": i % 5}
        return {"turns": [{"role": "user", "content": f"p {i}"}, {"role": "assistant", "content": words, "reward": i % 3},
                          {"role": "user", "content": "w w"}, {"role": "assistant", "content": "w", "reward": 1}]}

    docs = [doc(i) for i in range(60)]
    whole, scheme, summary = make(tmp_path, fmt, docs, name="whole", uncond=0.3, binning="quantile", num_bins=3)
    for cap in (rcond.sources, "BATCH_BYTES"), (rcond.conditioning, "CUT_BATCH_BYTES"):  # the word tokenizer cuts
        monkeypatch.setattr(*cap, 200)
    monkeypatch.setattr(rcond.packing, "COMPACT_TOKENS", 0)
    batches = []  # as the build reads them
    read = SourceReader.batches
    monkeypatch.setattr(SourceReader, "batches", lambda self, *a, **kw: (batches.append(b) or b for b in read(self, *a, **kw)))
    cut, scheme2, summary2 = make(tmp_path, fmt, docs, name="cut", uncond=0.3, binning="quantile", num_bins=3)
    assert len(whole["input_ids"]) > 5 and summary.pieces > summary.documents  # documents were split
    assert len(batches) >= 15
    for k in whole:
        np.testing.assert_array_equal(whole[k], cut[k])
    assert scheme.edges == scheme2.edges and scheme.counts == scheme2.counts
    assert (summary.records, summary.tokens, summary.pieces) == (summary2.records, summary2.tokens, summary2.pieces)


def test_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(Exception):
        make(tmp_path, "scored", [{"response": "a", "reward": 1}, "{bad"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.jsonl"]


def test_rows_hash_is_the_files_sha256(tmp_path):
    import hashlib

    _, scheme, _ = make(tmp_path, "scored", [{"response": f"w{i} x", "reward": i} for i in range(40)])
    digest = hashlib.sha256((tmp_path / "c" / "rows.arrow").read_bytes()).hexdigest()
    assert scheme.options["rows_sha256"] == "sha256:" + digest


def test_failure_while_writing_rows_leaves_nothing(tmp_path, monkeypatch):
    from rcond.conditioning import ConditionedStream

    def broken(self, rows):
        raise OSError("disk full")

    monkeypatch.setattr(ConditionedStream, "resolve", broken)  # pass 2 fails while the tokenizer is saved beside it
    with pytest.raises(OSError, match="disk full"):
        make(tmp_path, "scored", [{"response": "a", "reward": 1}])
    assert [p.name for p in tmp_path.iterdir()] == ["c.jsonl"]


def test_scheme_options_record_how_the_records_were_read(tmp_path):
    """Field names and --on-error change what the rows hold from the same input: scheme.json says
    which were used, and how many records were skipped."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"answer": "a b", "score": 1}, {"answer": "c", "score": "x"}])
    reader = SourceReader([str(src)], "scored", fields=FieldNames(response="answer", reward="score"), on_error="skip")
    scheme, summary = build(reader, tmp_path / "c", word_tokenizer(), binning="edges:0", progress=False,
                            opts=PackOptions(block_size=16))
    assert (summary.skipped, summary.skipped_examples) == (1, [f"{src}:2: score must be a number, got 'x'"])
    options = load(tmp_path / "c")[1].options
    assert options["fields"]["response"] == "answer" and options["fields"]["reward"] == "score"
    assert (options["on_error"], options["skipped"]) == ("skip", 1)
    assert (tmp_path / "c" / "skipped.txt").read_text() == f"{src}:2: score must be a number, got 'x'\n"
    assert reader.skips_to is None  # the reader is the caller's: a later read writes no file of this build's


def test_unscored_pairs_with_one_bin_are_refused(tmp_path):
    """Unscored pairs go to the top and bottom bins: with --bins 1 that is one bin, and chosen and
    rejected would carry the same RTG token. Refused, nothing written; scored pairs are read."""
    pair = {"prompt": "a", "chosen": "b", "rejected": "c"}
    with pytest.raises(CorpusError, match=r"preference pairs without scores .* which --bins 1 makes the same bin"):
        make(tmp_path, "pairs", [pair], binning="quantile", num_bins=1)
    assert not (tmp_path / "c").exists()
    _, scheme, _ = make(tmp_path, "pairs", [{**pair, "chosen_score": 1, "rejected_score": 0}], binning="quantile",
                        num_bins=1, name="scored")
    assert scheme.counts == [2]


def test_unscored_pairs_keep_explicit_edges_and_else_bin_over_minus_1_to_1(tmp_path):
    """Pairs without scores read no reward: explicit edges stay as given; fitted bins span
    [-1, 1] (rejected -1, chosen +1), 4 bins edged at -0.5, 0, 0.5."""
    pair = {"prompt": "a", "chosen": "b", "rejected": "c"}
    _, scheme, _ = make(tmp_path, "pairs", [pair], binning="edges:0.5")
    assert (scheme.binning, scheme.edges, scheme.counts) == ("edges:0.5", [0.5], [1, 1])
    _, scheme, _ = make(tmp_path, "pairs", [pair], binning="quantile", num_bins=4, name="q")
    assert scheme.edges == [-0.5, 0.0, 0.5] and scheme.counts == [1, 0, 0, 1]


def test_summary_counts_unscored_sides_same_pairs_split_prompts_and_prompts(tmp_path):
    """Three pairs without scores (6 sides), one with: one splits into two prompts, two are one text
    twice; every pair record opens with a prompt, a text document never does."""
    pairs = [{"chosen": "\n\nHuman: a\n\nAssistant: c", "rejected": "\n\nHuman: b\n\nAssistant: c"},
             {"prompt": "a", "chosen": "b", "rejected": "b"}, {"prompt": "d", "chosen": "e", "rejected": "e"},
             {"prompt": "a", "chosen": "b", "rejected": "c", "chosen_score": 1, "rejected_score": 0}]
    _, _, s = make(tmp_path, "pairs", pairs)
    assert (s.unscored_sides, s.same_pairs, s.split_prompts, s.prompts) == (6, 2, 1, 8)
    _, _, s = make(tmp_path, "scored", [{"prompt": "a", "response": "b", "reward": 1}, {"response": "c", "reward": 1}],
                   name="s")
    assert s.prompts == 1
    _, _, s = make(tmp_path, "text", [{"text": "a b"}], name="t")
    assert s.prompts == 0


def unk_less_tokenizer():
    """A WordLevel tokenizer whose unk token is not in its vocabulary: it raises on any word it
    does not know ('Missing [UNK] token from the vocabulary')."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<eos>", "a", "b", "c"])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_text_the_tokenizer_cannot_encode_is_named_and_the_build_stops_cleanly(tmp_path, workers):
    """A tokenizer that raises on one text (in the fifth batch of one record each) stopped the build
    with the tokenizer's bare exception (a traceback from the command), and left the reading thread
    running as long as that exception was referenced; and the encoder's copy check let the same
    error escape as it probed the copy ('a<eos>a' is an unknown word too). Now: a CorpusError that
    shows the text, no thread of the build left, nothing written."""
    import threading
    import time

    from rcond.content_encoder import ContentEncoder

    tok = unk_less_tokenizer()
    assert ContentEncoder(tok.backend_tokenizer).joined is not None  # its copy fails on 'a<eos>a' alike
    rows = [{"response": "a b", "reward": 1.0}] * 4 + [{"response": "a zebra c", "reward": 2.0}] + \
        [{"response": "c", "reward": 0.0}] * 4
    src = write_jsonl(tmp_path / "s.jsonl", rows)
    with pytest.raises(CorpusError, match="cannot encode the text 'a zebra c': Exception: WordLevel error: Missing") as raised:
        build(SourceReader([str(src)], "scored"), tmp_path / "c", tok,
              opts=PackOptions(block_size=16, encode_batch=1, workers=workers), progress=False)
    time.sleep(0.2)  # a reading thread polls for its stop every 50 ms
    assert not [t.name for t in threading.enumerate() if t.name.startswith("rcond")]  # with the error held
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.jsonl"] and raised.value


def test_a_trained_tokenizer_has_the_vocabulary_asked_for_with_eos_as_pad():
    """train:300 gives 300 tokens, eos among them (not added after), eos as pad, and any text,
    characters never seen included, round-trips through the byte-level BPE."""
    from rcond.corpus import train_tokenizer

    tok = train_tokenizer([f"review {i}: the lamp was bright and the fan was loud" for i in range(300)], 300)
    assert len(tok) == 300 and tok.eos_token_id < 300
    assert tok.eos_token == tok.pad_token == "<|endoftext|>"
    text = "Ünïcode 🙂 never seen"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_a_failed_training_read_clears_its_progress_bar_before_the_error_is_shown(capsys):
    """A record that fails while the texts are read (an error the command line then prints): the
    progress bar is already closed, its line blanked, while the error is being handled."""
    from rcond.corpus import train_tokenizer

    def texts():
        yield "a b c"
        raise CorpusError("docs.jsonl, line 2: not JSON")

    try:
        train_tokenizer(texts(), 300, progress=True)
    except CorpusError as e:
        assert str(e) == "docs.jsonl, line 2: not JSON"
        err = capsys.readouterr().err
        assert "tokenizer: reading" in err and err.endswith("\r") and err.split("\r")[-2].isspace()
    else:
        pytest.fail("the reading error did not come through")


def test_a_train_spec_is_read_strictly():
    """Only ASCII digits after 'train:' (int() would take ' 300', '+300', '3_00', full-width digits,
    and a second colon must not be skipped); 260 to 2**20 tokens; 'train' alone, or a name that
    starts with it, is a path."""
    from rcond.corpus import trained_vocab_size

    assert trained_vocab_size("train:1048576") == 2 ** 20
    assert trained_vocab_size("train:4096") == 4096
    for path in ("train", "trained-tokenizer", "tokenizers/train:300"):
        assert trained_vocab_size(path) is None
    for bad in ("train:", "train:abc", "train: 300", "train:+300", "train:3_00", "train:３００", "train:1:300",
                "train:300 ", "train:-300"):
        with pytest.raises(CorpusError) as e:
            trained_vocab_size(bad)
        assert str(e.value) == f"--tokenizer {bad!r}: expected train:VOCAB_SIZE, e.g. train:4096"
    for big in ("train:1048577", "train:99999999999999999999"):
        with pytest.raises(CorpusError) as e:
            trained_vocab_size(big)
        assert str(e.value) == f"--tokenizer {big!r}: a byte-level BPE needs a vocabulary of 260 to 1,048,576 tokens"


def test_resolve_tokenizer_trains_on_the_inputs_or_loads_a_folder(tmp_path, capsys):
    """train:VOCAB trains on the reader's texts, with the progress bar when asked; a folder is loaded."""
    from rcond.corpus import resolve_tokenizer

    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"the lamp {i} was bright and the fan was loud"}
                                                 for i in range(200)])
    reader = SourceReader([str(src)], "text")
    trained = resolve_tokenizer("train:300", reader, progress=True)
    assert len(trained) == 300 and "tokenizer: reading" in capsys.readouterr().err
    assert resolve_tokenizer("train:300", reader).get_vocab() == trained.get_vocab()
    assert capsys.readouterr().err == ""
    word_tokenizer().save_pretrained(tmp_path / "tok")
    assert resolve_tokenizer(str(tmp_path / "tok"), reader)("a b")["input_ids"] == [1, 2]


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_training_without_progress_draws_nothing_on_a_terminal():
    """The Rust trainer draws its own bar, on a terminal only: training with progress=False
    (``--no-progress``) must draw nothing there (rcond's own bar counts the texts when asked)."""
    import os
    import pty
    import subprocess

    code = ("from rcond.corpus import train_tokenizer\n"
            "train_tokenizer([f'review {i}: the lamp was bright and the fan was loud' for i in range(300)], 300)\n")
    terminal, stderr = pty.openpty()
    try:
        done = subprocess.run([sys.executable, "-c", code], stderr=stderr, stdout=subprocess.DEVNULL, timeout=120)
    finally:
        os.close(stderr)
    shown = b""
    with suppress(OSError):  # reading a pseudo-terminal whose other end is closed ends with EIO
        while chunk := os.read(terminal, 65536):
            shown += chunk
    os.close(terminal)
    assert done.returncode == 0 and shown == b""


def test_scheme_records_the_versions_that_built_the_corpus(tmp_path):
    """scheme.json names the Python, rcond and library versions that read, encoded and wrote the
    rows, and vaderSentiment's where VADER scored them (a reader of the corpus years later knows
    what made it); they are part of the scheme's own fingerprint."""
    import platform
    from importlib import metadata

    from rcond.corpus import scheme_sha256
    from rcond.scorers import get_scorer

    _, scheme, _ = make(tmp_path, "scored", [{"response": "a b", "reward": 1.0}])
    libraries = ("rcond", "tokenizers", "transformers", "pyarrow", "numpy")
    expected = {"python": platform.python_version(), **{name: metadata.version(name) for name in libraries}}
    assert scheme.options["built_with"] == expected
    src = write_jsonl(tmp_path / "v.jsonl", [{"response": "a good b"}, {"response": "a bad b"}])
    build(SourceReader([str(src)], "scored", scorer=get_scorer("vader")), tmp_path / "v", word_tokenizer(),
          opts=PackOptions(block_size=16), progress=False)
    assert load(tmp_path / "v")[1].options["built_with"] == {**expected, "vaderSentiment": metadata.version("vaderSentiment")}
    edited = load(tmp_path / "v")[1]
    edited.options["built_with"]["numpy"] = "0.0"
    assert scheme_sha256(edited) != edited.options["scheme_sha256"]


def test_a_library_that_is_not_installed_is_recorded_without_a_version(monkeypatch):
    """rcond run from a source tree without installing it has no installed version: recorded as
    None beside the versions of the libraries that are installed."""
    from importlib import metadata

    from rcond.corpus import built_with

    installed = metadata.version

    def version(name):
        if name == "rcond":
            raise metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(metadata, "version", version)
    versions = built_with(None)
    assert versions["rcond"] is None and versions["numpy"] == installed("numpy")
