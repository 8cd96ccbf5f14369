"""Reading columnar inputs: rcond's pyarrow readers vs `datasets`' own, on the same rows.

Toy-world reviews (``scored`` rows: prompt, response, reward and the generator's labels) are
written three ways a user brings them: JSON Lines, Parquet, and a folder from ``datasets``'
``save_to_disk``. Timed, in this process, interleaved, ``--repeats`` times (best and median):

- **datasets-stream parquet**: ``datasets.load_dataset("parquet", streaming=True)``, every row
  iterated: what rcond used for Parquet before it read it with pyarrow;
- **datasets load_from_disk**: ``datasets.load_from_disk`` of the saved folder, every row iterated;
- **rcond rows** (``rcond.sources.iter_rows``) of the Parquet file and of the saved folder: the
  same rows, as plain Python values, from pyarrow batches;
- **rcond records** (``SourceReader(...).batches()``): rows to validated records in columns, the
  reader ``rcond preprocess`` runs, for each of the three files (each takes its column-wise path,
  :mod:`rcond.columnar`).

The rows are checked equal between the two readers of each file before any clock starts.

    python benchmarks/readers.py [--records 80000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path


def timed(job) -> tuple[float, int]:
    start = time.perf_counter()
    n = job()
    return time.perf_counter() - start, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=80000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    import datasets

    from rcond.sources import SourceReader, iter_rows
    from rcond.toyworld import generate

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jsonl = str(generate(tmp / "world", seed=1, n_reviews=a.records, n_dialogs=1, n_text=1,
                             progress=False)["reviews"])
        ds = datasets.Dataset.from_json(jsonl, cache_dir=str(tmp / "cache"))
        parquet, saved = str(tmp / "reviews.parquet"), str(tmp / "saved")
        ds.to_parquet(parquet)
        ds.save_to_disk(saved)

        def stream_rows():
            return list(datasets.load_dataset("parquet", data_files=parquet, split="train", streaming=True))

        assert [row for _, row in iter_rows(parquet)] == stream_rows(), "the readers disagree on the Parquet rows"
        assert [row for _, row in iter_rows(saved)] == list(datasets.load_from_disk(saved)), "... on the saved rows"

        jobs = {
            "datasets-stream parquet": lambda: sum(1 for _ in datasets.load_dataset(
                "parquet", data_files=parquet, split="train", streaming=True)),
            "rcond rows parquet": lambda: sum(1 for _ in iter_rows(parquet)),
            "datasets load_from_disk": lambda: sum(1 for _ in datasets.load_from_disk(saved)),
            "rcond rows saved": lambda: sum(1 for _ in iter_rows(saved)),
            **{f"rcond records {name}": (lambda p=p: sum(b.records for b in SourceReader([p], "scored").batches()))
               for name, p in (("jsonl", jsonl), ("parquet", parquet), ("saved", saved))},
        }
        times: dict[str, list[float]] = {k: [] for k in jobs}
        for _ in range(a.repeats):  # interleaved, so that a slow spell of the machine hits every job
            for name, job in jobs.items():
                seconds, n = timed(job)
                assert n == a.records, (name, n)
                times[name].append(seconds)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, datasets {datasets.__version__}, {a.repeats} runs each")
    print(f"data: {a.records:,} toy-world reviews (scored rows)")
    print(f"{'job':>26} {'best s':>8} {'median s':>9} {'rows/s':>11}")
    for name, ts in times.items():
        print(f"{name:>26} {min(ts):>8.2f} {statistics.median(ts):>9.2f} {a.records / min(ts):>11,.0f}")
    for ours, theirs in (("rcond rows parquet", "datasets-stream parquet"), ("rcond rows saved", "datasets load_from_disk")):
        print(f"{ours} / {theirs}: {min(times[theirs]) / min(times[ours]):.1f}x the rows per second (best vs best)")


if __name__ == "__main__":
    main()
