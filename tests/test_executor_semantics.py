"""concurrent.futures semantics, run unchanged against AdaptiveExecutor and ThreadPoolExecutor.

Every test here is written against the documented behaviour of ``concurrent.futures``
executors; each runs once per executor (parametrized). Synchronisation uses events and
barriers; timeouts only guard against hangs, nothing here asserts a speed.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures.thread import BrokenThreadPool
from typing import Any, Callable, List

import pytest

from gil_adapt import AdaptiveExecutor

HANG = 30.0  # seconds: a guard against hangs, never a performance bound

EXECUTORS = {
    "adaptive": AdaptiveExecutor,
    "threadpool": cf.ThreadPoolExecutor,
}


@pytest.fixture(params=sorted(EXECUTORS))
def make(request: pytest.FixtureRequest) -> Callable[..., cf.Executor]:
    """make(max_workers=..., **kw) -> a new executor of the parametrized kind."""
    cls = EXECUTORS[request.param]
    made: List[cf.Executor] = []

    def factory(max_workers: Any = None, **kw: Any) -> cf.Executor:
        ex = cls(max_workers, **kw)
        made.append(ex)
        return ex

    factory.cls = cls  # type: ignore[attr-defined]
    yield factory
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)


def mul(a: int, b: int = 1) -> int:
    return a * b


class Boom(Exception):
    pass


class Fatal(BaseException):
    pass


def raise_(exc: BaseException) -> None:
    raise exc


# ---- submit, results, exceptions ------------------------------------------------------

def test_submit_returns_standard_future(make):
    ex = make(2)
    f = ex.submit(mul, 6, b=7)
    assert isinstance(f, cf.Future)
    assert f.result(timeout=HANG) == 42
    assert f.done() and not f.cancelled() and not f.running()
    assert f.exception() is None


def test_exception_delivered_through_future(make):
    ex = make(2)
    f = ex.submit(raise_, Boom("no"))
    with pytest.raises(Boom, match="no"):
        f.result(timeout=HANG)
    exc = f.exception(timeout=HANG)
    assert isinstance(exc, Boom)
    assert exc.__traceback__ is not None
    # the pool keeps working after a task raised
    assert ex.submit(mul, 3, 3).result(timeout=HANG) == 9


def test_base_exception_delivered_through_future(make):
    ex = make(1)
    f = ex.submit(raise_, Fatal())
    assert isinstance(f.exception(timeout=HANG), Fatal)
    assert ex.submit(mul, 2, 2).result(timeout=HANG) == 4


def test_kwargs_named_fn_are_passed(make):
    ex = make(1)
    f = ex.submit(lambda **kw: kw, fn=1, self=2)
    assert f.result(timeout=HANG) == {"fn": 1, "self": 2}


def test_many_tasks_each_run_once(make):
    ex = make(8)
    counts = [0] * 10_000
    lock = threading.Lock()

    def task(i: int) -> int:
        with lock:
            counts[i] += 1
        return i

    futures = [ex.submit(task, i) for i in range(10_000)]
    assert [f.result(timeout=HANG) for f in futures] == list(range(10_000))
    assert counts == [1] * 10_000


# ---- map ------------------------------------------------------------------------------

def test_map_order_and_multiple_iterables(make):
    ex = make(4)
    assert list(ex.map(mul, range(100), range(100))) == [i * i for i in range(100)]
    assert list(ex.map(mul, [1, 2, 3], [10, 20])) == [10, 40]  # shortest iterable
    assert list(ex.map(mul, [])) == []
    assert list(ex.map(mul, range(10), chunksize=3)) == list(range(10))


def test_map_consumes_generators(make):
    ex = make(2)
    assert list(ex.map(mul, (i for i in range(5)))) == [0, 1, 2, 3, 4]


def test_map_exception_raised_on_iteration(make):
    ex = make(2)
    results = ex.map(lambda x: 1 // x, [1, 0, 2])
    assert next(results) == 1
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout(make):
    ex = make(2)
    gate = threading.Event()
    try:
        results = ex.map(lambda x: gate.wait(HANG) and x, [1, 2], timeout=0.05)
        with pytest.raises(cf.TimeoutError):
            next(results)
    finally:
        gate.set()


# ---- cancellation and shutdown ---------------------------------------------------------

def test_cancel_pending_future(make):
    ex = make(1)
    gate, started = threading.Event(), threading.Event()
    blocker = ex.submit(lambda: (started.set(), gate.wait(HANG)))
    assert started.wait(HANG)
    ran = []
    pending = ex.submit(ran.append, 1)
    assert pending.cancel()
    assert pending.cancelled()
    assert not blocker.cancel()  # running: cannot be cancelled
    gate.set()
    ex.shutdown(wait=True)
    assert ran == []
    with pytest.raises(cf.CancelledError):
        pending.result()


def test_shutdown_wait_completes_pending(make):
    ex = make(2)
    futures = [ex.submit(time.sleep, 0.001) for _ in range(50)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)


def test_shutdown_nowait_still_runs_pending(make):
    ex = make(1)
    gate = threading.Event()
    ex.submit(gate.wait, HANG)
    futures = [ex.submit(mul, i, 2) for i in range(20)]
    ex.shutdown(wait=False)
    gate.set()
    assert [f.result(timeout=HANG) for f in futures] == [i * 2 for i in range(20)]


def test_shutdown_cancel_futures(make):
    ex = make(1)
    gate, started = threading.Event(), threading.Event()
    running = ex.submit(lambda: (started.set(), gate.wait(HANG))[1])
    assert started.wait(HANG)
    pending = [ex.submit(mul, i) for i in range(20)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in pending)
    gate.set()
    assert running.result(timeout=HANG) is True


def test_submit_after_shutdown_raises(make):
    ex = make(2)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(mul, 1)
    ex.shutdown()  # twice is fine


def test_context_manager_shuts_down(make):
    with make(2) as ex:
        futures = [ex.submit(time.sleep, 0.001) for _ in range(10)]
    assert all(f.done() for f in futures)
    with pytest.raises(RuntimeError):
        ex.submit(mul, 1)


def test_shutdown_from_inside_a_task(make):
    ex = make(2)
    f = ex.submit(lambda: ex.shutdown(wait=False))
    assert f.result(timeout=HANG) is None
    with pytest.raises(RuntimeError):
        ex.submit(mul, 1)


# ---- futures with the module functions and asyncio -------------------------------------

def test_as_completed_and_wait(make):
    ex = make(4)
    gate = threading.Event()
    slow = ex.submit(gate.wait, HANG)
    fast = [ex.submit(mul, i) for i in range(10)]
    done = set(cf.as_completed(fast, timeout=HANG))
    assert done == set(fast)
    done, not_done = cf.wait(fast + [slow], timeout=0.05)
    assert slow in not_done and set(fast) <= done
    gate.set()
    done, not_done = cf.wait(fast + [slow], timeout=HANG, return_when=cf.ALL_COMPLETED)
    assert not not_done


def test_wait_first_exception(make):
    ex = make(2)
    gate = threading.Event()
    slow = ex.submit(gate.wait, HANG)
    bad = ex.submit(raise_, Boom())
    done, not_done = cf.wait([slow, bad], timeout=HANG, return_when=cf.FIRST_EXCEPTION)
    assert bad in done and slow in not_done
    gate.set()


def test_done_callbacks(make):
    ex = make(2)
    seen: List[Any] = []
    called = threading.Event()
    f = ex.submit(mul, 5, 5)
    f.add_done_callback(lambda fut: (seen.append(fut.result()), called.set()))
    assert called.wait(HANG)
    f.add_done_callback(lambda fut: seen.append("late"))  # already done: called at once
    assert seen == [25, "late"]


def test_asyncio_interop(make):
    ex = make(2)

    async def main() -> List[int]:
        loop = asyncio.get_running_loop()
        a = await loop.run_in_executor(ex, mul, 3, 4)
        b = await asyncio.wrap_future(ex.submit(mul, 5, 6))
        return [a, b]

    assert asyncio.run(main()) == [12, 30]



def test_is_a_threadpoolexecutor(make):
    # asyncio, and libraries that check for a thread pool, accept it
    assert isinstance(make(2), cf.ThreadPoolExecutor)


def test_asyncio_default_executor_and_to_thread(make):
    ex = make(4)
    seen: List[str] = []

    def where(tag: str) -> str:
        seen.append(threading.current_thread().name)
        return tag

    async def main() -> List[str]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ex)  # TypeError on 3.11+ unless a ThreadPoolExecutor
        a = await loop.run_in_executor(None, where, "a")
        if sys.version_info >= (3, 9):
            b = await asyncio.to_thread(where, "b")
        else:  # pragma: no cover
            b = "b"
        gathered = await asyncio.gather(*(loop.run_in_executor(None, mul, i, 2)
                                          for i in range(50)))
        return [a, b, sum(gathered)]

    assert asyncio.run(main()) == ["a", "b", 2 * sum(range(50))]
    assert threading.main_thread().name not in seen


def test_cancel_futures_right_after_submit_leaves_started_ones_running(make):
    # CPython's test_cancel_futures: a submit starts a worker that takes its task
    ex = make(5)
    fs = [ex.submit(time.sleep, 0.1) for _ in range(50)]
    ex.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    others = [f for f in fs if not f.cancelled()]
    assert len(cancelled) > 20
    assert len(others) > 0
    for f in others:
        assert f.done() and f.exception() is None


def test_first_task_starts_before_submit_returns_to_an_idle_pool(make):
    ex = make(3)
    started = threading.Event()
    f = ex.submit(lambda: (started.set(), time.sleep(0.2))[1])
    ex.shutdown(wait=False, cancel_futures=True)
    assert not f.cancelled()
    assert f.result(timeout=HANG) is None and started.is_set()


class Owner:
    def method(self, payload: Any) -> Any:
        return payload


def test_no_reference_kept_to_callable_arguments_or_result(make):
    ex = make(2)
    obj, arg = Owner(), Owner()
    result_holder: List[Any] = []

    def make_result() -> Owner:
        r = Owner()
        result_holder.append(weakref.ref(r))
        return r

    refs = [weakref.ref(obj), weakref.ref(arg)]
    assert ex.submit(obj.method, arg).result(timeout=HANG) is arg
    f = ex.submit(make_result)
    f.result(timeout=HANG)
    del f
    del obj, arg
    deadline = time.monotonic() + HANG
    while any(r() is not None for r in refs + result_holder):
        assert time.monotonic() < deadline, [r() for r in refs + result_holder]
        gc.collect()
        time.sleep(0.01)

def test_futures_in_reference_cycles_are_collected(make):
    # a future whose result and done-callback refer back to it: only the garbage
    # collector can free it, and it must
    ex = make(2)
    refs = []
    for _ in range(50):
        holder: List[Any] = []
        f = ex.submit(lambda h=holder: h)
        holder.append(f)
        f.add_done_callback(lambda done, f=f: f)
        assert f.result(timeout=HANG) is holder
        refs.append(weakref.ref(f))
        del f, holder
    deadline = time.monotonic() + HANG
    while any(r() is not None for r in refs):
        assert time.monotonic() < deadline, sum(r() is not None for r in refs)
        gc.collect()
        time.sleep(0.01)


# ---- initializer and threads ----------------------------------------------------------

def test_initializer_runs_in_each_worker(make):
    local = threading.local()

    def init(tag: str) -> None:
        local.tag = tag

    ex = make(4, initializer=init, initargs=("ready",))
    results = list(ex.map(lambda _: getattr(local, "tag", None), range(50)))
    assert results == ["ready"] * 50


def test_initializer_failure_breaks_pool(make):
    def init() -> None:
        raise Boom("init failed")

    ex = make(2, initializer=init)
    futures = []
    for i in range(5):
        try:  # once the failure is known, submit itself raises
            futures.append(ex.submit(mul, i))
        except BrokenThreadPool:
            break
    assert futures, "the first submit is accepted (the initializer runs in a worker)"
    for f in futures:
        with pytest.raises(BrokenThreadPool):
            f.result(timeout=HANG)
    with pytest.raises(BrokenThreadPool):
        ex.submit(mul, 1)


def test_thread_name_prefix(make):
    ex = make(2, thread_name_prefix="worker-x")
    name = ex.submit(lambda: threading.current_thread().name).result(timeout=HANG)
    assert name.startswith("worker-x")


def test_tasks_run_off_the_calling_thread(make):
    ex = make(2)
    ident = ex.submit(threading.get_ident).result(timeout=HANG)
    assert ident != threading.get_ident()


def test_deep_recursion_raises(make):
    ex = make(1)

    def recurse(n: int) -> int:
        return recurse(n + 1)

    with pytest.raises(RecursionError):
        ex.submit(recurse, 0).result(timeout=HANG)


# ---- lifetime -------------------------------------------------------------------------

def test_dropped_executor_finishes_its_tasks(make):
    ex = make.cls(1)  # not kept by the fixture
    gate = threading.Event()
    ex.submit(gate.wait, HANG)
    futures = [ex.submit(mul, i, 3) for i in range(10)]
    ref = weakref.ref(ex)
    del ex
    gc.collect()
    assert ref() is None
    gate.set()
    assert [f.result(timeout=HANG) for f in futures] == [i * 3 for i in range(10)]


@pytest.mark.parametrize("how", ["exit", "sys.exit", "del"])
def test_interpreter_exit_with_pending_work(make, how):
    kind = make.cls.__name__
    ending = {"exit": "", "sys.exit": "sys.exit(0)", "del": "del ex"}[how]
    script = textwrap.dedent(f"""
        import sys, time, threading
        from concurrent.futures import ThreadPoolExecutor
        from gil_adapt import AdaptiveExecutor
        done = []
        def task(i):
            time.sleep(0.002)
            done.append(i)
        def report():
            print("DONE", len(done), flush=True)
        ex = {kind}(4)
        for i in range(200):
            ex.submit(task, i)
        import atexit
        atexit.register(report)
        {ending}
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "DONE 200" in out.stdout, (out.stdout, out.stderr)


def test_submit_during_interpreter_shutdown_raises(make):
    script = textwrap.dedent(f"""
        import atexit
        from concurrent.futures import ThreadPoolExecutor
        from gil_adapt import AdaptiveExecutor
        ex = {make.cls.__name__}(2)
        ex.submit(abs, -1).result()
        def late():
            for e in (ex, {make.cls.__name__}(2)):
                try:
                    e.submit(abs, -2)
                    print("accepted")
                except RuntimeError as err:
                    print("refused:", err)
        atexit.register(late)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("refused: cannot schedule new futures after") == 2, out.stdout
