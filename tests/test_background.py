"""rcond.background: prefetching in a thread, side work in the background, the paused collector."""

import pytest

from conftest import within


def test_in_background_returns_or_raises():
    from rcond.background import in_background

    assert in_background(lambda: sum(range(10)))() == 45

    def fails():
        raise OSError("cannot read input.jsonl")

    with pytest.raises(OSError, match="input.jsonl"):
        in_background(fails)()


def test_prefetched_order_errors_and_early_stop():
    import threading

    from rcond.background import prefetched

    assert list(prefetched(iter(range(100)), depth=2)) == list(range(100))

    def failing():
        yield 1
        raise ValueError("bad input at line 2")

    got = []
    with pytest.raises(ValueError, match="line 2"):
        for x in prefetched(failing()):
            got.append(x)
    assert got == [1]
    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield i

    for x in prefetched(endless(), depth=2):
        if x == 3:
            break
    assert len(produced) <= 3 + 2 + 2  # stopped soon after the consumer did
    assert not [t for t in threading.enumerate() if t.name == "rcond-reader"]
    # chained stages (as build chains reading and encoding): the same, through both threads
    produced.clear()
    for x in prefetched((2 * y for y in prefetched(endless(), depth=2)), depth=2):
        if x == 6:
            break
    assert len(produced) <= 4 + 3 * 2 + 2
    assert not [t for t in threading.enumerate() if t.name == "rcond-reader"]
    with pytest.raises(ValueError, match="line 2"):
        list(prefetched(y for y in prefetched(failing())))
    assert not [t for t in threading.enumerate() if t.name == "rcond-reader"]


def test_collector_paused_restores_state():
    import gc

    from rcond.background import collector_paused

    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # a caller's own pause is kept
    finally:
        gc.enable()


def test_prefetched_hands_on_a_base_exception_instead_of_hanging():
    """A scorer runs in the reading thread, and one that calls ``sys.exit`` raises SystemExit
    there, which is no Exception: the consumer must get it, not wait for ever for an item the
    dead producer will never put (the consumer runs in a thread here, so a hang fails the test)."""
    from rcond.background import prefetched

    def exits():
        yield 1
        raise SystemExit("scorer gave up")

    got = []

    def consume():
        for x in prefetched(exits()):
            got.append(x)

    error = within(5, consume)
    assert got == [1] and isinstance(error, SystemExit) and str(error) == "scorer gave up"


def test_prefetched_leaves_a_stuck_producer_behind_after_abandon_after(monkeypatch):
    """A consumer that stops while its producer is stuck (opening a fifo no one writes to, say)
    waits ``ABANDON_AFTER`` seconds, not until the producer gets free, and the producer left
    behind is a daemon thread, which cannot hold up the interpreter's exit."""
    import threading
    import time

    import rcond.background as background

    monkeypatch.setattr(background, "ABANDON_AFTER", 0.2)
    release = threading.Event()

    def stuck():
        yield 0
        release.wait(5)
        yield 1

    try:
        items = background.prefetched(stuck())
        assert next(items) == 0
        t0 = time.monotonic()
        items.close()  # the consumer stops: an error, Ctrl-C
        took = time.monotonic() - t0
        [left] = [t for t in threading.enumerate() if t.name == "rcond-reader"]
        assert left.daemon
        assert took < 2.0, f"the consumer waited {took:.1f} s for its stuck producer"
    finally:
        release.set()
    left.join(5)
    assert not left.is_alive()  # freed, it stops at its next item


def test_prefetched_keeps_no_reference_to_an_item_it_handed_on():
    """The consumer alone decides when an item (a batch of encodings, megabytes) is freed: once it
    drops its reference, nothing in the prefetching stage holds one."""
    import gc
    import time
    import weakref

    from rcond.background import prefetched

    class Batch:
        pass

    def batches():
        for _ in range(6):
            yield Batch()

    items = prefetched(batches(), depth=2)
    first = next(items)
    ref = weakref.ref(first)
    del first
    deadline = time.monotonic() + 2.0  # the producer moves on to later items meanwhile
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    try:
        assert ref() is None, "the first batch is still referenced after the consumer dropped it"
    finally:
        items.close()


def test_in_background_waits_for_the_result_and_passes_on_a_base_exception():
    """The waiter returns only once the work is done, and raises whatever ended it, SystemExit
    (side work calling sys.exit) too, not a KeyError for a result that never came. The thread is a
    daemon, so that it does not hold up an interrupted run."""
    import threading
    import time

    from rcond.background import in_background

    def slow():
        time.sleep(0.1)
        return "hashed"

    result = in_background(slow)
    assert [t.daemon for t in threading.enumerate() if t.name == "rcond-background"] == [True]
    assert result() == "hashed"

    def exits():
        raise SystemExit(3)

    with pytest.raises(SystemExit) as raised:
        in_background(exits)()
    assert raised.value.code == 3


def test_collector_paused_restores_the_collector_after_an_error():
    """An error inside the paused block (a bad record) must not leave the collector off for the
    rest of the process."""
    import gc

    from rcond.background import collector_paused

    assert gc.isenabled()
    with pytest.raises(ValueError, match="bad record"):
        with collector_paused():
            raise ValueError("bad record")
    assert gc.isenabled()


def test_prefetched_runs_two_items_ahead_by_default():
    """The build calls prefetched without a depth: the producer still runs only a couple of items
    ahead (its queue is bounded), so a stage reading a large input does not read it all at once."""
    import time

    from rcond.background import prefetched

    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield i

    items = prefetched(endless())
    assert next(items) == 0
    time.sleep(0.2)  # time enough to run far ahead, were the queue unbounded
    try:
        assert len(produced) <= 1 + 2 + 1  # the one handed on, two queued, one waiting to be put
    finally:
        items.close()
