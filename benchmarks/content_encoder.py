"""Encoding texts to id arrays: runs of texts joined by a separator vs one encoding per text.

Compared, on the same texts in one process, interleaved, with Python's collector paused:

- **per text**: the tokenizer's own batch call (``encode_batch_fast``, batches of 1,000 texts, as
  ``rcond preprocess`` sends them) and the flat id array made from the encodings: what
  :class:`rcond.content_encoder.ContentEncoder` does for a tokenizer it cannot join;
- **joined**: ``ContentEncoder`` on the same batches: runs of about ``RUN_CHARS`` characters joined by
  its separator token, one encoding per run, the ids cut at the separators.

Both give the same ids (checked here on every batch). Texts: the toy-world reviews' responses
(no text twice; ~35 tokens each) with a byte-level BPE trained on them, or ``--texts FILE.jsonl``
(a ``--field`` of each line) with ``--tokenizer DIR``. Printed: wall and CPU time of all threads
(median of ``--repeats`` runs each), and the ratio.

    python benchmarks/content_encoder.py [--records 80000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=80000, help="toy-world reviews to generate")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--texts", help="a JSONL file of texts instead of the toy reviews")
    ap.add_argument("--field", default="response", help="the field of --texts holding the text")
    ap.add_argument("--tokenizer", help="a tokenizer directory or hub id (default: a BPE trained on the texts)")
    a = ap.parse_args()

    from rcond.content_encoder import ContentEncoder
    from rcond.corpus import train_tokenizer
    from rcond.tokenizer import load_tokenizer
    from rcond.toyworld import generate

    with tempfile.TemporaryDirectory() as tmp:
        path = a.texts or generate(Path(tmp) / "world", seed=1, n_reviews=a.records, n_dialogs=1, n_text=1,
                                   progress=False)["reviews"]
        with open(path, encoding="utf-8") as f:
            texts = [json.loads(line)[a.field] for line in f]
    tok = load_tokenizer(a.tokenizer) if a.tokenizer else train_tokenizer(texts, 8192)
    backend = tok.backend_tokenizer
    batches = [texts[i:i + 1000] for i in range(0, len(texts), 1000)]

    joined = ContentEncoder(backend)
    per_text = ContentEncoder(backend)
    per_text.joined = None  # the path it takes for a tokenizer it cannot join
    if joined.joined is None:
        raise SystemExit("this tokenizer is not joined by ContentEncoder (a component not known to be piecewise)")
    for b in batches:  # the same ids both ways, on every batch (and joined's first-call check runs here)
        (o1, f1), (o2, f2) = joined(b), per_text(b)
        assert np.array_equal(o1, o2) and np.array_equal(f1, f2), "joined and per-text ids differ"
    tokens = sum(len(per_text(b)[1]) for b in batches)

    times: dict[str, list[tuple[float, float]]] = {"per text": [], "joined": []}
    gc.disable()
    try:
        for _ in range(a.repeats):
            for name, encoder in (("per text", per_text), ("joined", joined)):
                t0, c0 = time.perf_counter(), time.process_time()
                for b in batches:
                    encoder(b)
                times[name].append((time.perf_counter() - t0, time.process_time() - c0))
    finally:
        gc.enable()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}, median of {a.repeats}")
    print(f"data: {len(texts):,} texts, {tokens:,} tokens ({tokens / len(texts):.1f} per text), batches of 1,000; "
          f"tokenizer {a.tokenizer or 'byte-level BPE of 8192 trained on them'}")
    med = {name: tuple(statistics.median(t[i] for t in ts) for i in (0, 1)) for name, ts in times.items()}
    for name, (wall, cpu) in med.items():
        print(f"{name:>9}: {wall:.3f} s wall, {cpu:.3f} s CPU, {tokens / wall:,.0f} tokens/s")
    print(f"joined / per text: wall {med['joined'][0] / med['per text'][0]:.2f}x, "
          f"CPU {med['joined'][1] / med['per text'][1]:.2f}x (lower is better)")


if __name__ == "__main__":
    main()
