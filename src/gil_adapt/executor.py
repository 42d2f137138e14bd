"""AdaptiveExecutor: a ``concurrent.futures.Executor`` that keeps itself at its best size (act).

The work queue, the worker threads and the monitor that resizes them are C
(``csrc/pool.c``); ``submit`` is C too (``_core.ExecutorBase``), so a task costs one
``concurrent.futures.Future`` and one queue node. Workers wait for work without the GIL
(that wait is booked as *idle* in the ledger, not as I/O), run tasks back to back while
there are any, and are added and retired while tasks run, at the size the controller
(``csrc/controller.c``) picks from the measured per-task CPU, GIL wait and wall time.

Semantics follow ``ThreadPoolExecutor``: standard futures, exceptions delivered through
them, cancellation, ``shutdown(wait, cancel_futures)``, ``RuntimeError`` on submit after
shutdown, an initializer failure breaks the pool (``BrokenThreadPool``), and at
interpreter exit pending tasks complete before the workers are joined.
"""
from __future__ import annotations

import concurrent.futures
import inspect
import itertools
import logging
import math
import os
import sys
import threading
import time
from concurrent.futures.thread import BrokenThreadPool
from typing import Any, Callable, Dict, Iterable, Iterator, Mapping, Optional, Tuple

from . import _core, _ledger
from ._router import MODES, Router, resolve_pins

log = logging.getLogger("gil_adapt")
_cf_log = logging.getLogger("concurrent.futures")

__all__ = ["AdaptiveExecutor", "BrokenThreadPool", "default_max_workers", "worker_stack_size"]

#: C stack reserved per level of the interpreter's recursion limit. Measured on CPython
#: 3.9-3.13: recursion through C callbacks (map, sorted(key=...)) needs up to ~2 KiB per
#: level; 256 KiB and 512 KiB stacks segfault before the default limit of 1000 where
#: ThreadPoolExecutor's 8 MiB raise RecursionError (tests/test_executor.py).
STACK_PER_RECURSION_LEVEL = 2048
#: Ceiling of the default max_workers (the largest pool the benchmarks sweep).
MAX_DEFAULT_WORKERS = 2048
#: The largest max_workers taken as given (larger ones mean the same: no practical bound).
MAX_WORKERS_LIMIT = 2**31 - 1
#: Idle workers above min_workers leave after this long without work.
IDLE_TIMEOUT_S = 60.0
#: Resident memory of one worker, with margin (thread state, touched stack pages, frames
#: of a task, queue node): benchmarks/memory.py measures the real figure.
RESIDENT_PER_WORKER = 128 * 1024

_counter = itertools.count().__next__


def worker_stack_size() -> int:
    """Stack reserved for each worker thread.

    ``threading.stack_size()`` when the program set one; otherwise
    ``STACK_PER_RECURSION_LEVEL`` per level of ``sys.getrecursionlimit()``, between 1 and
    8 MiB (2 MiB at the default limit: a quarter of glibc's 8 MiB default, so 2048 workers
    fit a 32-bit address space or a strict-overcommit budget). Only the pages a thread
    touches become resident, so this does not change resident memory.
    """
    chosen = threading.stack_size()
    if chosen:
        return chosen
    need = sys.getrecursionlimit() * STACK_PER_RECURSION_LEVEL
    page = 64 * 1024
    need = (need + page - 1) // page * page
    return max(1 << 20, min(8 << 20, need))


def default_max_workers(stack_size: Optional[int] = None) -> int:
    """A safe upper bound on worker threads for this machine (the controller works below it).

    The smallest of: a quarter of the memory budget (cgroup limit or MemAvailable) at
    ``RESIDENT_PER_WORKER`` each; half of the thread limits (``threads-max``, ``pid_max``,
    ``RLIMIT_NPROC``); on 32-bit builds, half of the address space in worker stacks; and
    ``MAX_DEFAULT_WORKERS``.
    """
    if stack_size is None:
        stack_size = worker_stack_size()
    bounds = [MAX_DEFAULT_WORKERS]
    limits = _core.limits()
    memory = [b for b in (limits.get("memory_limit_bytes", 0),
                          limits.get("memory_available_bytes", 0)) if b > 0]
    if memory:
        bounds.append(min(memory) // 4 // RESIDENT_PER_WORKER)
    for key in ("threads_max", "pid_max", "nproc_limit"):
        value = limits.get(key, 0)
        if value > 0:
            bounds.append(value // 2)
    if sys.maxsize <= 2**32:
        bounds.append((1 << 31) // (stack_size + RESIDENT_PER_WORKER))
    return max(1, min(bounds))


# ---- how a worker (a C thread) appears to the threading module -------------------------

_DummyBase: Any = getattr(threading, "_DummyThread", None)

if _DummyBase is not None:

    class _WorkerThread(_DummyBase):  # type: ignore[misc, valid-type]
        """threading's view of an AdaptiveExecutor worker: its name, ident, is_alive()."""

        _gla_alive = True

        def is_alive(self) -> bool:
            return self._gla_alive

        def join(self, timeout: Optional[float] = None) -> None:
            raise RuntimeError("cannot join an AdaptiveExecutor worker; "
                               "use executor.shutdown(wait=True)")


def _register_thread(name: str) -> Any:
    """Gives the calling worker thread a threading identity and the global trace hooks."""
    trace = getattr(threading, "_trace_hook", None)
    profile = getattr(threading, "_profile_hook", None)
    if trace is not None:
        sys.settrace(trace)
    if profile is not None:
        sys.setprofile(profile)
    if _DummyBase is None:
        return None
    try:
        thread = _WorkerThread()
        thread.name = name
        return thread
    except Exception:  # a threading internals change: run without an identity
        log.debug("gil_adapt: worker thread identity unavailable", exc_info=True)
        return None


def _unregister_thread(thread: Any) -> None:
    if thread is None:
        return
    thread._gla_alive = False
    lock = getattr(threading, "_active_limbo_lock", None)
    active = getattr(threading, "_active", None)
    if lock is None or active is None:
        return
    with lock:
        if active.get(thread.ident) is thread:
            del active[thread.ident]


def _thread_hooks(prefix: str, initializer: Optional[Callable[..., Any]],
                  initargs: Tuple[Any, ...]) -> Tuple[Callable[[int], Tuple[bool, Any]],
                                                      Callable[[Any], None]]:
    """The hooks the C workers call at start and at exit (closures over no executor)."""

    def start(index: int) -> Tuple[bool, Any]:
        token = _register_thread(f"{prefix}_{index}")
        if initializer is not None:
            try:
                initializer(*initargs)
            except BaseException:
                # where ThreadPoolExecutor logs it: on the concurrent.futures logger
                _cf_log.critical("Exception in initializer:", exc_info=True)
                return False, token
        return True, token

    return start, _unregister_thread


def _result_or_cancel(fut: concurrent.futures.Future, timeout: Optional[float] = None) -> Any:
    """fut.result(timeout); cancels fut when that raises (as Executor.map's helper does, whose
    cancel after a successful result is a no-op on a done future, skipped here)."""
    try:
        return fut.result(timeout)
    except BaseException:
        fut.cancel()
        raise
    finally:
        del fut  # break a reference cycle with the exception


# Executor.map's own signature (Python 3.14 adds buffersize: keep the base one there).
_OWN_MAP = "buffersize" not in inspect.signature(concurrent.futures.Executor.map).parameters


def _start_burst() -> int:
    """GIL_ADAPT_START_BURST: how many new workers may wait for the GIL to enter at once
    (0 or unset: the pool's default, 2; see csrc/pool.h). Benchmarks set it large to show
    what starting them all at once does (benchmarks/pool_startup.py)."""
    return _ledger.env_count("GIL_ADAPT_START_BURST", "a count >= 0 (0: the default)") or 0


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be greater than 0")
    return value


class AdaptiveExecutor(_core.ExecutorBase, concurrent.futures.ThreadPoolExecutor):
    """A thread pool executor that sizes itself between ``min_workers`` and ``max_workers``.

    A drop-in for :class:`concurrent.futures.ThreadPoolExecutor` (and an instance of it,
    so ``asyncio``'s ``loop.set_default_executor`` and libraries that check for a thread
    pool accept it): tasks run in threads of this process, their side effects are seen by
    the caller, a coroutine function's task returns the coroutine object, and futures,
    exceptions, cancellation and ``shutdown(wait, cancel_futures)`` behave as there. None
    of ThreadPoolExecutor's own machinery runs: the queue, the workers and the monitor
    that resizes them are C.

    ``max_workers=None`` is a safe upper bound for this machine (:func:`default_max_workers`);
    the controller picks the working count below it from measured task demands, and vetoes
    growth that would only add GIL contention. A submit that finds no worker starts one and
    waits for it to get going (as ThreadPoolExecutor's submit does); more workers start as
    tasks wait, and retire when the controller shrinks the pool or after
    ``IDLE_TIMEOUT_S`` idle. Worker stack size: :func:`worker_stack_size` (2 MiB unless
    ``threading.stack_size()`` or the recursion limit says otherwise).

    ``GIL_ADAPT_CONTROLLER=0`` (or ``false``/``no``/``off``) in the environment turns the
    controller off: the pool then
    grows to ``max_workers`` on demand, as ThreadPoolExecutor does. New workers start two
    at a time (each waits for the GIL to enter; ``GIL_ADAPT_START_BURST`` changes it).

    ``mode`` — where tasks may run:

    * ``"threads"`` (default): only threads of this process, as ThreadPoolExecutor.
    * ``"auto"`` (opt-in): coroutine functions run on event-loop threads (their task's
      result is the coroutine's result), and a function whose tasks are GIL-bound Python
      CPU may be moved to worker processes when more than one core is usable, the memory
      budget fits them and they measurably pay (and back when they stop paying).
    * ``"processes"`` (opt-in): every picklable plain function on worker processes,
      coroutine functions on the event loops.
    * ``"asyncio"``: coroutine functions on the event loops, plain functions on threads.

    Work that runs in a worker process has ProcessPoolExecutor's semantics: the callable,
    its arguments and its result are pickled; changes it makes to shared state (globals,
    objects passed in) are not seen by the caller; functions defined in the main script
    run there by importing the script as ``__mp_main__`` (it needs an
    ``if __name__ == "__main__":`` guard). Each function's first move to processes logs a
    warning on the ``gil_adapt`` logger. ``pin`` fixes a function's backend in ``"auto"``
    and ``"processes"`` modes: a mapping from the function (or its ``"module:qualname"``
    name) to ``"threads"`` (never leaves the process) or ``"processes"`` (runs there
    whenever it can be pickled), e.g. ``pin={"app.jobs:record": "threads"}``.
    ``stats()["kinds"]`` says where each function runs and why; ``stats()["switches"]``
    lists the moves.
    """

    def __init__(self, max_workers: Optional[int] = None, *, min_workers: int = 1,
                 thread_name_prefix: str = "",
                 initializer: Optional[Callable[..., Any]] = None,
                 initargs: Iterable[Any] = (), mode: str = "threads",
                 pin: Optional[Mapping[Any, str]] = None) -> None:
        if not isinstance(mode, str) or mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, "
                             f"not {mode!r}")
        pins = resolve_pins(pin, mode)
        min_workers = min(_check_count("min_workers", min_workers), MAX_WORKERS_LIMIT)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if not isinstance(thread_name_prefix, str):
            raise TypeError("thread_name_prefix must be a str")
        initargs = tuple(initargs)
        stack_size = worker_stack_size()
        if max_workers is None:
            max_workers = max(min_workers, default_max_workers(stack_size))
        else:
            # larger than any pool can be (the C core counts in int): no bound, as for
            # ThreadPoolExecutor, which accepts any int
            max_workers = min(_check_count("max_workers", max_workers), MAX_WORKERS_LIMIT)
        if min_workers > max_workers:
            raise ValueError(f"min_workers ({min_workers}) must not exceed "
                             f"max_workers ({max_workers})")

        _ledger.install()  # exact GIL waits feed the controller (idempotent)
        _ledger.calm_default()  # no wake-up storm of GIL waiters (see calm_gil)
        prefix = thread_name_prefix or f"AdaptiveExecutor-{_counter()}"
        start, stop = _thread_hooks(prefix, initializer, initargs)
        cores = _core.limits().get("usable_cores") or 1.0
        adaptive = bool(_core.HAVE_CONTROLLER) and _ledger.env_flag("GIL_ADAPT_CONTROLLER", True)
        # one worker per usable core to start; the controller sizes from there
        initial = min(max_workers, max(min_workers, math.ceil(cores))) if adaptive \
            else max_workers
        self._pool = _core.Pool(min_workers, max_workers, initial_target=initial,
                                stack_size=stack_size, name=prefix[:40], thread_start=start,
                                thread_stop=stop, broken_type=BrokenThreadPool,
                                idle_timeout=IDLE_TIMEOUT_S, controller=adaptive,
                                start_burst=_start_burst())
        # ThreadPoolExecutor's attributes that libraries read (dask: _max_workers)
        self._max_workers = max_workers
        self._min_workers = min_workers
        self._thread_name_prefix = prefix
        self._initializer = initializer
        self._initargs = initargs
        self._mode = mode
        self._router: Optional[Router] = None
        if mode != "threads":
            inner = _core.ExecutorBase()  # the C submit, without a cycle through self
            inner._pool = self._pool
            self._router = Router(mode, inner.submit, self._pool, max_workers=max_workers,
                                  initializer=initializer, initargs=initargs, name=prefix,
                                  pins=pins)
            self.submit = self._router.submit  # type: ignore[method-assign]
        from . import metrics  # imported here: metrics imports this module's package

        metrics.register_executor(self)  # weakly: exported while it lives, until shutdown
        log.debug("AdaptiveExecutor %s: mode %s, workers %d..%d, stack %d KiB, controller %s",
                  prefix, mode, min_workers, max_workers, stack_size // 1024,
                  "on" if adaptive else "off (fixed target = max_workers)")

    @property
    def _shutdown(self) -> bool:  # ThreadPoolExecutor's flag, read by some libraries
        return bool(self._pool.stats()["shutdown"])

    @property
    def _broken(self) -> Any:
        return "A thread initializer failed" if self._pool.stats()["broken"] else False

    # submit(fn, /, *args, **kwargs) is _core.ExecutorBase.submit (C).

    if _OWN_MAP:

        def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
                timeout: Optional[float] = None, chunksize: int = 1) -> Iterator[Any]:
            # Executor.map, less one condition acquire per result (see _result_or_cancel).
            if timeout is not None:
                end_time = timeout + time.monotonic()
            submit = self.submit
            fs = [submit(fn, *args) for args in zip(*iterables)]

            def result_iterator() -> Iterator[Any]:
                try:
                    fs.reverse()  # keep finishing order
                    while fs:
                        if timeout is None:
                            yield _result_or_cancel(fs.pop())
                        else:
                            yield _result_or_cancel(fs.pop(), end_time - time.monotonic())
                finally:
                    for future in fs:
                        future.cancel()

            return result_iterator()

        map.__doc__ = concurrent.futures.Executor.map.__doc__

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting tasks; with cancel_futures, cancels those not started yet.

        With wait, returns once every task has finished and every worker has left (a task
        that shuts its own executor down waits for the other workers only).
        """
        from . import metrics

        metrics.unregister_executor(self)
        if self._router is not None:
            self._router.shutdown(wait, cancel_futures)
            return
        self._pool.shutdown(cancel_futures=cancel_futures)
        if wait:
            self._pool.wait()

    shutdown.__doc__ = concurrent.futures.Executor.shutdown.__doc__

    def stats(self) -> Dict[str, Any]:
        """The pool and its controller now, as a plain dict.

        ``workers`` (live), ``target_workers``, ``beta`` (GIL share of the workers' waiting
        in the last window; None when unknown), ``throughput`` (tasks/s over the last
        window), ``queue_length``, ``decisions`` (counts of ``grow``/``shrink``/``veto``/
        ``hold``), ``last_decision`` and ``last_reason``; also idle/busy/starting workers,
        submitted/completed tasks, workers started/retired, start failures, the last
        window's figures (``window``: means per task, and ``task_gil_held_sd`` the tasks'
        spread of GIL-held time; ``gil_busy``, the share of the window
        the workers held the GIL, None without the GIL hook; ``cpu_busy``, the process's
        CPU over the window and the usable cores), ``history`` (the last 32 windows, oldest
        first: ``at_s`` since the pool was created, ``window_s``, ``completed``,
        ``workers``, ``queued``, the ``target`` and ``decision`` taken and its ``reason``),
        ``stack_size`` and ``mode``. Other than
        ``mode="threads"``: ``kinds`` (per function: ``backend``, ``reason``, ``switches``),
        ``switches`` (the latest moves: time, function, from, to, reason) and the
        backends' own ``processes``/``asyncio`` stats once they run.
        """
        stats = self._pool.stats()
        stats["mode"] = self._mode
        stats["gil_calm_keep"] = _core.calm()[0]
        if self._router is not None:
            stats.update(self._router.stats())
        return stats


def _python_exit() -> None:
    # Like concurrent.futures.thread: pending tasks complete, then workers are joined.
    _core._shutdown_all()


try:
    threading._register_atexit(_python_exit)  # type: ignore[attr-defined]
except (AttributeError, RuntimeError):  # very old Python / already exiting
    import atexit

    atexit.register(_python_exit)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_core._after_fork_child)
