"""Pass 1 of the corpus build in worker processes: encode and condition batches in parallel.

In one process the build's Python-level work (turning encodings into id arrays, conditioning,
packing) holds the GIL, so however many cores the tokenizer spreads over, that work runs one batch
after another and bounds the build's speed. Here ``workers`` processes each take whole part
batches: encode the distinct texts (:func:`rcond.conditioning.encode_distinct`, each worker with a
cache of recurring texts of its own), flatten the ids and build the batch's documents and pieces
(:func:`rcond.conditioning.condition`). This process keeps only what must follow record order: it
reads, draws each batch's unconditional draws from the seeded stream before sending it, numbers
the returned markers corpus-wide (``ConditionedStream.adopt``) and packs. Batches come back in the
order they went out, so the corpus is byte-identical to the one-process build with the same
options.

Workers start from a *forkserver* (``spawn`` where there is none) with :mod:`rcond.parallel`
preloaded: never a fork of this process, whose threads (reader, fingerprints) may hold locks. As
with any spawned worker, each imports the calling script as ``__mp_main__``, so a script that
builds with workers needs the ``if __name__ == "__main__":`` guard. Starting them costs a few
tenths of a second (mostly imports), so they pay off on large corpora, not on small ones (2 cores,
2 workers: slower at 20k reviews, on par at 80k). Each worker encodes on ``cores // workers``
threads (the cores this process may run on); at most two batches per worker are in flight, so
memory stays flat. A worker ignores Ctrl-C, and the forkserver is started deaf to it
(:func:`worker_context`): the build stops them, and a build killed outright takes them with it
(:func:`exit_with_owner`). A worker that dies (killed, out of memory) stops the build with a
:class:`CorpusError`. All workers are started before the first
batch goes out (:func:`_all_started`): the executor otherwise starts them one at a time inside
``submit``, and one it starts while it is tearing itself down after a worker died is never
stopped, so its shutdown waits for it forever (seen with CPython 3.11's ProcessPoolExecutor).
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable, Iterator

import numpy as np

from .atomic import interrupts_deferred
from .background import prefetched
from .conditioning import Conditioned, ConditionedStream, RecurringTexts, condition, encode_distinct
from .content_encoder import ContentEncoder, faithful_copy
from .packing import CorpusError, PackOptions, Pool
from .sources import PartBatch

IN_FLIGHT_PER_WORKER = 2
_WORKER: dict = {}  # in a worker process: its tokenizer, cache, eos id, options and start barrier (_start_worker)
STARTUP_TIMEOUT = 300  # seconds a worker waits for the others to start before the build gives up


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def too_many_processes(flag: str, n: int) -> str | None:
    """Why ``n`` worker processes asked for by ``flag`` are too many (more than 4 per core, and more
    than 8 however few the cores), or None; the caller raises its own error, with its own reason."""
    cores = usable_cores()
    if n > max(8, 4 * cores):
        return f"{flag} {n} is more than 4 per core ({cores} cores here: at most {max(8, 4 * cores)})"
    return None


def worker_context():
    """The multiprocessing context every rcond worker pool starts from: a *forkserver* (``spawn``
    where there is none) that has imported this module, and with it the corpus and scorer code,
    once; never a fork of the caller, whose threads may hold locks."""
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["rcond.parallel"])
        _start_forkserver_deaf_to_ctrl_c()
    return context


def owner_line(context) -> tuple:
    """A pipe (read end, write end) that ties a pool's workers to its owner: the owner keeps the
    write end open while the pool lives and gives each worker the read end for
    :func:`exit_with_owner`. No one else holds the write end (the forkserver and the resource
    tracker started before it was made), so the owner's end, even by SIGKILL or the kernel's
    out-of-memory killer, closes it."""
    return context.Pipe(duplex=False)


def exit_with_owner(line) -> None:
    """In a worker: end this process once the read end of :func:`owner_line` reaches end of file.
    Without it, a pool whose owner was killed outright lived on: idle workers waiting for work
    that would never come, one blocked writing a result no one reads, all holding the owner's
    stdout and stderr open (``rcond preprocess ... | tee log`` never ended)."""

    def wait() -> None:
        try:
            line.recv_bytes()  # nothing is ever sent: this returns at end of file
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=wait, name="rcond-owner-line", daemon=True).start()


def _start_forkserver_deaf_to_ctrl_c() -> None:
    """Start the forkserver, if it is not running, with SIGINT blocked in this thread: the server
    inherits the blocked signal, so a Ctrl-C while it imports (the first second of a pooled build)
    stays pending until it ignores SIGINT, which discards it, instead of ending the server with a
    KeyboardInterrupt traceback printed over the build's own one-line message. Workers forked from
    it inherit the block too; they ignore Ctrl-C anyway (the pool's owner stops them). This thread
    still sees the signal: a signal sent to the process goes to a thread that does not block it,
    and Python acts on it in the main thread once the block is lifted."""
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()  # first: starting it unblocks SIGINT in this thread
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _start_worker(tokenizer_json: str, eos_id: int, opts: PackOptions, threads: int, started, line) -> None:
    """A worker's initializer: its own copy of the tokenizer and an encoder of it, as the
    one-process build has (:func:`rcond.conditioning.encodings`), on ``threads`` threads; Ctrl-C is
    left to the parent, and the parent's end ends it (:func:`exit_with_owner`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_owner(line)
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # read when the tokenizer first goes parallel
    if threads == 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    encoder = ContentEncoder(Tokenizer.from_str(tokenizer_json))
    _WORKER.update(encoder=encoder, cache=RecurringTexts(), eos_id=eos_id, opts=opts, started=started)


def _all_started() -> None:
    """A worker's first task: wait until every worker of the pool runs one (``started``, a barrier
    of the pool's size). Its task held, a worker is not idle, so each of these submits makes the
    executor start one more worker."""
    _WORKER["started"].wait(timeout=STARTUP_TIMEOUT)


def _condition_in_worker(parts: PartBatch, draws: np.ndarray) -> Conditioned:
    offsets, flat = encode_distinct(parts.texts, _WORKER["encoder"], _WORKER["cache"])
    return condition(parts, offsets, flat, draws, _WORKER["eos_id"], _WORKER["opts"])


def conditioned_in_workers(batches: Iterable[PartBatch], tokenizer, stream: ConditionedStream,
                           workers: int) -> Iterator[tuple[PartBatch, Pool, int]]:
    """Each part batch, in order, with its pool (markers numbered corpus-wide) and its content
    tokens, conditioned by ``workers`` processes."""
    try:
        tokenizer_json = tokenizer.backend_tokenizer.to_str()
    except Exception as e:  # a custom (Python) normalizer or pre-tokenizer cannot be sent to a worker
        raise CorpusError(f"--workers {workers}: the tokenizer cannot be serialised for worker processes ({e}); "
                          "use --workers 1") from None
    if faithful_copy(tokenizer.backend_tokenizer, tokenizer_json) is None:
        raise CorpusError(f"--workers {workers}: each worker reads the tokenizer back from its JSON, and this "
                          "tokenizer cannot be read back so, or would then encode otherwise (a tokenizer built in "
                          "memory: Unigram scores set from Python floats, a special token added again as an "
                          "ordinary one); save it and give its folder as --tokenizer, or use --workers 1")
    threads = max(1, usable_cores() // workers)
    context = worker_context()
    line, held = owner_line(context)
    executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                   initargs=(tokenizer_json, stream.eos_id, stream.opts, threads,
                                             context.Barrier(workers), line))
    pending: collections.deque = collections.deque()  # (parts, future), oldest first

    def collect() -> tuple[PartBatch, Pool, int]:
        parts, future = pending.popleft()
        try:
            c = future.result()
        except BrokenProcessPool as e:
            raise _died(e) from None
        return parts, stream.adopt(c), c.tokens

    try:
        with interrupts_deferred():  # each submit here starts a worker: stopped half-way, it would outlive us
            started = [executor.submit(_all_started) for _ in range(workers)]
        wait_started(started)
        for parts in prefetched(batches):
            try:  # every worker runs already, so a submit starts none
                future = executor.submit(_condition_in_worker, parts, stream.draw(parts))
            except BrokenProcessPool as e:  # a worker died after the last batch was handed out
                raise _died(e) from None
            pending.append((parts, future))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                yield collect()
        while pending:
            yield collect()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        held.close()
        line.close()


def wait_started(started: list[Future]) -> None:
    """Wait for every worker's :func:`_all_started`; a worker that died, or a pool whose workers
    did not all start within ``STARTUP_TIMEOUT`` (the barrier broke), is a :class:`CorpusError`."""
    for future in started:
        try:
            future.result()
        except BrokenProcessPool as e:
            raise _died(e) from None
        except threading.BrokenBarrierError:
            raise CorpusError(f"the {len(started)} worker processes of the build did not all start within "
                              f"{STARTUP_TIMEOUT} s (a machine short of memory or cores?); try fewer --workers") from None


def _died(e: BrokenProcessPool) -> CorpusError:
    return CorpusError(f"a worker process of the build died ({e}); try fewer --workers")
