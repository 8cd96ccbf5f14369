"""rcond.content_encoder: texts joined into runs get exactly the ids each text gets alone, on
tokenizers of every common kind; where that would not hold, the encoder goes text by text."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from conftest import word_tokenizer
from rcond import content_encoder
from rcond.content_encoder import SEPARATOR, ContentEncoder, checked_sample, cut_texts, cuttable, ids_of, piecewise

CORPUS = ["The battery lasts all week, honestly.", "  Leading spaces and trailing ones  ", "Ünïcödé façade — naïve café",
          "日本語のテキストも少し", "numbers 12345 and 3.14159", "tabs\tand\nnewlines\n\n", "<|rtg:1|> typed by a user </s>",
          "a", "", " ", "emoji 🙂🙃 and CAPITALS", "don't can't won't", "x" * 300]


def texts():
    """Short and long, empty and blank, non-ASCII, special-token strings, in an order that puts
    each kind first in a run and last in one."""
    rng = np.random.default_rng(0)
    return [CORPUS[i] for i in rng.integers(0, len(CORPUS), size=400)] + CORPUS


def trained(model, trainer, normalizer, pre_tokenizer, decoder=None):
    tok = Tokenizer(model)
    tok.normalizer = normalizer
    if pre_tokenizer is not None:
        tok.pre_tokenizer = pre_tokenizer
    if decoder is not None:
        tok.decoder = decoder
    tok.train_from_iterator(CORPUS * 3, trainer)
    tok.add_special_tokens(["</s>", "<|rtg:1|>"])
    return tok


def byte_level_bpe(normalizer=None, prefix_space=False):  # GPT-2 style
    return trained(models.BPE(), trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
                   normalizer, pre_tokenizers.ByteLevel(add_prefix_space=prefix_space), decoders.ByteLevel())


def bert_wordpiece():  # BERT style: normaliser that lowercases and strips accents, punctuation split
    return trained(models.WordPiece(unk_token="[UNK]"),
                   trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]"], show_progress=False),
                   normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer())


def metaspace_unigram(scheme, normalizer=None):  # SentencePiece style; by default NFKC and double spaces made single
    normalizer = normalizer or normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("  ", " ")])
    tok = trained(models.Unigram(), trainers.UnigramTrainer(vocab_size=120, unk_token="<unk>", special_tokens=["<unk>"],
                                                            show_progress=False),
                  normalizer, pre_tokenizers.Metaspace(prepend_scheme=scheme))
    # as a user's tokenizer is, read from its JSON: scores fresh from training do not always come
    # back the same from JSON (in ~5% of trainings here), and the encoder then rightly keeps no copy
    return Tokenizer.from_str(tok.to_str())


def metaspace_bpe(scheme):  # Llama style: a BPE over ▁-joined words, prefix per scheme
    return trained(models.BPE(unk_token="<unk>"), trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"],
                                                                       show_progress=False),
                   normalizers.Strip(), pre_tokenizers.Metaspace(prepend_scheme=scheme, split=False))


def prepend_bpe():  # Llama-2 style: the ▁ prefix and spaces made by the normaliser, no pre-tokeniser
    return trained(models.BPE(unk_token="<unk>", byte_fallback=True),
                   trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], show_progress=False),
                   normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]), None)


def alone(backend, batch):
    """The reference: each text encoded by itself, special-token strings as text."""
    backend.encode_special_tokens = True
    try:
        return [backend.encode(t, add_special_tokens=False).ids for t in batch]
    finally:
        backend.encode_special_tokens = False


def split(offsets, flat):
    return [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


TOKENIZERS = {"byte-level BPE": byte_level_bpe, "BERT WordPiece": bert_wordpiece,
              "Unigram, Metaspace always": lambda: metaspace_unigram("always"),
              "BPE, Metaspace never": lambda: metaspace_bpe("never"),
              "BPE, Prepend normaliser": prepend_bpe,
              "word level": lambda: word_tokenizer().backend_tokenizer}


@pytest.mark.parametrize("name", TOKENIZERS)
def test_runs_give_each_text_its_own_ids(name, monkeypatch):
    backend = TOKENIZERS[name]()
    monkeypatch.setattr(content_encoder, "RUN_CHARS", 64)  # many runs, a text longer than one by itself
    encoder = ContentEncoder(backend)
    batch = texts()
    offsets, flat = encoder(batch)
    assert encoder.joined is not None, "this tokenizer should take the joined path"
    assert split(offsets, flat) == alone(backend, batch)
    assert flat.dtype == np.int32 and offsets[0] == 0 and offsets[-1] == len(flat)
    assert split(*encoder(batch[::-1])) == alone(backend, batch[::-1])  # a second call, after the check


def test_runs_of_the_default_size_on_a_batch_of_the_builds_size():
    backend = byte_level_bpe()
    batch = texts() * 3
    assert split(*ContentEncoder(backend)(batch)) == alone(backend, batch)


def test_metaspace_prepending_only_at_the_start_is_encoded_text_by_text():
    """Llama and Mistral tokenizers prepend ▁ only to the piece at offset 0 of the input: joined,
    every text but a run's first would lose it. Such a tokenizer is never joined, and gets its
    per-text ids."""
    backend = metaspace_bpe("first")
    joined = Tokenizer.from_str(backend.to_str())
    joined.add_tokens([SEPARATOR])
    two = joined.encode("hello" + SEPARATOR + "hello", add_special_tokens=False).ids
    assert two[:len(two) // 2] != two[len(two) // 2 + 1:]  # the reason: the second "hello" has no ▁
    encoder = ContentEncoder(backend)
    assert encoder.joined is None
    assert split(*encoder(texts())) == alone(backend, texts())


def test_the_first_call_check_catches_a_tokenizer_the_list_lets_through(monkeypatch):
    """Were the list of piecewise components wrong (here: it lets the Metaspace 'first' tokenizer
    through), the first joined call disagrees with its texts encoded one by one, and the encoder
    goes text by text, that call included."""
    monkeypatch.setattr(content_encoder, "piecewise", lambda state: True)
    backend = metaspace_bpe("first")
    encoder = ContentEncoder(backend)
    assert encoder.joined is not None
    batch = texts()
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined is None


def test_the_check_samples_texts_within_a_character_budget():
    """Hand-counted: the first texts in order that keep the sample within 64 texts and 65,536
    characters, a longer one passed over; none when none fits (the check then takes the first
    text's opening characters)."""
    assert content_encoder.CHECKED_TEXTS == 64 and content_encoder.CHECKED_CHARS == 65536
    assert checked_sample(["ab"] * 100) == list(range(64))
    assert checked_sample(["x" * 200_000, "a" * 10, "b" * 10]) == [1, 2]
    assert checked_sample(["x" * 200_000, "y" * 300_000]) == []
    assert checked_sample(["x" * 65_537]) == []
    assert checked_sample(["a" * 40_000, "b" * 40_000, "c" * 25_536, "d"]) == [0, 2]  # 65,536 exactly, then full
    assert checked_sample(["a" * 65_536, "b"]) == [0]


def test_the_check_of_a_batch_of_long_documents_encodes_the_first_ones_opening_characters(monkeypatch):
    """The check costs a second encoding of its texts: for a batch of long documents, none of them
    whole, but the first one's first 65,536 characters, encoded one by one and in runs, cut."""
    backend = byte_level_bpe()
    seen = []
    real = ContentEncoder._per_text
    monkeypatch.setattr(ContentEncoder, "_per_text", lambda self, texts: seen.append(texts) or real(self, texts))
    encoder = ContentEncoder(backend)
    assert encoder.cuts
    batch = [("The battery lasts all week, honestly. " * 2000)[i:] for i in range(5)]  # ~76k characters each
    assert split(*encoder(batch)) == alone(backend, batch)
    assert seen == [[batch[0][:65_536]]] and encoder.joined is not None


def test_the_check_of_long_documents_catches_cuts_that_change_the_ids(monkeypatch):
    """Were a tokenizer wrongly held cuttable (here a byte-level BPE without the GPT-2 split
    pattern, whose merges may cross a space), a batch of documents too long for the sample is
    still checked, on the first one's opening characters, and goes text by text."""
    backend = trained(models.BPE(), trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
                      None, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), decoders.ByteLevel())
    assert not cuttable(json.loads(backend.to_str()))
    monkeypatch.setattr(content_encoder, "cuttable", lambda state: True)
    batch = [("The battery lasts all week, honestly. " * 2000)[i:] for i in range(3)]  # ~76k characters each
    head = [batch[0][:65_536]]
    probe = ContentEncoder(backend)
    assert probe.cuts and split(*probe._in_runs(probe.joined, head)) != alone(backend, head)  # the cuts do change it
    encoder = ContentEncoder(backend)
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined is None


def test_the_check_still_sees_joined_short_texts_after_a_long_one(monkeypatch):
    """A long first text is passed over, not the end of the sample: the short texts after it, joined
    several to a run, are checked, and a tokenizer the list wrongly lets through is caught."""
    monkeypatch.setattr(content_encoder, "piecewise", lambda state: True)
    backend = metaspace_bpe("first")
    encoder = ContentEncoder(backend)
    batch = ["naive cafe " * 7000] + texts()
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined is None


def test_a_text_holding_the_separator_sends_its_batch_text_by_text():
    backend = byte_level_bpe()
    encoder = ContentEncoder(backend)
    encoder(["warm up the check"])
    batch = ["before", f"a {SEPARATOR} inside", "after"]
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined is not None  # only that batch: later ones are joined again


def test_the_check_waits_for_the_first_joined_call(monkeypatch):
    """A first batch sent text by text (it holds the separator) is not the check: the next batch,
    joined, is; with a tokenizer the check rejects, that batch gets its per-text ids too."""
    monkeypatch.setattr(content_encoder, "piecewise", lambda state: True)
    backend = metaspace_bpe("first")
    encoder = ContentEncoder(backend)
    first = ["hello", f"a {SEPARATOR} inside"]
    assert split(*encoder(first)) == alone(backend, first)
    assert encoder.joined is not None and encoder._unchecked
    batch = texts()
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined is None


def unigram_of_python_floats():  # scores its JSON gives back a unit in the last place away
    return Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -3.5684621702802533), ("aa", -6.8993620384915015),
                                     ("aaa", -9.284521101038655)], unk_id=0))


def special_added_again_as_ordinary():  # written as ordinary, still read as special in memory
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2, "<x>": 3}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<x>"])
    tok.add_tokens([AddedToken("<x>", special=False)])
    return tok


def added_before_training():  # the added token's id 0 is given again to a learnt token
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_tokens(["<x>"])
    tok.train_from_iterator(["hello world foo bar"] * 50, trainers.BpeTrainer(vocab_size=40, show_progress=False))
    return tok


@pytest.mark.parametrize("make, odd", [(unigram_of_python_floats, "a" * 10), (special_added_again_as_ordinary,
                                       "hello<x>world"), (added_before_training, "a <x> b")])
def test_a_copy_that_encodes_otherwise_than_the_tokenizer_is_not_used(make, odd):
    """The copy is made from the tokenizer's JSON, which does not always hold what the tokenizer in
    memory holds. Here the copy encodes one text otherwise; the first 64 texts agree, so the
    first-call check alone would keep the joined path, and that text would get other ids."""
    backend = make()
    copy = Tokenizer.from_str(backend.to_str())
    copy.encode_special_tokens = True
    assert copy.encode(odd, add_special_tokens=False).ids != alone(backend, [odd])[0]  # the reason
    encoder = ContentEncoder(backend)
    assert encoder.joined is None
    batch = ["hello world"] * 64 + [odd]
    assert split(*encoder(batch)) == alone(backend, batch)


def test_the_last_copy_is_kept_for_a_tokenizer_with_the_same_json_and_probed_again(monkeypatch):
    """Encoders of one tokenizer share one joined copy (each new copy that encoded kept ~8.5 MB
    after it was dropped: a process building corpus after corpus grew by that much a build), its
    settings never switched again (other threads may be encoding with it); a tokenizer with other
    JSON gets its own; one with the same JSON whose added tokens encode otherwise in memory gets none."""
    backend = byte_level_bpe()
    first = ContentEncoder(backend)
    switched = []
    real = content_encoder.content_as_is
    monkeypatch.setattr(content_encoder, "content_as_is", lambda t: switched.append(t) or real(t))
    second = ContentEncoder(backend)
    assert first.joined is not None and second.joined is first.joined and second.sep_id == first.sep_id
    assert all(t is not first.joined for t in switched)
    batch = texts()
    assert split(*second(batch)) == alone(backend, batch)
    other = byte_level_bpe(prefix_space=True)
    assert ContentEncoder(other).joined is not first.joined and split(*ContentEncoder(other)(batch)) == alone(other, batch)
    odd = special_added_again_as_ordinary()
    clean = Tokenizer.from_str(odd.to_str())
    assert clean.to_str() == odd.to_str() and ContentEncoder(clean).joined is not None  # made and kept
    encoder = ContentEncoder(odd)
    assert encoder.joined is None
    batch = ["hello world"] * 64 + ["hello<x>world"]
    assert split(*encoder(batch)) == alone(odd, batch)


def test_a_copy_that_cannot_be_read_back_or_a_separator_id_the_model_gives_is_text_by_text():
    """A score of -inf is written as null, which the JSON reader refuses: no copy, and no crash. A
    vocabulary with a gap gives the separator an id the model already gives a token."""
    no_copy = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", float("-inf"))], unk_id=0))
    gap = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 3}, unk_token="[UNK]"))
    gap.pre_tokenizer = pre_tokenizers.Whitespace()
    for backend, batch in ((no_copy, ["ab", "ba", "a"] * 30), (gap, ["a b", "b", "a"] * 30)):
        encoder = ContentEncoder(backend)
        assert encoder.joined is None
        assert split(*encoder(batch)) == alone(backend, batch)


def test_a_tokenizer_that_cannot_be_copied_is_encoded_text_by_text():
    class Shout:  # a custom (Python) pre-tokenizer: the tokenizer cannot be serialised
        def pre_tokenize(self, pretok):
            pretok.split(lambda i, s: s.split(" ", "removed"))

    backend = word_tokenizer().backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.PreTokenizer.custom(Shout())
    encoder = ContentEncoder(backend)
    assert encoder.joined is None
    assert split(*encoder(["a b", "c d e", ""])) == [[1, 2], [3, 4, 5], []]


def test_the_component_list():
    assert piecewise({"normalizer": None, "pre_tokenizer": None, "model": {"type": "BPE"}})
    sequence = {"type": "Sequence", "pretokenizers": [{"type": "Digits"}, {"type": "Metaspace", "prepend_scheme": "first"}]}
    assert not piecewise({"pre_tokenizer": sequence, "model": {"type": "BPE"}})
    assert not piecewise({"normalizer": {"type": "SomethingNew"}, "model": {"type": "BPE"}})
    assert piecewise({"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]},
                      "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "always"}, "model": {"type": "Unigram"}})
    assert not piecewise({"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "SomethingNew"}]},
                          "model": {"type": "BPE"}})  # a member of a Sequence is looked at too


@pytest.mark.parametrize("name", ["byte-level BPE", "word level"])
@pytest.mark.parametrize("copyable", [True, False])
def test_truncation_and_padding_are_not_applied_and_are_left_as_they_were(name, copyable, monkeypatch):
    backend = TOKENIZERS[name]()
    batch = texts()[:50]
    want = alone(backend, batch)
    backend.enable_truncation(max_length=2)
    backend.enable_padding(pad_id=0, pad_token="</s>", length=40)
    if not copyable:
        monkeypatch.setattr(content_encoder, "piecewise", lambda state: False)
    encoder = ContentEncoder(backend)
    assert (encoder.joined is not None) == copyable
    assert split(*encoder(batch)) == want
    assert backend.truncation["max_length"] == 2 and backend.padding["length"] == 40
    assert backend.encode_special_tokens is False


def test_no_texts():
    offsets, flat = ContentEncoder(byte_level_bpe())([])
    assert offsets.tolist() == [0] and flat.tolist() == []


@pytest.mark.parametrize("copyable", [True, False])
def test_calls_from_several_threads_each_get_their_own_ids(copyable, monkeypatch):
    """The build encodes two batches at once: calls side by side (the first one and its check
    among them) give every text its own ids, on the joined path and text by text, and the
    backend's settings are as they were after."""
    backend = byte_level_bpe()
    batches = [texts()[i::5] for i in range(5)] * 4
    want = [alone(backend, b) for b in batches]
    backend.enable_truncation(max_length=2)
    if not copyable:
        monkeypatch.setattr(content_encoder, "piecewise", lambda state: False)
    encoder = ContentEncoder(backend)
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: split(*encoder(b)), batches))
    assert got == want
    assert (encoder.joined is not None) == copyable
    assert backend.truncation["max_length"] == 2 and backend.encode_special_tokens is False


def test_calls_that_wait_for_the_first_ones_check_follow_its_verdict(monkeypatch):
    """With a tokenizer the first-call check rejects (the list wrongly lets Metaspace 'first'
    through), calls made from other threads while that check runs are not joined either."""
    monkeypatch.setattr(content_encoder, "piecewise", lambda state: True)
    backend = metaspace_bpe("first")
    encoder = ContentEncoder(backend)
    batches = [texts()[i::3] for i in range(3)] * 4
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda b: split(*encoder(b)), batches))
    assert got == [alone(backend, b) for b in batches]
    assert encoder.joined is None


def test_cut_points_by_hand(monkeypatch):
    """Before a lone space between ASCII letters or digits, at least CUT_CHARS into what is left and
    with at least half that left after; not at a double space, beside punctuation, nor near the end."""
    monkeypatch.setattr(content_encoder, "CUT_CHARS", 4)
    assert cut_texts(["abcd efgh ijkl mnop"]) == (["abcd efgh", " ijkl", " mnop"], [3])
    assert cut_texts(["ab", "abcd, efgh  ijkl mn", "a b"]) == (["ab", "abcd, efgh  ijkl mn", "a b"], [1, 1, 1])
    assert cut_texts(["x" * 9 + " 12345678"]) == (["x" * 9, " 12345678"], [2])
    assert cut_texts(["abcde .fgh ijklm", "abcde éfgh ijklm"]) == (["abcde .fgh", " ijklm", "abcde éfgh", " ijklm"], [2, 2])


def split_then_byte_level(pattern):  # Llama 3 / Qwen 2 style: a Split of their own pattern, then bytes
    return trained(models.BPE(), trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
                   None, pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), "isolated"),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
                   decoders.ByteLevel())


LLAMA3_SPLIT, QWEN2_SPLIT = sorted(content_encoder.CUTTABLE_SPLITS, key=lambda p: "{1,3}" not in p)  # digits 3 / 1 a match
CUTTABLE = {"Llama 3 split": lambda: split_then_byte_level(LLAMA3_SPLIT),
            "Qwen 2 split": lambda: split_then_byte_level(QWEN2_SPLIT),
            "byte-level BPE": byte_level_bpe,
            "byte-level BPE, prefix space, NFKC and lowercase": lambda: byte_level_bpe(
                normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()]), prefix_space=True),
            "BERT WordPiece": bert_wordpiece, "word level": lambda: word_tokenizer().backend_tokenizer,
            # a normaliser that keeps spaces as they are (the default's Replace is not cuttable)
            "Unigram, Metaspace always": lambda: metaspace_unigram("always", normalizers.NFKC()),
            "Unigram, Metaspace never": lambda: metaspace_unigram("never", normalizers.NFKC())}


def long_texts():
    """Long texts of words, digits, punctuation, runs of spaces, tabs and newlines, non-ASCII
    letters, marks and spaces: every kind of character on either side of a cut point, and as
    the first character after one."""
    rng = np.random.default_rng(1)
    words = ["battery", "Week", "7", "2024", "a", "don't", "naïve", "日本語", "¨", "ſ", "--", ".", "(x)", "é", "\u00a0",
             "  ", "\t", "\n", " \n ", "<|rtg:1|>", "</s>", "🙂", "A1b2", "x" * 40]
    return ["".join(str(w) + (" " if rng.random() < 0.7 else "") for w in rng.choice(words, size=int(n)))
            for n in rng.integers(1, 400, size=60)]


@pytest.mark.parametrize("name", CUTTABLE)
def test_long_texts_cut_into_inputs_get_each_text_its_own_ids(name, monkeypatch):
    backend = CUTTABLE[name]()
    monkeypatch.setattr(content_encoder, "CUT_CHARS", 16)  # cuts every few words
    monkeypatch.setattr(content_encoder, "RUN_CHARS", 64)
    encoder = ContentEncoder(backend)
    assert encoder.joined is not None and encoder.cuts, "this tokenizer should have its long texts cut"
    batch = long_texts() + texts()
    pieces, _ = cut_texts(batch)
    assert len(pieces) > 2 * len(batch)  # many cuts
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined is not None  # the first call's check agreed: the ids came from the cut inputs
    assert split(*encoder(batch[::-1])) == alone(backend, batch[::-1])  # a second call, after the check


def test_the_components_that_allow_cuts():
    bpe = {"type": "BPE"}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert cuttable({"normalizer": None, "pre_tokenizer": byte_level, "model": bpe})
    assert cuttable({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        {**byte_level, "use_regex": False}]}, "model": bpe})
    assert cuttable({"normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
                     "pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "never", "split": True}, "model": bpe,
                     "added_tokens": [{"content": "</s>", "special": True}]})
    refused = [{"pre_tokenizer": {**byte_level, "use_regex": False}},  # no split at all: merges may cross spaces
               {"pre_tokenizer": {"type": "Split", "pattern": {"Regex": " "}, "behavior": "Isolated"}},
               {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [byte_level]}},
               {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [  # a listed pattern, matches not isolated
                   {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "MergedWithNext", "invert": False},
                   byte_level]}},
               {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [  # a listed pattern, its matches inverted
                   {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": True},
                   byte_level]}},
               {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [  # a listed split, then not ByteLevel
                   {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
                   {"type": "Metaspace", "prepend_scheme": "always", "split": True}]}},
               {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [  # a listed split and ByteLevel, then more
                   {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
                   {**byte_level, "use_regex": False}, {"type": "Digits", "individual_digits": True}]}},
               {"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "always", "split": False}},
               {"pre_tokenizer": {"type": "Metaspace", "prepend_scheme": "first", "split": True}},
               {"pre_tokenizer": {"type": "Digits"}}, {"pre_tokenizer": None},
               {"pre_tokenizer": byte_level, "added_tokens": [{"content": "week", "special": False}]}]
    refused += [{"pre_tokenizer": byte_level, "normalizer": normalizer}
                for kind in ("Replace", "Prepend", "Strip", "Precompiled", "ByteLevel")
                for normalizer in ({"type": kind}, {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": kind}]})]
    for state in refused:
        assert not cuttable({"model": bpe, **state}), state


def test_a_split_pattern_not_listed_is_not_cut():
    """A Split whose matches take the spaces after a word: cut before a space, that space would be
    a match of its own. Such a tokenizer's texts are joined but not cut, and keep their ids."""
    backend = split_then_byte_level(r"\S+\s*")
    text = "The battery lasts all week honestly"
    cuts = [m.start() + 1 for m in content_encoder.CUT_AT.finditer(text)]
    assert any(alone(backend, [text])[0] != alone(backend, [text[:c]])[0] + alone(backend, [text[c:]])[0]
               for c in cuts)  # the reason
    encoder = ContentEncoder(backend)
    assert encoder.joined is not None and not encoder.cuts
    batch = [(text + " ") * 200] + long_texts()
    assert split(*encoder(batch)) == alone(backend, batch)


def test_an_ordinary_added_token_stops_the_cuts():
    """An ordinary added token with rstrip takes the space after it: cut after the token, that space
    would start the next input and be encoded as a space of its own. Such a tokenizer's texts are
    joined but not cut, and keep their ids."""
    backend = byte_level_bpe()
    backend.add_tokens([AddedToken("week", rstrip=True)])
    text = "lasts all week honestly"
    cut = text.index(" honestly")
    assert alone(backend, [text])[0] != alone(backend, [text[:cut]])[0] + alone(backend, [text[cut:]])[0]  # the reason
    encoder = ContentEncoder(backend)
    assert encoder.joined is not None and not encoder.cuts
    batch = [(text + " ") * 200] + texts()
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined is not None


FUZZ_ATOMS = ["a", "Z", "7", "42", "word", "Don't", "it's", "I'LL", " ", " ", " ", "  ", "\t", "\n", "\r\n", " \n", "é", "e\u0301",
              "ß", "ſ", "ﬁ", "Å", "中文", "日本", "한국", "🙂", "\u00a0", "\u2002", "\u3000", "¨", "´", "½", "²", "٣", "·", ".", ",",
              "!?", "--", "(", ")", "'", "\"", "’", "<|x|>", "</s>", "\u200b", "\u0301", "ｆｕｌｌ", "Ǆ", "İ", "Σ", "ς", "x" * 30,
              "123456", "1 2", "a1", "_", "@", "#tag"]


@pytest.mark.slow
def test_every_cut_point_keeps_the_ids_on_every_cuttable_configuration():
    """Brute force over the kinds `cuttable` allows (4 models x 11 normalisers x 16 pre-tokenisers,
    each trained on random text): every text cut at every cut point at once gets the ids it gets
    whole, on 100 random texts per tokenizer built from letters, digits, runs of spaces, line
    breaks, marks, compatibility characters and other scripts (~320k cut points; ~1.5 min)."""
    import itertools
    import random

    rng = random.Random(0)

    def text(n):
        return "".join(rng.choice(FUZZ_ATOMS) for _ in range(n))

    corpus = [text(rng.randint(5, 60)) for _ in range(300)]
    model_kinds = [
        lambda: (models.BPE(unk_token="[UNK]"), trainers.BpeTrainer(
            vocab_size=400, special_tokens=["[UNK]"], show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())),
        lambda: (models.WordPiece(unk_token="[UNK]"), trainers.WordPieceTrainer(
            vocab_size=300, special_tokens=["[UNK]"], show_progress=False)),
        lambda: (models.Unigram(), trainers.UnigramTrainer(
            vocab_size=200, unk_token="[UNK]", special_tokens=["[UNK]"], show_progress=False)),
        lambda: (models.WordLevel(unk_token="[UNK]"), trainers.WordLevelTrainer(special_tokens=["[UNK]"], show_progress=False))]
    norms = [None, normalizers.NFC(), normalizers.NFD(), normalizers.NFKC(), normalizers.NFKD(), normalizers.Lowercase(),
             normalizers.StripAccents(), normalizers.Nmt(), normalizers.BertNormalizer(),
             normalizers.BertNormalizer(strip_accents=True, lowercase=False),
             normalizers.Sequence([normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase()])]
    pres = [pre_tokenizers.ByteLevel(add_prefix_space=False), pre_tokenizers.ByteLevel(add_prefix_space=True),
            pre_tokenizers.Whitespace(), pre_tokenizers.WhitespaceSplit(), pre_tokenizers.BertPreTokenizer(),
            pre_tokenizers.Metaspace(prepend_scheme="always"), pre_tokenizers.Metaspace(prepend_scheme="never"),
            pre_tokenizers.Metaspace(replacement="_", prepend_scheme="always")]
    pres += [pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(p), "isolated"),
                                      pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=regex)])
             for p in (LLAMA3_SPLIT, QWEN2_SPLIT) for prefix in (False, True) for regex in (False, True)]
    cut_points = 0
    for make_model, norm, pre in itertools.product(model_kinds, norms, pres):
        model, trainer = make_model()
        backend = Tokenizer(model)
        if norm is not None:
            backend.normalizer = norm
        backend.pre_tokenizer = pre
        backend.train_from_iterator(corpus, trainer)
        backend.add_special_tokens(["</s>", "<|x|>"])
        backend = Tokenizer.from_str(backend.to_str())
        assert cuttable(json.loads(backend.to_str())), (norm, pre)
        for t in (text(rng.randint(20, 400)) for _ in range(100)):
            cuts = [m.start() + 1 for m in content_encoder.CUT_AT.finditer(t)]
            pieces = [t[a:b] for a, b in zip([0] + cuts, cuts + [len(t)])]
            assert sum(alone(backend, pieces), []) == alone(backend, [t])[0], (backend.to_str()[:300], t)
            cut_points += len(cuts)
    assert cut_points > 200_000


def test_a_switch_of_the_settings_waits_for_one_under_way_so_the_real_ones_come_back():
    """Two content_as_is blocks on one tokenizer, the second entered while the first (an encoding
    thread left behind by an interrupted build, in a long call) had the settings switched: the
    second saved the switched settings and put them back after the first had restored the real
    ones, and the tokenizer kept reading special-token strings as text. The second now waits."""
    import threading

    from rcond.content_encoder import content_as_is

    backend = word_tokenizer().backend_tokenizer
    backend.enable_truncation(max_length=8)
    first_in, release, first_done = threading.Event(), threading.Event(), threading.Event()

    def first():
        with content_as_is(backend):
            first_in.set()
            release.wait(5)
        first_done.set()

    def second():
        with content_as_is(backend):
            first_done.wait(5)

    a = threading.Thread(target=first)
    a.start()
    assert first_in.wait(5)
    b = threading.Thread(target=second)
    b.start()
    release.set()
    a.join(10), b.join(10)
    assert not backend.encode_special_tokens and backend.truncation["max_length"] == 8 and backend.padding is None


class CountingInputs:
    """A joined tokenizer that notes the inputs of each call."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def encode_batch_fast(self, inputs, add_special_tokens):
        self.calls.append(list(inputs))
        return self.real.encode_batch_fast(inputs, add_special_tokens=add_special_tokens)


def test_short_texts_are_joined_into_runs_of_about_run_chars():
    """Hand-counted: a text and its separator take 10 + 11 characters; a run holds the texts whose
    running total stays below RUN_CHARS = 2,048 (97 of them), the next run the rest."""
    assert content_encoder.RUN_CHARS == 2048 and len(SEPARATOR) == 11
    backend = byte_level_bpe()
    encoder = ContentEncoder(backend)
    encoder.joined = CountingInputs(encoder.joined)
    batch = [f"text {i:05d}" for i in range(100)]
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined.calls == [[SEPARATOR.join(batch[:97]), SEPARATOR.join(batch[97:])]]


def test_ids_of_a_call_by_hand():
    """Hand-written: a word-level vocabulary's encodings of three texts, one of them empty, read
    into lengths and one flat array, with and without a separator id after each text's ids."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2, "c": 70_000}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    encodings = backend.encode_batch_fast(["a b c", "", "c zz"], add_special_tokens=False)
    lens, flat = ids_of(encodings)
    assert lens.tolist() == [3, 0, 2] and lens.dtype == np.int64
    assert flat.tolist() == [1, 2, 70_000, 70_000, 0] and flat.dtype == np.int32
    lens, flat = ids_of(encodings, 9)
    assert lens.tolist() == [3, 0, 2]
    assert flat.tolist() == [1, 2, 70_000, 9, 9, 70_000, 0, 9]
    lens, flat = ids_of([])
    assert lens.tolist() == [] and flat.tolist() == []


def test_group_starts_by_hand():
    """The items whose running totals have the same quotient by the size are a group."""
    starts = content_encoder.group_starts
    assert starts(np.array([], dtype=np.int64), 10) == [0]
    assert starts(np.array([3, 3, 3, 3]), 10) == [0, 3, 4]           # totals 3 6 9 | 12
    assert starts(np.array([25, 1, 1, 9]), 10) == [0, 3, 4]          # 25 26 27 | 36: 17 past 10, less than 25
    assert starts(np.array([5, 5]), 10) == [0, 1, 2]                 # 5 | 10
    assert starts(np.array([10, 10]), 10) == [0, 1, 2]               # 10 | 20


def test_a_batch_goes_to_the_tokenizer_about_call_chars_a_call(monkeypatch):
    """Hand-counted, one text a run (RUN_CHARS = 1) and CALL_CHARS = 25: runs of 10 characters,
    running totals 10 20 | 30 40 | 50 60 70 | 80 90 | 100, so five calls, each call's encodings
    read before the next; every text gets its own ids."""
    monkeypatch.setattr(content_encoder, "RUN_CHARS", 1)
    monkeypatch.setattr(content_encoder, "CALL_CHARS", 25)
    backend = byte_level_bpe()
    encoder = ContentEncoder(backend)
    encoder.joined = CountingInputs(encoder.joined)
    batch = [f"text {i:05d}" for i in range(10)]
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined.calls == [batch[0:2], batch[2:4], batch[4:7], batch[7:9], batch[9:]]


def test_a_text_of_exactly_twice_cut_chars_is_cut(monkeypatch):
    """Hand-counted, CUT_CHARS = 8: a text of 16 characters is cut before the space at 9 (at least
    8 in, at least 4 left), and its two pieces go to the tokenizer as one joined input."""
    monkeypatch.setattr(content_encoder, "CUT_CHARS", 8)
    text = "abcdefghi jklmno"
    assert cut_texts([text]) == (["abcdefghi", " jklmno"], [2])
    backend = byte_level_bpe()
    encoder = ContentEncoder(backend)
    assert encoder.cuts
    encoder.joined = CountingInputs(encoder.joined)
    assert split(*encoder([text])) == alone(backend, [text])
    assert encoder.joined.calls == [["abcdefghi" + SEPARATOR + " jklmno"]]


def test_a_long_text_with_no_cut_point_goes_whole_beside_short_ones(monkeypatch):
    """CUT_CHARS = 16: a 40-character word is long enough to cut but has no lone space between
    letters, so it stays one piece: the batch is encoded as its texts are, and the word reaches the
    tokenizer whole."""
    monkeypatch.setattr(content_encoder, "CUT_CHARS", 16)
    monkeypatch.setattr(content_encoder, "RUN_CHARS", 64)
    batch = ["x" * 40, "a b", "c d e"]
    assert cut_texts(batch) == (batch, [1, 1, 1])
    backend = byte_level_bpe()
    encoder = ContentEncoder(backend)
    assert encoder.cuts
    encoder.joined = CountingInputs(encoder.joined)
    assert split(*encoder(batch)) == alone(backend, batch)
    assert any("x" * 40 in text for call in encoder.joined.calls for text in call)

@pytest.mark.parametrize("copyable", [True, False])
def test_ids_beyond_16_bits_come_back_whole(copyable, monkeypatch):
    """Vocabularies of 50k-150k tokens are common: such ids are returned as they are, on the
    joined path and text by text."""
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "big": 70_000, "huge": 151_000}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if not copyable:
        monkeypatch.setattr(content_encoder, "piecewise", lambda state: False)
    encoder = ContentEncoder(backend)
    assert (encoder.joined is not None) == copyable
    offsets, flat = encoder(["a big", "huge a", "big"])
    assert split(offsets, flat) == [[1, 70_000], [151_000, 1], [70_000]]
    assert flat.dtype == np.int32


def test_the_check_compares_each_texts_ids_not_only_all_of_them_together(monkeypatch):
    """A joined call that put a text's last id at the start of the next text's ids has all the right
    ids in the right order: the check still sees each text's own, and goes text by text."""
    backend = byte_level_bpe()
    encoder = ContentEncoder(backend)
    real = encoder._in_runs

    def one_id_late(joined, texts):
        offsets, flat = real(joined, texts)
        offsets = offsets.copy()
        offsets[1] -= 1
        return offsets, flat

    monkeypatch.setattr(encoder, "_in_runs", one_id_late)
    batch = ["The battery lasts", "all week"]
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined is None


def test_a_copy_whose_added_token_matches_inside_a_word_is_not_used():
    """An added token is probed alone, between spaces and between other characters: a copy that
    matches "<x>" inside a word where the tokenizer (single_word) does not is refused, though
    the two agree on "<x>" and " <x> "."""
    def with_x(single_word):
        backend = word_tokenizer().backend_tokenizer
        backend.add_tokens([AddedToken("<x>", single_word=single_word)])
        return backend

    backend, inside_words = with_x(True), with_x(False)
    assert alone(backend, ["<x>", " <x> "]) == alone(inside_words, ["<x>", " <x> "])
    assert alone(backend, ["a<x>a"]) != alone(inside_words, ["a<x>a"])  # the reason
    assert content_encoder.faithful_copy(inside_words) is not None
    assert content_encoder.faithful_copy(backend, inside_words.to_str()) is None


def test_a_joined_call_whose_separators_do_not_all_come_back_goes_text_by_text():
    """Were a tokenizer to lose a separator (merge it, drop it), a run's ids could not be cut into
    its texts: the call gets its per-text ids instead, also after the first call's check."""
    backend = byte_level_bpe()
    encoder = ContentEncoder(backend)
    batch = ["The battery", "lasts all", "week"]
    assert split(*encoder(batch)) == alone(backend, batch)  # checked: joined from now on
    encoder.joined = LosingSeparatorsFrom(encoder.joined)
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined.calls == [[" ".join(batch)]]  # the joined call was made


# --- paths a mutation audit of content_encoder.py found untested ---


def test_a_copy_whose_added_token_takes_a_space_beside_it_is_not_used():
    """The probe between spaces: a copy whose "<x>" takes no space beside it, where the tokenizer's
    (lstrip, rstrip) takes the one before or after it, is refused, though the two agree on "<x>"
    alone and inside a word (with byte-level BPE a space is a token of its own)."""
    base = byte_level_bpe()

    def with_x(**strip):
        backend = Tokenizer.from_str(base.to_str())
        backend.add_tokens([AddedToken("<x>", **strip)])
        return backend

    plain = with_x()
    assert content_encoder.faithful_copy(plain) is not None
    for strip in ({"lstrip": True}, {"rstrip": True}):
        backend = with_x(**strip)
        assert alone(backend, ["<x>", "a<x>a"]) == alone(plain, ["<x>", "a<x>a"])
        assert alone(backend, [" <x> "]) != alone(plain, [" <x> "])  # the reason
        assert content_encoder.faithful_copy(backend, plain.to_str()) is None


class LosingSeparatorsFrom(CountingInputs):
    """A joined tokenizer whose calls from the ``first``-th on (counted from 1) lose their separators."""

    def __init__(self, real, first=1):
        super().__init__(real)
        self.first = first

    def encode_batch_fast(self, inputs, add_special_tokens):
        if len(self.calls) + 1 >= self.first:
            inputs = [run.replace(SEPARATOR, " ") for run in inputs]
        return super().encode_batch_fast(inputs, add_special_tokens)


def test_a_first_joined_call_whose_separators_do_not_all_come_back_goes_text_by_text():
    """The first joined call itself loses separators: no ids to check, so that call gets its
    per-text ids and the encoder goes text by text from then on."""
    backend = byte_level_bpe()
    encoder = ContentEncoder(backend)
    losing = encoder.joined = LosingSeparatorsFrom(encoder.joined)
    batch = ["The battery", "lasts all", "week"]
    assert split(*encoder(batch)) == alone(backend, batch)
    assert losing.calls == [[" ".join(batch)]] and encoder.joined is None and not encoder._unchecked
    assert split(*encoder(batch[::-1])) == alone(backend, batch[::-1]) and losing.calls == [[" ".join(batch)]]


def test_cut_inputs_whose_separators_do_not_all_come_back_go_text_by_text(monkeypatch):
    """On the cut path, after the first call's check: a call whose pieces' separators do not all
    come back gets its per-text ids (the encoder stays joined for later calls)."""
    monkeypatch.setattr(content_encoder, "CUT_CHARS", 8)
    backend = byte_level_bpe()
    encoder = ContentEncoder(backend)
    assert encoder.cuts
    assert split(*encoder(["warm up the check"])) == alone(backend, ["warm up the check"])
    losing = encoder.joined = LosingSeparatorsFrom(encoder.joined)
    batch = ["abcdefghi jklmno", "short"]
    assert split(*encoder(batch)) == alone(backend, batch)
    assert losing.calls == [["abcdefghi  jklmno short"]]  # the cut pieces' separators lost too
    assert encoder.joined is losing


def test_the_check_of_long_documents_whose_opening_loses_separators_goes_text_by_text():
    """Book-length documents: the batch's joined call comes back whole, but the check's own joined
    encoding of the first document's opening characters (the tokenizer's second call) loses its
    separators. The check cannot agree: the batch gets its per-text ids, and the encoder goes text
    by text."""
    backend = byte_level_bpe()
    encoder = ContentEncoder(backend)
    losing = encoder.joined = LosingSeparatorsFrom(encoder.joined, first=2)
    batch = [("The battery lasts all week, honestly. " * 1800)[i:] for i in range(2)]  # ~68k characters each
    assert checked_sample(batch) == []
    assert split(*encoder(batch)) == alone(backend, batch)
    assert len(losing.calls) == 2 and encoder.joined is None


def test_a_long_first_text_passed_over_by_the_check_leaves_the_short_ones_checked_and_joined(monkeypatch):
    """The sample skips a first text too long for it: the check compares the ids of the texts it
    sampled (the 64 short ones after it, by their place in the batch), agrees on a tokenizer that
    joins exactly, and the encoder stays joined."""
    backend = byte_level_bpe()
    seen = []
    real = ContentEncoder._per_text
    monkeypatch.setattr(ContentEncoder, "_per_text", lambda self, texts: seen.append(texts) or real(self, texts))
    encoder = ContentEncoder(backend)
    batch = ["The battery lasts all week, honestly. " * 1800] + texts()[:100]
    assert checked_sample(batch) == list(range(1, 65))
    assert split(*encoder(batch)) == alone(backend, batch)
    assert seen == [batch[1:65]] and encoder.joined is not None


def test_calls_waiting_for_a_check_that_rejects_the_tokenizer_go_text_by_text(monkeypatch):
    """A call made while the first joined call is being checked waits for the verdict (it got
    past the tests for a joined call before the verdict came) and, the check rejecting the
    tokenizer (the list wrongly lets Metaspace 'first' through), encodes text by text: it neither
    checks again nor uses the joined copy that is gone. Deterministic: the check waits until the
    second call is at the lock."""
    import threading

    monkeypatch.setattr(content_encoder, "piecewise", lambda state: True)
    backend = metaspace_bpe("first")
    encoder = ContentEncoder(backend)
    assert encoder.joined is not None

    class NotingLock:
        def __init__(self):
            self.lock, self.entered, self.second = threading.Lock(), 0, threading.Event()

        def __enter__(self):
            self.entered += 1
            if self.entered == 2:
                self.second.set()
            self.lock.acquire()

        def __exit__(self, *exc):
            self.lock.release()

    lock = encoder._first_call = NotingLock()
    checking = threading.Event()
    real = encoder._agrees

    def agrees_once_the_second_call_waits(texts, joined):
        checking.set()
        assert lock.second.wait(10), "the second call did not wait for the check"
        return real(texts, joined)

    monkeypatch.setattr(encoder, "_agrees", agrees_once_the_second_call_waits)
    first, second = texts()[::2], texts()[1::2]
    results = {}

    def call(name, batch):
        try:
            results[name] = split(*encoder(batch))
        except Exception as e:  # noted, to fail below
            results[name] = e

    a = threading.Thread(target=call, args=("first", first))
    a.start()
    assert checking.wait(10)
    b = threading.Thread(target=call, args=("second", second))
    b.start()
    a.join(20), b.join(20)
    assert results == {"first": alone(backend, first), "second": alone(backend, second)}
    assert encoder.joined is None and lock.entered == 2


def test_a_tokenizer_whose_texts_may_not_be_cut_gets_them_whole_in_its_runs(monkeypatch):
    """Not cuttable (a Split pattern not listed): a text of twice CUT_CHARS goes to the tokenizer
    whole, one input with the text after it, no separator inside it (hand-written inputs)."""
    monkeypatch.setattr(content_encoder, "CUT_CHARS", 8)
    backend = split_then_byte_level(r"\S+\s*")
    encoder = ContentEncoder(backend)
    assert encoder.joined is not None and not encoder.cuts
    encoder.joined = CountingInputs(encoder.joined)
    batch = ["abcdefghi jklmno", "pq"]
    assert split(*encoder(batch)) == alone(backend, batch)
    assert encoder.joined.calls == [["abcdefghi jklmno" + SEPARATOR + "pq"]]


def test_the_last_cut_point_leaves_the_letter_after_the_space_and_half_cut_chars(monkeypatch):
    """Hand-counted, CUT_CHARS = 4: the search for a cut ends 2 characters before the end, so the
    letter or digit after the cut's space must be followed by at least 2 more. In "abcdefgh ijk"
    (12) the cut before the space at 8 is taken ("ijk": "i" then 2 more); in "abcdefgh ij" (11)
    it is not ("j" alone after "i")."""
    monkeypatch.setattr(content_encoder, "CUT_CHARS", 4)
    assert cut_texts(["abcdefgh ijk"]) == (["abcdefgh", " ijk"], [2])
    assert cut_texts(["abcdefgh ij"]) == (["abcdefgh ij"], [1])


def test_a_separator_id_the_model_gives_is_refused_for_every_encoder_of_that_tokenizer():
    """The copy for a vocabulary with a gap is not kept for the next encoder of the same JSON:
    that one too goes text by text (kept, it would be given again without the id check)."""
    gap = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 3}, unk_token="[UNK]"))
    gap.pre_tokenizer = pre_tokenizers.Whitespace()
    batch = ["a b", "b", "a"] * 30
    for _ in range(2):
        encoder = ContentEncoder(gap)
        assert encoder.joined is None
        assert split(*encoder(batch)) == alone(gap, batch)
