"""``rcond demo``: the whole flow on the embedded toy world, in one command.

Steps, each reading what the previous one wrote under ``--out`` (default ``demo/``):

1. ``world/``   — the seeded toy world (reviews with VADER rewards, dialogs, plain text);
2. ``corpus/``  — reviews and plain text preprocessed into one conditioned corpus, with a
   byte-level BPE trained on the world.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoSize:
    reviews: int
    dialogs: int
    texts: int
    vocab: int
    block_size: int


FULL = DemoSize(reviews=20000, dialogs=2000, texts=2000, vocab=4096, block_size=256)
QUICK = DemoSize(reviews=3000, dialogs=300, texts=300, vocab=1024, block_size=128)


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("demo", help="the whole flow on the embedded toy world",
                       description=__doc__, formatter_class=formatter,
                       epilog="examples:\n  rcond demo\n  rcond demo --out /tmp/demo --quick")
    p.add_argument("--out", default="demo", help="output directory (replaced if it exists)")
    p.add_argument("--quick", action="store_true", help="a smaller world, for a fast look")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def run(a) -> int:
    from .cli import format_preprocess_summary
    from .corpus import PackOptions, build, train_tokenizer
    from .sources import SourceReader
    from .toyworld import generate

    size = QUICK if a.quick else FULL
    out = Path(a.out)
    progress = not a.no_progress
    t0 = time.perf_counter()
    print(f"[1/2] generating the toy world (seed {a.seed}) ...")
    paths = generate(out / "world", seed=a.seed, n_reviews=size.reviews, n_dialogs=size.dialogs,
                     n_text=size.texts, progress=progress, overwrite=True)
    print(f"[2/2] preprocessing reviews into {out / 'corpus'} ...")
    reader = SourceReader([str(paths["reviews"])], "scored")
    world_texts = itertools.chain(reader.texts(), SourceReader([str(paths["text"])], "text").texts())
    tokenizer = train_tokenizer(world_texts, size.vocab)
    opts = PackOptions(block_size=size.block_size, seed=a.seed)
    scheme, summary = build(reader, out / "corpus", tokenizer, opts=opts, overwrite=True, progress=progress)
    print(format_preprocess_summary(out / "corpus", scheme, summary, opts.block_size))
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs under {out}/")
    return 0

