"""AsyncioBackend: coroutine functions on event-loop threads, completing standard futures.

``submit_coroutine(future, coro_fn, args, kwargs)`` queues the call; a loop thread with
room calls ``coro_fn(*args, **kwargs)`` and runs the coroutine as a task, then completes
the ``concurrent.futures.Future`` with its result or exception — the same ones
``asyncio.run`` would give — or cancels it. As with ``asyncio.run_coroutine_threadsafe``
the future stays pending while the coroutine runs, so ``future.cancel()`` cancels the
task; a task cancelled on the loop cancels the future.

* **Queue**: one FIFO shared by the loops; each loop takes tasks while it runs fewer than
  the per-loop limit, when woken by a submit, when one of its tasks ends, and at each
  heartbeat. The backend holds every running task (the loop holds them only weakly).
* **Limit, grown on evidence**: the limit starts at ``concurrency``. While tasks wait
  for room (the oldest longer than ``lag_interval``) and no loop lags (its callbacks run
  within ``GROW_LAG_S``), the coroutines mostly wait on I/O and more of them at once may
  complete more: the limit is doubled (up to ``max_concurrency``) and kept if, once the
  new level has settled, the completion rate rose by ``GROW_GAIN`` or more, or the new
  level is not filled; otherwise it goes back and is not tried again for
  ``GROW_HOLD_S`` (a server that takes no more requests at once). A loop that lags
  beyond ``stall_after`` halves a grown limit (never below ``concurrency``). Each settle
  and measure period lasts three mean run times of a task, 0.5 s to 5 s.
* **Lag, measured**: a monitor thread posts a heartbeat to each busy loop every
  ``lag_interval``; how late the loop runs it is the loop's lag (how long CPU phases keep
  it from its callbacks), reported per loop with the loop thread's CPU share.
* **Loops**: a loop whose heartbeat is outstanding longer than ``stall_after`` is stalled:
  new tasks go to the other loops, and when every loop is stalled while tasks wait, another
  loop is started (up to ``max_loops``: by default the usable cores, at least 2 — a
  second loop gets the interpreter every switch interval even on one core). Loops above
  the initial count leave after ``idle_timeout`` without tasks.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import threading
import time
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import (Task, cancel_future, function_key, positive_int, shutdown_at_exit, split_queue,
               usable_cores)

log = logging.getLogger("gil_adapt")

__all__ = ["AsyncioBackend"]

#: Coroutines running at once on one loop, by default, at first.
DEFAULT_CONCURRENCY = 256
#: The most the per-loop limit grows to, by default.
MAX_CONCURRENCY = 4096
#: The limit grows only while every loop's lag (moving average) is below this (s).
GROW_LAG_S = 0.01
#: A doubled limit is kept when the completion rate rose by this factor or more.
GROW_GAIN = 1.10
#: After a doubling that did not pay, none is tried for this long (s).
GROW_HOLD_S = 30.0
#: Weight of the newest task in the moving average of run times.
RUN_EWMA = 0.05
#: Heartbeat period of the lag measurement (s).
LAG_INTERVAL_S = 0.05
#: A heartbeat outstanding this long marks its loop stalled (s).
STALL_AFTER_S = 0.1
#: Loops above the initial count leave after this long without tasks (s).
IDLE_TIMEOUT_S = 10.0
#: Weight of the newest sample in the lag's moving average.
LAG_EWMA = 0.2


class _Entry:
    __slots__ = ("future", "fn", "args", "kwargs", "key", "queued_at", "started_at")

    def __init__(self, future: Future, fn: Callable[..., Any], args: Tuple[Any, ...],
                 kwargs: Dict[str, Any]) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.key = function_key(fn)
        self.queued_at = time.monotonic()
        self.started_at = 0.0

    def task(self) -> Task:
        return Task(self.future, self.fn, self.args, self.kwargs)


class _Wrapped(Exception):
    """Carries KeyboardInterrupt/SystemExit out of a task without stopping the loop."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(repr(exc))
        self.exc = exc


async def _guard(coro: Any) -> Any:
    try:
        return await coro
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _Wrapped(exc) from None


class _Loop:
    def __init__(self, index: int, name: str) -> None:
        self.index = index
        self.loop = asyncio.new_event_loop()
        self.thread: Optional[threading.Thread] = None
        self.name = name
        self.running = 0
        self.done = 0
        # (loop thread) the running tasks: the loop holds tasks only weakly, and a
        # coroutine awaiting what only it references (a stream's reader) would be collected
        self.tasks: "set[asyncio.Task[Any]]" = set()
        self.pull_pending = False
        self.stopping = False
        self.idle_since = time.monotonic()
        # lag measurement (written by the loop thread in _beat, read by others)
        self.beat_sent = 0.0
        self.lag_last = 0.0
        self.lag_max = 0.0
        self.lag_mean = 0.0
        self.lag_window_max = 0.0
        self.stalls = 0
        self.was_stalled = False
        self.cpu_at = 0.0
        self.wall_at = 0.0
        self.cpu_share: Optional[float] = None

    def stalled_for(self, now: float) -> float:
        sent = self.beat_sent
        return now - sent if sent else 0.0


_live_backends: "weakref.WeakSet[AsyncioBackend]" = weakref.WeakSet()


class AsyncioBackend:
    """Coroutine functions on event-loop threads (see the module's docstring).

    ``loops``: loops started at once (and kept); ``max_loops``: the most while loops are
    stalled; ``concurrency``: coroutines running at once per loop, at first and at least;
    ``max_concurrency``: the most the limit grows to on evidence (default: 4096, or
    ``concurrency`` if that is more; equal to ``concurrency`` for a fixed limit).
    """

    def __init__(self, loops: int = 1, *, max_loops: Optional[int] = None,
                 concurrency: int = DEFAULT_CONCURRENCY,
                 max_concurrency: Optional[int] = None, lag_interval: float = LAG_INTERVAL_S,
                 stall_after: float = STALL_AFTER_S, idle_timeout: float = IDLE_TIMEOUT_S,
                 name: str = "gil_adapt-asyncio") -> None:
        positive_int("loops", loops)
        positive_int("concurrency", concurrency)
        if max_loops is None:
            max_loops = max(2, usable_cores(), loops)
        if max_loops < loops:
            raise ValueError("max_loops must not be below loops")
        if max_concurrency is None:
            max_concurrency = max(concurrency, MAX_CONCURRENCY)
        positive_int("max_concurrency", max_concurrency)
        if max_concurrency < concurrency:
            raise ValueError("max_concurrency must not be below concurrency")
        if lag_interval <= 0 or stall_after <= 0:
            raise ValueError("lag_interval and stall_after must be positive")
        self._min_loops = loops
        self._max_loops = max_loops
        self._concurrency = concurrency
        self._base_concurrency = concurrency
        self._max_concurrency = max_concurrency
        # growth of the limit (monitor thread, under the lock): the current period's
        # start (time, tasks ended then), the trial under way (the limit before it, the
        # rate it gave, "settle" or "measure"), and no trial before _hold_until
        self._mark: Optional[Tuple[float, int]] = None
        self._trial: Optional[Tuple[int, float, str]] = None
        self._hold_until = 0.0
        self._run_mean = 0.0
        self._interval = lag_interval
        self._stall_after = stall_after
        self._idle_timeout = idle_timeout
        self._name = name
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: Deque[_Entry] = collections.deque()
        self._loops: List[_Loop] = []
        self._loop_ids = 0
        self._shutdown = False
        self._closed = False
        self._monitor_idle = False
        self._counts: Dict[str, int] = collections.Counter()
        self._fn_tasks: Dict[str, List[float]] = collections.defaultdict(lambda: [0, 0.0])
        self._max_wait = 0.0
        with self._lock:
            started = [self._add_loop_locked() for _ in range(loops)]
        for loop in started:
            self._start_thread(loop)
        self._monitor = threading.Thread(target=self._watch, name=f"{name}-monitor", daemon=True)
        self._monitor.start()
        _live_backends.add(self)

    # ---- caller side -----------------------------------------------------------------

    def submit_coroutine(self, future: Future, coro_fn: Callable[..., Any],
                         args: Tuple[Any, ...] = (), kwargs: Optional[Dict[str, Any]] = None) -> None:
        """Runs ``coro_fn(*args, **kwargs)`` on a loop; its outcome goes to ``future``.

        ``future`` must be pending; it stays pending while the coroutine runs (cancel it to
        cancel the task). A function that returns a plain value completes with it.
        Raises RuntimeError after shutdown.
        """
        entry = _Entry(future, coro_fn, tuple(args), dict(kwargs or {}))
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new coroutines after shutdown")
            self._queue.append(entry)
            self._counts["submitted"] += 1
            target = self._choose_locked(time.monotonic())
            if target is not None:
                target.pull_pending = True
            if self._monitor_idle:
                self._cond.notify_all()
        if target is not None:
            self._call(target, self._pull, target)

    def set_concurrency(self, concurrency: int) -> None:
        """Coroutines running at once per loop, from now on and at least (loops with room
        take queued tasks); the limit grows from it as at the start."""
        positive_int("concurrency", concurrency)
        with self._lock:
            self._concurrency = self._base_concurrency = concurrency
            self._max_concurrency = max(self._max_concurrency, concurrency)
            self._mark = self._trial = None
            loops = list(self._loops)
        for loop in loops:
            self._call(loop, self._pull, loop)

    def take_queued(self, predicate: Optional[Callable[[Task], bool]] = None) -> List[Task]:
        """Removes and returns the queued (not started) tasks that ``predicate`` accepts."""
        with self._lock:
            self._queue, entries = split_queue(
                self._queue, lambda e: predicate is None or predicate(e.task()))
            self._counts["moved_out"] += len(entries)
        return [e.task() for e in entries]

    def shutdown(self, wait: bool = True, cancel_futures: bool = False, *,
                 run_queued: bool = True) -> List[Task]:
        """Stops accepting coroutines; the loops stop once every task has ended.

        ``cancel_futures``: queued coroutines are cancelled (running ones go on).
        ``run_queued=False``: queued ones are removed untouched and returned. ``wait``:
        returns once the loops have stopped (not from a loop's own thread).
        """
        with self._lock:
            self._shutdown = True
            entries = list(self._queue) if (cancel_futures or not run_queued) else []
            if entries:
                self._queue.clear()
            self._cond.notify_all()
        moved = [] if cancel_futures else [e.task() for e in entries]
        if cancel_futures:
            for e in entries:
                cancel_future(e.future)
        self._count("cancelled" if cancel_futures else "moved_out", len(entries))
        if wait and threading.current_thread() is not self._monitor and \
                not any(threading.current_thread() is lp.thread for lp in self._loops):
            self._monitor.join()
        return moved

    def stats(self) -> Dict[str, Any]:
        """Loops, their lag (ms) and CPU share, queue and counts, as a plain dict."""
        now = time.monotonic()
        with self._lock:
            loops = [{
                "index": lp.index, "running": lp.running, "done": lp.done,
                "stalled": lp.stalled_for(now) > self._stall_after,
                "stalled_for_ms": lp.stalled_for(now) * 1e3,
                "lag_last_ms": lp.lag_last * 1e3, "lag_mean_ms": lp.lag_mean * 1e3,
                "lag_max_ms": lp.lag_max * 1e3, "stalls": lp.stalls,
                "cpu_share": lp.cpu_share,
            } for lp in self._loops]
            out: Dict[str, Any] = {
                "time_s": now, "loops": loops, "loop_count": len(self._loops),
                "min_loops": self._min_loops, "max_loops": self._max_loops,
                "concurrency": self._concurrency, "base_concurrency": self._base_concurrency,
                "max_concurrency": self._max_concurrency, "queued": len(self._queue),
                "running": sum(lp.running for lp in self._loops),
                "lag_max_ms": max((lp.lag_max for lp in self._loops), default=0.0) * 1e3,
                "max_queue_wait_ms": self._max_wait * 1e3,
                "shutdown": self._shutdown,
                "functions": {k: {"tasks": int(v[0]), "mean_wall_s": v[1] / max(1, v[0])}
                              for k, v in self._fn_tasks.items()},
            }
            for name in ("submitted", "completed", "failed", "cancelled", "loops_added",
                         "loops_retired", "moved_out", "concurrency_raised",
                         "concurrency_restored"):
                out[name] = self._counts[name]
        return out

    # ---- loops -------------------------------------------------------------------------

    def _add_loop_locked(self) -> _Loop:
        self._loop_ids += 1
        loop = _Loop(self._loop_ids, f"{self._name}-loop-{self._loop_ids}")
        self._loops.append(loop)
        return loop

    def _start_thread(self, lp: _Loop) -> None:
        lp.thread = threading.Thread(target=self._serve, args=(lp,), name=lp.name, daemon=True)
        lp.thread.start()

    def _serve(self, lp: _Loop) -> None:
        loop = lp.loop
        asyncio.set_event_loop(loop)
        lp.cpu_at, lp.wall_at = time.thread_time(), time.monotonic()
        loop.call_soon(self._pull, lp)
        try:
            loop.run_forever()
        finally:
            try:
                for task in asyncio.all_tasks(loop):  # only when stopped with tasks left
                    task.cancel()
                loop.run_until_complete(loop.shutdown_asyncgens())
                if hasattr(loop, "shutdown_default_executor"):
                    loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    def _call(self, lp: _Loop, fn: Callable[..., Any], *args: Any) -> bool:
        try:
            lp.loop.call_soon_threadsafe(fn, *args)
            return True
        except RuntimeError:  # the loop closed meanwhile
            return False

    def _choose_locked(self, now: float) -> Optional[_Loop]:
        """A loop to wake for a new task: not stalled, not stopping, with room, least busy."""
        best = None
        for lp in self._loops:
            if lp.stopping or lp.running >= self._concurrency or \
                    lp.stalled_for(now) > self._stall_after:
                continue
            if best is None or lp.running < best.running:
                best = lp
        if best is not None and best.pull_pending:
            return None  # it will take the task with the others
        return best

    def _pull(self, lp: _Loop) -> None:
        """(loop thread) Takes one queued task if this loop has room, starts it, and comes
        back for the next after the callbacks already scheduled: the new task's first step
        runs before this loop takes another, so a task that holds the loop (CPU without
        await) leaves the rest in the shared queue for the other loops."""
        with self._lock:
            lp.pull_pending = False
            if lp.stopping or not self._queue or lp.running >= self._concurrency:
                return
            e = self._queue.popleft()
            lp.running += 1
            e.started_at = time.monotonic()
            self._max_wait = max(self._max_wait, e.started_at - e.queued_at)
            again = bool(self._queue) and lp.running < self._concurrency
            lp.pull_pending = again
        self._start(lp, e)
        if again:
            lp.loop.call_soon(self._pull, lp)

    def _start(self, lp: _Loop, e: _Entry) -> None:
        future = e.future
        if future.cancelled():
            future.set_running_or_notify_cancel()  # wakes wait()/as_completed()
            self._finished(lp, e, None)
            self._count("cancelled")
            return
        try:
            coro = e.fn(*e.args, **e.kwargs)
        except BaseException as exc:
            self._set_exception(future, exc)
            self._finished(lp, e, None)
            return
        if not inspect.isawaitable(coro):  # a plain function: its value is the result
            if future.set_running_or_notify_cancel():
                future.set_result(coro)
                self._count("completed")
            self._finished(lp, e, None)
            return
        task = lp.loop.create_task(_guard(coro))
        lp.tasks.add(task)
        task.add_done_callback(lambda t: self._task_done(lp, e, t))
        future.add_done_callback(lambda f: f.cancelled() and self._call(lp, task.cancel))

    def _task_done(self, lp: _Loop, e: _Entry, task: "asyncio.Task[Any]") -> None:
        lp.tasks.discard(task)
        future = e.future
        if task.cancelled():
            future.cancel()
            future.set_running_or_notify_cancel()  # wakes wait()/as_completed()
            self._count("cancelled")
        else:
            exc = task.exception()
            if isinstance(exc, _Wrapped):
                exc = exc.exc
            if exc is not None:
                self._set_exception(future, exc)
            elif future.set_running_or_notify_cancel():
                future.set_result(task.result())
                self._count("completed")
        self._finished(lp, e, time.monotonic() - e.queued_at)

    def _set_exception(self, future: Future, exc: BaseException) -> None:
        if future.set_running_or_notify_cancel():
            future.set_exception(exc)
            self._count("failed")

    def _finished(self, lp: _Loop, e: _Entry, wall: Optional[float]) -> None:
        with self._lock:
            lp.running -= 1
            lp.done += 1
            if lp.running == 0:
                lp.idle_since = time.monotonic()
            if wall is not None:
                fig = self._fn_tasks[e.key]
                fig[0] += 1
                fig[1] += wall
                run = max(0.0, time.monotonic() - e.started_at)
                self._run_mean = run if self._run_mean == 0.0 else \
                    (1 - RUN_EWMA) * self._run_mean + RUN_EWMA * run
            more = bool(self._queue) and not lp.pull_pending
            if more:
                lp.pull_pending = True
            if self._shutdown and not self._queue:
                self._cond.notify_all()
        e.fn = e.args = e.kwargs = None  # type: ignore[assignment]
        if more:  # (this is the loop's thread) later, not nested: no recursion
            lp.loop.call_soon(self._pull, lp)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    # ---- the monitor: heartbeats, stalls, loops added and retired ----------------------

    def _beat(self, lp: _Loop, sent: float) -> None:
        """(loop thread) The heartbeat: its lateness is the loop's lag."""
        now = time.monotonic()
        lag = max(0.0, now - sent)
        cpu = time.thread_time()
        with self._lock:
            lp.beat_sent = 0.0
            lp.lag_last = lag
            lp.lag_max = max(lp.lag_max, lag)
            lp.lag_mean = lag if lp.lag_mean == 0.0 else \
                (1 - LAG_EWMA) * lp.lag_mean + LAG_EWMA * lag
            if now > lp.wall_at:
                lp.cpu_share = min(1.0, max(0.0, (cpu - lp.cpu_at) / (now - lp.wall_at)))
            lp.cpu_at, lp.wall_at = cpu, now
            lp.was_stalled = False
            room = self._queue and lp.running < self._concurrency and not lp.pull_pending
        if room:
            self._pull(lp)

    def _watch(self) -> None:
        while True:
            with self._lock:
                while not self._busy_locked() and not self._shutdown:
                    self._monitor_idle = True
                    self._cond.wait()
                self._monitor_idle = False
                if self._done_locked():
                    break
            self._tick()
            with self._lock:  # a tick per interval, however often submits notify
                end = time.monotonic() + self._interval
                while not self._done_locked():
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
        self._close()

    def _done_locked(self) -> bool:
        return self._shutdown and not self._queue and \
            not any(lp.running for lp in self._loops)

    def _busy_locked(self) -> bool:
        return bool(self._queue) or any(lp.running for lp in self._loops) or \
            len(self._loops) > self._min_loops

    def _tick(self) -> None:
        now = time.monotonic()
        beats: List[_Loop] = []
        start: Optional[_Loop] = None
        stop: List[_Loop] = []
        with self._lock:
            live = [lp for lp in self._loops if not lp.stopping]
            for lp in live:
                if lp.beat_sent == 0.0:
                    lp.beat_sent = now
                    beats.append(lp)
                elif now - lp.beat_sent > self._stall_after and not lp.was_stalled:
                    lp.was_stalled = True
                    lp.stalls += 1
            all_stalled = bool(live) and all(
                lp.stalled_for(now) > self._stall_after for lp in live)
            waited = now - self._queue[0].queued_at if self._queue else 0.0
            wake = [lp for lp in live if not lp.pull_pending] \
                if self._adapt_locked(now, live) else []
            for lp in wake:
                lp.pull_pending = True
            if (not live or all_stalled) and waited > self._stall_after and \
                    len(live) < self._max_loops:
                start = self._add_loop_locked()
                self._counts["loops_added"] += 1
            elif len(live) > self._min_loops and not self._queue:
                for lp in live[self._min_loops:]:
                    if lp.running == 0 and now - lp.idle_since > self._idle_timeout:
                        lp.stopping = True
                        stop.append(lp)
                        self._counts["loops_retired"] += 1
                        break
        for lp in wake:  # the limit was raised: they take more
            self._call(lp, self._pull, lp)
        for lp in beats:
            if not self._call(lp, self._beat, lp, now):
                lp.beat_sent = 0.0
        if start is not None:
            log.info("gil_adapt: every event loop of %s is stalled (%.0f ms) with tasks "
                     "waiting: starting loop %d", self._name,
                     1e3 * min(lp.stalled_for(now) for lp in self._loops if lp is not start),
                     start.index)
            self._start_thread(start)
        for lp in stop:
            self._stop_loop(lp)

    def _adapt_locked(self, now: float, live: List[_Loop]) -> bool:
        """Grows the per-loop limit on evidence, or takes a grown one back (see the
        module's docstring). True when the limit was raised (loops may take more)."""
        if self._max_concurrency == self._base_concurrency:
            return False
        ended = self._counts["completed"] + self._counts["failed"] + self._counts["cancelled"]
        lagging = any(lp.lag_mean > self._stall_after for lp in live)
        if lagging and self._concurrency > self._base_concurrency:
            if self._mark is not None and now - self._mark[0] < self._period():
                return False  # one halving per period
            self._trial = None
            self._set_limit_locked(max(self._base_concurrency, self._concurrency // 2),
                                   "restored", "a loop lags", now, ended)
            return False
        # the loops are at the limit: a task has waited a heartbeat's period for room
        full = bool(live) and bool(self._queue) and \
            now - self._queue[0].queued_at > self._interval
        calm = not any(lp.lag_mean > GROW_LAG_S for lp in live)
        if self._trial is None and not (full and calm):
            self._mark = None  # a period counts only while it holds throughout
            return False
        if self._mark is None:
            self._mark = (now, ended)
            return False
        t0, ended0 = self._mark
        if now - t0 < self._period():
            return False
        rate = (ended - ended0) / (now - t0)
        if self._trial is None:
            if now < self._hold_until or self._concurrency >= self._max_concurrency:
                return False
            before = self._concurrency
            self._trial = (before, rate, "settle")
            self._set_limit_locked(min(self._max_concurrency, 2 * before), "raised",
                                   f"{rate:.0f} tasks/s at {before}", now, ended)
            return True
        before, rate_before, phase = self._trial
        if phase == "settle":
            self._trial = (before, rate_before, "measure")
            self._mark = (now, ended)
            return False
        self._trial = None
        if rate >= GROW_GAIN * rate_before or not full:
            self._mark = (now, ended)  # kept; this period is the next one's base
            return False
        self._hold_until = now + GROW_HOLD_S
        self._set_limit_locked(before, "restored",
                               f"{rate:.0f} tasks/s at {self._concurrency}, "
                               f"{rate_before:.0f} at {before}", now, ended)
        return False

    def _period(self) -> float:
        return min(5.0, max(0.5, 3 * self._run_mean))

    def _set_limit_locked(self, limit: int, what: str, why: str, now: float,
                          ended: int) -> None:
        log.info("gil_adapt: %s: coroutines at once per loop %s to %d (was %d: %s)",
                 self._name, what, limit, self._concurrency, why)
        self._concurrency = limit
        self._counts["concurrency_" + what] += 1
        self._mark = (now, ended)


    def _stop_loop(self, lp: _Loop) -> None:
        self._call(lp, lp.loop.stop)
        if lp.thread is not None and lp.thread is not threading.current_thread():
            lp.thread.join()
        with self._lock:
            if lp in self._loops:
                self._loops.remove(lp)

    def _close(self) -> None:
        with self._lock:
            loops = list(self._loops)
            for lp in loops:
                lp.stopping = True
        for lp in loops:
            self._stop_loop(lp)
        self._closed = True


shutdown_at_exit(_live_backends)
