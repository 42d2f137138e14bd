"""A threaded stress of gil_adapt for a free-threaded CPython built under ThreadSanitizer
(scripts/tsan-free-threaded.sh runs it; not collected by pytest).

Without a GIL every piece of C state shared between threads needs its own exclusion; this
drives the paths where threads meet — concurrent submits from many threads, workers
finishing and growing, cancellation, done-callbacks, map, the ledger's snapshots and the
metrics exporter read while tasks run, shutdown with work pending — and checks that no
task is lost or run twice. TSan reports any data race it sees; the exit status is 0 only
if every check held (TSan's own exit status, 66, marks reports).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter

import gil_adapt
from gil_adapt import AdaptiveExecutor, metrics

SUBMITTERS = 6
TASKS = 300


def work(i: int) -> int:
    if i % 97 == 0:
        raise ValueError(i)
    if i % 11 == 0:
        time.sleep(0.001)
    x = 0
    for k in range(200):
        x += k
    return i


def main() -> int:
    if hasattr(sys, "_is_gil_enabled") and sys._is_gil_enabled():
        print("stress: the GIL is enabled; this stress is for a free-threaded build")
        return 2
    gil_adapt.install()
    ran: Counter = Counter()
    ran_lock = threading.Lock()
    callbacks: Counter = Counter()
    failures = []

    def called(i: int) -> None:
        with ran_lock:
            callbacks[i] += 1

    def task(i: int) -> int:
        with ran_lock:
            ran[i] += 1
        return work(i)

    stop = threading.Event()

    def reader() -> None:  # the ledger, stats and the exporter, while tasks run
        while not stop.is_set():
            gil_adapt.snapshot()
            metrics.metrics_text()
            for ex in (a, b):
                ex.stats()
            time.sleep(0.005)

    a = AdaptiveExecutor(8)
    b = AdaptiveExecutor(4, mode="threads")
    rd = threading.Thread(target=reader)
    rd.start()
    try:
        def submitter(k: int) -> None:
            futures = []
            base = k * TASKS
            for i in range(base, base + TASKS):
                f = (a if i % 2 else b).submit(task, i)
                f.add_done_callback(lambda f, i=i: called(i))
                if i % 13 == 0:
                    f.cancel()
                futures.append((i, f))
            for i, f in futures:
                if f.cancelled():
                    continue
                try:
                    if f.result(timeout=120) != i:
                        failures.append(f"task {i}: wrong result")
                except ValueError:
                    if i % 97:
                        failures.append(f"task {i}: unexpected ValueError")
            got = list(a.map(work, range(base + 1, base + 50, 2), timeout=120))
            if got != list(range(base + 1, base + 50, 2)):
                failures.append(f"map of submitter {k}: wrong results")

        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(SUBMITTERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # shutdown with work pending, from another thread than the submitter
        c = AdaptiveExecutor(2)
        pending = [c.submit(time.sleep, 0.01) for _ in range(50)]
        closer = threading.Thread(target=c.shutdown, kwargs={"wait": True, "cancel_futures": True})
        closer.start()
        closer.join()
        if not all(f.done() for f in pending):
            failures.append("shutdown(cancel_futures=True) left a future pending")
    finally:
        stop.set()
        rd.join()
        a.shutdown(wait=True)
        b.shutdown(wait=True)
    twice = [i for i, n in ran.items() if n > 1]
    if twice:
        failures.append(f"{len(twice)} tasks ran twice")
    time.sleep(0.1)  # callbacks of the last futures
    missing = [i for i in range(SUBMITTERS * TASKS) if i not in callbacks]
    if missing:
        failures.append(f"{len(missing)} futures never ran their done-callback")
    for f in failures:
        print("stress: FAIL", f)
    print(f"stress: {sum(ran.values())} tasks ran, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
