"""The served model's readers-writer lock (appliance/service/modellock.py): who runs beside whom."""

from __future__ import annotations

import threading
import time

import pytest

from appliance.service.modellock import ModelLock

pytestmark = pytest.mark.unit


def _holding(side: object, release: threading.Event, entered: threading.Event) -> threading.Thread:
    def hold() -> None:
        with side:  # type: ignore[attr-defined]
            entered.set()
            release.wait(10)

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    return t


def _enters_within(side: object, seconds: float) -> bool:
    entered = threading.Event()
    release = threading.Event()
    _holding(side, release, entered)
    ok = entered.wait(seconds)
    release.set()
    return ok


def test_readers_share_the_lock() -> None:
    lock = ModelLock()
    release, first = threading.Event(), threading.Event()
    _holding(lock.shared, release, first)
    assert first.wait(5)
    assert _enters_within(lock.shared, 2.0)  # a capture does not hold up a request
    release.set()


def test_a_writer_excludes_readers_and_readers_exclude_a_writer() -> None:
    lock = ModelLock()
    release, writing = threading.Event(), threading.Event()
    t = _holding(lock.exclusive, release, writing)
    assert writing.wait(5)
    assert not _enters_within(lock.shared, 0.3)  # no request sees a half-applied step
    release.set()
    t.join(5)
    release2, reading = threading.Event(), threading.Event()
    r = _holding(lock.shared, release2, reading)
    assert reading.wait(5)
    assert not _enters_within(lock.exclusive, 0.3)  # no step while a capture copies the state
    release2.set()
    r.join(5)
    assert _enters_within(lock.exclusive, 2.0)


def test_a_waiting_writer_is_not_starved_by_a_stream_of_readers() -> None:
    lock = ModelLock()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with lock.shared:
                time.sleep(0.005)

    readers = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
    for t in readers:
        t.start()
    time.sleep(0.05)
    got = threading.Event()

    def writer() -> None:
        with lock.exclusive:
            got.set()

    threading.Thread(target=writer, daemon=True).start()
    assert got.wait(2.0), "an adaptation step waited forever behind overlapping requests"
    stop.set()
    for t in readers:
        t.join(5)


def test_a_side_released_by_an_exception_leaves_the_lock_usable() -> None:
    lock = ModelLock()
    for side in (lock.shared, lock.exclusive):
        with pytest.raises(RuntimeError), side:
            raise RuntimeError("a failing step or request")
    assert _enters_within(lock.exclusive, 1.0) and _enters_within(lock.shared, 1.0)
