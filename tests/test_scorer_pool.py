"""A scorer in worker processes (rcond.scorer_pool) gives the scores, and the corpus, of one process."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import descendants, outlived, parent_of, within, write_jsonl
from rcond.cli import main
from rcond.corpus import load
from rcond.scorer_pool import ScorerPool, scores_in_batches
from rcond.scorers import ScorerError, get_scorer

SCORERS = '''
import math, os, time

def batch_size(texts):
    return [float(len(texts))] * len(texts)

def length(texts):
    return [float(len(t)) for t in texts]

def nan_for_bad(texts):
    return [math.nan if "bad" in t else 1.0 for t in texts]

def boom(texts):
    raise RuntimeError("boom")

def word_for_bad(texts):
    return ["oops" if "bad" in t else 1.0 for t in texts]

def boom_on_bad(texts):
    if any("bad" in t for t in texts):
        raise ValueError("cannot score that")
    return [1.0] * len(texts)

def die(texts):
    os._exit(3)

def slow(texts):
    time.sleep(0.2)
    return [0.5] * len(texts)

def stuck(texts):
    time.sleep(600)
    return [0.5] * len(texts)

def sleepy(texts):
    time.sleep(10)
    return [0.5] * len(texts)
'''


@pytest.fixture
def scorers(tmp_path):
    path = tmp_path / "scorers.py"
    path.write_text(SCORERS)
    return lambda name: f"{path}:{name}"


def test_one_process_calls_the_scorer_on_batches_of_at_most_score_batch(scorers):
    texts = [f"t{i}" for i in range(10)]
    assert scores_in_batches(get_scorer(scorers("batch_size")), texts, 4) == [4.0] * 8 + [2.0] * 2
    assert scores_in_batches(get_scorer(scorers("batch_size")), [], 4) == []


def test_a_pool_splits_into_a_batch_per_worker_or_more_and_keeps_order(scorers):
    texts = [f"text {i}" * (i + 1) for i in range(10)]
    with ScorerPool(scorers("batch_size"), 2) as pool:
        # max(2 workers, ceil(10 / 4)) = 3 near-equal contiguous parts: cut at 3 and 6
        assert scores_in_batches(pool, texts, 4) == [3.0] * 6 + [4.0] * 4
        assert scores_in_batches(pool, texts, 100) == [5.0] * 10  # one part per worker
        assert scores_in_batches(pool, texts[:1], 4) == [1.0]  # never an empty part
    with ScorerPool(scorers("length"), 3) as pool:
        assert scores_in_batches(pool, texts, 4) == [float(len(t)) for t in texts]
        assert pool.values(["ab", "abc"]) == [2.0, 3.0]


def test_vader_in_a_pool_scores_as_in_one_process():
    texts = ["I love this, it is wonderful!", "Terrible. I hate it.", "It is a chair.", "not bad at all"] * 5
    with ScorerPool("vader", 2) as pool:
        assert pool.name == "vader"
        assert scores_in_batches(pool, texts, 3) == scores_in_batches(get_scorer("vader"), texts, 3)


def test_non_finite_scores_come_back_in_place(scorers):
    with ScorerPool(scorers("nan_for_bad"), 2) as pool:
        got = scores_in_batches(pool, ["good", "bad", "fine", "also bad"], 256)
    assert got[0] == 1.0 and np.isnan(got[1]) and got[2] == 1.0 and np.isnan(got[3])


def test_a_scorer_error_in_a_worker_names_the_scorer_and_what_it_raised(scorers):
    with ScorerPool(scorers("boom"), 2) as pool:
        with pytest.raises(ScorerError, match=r"boom' failed on texts 0\.\.1: RuntimeError: boom"):
            scores_in_batches(pool, ["a", "b", "c", "d"], 256)


@pytest.mark.parametrize("score", [lambda pool: scores_in_batches(pool, ["a", "b"], 256),
                                   lambda pool: pool.values(["a", "b"])])
def test_a_worker_that_dies_is_a_scorer_error(scorers, score):
    """Through scores_in_batches or the pool's own values(): a ScorerError, not BrokenProcessPool."""
    with ScorerPool(scorers("die"), 2) as pool:
        with pytest.raises(ScorerError, match="a worker process died .*try fewer --score-workers"):
            score(pool)


def test_a_worker_killed_between_batches_is_a_scorer_error_on_the_next_submit(scorers):
    with ScorerPool(scorers("length"), 2) as pool:
        assert scores_in_batches(pool, ["a", "bb"], 256) == [1.0, 2.0]
        os.kill(next(iter(pool._executor._processes)), signal.SIGKILL)  # as the out-of-memory killer would
        time.sleep(1.0)  # the executor notices, and refuses new work
        with pytest.raises(ScorerError, match="a worker process died .*killed, out of memory"):
            scores_in_batches(pool, ["a", "bb"], 256)


def test_a_scorer_that_cannot_be_built_in_a_worker_is_one_line_with_its_cause(tmp_path, capsys):
    """A module that imports in the command but fails in a worker (no device there, say): exit 2 with
    the module's own error, not the executor's logged tracebacks."""
    (tmp_path / "worker_only.py").write_text(
        "import multiprocessing\n"
        "if multiprocessing.parent_process() is not None:\n    raise RuntimeError('no GPU in worker')\n"
        "def score(texts):\n    return [0.5] * len(texts)\n")
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": f"text {i}"} for i in range(20)])
    cmd = [sys.executable, "-m", "rcond.cli", "preprocess", str(src), "--format", "scored", "--out",
           str(tmp_path / "c"), "--tokenizer", "train:300", "--no-progress", "--score-with",
           str(tmp_path / "worker_only.py:score"), "--score-workers", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "failed to import: RuntimeError: no GPU in worker (in a --score-workers process)" in done.stderr
    assert "Traceback" not in done.stderr and "Exception in initializer" not in done.stderr
    assert not (tmp_path / "c").exists()


def test_a_bad_spec_fails_before_any_process_starts(tmp_path):
    with pytest.raises(ScorerError, match="unknown scorer"):
        ScorerPool("no such scorer", 2)
    with pytest.raises(ValueError, match="at least 2 workers"):
        ScorerPool("vader", 1)
    assert repr(ScorerPool(" vader ", 2)) == "ScorerPool('vader', workers=2)"  # the scorer's name, as a Scorer's


def test_a_ctrl_c_while_the_pool_starts_leaves_no_worker_behind(ctrl_c_after_each_process_start):
    """The workers start inside ``__enter__``; a Ctrl-C right after each one exists is held until
    all are recorded, then raised, and every worker is stopped."""
    started = ctrl_c_after_each_process_start
    with pytest.raises(KeyboardInterrupt):
        with ScorerPool("vader", 2):
            pytest.fail("the pool was entered")
    assert started, "no worker was started"
    assert not outlived(started), "a worker outlived the pool"


def preprocess(tmp_path, src, out, *extra, fmt="scored"):
    return main(["preprocess", str(src), "--format", fmt, "--out", str(tmp_path / out), "--tokenizer", "train:300",
                 "--block-size", "64", "--no-progress", "--score-with", "vader", *extra])


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])  # the column-wise JSONL path and the record path
def test_preprocess_with_score_workers_writes_the_same_corpus(tmp_path, capsys, suffix):
    rng = np.random.default_rng(0)
    words = ["good", "bad", "awful", "great", "chair", "lovely", "terrible", "fine", "not", "very"]
    rows = [{"prompt": "Review:", "response": " ".join(rng.choice(words, size=8))} for _ in range(300)]
    if suffix == "jsonl":
        src = write_jsonl(tmp_path / "in.jsonl", rows)
    else:
        src = tmp_path / "in.csv"
        src.write_text("prompt,response\n" + "".join(f"{r['prompt']},{r['response']}\n" for r in rows))
    assert preprocess(tmp_path, src, "one") == 0
    assert preprocess(tmp_path, src, "three", "--score-workers", "3") == 0
    for name in ("rows.arrow", "scheme.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "three" / name).read_bytes()


def test_preprocess_pairs_scored_in_a_pool_match_one_process(tmp_path):
    rows = [{"chosen": f"\n\nHuman: hi {i}\n\nAssistant: I love helping, wonderful {i}",
             "rejected": f"\n\nHuman: hi {i}\n\nAssistant: awful, go away {i}"} for i in range(200)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert preprocess(tmp_path, src, "one", fmt="pairs") == 0
    assert preprocess(tmp_path, src, "two", "--score-workers", "2", fmt="pairs") == 0
    assert (tmp_path / "one" / "rows.arrow").read_bytes() == (tmp_path / "two" / "rows.arrow").read_bytes()


def test_records_a_pooled_scorer_gives_no_finite_score_are_skipped_as_in_one_process(tmp_path, capsys, scorers):
    rows = [{"response": f"{'bad' if i % 7 == 0 else 'good'} text {i}"} for i in range(100)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    outs = []
    for n in ("1", "2"):
        assert main(["preprocess", str(src), "--format", "scored", "--out", str(tmp_path / n), "--tokenizer",
                     "train:300", "--block-size", "64", "--no-progress", "--on-error", "skip",
                     "--score-with", scorers("nan_for_bad"), "--score-workers", n]) == 0
        outs.append(capsys.readouterr().out)
    assert "skipped 15 bad" in outs[0] and "in.jsonl:8: scorer returned a non-finite reward nan" in outs[0]
    summaries = [[line for line in out.splitlines()[1:] if "speed" not in line and "skipped.txt" not in line
                  and "rcond show" not in line]
                 for out in outs]  # less paths and time
    assert summaries[0] == summaries[1]
    for name in ("rows.arrow", "skipped.txt"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_score_batch_sets_the_texts_per_scorer_call(tmp_path, capsys, scorers, workers, suffix):
    """The scorer returns its batch's size as every text's score; explicit edge 3.5 puts 4s in bin 1
    and the rest in bin 0. 10 texts, --score-batch 4: in one process, calls of 4, 4, 2. Two workers:
    a JSONL chunk (up to 1,000 lines) is one call cut into max(2, ceil(10 / 4)) = 3 near-equal parts,
    3, 3, 4; the record path (CSV) reads 4 x 2 = 8 records per round: parts 4, 4, then 1, 1."""
    rows = [{"response": f"text {i}"} for i in range(10)]
    if suffix == "jsonl":
        src = write_jsonl(tmp_path / "in.jsonl", rows)
    else:
        src = tmp_path / "in.csv"
        src.write_text("response\n" + "".join(f"{r['response']}\n" for r in rows))
    assert main(["preprocess", str(src), "--format", "scored", "--out", str(tmp_path / "c"), "--tokenizer",
                 "train:300", "--no-progress", "--uncond-fraction", "0", "--binning", "edges:3.5",
                 "--score-with", scorers("batch_size"), "--score-batch", "4", "--score-workers", workers]) == 0
    expected = {("1", "jsonl"): [2, 8], ("1", "csv"): [2, 8], ("2", "jsonl"): [6, 4], ("2", "csv"): [2, 8]}
    assert load(tmp_path / "c")[1].counts == expected[workers, suffix]


def test_score_batch_must_be_positive(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "good"}])
    assert preprocess(tmp_path, src, "c", "--score-batch", "0") == 2
    assert "--score-batch must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--score-workers", "0"], "--score-workers must be at least 1, got 0"),
    (["--score-workers", "100000"], "--score-workers 100000 is more than 4 per core"),
])
def test_score_workers_must_be_positive_and_not_absurd(tmp_path, capsys, extra, message):
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "good", "reward": 1}])
    assert preprocess(tmp_path, src, "c", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_score_workers_or_batch_without_a_scorer_is_an_error(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": "good", "reward": 1}])
    assert main(["preprocess", str(src), "--format", "scored", "--out", str(tmp_path / "c"),
                 "--score-workers", "2", "--no-progress"]) == 2
    assert "--score-workers sets how the scorer of --score-with runs; give --score-with too" in capsys.readouterr().err
    assert main(["preprocess", str(src), "--format", "scored", "--out", str(tmp_path / "c"),
                 "--score-batch", "64", "--no-progress"]) == 2
    assert "--score-batch sets how the scorer of --score-with runs; give --score-with too" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("scorer", ["slow", "stuck", "slow_start:score"])
def test_ctrl_c_during_pooled_scoring_exits_130_and_leaves_no_process(tmp_path, scorers, scorer):
    """The command's process group gets SIGINT (as a terminal's Ctrl-C does) while the workers are
    scoring, stuck in a batch, or still loading the scorer: exit 130 within seconds, no corpus, and
    no worker left running."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"response": f"text {i}"} for i in range(4000)])
    (tmp_path / "slow_start.py").write_text(  # slow to import in a worker only, as a model that loads
        "import multiprocessing, time\n"
        "if multiprocessing.parent_process() is not None:\n    time.sleep(600)\n"
        "def score(texts):\n    return [0.5] * len(texts)\n")
    spec = str(tmp_path / "slow_start.py:score") if scorer == "slow_start:score" else scorers(scorer)
    cmd = [sys.executable, "-m", "rcond.cli", "preprocess", str(src), "--format", "scored", "--out",
           str(tmp_path / "c"), "--tokenizer", "train:300", "--no-progress", "--score-with", spec,
           "--score-workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            cwd=tmp_path)
    children: set[int] = set()  # every descendant seen: forkserver, resource tracker, the workers
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            children |= descendants(proc.pid)
            if sum(parent_of(pid) in children for pid in children) >= 2:  # the workers, forked by the server
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        time.sleep(1.0)  # scoring under way
        children |= descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        interrupted = time.time()
        out, err = proc.communicate(timeout=60)
        took = time.time() - interrupted
        left = outlived(children)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the command's group
    assert proc.returncode == 130, err
    assert took < 20, f"exit took {took:.1f} s after the Ctrl-C"
    assert not (tmp_path / "c").exists()
    assert not left, "a process outlived the command"


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_a_scorer_error_names_the_records_not_positions_in_a_call(tmp_path, capsys, scorers, workers, suffix):
    """Record 250 of 300 holds 'bad'. A score that is no number names its line; a scorer that
    raises names the lines of the records its failed call scored (--score-batch 100: one process
    calls on records 201-300; two workers on 201-250, for the record path reads rounds of 2 x 100
    records and cuts each into 2 calls, and a JSONL chunk whose scoring failed is scored again on
    that path to name its records)."""
    rows = [{"response": f"{'bad' if i == 250 else 'good'} text {i}"} for i in range(1, 301)]
    if suffix == "jsonl":
        src = write_jsonl(tmp_path / "in.jsonl", rows)
    else:
        src = tmp_path / "in.csv"
        src.write_text("response\n" + "".join(f"{r['response']}\n" for r in rows))
    def at(record: int) -> str:  # a CSV row is named with its line too (the header is line 1)
        return f"{src}:row {record} (line {record + 1})" if suffix == "csv" else f"{src}:{record}"

    args = ["preprocess", str(src), "--format", "scored", "--out", str(tmp_path / "c"), "--tokenizer", "train:300",
            "--no-progress", "--score-batch", "100", "--score-workers", workers]
    assert main([*args, "--score-with", scorers("word_for_bad")]) == 2
    assert f"{at(250)}: scorer '{scorers('word_for_bad')}': its score for 'bad text 250' is not a number: 'oops'" in \
        capsys.readouterr().err
    assert main([*args, "--score-with", scorers("boom_on_bad")]) == 2
    err = capsys.readouterr().err
    last = 300 if workers == "1" else 250
    assert f"{at(201)} to {at(last)}: scorer '{scorers('boom_on_bad')}' failed on " \
           f"the texts of these records: ValueError: cannot score that" in err
    assert not (tmp_path / "c").exists()


LAZY = '''
import multiprocessing, sys

def __getattr__(name):  # a module that builds its scorer lazily, on first use (a model it loads)
    if name != "score":
        raise AttributeError(name)
    if multiprocessing.parent_process() is not None:
        {failure}
    return lambda texts: [0.5] * len(texts)
'''


@pytest.mark.parametrize("failure,cause", [('raise RuntimeError("no GPU in this worker")',
                                            "RuntimeError: no GPU in this worker"),
                                           ('sys.exit("no GPU in this worker")', "SystemExit: no GPU in this worker")])
def test_a_scorer_that_fails_to_build_in_a_worker_after_its_import_names_the_cause(tmp_path, failure, cause):
    """Built lazily (a module __getattr__), a scorer can fail in a worker after its module
    imported: the pool's error names the spec and the cause, SystemExit too (which would
    otherwise end the worker's start, leaving only 'a worker process failed to start')."""
    path = tmp_path / "lazy.py"
    path.write_text(LAZY.format(failure=failure))
    spec = f"{path}:score"
    with pytest.raises(ScorerError, match=re.escape(f"scorer {spec!r} could not be built in a --score-workers "
                                                    f"process: {cause}")):
        with ScorerPool(spec, 2):
            pytest.fail("the pool was entered")


def test_a_pool_used_outside_its_with_block_says_so(scorers):
    """Before it is entered and after it is left, a pool refuses work with its own message (not
    the executor's 'cannot schedule new futures after shutdown')."""
    pool = ScorerPool(scorers("length"), 2)
    with pytest.raises(RuntimeError, match="ScorerPool used outside its 'with' block"):
        pool.values(["a"])
    with pool:
        assert pool.values(["abc"]) == [3.0]
    with pytest.raises(RuntimeError, match="ScorerPool used outside its 'with' block"):
        pool.values(["a"])


def test_a_pool_left_leaves_no_pipe_open(scorers):
    """The pipe that ends the workers with their owner is closed at both ends when the pool is
    left, even while the pool object lives on: a process that builds many corpora does not gather
    open files. Counted after a first pool, which starts the forkserver and resource tracker."""
    with ScorerPool(scorers("length"), 2):
        pass
    before = sorted(os.listdir("/proc/self/fd"))
    pool = ScorerPool(scorers("length"), 2)
    with pool:
        assert pool.values(["ab"]) == [2.0]
    assert sorted(os.listdir("/proc/self/fd")) == before


def altered_start(monkeypatch, **parts):
    """Pools start from worker_context()'s context with ``parts`` (name: function of the real
    context) in place of its own: a way to reach failures that take minutes, or a dead forkserver."""
    import rcond.parallel as parallel

    start = parallel.worker_context

    class Altered:
        def __init__(self, context):
            self._context = context

        def __getattr__(self, name):
            return (lambda *a, **kw: parts[name](self._context, *a, **kw)) if name in parts else \
                getattr(self._context, name)

    monkeypatch.setattr(parallel, "worker_context", lambda: Altered(start()))


def test_workers_that_do_not_all_start_in_time_are_a_clear_error(scorers, monkeypatch):
    """The start barrier breaks when a worker is not up within START_TIMEOUT (600 s: a machine
    short of memory, a scorer slow to build in one worker). Waiting that long is no test, so the
    barrier is handed out broken; the workers' BrokenBarrierError comes back as the pool's
    error, naming how many workers and what to do."""
    from rcond.scorer_pool import START_TIMEOUT

    def broken_barrier(context, parties):
        barrier = context.Barrier(parties)
        barrier.abort()
        return barrier

    altered_start(monkeypatch, Barrier=broken_barrier)
    spec = scorers("length")
    with pytest.raises(ScorerError, match=re.escape(f"scorer {spec!r}: its 2 worker processes did not all start within "
                                                    f"{START_TIMEOUT:.0f} s; use fewer --score-workers")):
        with ScorerPool(spec, 2):
            pytest.fail("the pool was entered")


def test_a_worker_the_forkserver_cannot_start_is_a_scorer_error(scorers, monkeypatch):
    """A process start that loses its connection to the forkserver (killed meanwhile) raises a
    ConnectionError or EOFError, not BrokenProcessPool: the pool's error all the same."""
    def unreachable(context, *args, **kwargs):
        process = context.Process(*args, **kwargs)
        process.start = lambda: (_ for _ in ()).throw(ConnectionRefusedError("the forkserver is gone"))
        return process

    altered_start(monkeypatch, Process=unreachable)
    with pytest.raises(ScorerError, match=r"a worker process failed to start \(ConnectionRefusedError: the forkserver "
                                          r"is gone\)"):
        with ScorerPool(scorers("length"), 2):
            pytest.fail("the pool was entered")


ONE_WORKER_FAILS = '''
import multiprocessing, os, time
if multiprocessing.parent_process() is not None:  # the first worker to import this fails, slowly; the other builds
    try:
        os.close(os.open({flag!r}, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        pass
    else:
        time.sleep(1.0)  # the other worker meanwhile takes a start task and waits at the barrier
        raise RuntimeError("no GPU left for this worker")

def score(texts):
    return [0.5] * len(texts)
'''


def test_one_worker_that_cannot_build_the_scorer_fails_the_pool_at_once(tmp_path):
    """The other worker built its scorer and waits at the start barrier (up to START_TIMEOUT,
    600 s) for the one that failed: the pool raises the failure at once, not when it gives up."""
    path = tmp_path / "one_fails.py"
    path.write_text(ONE_WORKER_FAILS.format(flag=str(tmp_path / "failed")))

    def enter():
        with ScorerPool(f"{path}:score", 2):
            pass

    error = within(30, enter)
    assert isinstance(error, ScorerError) and "no GPU left for this worker (in a --score-workers process)" in str(error)


def test_an_error_leaving_the_pool_stops_a_worker_mid_batch(scorers):
    """An error (a bad record, Ctrl-C) leaves the pool while a worker is 10 s into a batch whose
    scores nobody will use: the worker is stopped at once, not waited for."""
    def fail_mid_batch():
        with ScorerPool(scorers("sleepy"), 2) as pool:
            pool.submit(["a"])
            time.sleep(0.5)  # the worker in its call
            raise ValueError("a bad record")

    error = within(5, fail_mid_batch)
    assert isinstance(error, ValueError) and str(error) == "a bad record"


def test_a_scorer_error_counts_positions_across_calls_and_parts(scorers):
    """Texts 0-9, text 7 'bad'. One process, calls of 4: the call that fails holds texts 4-7, and
    the one score that is no number is text 7. A pool of 2 cuts 10 texts, --score-batch 4, at 3
    and 6: the failing part holds texts 6-9. Positions count in the whole list, not in the call."""
    texts = [f"good {i}" for i in range(10)]
    texts[7] = "bad 7"
    for name, where in (("boom_on_bad", (4, 7)), ("word_for_bad", (7, 7))):
        with pytest.raises(ScorerError) as raised:
            scores_in_batches(get_scorer(scorers(name)), texts, 4)
        assert raised.value.texts == where, name
    with ScorerPool(scorers("boom_on_bad"), 2) as pool:
        with pytest.raises(ScorerError) as raised:
            scores_in_batches(pool, texts, 4)
        assert raised.value.texts == (6, 9)

