"""rcond.conditioning: encoding each distinct text once, the cache of recurring texts, and the corpus-wide marker limit."""

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
    from rcond.sources import PartBatch

    def batch(texts):
        n = len(texts)
        return PartBatch(texts, np.ones(n, bool), np.full(n, np.nan), np.zeros(n, np.int8), np.ones(n, bool),
                         np.zeros(n, bool))

    tok = word_tokenizer()
    texts = ["a b c", "d", "a b c", "e f", "d", "a b c", "g h i j"]
    encoder = Recording(tok.backend_tokenizer)
    offsets, flat = encode_distinct(texts, encoder)
    assert encoder.sent == [["a b c", "d", "e f", "g h i j"]]
    want = [tok.backend_tokenizer.encode(t, add_special_tokens=False).ids for t in texts]  # one call per text
    assert [flat[offsets[p]:offsets[p + 1]].tolist() for p in range(len(texts))] == want
    assert offsets.tolist() == np.cumsum([0] + [len(w) for w in want]).tolist()
    (_, offsets, flat), = encodings([batch(["b a", "c"])], tok)  # all distinct, through the build's path
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
    stream = ConditionedStream(0, PackOptions(block_size=16))
    for _ in conditioned_batches(SourceReader([str(src)], "scored").batches(size), Tokenizer(), stream):
        time.sleep(0.03)  # conditioning and packing
    assert len(freed) == len(made) >= batches * size
    assert not any(during for _, during in freed)
    assert not any(in_main for in_main, _ in freed)
