"""A scorer run in worker processes (``rcond preprocess --score-with S --score-workers N``).

Scorers are ordinary Python (VADER is pure Python, ~14 ms per 700-word review here), so while one
scores, the GIL holds every other thread: a corpus scored on the way in is preprocessed at the
scorer's speed, one core's worth, however many cores the machine has. :class:`ScorerPool` starts
``workers`` processes that each build the scorer from its spec (:func:`rcond.scorers.get_scorer`)
and score sub-batches side by side. :func:`scores_in_batches` is what the corpus readers call with
either kind of scorer: with a plain one, batches of ``score_batch`` texts one after another; with
a pool, the texts split into at least one contiguous sub-batch per worker (each at most
``score_batch`` texts), all scored at once and joined in order. The scores are the same as with
one process for any scorer whose score of a text does not depend on the other texts in its batch
(VADER, and any per-text function); each worker holds its own copy of the scorer, so a scorer that
loads a large model (on a GPU, say) wants one process.

Workers start from a *forkserver* (``spawn`` where there is none), never a fork of this process,
whose threads may hold locks; like :mod:`rcond.parallel`'s, a script that uses a pool needs the
``if __name__ == "__main__":`` guard. All of them start when the pool is entered, in the calling
thread with SIGINT/SIGTERM held back (:func:`rcond.atomic.interrupts_deferred`), so that a Ctrl-C
never leaves a half-started worker behind, and the readers' background threads, which submit the
work, never start one. A worker ignores Ctrl-C: the pool's owner stops the workers, once they
are idle when the work is done, and at once (terminated, mid-batch or mid-start) when an error or
an interrupt leaves the pool. A worker that dies (killed, out of memory) raises
:class:`~rcond.scorers.ScorerError`.
"""

from __future__ import annotations

import math
import signal
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

from .atomic import interrupts_deferred
from .scorers import ScorerError, get_scorer, score_values

START_TIMEOUT = 600.0  # seconds for every worker to start and build its scorer (VADER: ~0.3 s)
_WORKER: dict = {}  # in a worker process: its scorer and the start barrier (set by _start_worker)


def _start_worker(spec: str, barrier, line) -> None:
    """A worker's initializer: its own scorer; Ctrl-C is left to the pool's owner. A scorer that
    cannot be built here (a module that fails to import only in a worker: no device for it, say)
    is kept as an error for :func:`_started` to raise, with its message, to the pool's owner; an
    initializer's own exception would only end the process, the cause lost in a logged traceback."""
    from .parallel import exit_with_owner  # preloaded by the forkserver

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_owner(line)  # the owner's end, even by SIGKILL, ends this worker
    _WORKER["barrier"] = barrier
    try:
        _WORKER["scorer"] = get_scorer(spec)
    except (Exception, SystemExit) as e:
        _WORKER["error"] = f"{e} (in a --score-workers process)" if isinstance(e, ScorerError) else (
            f"scorer {spec!r} could not be built in a --score-workers process: {type(e).__name__}: {e}")


def _started() -> None:
    """Returns once every worker has started: while all wait here, none is idle, so the executor
    starts a new process for each of the ``workers`` tasks that call this."""
    if "error" in _WORKER:
        raise ScorerError(_WORKER["error"])
    _WORKER["barrier"].wait(START_TIMEOUT)


def _score_in_worker(texts: list[str]) -> list[float]:
    return score_values(_WORKER["scorer"], texts)


class ScorerPool:
    """The scorer named by ``spec`` in ``workers`` processes; a context manager that starts them
    all on entry and stops them on exit. ``name`` is the spec's, as a :class:`~rcond.scorers.Scorer`'s."""

    def __init__(self, spec: str, workers: int):
        if workers < 2:
            raise ValueError(f"a scorer pool needs at least 2 workers, got {workers}")
        self.name = get_scorer(spec).name  # a bad spec fails here, before any process starts
        self.spec, self.workers = spec, workers
        self._executor: ProcessPoolExecutor | None = None
        self._line: tuple = ()  # the pipe that ends the workers with this process (parallel.owner_line)

    def __repr__(self) -> str:
        return f"ScorerPool({self.name!r}, workers={self.workers})"

    def __enter__(self) -> "ScorerPool":
        from .parallel import owner_line, worker_context  # not at import: rcond.parallel imports the readers, which import this

        context = worker_context()
        barrier = context.Barrier(self.workers)
        self._line = owner_line(context)
        try:
            with interrupts_deferred():  # a worker stopped half-way through its start would outlive us
                self._executor = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_worker,
                                                     initargs=(self.spec, barrier, self._line[0]))
                started = [self._executor.submit(_started) for _ in range(self.workers)]
            done, _ = wait(started, return_when=FIRST_EXCEPTION)  # a worker's error ends the wait at once
            for f in done:
                f.result()
        except BaseException as e:
            barrier.abort()
            self._stop(now=True)
            if isinstance(e, (BrokenProcessPool, EOFError, ConnectionError)):
                raise ScorerError(f"scorer {self.name!r}: a worker process failed to start "
                                  f"({type(e).__name__}: {e})") from None
            if isinstance(e, threading.BrokenBarrierError):
                raise ScorerError(f"scorer {self.name!r}: its {self.workers} worker processes did not all start "
                                  f"within {START_TIMEOUT:.0f} s; use fewer --score-workers") from None
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop(now=exc_type is not None)

    def _stop(self, now: bool) -> None:
        """Stop the workers: after the work, once they are idle; on an error or Ctrl-C, at once (a
        scorer may be seconds into a batch, or minutes into loading a model, that nobody will use)."""
        if self._executor is None:
            return
        if now:  # the executor has no public way to stop busy workers before Python 3.14
            for process in list(getattr(self._executor, "_processes", {}).values()):
                process.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None
        for end in self._line:
            end.close()

    def submit(self, texts: list[str]) -> Future:
        """Score ``texts`` in a worker: a future of their scores, NaN/infinite ones left in place
        (:func:`~rcond.scorers.score_values`)."""
        if self._executor is None:
            raise RuntimeError("ScorerPool used outside its 'with' block")
        try:
            return self._executor.submit(_score_in_worker, texts)
        except BrokenProcessPool as e:  # a worker died after the last batch
            raise _died(self.name, e) from None

    def values(self, texts: Sequence[str]) -> list[float]:
        """As :meth:`rcond.scorers.Scorer.values`, in one worker."""
        return _result(self.submit(list(texts)), self.name)


def _result(future: Future, name: str) -> list[float]:
    try:
        return future.result()
    except BrokenProcessPool as e:
        raise _died(name, e) from None


def _died(name: str, e: BrokenProcessPool) -> ScorerError:
    return ScorerError(f"scorer {name!r}: a worker process died ({e}): killed, out of memory (then try fewer "
                       f"--score-workers), or the scorer ended its process")


def scores_in_batches(scorer: "ScorerPool | Callable[[list[str]], Sequence[float]]", texts: list[str],
                      score_batch: int) -> list[float]:
    """Scores of ``texts`` [T], NaN/infinite ones left in place, with the scorer called on at most
    ``score_batch`` texts at a time: one batch after another, or with a :class:`ScorerPool`, the
    texts cut into ``max(workers, ceil(T / score_batch))`` near-equal contiguous sub-batches
    scored side by side. A :class:`ScorerError` about some texts counts their positions in ``texts``."""
    if not texts:
        return []
    if not isinstance(scorer, ScorerPool):
        out: list[float] = []
        for i in range(0, len(texts), score_batch):
            try:
                out.extend(score_values(scorer, texts[i:i + score_batch]))
            except ScorerError as e:
                raise e.shifted(i) from e.__cause__
        return out
    parts = min(len(texts), max(scorer.workers, math.ceil(len(texts) / score_batch)))
    bounds = [len(texts) * k // parts for k in range(parts + 1)]                    # [parts+1] cut points
    futures = [(a, scorer.submit(texts[a:b])) for a, b in zip(bounds, bounds[1:])]
    out = []
    for a, f in futures:
        try:
            out.extend(_result(f, scorer.name))
        except ScorerError as e:
            raise e.shifted(a) from e.__cause__
    return out
