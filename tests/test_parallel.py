"""Worker processes (rcond.parallel) build the same corpus, byte for byte, as one process."""

import json
import os

import numpy as np
import pytest

from conftest import WORDS, descendants, outlived, parent_of, word_tokenizer, write_jsonl
from rcond.corpus import CorpusError, PackOptions, build
from rcond.sources import SourceError, SourceReader


def words(rng, n):
    return " ".join(rng.choice(WORDS[1:], size=n))


def corpus_files(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def build_both(tmp_path, fmt, rows, **kw):
    """The corpus built in this process and with 3 workers: (files, summary) of each."""
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    got = []
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        opts = PackOptions(workers=workers, encode_batch=7, **kw)  # many small batches, several in flight at once
        _, summary = build(SourceReader([str(src)], fmt), out, word_tokenizer(), binning="quantile", opts=opts,
                           progress=False)
        summary.seconds = 0.0
        got.append((corpus_files(out), summary))
    return got


@pytest.mark.parametrize("kw", [dict(block_size=12, uncond_fraction=0.3, seed=5),  # long documents split
                                dict(block_size=12, truncate=True),
                                dict(block_size=64, train_on_prompt=True, open_rows=2)])
def test_scored_records_give_the_same_corpus(tmp_path, kw):
    rng = np.random.default_rng(0)
    rows = [{"prompt": words(rng, int(rng.integers(0, 6))), "response": words(rng, int(rng.integers(1, 20))),
             "reward": float(rng.normal())} for _ in range(120)]
    (one, s1), (three, s3) = build_both(tmp_path, "scored", rows, **kw)
    assert one == three
    assert s1 == s3


def test_dialogs_give_the_same_corpus(tmp_path):
    """Several markers per document, numbered across batches that different workers conditioned,
    and long user turns, whose pieces of user text alone are left out."""
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(60):
        turns = []
        for t in range(int(rng.integers(1, 4))):
            turns += [{"role": "user", "content": words(rng, int(rng.integers(1, 20)))},
                      {"role": "assistant", "content": words(rng, int(rng.integers(1, 8))),
                       "reward": float(rng.normal())}]
        rows.append({"turns": turns})
    (one, s1), (three, s3) = build_both(tmp_path, "dialog", rows, block_size=16, uncond_fraction=0.2)
    assert one == three
    assert s1 == s3
    scheme = json.loads(three["scheme.json"])
    assert sum(scheme["counts"]) > len(rows)  # more than one RTG token per dialog on average
    assert s1.untrained_pieces > 0  # pieces of user text alone, left out alike


def test_workers_apply_no_truncation_the_tokenizer_carries(tmp_path):
    """A worker's copy of the tokenizer comes from its JSON, which holds the truncation and padding
    settings: the workers must drop them as the one-process build does."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "a b c d e f", "reward": float(i)} for i in range(6)])
    got = []
    for workers in (1, 2):
        tok = word_tokenizer()
        tok.backend_tokenizer.enable_truncation(max_length=2)
        tok.backend_tokenizer.enable_padding(pad_id=0, pad_token="<eos>", length=9)
        out = tmp_path / f"w{workers}"
        _, summary = build(SourceReader([str(src)], "scored"), out, tok, binning="quantile",
                           opts=PackOptions(workers=workers, encode_batch=2), progress=False)
        assert summary.content_tokens == 6 * (6 + 1)  # six words and eos, each record
        got.append(corpus_files(out))
    assert got[0] == got[1]


def test_bad_line_with_workers_names_it_and_leaves_nothing(tmp_path):
    lines = [json.dumps({"response": "a b", "reward": i}) for i in range(30)]
    lines[17] = '{"response": "a", "reward": '
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    with pytest.raises(SourceError, match=rf"{src}:18: malformed JSON"):
        build(SourceReader([str(src)], "scored"), tmp_path / "out", word_tokenizer(),
              opts=PackOptions(workers=2, encode_batch=4), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("workers,message", [(0, "--workers must be at least 1, got 0"),
                                             (10_000, r"--workers 10000 is more than 4 per core \(\d+ cores here")])
def test_workers_must_be_positive_and_not_absurd(tmp_path, workers, message):
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "a", "reward": 1}])
    with pytest.raises(CorpusError, match=message):
        build(SourceReader([str(src)], "scored"), tmp_path / "out", word_tokenizer(), opts=PackOptions(workers=workers),
              progress=False)
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_that_cannot_be_serialised_is_a_clear_error(tmp_path):
    """A custom Python pre-tokenizer cannot reach a worker process: the build says so."""
    from tokenizers.pre_tokenizers import PreTokenizer

    class Spaces:
        def pre_tokenize(self, pretok):
            pretok.split(lambda i, s: s.split(" "))

    tok = word_tokenizer()
    tok.backend_tokenizer.pre_tokenizer = PreTokenizer.custom(Spaces())
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "a b", "reward": 1}])
    with pytest.raises(CorpusError, match="cannot be serialised for worker processes.*--workers 1"):
        build(SourceReader([str(src)], "scored"), tmp_path / "out", tok, opts=PackOptions(workers=2), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_whose_json_encodes_otherwise_is_a_clear_error(tmp_path):
    """Workers get the tokenizer read back from its JSON. A special token added again as an
    ordinary one is written as ordinary but read as special in memory: read back, it would encode
    otherwise, and the corpus would depend on --workers. The build refuses, and says what to do."""
    from tokenizers import AddedToken

    tok = word_tokenizer()
    tok.backend_tokenizer.add_special_tokens(["<x>"])
    tok.backend_tokenizer.add_tokens([AddedToken("<x>", special=False)])
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "a <x> b", "reward": 1}])
    with pytest.raises(CorpusError, match="reads the tokenizer back from its JSON.*--tokenizer, or use --workers 1"):
        build(SourceReader([str(src)], "scored"), tmp_path / "out", tok, opts=PackOptions(workers=2), progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("records", [40, 4])
def test_a_worker_that_dies_stops_the_build_with_a_clear_error(tmp_path, monkeypatch, records):
    """A worker killed mid-build (here: it exits while unpickling its batch, as if killed or out
    of memory) is a CorpusError that suggests fewer workers, and nothing is left behind. With 4
    records there is one batch and no later submit to find the pool broken: the death comes out
    of the batch's own result."""
    import os

    from rcond.sources import PartBatch

    src = write_jsonl(tmp_path / "in.jsonl", [{"response": f"a b {i}", "reward": i} for i in range(records)])
    monkeypatch.setattr(PartBatch, "__reduce__", lambda self: (os._exit, (3,)), raising=False)
    with pytest.raises(CorpusError, match="a worker process of the build died .*try fewer --workers"):
        build(SourceReader([str(src)], "scored"), tmp_path / "out", word_tokenizer(),
              opts=PackOptions(workers=2, encode_batch=8), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_worker_killed_between_batches_stops_the_build_with_a_clear_error(tmp_path):
    """Killed after its last result came back (as by the out-of-memory killer), a worker breaks the
    executor's next submit: a CorpusError too, not the executor's own BrokenProcessPool."""
    import os
    import signal
    import time

    src = write_jsonl(tmp_path / "in.jsonl", [{"response": f"a b {i}", "reward": i} for i in range(40)])
    reader = SourceReader([str(src)], "scored")
    batches = reader.batches

    def killing_after_two(size, **kw):
        for i, batch in enumerate(batches(size, **kw)):
            if i == 2:  # two batches handed out (fewer than the 4 kept in flight: none collected yet)
                deadline = time.time() + 30
                while not (workers := [pid for pid in descendants(os.getpid()) if parent_of(pid) != os.getpid()]):
                    assert time.time() < deadline, "no worker started"
                    time.sleep(0.05)  # the workers, forked by the forkserver, start with the first submits
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                time.sleep(1.0)
            yield batch

    reader.batches = killing_after_two
    with pytest.raises(CorpusError, match="a worker process of the build died .*try fewer --workers"):
        build(reader, tmp_path / "out", word_tokenizer(), opts=PackOptions(workers=2, encode_batch=8), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_a_ctrl_c_while_a_worker_is_being_started_leaves_no_worker_behind(tmp_path, ctrl_c_after_each_process_start):
    """The executor starts workers inside ``submit``; a Ctrl-C that lands after the child exists but
    before the executor has recorded it used to leave that worker (and the forkserver with it)
    waiting for work for ever. The Ctrl-C here arrives at that very moment, in every start."""
    started = ctrl_c_after_each_process_start
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": f"a b {i}", "reward": i} for i in range(40)])
    with pytest.raises(KeyboardInterrupt):
        build(SourceReader([str(src)], "scored"), tmp_path / "out", word_tokenizer(),
              opts=PackOptions(workers=2, encode_batch=8), progress=False)
    assert started, "no worker was started"
    assert not outlived(started), "a worker outlived the build"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


FORKSERVER_HIT_WHILE_IMPORTING = """
import os, signal, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver
sys.path.insert(0, sys.argv[1])
from conftest import descendants, running
from rcond.parallel import worker_context

context = worker_context()
forkserver.ensure_running()  # as a pool's first start does; nothing to do once worker_context started it
def server():  # once the forked child has exec'd the server
    for pid in descendants(os.getpid()):
        try:
            if b"multiprocessing.forkserver import main" in open(f"/proc/{pid}/cmdline", "rb").read():
                return pid
        except OSError:
            pass
deadline = time.time() + 10
while server() is None and time.time() < deadline:
    time.sleep(0.001)
pid = server()
os.kill(pid, signal.SIGINT)  # a Ctrl-C while the server imports rcond.parallel (~0.5 s)
time.sleep(2)
print("alive" if running(pid) else "dead")
with ProcessPoolExecutor(1, mp_context=context) as pool:
    print("worker", pool.submit(os.getpid).result() != os.getpid())
"""


@pytest.mark.skipif("forkserver" not in __import__("multiprocessing").get_all_start_methods(), reason="no forkserver")
def test_a_ctrl_c_while_the_forkserver_imports_neither_kills_it_nor_prints_a_traceback():
    """A Ctrl-C in the first second of a pooled build hits the whole process group, the forkserver
    too, while it still imports: it used to die printing a KeyboardInterrupt traceback over the
    build's one-line message. The server is now started with SIGINT blocked and goes on serving.
    In a fresh interpreter, so that no forkserver is running yet."""
    import subprocess
    import sys
    from pathlib import Path

    run = subprocess.run([sys.executable, "-c", FORKSERVER_HIT_WHILE_IMPORTING, str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["alive", "worker", "True"]
    assert "Traceback" not in run.stderr and "KeyboardInterrupt" not in run.stderr


def test_workers_that_do_not_all_start_in_time_are_a_clear_error():
    """A start barrier that broke (one worker not started within STARTUP_TIMEOUT) is a CorpusError
    naming the pool's size and the remedy, not a raw BrokenBarrierError."""
    import threading
    from concurrent.futures import Future

    from rcond.parallel import STARTUP_TIMEOUT, wait_started

    ok, broke = Future(), Future()
    ok.set_result(None)
    broke.set_exception(threading.BrokenBarrierError())
    with pytest.raises(CorpusError, match=rf"the 2 worker processes of the build did not all start within "
                                          rf"{STARTUP_TIMEOUT} s .*try fewer --workers"):
        wait_started([ok, broke])
    wait_started([ok, ok])  # all started: returns


@pytest.mark.parametrize("flags", [["--workers", "2"], ["--score-workers", "2"]])
def test_a_build_killed_outright_takes_its_worker_processes_with_it(tmp_path, flags):
    """SIGKILL (or the out-of-memory killer) of a build with worker processes left them running for
    good (idle ones waiting for work, the forkserver and the resource tracker with them), holding the
    killed command's stdout and stderr open. The workers now end once their owner's end of a pipe
    closes, which its death does."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "slow.py").write_text("import time\n\ndef slow(texts):\n    time.sleep(120)\n"
                                      "    return [0.0] * len(texts)\n")
    src = write_jsonl(tmp_path / "s.jsonl", [{"response": f"{w} {w}", "reward": 0.0} for w in WORDS])
    owner = subprocess.Popen([sys.executable, "-m", "rcond.cli", "preprocess", str(src), "--format", "scored",
                              "--out", str(tmp_path / "c"), "--tokenizer", "train:300", "--no-progress",
                              "--score-with", f"{tmp_path / 'slow.py'}:slow", *flags],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while len(below := descendants(owner.pid)) < 4 and time.time() < deadline:  # tracker, server, 2 workers
            time.sleep(0.1)
        assert len(below) >= 4, "the workers did not start"
        time.sleep(1.0)  # the workers past their start, in the scorer's sleep or waiting for work
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    left = outlived(below, seconds=20)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_the_process_limit_is_4_per_core_of_the_affinity_and_never_under_8():
    """Worker processes may be up to 4 per core this process may run on (its CPU affinity, as a
    container or ``taskset`` sets it, not the machine's count) and 8 however few the cores: pinned
    to one core, 8 are allowed and 9 refused; on the cores given back, 4 per core exactly."""
    from rcond.parallel import too_many_processes, usable_cores

    cpus = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(cpus)})  # this thread only: what usable_cores reads
        assert usable_cores() == 1
        assert too_many_processes("--workers", 8) is None
        assert too_many_processes("--workers", 9) == "--workers 9 is more than 4 per core (1 cores here: at most 8)"
    finally:
        os.sched_setaffinity(0, cpus)
    limit = max(8, 4 * len(cpus))
    assert too_many_processes("--score-workers", limit) is None
    assert too_many_processes("--score-workers", limit + 1).startswith(
        f"--score-workers {limit + 1} is more than 4 per core ({len(cpus)} cores here: at most {limit})")


def test_a_worker_that_died_while_starting_is_a_clear_error():
    """A start future broken by a dead worker (killed while importing, out of memory) is the
    build's CorpusError, as a death later on is, not the executor's raw BrokenProcessPool."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    from rcond.parallel import wait_started

    died = Future()
    died.set_exception(BrokenProcessPool("A process in the process pool was terminated abruptly"))
    with pytest.raises(CorpusError, match=r"a worker process of the build died \(A process in the process pool was "
                                          r"terminated abruptly\); try fewer --workers"):
        wait_started([died])


def test_starting_the_forkserver_leaves_ctrl_c_unblocked_in_the_caller():
    """The forkserver is started with SIGINT blocked, so that it inherits the block; the caller's
    own mask must be restored after, or Ctrl-C would stay pending here (and in every process
    started from this thread) for the rest of the run."""
    import signal

    from rcond.parallel import worker_context

    try:
        worker_context()
        assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_workers_end_documents_with_the_tokenizers_own_eos_id(tmp_path):
    """Each worker gets the eos id of the build's tokenizer: one whose eos is not id 0 ('h', id
    8 here) gives the same corpus with workers as in one process, every document ending in 8."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "a b c", "reward": float(i)} for i in range(6)])
    got = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        _, summary = build(SourceReader([str(src)], "scored"), out, word_tokenizer(eos_token="h", pad_token="h"),
                           binning="quantile", opts=PackOptions(workers=workers, encode_batch=2), progress=False)
        got.append(corpus_files(out))
    assert got[0] == got[1]
