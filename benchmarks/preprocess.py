"""Preprocessing throughput and memory: `rcond preprocess` vs the bare tokenizer.

Compared, on the same machine in one run, on toy-world reviews (``scored`` format) at 1x and 4x,
and on the same reviews with their prompts removed (``no-dup``, also at 1x and 4x). The toy prompts are templated ("Review of
X (backpack):"), so a batch repeats many of them, and rcond encodes a text that recurs within a
batch only once, and keeps its ids for later batches; the ``no-dup`` corpus has no text twice, so
it shows the pipeline without that help. The share of the text that rcond actually sends to the
tokenizer is printed for each.

- **bare**: the texts (prompt and response of every record) already in memory, encoded with the
  tokenizer's own batch call (``backend_tokenizer.encode_batch_fast``, batches of 1,000);
- **bare-paused**: the same loop with Python's cyclic garbage collector paused, as ``build``
  pauses it (:func:`rcond.background.collector_paused`): the fair floor for rcond's own overhead;
- **read+encode**: rcond's reader (JSONL -> part batches, in a background thread as in ``build``)
  feeding the bare loop's batch call, collector paused: what any pipeline from the file to token
  ids pays. rcond over this is the price of conditioning, packing and writing the corpus;
- **rcond**: ``rcond.corpus.build`` from the JSONL file to a finished corpus directory (reading,
  validation, encoding, control tokens, packing, Arrow writing, fingerprints). ``datasets`` and
  the reader's ``rcond.columnar`` are imported before the clock starts: one-off costs (about 0.9 s
  and, compiled from source where no bytecode is cached, 6 ms here), not throughput.

Throughput is content tokens per second (the tokenizer's output, the same count for both). The
jobs run interleaved, each in a fresh process, ``--repeats`` times; the ratio is given best vs
best and as the median of the run-by-run ratios (a shared virtual machine's speed drifts by tens
of percent between runs, so a single pair means little). CPU time is printed too, the median over
runs: for all threads (it drifts less than wall time on a shared machine) and for the main thread
alone. rcond's main thread conditions and packs one batch after another, so its CPU time is a floor
on rcond's wall time however many cores the tokenizer gets.
Peak memory is the peak RSS of a fresh process doing only that job, at 1x and 4x the corpus
size: a streaming pipeline stays flat. Target (DESIGN §9): rcond >= 0.8x bare.

``--workers N`` adds a job, **rcond-wN**: the same build with N worker processes
(:mod:`rcond.parallel`), their start-up included in its time. Its CPU time and peak RSS are the
parent process's only; the workers' are not counted.

    python benchmarks/preprocess.py [--records 20000] [--repeats 5] [--workers N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def clocks() -> tuple[float, float, float]:
    """Wall time, this process's CPU time and the calling thread's CPU time, now."""
    return time.perf_counter(), time.process_time(), time.thread_time()


def timed_since(start: tuple[float, float, float]) -> dict:
    """What a job reports of its time: seconds, cpu (all threads) and main_cpu since ``start``."""
    return dict(zip(("seconds", "cpu", "main_cpu"), (now - then for now, then in zip(clocks(), start))))


def one_off_imports() -> None:
    """What a build imports once per process, imported before a job's clock starts: not
    throughput. ``datasets`` (~0.9 s here, pandas with it) and the reader's ``rcond.columnar``,
    which it imports on first use (~6 ms on the CI machine, which caches no bytecode:
    ``PYTHONDONTWRITEBYTECODE=1`` compiles it from source in every process)."""
    import datasets.arrow_writer  # noqa: F401
    import rcond.columnar  # noqa: F401


def child_bare(input_path: str, tokenizer_dir: str, paused: str = "") -> dict:
    from rcond.background import collector_paused
    from rcond.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    texts = []
    with open(input_path) as f:
        for line in f:
            r = json.loads(line)
            texts.extend([r[k] for k in ("prompt", "response") if k in r])
    encode = tok.backend_tokenizer.encode_batch_fast
    with collector_paused() if paused else contextlib.nullcontext():
        start = clocks()
        tokens = 0
        for i in range(0, len(texts), 1000):
            tokens += sum(len(e.ids) for e in encode(texts[i:i + 1000], add_special_tokens=False))
        return {**timed_since(start), "tokens": tokens}


def child_read_encode(input_path: str, tokenizer_dir: str) -> dict:
    one_off_imports()

    from rcond.background import collector_paused, prefetched
    from rcond.corpus import PackOptions
    from rcond.sources import SourceReader
    from rcond.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    encode = tok.backend_tokenizer.encode_batch_fast
    with collector_paused():
        start = clocks()
        tokens = 0
        for batch in prefetched(SourceReader([input_path], "scored").batches(PackOptions().encode_batch)):
            tokens += sum(len(e.ids) for e in encode(batch.texts, add_special_tokens=False))
        return {**timed_since(start), "tokens": tokens}


def child_rcond(input_path: str, tokenizer_dir: str, out: str, workers: str = "1") -> dict:
    one_off_imports()

    from rcond.corpus import PackOptions, build
    from rcond.tokenizer import load_tokenizer
    from rcond.sources import SourceReader

    tok = load_tokenizer(tokenizer_dir)
    opts = PackOptions(block_size=1024, workers=int(workers))
    start = clocks()
    _, s = build(SourceReader([input_path], "scored"), out, tok, opts=opts, progress=False)
    # content_tokens counts the eos closing each document; the bare encoding has none
    return {**timed_since(start), "tokens": s.content_tokens - s.documents, "rows": s.rows}


def sent_share(path: str, tokenizer_dir: str, fmt: str = "scored", on_error: str = "fail") -> float:
    """The share of a corpus's text (in characters) that rcond's encoder sends to the tokenizer:
    per batch (as ``build`` reads them), the distinct texts not kept from earlier batches
    (:func:`rcond.conditioning.encodings` with a cache, as ``build`` runs it)."""
    from rcond.conditioning import RecurringTexts, batches_for, encodings
    from rcond.content_encoder import ContentEncoder
    from rcond.corpus import PackOptions
    from rcond.tokenizer import load_tokenizer
    from rcond.sources import SourceReader

    class Counting(ContentEncoder):  # the build's encoder, noting how many characters it is asked to encode
        def __init__(self, backend):
            super().__init__(backend)
            self.chars = []  # one entry per call: list.append is safe from the encoding threads

        def __call__(self, texts):
            self.chars.append(sum(map(len, texts)))
            return super().__call__(texts)

    encoder, total = Counting(load_tokenizer(tokenizer_dir).backend_tokenizer), 0
    batches = batches_for(SourceReader([path], fmt, on_error=on_error), encoder, PackOptions().encode_batch)
    for batch, _, _ in encodings(batches, encoder, RecurringTexts()):
        total += sum(map(len, batch.texts))
    return sum(encoder.chars) / total


def run_child(*args: str, module: str = "preprocess") -> dict:
    """``module.<args[0]>(*args[1:])`` (a benchmark module in this folder) in a fresh process: its
    result, with the process's peak RSS added."""
    code = ("import json, resource, sys; sys.path.insert(0, %r); import %s as b; "
            "r = getattr(b, sys.argv[1])(*sys.argv[2:]); "
            "r['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))"
            % (str(Path(__file__).parent), module))
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=20000, help="reviews at 1x (4x is also measured)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per measurement; the best is kept")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=0,
                    help="also time rcond with this many worker processes (rcond.parallel); 0: only in-process")
    a = ap.parse_args()

    from rcond.corpus import PackOptions, train_tokenizer
    from rcond.sources import SourceReader
    from rcond.toyworld import generate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = {}
        for scale in (1, 4):
            paths = generate(tmp / f"world{scale}", seed=scale, n_reviews=a.records * scale, n_dialogs=1, n_text=1,
                             progress=False)
            inputs[f"{scale}x"] = str(paths["reviews"])
        for scale in (1, 4):  # the same reviews without their prompts: no text twice
            inputs[f"{scale}x no-dup"] = str(tmp / f"no_prompts{scale}.jsonl")
            with open(inputs[f"{scale}x"]) as src, open(inputs[f"{scale}x no-dup"], "w") as dst:
                for line in src:
                    r = json.loads(line)
                    del r["prompt"]
                    dst.write(json.dumps(r) + "\n")
        tok = train_tokenizer(SourceReader([inputs["1x"]], "scored").texts(), a.vocab)
        tok.save_pretrained(tmp / "tok")
        encoded_share = {corpus: sent_share(path, str(tmp / "tok")) for corpus, path in inputs.items()}
        results = {}
        jobs = {"bare": ("child_bare",), "bare-paused": ("child_bare", "paused"), "read+encode": ("child_read_encode",),
                "rcond": ("child_rcond",)}
        if a.workers:
            jobs[f"rcond-w{a.workers}"] = ("child_rcond", str(a.workers))
        for corpus, path in inputs.items():
            runs: dict[str, list[dict]] = {kind: [] for kind in jobs}
            for rep in range(a.repeats):  # interleaved, so that a slow spell of the machine hits every job
                for kind, (child, *flags) in jobs.items():
                    extra = [str(tmp / f"out{rep}"), *flags] if child == "child_rcond" else flags
                    runs[kind].append(run_child(child, path, str(tmp / "tok"), *extra))
                    shutil.rmtree(tmp / f"out{rep}", ignore_errors=True)
            for kind, rs in runs.items():
                best = dict(min(rs, key=lambda r: r["seconds"]))
                best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
                best["seconds_all"] = [r["seconds"] for r in rs]
                best["cpu_median"] = statistics.median(r["cpu"] for r in rs)
                best["main_cpu_median"] = statistics.median(r["main_cpu"] for r in rs)
                results[(kind, corpus)] = best

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, best of {a.repeats}")
    print(f"data: toy-world reviews, {a.records:,} records at 1x; byte-level BPE of {a.vocab} tokens")
    print(f"{'corpus':>9} {'job':>12} {'tokens':>12} {'seconds':>8} {'tokens/s':>12} {'peak RSS MB':>12}")
    for corpus in inputs:
        for kind in jobs:
            r = results[(kind, corpus)]
            print(f"{corpus:>9} {kind:>12} {r['tokens']:>12,} {r['seconds']:>8.2f} {r['tokens'] / r['seconds']:>12,.0f} "
                  f"{r['peak_rss_mb']:>12.0f}")
    for corpus in inputs:
        print(f"{corpus}: rcond sends {encoded_share[corpus]:.0%} of the text to the tokenizer (a text repeated "
              f"within a batch of {PackOptions().encode_batch:,} records is encoded once, and kept for later batches)")
        bare = results[("bare", corpus)]
        for kind in (k for k in jobs if k.startswith("rcond")):
            ours = results[(kind, corpus)]
            for base, note in (("bare", "target >= 0.8x"), ("bare-paused", "the bare loop with the collector paused too"),
                               ("read+encode", "what conditioning, packing and writing cost")):
                theirs = results[(base, corpus)]
                assert theirs["tokens"] == ours["tokens"], "both must encode the same texts"
                ratio = theirs["seconds"] / ours["seconds"]  # same tokens: the throughput ratio
                paired = sorted(b / o for b, o in zip(theirs["seconds_all"], ours["seconds_all"]))
                print(f"{corpus}: {kind} / {base} throughput = {ratio:.2f}x best vs best; run by run "
                      f"median {statistics.median(paired):.2f}x (range {paired[0]:.2f}-{paired[-1]:.2f}) ({note})")
            if kind == "rcond":
                print(f"{corpus}: CPU time (median of runs, all threads): rcond {ours['cpu_median']:.2f} s vs bare "
                      f"{bare['cpu_median']:.2f} s = {ours['cpu_median'] / bare['cpu_median']:.2f}x; ", end="")
            else:  # the workers' CPU time is not this process's
                print(f"{corpus}: CPU time (median of runs): ", end="")
            print(f"{kind}'s main thread {ours['main_cpu_median']:.2f} s, bare's {bare['main_cpu_median']:.2f} s "
                  f"(work that does not spread over cores)")
    for corpus in ("", " no-dup"):
        growth = results[("rcond", f"4x{corpus}")]["peak_rss_mb"] / results[("rcond", f"1x{corpus}")]["peak_rss_mb"]
        print(f"rcond peak RSS 4x{corpus} / 1x{corpus} = {growth:.2f} (flat = 1.0; the corpus grew 4x)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("child_"):
        print(json.dumps(globals()[sys.argv[1]](*sys.argv[2:])))
    else:
        main()
