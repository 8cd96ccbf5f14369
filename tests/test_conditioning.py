"""rcond.conditioning: encoding each distinct text once, two batches at a time, the cache of recurring texts, and the
corpus-wide marker limit."""

import threading

import numpy as np
import pytest

from conftest import word_tokenizer, write_jsonl
from rcond.content_encoder import ContentEncoder
from rcond.packing import CorpusError, PackOptions
from rcond.sources import SourceReader


def test_markers_beyond_int32_are_an_error_not_a_wrap(tmp_path):
    """Markers are numbered corpus-wide in int32: a batch that would pass the limit stops the
    build with an error instead of wrapping round to other records' bins."""
    from rcond.conditioning import MAX_MARKERS, ConditionedStream, condition, encode_distinct

    src = write_jsonl(tmp_path / "s.jsonl", [{"response": "a", "reward": 1.0}, {"response": "b", "reward": 2.0}])
    parts = next(SourceReader([str(src)], "scored").batches(10))
    offsets, flat = encode_distinct(parts.texts, ContentEncoder(word_tokenizer().backend_tokenizer))
    opts = PackOptions(block_size=16, uncond_fraction=0.0)
    stream = ConditionedStream(0, opts)
    stream.markers = MAX_MARKERS - 2
    stream.adopt(condition(parts, offsets, flat, stream.draw(parts), 0, opts))       # exactly at the limit
    assert stream.markers == MAX_MARKERS
    with pytest.raises(CorpusError, match="reward-to-go tokens in one corpus"):
        stream.adopt(condition(parts, offsets, flat, stream.draw(parts), 0, opts))


def test_bins_are_given_only_by_a_scheme_of_as_many_bins_as_the_tokens_taken():
    """The RTG tokens' ids are taken before the edges are fitted (they depend on the number of
    bins alone); a fitted scheme of another K would give bins that no taken token stands for."""
    from rcond.conditioning import ConditionedStream
    from rcond.tokens import ControlScheme

    tok = word_tokenizer()
    taken = ControlScheme(num_bins=3)
    taken.add_to_tokenizer(tok)
    stream = ConditionedStream(tok.eos_token_id, PackOptions(block_size=16))
    stream.use_tokens(taken, tok)
    assert len(stream.rtg_ids) == 3
    with pytest.raises(ValueError, match="a scheme of 4 bins, the tokens of 3"):
        stream.bind(ControlScheme.fit([0.0, 1.0, 2.0, 3.0], num_bins=4))
    stream.bind(ControlScheme.fit([0.0, 1.0, 2.0], num_bins=3))
    assert stream.bin_of.tolist() == [-1] and stream.bin_counts.tolist() == [0, 0, 0]  # no marker placed


class Recording(ContentEncoder):
    """The build's encoder, noting the texts it is asked to encode."""

    def __init__(self, backend):
        super().__init__(backend)
        self.sent = []

    def __call__(self, texts):
        self.sent.append(list(texts))
        return super().__call__(texts)


def test_repeated_texts_encoded_once_with_the_same_ids():
    """A batch whose texts repeat (a pair's shared prompt, a templated prompt): each distinct text
    goes to the tokenizer once, and every text still gets exactly its own encoding's ids."""
    from rcond.conditioning import encode_distinct, encodings

    tok = word_tokenizer()
    texts = ["a b c", "d", "a b c", "e f", "d", "a b c", "g h i j"]
    encoder = Recording(tok.backend_tokenizer)
    offsets, flat = encode_distinct(texts, encoder)
    assert encoder.sent == [["a b c", "d", "e f", "g h i j"]]
    want = [tok.backend_tokenizer.encode(t, add_special_tokens=False).ids for t in texts]  # one call per text
    assert [flat[offsets[p]:offsets[p + 1]].tolist() for p in range(len(texts))] == want
    assert offsets.tolist() == np.cumsum([0] + [len(w) for w in want]).tolist()
    (_, offsets, flat), = encodings([part_batch(["b a", "c"])], ContentEncoder(tok.backend_tokenizer))  # all distinct, through the build's path
    assert offsets.tolist() == [0, 2, 3] and flat.tolist() == [2, 1, 3]


def test_a_text_that_recurs_in_a_batch_is_not_encoded_again_in_later_batches():
    """encode_distinct with a RecurringTexts cache: only texts that occurred more than once in a
    batch are kept, later batches do not send them to the tokenizer, and every text still gets
    exactly the ids of its own one-text encoding."""
    from rcond.conditioning import RecurringTexts, encode_distinct

    tok = word_tokenizer()
    encoder, cache = Recording(tok.backend_tokenizer), RecurringTexts()
    batches = [["e f", "a", "e f", "b"], ["e f", "c", "a", "c"], ["a", "c", "e f", "a b"], ["c", "e f", "c"]]
    for texts in batches:
        offsets, flat = encode_distinct(texts, encoder, cache)
        want = [tok.backend_tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
        assert [flat[offsets[p]:offsets[p + 1]].tolist() for p in range(len(texts))] == want
    # "e f" recurred in batch 1, "c" in batch 2; "a" never recurred within a batch, so it is sent each
    # time; batch 4 is all kept texts: no call
    assert encoder.sent == [["e f", "a", "b"], ["c", "a"], ["a", "a b"]]
    assert {t: ids.tolist() for t, ids in cache.ids.items()} == {"e f": [5, 6], "c": [3]} and cache.tokens == 3


def test_texts_without_ids_that_recur_and_are_kept_leave_the_others_ids_in_order():
    """Scored records without a prompt give an empty prompt part each: the one text that recurs
    in every batch, kept from the first. Whether only such texts repeat (the ids then stay in
    first-seen order) or a text with ids repeats too, every text gets its own encoding's ids."""
    from rcond.conditioning import RecurringTexts, encode_distinct

    tok = word_tokenizer()
    encoder, cache = Recording(tok.backend_tokenizer), RecurringTexts()
    batches = [["", "a b", "", "c"], ["", "d e f", "", "g", "", "a b"], ["", "c", "c", "", "b"], ["", ""]]
    for texts in batches:
        offsets, flat = encode_distinct(texts, encoder, cache)
        want = [tok.backend_tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
        assert [flat[offsets[p]:offsets[p + 1]].tolist() for p in range(len(texts))] == want
    assert want == [[], []]
    assert encoder.sent == [["", "a b", "c"], ["d e f", "g", "a b"], ["c", "b"]]  # "" kept after batch 1
    assert {t: ids.tolist() for t, ids in cache.ids.items()} == {"": [], "c": [3]}


def test_recurring_texts_hold_at_most_max_tokens_oldest_out_first():
    from rcond.conditioning import RecurringTexts

    cache = RecurringTexts(max_tokens=5)
    cache.keep("x", [1, 2, 3])
    cache.keep("y", [4, 5])
    cache.keep("y", [4, 5])  # already kept: not counted twice
    assert list(cache.ids) == ["x", "y"] and cache.tokens == 5
    cache.keep("z", [6])  # no room: the oldest, "x", leaves
    assert list(cache.ids) == ["y", "z"] and cache.tokens == 3
    cache.keep("w", [7] * 6)  # longer than the whole budget: not kept, nothing evicted
    assert list(cache.ids) == ["y", "z"] and cache.tokens == 3
    cache.keep("v", [8, 9, 10])  # needs 3 of 2 free: "y" leaves
    assert list(cache.ids) == ["z", "v"] and cache.tokens == 4


def test_encodings_are_freed_between_tokenizer_calls_not_during_them(tmp_path):
    """Freeing a batch's encodings while the tokenizer's threads encode the next one costs 2-3x
    the CPU of freeing it between calls: the encoding thread turns each batch's encodings into
    arrays and frees them before its next call. Here (a backend that cannot be copied, so encoded
    text by text, one encoding per text) the consumer finishes each batch while the tokenizer
    encodes a later one: no encoding may be freed during a call, nor in the main thread."""
    import threading
    import time

    from rcond.conditioning import ConditionedStream, conditioned_batches

    made, freed = [], []  # per encoding made; per encoding freed: (in the main thread, during a tokenizer call)
    calling = threading.Event()
    main = threading.get_ident()

    class Tracked:  # an encoding that notes where and when it is freed
        def __init__(self, e):
            self.ids = e.ids
            made.append(1)

        def __len__(self):
            return len(self.ids)

        def __del__(self):
            freed.append((threading.get_ident() == main, calling.is_set()))

    class Backend:  # the word tokenizer's backend, slow, returning tracked encodings
        def __init__(self, real):
            self.real, self.encode_special_tokens = real, False

        def __getattr__(self, name):  # truncation, padding and their switches: the real backend's
            return getattr(self.real, name)

        def to_str(self):
            raise Exception("a custom pre-tokenizer cannot be serialised")

        def encode_batch_fast(self, texts, add_special_tokens):
            calling.set()
            try:
                out = [Tracked(e) for e in self.real.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
                time.sleep(0.05)
                return out
            finally:
                calling.clear()

    class Tokenizer:
        backend_tokenizer = Backend(word_tokenizer().backend_tokenizer)

    batches, size = 8, 3
    src = write_jsonl(tmp_path / "s.jsonl", [{"response": f"a b {i % 5}", "reward": float(i)} for i in range(batches * size)])
    stream = ConditionedStream(0, PackOptions(block_size=16, encode_batch=size))
    for _ in conditioned_batches(SourceReader([str(src)], "scored"), Tokenizer(), stream):
        time.sleep(0.03)  # conditioning and packing
    assert len(freed) == len(made) >= batches * size
    assert not any(during for _, during in freed)
    assert not any(in_main for in_main, _ in freed)


def part_batch(texts):
    from rcond.sources import PartBatch

    n = len(texts)
    return PartBatch(texts, np.ones(n, bool), np.full(n, np.nan), np.zeros(n, np.int8), np.ones(n, bool), np.zeros(n, bool))


def test_batches_hold_less_input_where_the_encoder_cuts_long_texts(tmp_path, monkeypatch):
    """A build reads batches of about CUT_BATCH_BYTES of input where its encoder cuts long texts,
    of about BATCH_BYTES where it cannot (a Split pre-tokenizer: its documents are its inputs)."""
    import rcond.conditioning
    import rcond.sources
    from tokenizers import pre_tokenizers

    from rcond.conditioning import ConditionedStream, conditioned_batches

    monkeypatch.setattr(rcond.conditioning, "CUT_BATCH_BYTES", 2_000)
    monkeypatch.setattr(rcond.sources, "BATCH_BYTES", 8_000)
    src = write_jsonl(tmp_path / "s.jsonl", [{"response": " ".join(["a b"] * 120) + f" {i}", "reward": float(i)}
                                             for i in range(40)])  # ~750 bytes a line
    cutting, whole = word_tokenizer(), word_tokenizer()
    whole.backend_tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", "removed")
    assert ContentEncoder(cutting.backend_tokenizer).cuts and not ContentEncoder(whole.backend_tokenizer).cuts
    reader = SourceReader([str(src)], "scored")
    records = {}  # per batch, for each tokenizer
    for tok, max_bytes in ((cutting, 2_000), (whole, 8_000)):
        stream = ConditionedStream(0, PackOptions(block_size=64, encode_batch=1000))
        records[max_bytes] = [int(parts.doc_start.sum()) for parts, _, _ in conditioned_batches(reader, tok, stream)]
        assert records[max_bytes] == [int(b.doc_start.sum()) for b in reader.batches(1000, max_bytes=max_bytes)]
    assert records == {2_000: [4] * 10, 8_000: [16, 16, 8]}  # the line that reaches the bound is the batch's last


def test_the_build_encodes_two_batches_at_once():
    """encodings() has a batch's tokenizer call under way while the one before it is still being
    encoded: here the first call does not return until the second has started (it would wait
    for ever, were the calls one at a time)."""
    from rcond.conditioning import IN_FLIGHT, encodings

    assert IN_FLIGHT == 2
    second_started = threading.Event()

    class Overlapping(ContentEncoder):
        def __call__(self, texts):
            if texts == ["b"]:
                second_started.set()
            elif texts == ["a"]:
                assert second_started.wait(10), "the second batch was not sent while the first was encoded"
            return super().__call__(texts)

    tok = word_tokenizer()
    out = [(parts.texts, flat.tolist()) for parts, _, flat in
           encodings([part_batch(["a"]), part_batch(["b"]), part_batch(["c a"])], Overlapping(tok.backend_tokenizer))]
    assert out == [(["a"], [1]), (["b"], [2]), (["c a"], [3, 1])]


def test_what_the_build_sends_is_the_same_on_every_run():
    """encodings() with a cache: a batch is planned while the one before it is encoded, so a text
    that recurs within batch k is kept from batch k+2 on (hand-followed below), whichever thread
    finishes first; every text still gets its own ids, in batch order."""
    from rcond.conditioning import RecurringTexts, encodings

    tok = word_tokenizer()
    batches = [["e f", "a", "e f", "b"], ["e f", "c", "a", "c"], ["a", "c", "e f", "a b"], ["c", "e f", "c"], ["a", "c"]]
    for _ in range(5):
        encoder, cache = Recording(tok.backend_tokenizer), RecurringTexts()
        out = list(encodings([part_batch(t) for t in batches], encoder, cache))
        assert [parts.texts for parts, _, _ in out] == batches
        for (_, offsets, flat), texts in zip(out, batches):
            want = [tok.backend_tokenizer.encode(t, add_special_tokens=False).ids for t in texts]
            assert [flat[offsets[p]:offsets[p + 1]].tolist() for p in range(len(texts))] == want
        # batch 2 planned before batch 1 was done: it sends "e f" and "c" once each; batch 3 knows
        # "e f" (recurred in batch 1); batch 4 knows "c" too (batch 2): no call; batch 5 sends "a"
        assert sorted(encoder.sent) == sorted([["e f", "a", "b"], ["e f", "c", "a"], ["a", "c", "a b"], ["a"]])
        assert list(cache.ids) == ["e f", "c"]


def test_an_encoding_error_comes_in_batch_order_and_a_stopped_build_lets_calls_end():
    """A tokenizer call that fails raises when its batch's turn comes, after the batches before it;
    a consumer that stops early waits for the call under way, so the tokenizer is not left
    mid-call (its settings switched) behind it."""
    from rcond.conditioning import encodings

    calls, ended = [], []

    class Failing(ContentEncoder):
        def __call__(self, texts):
            calls.append(texts)
            if texts == ["boom"]:
                raise RuntimeError("the tokenizer failed")
            if texts == ["slow"]:
                threading.Event().wait(0.3)
            out = super().__call__(texts)
            ended.append(texts)
            return out

    encoder = Failing(word_tokenizer().backend_tokenizer)
    got = encodings([part_batch(["a"]), part_batch(["boom"]), part_batch(["b"])], encoder)
    assert next(got)[0].texts == ["a"]
    with pytest.raises(CorpusError, match="cannot encode the text 'boom': RuntimeError: the tokenizer failed"):
        next(got)
    stopped = encodings([part_batch(["a"]), part_batch(["slow"]), part_batch(["c"])], encoder)
    assert next(stopped)[0].texts == ["a"]
    stopped.close()
    assert ["slow"] in ended


@pytest.mark.parametrize("user, counted", [("a b", True), ("a b c", False)])
def test_an_unconditional_turns_reward_is_cut_with_truncate_where_its_rtg_token_would_be(tmp_path, user, counted):
    """--truncate at 4, a dialog opening with a user turn. Conditioned, [on a b r1 | d eos] keeps its
    RTG token (position 3) and its reward is fitted; [on a b c | r1 d eos] cuts it (position 4).
    Drawn unconditional, [off a b d eos] and [off a b c d eos] hold no RTG token, and their reward
    is kept or cut as the conditioned document's: where the RTG token would sit."""
    from rcond.conditioning import condition, encode_distinct

    turns = [{"role": "user", "content": user}, {"role": "assistant", "content": "d", "reward": 1.5}]
    parts = next(SourceReader([str(write_jsonl(tmp_path / "d.jsonl", [{"turns": turns}]))], "dialog").batches(10))
    offsets, flat = encode_distinct(parts.texts, ContentEncoder(word_tokenizer().backend_tokenizer))
    opts = PackOptions(block_size=4, uncond_fraction=0.5, truncate=True, train_on_prompt=True)
    on = condition(parts, offsets, flat, np.array([0.9]), 0, opts)
    assert on.marker_rtg.tolist() == [1.5] and on.cut_markers.tolist() == ([] if counted else [0])
    off = condition(parts, offsets, flat, np.array([0.1]), 0, opts)
    assert off.pool.on.tolist() == [False] and off.pool.length.tolist() == [4]
    assert (off.off_rewards.tolist(), off.off_cut) == (([1.5], 0) if counted else ([], 1))



def test_a_text_of_exactly_max_tokens_ids_is_kept():
    """The bound is on the ids held: a text of exactly ``max_tokens`` ids fits (evicting the rest)."""
    from rcond.conditioning import RecurringTexts

    cache = RecurringTexts(max_tokens=3)
    cache.keep("x", [1])
    cache.keep("y", [2, 3, 4])
    assert list(cache.ids) == ["y"] and cache.tokens == 3


def test_a_long_text_the_tokenizer_cannot_encode_is_shown_by_its_first_200_characters():
    """The error names the failing text; a long one is shown by its first 200 characters and its
    length, not whole (a book would fill the screen)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from rcond.conditioning import encode_distinct

    backend = Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="[UNK]"))  # unk not in the vocabulary
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    exactly = "a " * 99 + "zz"  # 200 characters: shown whole
    with pytest.raises(CorpusError) as e:
        encode_distinct(["a b", exactly], ContentEncoder(backend))
    assert f"cannot encode the text {exactly!r}: " in str(e.value)
    longer = "a " * 150 + "zz"  # 302 characters
    with pytest.raises(CorpusError) as e:
        encode_distinct(["a b", longer], ContentEncoder(backend))
    assert f"cannot encode the text {'a ' * 100 + '... (302 characters)'!r}: " in str(e.value)


def test_a_draw_equal_to_the_unconditional_fraction_keeps_its_document_on(tmp_path):
    """condition() keeps an ``on`` document ``on`` when its draw is at least uncond_fraction; one
    drawn below it is ``off``: no RTG token, its reward among the unconditional ones (hand-built
    rows: a=1, b=2, c=3, eos=0)."""
    from rcond.conditioning import OFF_SLOT, ON_SLOT, RTG_SLOT, condition, encode_distinct

    rows = [{"prompt": "a", "response": "b c", "reward": 1.5}, {"prompt": "a", "response": "b c", "reward": -2.0}]
    parts = next(SourceReader([str(write_jsonl(tmp_path / "s.jsonl", rows))], "scored").batches(10))
    offsets, flat = encode_distinct(parts.texts, ContentEncoder(word_tokenizer().backend_tokenizer))
    c = condition(parts, offsets, flat, np.array([0.25, np.nextafter(0.25, 0)]), 0,
                  PackOptions(block_size=16, uncond_fraction=0.25))
    pool = c.pool
    assert pool.on.tolist() == [True, False]
    assert pool.ids.tolist() == [ON_SLOT, RTG_SLOT, 1, 2, 3, 0, OFF_SLOT, 1, 2, 3, 0]
    assert pool.lw.tolist() == [0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0]
    assert pool.marker.tolist() == [0] * 6 + [-1] * 5
    assert pool.start.tolist() == [0, 6] and pool.length.tolist() == [6, 5]
    assert c.marker_rtg.tolist() == [1.5] and c.off_rewards.tolist() == [-2.0]


def test_bins_above_127_resolve_to_their_own_rtg_token(tmp_path):
    """Up to MAX_BINS (1024) bins: a marker's bin and its RTG token's id are not wrapped through a
    narrow integer type (here bin 150 of 200)."""
    from rcond.conditioning import ConditionedStream, encode_distinct
    from rcond.tokens import ControlScheme

    rows = [{"prompt": "a", "response": "b", "reward": r} for r in (0.5, 150.5, 199.5)]
    parts = next(SourceReader([str(write_jsonl(tmp_path / "s.jsonl", rows))], "scored").batches(10))
    tok = word_tokenizer()
    scheme = ControlScheme(num_bins=200, edges=[float(k) for k in range(1, 200)])
    scheme.add_to_tokenizer(tok)
    stream = ConditionedStream(tok.eos_token_id, PackOptions(block_size=16, uncond_fraction=0.0))
    pool = stream.pool(parts, *encode_distinct(parts.texts, ContentEncoder(tok.backend_tokenizer)))
    stream.use_tokens(scheme, tok)
    stream.bind(scheme)
    rows = stream.resolve({"input_ids": pool.ids.copy(), "marker": pool.marker, "position_ids": None,
                           "segment_ids": None, "loss_weight": pool.lw})
    rtg = scheme.rtg_ids(tok)
    assert rows["bin_ids"].tolist() == [0] * 5 + [150] * 5 + [199] * 5
    assert rows["input_ids"][[1, 6, 11]].tolist() == [rtg[0], rtg[150], rtg[199]]
    assert stream.bin_counts[[0, 150, 199]].tolist() == [1, 1, 1] and stream.bin_counts.sum() == 3


def test_unconditional_rewards_cut_away_are_counted_over_every_batch(tmp_path):
    """fit_rewards' count of rewards left out adds up the batches: [off a a a a | a b eos], drawn
    unconditional and truncated to nothing trained, once in each of two batches (+ one kept)."""
    from rcond.conditioning import ConditionedStream, encode_distinct

    rows = [{"prompt": "a a a a a", "response": "b", "reward": 7.0}, {"prompt": "c", "response": "d", "reward": 2.0}]
    parts = next(SourceReader([str(write_jsonl(tmp_path / "s.jsonl", rows))], "scored").batches(10))
    offsets, flat = encode_distinct(parts.texts, ContentEncoder(word_tokenizer().backend_tokenizer))
    stream = ConditionedStream(0, PackOptions(block_size=5, uncond_fraction=1.0, truncate=True))
    for _ in range(2):
        stream.pool(parts, offsets, flat)
    rewards, left_out = stream.fit_rewards()
    assert rewards.tolist() == [2.0, 2.0] and left_out == 2


def test_a_split_documents_pieces_stay_in_document_order(tmp_path):
    """A document longer than block_size is split with ``mode rtg`` re-opening each later piece;
    the pool's pieces stay in document order (its first piece, then the later ones, then the next
    document's), whatever place their tokens take in the columns. Hand-built (a=1 ... g=7, eos=0,
    block_size 5): [on rtg a b c] [on rtg d e f] [on rtg g eos], then [on rtg a b eos]."""
    from rcond.conditioning import ON_SLOT, RTG_SLOT, condition, encode_distinct

    rows = [{"prompt": "a", "response": "b c d e f g", "reward": 1.0}, {"prompt": "a", "response": "b", "reward": 2.0}]
    parts = next(SourceReader([str(write_jsonl(tmp_path / "s.jsonl", rows))], "scored").batches(10))
    offsets, flat = encode_distinct(parts.texts, ContentEncoder(word_tokenizer().backend_tokenizer))
    c = condition(parts, offsets, flat, np.ones(2), 0, PackOptions(block_size=5, uncond_fraction=0.0))
    pool = c.pool
    pieces = [pool.ids[s:s + n].tolist() for s, n in zip(pool.start.tolist(), pool.length.tolist())]
    assert pieces == [[ON_SLOT, RTG_SLOT, 1, 2, 3], [ON_SLOT, RTG_SLOT, 4, 5, 6], [ON_SLOT, RTG_SLOT, 7, 0],
                      [ON_SLOT, RTG_SLOT, 1, 2, 0]]
    weights = [pool.lw[s:s + n].tolist() for s, n in zip(pool.start.tolist(), pool.length.tolist())]
    assert weights == [[0, 0, 1, 1, 0], [0, 1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1, 0]]
    assert [pool.marker[s:s + n].tolist() for s, n in zip(pool.start.tolist(), pool.length.tolist())] == \
        [[0] * 5, [0] * 5, [0] * 4, [1] * 5]


def test_when_every_marker_is_left_out_only_scored_ones_are_fitted(tmp_path):
    """fit_rewards' fallback (no marker's RTG token in the rows, no unconditional reward): every
    *scored* marker is fitted, never an unscored pair's side (reward NaN, fixed top / bottom bin).
    Hand-built: each side [on rtg a a | a b eos] truncated at block_size 4 trains nothing."""
    from rcond.conditioning import ConditionedStream, encode_distinct

    rows = [{"prompt": "a a a", "chosen": "b", "rejected": "c"},
            {"prompt": "a a a", "chosen": "b", "rejected": "c", "chosen_score": 3.0, "rejected_score": -1.0}]
    parts = next(SourceReader([str(write_jsonl(tmp_path / "p.jsonl", rows))], "pairs").batches(10))
    offsets, flat = encode_distinct(parts.texts, ContentEncoder(word_tokenizer().backend_tokenizer))
    stream = ConditionedStream(0, PackOptions(block_size=4, uncond_fraction=0.0, truncate=True))
    pool = stream.pool(parts, offsets, flat)
    assert len(pool.length) == 0 and stream.untrained_pieces == 4
    rewards, left_out = stream.fit_rewards()
    assert rewards.tolist() == [3.0, -1.0] and left_out == 0
