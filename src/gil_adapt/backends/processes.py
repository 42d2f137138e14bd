"""ProcessBackend: worker processes for GIL-saturated Python CPU, within the memory budget.

Not ``ProcessPoolExecutor``: that pool breaks as a whole when one worker dies. Here

* each worker is a fresh interpreter started by exec (``subprocess``: fork+exec in C, safe
  in a threaded parent), connected by its own socket pair; it runs one task at a time;
* a dispatcher thread in the parent owns every socket: it sends a task to an idle worker,
  reads results, notices a death (pidfd, or end of file) and starts replacements;
* a death fails only the task that worker was running, with :class:`WorkerDied` (exit code
  or signal in it) — or runs it again once when it was submitted ``idempotent=True``;
* results land in the caller's standard ``concurrent.futures.Future`` objects; a task whose
  function or arguments cannot be pickled is refused at submit (``submit_task`` returns
  False, logged once per function) so the caller keeps it on threads;
* the number of workers is ``min(target, max_workers, what the memory budget fits)``.
  The budget (:func:`memory_budget`) is the cgroup limit (v2/v1, and every limiting
  ancestor) less what the group uses besides the workers, or MemAvailable, less a safety
  margin. A worker's expected size is measured: its resident size once started, and each
  task's peak (VmHWM, reset before every task). A function whose peak is not known yet
  runs one task at a time; a worker is started only when the live workers at their
  expected size plus one more fit; when the budget shrinks, workers are retired (idle
  ones at once, busy ones after their task) instead of meeting the OOM killer. Workers
  also make themselves the OOM killer's first choice over the parent.
* tasks the backend cannot run (workers keep failing to start, the budget fits no worker)
  go to ``fallback(tasks)`` — the executor's threads — or fail with BrokenProcessPool.
"""
from __future__ import annotations

import collections
import logging
import os
import pickle
import selectors
import signal
import socket
import subprocess
import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import (Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Set,
                    Tuple)

from .. import _core
from . import (RemoteError, RemoteTraceback, ResultPicklingError, Task, TaskUnpicklingError,
               WorkerDied, _memory, _wire, _worker, cancel_future, function_key, positive_int,
               shutdown_at_exit, split_queue, usable_cores)

log = logging.getLogger("gil_adapt")

__all__ = ["ProcessBackend", "memory_budget"]

MIB = 1 << 20
#: A worker's expected resident size until one has been measured (a fresh CPython 3.11
#: with pickle imported is 10-14 MiB; the margin covers bigger interpreters).
DEFAULT_WORKER_RSS = 32 * MIB
#: Measured sizes are multiplied by this before they are compared with the budget.
RSS_SLACK = 1.10
#: Memory is re-read this often while workers exist and tasks are queued or running.
TICK_S = 0.1
#: A worker that has not said hello after this long is killed (a start failure).
START_TIMEOUT_S = 60.0
#: Idle workers leave after this long without work.
IDLE_TIMEOUT_S = 60.0
#: Consecutive workers that die before their hello until the backend counts as broken.
MAX_START_FAILURES = 3
#: Extra runs of an idempotent task whose worker died.
IDEMPOTENT_RETRIES = 1
#: With at least this much budget per wanted worker, a function's first task need not run
#: alone to measure its memory (below it — edge devices — it does).
AMPLE_PER_WORKER = 1 << 30
#: A worker may hold one more task than it runs (sent ahead, it starts the moment the
#: previous one ends) when the task pickles to less than this and the budget is ample:
#: the round trip to the parent then overlaps the work.
PREFETCH_MAX_BYTES = 64 * 1024
#: How far past a blocked head (a function in its first, measuring run) dispatch looks.
SCAN_AHEAD = 64
#: Environment variables that size native thread pools inside a worker process.
NATIVE_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                      "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
#: How long a stopping worker may take to exit before it is killed.
STOP_GRACE_S = 5.0

_STARTING, _IDLE, _BUSY, _RETIRING, _STOPPING, _DEAD = range(6)
_STATE_NAMES = ("starting", "idle", "busy", "retiring", "stopping", "dead")
_LIVE = (_STARTING, _IDLE, _BUSY)
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def memory_budget(workers_rss_bytes: int = 0, margin_bytes: Optional[int] = None) -> Optional[int]:
    """Bytes worker processes may hold in total now; None when nothing bounds it.

    (cgroup limit, for the own group and each limiting ancestor, less what the group uses
    besides workers holding ``workers_rss_bytes`` — at least this process's resident size),
    or MemAvailable plus the workers' bytes; the tightest, less a safety margin.
    """
    parent = _memory.rss_of(os.getpid()) or 0
    return _memory.workers_budget(_groups(), _available(), parent, workers_rss_bytes,
                                  margin_bytes)


def _available() -> int:
    try:
        return int(_core.limits().get("memory_available_bytes", 0))
    except Exception:  # the C core is missing a reader: treat as unknown
        return 0


def _groups() -> List[_memory.GroupMemory]:
    groups = _memory.cgroup_groups()
    if not groups:  # the C reader may know a limit the walk did not find
        try:
            limit = int(_core.limits().get("memory_limit_bytes", 0))
        except Exception:
            limit = 0
        if limit > 0:
            groups = [_memory.GroupMemory("self", limit, _memory.rss_of(os.getpid()) or 0)]
    return groups


class _Entry:
    __slots__ = ("task_id", "future", "fn", "args", "kwargs", "payload", "idempotent",
                 "attempts", "key", "started", "sent_ns")

    def __init__(self, task_id: int, future: Future, fn: Callable[..., Any], args: Tuple[Any, ...],
                 kwargs: Dict[str, Any], payload: bytes, idempotent: bool, key: str) -> None:
        self.task_id = task_id
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.payload = payload
        self.idempotent = idempotent
        self.attempts = 0
        self.key = key
        self.started = False  # future set running (it can no longer move to another backend)
        self.sent_ns = 0

    def task(self) -> Task:
        return Task(self.future, self.fn, self.args, self.kwargs, self.idempotent)


class _Worker:
    __slots__ = ("index", "proc", "sock", "pidfd", "reader", "state", "entries", "rss", "peak",
                 "started_at", "idle_since", "tasks", "init_error", "stop_at")

    def __init__(self, index: int, proc: subprocess.Popen, sock: socket.socket,
                 pidfd: Optional[int]) -> None:
        self.index = index
        self.proc = proc
        self.sock = sock
        self.pidfd = pidfd
        self.reader = _wire.FrameReader()
        self.state = _STARTING
        self.entries: Deque[_Entry] = collections.deque()  # sent: running first, then ahead
        self.rss = 0
        self.peak = 0
        self.started_at = time.monotonic()
        self.idle_since = self.started_at
        self.tasks = 0
        self.init_error: Optional[str] = None
        self.stop_at = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def entry(self) -> Optional[_Entry]:
        """The task it runs now (the first one sent and not answered)."""
        return self.entries[0] if self.entries else None


class _FnFigures:
    __slots__ = ("tasks", "errors", "cpu_ns", "wall_ns", "roundtrip_ns", "peak_rss",
                 "gil_held_ns", "held_tasks")

    def __init__(self) -> None:
        self.tasks = self.errors = self.cpu_ns = self.wall_ns = self.roundtrip_ns = 0
        self.peak_rss = self.gil_held_ns = self.held_tasks = 0

    def as_dict(self) -> Dict[str, Any]:
        n = max(1, self.tasks)
        return {"tasks": self.tasks, "errors": self.errors, "cpu_s": self.cpu_ns / 1e9,
                "wall_s": self.wall_ns / 1e9, "mean_cpu_s": self.cpu_ns / n / 1e9,
                "mean_wall_s": self.wall_ns / n / 1e9,
                "mean_overhead_s": max(0, self.roundtrip_ns - self.wall_ns) / n / 1e9,
                "peak_rss_bytes": self.peak_rss,
                # time the tasks held their worker's GIL: over the tasks whose worker
                # measured it (held_tasks), None before any
                "gil_held_s": self.gil_held_ns / 1e9 if self.held_tasks else None,
                "held_tasks": self.held_tasks}


_live_backends: "weakref.WeakSet[ProcessBackend]" = weakref.WeakSet()


class ProcessBackend:
    """A pool of worker processes that completes the caller's futures.

    ``workers``: the initial target (default: usable cores, cgroup quota included).
    ``max_workers``: a hard cap for :meth:`resize`. ``import_main=True``: workers import
    the parent's ``__main__`` as ``__mp_main__`` (as multiprocessing does) so functions
    defined in the main script can run there — the script needs an ``if __name__ ==
    "__main__"`` guard then. The default ``False`` never runs the script again in a
    worker; functions defined in ``__main__`` are refused (they stay on threads).
    ``fallback(tasks)`` receives tasks the backend cannot run (pending
    futures, see :class:`~gil_adapt.backends.Task`); without it they fail with
    ``BrokenProcessPool``. ``memory_margin_bytes``: kept free under the tightest bound
    (default 1/16 of it, at least 32 MiB).

    Futures passed to :meth:`submit_task` must be pending and not yet running: the backend
    calls ``set_running_or_notify_cancel()`` when a worker takes the task (a future
    cancelled before that is skipped) and sets the result or exception.
    """

    def __init__(self, workers: Optional[int] = None, *, max_workers: Optional[int] = None,
                 import_main: bool = False, initializer: Optional[Callable[..., Any]] = None,
                 initargs: Iterable[Any] = (),
                 fallback: Optional[Callable[[List[Task]], None]] = None,
                 memory_margin_bytes: Optional[int] = None,
                 idle_timeout: float = IDLE_TIMEOUT_S, name: str = "gil_adapt-processes") -> None:
        if _worker.BOOTSTRAPPING:
            raise RuntimeError(
                "a worker process is importing the main module, which starts worker "
                "processes itself: guard that code with `if __name__ == '__main__':`")
        if max_workers is not None:
            positive_int("max_workers", max_workers)
        workers = positive_int("workers", usable_cores() if workers is None else workers)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._init_payload = b""
        if initializer is not None:
            self._init_payload = pickle.dumps((initializer, tuple(initargs)),
                                              pickle.HIGHEST_PROTOCOL)
        self._max_workers = max_workers
        self._target = min(workers, max_workers or workers)
        self._import_main = import_main
        self._fallback = fallback
        self._margin = memory_margin_bytes
        self._idle_timeout = idle_timeout
        self._name = name

        self._lock = threading.Lock()
        self._queue: Deque[_Entry] = collections.deque()
        self._workers: List[_Worker] = []
        self._shutdown = False
        self._broken: Optional[str] = None
        self._forked = False
        self._ids = 0
        self._worker_ids = 0
        # what a worker is expected to hold: measured at hello and per function
        self._baseline_rss = 0
        self._key_peak: Dict[str, int] = {}
        self._key_active: Dict[str, int] = collections.Counter()
        self._probing: Set[str] = set()
        self._figures: Dict[str, _FnFigures] = collections.defaultdict(_FnFigures)
        self._refused_fns: Dict[str, str] = {}
        self._logged: Set[Tuple[str, str]] = set()
        self._counts: Dict[str, int] = collections.Counter()
        self._start_failures_row = 0
        self._memory: Dict[str, Any] = {"budget_bytes": None, "fit": None, "groups": [],
                                        "parent_rss_bytes": 0, "workers_rss_bytes": 0}
        self._last_memory = 0.0
        self._peak_live = 0

        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        # The pipe lives as long as this object: a late _wake() never hits a reused fd.
        weakref.finalize(self, _close_fds, self._wake_r, self._wake_w)
        self._thread = threading.Thread(target=self._run, name=f"{name}-dispatcher", daemon=True)
        self._thread.start()
        _live_backends.add(self)

    # ---- caller side -----------------------------------------------------------------

    def submit_task(self, future: Future, fn: Callable[..., Any], args: Tuple[Any, ...] = (),
                    kwargs: Optional[Dict[str, Any]] = None, idempotent: bool = False) -> bool:
        """Queues ``fn(*args, **kwargs)`` for a worker, its outcome going to ``future``.

        Returns False — the future untouched, for the caller to run elsewhere — when the
        task cannot be pickled, its function lives in ``__main__`` and ``import_main`` is
        off, or the backend cannot run tasks now (broken, or the memory budget fits no
        worker). Raises RuntimeError after shutdown. ``idempotent``: run it once more if
        its worker dies under it.
        """
        kwargs = kwargs or {}
        key = function_key(fn)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if key in self._refused_fns:
                self._counts["refused"] += 1
                return False
            refusal = self._cannot_run_locked()
        if refusal:
            self._refuse(key, refusal, permanent=False)
            return False
        try:
            payload = pickle.dumps((fn, tuple(args), kwargs), pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            try:
                pickle.dumps(fn, pickle.HIGHEST_PROTOCOL)
            except Exception:
                self._refuse(key, f"its function cannot be pickled ({exc!r})", permanent=True)
            else:
                self._refuse(key, f"its arguments cannot be pickled ({exc!r})", permanent=False)
            return False
        if not self._import_main and b"__main__" in payload and _uses_main(fn, args, kwargs):
            in_fn = _uses_main(fn, (), {})
            self._refuse(key, "it refers to code defined in __main__, which workers do not "
                              "import (import_main=False)", permanent=in_fn)
            return False
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._ids += 1
            entry = _Entry(self._ids, future, fn, tuple(args), kwargs, payload, idempotent, key)
            self._queue.append(entry)
            self._key_active[key] += 1
            self._counts["submitted"] += 1
        self._wake()
        return True

    def resize(self, workers: int) -> None:
        """Sets the number of workers wanted (at least 1, at most ``max_workers``); the
        memory budget may allow fewer. Workers start as tasks wait; extra ones retire."""
        positive_int("workers", workers)
        with self._lock:
            self._target = min(workers, self._max_workers or workers)
        self._wake()

    def take_queued(self, predicate: Optional[Callable[[Task], bool]] = None) -> List[Task]:
        """Removes and returns the queued tasks (those ``predicate`` accepts) that no worker
        has started; their futures stay pending, for the caller to run elsewhere."""
        with self._lock:
            taken = [e.task() for e in self._take_locked(predicate)]
            self._counts["moved_out"] += len(taken)
        return taken

    def _take_locked(self, predicate: Optional[Callable[[Task], bool]]) -> List[_Entry]:
        # a task requeued after its worker died (its future runs already) finishes here
        self._queue, taken = split_queue(self._queue, lambda e: not e.started and (
            predicate is None or predicate(e.task())))
        for e in taken:
            self._key_active[e.key] -= 1
        return taken

    def shutdown(self, wait: bool = True, cancel_futures: bool = False, *,
                 run_queued: bool = True) -> List[Task]:
        """Stops accepting tasks and stops the workers once the queue is done.

        ``cancel_futures``: queued tasks are cancelled. ``run_queued=False``: queued tasks
        are removed untouched and returned (pending futures, for the caller to run
        elsewhere). Otherwise they run first. Tasks already on a worker always finish there.
        ``wait``: returns once every worker has exited.
        """
        if self._forked:  # the parent's workers and thread are not this process's
            self._shutdown = True
            return []
        with self._lock:
            self._shutdown = True
            taken = self._take_locked(None) if cancel_futures or not run_queued else []
            if not cancel_futures:
                self._counts["moved_out"] += len(taken)
        moved = [] if cancel_futures else [e.task() for e in taken]
        if cancel_futures:
            for e in taken:
                cancel_future(e.future)
            self._count("cancelled", len(taken))
        self._wake()
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()
        return moved

    def memory_budget(self) -> Optional[int]:
        """Bytes the workers may hold in total now (see :func:`memory_budget`)."""
        with self._lock:
            live = [w.pid for w in self._workers if w.state != _DEAD]
        held = sum(_memory.rss_of(pid) or 0 for pid in live)
        return memory_budget(held, self._margin)

    def stats(self) -> Dict[str, Any]:
        """The pool now, as a plain dict (counts since creation; sizes in bytes)."""
        with self._lock:
            states = collections.Counter(_STATE_NAMES[w.state] for w in self._workers)
            live = sum(states[_STATE_NAMES[s]] for s in _LIVE)
            out: Dict[str, Any] = {
                "time_s": time.monotonic(),
                "workers": live, "target_workers": self._target,
                "max_workers": self._max_workers,
                "starting": states["starting"], "idle": states["idle"],
                "busy": states["busy"] + states["retiring"],
                "retiring": states["retiring"] + states["stopping"],
                "peak_workers": self._peak_live,
                "queued": len(self._queue),
                "in_flight": sum(len(w.entries) for w in self._workers),
                "expected_worker_rss_bytes": self._expected_rss_locked(),
                "baseline_worker_rss_bytes": self._baseline_rss,
                "worker_rss_bytes": {w.pid: w.rss for w in self._workers if w.state != _DEAD},
                "memory_fit": self._memory["fit"],
                "memory_budget_bytes": self._memory["budget_bytes"],
                "parent_rss_bytes": self._memory["parent_rss_bytes"],
                "memory_limits": [g._asdict() for g in self._memory["groups"]],
                "broken": self._broken, "shutdown": self._shutdown,
                "refused_functions": dict(self._refused_fns),
                "functions": {k: f.as_dict() for k, f in self._figures.items()},
            }
            for name in ("submitted", "completed", "failed", "cancelled", "died", "retried",
                         "refused", "started", "start_failures", "retired", "memory_retired",
                         "fallback", "moved_out"):
                out[name] = self._counts[name]
        return out

    # ---- helpers shared by both sides ---------------------------------------------------

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):  # full pipe: a wake-up is pending anyway
            pass

    def _refuse(self, key: str, reason: str, permanent: bool) -> None:
        with self._lock:
            self._counts["refused"] += 1
            if permanent:
                self._refused_fns[key] = reason
            first = (key, reason) not in self._logged
            self._logged.add((key, reason))
        if first:
            log.info("gil_adapt: %s stays on threads: %s", key, reason)

    def _cannot_run_locked(self) -> Optional[str]:
        if self._forked:
            return "the backend belongs to the parent of this forked process"
        if self._broken:
            return f"the process backend is broken: {self._broken}"
        fit = self._memory["fit"]
        if fit == 0 and not any(w.state in _LIVE for w in self._workers):
            return "the memory budget fits no worker process"
        return None

    def _expected_rss_locked(self) -> int:
        base = self._baseline_rss or DEFAULT_WORKER_RSS
        peaks = [self._key_peak.get(k, 0) for k, n in self._key_active.items() if n > 0]
        return int(max([base] + peaks) * RSS_SLACK)

    # ---- the dispatcher thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                for key, _mask in self._sel.select(self._timeout()):
                    kind, worker = key.data
                    if kind == "wake":
                        try:
                            while os.read(self._wake_r, 4096):
                                pass
                        except BlockingIOError:
                            pass
                    elif kind == "sock":
                        self._on_readable(worker)
                    elif kind == "pidfd":
                        self._on_exit(worker)
                self._check_workers()
                self._dispatch()  # first: a first run to measure marks what must wait
                self._size()
                if self._finished():
                    break
        except BaseException:
            log.critical("gil_adapt: the process backend's dispatcher failed", exc_info=True)
            self._break("its dispatcher thread failed (see the log)")
        finally:
            self._stop_all()

    def _timeout(self) -> Optional[float]:
        with self._lock:
            busy = self._queue or any(w.state in (_STARTING, _BUSY, _RETIRING, _STOPPING)
                                      for w in self._workers)
            idle = [w.idle_since for w in self._workers if w.state == _IDLE]
        if busy:
            return TICK_S
        if idle:
            return max(0.0, min(idle) + self._idle_timeout - time.monotonic()) + 0.01
        return None

    def _finished(self) -> bool:
        with self._lock:
            return self._shutdown and not self._queue and not any(
                w.entries for w in self._workers)

    # -- workers: start, read, exit

    def _worker_env(self) -> Dict[str, str]:
        """The workers' environment: the parent's, with the native thread pools (BLAS,
        OpenMP) of each worker limited to its share of the cores where the program did
        not set them — as loky does: N workers each running a BLAS pool as wide as the
        machine oversubscribe the cores N times over."""
        env = dict(os.environ)
        share = str(max(1, usable_cores() // max(1, self._target)))
        for name in NATIVE_THREAD_VARS:
            env.setdefault(name, share)
        return env

    def _start_worker(self) -> None:
        from multiprocessing import spawn

        prep = spawn.get_preparation_data(self._name)
        if not self._import_main:
            prep.pop("init_main_from_path", None)
            prep.pop("init_main_from_name", None)
        if "authkey" in prep:  # an AuthenticationString refuses pickling outside spawning
            prep["authkey"] = bytes(prep["authkey"])
        prepare = pickle.dumps((prep, self._init_payload), pickle.HIGHEST_PROTOCOL)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            argv = _worker.worker_command(spawn.get_executable(), _PACKAGE_PARENT,
                                          child_sock.fileno(), os.getpid())
            proc = subprocess.Popen(argv, pass_fds=(child_sock.fileno(),),
                                    stdin=subprocess.DEVNULL, env=self._worker_env())
        except BaseException:
            parent_sock.close()
            child_sock.close()
            raise
        child_sock.close()
        pidfd: Optional[int] = None
        try:
            pidfd = os.pidfd_open(proc.pid)  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            pidfd = None
        with self._lock:
            self._worker_ids += 1
            worker = _Worker(self._worker_ids, proc, parent_sock, pidfd)
            self._workers.append(worker)
            self._counts["started"] += 1
            self._peak_live = max(self._peak_live,
                                  sum(1 for w in self._workers if w.state in _LIVE))
        self._sel.register(parent_sock, selectors.EVENT_READ, ("sock", worker))
        if pidfd is not None:
            self._sel.register(pidfd, selectors.EVENT_READ, ("pidfd", worker))
        try:
            _wire.send(parent_sock, _wire.PREPARE, 0, prepare)
        except OSError:
            self._on_exit(worker)
            return
        log.debug("gil_adapt: %s started worker %d (pid %d)", self._name, worker.index, proc.pid)

    def _on_readable(self, w: _Worker) -> None:
        try:
            data = w.sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            self._on_exit(w)
            return
        w.reader.feed(data)
        for kind, task_id, body in w.reader.frames():
            self._on_frame(w, kind, task_id, body)

    def _on_frame(self, w: _Worker, kind: int, task_id: int, body: bytes) -> None:
        if kind == _wire.HELLO:
            _cpu, _wall, peak, rss, _held = _wire.FIGURES.unpack_from(body, 0)
            with self._lock:
                if w.state == _STARTING:
                    w.state = _IDLE
                w.idle_since = time.monotonic()
                w.rss, w.peak = rss, peak
                self._baseline_rss = max(self._baseline_rss, rss)
                self._start_failures_row = 0
            return
        if kind == _wire.INIT_FAILED:
            w.init_error = body.decode("utf-8", "replace")
            log.error("gil_adapt: a worker process failed to start:\n%s", w.init_error)
            return
        entry = w.entry
        if entry is None or entry.task_id != task_id:
            log.error("gil_adapt: worker %d sent an unexpected frame (kind %d, task %d)",
                      w.pid, kind, task_id)
            return
        cpu_ns, wall_ns, peak, rss, held_ns = _wire.FIGURES.unpack_from(body, 0)
        payload = body[_wire.FIGURES.size:]
        now = time.monotonic_ns()
        with self._lock:
            w.entries.popleft()
            if w.entries:  # the task sent ahead starts now: its round trip counts from here
                w.entries[0].sent_ns = max(w.entries[0].sent_ns, now)
            w.tasks += 1
            w.rss, w.peak = rss, peak
            w.idle_since = time.monotonic()
            if w.state == _BUSY and not w.entries:
                w.state = _IDLE
            self._key_peak[entry.key] = max(self._key_peak.get(entry.key, 0), peak)
            self._probing.discard(entry.key)
            self._key_active[entry.key] -= 1
            fig = self._figures[entry.key]
            fig.tasks += 1
            fig.cpu_ns += cpu_ns
            fig.wall_ns += wall_ns
            if held_ns >= 0:
                fig.gil_held_ns += held_ns
                fig.held_tasks += 1
            fig.roundtrip_ns += max(0, now - entry.sent_ns)
            fig.peak_rss = max(fig.peak_rss, peak)
            if kind != _wire.RESULT:
                fig.errors += 1
        if w.state == _RETIRING and not w.entries:
            self._send_stop(w)
        self._complete(entry, kind, payload)

    def _complete(self, entry: _Entry, kind: int, payload: bytes) -> None:
        """Sets the future from a worker's answer (never under the lock: callbacks run)."""
        future = entry.future
        entry.fn = entry.args = entry.kwargs = entry.payload = None  # type: ignore[assignment]
        if kind == _wire.RESULT:
            try:
                result = pickle.loads(payload)
            except BaseException as exc:
                self._fail(future, RemoteError(f"the result of {entry.key} could not be "
                                               f"unpickled here: {exc!r}"), exc)
                return
            future.set_result(result)
            self._count("completed")
            return
        if kind == _wire.ERROR:
            tb, exc_payload = _worker.unpack_error(payload)
            try:
                exc = pickle.loads(exc_payload)
                if not isinstance(exc, BaseException):
                    raise TypeError(f"not an exception: {type(exc).__name__}")
            except BaseException as err:
                self._fail(future, RemoteError(f"{entry.key} raised an exception that could "
                                               f"not be unpickled here ({err!r})"),
                           RemoteTraceback(tb))
                return
            self._fail(future, exc, RemoteTraceback(tb))
            return
        text = payload.decode("utf-8", "replace")
        if kind == _wire.ERROR_TEXT:
            head, _, tb = text.partition("\n\n")
            self._fail(future, RemoteError(f"{entry.key} raised {head} (not picklable)"),
                       RemoteTraceback(tb))
        elif kind == _wire.RESULT_UNPICKLABLE:
            self._fail(future, ResultPicklingError(f"{entry.key}: {text}"), None)
        elif kind == _wire.TASK_UNPICKLABLE:
            head, _, tb = text.partition("\n\n")
            self._fail(future, TaskUnpicklingError(
                f"the worker could not rebuild the task {entry.key}: {head}"), RemoteTraceback(tb))
        else:
            self._fail(future, RemoteError(f"unknown answer kind {kind} for {entry.key}"), None)

    def _fail(self, future: Future, exc: BaseException, cause: Optional[BaseException]) -> None:
        if cause is not None:
            exc.__cause__ = cause
        future.set_exception(exc)
        self._count("failed")

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _on_exit(self, w: _Worker) -> None:
        if w.state == _DEAD:
            return
        for fileobj in (w.sock, w.pidfd):
            if fileobj is None:
                continue
            try:
                self._sel.unregister(fileobj)
            except (KeyError, ValueError):
                pass
        # Results already buffered in the socket count: read what is left first.
        try:
            w.sock.setblocking(False)
            while True:
                data = w.sock.recv(1 << 20)
                if not data:
                    break
                w.reader.feed(data)
        except OSError:
            pass
        was = w.state
        w.state = _DEAD  # frames below must not change it back
        for kind, task_id, body in w.reader.frames():
            self._on_frame(w, kind, task_id, body)
        w.sock.close()
        if w.pidfd is not None:
            os.close(w.pidfd)
        try:
            code = w.proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:  # closed its socket but lives on: stop it
            w.proc.kill()
            code = w.proc.wait()
        with self._lock:
            entry = w.entries.popleft() if w.entries else None
            ahead = list(w.entries)  # sent ahead, never started: they run elsewhere
            w.entries.clear()
            for e in reversed(ahead):
                e.attempts -= 1
                self._queue.appendleft(e)
            if w in self._workers:
                self._workers.remove(w)
            expected = was == _STOPPING
            if was == _STARTING:
                self._counts["start_failures"] += 1
                self._start_failures_row += 1
            elif not expected:
                self._counts["died"] += 1
            else:
                self._counts["retired"] += 1
            if entry is not None:
                self._probing.discard(entry.key)
        how = _describe_exit(code)
        if was == _STARTING:
            reason = f"worker process {w.pid} exited before it was ready ({how})"
            if w.init_error:
                reason += ": " + w.init_error.strip().splitlines()[-1]
            log.warning("gil_adapt: %s", reason)
            with self._lock:
                failing = self._start_failures_row >= MAX_START_FAILURES
            if failing:
                self._break(f"{MAX_START_FAILURES} worker processes in a row failed to start; "
                            f"last: {reason}")
        elif not expected:
            log.warning("gil_adapt: worker process %d died (%s)%s", w.pid, how,
                        f" while running {entry.key}" if entry else "")
        if entry is None:
            return
        if entry.idempotent and entry.attempts <= IDEMPOTENT_RETRIES:
            with self._lock:
                self._queue.appendleft(entry)
                self._counts["retried"] += 1
            log.info("gil_adapt: %s is idempotent: running it again after its worker died",
                     entry.key)
            return
        with self._lock:
            self._key_active[entry.key] -= 1
        sig = -code if code is not None and code < 0 else None
        hint = " (SIGKILL: the OOM killer, or another process)" if sig == signal.SIGKILL else ""
        self._fail(entry.future, WorkerDied(
            f"the worker process {w.pid} running {entry.key} died ({how}){hint}; "
            f"the pool started a replacement", pid=w.pid, exitcode=code, signal=sig), None)

    def _send_stop(self, w: _Worker) -> None:
        with self._lock:
            if w.state in (_STOPPING, _DEAD):
                return
            w.state = _STOPPING
            w.stop_at = time.monotonic()
        try:
            _wire.send(w.sock, _wire.STOP)
        except OSError:
            pass  # it is dying: its exit is handled when noticed

    def _check_workers(self) -> None:
        """Start timeouts, stop timeouts, and exits missed when no pidfd is available."""
        now = time.monotonic()
        for w in list(self._workers):
            if w.state == _STARTING and now - w.started_at > START_TIMEOUT_S:
                log.warning("gil_adapt: worker process %d did not start in %.0f s; killing it",
                            w.pid, START_TIMEOUT_S)
                w.proc.kill()
            elif w.state == _STOPPING and now - w.stop_at > STOP_GRACE_S:
                w.proc.kill()
            elif w.pidfd is None and w.state != _DEAD and w.proc.poll() is not None:
                self._on_exit(w)

    # -- sizing: how many workers, within the memory budget

    def _refresh_memory(self) -> None:
        with self._lock:
            pids = [(w, w.pid) for w in self._workers if w.state != _DEAD]
        for w, pid in pids:
            rss = _memory.rss_of(pid)
            if rss is not None:
                w.rss = rss
        held = sum(w.rss for w, _ in pids)
        groups = _groups()
        parent = _memory.rss_of(os.getpid()) or 0
        budget = _memory.workers_budget(groups, _available(), parent, held, self._margin)
        with self._lock:
            expected = self._expected_rss_locked()
            self._memory = {"budget_bytes": budget, "groups": groups, "parent_rss_bytes": parent,
                            "workers_rss_bytes": held,
                            "fit": None if budget is None else int(budget // expected)}
        self._last_memory = time.monotonic()

    def _size(self) -> None:
        """Retires and starts workers: ``min(target, max_workers, budget // expected size)``."""
        with self._lock:
            active = bool(self._queue) or any(w.state != _IDLE for w in self._workers)
        since = time.monotonic() - self._last_memory
        if since >= TICK_S and (active or since > 1.0):
            self._refresh_memory()
        to_stop: List[_Worker] = []
        start = 0
        with self._lock:
            if not (self._broken or self._forked):
                start = self._size_locked(to_stop)
        for w in to_stop:
            self._send_stop(w)
        for _ in range(start):
            try:
                self._start_worker()
            except Exception as exc:  # no fork, no fds, no executable...
                log.warning("gil_adapt: a worker process could not be started: %r", exc)
                with self._lock:
                    self._counts["start_failures"] += 1
                    self._start_failures_row += 1
                    failing = self._start_failures_row >= MAX_START_FAILURES
                if failing:
                    self._break(f"{MAX_START_FAILURES} worker processes in a row could not be "
                                f"started; last: {exc!r}")
                break
        self._fallback_if_stuck()

    def _size_locked(self, to_stop: List[_Worker]) -> int:
        expected = self._expected_rss_locked()
        budget = self._memory["budget_bytes"]
        allowed = min(self._target, self._max_workers or self._target)
        by_memory = allowed if budget is None else int(budget // expected)
        live = [w for w in self._workers if w.state in _LIVE]
        # 1. more workers than allowed: starting and idle ones first, busy ones after their task
        excess = len(live) - min(allowed, by_memory)
        if excess > 0:
            if by_memory < allowed:
                self._counts["memory_retired"] += excess
                log.info("gil_adapt: the memory budget (%d MiB) fits %d worker processes of "
                         "%d MiB: retiring %d", budget // MIB, by_memory, expected // MIB, excess)
            for w in sorted(live, key=lambda w: (w.state == _BUSY, -w.rss))[:excess]:
                self._mark_retire_locked(w, to_stop)
                live.remove(w)
        # 2. the workers hold more than the budget now (a task outgrew its measured peak)
        held = sum(w.rss for w in live)
        if budget is not None and live and held > budget:
            victim = max(live, key=lambda w: w.rss)
            self._mark_retire_locked(victim, to_stop)
            live.remove(victim)
            self._counts["memory_retired"] += 1
            log.warning("gil_adapt: worker processes hold %d MiB against a budget of %d MiB: "
                        "retiring one", held // MIB, budget // MIB)
        # 3. idle too long
        now = time.monotonic()
        if not self._queue:
            for w in list(live):
                if w.state == _IDLE and now - w.idle_since > self._idle_timeout:
                    self._mark_retire_locked(w, to_stop)
                    live.remove(w)
        # 4. start as tasks wait (not for those held back until their function's first run
        # has measured its memory); one at a time until a worker has been measured
        running = collections.Counter(e.key for w in self._workers for e in w.entries)
        held_back = sum(self._key_active[k] - running[k] for k in self._probing)
        demand = len(self._queue) - held_back + sum(1 for w in live if w.state == _BUSY)
        want = min(allowed, by_memory, demand) - len(live)
        if want <= 0:
            return 0
        if self._baseline_rss == 0:
            return 0 if any(w.state == _STARTING for w in live) else 1
        if budget is not None:  # live workers at their expected size, plus the new ones
            room = budget - sum(max(expected, w.rss) for w in live)
            want = min(want, int(room // expected))
        return max(0, want)

    def _stop_all(self) -> None:
        """The dispatcher's last act: every worker stops (killed if it will not), and a task
        still on one (only when the dispatcher itself failed) gets BrokenProcessPool."""
        with self._lock:
            workers = [w for w in self._workers if w.state != _DEAD]
            orphans = [e for w in workers for e in w.entries]
        for w in workers:
            if not w.entries:
                self._send_stop(w)
            else:
                w.proc.kill()
        deadline = time.monotonic() + STOP_GRACE_S
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            w.state = _DEAD
            w.entries.clear()
            w.sock.close()
            if w.pidfd is not None:
                os.close(w.pidfd)
        with self._lock:
            self._workers = [w for w in self._workers if w.state != _DEAD]
            self._counts["retired"] += len(workers)
        for entry in orphans:
            self._fail(entry.future, BrokenProcessPool(
                "the process backend's dispatcher stopped while this task ran"), None)
        self._sel.close()

    def _mark_retire_locked(self, w: _Worker, to_stop: List[_Worker]) -> None:
        if w.state == _BUSY:
            w.state = _RETIRING
        elif w.state in (_IDLE, _STARTING):
            to_stop.append(w)

    def _fallback_if_stuck(self) -> None:
        """Queued tasks with no worker alive and none allowed to start go elsewhere."""
        with self._lock:
            if not self._queue or any(w.state in _LIVE for w in self._workers):
                return
            if not (self._broken or self._memory["fit"] == 0):
                return
            reason = self._broken or "the memory budget fits no worker process"
            entries = list(self._queue)
            self._queue.clear()
            for e in entries:
                self._key_active[e.key] -= 1
        self._hand_off(entries, reason)

    def _hand_off(self, entries: Sequence[_Entry], reason: str) -> None:
        movable = [e for e in entries if not e.started]
        if self._fallback is not None and movable:
            log.warning("gil_adapt: %d queued tasks move to threads: %s", len(movable), reason)
            self._count("fallback", len(movable))
            self._fallback([e.task() for e in movable])
        else:
            for e in movable:
                if e.future.set_running_or_notify_cancel():
                    self._fail(e.future, BrokenProcessPool(reason), None)
                else:
                    self._count("cancelled")
        for e in entries:
            if e.started:
                self._fail(e.future, BrokenProcessPool(reason), None)

    def _break(self, reason: str) -> None:
        with self._lock:
            if self._broken:
                return
            self._broken = reason
            entries = list(self._queue)
            self._queue.clear()
            for e in entries:
                self._key_active[e.key] -= 1
        log.error("gil_adapt: process backend broken: %s", reason)
        self._hand_off(entries, reason)

    # -- dispatch: queued tasks to idle workers

    def _task_rss_locked(self, key: str) -> int:
        """Expected resident size of a worker running a task of ``key``."""
        base = self._baseline_rss or DEFAULT_WORKER_RSS
        return int(max(base, self._key_peak.get(key, 0)) * RSS_SLACK)

    def _pick_locked(self, idle: List[_Worker], ahead_of: Optional[_Worker]) -> Optional[_Entry]:
        """The first queued task that may start now on the last of ``idle`` — or be sent
        ahead to ``ahead_of`` (small tasks only) — FIFO, looking ``SCAN_AHEAD`` past tasks
        that must wait. A function whose memory is not measured yet runs one task at a
        time, and a task is sent only if the workers, each at the measured peak of the
        tasks it holds, plus this one and the idle workers, fit the budget (unless nothing
        runs at all: one task alone always may). First runs wait for their measurement
        and tasks are sent ahead only while the budget is ample (``AMPLE_PER_WORKER`` per
        wanted worker)."""
        budget = self._memory["budget_bytes"]
        wanted = min(self._target, self._max_workers or self._target)
        probe = budget is not None and budget < wanted * AMPLE_PER_WORKER
        if ahead_of is not None and probe:
            return None
        held = {w: max(self._task_rss_locked(e.key) for e in w.entries)
                for w in self._workers if w.entries}
        base = int((self._baseline_rss or DEFAULT_WORKER_RSS) * RSS_SLACK)
        others = sum(held.values()) + sum(max(base, w.rss) for w in idle)
        if ahead_of is not None:
            others -= held[ahead_of]
        else:
            others -= max(base, idle[-1].rss)
        for i, entry in enumerate(self._queue):
            if i >= SCAN_AHEAD:
                return None
            if probe and entry.key in self._probing:
                continue  # its first run is measuring its memory: one at a time
            if ahead_of is not None and len(entry.payload) > PREFETCH_MAX_BYTES:
                continue
            need = self._task_rss_locked(entry.key)
            if ahead_of is not None:
                need = max(need, held[ahead_of])
            if budget is not None and held and others + need > budget:
                continue
            del self._queue[i]
            if probe and entry.key not in self._key_peak:
                self._probing.add(entry.key)
            return entry
        return None

    def _ahead_of_locked(self) -> Optional[_Worker]:
        """The busy worker expected to finish first, if a task may be sent ahead to it:
        one task on it, of a function with a measured mean wall time that the task has
        not overrun (a task far past its mean may run long: nothing waits behind it)."""
        now = time.monotonic_ns()
        best, best_left = None, 0.0
        for w in self._workers:
            if w.state != _BUSY or len(w.entries) != 1:
                continue
            fig = self._figures.get(w.entries[0].key)
            if fig is None or fig.tasks == 0:
                continue
            mean = fig.wall_ns / fig.tasks
            ran = now - w.entries[0].sent_ns
            if ran > 2 * mean + 1e6:
                continue
            if best is None or mean - ran < best_left:
                best, best_left = w, mean - ran
        return best

    def _dispatch(self) -> None:
        while True:
            cancelled = False
            with self._lock:
                if not self._queue or self._broken:
                    return
                idle = sorted((w for w in self._workers if w.state == _IDLE),
                              key=lambda w: w.idle_since)
                ahead_of = None
                if not idle:
                    ahead_of = self._ahead_of_locked()
                    if ahead_of is None:
                        return
                entry = self._pick_locked(idle, ahead_of)
                if entry is None:
                    return
                if not entry.started:
                    if entry.future.set_running_or_notify_cancel():
                        entry.started = True
                    else:
                        cancelled = True
                        self._key_active[entry.key] -= 1
                        self._probing.discard(entry.key)
                        self._counts["cancelled"] += 1
                if not cancelled:
                    w = ahead_of or idle[-1]  # the most recently idle: the others may idle out
                    w.state = _BUSY
                    w.entries.append(entry)
                    entry.attempts += 1
                    entry.sent_ns = time.monotonic_ns()
            if cancelled:
                continue
            try:
                _wire.send(w.sock, _wire.TASK, entry.task_id, entry.payload)
            except OSError:  # the worker is gone and the task never reached it: requeue
                with self._lock:
                    if w.entries and w.entries[-1] is entry:
                        w.entries.pop()
                    entry.attempts -= 1
                    self._probing.discard(entry.key)
                    self._queue.appendleft(entry)
                self._on_exit(w)


class _MainFinder(pickle.Pickler):
    """Pickles into nothing, noting whether a class or function of ``__main__`` is met."""

    found = False

    def persistent_id(self, obj: Any) -> None:
        if isinstance(obj, type) or callable(obj):
            if getattr(obj, "__module__", None) == "__main__":
                self.found = True
        return None


class _Sink:
    def write(self, data: bytes) -> int:
        return len(data)


def _uses_main(fn: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> bool:
    """Whether pickling the task refers to ``__main__`` (checked only when its bytes say
    "__main__": a string argument may say it too)."""
    finder = _MainFinder(_Sink(), pickle.HIGHEST_PROTOCOL)
    try:
        finder.dump((fn, tuple(args), kwargs))
    except Exception:
        return True
    return finder.found


def _close_fds(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _after_fork_child() -> None:
    for backend in list(_live_backends):
        backend._forked = True  # submit_task refuses: the child's tasks stay on threads
        backend._lock = threading.Lock()  # it may have been held by a parent's thread
    _live_backends.clear()


shutdown_at_exit(_live_backends)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_child)
