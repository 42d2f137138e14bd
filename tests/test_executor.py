"""AdaptiveExecutor beyond the shared concurrent.futures semantics: bad input, stats(),
workers added and retired while tasks run, workers that fail to start, the worker stack,
fork(), and how workers appear to threading and to the ledger.

Invariants only: timeouts guard against hangs and never bound a speed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import logging
import itertools
import math
import threading
import time
from typing import Any, Callable, Dict

import pytest

import gil_adapt
from gil_adapt import AdaptiveExecutor
from gil_adapt import executor as executor_mod

HANG = 30.0


def poll(pred: Callable[[], bool], timeout: float = HANG) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller off: the size changes only when a test says so."""
    monkeypatch.setenv("GIL_ADAPT_CONTROLLER", "0")


# ---- bad input: raised at the call, state unchanged -----------------------------------

@pytest.mark.parametrize("kwargs, exc", [
    (dict(max_workers=0), ValueError),
    (dict(max_workers=-3), ValueError),
    (dict(min_workers=0), ValueError),
    (dict(min_workers=-1), ValueError),
    (dict(max_workers=2, min_workers=3), ValueError),
    (dict(max_workers="4"), TypeError),
    (dict(max_workers=2.0), TypeError),
    (dict(min_workers=True), TypeError),
    (dict(initializer=42), TypeError),
    (dict(thread_name_prefix=7), TypeError),
    (dict(mode="fibers"), ValueError),
])
def test_bad_arguments(kwargs: Dict[str, Any], exc: type) -> None:
    before = threading.active_count()
    with pytest.raises(exc):
        AdaptiveExecutor(**kwargs)
    assert threading.active_count() == before


def test_mode_error_names_the_modes() -> None:
    with pytest.raises(ValueError, match="'auto', 'threads', 'processes', 'asyncio'"):
        AdaptiveExecutor(mode="fibers")


def test_submit_bad_input_leaves_state_unchanged() -> None:
    with AdaptiveExecutor(2) as ex:
        with pytest.raises(TypeError):
            ex.submit(42)
        with pytest.raises(TypeError):
            ex.submit()
        with pytest.raises(TypeError):
            AdaptiveExecutor.submit(ex)
        assert ex.stats()["submitted"] == 0
        assert ex.submit(pow, 2, 5).result(timeout=HANG) == 32
        assert ex.stats()["submitted"] == 1


def test_explicit_bounds_respected(fixed: None) -> None:
    with AdaptiveExecutor(3, min_workers=2) as ex:
        gate = threading.Event()
        for _ in range(20):
            ex.submit(gate.wait, HANG)
        assert poll(lambda: ex.stats()["workers"] == 3)
        s = ex.stats()
        assert (s["min_workers"], s["max_workers"]) == (2, 3)
        ex._pool.set_target(50)  # clamped to max_workers
        assert ex.stats()["target_workers"] == 3
        gate.set()


def test_default_max_workers_is_bounded() -> None:
    n = executor_mod.default_max_workers()
    assert 1 <= n <= executor_mod.MAX_DEFAULT_WORKERS
    with AdaptiveExecutor() as ex:
        assert ex.stats()["max_workers"] == n
    with AdaptiveExecutor(min_workers=n + 1) as ex:  # the floor wins over the default
        assert ex.stats()["max_workers"] == n + 1


# ---- stats ------------------------------------------------------------------------------

def test_stats_contents() -> None:
    with AdaptiveExecutor(4) as ex:
        list(ex.map(abs, range(100)))
    s = ex.stats()  # after shutdown(wait=True): every worker is through its last task
    for key in ("workers", "target_workers", "beta", "throughput", "queue_length",
                "decisions", "last_reason", "last_decision", "mode", "stack_size"):
        assert key in s, key
    assert set(s["decisions"]) >= {"grow", "shrink", "veto"}
    assert s["submitted"] == s["completed"] == 100
    assert s["queue_length"] == 0 and s["mode"] == "threads"
    assert s["beta"] is None or 0.0 <= s["beta"] <= 1.0
    assert s["throughput"] >= 0.0
    assert isinstance(s["last_reason"], str)


def _window_while(task: Callable[[], Any], workers: int) -> Dict[str, Any]:
    """The pool's last window while each of `workers` workers runs `task` in a loop (one
    task that does not finish during the windows)."""
    with AdaptiveExecutor(workers, min_workers=workers) as ex:
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                task()

        futures = [ex.submit(loop) for _ in range(workers)]
        try:
            assert poll(lambda: ex.stats()["busy"] == workers)
            start = ex.stats()["windows"]
            assert poll(lambda: ex.stats()["windows"] >= start + 2)
            return ex.stats()["window"]
        finally:
            stop.set()
            for f in futures:
                f.result(timeout=HANG)


def test_window_gil_busy() -> None:
    """The workers' GIL-busy share: near 1 while they run Python, near 0 while they sleep
    (in-flight tasks count: these never finish during the windows)."""
    gil_adapt.install()
    if gil_adapt.capabilities()["gil_wait"] != "exact":
        pytest.skip("no GIL hook here: gil_busy is unknown (None)")

    def spin() -> None:
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass

    busy = _window_while(spin, 2)["gil_busy"]
    idle = _window_while(lambda: time.sleep(0.002), 2)["gil_busy"]
    assert busy is not None and idle is not None
    assert 0.6 <= busy <= 1.0, busy
    assert 0.0 <= idle <= 0.3, idle


def test_window_cpu_busy() -> None:
    """The cores' busy share: the process's CPU over the window and the usable cores —
    one worker spinning keeps one core busy, workers that sleep keep none."""
    def spin() -> None:
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass

    w = _window_while(spin, 1)
    idle = _window_while(lambda: time.sleep(0.002), 2)["cpu_busy"]
    cores = w["usable_cores"]
    assert w["cpu_busy"] is not None and idle is not None
    assert 0.5 / cores <= w["cpu_busy"] <= 1.0, (w["cpu_busy"], cores)
    assert 0.0 <= idle <= 0.2, idle


def test_window_task_gil_held_spread() -> None:
    """The spread of the tasks' GIL-held time over a window: tasks that alternate 1 ms and
    3 ms of Python hold it 2 ms on average with a standard deviation of 1 ms."""
    gil_adapt.install()
    if not gil_adapt.capabilities()["gil_wait"] == "exact":
        pytest.skip("no exact GIL figures here")
    turn = itertools.count()

    def spin() -> None:
        end = time.perf_counter() + (0.001 if next(turn) % 2 else 0.003)
        while time.perf_counter() < end:
            pass

    with AdaptiveExecutor(1, min_workers=1) as ex:
        futures = [ex.submit(spin) for _ in range(400)]  # queued: one worker, never idle
        try:
            start = ex.stats()["windows"]
            assert poll(lambda: ex.stats()["windows"] >= start + 3)
            w = ex.stats()["window"]
        finally:
            for f in futures:
                f.cancel()
    # (on a loaded machine a worker descheduled between tasks holds the GIL longer)
    assert w["completed"] >= 8, w
    assert 0.0017 <= w["task_gil_held_s"] <= 0.006, w
    assert 0.0006 <= w["task_gil_held_sd"] <= 0.002, w


def test_stats_after_shutdown() -> None:
    ex = AdaptiveExecutor(2)
    ex.submit(abs, -1).result(timeout=HANG)
    ex.shutdown(wait=True)
    s = ex.stats()
    assert s["shutdown"] is True and s["workers"] == 0


def test_future_lock_parts_are_out_of_the_collectors_way() -> None:
    """A future's RLock and the methods its Condition binds to it (containers that cannot
    be in a cycle) are untracked; what holds the program's objects stays tracked, and
    the future works as any other (wait, as_completed, result)."""
    import concurrent.futures as cf
    import gc

    with AdaptiveExecutor(2) as ex:
        f = ex.submit(abs, -3)
        cond = f._condition
        lock_parts = [cond._lock, cond.acquire, cond.release, cond._release_save,
                      cond._acquire_restore, cond._is_owned]
        assert not any(gc.is_tracked(o) for o in lock_parts)
        kept = [f, cond, f._waiters, f._done_callbacks, cond._waiters]
        assert all(gc.is_tracked(o) for o in kept)
        assert cf.wait([f], timeout=HANG).not_done == set()
        assert next(cf.as_completed([f], timeout=HANG)) is f and f.result() == 3


# ---- workers added and retired while tasks run ----------------------------------------

def test_workers_grow_and_retire_while_tasks_run(fixed: None) -> None:
    with AdaptiveExecutor(16) as ex:
        ex._pool.set_target(1)
        done = [0] * 400
        lock = threading.Lock()

        def task(i: int) -> int:
            time.sleep(0.002)
            with lock:
                done[i] += 1
            return i

        futures = [ex.submit(task, i) for i in range(400)]
        assert poll(lambda: ex.stats()["workers"] == 1)
        ex._pool.set_target(8)
        assert poll(lambda: ex.stats()["workers"] == 8)
        assert ex.stats()["queue_length"] > 0  # grew while tasks were waiting
        ex._pool.set_target(2)
        assert poll(lambda: ex.stats()["workers"] == 2 and ex.stats()["starting"] == 0)
        assert [f.result(timeout=HANG) for f in futures] == list(range(400))
        assert done == [1] * 400
        s = ex.stats()
        assert s["workers_retired"] >= 6


def test_no_task_lost_or_duplicated_while_resizing(fixed: None) -> None:
    n = 12_000
    counts = [0] * n
    lock = threading.Lock()

    def task(i: int) -> int:
        with lock:
            counts[i] += 1
        return i

    with AdaptiveExecutor(12) as ex:
        stop = threading.Event()

        def resize() -> None:
            k = 0
            while not stop.is_set():
                ex._pool.set_target(1 + (k * 5) % 12)
                k += 1
                time.sleep(0.001)

        resizer = threading.Thread(target=resize)
        resizer.start()
        try:
            futures = [ex.submit(task, i) for i in range(n)]
            results = [f.result(timeout=HANG) for f in futures]
        finally:
            stop.set()
            resizer.join()
    s = ex.stats()
    assert results == list(range(n))
    assert counts == [1] * n
    assert s["submitted"] == s["completed"] == n
    assert s["workers_started"] >= 1 and s["workers_retired"] == s["workers_started"]


def test_idle_workers_wait_without_cpu_or_gil() -> None:
    with AdaptiveExecutor(4) as ex:
        list(ex.map(abs, range(20)))
        assert poll(lambda: ex.stats()["idle"] == ex.stats()["workers"])
        # The main thread runs Python freely: idle workers do not take the GIL.
        t0 = time.thread_time()
        x = sum(i for i in range(200_000))
        assert x > 0 and time.thread_time() > t0


# ---- workers that cannot start ----------------------------------------------------------

def test_worker_start_failure_loses_no_task(fixed: None) -> None:
    with AdaptiveExecutor(8) as ex:
        gate = threading.Event()
        first = ex.submit(gate.wait, HANG)
        assert poll(lambda: ex.stats()["workers"] == 1)
        ex._pool.inject_start_failures(3)
        futures = [ex.submit(pow, i, 2) for i in range(100)]
        gate.set()
        assert [f.result(timeout=HANG) for f in futures] == [i * i for i in range(100)]
        assert first.result(timeout=HANG) is True
        s = ex.stats()
        assert s["start_failures"] == 3
        assert s["last_start_error"]


def test_no_worker_startable_raises_at_submit(fixed: None) -> None:
    with AdaptiveExecutor(4) as ex:
        ex._pool.inject_start_failures(1)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            ex.submit(pow, 2, 2)
        s = ex.stats()
        assert s["submitted"] == 0 and s["queue_length"] == 0
        assert ex.submit(pow, 2, 3).result(timeout=HANG) == 8


def test_initializers_that_wait_for_each_other_all_start() -> None:
    # Workers start a few at a time (pool.h: start_burst); one that holds the GIL lets the
    # next start before its initializer runs, so initializers meeting at a barrier of 6
    # (more than start at once) are not deadlocked by the staggered start.
    barrier = threading.Barrier(6, timeout=HANG)
    with AdaptiveExecutor(6, min_workers=6, initializer=barrier.wait) as ex:
        go = threading.Barrier(6, timeout=HANG)  # tasks hold their workers: 6 are needed
        names = {f.result(timeout=HANG) for f in
                 [ex.submit(lambda: (go.wait(), threading.current_thread().name)[1])
                  for _ in range(6)]}
        assert len(names) == 6
        assert ex.stats()["start_failures"] == 0 and not ex.stats()["broken"]


@pytest.mark.parametrize("name, value", [("GIL_ADAPT_START_BURST", "two"),
                                         ("GIL_ADAPT_START_BURST", "-1"),
                                         ("GIL_ADAPT_CALM", "x"), ("GIL_ADAPT_CALM", "-3"),
                                         ("GIL_ADAPT_CALM_ABOVE", "-2"),
                                         ("GIL_ADAPT_CALM_ABOVE", "abc"),
                                         ("GIL_ADAPT_CONTROLLER", "maybe")])
def test_bad_environment_settings_warn_and_use_the_default(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, name: str,
        value: str) -> None:
    monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING, logger="gil_adapt")
    try:
        for _ in range(2):  # construction never breaks; one warning names the variable
            with AdaptiveExecutor(2) as ex:
                assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
                assert ex.stats()["controller"] is not None
        warned = [r for r in caplog.records if name in r.getMessage()]
        assert len(warned) == 1 and repr(value) in warned[0].getMessage()
        monkeypatch.setenv(name, "1")
        with AdaptiveExecutor(2) as ex:  # a valid value works (1 = one start at a time)
            assert list(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
    finally:
        gil_adapt.calm_gil()  # the thinning is process-wide: back to the default keep


@pytest.mark.parametrize("value, on", [("0", False), ("off", False), ("False", False),
                                       ("NO", False), ("1", True), ("on", True),
                                       ("TRUE", True), ("yes", True)])
def test_controller_switch_accepts_the_usual_spellings(monkeypatch: pytest.MonkeyPatch,
                                                       value: str, on: bool) -> None:
    monkeypatch.setenv("GIL_ADAPT_CONTROLLER", value)
    with AdaptiveExecutor(50) as ex:
        st = ex.stats()
    # on: the controller's first size (one per usable core); off: max_workers
    assert st["target_workers"] == (max(1, math.ceil(_cores())) if on else 50), st


def _cores() -> float:
    return gil_adapt._core.limits().get("usable_cores") or 1.0


def test_huge_sizes_and_infinite_timeouts_behave_as_threadpool() -> None:
    with AdaptiveExecutor(2**31) as ex:  # ThreadPoolExecutor(2**31) works too
        assert ex.submit(abs, -5).result(timeout=HANG) == 5
        assert ex._max_workers == 2**31 - 1
    with AdaptiveExecutor(2**64, min_workers=1) as ex:
        assert ex.submit(abs, -6).result(timeout=HANG) == 6
    ex = AdaptiveExecutor(2)
    ex.submit(abs, 1).result(timeout=HANG)
    ex._pool.shutdown()
    assert ex._pool.wait(float("inf")) is True  # no limit, as threading's inf timeouts
    with pytest.raises(ValueError, match="nan"):
        ex._pool.wait(float("nan"))


# ---- broken pool ------------------------------------------------------------------------

def test_initializer_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    # where ThreadPoolExecutor logs it: the concurrent.futures logger
    def init() -> None:
        raise ValueError("bad init")

    with caplog.at_level("CRITICAL", logger="concurrent.futures"):
        ex = AdaptiveExecutor(2, initializer=init)
        f = ex.submit(abs, 1)
        with pytest.raises(executor_mod.BrokenThreadPool):
            f.result(timeout=HANG)
        ex.shutdown()
    assert any("initializer" in r.getMessage() and r.name == "concurrent.futures"
               for r in caplog.records)
    assert ex.stats()["broken"] is True


# ---- worker threads as threading and the ledger see them ------------------------------

def test_worker_identity_in_threading() -> None:
    with AdaptiveExecutor(2, thread_name_prefix="idtest") as ex:
        info = ex.submit(lambda: (threading.current_thread().name,
                                  threading.current_thread().is_alive(),
                                  threading.current_thread() in threading.enumerate(),
                                  threading.get_native_id())).result(timeout=HANG)
    name, alive, listed, native = info
    assert name.startswith("idtest_") and alive and listed
    # after shutdown the worker is gone from threading's table
    assert all(t.name != name for t in threading.enumerate())


def test_idle_wait_is_booked_as_idle_not_io() -> None:
    gil_adapt.install()
    with AdaptiveExecutor(1) as ex:
        tid = ex.submit(threading.get_native_id).result(timeout=HANG)
        time.sleep(0.2)  # the worker waits for work
        snap = gil_adapt.snapshot()["threads"][tid]
        assert snap["idle_ns"] > 0.1e9
        assert snap["io_wait_ns"] < snap["idle_ns"]


def test_threading_settrace_reaches_workers() -> None:
    seen = []

    def tracer(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call" and frame.f_code.co_name == "traced_task":
            seen.append(threading.current_thread().name)
        return None

    def traced_task() -> int:
        return 1

    threading.settrace(tracer)
    try:
        with AdaptiveExecutor(1, thread_name_prefix="tr") as ex:
            assert ex.submit(traced_task).result(timeout=HANG) == 1
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    assert seen and seen[0].startswith("tr_")


# ---- stack size -----------------------------------------------------------------------

def test_worker_stack_size_defaults() -> None:
    assert executor_mod.worker_stack_size() >= 1 << 20
    with AdaptiveExecutor(1) as ex:
        assert ex.stats()["stack_size"] == executor_mod.worker_stack_size()


@pytest.mark.parametrize("probe", ["map", "sorted", "repr", "json", "python"])
def test_deep_recursion_in_worker_raises_not_crashes(probe: str) -> None:
    script = textwrap.dedent(f"""
        import json, sys
        from gil_adapt import AdaptiveExecutor
        def nested(n):
            x = []
            for _ in range(n):
                x = [x]
            return x
        def probe():
            kind = {probe!r}
            if kind == "map":
                def f(n): return list(map(f, [n + 1]))
                f(0)
            elif kind == "sorted":
                def k(x): return sorted([x + 1], key=k)
                k(0)
            elif kind == "repr":
                repr(nested(100000))
            elif kind == "json":
                json.dumps(nested(100000))
            else:
                def g(n): return g(n + 1)
                g(0)
        with AdaptiveExecutor(1) as ex:
            exc = ex.submit(probe).exception()
        print(type(exc).__name__)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, f"worker crashed (rc {out.returncode}): {out.stderr}"
    assert out.stdout.strip() == "RecursionError"


def test_user_stack_size_is_used() -> None:
    old = threading.stack_size(4 << 20)
    try:
        with AdaptiveExecutor(1) as ex:
            assert ex.stats()["stack_size"] == 4 << 20
    finally:
        threading.stack_size(old)


# ---- fork -----------------------------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork()")
def test_fork_child_gets_usable_empty_executor() -> None:
    script = textwrap.dedent("""
        import os, threading, warnings
        from gil_adapt import AdaptiveExecutor
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        ex = AdaptiveExecutor(2)
        gate = threading.Event()
        running = ex.submit(gate.wait, 30)
        queued = [ex.submit(pow, i, 2) for i in range(10)]
        pid = os.fork()
        if pid == 0:
            s = ex.stats()
            ok = s["workers"] == 0 and s["queue_length"] == 0
            ok = ok and ex.submit(pow, 3, 3).result(timeout=30) == 27
            ok = ok and ex.stats()["workers"] >= 1
            with AdaptiveExecutor(2) as other:
                ok = ok and list(other.map(abs, [-1, -2])) == [1, 2]
            ex.shutdown()
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        gate.set()
        assert [f.result(timeout=30) for f in queued] == [i * i for i in range(10)]
        ex.shutdown()
        print("child", os.waitstatus_to_exitcode(status))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "child 0"


def test_shutdown_wait_from_own_task_waits_for_the_others(fixed: None) -> None:
    ex = AdaptiveExecutor(3)
    gate = threading.Event()
    others = [ex.submit(lambda: gate.wait(HANG)) for _ in range(2)]

    def closer() -> bool:
        gate.set()
        ex.shutdown(wait=True)  # from a worker: waits for the other workers, not itself
        return all(f.done() for f in others)

    assert ex.submit(closer).result(timeout=HANG) is True
    ex.shutdown(wait=True)
    assert ex.stats()["workers"] == 0


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def test_tasks_polling_queued_tasks_do_not_deadlock_after_a_gil_bound_phase() -> None:
    # A GIL-bound phase shrinks the pool to a couple of workers; then each task submits a
    # task and busy-polls done() on it (CPU-busy, not blocked): the liveness rule still
    # sees queued work and nothing finishing, and grows the pool.
    with AdaptiveExecutor(64) as ex:
        list(ex.map(_spin, [100_000] * 300))

        def parent(i: int) -> int:
            f = ex.submit(_spin, 1000)
            deadline = time.monotonic() + HANG
            while not f.done():
                if time.monotonic() > deadline:
                    f.cancel()
                    raise TimeoutError("child never ran")
            return f.result()

        futures = [ex.submit(parent, i) for i in range(8)]
        try:
            assert [f.result(timeout=HANG) for f in futures] == [_spin(1000)] * 8
        finally:
            for f in futures:
                f.cancel()


def test_tasks_waiting_on_queued_tasks_do_not_deadlock() -> None:
    # Each task waits for the next one, queued behind it: all 8 must run at once. Whatever
    # the controller's size, the pool's liveness rule grows it (as ThreadPoolExecutor(8)
    # would simply have started 8 threads).
    n = 8
    events = [threading.Event() for _ in range(n)]

    def link(i: int) -> int:
        if i + 1 < n:
            assert events[i + 1].wait(HANG), f"task {i + 1} never ran"
        events[i].set()
        return i

    with AdaptiveExecutor(n) as ex:
        futures = [ex.submit(link, i) for i in range(n)]
        assert [f.result(timeout=HANG) for f in futures] == list(range(n))
