"""rcond.background: prefetching in a thread, side work in the background, the paused collector."""

import pytest


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
