"""Backends of the executor besides threads: worker processes and asyncio event loops (act).

Each backend runs tasks into standard ``concurrent.futures.Future`` objects that its caller
(the executor) creates, so one future type serves every backend:

* :class:`~gil_adapt.backends.processes.ProcessBackend` — its own pool of worker processes
  (started by exec, safe in a threaded parent), one task in flight per worker, sized by
  usable cores and by the measured memory budget; a worker that dies fails only its own
  task (:class:`WorkerDied`) or retries it once when the task is idempotent.
* :class:`~gil_adapt.backends.aio.AsyncioBackend` — coroutine functions on event-loop
  threads, a concurrency limit per loop, loop lag measured, another loop started while
  every loop is stalled by a CPU phase.
* :mod:`gil_adapt.backends.choose` — the per-function decision of ``mode="auto"``, as pure
  functions of measured figures.

The exceptions and :class:`Task` live here; the backends are imported on first use (a
worker process imports this package and nothing of asyncio).
"""
from __future__ import annotations

import math
import pickle
import collections
import logging
import threading
import weakref
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Deque, Dict, Iterable, List, NamedTuple, Optional, Tuple, TypeVar

__all__ = [
    "AsyncioBackend", "ProcessBackend", "RemoteError", "RemoteTraceback", "ResultPicklingError",
    "Task", "TaskUnpicklingError", "WorkerDied", "function_key", "memory_budget", "usable_cores",
]


class Task(NamedTuple):
    """A task a backend has not started: what ``take_queued``/``shutdown`` hand back."""

    future: Future
    fn: Callable[..., Any]
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    idempotent: bool = False


class WorkerDied(BrokenProcessPool):
    """The worker process running this task died (killed, crashed, ``os._exit``).

    Only the task that was on that worker fails; the pool starts a replacement.
    ``pid``, ``exitcode`` (``Popen.returncode``: negative for a signal) and ``signal``
    (the signal number or None) say how it ended.
    """

    def __init__(self, message: str, pid: int = 0, exitcode: Optional[int] = None,
                 signal: Optional[int] = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.pid, self.exitcode, self.signal))


class ResultPicklingError(pickle.PicklingError):
    """The task ran in a worker, but its result could not be pickled back."""


class TaskUnpicklingError(pickle.UnpicklingError):
    """The worker could not rebuild the task (its function's module is not importable there)."""


class RemoteError(Exception):
    """A task raised in a worker an exception that could not be pickled: its type and text."""


class RemoteTraceback(Exception):
    """The ``__cause__`` of an exception raised in a worker: the worker's traceback text."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def function_key(fn: Any) -> str:
    """The task kind of ``fn`` (``module:qualname``) under which decisions and figures are kept.

    ``functools.partial`` and bound methods count as their underlying function.
    """
    inner = fn
    for _ in range(8):
        if hasattr(inner, "func") and callable(getattr(inner, "func")):  # functools.partial
            inner = inner.func
        elif hasattr(inner, "__func__"):  # bound method
            inner = inner.__func__
        else:
            break
    module = getattr(inner, "__module__", None) or "?"
    name = getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None) \
        or type(inner).__qualname__
    return f"{module}:{name}"


def usable_cores() -> int:
    """Whole usable cores: CPU affinity capped by a cgroup CPU quota, rounded up (a quota of
    1.5 cores gives 2 workers sharing it)."""
    try:
        from .. import _core

        cores = float(_core.limits().get("usable_cores") or 1.0)
    except Exception:  # the C core unavailable: the affinity mask alone
        import os

        cores = float(len(os.sched_getaffinity(0)))
    return max(1, math.ceil(cores - 1e-9))


E = TypeVar("E")


def positive_int(name: str, value: Any) -> int:
    """``value`` when it is an int of at least 1 (not a bool); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, not {value!r}")
    return value


def split_queue(queue: Iterable[E], take: Callable[[E], bool]) -> Tuple[Deque[E], List[E]]:
    """(kept, taken): the entries of ``queue`` that ``take`` refuses and accepts, in order."""
    kept: Deque[E] = collections.deque()
    taken: List[E] = []
    for e in queue:
        (taken if take(e) else kept).append(e)
    return kept, taken


def cancel_future(future: Future) -> bool:
    """Cancels a pending future as executors do: ``wait()``/``as_completed()`` wake too."""
    if future.cancel():
        future.set_running_or_notify_cancel()
        return True
    return False


def shutdown_at_exit(live: "weakref.WeakSet[Any]") -> None:
    """At interpreter exit (before non-daemon threads are joined, as concurrent.futures
    does), ``shutdown(wait=True)`` every backend still in ``live``."""

    def at_exit() -> None:
        for backend in list(live):
            try:
                backend.shutdown(wait=True)
            except Exception:
                logging.getLogger("gil_adapt").debug("gil_adapt: backend shutdown at exit "
                                                     "failed", exc_info=True)

    try:
        threading._register_atexit(at_exit)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        import atexit

        atexit.register(at_exit)


def __getattr__(name: str) -> Any:  # the backends load on first use
    if name in ("ProcessBackend", "memory_budget"):
        from . import processes

        return getattr(processes, name)
    if name == "AsyncioBackend":
        from . import aio

        return aio.AsyncioBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
