"""Scoring throughput: a ``--score-with`` scorer in one process vs ``--score-workers N`` processes.

Compared on the same texts, in this process, interleaved: :func:`rcond.scorer_pool.scores_in_batches`
with the plain scorer (batches of ``--score-batch`` texts, one after another, as ``rcond preprocess``
scores without ``--score-workers``) and with a :class:`rcond.scorer_pool.ScorerPool` of N workers
(started once, outside the clock, as a build starts it once). The scores must be identical; the
script says so, and fails if not.

Texts: the 2,000 movie reviews of ``../shared/data/movie_reviews.zip`` (~700 words each) where
that file is present, else the toy world's reviews joined 25 at a time into texts of similar
length. Scorer: ``vader`` by default (pure Python, so one process scores on one core whatever the
machine has), or any ``module:function`` spec.

    python benchmarks/scoring.py [--scorer vader] [--workers 2 4] [--texts 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

MOVIE_REVIEWS = Path(__file__).resolve().parents[2] / "shared" / "data" / "movie_reviews.zip"


def load_texts(n: int) -> tuple[list[str], str]:
    """``n`` long texts, and where they came from."""
    if MOVIE_REVIEWS.is_file():
        with zipfile.ZipFile(MOVIE_REVIEWS) as zf:
            names = sorted(name for name in zf.namelist() if name.endswith(".txt"))[:n]
            return [zf.read(name).decode("utf-8") for name in names], f"{len(names)} movie reviews ({MOVIE_REVIEWS.name})"
    import json

    from rcond.toyworld import generate

    with tempfile.TemporaryDirectory() as tmp:
        path = generate(Path(tmp) / "w", seed=0, n_reviews=25 * n, n_dialogs=1, n_text=1, progress=False)["reviews"]
        reviews = [json.loads(line)["response"] for line in path.read_text().splitlines()]
    return [" ".join(reviews[i:i + 25]) for i in range(0, len(reviews), 25)], f"{n} texts of 25 toy-world reviews each"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", default="vader", help="vader | module:function")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="pool sizes (default: 2 and the cores)")
    ap.add_argument("--texts", type=int, default=2000)
    ap.add_argument("--score-batch", type=int, default=256, help="texts per scorer call, as SourceReader's")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    from rcond.parallel import usable_cores
    from rcond.scorer_pool import ScorerPool, scores_in_batches
    from rcond.scorers import get_scorer

    cores = usable_cores()
    sizes = a.workers or sorted({2, cores})
    texts, origin = load_texts(a.texts)
    words = sum(len(t.split()) for t in texts) / len(texts)
    scorer = get_scorer(a.scorer)
    print(f"machine    {platform.processor() or platform.machine()}, {cores} usable cores ({os.cpu_count()} in all), "
          f"python {platform.python_version()}")
    print(f"texts      {origin}, {words:.0f} words on average; scorer {scorer.name!r}, batches of {a.score_batch}")
    print(f"compared   one process vs a pool of N workers (started outside the clock); median of {a.repeats} "
          f"interleaved repeats\n")

    reference = scores_in_batches(scorer, texts, a.score_batch)
    pools = {n: ScorerPool(a.scorer, n).__enter__() for n in sizes}
    try:
        times: dict[str, list[float]] = {"1": [], **{str(n): [] for n in sizes}}
        for _ in range(a.repeats):
            for name, run in [("1", scorer), *((str(n), pool) for n, pool in pools.items())]:
                t = time.perf_counter()
                got = scores_in_batches(run, texts, a.score_batch)
                times[name].append(time.perf_counter() - t)
                if got != reference:
                    raise SystemExit(f"pool of {name}: scores differ from one process's")
    finally:
        for pool in pools.values():
            pool.__exit__(None, None, None)

    one = statistics.median(times["1"])
    print(f"{'processes':>9}  {'seconds':>8}  {'texts/s':>8}  {'speed-up':>8}")
    for name, ts in times.items():
        s = statistics.median(ts)
        print(f"{name:>9}  {s:8.2f}  {len(texts) / s:8.1f}  {one / s:7.2f}x")
    print("\nscores identical in every run: yes")


if __name__ == "__main__":
    main()
