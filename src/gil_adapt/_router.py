"""Per-function routing of an AdaptiveExecutor's tasks: threads, processes or asyncio.

Used for ``mode="auto"``, ``"processes"`` and ``"asyncio"`` (``mode="threads"`` keeps the
executor's C ``submit`` and none of this). Each task kind (function, see
:func:`~gil_adapt.backends.function_key`) has a backend:

* ``auto``: coroutine functions run on the event loops; every other function starts on
  threads and its :class:`~gil_adapt.backends.choose.Chooser` moves it to worker processes
  and back from measured windows (measure → decide → act). A window closes after
  ``WINDOW_S`` with ``Policy.min_tasks`` measured tasks, or after ``MAX_WINDOW_S``
  whatever it holds (a watch thread closes it when no task does), and each decision
  reads the newest window only: a function that funnels many kinds of work (dask's
  ``batch_execute_tasks``) is classified by what it does now. A function's first move to
  processes logs a warning: its tasks then have ProcessPoolExecutor's semantics;
* ``processes``: every plain function on worker processes (coroutine functions on the
  loops), except those that cannot be pickled
  (logged once per function by the backend), which run on threads;
* ``asyncio``: coroutine functions on the loops, plain functions on threads.

Measurement on threads: a *measured* task is submitted to the C pool wrapped in
:meth:`Router._relay`, which reads the worker's own clocks (wall, thread CPU, GIL wait, GIL
held from the ledger) around the call and completes a future of its own (the C pool's is
discarded). A function's first ``FIRST_MEASURED`` tasks are measured, then one per
``SAMPLE_PERIOD_S`` and one in ``SAMPLE_EVERY`` submits (the others pay a plain C
submit), and every one while the function is a candidate for processes (GIL-bound Python
CPU long enough for a process round trip): the windows that decide a move are never
sampled.

``pins`` fix a function's backend ("threads" or "processes") whatever the mode decides.
Nothing here holds a task's callable, arguments or result once the task is done: kinds
are keyed by the function's name (``module:qualname``) and cached by its code object; a
kind keeps only a weak reference to its function (to take its queued tasks off the C
queue on a move).

Moves drop nothing and run nothing twice: a measured task that a worker thread takes after
its kind moved to processes is forwarded there with its future still pending; on the way
back the process backend's queued tasks (not started) are taken and queued on threads.
Running tasks finish where they started.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import sys
import threading
import time
import weakref
from time import monotonic as _monotonic
from concurrent.futures import Future, InvalidStateError
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import _core
from .backends import Task, cancel_future, function_key
from .backends.choose import Backend, Chooser, Decision, Policy, Profile, Resources, classify

log = logging.getLogger("gil_adapt")

#: Shortest window between two decisions for one function (s).
WINDOW_S = 0.5
#: A window closes with at least Policy.min_tasks tasks, or after this long (s) with
#: whatever it holds (so that a phase change is seen within a few seconds).
MAX_WINDOW_S = 1.5
#: A function's tasks are measured (after its first FIRST_MEASURED) one per this period
#: (s) at most — a measured task costs ~20 us more, so this bounds the cost for tiny
#: tasks to ~0.2 % — and every one while the function could move to processes.
SAMPLE_PERIOD_S = 0.01
FIRST_MEASURED = 32
#: ...and one in this many submits (map() submits a burst in a few ms: sampled by time
#: alone, its windows would hold a handful of tasks).
SAMPLE_EVERY = 16
#: Switches kept for stats().
SWITCH_LOG = 64
#: Code objects cached before the cache is cleared.
FN_CACHE = 4096

MODES = ("auto", "threads", "processes", "asyncio")
PIN_BACKENDS = ("threads", "processes")


def _resolve_name(name: str) -> Any:
    module, _, qualname = name.partition(":")
    if not module or not qualname or "<" in qualname:
        raise ValueError(f"pin: {name!r} is not a 'module:qualname' name of a module-level "
                         f"function or method (pass the function itself)")
    try:
        obj = sys.modules["__main__"] if module == "__main__" else \
            importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"pin: no function named {name!r} ({exc})") from None
    if not callable(obj):
        raise ValueError(f"pin: {name!r} is not callable")
    return obj


def resolve_pins(pin: Optional[Mapping[Any, str]], mode: str) -> Dict[str, Backend]:
    """Checks AdaptiveExecutor's ``pin`` argument; returns {function key: backend}."""
    if pin is None:
        return {}
    if not isinstance(pin, Mapping):
        raise TypeError(f"pin must be a mapping of function -> 'threads' or 'processes', "
                        f"not {type(pin).__name__}")
    if pin and mode not in ("auto", "processes"):
        raise ValueError(f"pin applies to mode='auto' and mode='processes', not {mode!r}")
    out: Dict[str, Backend] = {}
    for fn, where in pin.items():
        if where not in PIN_BACKENDS:
            raise ValueError(f"pin: backend for {fn!r} must be 'threads' or 'processes', "
                             f"not {where!r}")
        if isinstance(fn, str):
            fn = _resolve_name(fn)
        elif not callable(fn):
            raise TypeError(f"pin: keys are functions or 'module:qualname' names, "
                            f"not {type(fn).__name__}")
        out[function_key(fn)] = Backend(where)
    return out


def _main_importable() -> bool:
    """Workers can import the main module as ``__mp_main__`` (as ProcessPoolExecutor's do):
    it is a file or a module run with ``-m``, not ``-c`` or an interactive session."""
    main = sys.modules.get("__main__")
    return bool(getattr(main, "__file__", None)) or \
        getattr(getattr(main, "__spec__", None), "name", None) not in (None, "__main__")


def _code_of(fn: Any) -> Any:
    """A stable cache key for fn that keeps neither fn nor what it is bound to alive: the
    code object of a Python function or method (None for others)."""
    try:
        return fn.__code__
    except AttributeError:
        return None


def _weak(fn: Any) -> Optional["weakref.ref[Any]"]:
    fn = getattr(fn, "__func__", fn) if inspect.ismethod(fn) else fn
    try:
        return weakref.ref(fn)
    except TypeError:  # no weak references: its queued tasks stay where they are on a move
        return None


def is_coroutine_function(fn: Any) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # an object whose __call__ is async
    return call is not None and not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


def _pass_on(inner: Future, future: Future) -> None:
    """The C pool's future of a relayed task ended: when the relay never ran (cancelled by
    shutdown(cancel_futures=True), or failed by a broken pool) the task's own future ends
    the same way."""
    if inner.cancelled():
        cancel_future(future)
        return
    exc = inner.exception()
    if exc is None or future.done():
        return
    try:
        running = future.set_running_or_notify_cancel()
    except RuntimeError:  # the relay had started it, and failed before ending it
        running = True
    if running:
        try:
            future.set_exception(exc)
        except InvalidStateError:
            pass


class _Kind:
    """One function's routing state and the figures of its open window."""

    def __init__(self, key: str, backend: Backend, chooser: Optional[Chooser],
                 fn: Any = None) -> None:
        self.key = key
        # what the C queue's tasks of this kind are called with (methods: their function),
        # weakly: the executor never keeps a user's callable alive
        self.fn_ref = _weak(fn) if fn is not None else None
        self.moved = False             # moved to processes at least once (warned)
        self.backend = backend
        self.chooser = chooser
        self.reason = {Backend.ASYNCIO: "coroutine function: runs on the event loops",
                       Backend.PROCESSES: "mode='processes'",
                       Backend.THREADS: "threads"}[backend]
        self.measure_all = False
        self.count = 0                 # submits on threads (for the sampling)
        self.next_sample = 0.0
        self.lock = threading.Lock()   # the window's figures
        self.update_lock = threading.Lock()
        self._reset(time.monotonic(), None)
        self.warming = False           # on processes, none of its tasks done there yet
        self.first = True              # no window closed yet (the first closes on a count)
        self.submitted = 0             # measured tasks queued on threads...
        self.started = 0               # ...and started there

    def _reset(self, now: float, proc_base: Optional[Dict[str, Any]]) -> None:
        self.window_start = now
        self.n = 0
        self.wall = self.cpu = self.gil_wait = self.gil_held = 0
        self.held_known = True
        self.proc_base = proc_base

    def book(self, t0: Tuple[int, int, int, int], t1: Tuple[int, int, int, int]) -> None:
        with self.lock:
            self.n += 1
            self.wall += t1[0] - t0[0]
            self.cpu += t1[1] - t0[1]
            if t0[2] >= 0 and t1[2] >= 0:
                self.gil_wait += t1[2] - t0[2]
                self.gil_held += t1[3] - t0[3]
            else:
                self.held_known = False


class Router:
    """Routes tasks by function (see the module's docstring) for one executor."""

    def __init__(self, mode: str, csubmit: Callable[..., Future], pool: Any, *,
                 max_workers: int, initializer: Optional[Callable[..., Any]],
                 initargs: Tuple[Any, ...], name: str, policy: Optional[Policy] = None,
                 pins: Optional[Dict[str, Backend]] = None) -> None:
        self.mode = mode
        self._csubmit = csubmit
        self._pool = pool
        self._max_workers = max_workers
        self._initializer = initializer
        self._initargs = initargs
        self._name = name
        self._policy = policy or Policy()
        self._lock = threading.Lock()
        self._pins = dict(pins or {})
        self._by_code: Dict[Any, _Kind] = {}
        self._by_key: Dict[str, _Kind] = {}
        self._procs: Any = None
        self._procs_error: Optional[str] = None
        self._aio: Any = None
        self._switches: List[Dict[str, Any]] = []
        self._watch: Optional[threading.Thread] = None
        self._shutdown = False
        self._cancel_futures = False

    # ---- submit ----------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        k = self._by_code.get(_code_of(fn))
        if k is None:
            k = self._kind_of(fn)
        b = k.backend
        if b is Backend.THREADS:
            if not k.measure_all:
                k.count += 1
                if k.count > FIRST_MEASURED and k.count % SAMPLE_EVERY:
                    now = _monotonic()
                    if now < k.next_sample:
                        return self._csubmit(fn, *args, **kwargs)
                    k.next_sample = now + SAMPLE_PERIOD_S
            return self._submit_measured(k, Future(), fn, args, kwargs)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: Future = Future()
        if b is Backend.ASYNCIO:
            self._asyncio().submit_coroutine(future, fn, args, kwargs)
            return future
        if self._to_processes(k, future, fn, args, kwargs):
            return future
        return self._submit_measured(k, future, fn, args, kwargs)

    def _kind_of(self, fn: Any) -> _Kind:
        if not callable(fn):
            raise TypeError(f"submit() fn must be callable, not {type(fn).__name__}")
        key = function_key(fn)
        with self._lock:
            k = self._by_key.get(key)
            if k is None:
                k = self._new_kind(key, fn)
                self._by_key[key] = k
            code = _code_of(fn)
            if code is not None:
                if len(self._by_code) >= FN_CACHE:
                    self._by_code.clear()
                self._by_code[code] = k
        if self.mode == "auto":
            self._start_watch()
        return k

    def _new_kind(self, key: str, fn: Any) -> _Kind:
        pinned = self._pins.get(key)
        if pinned is Backend.THREADS:
            k = _Kind(key, Backend.THREADS, None)
            k.reason = "pinned to threads"
        elif pinned is Backend.PROCESSES:
            k = _Kind(key, Backend.PROCESSES, None)
            k.reason = "pinned to processes"
        elif is_coroutine_function(fn):  # never "threads" here
            k = _Kind(key, Backend.ASYNCIO, None)
        elif self.mode == "processes":
            k = _Kind(key, Backend.PROCESSES, None)
        elif self.mode == "auto":
            k = _Kind(key, Backend.THREADS, Chooser(key, policy=self._policy), fn)
        else:
            k = _Kind(key, Backend.THREADS, None)
            k.reason = "not a coroutine function: threads"
        return k

    def _submit_measured(self, k: _Kind, future: Future, fn: Callable[..., Any],
                         args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Future:
        inner = self._csubmit(self._relay, k, future, fn, args, kwargs)
        inner.add_done_callback(lambda f: _pass_on(f, future))
        with k.lock:
            k.submitted += 1
        return future

    def _relay(self, k: _Kind, future: Future, fn: Callable[..., Any], args: Tuple[Any, ...],
               kwargs: Dict[str, Any]) -> None:
        """Runs one measured task on a worker thread (or forwards it to processes)."""
        with k.lock:
            k.started += 1
        if k.backend is Backend.PROCESSES and k.chooser is not None and \
                self._to_processes(k, future, fn, args, kwargs):
            return
        if not future.set_running_or_notify_cancel():
            return
        t0 = _core.self_times()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            k.book(t0, _core.self_times())
            future.set_exception(exc)
            del exc
        else:
            k.book(t0, _core.self_times())
            future.set_result(result)
            del result
        if k.chooser is not None and (time.monotonic() - k.window_start >= WINDOW_S or (
                k.first and k.n >= self._policy.min_tasks)):
            self._update(k)

    def _to_processes(self, k: _Kind, future: Future, fn: Callable[..., Any],
                      args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
        """Queues the task on processes; False (future untouched) where they refuse it."""
        procs = self._processes()
        if procs is None:
            self._refused(k, self._procs_error or "no worker processes")
            return False
        try:
            if procs.submit_task(future, fn, args, kwargs):
                return True
        except RuntimeError:  # the process backend shut down: threads run it
            return False
        refused = procs.stats()["refused_functions"].get(k.key)
        if refused is not None:
            self._refused(k, refused)
        return False

    def _refused(self, k: _Kind, reason: str) -> None:
        if k.chooser is not None:
            k.chooser.refuse_processes(reason)
            self._switch(k, Decision(Backend.THREADS, f"processes refused it: {reason}",
                                     switched=k.backend is not Backend.THREADS))
        elif k.backend is Backend.PROCESSES:
            k.reason = f"{k.reason}, but processes refused it: {reason}; threads"
            if not k.moved:
                k.moved = True
                log.warning("gil_adapt: %s stays on threads: worker processes refused it "
                            "(%s)", k.key, reason)

    # ---- decide ------------------------------------------------------------------------

    def _update(self, k: _Kind) -> None:
        if not k.update_lock.acquire(blocking=False):
            return
        try:
            self._update_locked(k)
        finally:
            k.update_lock.release()

    def _update_locked(self, k: _Kind) -> None:
        now = time.monotonic()
        elapsed = now - k.window_start
        pol = self._policy
        procs_stats = self._procs.stats() if self._procs is not None else None
        cores = float(_core.limits().get("usable_cores") or 1.0)
        threads_p = procs_p = None
        with k.lock:
            k.first = False
            if k.backend is Backend.THREADS:
                if k.n < pol.min_tasks and elapsed < MAX_WINDOW_S:
                    return
                if k.n == 0:  # nothing measured finished (tasks still queued): no figures,
                    k._reset(now, None)  # and nothing to change
                    return
                if k.n:
                    threads_p = Profile(
                        tasks=k.n, elapsed_s=elapsed,
                        wall_s=k.wall / k.n / 1e9, cpu_s=k.cpu / k.n / 1e9,
                        gil_wait_s=k.gil_wait / k.n / 1e9,
                        gil_held_s=k.gil_held / k.n / 1e9 if k.held_known else None,
                        backlog=k.submitted > k.started)
            else:
                fig = (procs_stats or {}).get("functions", {}).get(k.key) or {}
                if k.warming:  # windows on processes start once a worker is up and done
                    if fig.get("tasks", 0) > 0:
                        k.warming = False
                        k._reset(now, dict(fig))
                    return
                base = k.proc_base or {}
                n = fig.get("tasks", 0) - base.get("tasks", 0)
                if n < pol.min_tasks and elapsed < MAX_WINDOW_S:
                    return
                if n > 0:
                    held_n = fig.get("held_tasks", 0) - base.get("held_tasks", 0)
                    held = (fig.get("gil_held_s") or 0.0) - (base.get("gil_held_s") or 0.0)
                    procs_p = Profile(
                        tasks=n, elapsed_s=elapsed,
                        wall_s=(fig["wall_s"] - base.get("wall_s", 0.0)) / n,
                        cpu_s=(fig["cpu_s"] - base.get("cpu_s", 0.0)) / n,
                        # every task of the window measured its worker's GIL, or unknown
                        gil_held_s=held / n if held_n == n else None,
                        backlog=bool(procs_stats and procs_stats["queued"] > 0))
            sampled = not k.measure_all and k.backend is Backend.THREADS
            if k.backend is not Backend.THREADS:
                k.measure_all = True
            elif threads_p is not None and threads_p.tasks >= pol.min_tasks:
                kind, _ = classify(threads_p, pol)
                k.measure_all = (kind == "gil_cpu" and threads_p.cpu_s >= pol.min_task_cpu_s
                                 and cores >= pol.min_cores)
            fig = (procs_stats or {}).get("functions", {}).get(k.key)
            k._reset(now, dict(fig) if fig else None)
            candidate = sampled and k.measure_all
        if candidate:
            # a candidate for processes: decide on windows of every task (a sampled
            # window's throughput is no baseline for a trial), queued ones included
            k.reason = "GIL-bound Python CPU: measuring every task"
            for future, fn, args, kwargs in self._take_queued(k):
                self._requeue(k, future, fn, args, kwargs)
            return
        d = k.chooser.update(now, self._resources(procs_stats, cores),  # type: ignore[union-attr]
                             threads=threads_p, processes=procs_p)
        if d.trial or d.switched:
            k.measure_all = True
            k.warming = d.backend is Backend.PROCESSES
        self._switch(k, d)

    def _resources(self, procs_stats: Optional[Dict[str, Any]], cores: float) -> Resources:
        fit = overhead = None
        if procs_stats is not None:
            fit = procs_stats.get("memory_fit")
            means = [f["mean_overhead_s"] for f in procs_stats["functions"].values()
                     if f["tasks"]]
            overhead = sum(means) / len(means) if means else None
        return Resources(usable_cores=cores, process_workers_fit=fit,
                         process_overhead_s=overhead if overhead is not None else 0.0003)

    # ---- act ---------------------------------------------------------------------------

    def _switch(self, k: _Kind, d: Decision) -> None:
        k.reason = d.reason
        if d.backend is k.backend:
            return
        old, k.backend = k.backend, d.backend
        with self._lock:
            self._switches.append({"time_s": time.monotonic(), "kind": k.key,
                                   "from": old.value, "to": d.backend.value,
                                   "reason": d.reason, "trial": d.trial})
            del self._switches[:-SWITCH_LOG]
        if d.backend is Backend.PROCESSES and not k.moved:
            k.moved = True
            log.warning("gil_adapt: %s moves to worker processes (%s): its arguments and "
                        "results are pickled there, and changes it makes to shared state "
                        "are not seen by this process; pin it to 'threads' to keep it here",
                        k.key, d.reason)
        else:
            log.info("gil_adapt: %s: %s -> %s: %s", k.key, old.value, d.backend.value,
                     d.reason)
        if d.backend is Backend.PROCESSES:
            self._start_watch()
            for future, fn, args, kwargs in self._take_queued(k):  # queued tasks move
                if not self._to_processes(k, future, fn, args, kwargs):
                    self._requeue(k, future, fn, args, kwargs)
        if old is Backend.PROCESSES and self._procs is not None:
            moved = self._procs.take_queued(lambda t: function_key(t.fn) == k.key)
            self._to_threads(moved)

    def _take_queued(self, k: _Kind) -> List[Tuple[Future, Any, Tuple[Any, ...], Dict[str, Any]]]:
        """The kind's plain tasks queued on threads, taken off the C queue (futures pending;
        measured ones forward themselves when a worker takes them)."""
        fn = k.fn_ref() if k.fn_ref is not None else None
        if fn is None:
            return []
        try:
            return self._pool.take(fn)
        except MemoryError:  # their futures were failed with it: nothing silently lost
            log.exception("gil_adapt: could not move the queued tasks of %s", k.key)
            return []

    def _to_threads(self, tasks: List[Task]) -> None:
        """Queues tasks moved from processes on threads; runs them here if threads refuse."""
        for t in tasks:
            k = self._by_key.get(function_key(t.fn)) or self._kind_of(t.fn)
            self._requeue(k, t.future, t.fn, t.args, t.kwargs)

    def _requeue(self, k: _Kind, future: Future, fn: Callable[..., Any],
                 args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> None:
        """Queues a task taken off one backend on threads. Once the executor is shut down
        nothing is lost: with cancel_futures the task is cancelled, else it runs here."""
        try:
            self._submit_measured(k, future, fn, args, kwargs)
        except RuntimeError:  # the thread pool shut down meanwhile
            if self._cancel_futures:
                cancel_future(future)
            else:
                self._relay(k, future, fn, args, kwargs)

    def _start_watch(self) -> None:
        """A thread that closes the windows of functions on processes (nothing on threads
        completes their tasks, and map() may have submitted them all already) and the
        windows on threads that no task closes."""
        if self._watch is not None:
            return
        with self._lock:
            if self._watch is not None or self._shutdown:
                return
            self._watch = threading.Thread(target=self._watch_run, daemon=True,
                                           name=f"{self._name}-router")
        self._watch.start()

    def _watch_run(self) -> None:
        while not self._shutdown:
            time.sleep(WINDOW_S / 2)
            with self._lock:
                kinds = [k for k in self._by_key.values() if k.chooser is not None]
            now = time.monotonic()
            for k in kinds:
                # on processes nothing here completes its tasks; on threads a window that
                # no task closes (sampled tasks, a phase that ended) closes on time
                limit = WINDOW_S if k.backend is Backend.PROCESSES else MAX_WINDOW_S
                if now - k.window_start >= limit:
                    try:
                        self._update(k)
                    except Exception:  # never lose the thread to one bad window
                        log.exception("gil_adapt: backend decision failed for %s", k.key)

    def _processes(self) -> Any:
        if self._procs is not None or self._procs_error is not None:
            return self._procs
        with self._lock:
            if self._procs is None and self._procs_error is None:
                try:
                    from .backends.processes import ProcessBackend

                    self._procs = ProcessBackend(
                        max_workers=self._max_workers, import_main=_main_importable(),
                        initializer=self._initializer,
                        initargs=self._initargs, fallback=self._to_threads,
                        name=f"{self._name}-processes")
                except Exception as exc:  # e.g. an initializer that cannot be pickled
                    self._procs_error = f"worker processes unavailable: {exc!r}"
                    log.warning("gil_adapt: %s", self._procs_error)
        return self._procs

    def _asyncio(self) -> Any:
        if self._aio is None:
            with self._lock:
                if self._aio is None:
                    from .backends.aio import AsyncioBackend

                    self._aio = AsyncioBackend(name=f"{self._name}-asyncio")
        return self._aio

    # ---- shutdown and stats --------------------------------------------------------------

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        """Stops every backend; with cancel_futures, cancels what no backend started."""
        self._cancel_futures = cancel_futures
        self._shutdown = True
        for b in (self._procs, self._aio):
            if b is not None:
                b.shutdown(wait=False, cancel_futures=cancel_futures)
        self._pool.shutdown(cancel_futures=cancel_futures)
        if wait:
            for b in (self._procs, self._aio):
                if b is not None:
                    b.shutdown(wait=True, cancel_futures=cancel_futures)
            self._pool.wait()

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            kinds = list(self._by_key.values())
            switches = [dict(s) for s in self._switches]
        out: Dict[str, Any] = {
            "kinds": {k.key: {"backend": k.backend.value, "reason": k.reason,
                              "switches": k.chooser.switches if k.chooser else 0}
                      for k in kinds},
            "switches": switches,
        }
        if self._procs is not None:
            out["processes"] = self._procs.stats()
        elif self._procs_error is not None:
            out["processes"] = {"error": self._procs_error}
        if self._aio is not None:
            out["asyncio"] = self._aio.stats()
        return out
