"""AsyncioBackend: the outcomes asyncio.run gives, cancellation both ways, the per-loop
concurrency limit, lag measured, a stalled loop that does not starve the other coroutines,
shutdown with and without cancel_futures, moving queued coroutines, nothing lost.

Invariants only: timeouts guard against hangs and never bound a speed.
"""
from __future__ import annotations

import asyncio
import gc
import sys
import threading
import time
import weakref
from concurrent.futures import Future, wait
from typing import Any, Callable, List, Tuple

import pytest

from backend_util import HANG, made, poll
from gil_adapt.backends import Task
from gil_adapt.backends.aio import AsyncioBackend


@pytest.fixture
def backend():
    with made(AsyncioBackend) as make:
        yield make


def submit(b: AsyncioBackend, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
    f: Future = Future()
    b.submit_coroutine(f, fn, args, kwargs)
    return f


def spin_cpu(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


# ---- outcomes: the same as asyncio.run ---------------------------------------------------

async def value() -> int:
    await asyncio.sleep(0)
    return 42


async def raises_value_error() -> None:
    await asyncio.sleep(0)
    raise ValueError("bad value")


async def raises_stop_iteration() -> None:
    raise StopIteration


async def gather_one_fails() -> List[int]:
    return await asyncio.gather(value(), raises_value_error())


async def times_out() -> None:
    await asyncio.wait_for(asyncio.sleep(10), 0.01)


async def system_exit() -> None:
    raise SystemExit(3)


async def keyboard_interrupt() -> None:
    raise KeyboardInterrupt


async def to_thread_and_loop() -> Tuple[bool, int]:
    loop = asyncio.get_running_loop()
    n = await loop.run_in_executor(None, sum, [1, 2, 3])
    return loop.is_running(), n


async def with_arguments(a: int, *, b: int) -> int:
    return a * b


def plain(x: int) -> int:
    return x + 1


async def task_group() -> None:
    async with asyncio.TaskGroup() as tg:  # type: ignore[attr-defined]
        tg.create_task(raises_value_error())
        tg.create_task(asyncio.sleep(1))


CASES = [(value, (), {}), (raises_value_error, (), {}), (raises_stop_iteration, (), {}),
         (gather_one_fails, (), {}), (times_out, (), {}), (system_exit, (), {}),
         (keyboard_interrupt, (), {}), (to_thread_and_loop, (), {}),
         (with_arguments, (6,), {"b": 7}), (with_arguments, (6,), {})]
if sys.version_info >= (3, 11):
    CASES.append((task_group, (), {}))


def _outcome_of_asyncio_run(fn: Callable[..., Any], args: Tuple[Any, ...],
                            kwargs: dict) -> Tuple[str, Any]:
    try:
        return "result", asyncio.run(fn(*args, **kwargs))
    except BaseException as exc:
        return "exception", (type(exc), str(exc))


def _outcome_of_future(f: Future) -> Tuple[str, Any]:
    wait([f], timeout=HANG)
    exc = f.exception(timeout=0)
    if exc is None:
        return "result", f.result()
    return "exception", (type(exc), str(exc))


@pytest.mark.parametrize("fn, args, kwargs", CASES, ids=[c[0].__name__ for c in CASES])
def test_same_outcome_as_asyncio_run(backend, fn, args, kwargs) -> None:
    b = backend()
    expected = _outcome_of_asyncio_run(fn, args, kwargs)
    assert _outcome_of_future(submit(b, fn, *args, **kwargs)) == expected
    assert submit(b, value).result(timeout=HANG) == 42  # the loop survived it


def test_plain_function_completes_with_its_value(backend) -> None:
    assert submit(backend(), plain, 1).result(timeout=HANG) == 2


def test_exception_is_the_coroutines_own_object(backend) -> None:
    err = ValueError("mine")

    async def raise_it() -> None:
        raise err

    assert submit(backend(), raise_it).exception(timeout=HANG) is err


# ---- cancellation both ways ----------------------------------------------------------------

def test_cancelling_the_future_cancels_the_coroutine(backend) -> None:
    b = backend()
    started, seen = threading.Event(), threading.Event()

    async def waits() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.set()
            raise

    f = submit(b, waits)
    assert started.wait(HANG)
    assert f.cancel()
    assert seen.wait(HANG)
    assert f.cancelled()
    assert poll(lambda: b.stats()["running"] == 0)


def test_coroutine_cancelled_on_the_loop_cancels_the_future(backend) -> None:
    b = backend()

    async def cancels_itself() -> None:
        raise asyncio.CancelledError

    async def cancelled_by_loop() -> None:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        await asyncio.sleep(1)

    for fn in (cancels_itself, cancelled_by_loop):
        f = submit(b, fn)
        wait([f], timeout=HANG)
        assert f.cancelled()
        with pytest.raises(asyncio.CancelledError):  # as awaiting it on a loop shows
            asyncio.run(_await_wrapped(f))


async def _await_wrapped(f: Future) -> Any:
    return await asyncio.wrap_future(f)


def test_cancelled_before_start_never_runs(backend) -> None:
    b = backend(1, max_loops=1, concurrency=1)
    gate = threading.Event()
    ran: List[int] = []

    async def blocker() -> None:
        while not gate.is_set():
            await asyncio.sleep(0.001)

    async def record(i: int) -> int:
        ran.append(i)
        return i

    first = submit(b, blocker)
    queued = [submit(b, record, i) for i in range(10)]
    assert all(f.cancel() for f in queued[::2])
    gate.set()
    first.result(timeout=HANG)
    assert [f.result(timeout=HANG) for f in queued[1::2]] == [1, 3, 5, 7, 9]
    assert sorted(ran) == [1, 3, 5, 7, 9]


# ---- concurrency limit, lag, stalls --------------------------------------------------------

def test_concurrency_limit_per_loop(backend) -> None:
    b = backend(1, max_loops=1, concurrency=3, max_concurrency=3)  # a fixed limit
    lock = threading.Lock()
    now = [0, 0]  # running, most seen

    async def counted() -> None:
        with lock:
            now[0] += 1
            now[1] = max(now[1], now[0])
        await asyncio.sleep(0.05)  # long enough for the loop to start all it may
        with lock:
            now[0] -= 1

    futures = [submit(b, counted) for _ in range(30)]
    wait(futures, timeout=HANG)
    assert all(f.done() and f.exception() is None for f in futures)
    assert now[1] == 3
    b.set_concurrency(5)
    futures = [submit(b, counted) for _ in range(30)]
    wait(futures, timeout=HANG)
    assert now[1] == 5


async def io_wait(seconds: float) -> None:
    await asyncio.sleep(seconds)


def test_limit_grows_while_more_at_once_completes_more(backend) -> None:
    """Coroutines that only wait: each doubling of the limit doubles the rate, so the
    limit grows to its maximum (and never beyond), and every task completes once."""
    b = backend(1, max_loops=1, concurrency=4, max_concurrency=32)
    futures = [submit(b, io_wait, 0.05) for _ in range(3000)]
    try:
        assert poll(lambda: b.stats()["concurrency"] == 32), b.stats()
        s = b.stats()
        assert s["concurrency_raised"] == 3 and s["concurrency_restored"] == 0, s
        assert s["running"] <= 32
    finally:
        b.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() or f.result() is None for f in futures)


_gates: "weakref.WeakKeyDictionary[Any, asyncio.Semaphore]" = weakref.WeakKeyDictionary()


async def through_a_server_of_four(seconds: float) -> None:
    """A server that serves four requests at once: more coroutines only queue there."""
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = asyncio.Semaphore(4)
    async with gate:
        await asyncio.sleep(seconds)


def test_limit_goes_back_when_more_at_once_completes_no_more(backend) -> None:
    b = backend(1, max_loops=1, concurrency=4, max_concurrency=64)
    futures = [submit(b, through_a_server_of_four, 0.02) for _ in range(4000)]
    try:
        assert poll(lambda: b.stats()["concurrency_restored"] >= 1), b.stats()
        s = b.stats()
        assert s["concurrency"] == 4 and s["concurrency_raised"] == 1, s
        time.sleep(1.0)  # held: not tried again for a while
        assert b.stats()["concurrency_raised"] == 1
    finally:
        b.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() or f.result() is None for f in futures)


async def cpu_then_wait() -> None:
    spin_cpu(0.05)  # 50 ms of CPU without yielding: the loop lags
    await asyncio.sleep(0)


def test_limit_does_not_grow_while_the_loop_lags(backend) -> None:
    b = backend(1, max_loops=1, concurrency=2, max_concurrency=64)
    futures = [submit(b, cpu_then_wait) for _ in range(60)]
    done, not_done = wait(futures, timeout=HANG)
    assert not not_done and all(f.result() is None for f in futures)
    s = b.stats()
    assert s["loops"][0]["lag_mean_ms"] > 10.0, s
    assert s["concurrency_raised"] == 0 and s["concurrency"] == 2, s


def test_a_lagging_loop_halves_a_grown_limit(backend) -> None:
    """Grown on waits, then the work turns to CPU without awaits: the loop lags and the
    limit comes down (never below its start)."""
    b = backend(1, max_loops=1, concurrency=4, max_concurrency=32)
    try:
        for _ in range(3000):
            submit(b, io_wait, 0.05)
        assert poll(lambda: b.stats()["concurrency"] == 32), b.stats()
        for t in b.take_queued():
            t.future.cancel()
        for _ in range(200):
            submit(b, cpu_then_wait)
        assert poll(lambda: b.stats()["concurrency_restored"] >= 1), b.stats()
        assert 4 <= b.stats()["concurrency"] < 32
    finally:
        b.shutdown(wait=True, cancel_futures=True)


def test_lag_of_a_loop_stalled_by_cpu_phases_is_measured(backend) -> None:
    b = backend(1, max_loops=1, lag_interval=0.01)

    async def cpu_phases() -> None:
        for _ in range(8):
            spin_cpu(0.04)  # 40 ms of CPU without yielding
            await asyncio.sleep(0)

    submit(b, cpu_phases).result(timeout=HANG)
    loop = b.stats()["loops"][0]
    # a heartbeat posted during a 40 ms CPU phase waits for the rest of it
    assert loop["lag_max_ms"] > 5.0, loop
    assert loop["cpu_share"] is not None


def test_stalled_loop_does_not_starve_the_others(backend) -> None:
    """A coroutine that never yields holds its loop; the others run on a loop started for
    them. Measured bound: the longest any of them waited in the queue (the backend's
    figure) is below the time the hog held its loop (the hog's own figure) — starved,
    they would have waited all of it."""
    b = backend(1, max_loops=2, stall_after=0.1)
    hog_started, release = threading.Event(), threading.Event()

    async def hog() -> Tuple[int, float]:
        hog_started.set()
        start = time.monotonic()
        end = start + HANG
        while not release.is_set() and time.monotonic() < end:
            pass  # CPU, no await
        return threading.get_ident(), time.monotonic() - start

    async def light(i: int) -> Tuple[int, int]:
        await asyncio.sleep(0.001)
        return i, threading.get_ident()

    hog_future = submit(b, hog)
    assert hog_started.wait(HANG)
    lights = [submit(b, light, i) for i in range(20)]
    try:
        done, _ = wait(lights, timeout=HANG)
        assert len(done) == 20, b.stats()
        assert not hog_future.done()  # they all finished while the hog still held its loop
        stats = b.stats()
    finally:
        release.set()
    hog_thread, held_s = hog_future.result(timeout=HANG)
    assert [f.result()[0] for f in lights] == list(range(20))
    assert all(f.result()[1] != hog_thread for f in lights)
    assert stats["loops_added"] == 1
    stalled = [lp for lp in stats["loops"] if lp["stalled"]]
    assert len(stalled) == 1 and stalled[0]["stalls"] >= 1
    assert stats["max_queue_wait_ms"] < held_s * 1e3


def test_extra_loops_retire_when_idle(backend) -> None:
    b = backend(1, max_loops=2, stall_after=0.05, idle_timeout=0.2)
    release = threading.Event()

    async def hog() -> None:
        while not release.is_set():
            pass

    async def light() -> int:
        return 1

    h = submit(b, hog)
    f = submit(b, light)
    assert f.result(timeout=HANG) == 1
    release.set()
    h.result(timeout=HANG)
    assert b.stats()["loops_added"] == 1
    assert poll(lambda: b.stats()["loop_count"] == 1)
    assert b.stats()["loops_retired"] == 1
    assert submit(b, light).result(timeout=HANG) == 1


# ---- shutdown, moving, counting ------------------------------------------------------------

def _gated(b: AsyncioBackend, n: int) -> Tuple[threading.Event, List[Future]]:
    gate = threading.Event()

    async def blocker() -> bool:
        while not gate.is_set():
            await asyncio.sleep(0.001)
        return True

    futures = [submit(b, blocker) for _ in range(n)]
    assert poll(lambda: b.stats()["running"] == n)
    return gate, futures


def test_shutdown_cancel_futures(backend) -> None:
    b = backend(1, max_loops=1, concurrency=2)
    gate, running = _gated(b, 2)
    ran: List[int] = []

    async def record(i: int) -> int:
        ran.append(i)
        return i

    queued = [submit(b, record, i) for i in range(2000)]
    assert b.shutdown(wait=False, cancel_futures=True) == []
    gate.set()
    b.shutdown(wait=True)
    assert all(f.result(timeout=0) for f in running)
    assert all(f.cancelled() for f in queued)
    assert ran == []
    with pytest.raises(RuntimeError, match="after shutdown"):
        submit(b, value)


def test_shutdown_runs_queued_by_default_and_stops_loops(backend) -> None:
    b = backend(2)

    async def double(i: int) -> int:
        await asyncio.sleep(0)
        return 2 * i

    futures = [submit(b, double, i) for i in range(2000)]
    b.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == [2 * i for i in range(2000)]
    assert b.stats()["loop_count"] == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("gil_adapt-asyncio")
                and t.is_alive()]


def test_queued_coroutines_move_on_shutdown_and_take_queued(backend) -> None:
    b = backend(1, max_loops=1, concurrency=1)
    gate, running = _gated(b, 1)
    queued = [submit(b, with_arguments, i, b=2) for i in range(10)]
    taken = b.take_queued(lambda t: t.args[0] % 2 == 0)
    assert [t.args[0] for t in taken] == [0, 2, 4, 6, 8]
    moved = b.shutdown(wait=False, run_queued=False)
    assert [t.args[0] for t in moved] == [1, 3, 5, 7, 9]
    assert all(isinstance(t, Task) and not t.future.done() for t in taken + moved)
    gate.set()
    b.shutdown(wait=True)
    assert running[0].result(timeout=0)
    for t in taken + moved:  # the caller runs them elsewhere: here with asyncio.run
        t.future.set_result(asyncio.run(t.fn(*t.args, **t.kwargs)))
    assert [f.result(timeout=0) for f in queued] == [2 * i for i in range(10)]


def test_nothing_lost_or_duplicated(backend) -> None:
    """4,000 coroutines on two loops, a quarter raising: each completes exactly once."""
    b = backend(2, max_loops=2, concurrency=64)
    runs = [0] * 4000
    lock = threading.Lock()

    async def task(i: int) -> int:
        with lock:
            runs[i] += 1
        await asyncio.sleep(0)
        if i % 4 == 0:
            raise ValueError(i)
        return i

    futures = [submit(b, task, i) for i in range(4000)]
    done, not_done = wait(futures, timeout=HANG)
    assert not not_done
    assert runs == [1] * 4000
    for i, f in enumerate(futures):
        if i % 4 == 0:
            assert isinstance(f.exception(), ValueError) and f.exception().args == (i,)
        else:
            assert f.result() == i
    s = b.stats()
    assert s["completed"] == 3000 and s["failed"] == 1000


async def wakes_through_a_weak_reference(delay: float) -> int:
    """Awaits a future that nothing but this coroutine holds strongly, as a client of
    asyncio streams awaits its reader (the protocol holds the reader weakly)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    ref = weakref.ref(fut)
    loop.call_later(delay, lambda: ref() is not None and ref().set_result(7))
    return await fut


def test_running_coroutines_survive_garbage_collection(backend) -> None:
    """The loop keeps tasks weakly: the backend holds every running one, or a collection
    while the coroutine waits destroys it and its future never completes. The caller here
    keeps no reference either (only the done callback)."""
    b = backend()
    results: List[Any] = []
    done = threading.Event()

    def record(f: Future) -> None:
        results.append(f.result())
        if len(results) == 20:
            done.set()

    for _ in range(20):
        submit(b, wakes_through_a_weak_reference, 0.3).add_done_callback(record)
    assert poll(lambda: b.stats()["running"] == 20)
    for _ in range(3):
        gc.collect()
    assert done.wait(HANG), f"{20 - len(results)} of 20 coroutines were lost"
    assert results == [7] * 20


def test_shutdown_from_a_coroutines_callback_does_not_deadlock(backend) -> None:
    b = backend()
    f = submit(b, value)
    f.add_done_callback(lambda _: b.shutdown(wait=True))
    assert f.result(timeout=HANG) == 42
    assert poll(lambda: b.stats()["loop_count"] == 0)


def test_bad_arguments() -> None:
    for kwargs in (dict(loops=0), dict(concurrency=0), dict(loops=3, max_loops=2),
                   dict(lag_interval=0), dict(concurrency=8, max_concurrency=4),
                   dict(max_concurrency=0)):
        with pytest.raises(ValueError):
            AsyncioBackend(**kwargs)
