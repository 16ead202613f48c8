"""The served model's readers-writer lock: what may run beside what, inside the model service.

Owns: ``ModelLock`` — ``shared`` (inference, the canary, an export's capture: they only read the
weights) and ``exclusive`` (an adaptation step and its journal record, the export's changed flag:
they write the weights or must not interleave with a capture). Writer-preferring: once an
adaptation step waits, new readers wait behind it, so a stream of requests cannot starve
adaptation. Why: an export's capture copies the whole state (0.4-0.5 s for 1 GB on the 2-core
development machine); under one mutex every request arriving meanwhile waited for the copy, which
was the p99 of serving latency during a persist (issue 16, docs/performance.md). Inference requests
still run one at a time among themselves (``ServiceRuntime`` keeps its own request mutex).

Not a library: the standard library has none, and the PyPI packages for it (``readerwriterlock``,
last release 2021) add a dependency for ~40 lines whose whole behaviour the tests here pin down.
"""

from __future__ import annotations

import threading
from types import TracebackType


class _Side:
    """One side of the lock as a reusable context manager (``with lock.shared:``)."""

    def __init__(self, lock: ModelLock, exclusive: bool) -> None:
        self._lock, self._exclusive = lock, exclusive

    def __enter__(self) -> None:
        self._lock.acquire(self._exclusive)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._lock.release(self._exclusive)


class ModelLock:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0
        self.shared = _Side(self, exclusive=False)
        self.exclusive = _Side(self, exclusive=True)

    def acquire(self, exclusive: bool) -> None:
        with self._cond:
            if exclusive:
                self._writers_waiting += 1
                try:
                    self._cond.wait_for(lambda: not self._writing and self._readers == 0)
                finally:
                    self._writers_waiting -= 1
                self._writing = True
            else:
                self._cond.wait_for(lambda: not self._writing and self._writers_waiting == 0)
                self._readers += 1

    def release(self, exclusive: bool) -> None:
        with self._cond:
            if exclusive:
                self._writing = False
            else:
                self._readers -= 1
            self._cond.notify_all()
