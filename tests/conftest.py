"""Shared fixtures and helpers: CPU work of a known size, pinning to one core, short-lived
threads the ledger has seen exit."""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Iterator, Set

import pytest

#: This process runs without a GIL (a free-threaded build with the GIL disabled).
FREE_THREADED = not getattr(sys, "_is_gil_enabled", lambda: True)()
#: For tests of what only exists with a GIL (GIL waits, GIL-bound verdicts).
needs_gil = pytest.mark.skipif(FREE_THREADED, reason="measures the GIL: this build runs without one")


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


@pytest.fixture(scope="session")
def cpu_ms():
    """cpu_ms(ms): pure-Python CPU work of about ms milliseconds (holds the GIL)."""
    n = 200_000
    t0 = time.thread_time()
    _spin(n)
    per_ms = max(1, int(n / ((time.thread_time() - t0) * 1000.0)))

    def work(ms: float) -> None:
        _spin(int(per_ms * ms))

    return work


@pytest.fixture
def one_core() -> Iterator[int]:
    """Pins the test (and the threads it starts) to one core; restores afterwards."""
    before = os.sched_getaffinity(0)
    core = max(before)
    os.sched_setaffinity(0, {core})
    try:
        yield core
    finally:
        os.sched_setaffinity(0, before)


def short_threads_exited(n: int = 5, sleep_s: float = 0.05) -> Set[int]:
    """Starts n threads named short-0 .. short-(n-1), one after another, each sleeping
    sleep_s; returns their native ids once the ledger records every one as exited
    (join() returns before the OS thread has ended)."""
    import gil_adapt
    from gil_adapt import profiler

    tids = set()
    for i in range(n):
        t = threading.Thread(target=time.sleep, args=(sleep_s,), name=f"short-{i}")
        t.start()
        t.join()
        tids.add(t.native_id)
    alive, tid_i = profiler._I_ALIVE, profiler._I_TID
    deadline = time.monotonic() + 10
    while any(r[alive] and r[tid_i] in tids for r in gil_adapt._core.read()[1]):
        assert time.monotonic() < deadline, "the ledger still lists a joined thread as alive"
        time.sleep(0.01)
    return tids
