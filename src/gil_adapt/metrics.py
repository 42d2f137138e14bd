"""Metrics a monitoring system scrapes: the ledger (and executors) in the Prometheus format.

* :func:`metrics_text` — the metrics now, in the Prometheus text format 0.0.4, or in
  OpenMetrics 1.0 with ``openmetrics=True``.
* :func:`serve_metrics` — ``GET /metrics`` on a loopback port, standard library only;
  returns a handle with ``.close()``. By default a small helper process answers the
  scrapes and asks this process for fresh figures at most once a second, so scrape floods
  cost a GIL-bound program nothing (``in_process=True``: a daemon thread instead).
* :class:`Collector` — the same metrics for ``prometheus_client``:
  ``prometheus_client.REGISTRY.register(gil_adapt.metrics.Collector())``.
* :func:`register_executor` — executors whose ``stats()`` are exported (held weakly).

Metrics (names and units by Prometheus conventions: base units, ``_seconds``,
``_total`` on counters, ``_ratio`` on 0..1 gauges; seconds are the ledger's states, which
partition each thread's wall time)::

    gil_adapt_thread_{cpu,gil_wait,lock_wait,runq_wait,io_wait,idle}_seconds_total{thread,tid}
    gil_adapt_thread_gil_held_seconds_total{thread,tid}   (overlaps cpu/runq: not a state)
    gil_adapt_{cpu,gil_wait,lock_wait,runq_wait,io_wait,idle,gil_held}_seconds_total
                                                  (every thread, exited ones included)
    gil_adapt_gil_switches_total, gil_adapt_threads
    gil_adapt_{beta,contention,gil_utilisation}_ratio            (gauges: last WINDOW_S)
    gil_adapt_executor_{workers,target_workers,queue_length,beta_ratio,tasks_per_second}{executor}
    gil_adapt_executor_decisions_total{executor,decision}
    gil_adapt_executor_tasks_{submitted,completed}_total{executor}
    gil_adapt_build_info{version,python,implementation,gil_wait,...} 1   (an info metric)

Per-thread series (``gil_adapt_thread_*``): ``per_thread`` and ``max_thread_series``
(keyword arguments of :func:`metrics_text`, :func:`serve_metrics` and :class:`Collector`;
where not given, the environment variables ``GIL_ADAPT_METRICS_PER_THREAD`` and
``GIL_ADAPT_METRICS_MAX_THREAD_SERIES``, so ``gil-adapt run --port`` takes them too)
keep their number bounded:

* ``per_thread="thread"`` (the default): one series per thread, ``{thread=NAME,tid=ID}``,
  while the ledger lists it (alive, or exited less than ~10 s ago:
  ``GIL_ADAPT_DEAD_KEEP_MS``). A thread keeps the name it last had alive.
* ``per_thread="name"``: one series per thread name, ``{thread=NAME}``, with runs of
  digits (and ``0x`` ids) replaced by ``N``: a thread-per-request server's
  ``Thread-123 (process_request_thread)`` threads add up in
  ``Thread-N (process_request_thread)``, ``ThreadPoolExecutor-0_3`` in
  ``ThreadPoolExecutor-N_N`` (a pool with its own ``thread_name_prefix`` keeps its own
  series). A name's series keeps the time of its exited threads, so it never goes down;
  a thread stays under the name it had when the exporter first saw it.
* ``per_thread="none"``: no per-thread series (the process totals remain).
* ``max_thread_series`` (default 64; 0: no cap): at most that many per-thread series
  (threads, or names, first seen first served); the threads beyond go to one series
  ``thread="other"`` (``tid="other"`` as well in the per-thread mode), which also holds
  the time of threads that started and exited between two reads (no read saw them; with
  scrapes more than ~10 s apart, raise ``GIL_ADAPT_DEAD_KEEP_MS``). With
  ``per_thread="name"`` the series then add up to the process totals (the per-thread
  mode's series of threads no longer listed end instead). A thread named ``other`` is
  counted there.

The default bounds the series of each scrape (65 at most) and keeps the thread ids; a
program that starts a thread per request or whose pools come and go creates new thread
ids all the time: use ``per_thread="name"`` there, which bounds the series for good.

Thread names: Python's name of a live thread. So that a thread that exits before a read
sees it alive keeps its name, the first export of per-thread series installs a
``threading.setprofile`` hook that notes each thread's name as it starts, once (the
thread's profiling then goes back to the program's hook, which it calls: chained, as
``gil-adapt run`` does; a hook the program sets later replaces it). A thread with no
name (a native thread that set none, or one started before the hook that exited unseen)
is labelled ``unnamed``: no label value is empty.

Counters never go down: a thread's states are re-partitioned from its raw totals at each
read (the share of GIL waits spent runnable is an estimate that moves a little), so a
state may be re-estimated slightly lower; the exporter then keeps the value it already
published.
"""
from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Deque, Dict, Iterator, List, NamedTuple, Optional, Tuple

from . import _ledger
from . import _metrics_helper as _helper

log = logging.getLogger("gil_adapt")

WINDOW_S = 10.0  # the ratio gauges (beta, contention, GIL utilisation) cover the last 10 s
CONTENT_TYPE_TEXT = _helper.CONTENT_TYPE_TEXT
CONTENT_TYPE_OPENMETRICS = _helper.CONTENT_TYPE_OPENMETRICS

# (ledger key, metric name part, what it is)
_STATE_METRICS = (
    ("cpu_ns", "cpu", "on a core, running"),
    ("gil_wait_ns", "gil_wait", "waiting to take the GIL"),
    ("lock_wait_ns", "lock_wait", "blocked on a Python-level lock"),
    ("runq_wait_ns", "runq_wait", "runnable, waiting for a core"),
    ("io_wait_ns", "io_wait", "blocked on anything else: I/O, sleeps, devices"),
    ("idle_ns", "idle", "an executor worker waiting for work"),
    ("gil_held_ns", "gil_held", "holding the GIL (overlaps cpu and runq_wait: not a state)"),
)


class Family(NamedTuple):
    """One metric family: its name without its type's suffix (``_total`` for a counter,
    ``_info`` for an info metric); samples are (labels, value)."""

    name: str
    type: str  # "counter", "gauge" or "info"
    help: str
    unit: str  # "seconds", "ratio" or ""
    samples: List[Tuple[Dict[str, str], float]]


# ---- per-thread series: options, names -------------------------------------------------

PER_THREAD_MODES = ("thread", "name", "none")
DEFAULT_PER_THREAD = "thread"
DEFAULT_MAX_THREAD_SERIES = 64
ENV_PER_THREAD = "GIL_ADAPT_METRICS_PER_THREAD"
ENV_MAX_THREAD_SERIES = "GIL_ADAPT_METRICS_MAX_THREAD_SERIES"
OTHER = "other"      # the series of the threads beyond max_thread_series (and unseen ones)
UNNAMED = "unnamed"  # the name of a thread that has none (never an empty label value)

_NUMBERS = re.compile(r"0[xX][0-9a-fA-F]+|[0-9]+")


def aggregate_name(name: str) -> str:
    """The name a thread is counted under with ``per_thread="name"``: runs of digits and
    ``0x`` ids become ``N`` (``"Thread-12 (process_request_thread)"`` ->
    ``"Thread-N (process_request_thread)"``, ``"ThreadPoolExecutor-0_3"`` ->
    ``"ThreadPoolExecutor-N_N"``); an empty name is ``"unnamed"``."""
    return _NUMBERS.sub("N", name) or UNNAMED


def thread_options(per_thread: Optional[str] = None,
                   max_thread_series: Optional[int] = None) -> Tuple[str, int]:
    """The per-thread options in effect: the arguments where given (checked: TypeError or
    ValueError with what is allowed), else ``GIL_ADAPT_METRICS_PER_THREAD`` /
    ``GIL_ADAPT_METRICS_MAX_THREAD_SERIES`` from the environment (a bad value logs one
    warning and gives the default), else ``("thread", 64)``."""
    if per_thread is None:
        env = os.environ.get(ENV_PER_THREAD, "").strip().lower()
        if env in PER_THREAD_MODES:
            per_thread = env
        else:
            if env:
                _ledger._bad_env(ENV_PER_THREAD, os.environ[ENV_PER_THREAD],
                                 "one of " + "/".join(PER_THREAD_MODES), DEFAULT_PER_THREAD)
            per_thread = DEFAULT_PER_THREAD
    elif not isinstance(per_thread, str):
        raise TypeError(f"per_thread must be a str (one of {', '.join(PER_THREAD_MODES)}), "
                        f"not {type(per_thread).__name__}")
    elif per_thread not in PER_THREAD_MODES:
        raise ValueError(f"per_thread must be one of {', '.join(map(repr, PER_THREAD_MODES))}, "
                         f"not {per_thread!r}")
    if max_thread_series is None:
        env_cap = _ledger.env_count(ENV_MAX_THREAD_SERIES, "a count >= 0 (0: no cap)")
        max_thread_series = DEFAULT_MAX_THREAD_SERIES if env_cap is None else env_cap
    elif not isinstance(max_thread_series, int) or isinstance(max_thread_series, bool):
        raise TypeError("max_thread_series must be an int (0: no cap), "
                        f"not {type(max_thread_series).__name__}")
    elif max_thread_series < 0:
        raise ValueError(f"max_thread_series must be >= 0 (0: no cap), not {max_thread_series}")
    return per_thread, max_thread_series


# Names of threads as they start (native id -> (order, name)), from a one-time profile
# hook installed when per-thread series are first exported: a thread that exited before
# a read is no longer in threading.enumerate(), and its OS name is the process's (before
# Python 3.14 names OS threads).
_BORN_MAX = 16384  # the ledger's table size: older entries than that are dropped
_born: Dict[int, Tuple[int, str]] = {}
_born_order = itertools.count()
_born_hook_prev: Any = None
_born_hook_on = False
_born_hook_lock = threading.Lock()


def _on_thread_start(frame: Any, event: str, arg: Any) -> None:
    prev = _born_hook_prev
    try:
        # threading's own entry only: current_thread() would make a _DummyThread for a
        # thread that is still registering itself (an AdaptiveExecutor worker)
        t = getattr(threading, "_active", {}).get(threading.get_ident())
        native = getattr(t, "native_id", None)
        if native is not None:
            _born[native] = (next(_born_order), str(t.name))
            if len(_born) > _BORN_MAX:
                del _born[next(iter(_born))]
    except Exception:  # another thread's change, threading internals: never the thread's
        pass
    sys.setprofile(prev)  # once per thread: hand over to the program's hook, if any
    if prev is not None:
        prev(frame, event, arg)


def _install_born_hook() -> None:
    """Installs the thread-start name hook once per process (never removed; a program
    that sets its own later replaces it, and names are then learned at reads only)."""
    global _born_hook_prev, _born_hook_on
    if _born_hook_on:  # the common case, without the lock (a forked child's may be held)
        return
    with _born_hook_lock:
        if _born_hook_on:
            return
        _born_hook_on = True
        getprofile = getattr(threading, "getprofile", None)
        _born_hook_prev = (getprofile() if getprofile is not None
                           else getattr(threading, "_profile_hook", None))
        threading.setprofile(_on_thread_start)


def _prune_born(before: int, listed: "set[int]") -> None:
    """Drops names recorded before a read whose threads that read no longer lists."""
    try:
        items = list(_born.items())
    except RuntimeError:  # changed while copied (a free-threaded build): next read
        return
    for tid, (order, _name) in items:
        if order < before and tid not in listed:
            _born.pop(tid, None)


# ---- executors ---------------------------------------------------------------------------

_executors: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()
_executors_lock = threading.Lock()
_executor_serial = 0


def register_executor(executor: Any) -> None:
    """Exports ``executor.stats()`` with the other metrics while the executor lives.

    Held weakly: registering never keeps an executor alive. An executor whose ``stats()``
    raises (shut down, broken) is skipped at that read. ``AdaptiveExecutor`` calls this
    itself; any object with a ``stats() -> dict`` in its format may be registered
    (keys used: ``workers``, ``target_workers``, ``queue_length``, ``beta``,
    ``throughput``, ``submitted``, ``completed``, ``decisions``).
    """
    global _executor_serial
    if not callable(getattr(executor, "stats", None)):
        raise TypeError("register_executor needs an object with a stats() method")
    with _executors_lock:
        for ex in _executors.values():
            if ex is executor:
                return
        _executor_serial += 1
        _executors[_executor_serial] = executor


def unregister_executor(executor: Any) -> None:
    """Stops exporting an executor (no error when it was not registered)."""
    with _executors_lock:
        for key, ex in list(_executors.items()):
            if ex is executor:
                del _executors[key]


def executors() -> List[Tuple[str, Dict[str, Any]]]:
    """(label, stats) of every registered executor that is alive and answers stats()."""
    with _executors_lock:
        items = sorted(_executors.items())
    out: List[Tuple[str, Dict[str, Any]]] = []
    seen: Dict[str, int] = {}
    for serial, ex in items:
        try:
            stats = ex.stats()
        except Exception:  # shut down or broken: nothing to export now
            log.debug("gil_adapt.metrics: stats() of executor %d failed", serial, exc_info=True)
            continue
        name = str(getattr(ex, "_thread_name_prefix", "") or f"executor-{serial}")
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        out.append((name, stats))
    return out


# ---- reading the ledger ----------------------------------------------------------------


def _num(value: Any) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


_STATE_KEYS = tuple(k for k, _, _ in _STATE_METRICS)
Samples = List[Tuple[Dict[str, str], float]]


class _Record:
    """A thread record (native id, serial) as one per-thread configuration follows it."""

    __slots__ = ("name", "series", "values", "dead")

    def __init__(self, name: str) -> None:
        self.name = name
        self.series: Optional[str] = None  # per_thread="thread": None = a series of its own
        self.values = [0.0] * len(_STATE_KEYS)  # seconds, never lower than published
        self.dead = False


class _ThreadSeries:
    """The per-thread families of one (per_thread, max_thread_series) configuration.

    Counters stay monotonic: a record's values never go below what was published; a
    name's (or "other"'s) series adds its listed records to the totals its records had
    when the ledger stopped listing them. "other" also holds the exited threads no read
    saw: the ledger's exited aggregate less what the records seen dead (or gone) hold.
    """

    def __init__(self, mode: str, cap: int) -> None:
        self.mode = mode
        self.cap = cap
        self.records: Dict[Tuple[int, int], _Record] = {}
        self.own = 0  # per_thread="thread": records with a series of their own
        self.kept: Dict[str, List[float]] = {}  # name or OTHER -> totals of its gone records
        self.gone = [0.0] * len(_STATE_KEYS)    # totals of every record no longer listed
        self.unseen = [0.0] * len(_STATE_KEYS)  # exited threads no read saw (monotonic)
        self.published: Dict[Tuple[str, int], float] = {}
        self.other_shown = False

    def _assign(self, rec: _Record) -> None:
        if self.mode == "thread":
            if self.cap == 0 or self.own < self.cap:
                self.own += 1
                return
            group = OTHER
        else:
            group = aggregate_name(rec.name)
            if group != OTHER and group not in self.kept and self.cap and \
                    sum(1 for g in self.kept if g != OTHER) >= self.cap:
                group = OTHER
        rec.series = group  # for good: a name's series (or "other") keeps its time
        self.kept.setdefault(group, [0.0] * len(_STATE_KEYS))

    def _guard(self, series: str, i: int, value: float) -> float:
        key = (series, i)
        last = self.published.get(key, 0.0)
        if value < last:
            return last
        self.published[key] = value
        return value

    def update(self, snap: Dict[str, Any], python_names: Dict[int, str],
               inherited: str) -> Dict[str, Samples]:
        """The samples of each state key at this read."""
        n = len(_STATE_KEYS)
        listed = set()
        dead = [0.0] * n
        threads = snap["threads"]
        for tid in sorted(threads, key=lambda tid: threads[tid]["serial"]):
            t = threads[tid]
            key = (tid, t["serial"])
            listed.add(key)
            alive = bool(t["alive"])
            rec = self.records.get(key)
            if rec is None:
                rec = self.records[key] = _Record(_thread_name(tid, t, python_names,
                                                               inherited))
                self._assign(rec)
            elif alive and not rec.dead and python_names.get(tid):
                rec.name = python_names[tid]  # renamed while alive (its label follows)
            rec.dead = rec.dead or not alive
            for i, k in enumerate(_STATE_KEYS):
                v = t[k] / 1e9
                if v > rec.values[i]:
                    rec.values[i] = v
            if rec.dead:
                for i in range(n):
                    dead[i] += rec.values[i]
        for key in [key for key in self.records if key not in listed]:
            rec = self.records.pop(key)
            for i in range(n):
                self.gone[i] += rec.values[i]
            if rec.series is not None:
                kept = self.kept[rec.series]
                for i in range(n):
                    kept[i] += rec.values[i]
            else:
                self.own -= 1
        exited = snap["exited"]
        for i, k in enumerate(_STATE_KEYS):
            v = exited.get(k, 0) / 1e9 - self.gone[i] - dead[i]
            if v > self.unseen[i]:
                self.unseen[i] = v

        sums: Dict[str, List[float]] = {g: list(v) for g, v in self.kept.items()}
        sums.setdefault(OTHER, [0.0] * n)
        own: List[Tuple[int, _Record]] = []  # per_thread="thread": by thread id
        for (tid, _serial), rec in sorted(self.records.items()):
            if rec.series is None:
                own.append((tid, rec))
            else:
                s = sums[rec.series]
                for i in range(n):
                    s[i] += rec.values[i]
        other = sums[OTHER]
        for i in range(n):
            other[i] += self.unseen[i]
        if any(v > 0 for v in other) or OTHER in self.kept:
            self.other_shown = True

        out: Dict[str, Samples] = {k: [] for k in _STATE_KEYS}
        for i, k in enumerate(_STATE_KEYS):
            samples = out[k]
            if self.mode == "thread":
                for tid, rec in own:
                    samples.append(({"thread": rec.name, "tid": str(tid)}, rec.values[i]))
            else:
                for group in sorted(g for g in sums if g != OTHER and g in self.kept):
                    samples.append(({"thread": group}, self._guard(group, i, sums[group][i])))
            if self.other_shown:
                labels = {"thread": OTHER, "tid": OTHER} if self.mode == "thread" \
                    else {"thread": OTHER}
                samples.append((labels, self._guard(OTHER, i, other[i])))
        return out


def _thread_name(tid: int, t: Dict[str, Any], python_names: Dict[int, str],
                 inherited: str) -> str:
    """A record's name when first seen: Python's name of the live thread, else the name it
    started with (the hook), else its OS name unless that is the process's it inherited."""
    name = python_names.get(tid) if t["alive"] else None
    if name is None:
        born = _born.get(tid)
        name = born[1] if born is not None else None
    if name is None:
        name = str(t.get("name") or "")
        if name and inherited and (name == inherited or inherited.startswith(name)):
            name = ""
    return name or UNNAMED


class _Exporter:
    """Reads the ledger into families; keeps counters monotonic and the gauge window."""

    _MAX_CONFIGS = 16  # per-thread configurations followed at once (oldest dropped)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: Dict[Tuple[str, int], _ThreadSeries] = {}
        self._published_process: Dict[str, float] = {}
        self._window: Deque[Tuple[int, Dict[str, float]]] = collections.deque()

    def families(self, per_thread: str, max_thread_series: int) -> List[Family]:
        _ledger.install()
        if per_thread != "none":
            _install_born_hook()
        before = next(_born_order)
        python_names = _ledger._python_names()
        snap = _ledger.snapshot()
        caps = _ledger.capabilities()
        with self._lock:
            fams = self._ledger_families(snap, python_names, per_thread, max_thread_series)
        if _born:
            _prune_born(before, set(snap["threads"]))
        fams.extend(_executor_families())
        info = {"version": _version(), "python": sys.version.split()[0],
                "implementation": sys.implementation.name}
        for k in ("gil_wait", "runq_wait", "lock_wait"):
            if isinstance(caps.get(k), str) and caps[k]:
                info[k] = caps[k]
        fams.append(Family("gil_adapt_build", "info",
                           "gil-adapt's version and how each state is measured here "
                           "(exact/estimated/unavailable)", "", [(info, 1.0)]))
        return fams

    def _per_thread(self, per_thread: str, cap: int) -> _ThreadSeries:
        key = (per_thread, cap)
        series = self._threads.pop(key, None)
        if series is None:
            series = _ThreadSeries(per_thread, cap)
            while len(self._threads) >= self._MAX_CONFIGS:
                del self._threads[next(iter(self._threads))]
        self._threads[key] = series  # the most recently used last
        return series

    def _ledger_families(self, snap: Dict[str, Any], python_names: Dict[int, str],
                         per_thread: str, cap: int) -> List[Family]:
        keys = _STATE_KEYS
        process = {k: float(snap["exited"].get(k, 0)) for k in keys}
        live = 0
        for t in snap["threads"].values():
            if t["alive"]:
                live += 1
                for k in keys:
                    process[k] += t[k]
        for k in keys:
            v = process[k] / 1e9
            last = self._published_process.get(k, 0.0)
            process[k] = max(v, last)
            self._published_process[k] = process[k]

        fams: List[Family] = []
        if per_thread != "none":
            per_state = self._per_thread(per_thread, cap).update(
                snap, python_names, _ledger.process_name())
            for k, part, what in _STATE_METRICS:
                who = "each thread" if per_thread == "thread" else "the threads of each name"
                fams.append(Family(f"gil_adapt_thread_{part}_seconds", "counter",
                                   f"Time {who} spent {what}.", "seconds", per_state[k]))
        for k, part, what in _STATE_METRICS:
            fams.append(Family(f"gil_adapt_{part}_seconds", "counter",
                               f"Time all threads (exited ones included) spent {what}.",
                               "seconds", [({}, process[k])]))
        switches = snap.get("gil_switches", -1)
        if switches is not None and switches >= 0:
            fams.append(Family("gil_adapt_gil_switches", "counter",
                               "GIL hand-offs between threads.", "", [({}, float(switches))]))
        fams.append(Family("gil_adapt_threads", "gauge",
                           "Live threads the ledger knows.", "", [({}, float(live))]))
        fams.extend(self._window_gauges(snap["time_ns"], process))
        return fams

    def _window_gauges(self, now_ns: int, process: Dict[str, float]) -> List[Family]:
        win = self._window
        win.append((now_ns, dict(process)))
        # Keep the newest reading at least WINDOW_S old (and the ones after it).
        while len(win) >= 2 and now_ns - win[1][0] >= WINDOW_S * 1e9:
            win.popleft()
        if len(win) > 4096:  # a burst of reads: thin the middle, keep both ends
            keep = [win[0]] + list(win)[-2048:]
            win.clear()
            win.extend(keep)
        t0, old = win[0]
        if len(win) == 1:  # the first read: the ratios since the ledger started
            old = {k: 0.0 for k in process}
        d = {k: process[k] - old[k] for k in process}
        elapsed = (now_ns - t0) / 1e9
        gil, io, runq = d["gil_wait_ns"], d["io_wait_ns"], d["runq_wait_ns"]
        span = (f"over the last {WINDOW_S:g} s (at the first read: since the ledger "
                "started; GIL utilisation from the second read on)")
        return [
            Family("gil_adapt_beta_ratio", "gauge",
                   f"GIL share of the threads' waiting, gil_wait / (gil_wait + io_wait), {span}; "
                   "NaN when they did not wait.", "ratio", [({}, _ratio(gil, gil + io))]),
            Family("gil_adapt_contention_ratio", "gauge",
                   "(gil_wait + runq_wait) / (gil_wait + runq_wait + io_wait) " + span + ".",
                   "ratio", [({}, _ratio(gil + runq, gil + runq + io))]),
            Family("gil_adapt_gil_utilisation_ratio", "gauge",
                   "Share of wall time some thread held the GIL (exact: take/drop hooks) "
                   + span + ".", "ratio",
                   [({}, min(1.0, _ratio(d["gil_held_ns"], elapsed)) if elapsed > 0
                     else math.nan)]),
        ]


def _version() -> str:
    try:
        from . import __version__
        return str(__version__)
    except ImportError:
        return "unknown"


def _executor_families() -> List[Family]:
    # (stats() key, metric name part, unit, help)
    gauges = (("workers", "workers", "", "Live worker threads."),
              ("target_workers", "target_workers", "", "Workers the controller aims for."),
              ("queue_length", "queue_length", "", "Tasks waiting for a worker."),
              ("beta", "beta_ratio", "ratio",
               "GIL share of the workers' waiting in the controller's last window."),
              ("throughput", "tasks_per_second", "",
               "Tasks completed per second in the controller's last window."))
    counters = (("submitted", "tasks_submitted", "Tasks submitted."),
                ("completed", "tasks_completed", "Tasks completed."))
    exs = executors()
    fams: List[Family] = []
    for key, part, unit, help_ in gauges:
        fams.append(Family(f"gil_adapt_executor_{part}", "gauge", help_, unit,
                           [({"executor": name}, _num(st.get(key))) for name, st in exs
                            if key in st]))
    for key, part, help_ in counters:
        fams.append(Family(f"gil_adapt_executor_{part}", "counter", help_, "",
                           [({"executor": name}, _num(st.get(key))) for name, st in exs
                            if key in st]))
    decisions = []
    for name, st in exs:
        for decision, count in sorted((st.get("decisions") or {}).items()):
            decisions.append(({"executor": name, "decision": str(decision) or "unknown"},
                              _num(count)))
    fams.append(Family("gil_adapt_executor_decisions", "counter",
                       "Controller decisions by kind (grow, shrink, veto, hold).", "",
                       decisions))
    return fams


_exporter = _Exporter()


def families(*, per_thread: Optional[str] = None,
             max_thread_series: Optional[int] = None) -> List[Family]:
    """The metrics now as :class:`Family` tuples (what the text formats and Collector use).

    ``per_thread`` and ``max_thread_series``: see the module's docstring and
    :func:`thread_options` (TypeError/ValueError for a bad value).
    """
    return _exporter.families(*thread_options(per_thread, max_thread_series))


# ---- text formats -------------------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _value(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def _labels(labels: Dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items()) + "}"


_SUFFIX = {"counter": "_total", "info": "_info"}


def render(fams: List[Family], openmetrics: bool = False) -> str:
    """Families in the Prometheus text format 0.0.4, or OpenMetrics 1.0 (where an info
    metric is of type ``info``; the text format has no such type: a gauge)."""
    out: List[str] = []
    for f in fams:
        sample = f.name + _SUFFIX.get(f.type, "")
        head = f.name if openmetrics else sample
        kind = "gauge" if f.type == "info" and not openmetrics else f.type
        out.append(f"# HELP {head} {_escape_help(f.help)}\n")
        out.append(f"# TYPE {head} {kind}\n")
        if openmetrics and f.unit:
            out.append(f"# UNIT {head} {f.unit}\n")
        for labels, v in f.samples:
            out.append(f"{sample}{_labels(labels)} {_value(v)}\n")
    if openmetrics:
        out.append("# EOF\n")
    return "".join(out)


def metrics_text(openmetrics: bool = False, *, per_thread: Optional[str] = None,
                 max_thread_series: Optional[int] = None) -> str:
    """The ledger's per-thread states, process totals, beta and executors, as text.

    Prometheus text format 0.0.4 by default (``CONTENT_TYPE_TEXT``); OpenMetrics 1.0
    (``CONTENT_TYPE_OPENMETRICS``) with ``openmetrics=True``. Installs the ledger's hooks
    if they are not installed yet.

    ``per_thread``: ``"thread"`` (a series per thread, the default), ``"name"`` (a series
    per thread name, numbers normalised) or ``"none"``; ``max_thread_series``: at most
    that many per-thread series, the rest in ``thread="other"`` (default 64; 0: no cap).
    Unset: ``GIL_ADAPT_METRICS_PER_THREAD`` / ``GIL_ADAPT_METRICS_MAX_THREAD_SERIES``,
    else the defaults (see the module's docstring). A bad value raises TypeError or
    ValueError. Each combination keeps its own state (what it published), so read with
    the same options each time for counters that never go down.
    """
    return render(families(per_thread=per_thread, max_thread_series=max_thread_series),
                  openmetrics)


# ---- prometheus_client --------------------------------------------------------------------


class Collector:
    """The same metrics for a ``prometheus_client`` registry (needs prometheus_client).

    ``prometheus_client.REGISTRY.register(gil_adapt.metrics.Collector())``;
    ``per_thread`` and ``max_thread_series`` as for :func:`metrics_text` (checked, and
    read from the environment where not given, here).
    """

    def __init__(self, *, per_thread: Optional[str] = None,
                 max_thread_series: Optional[int] = None) -> None:
        self.per_thread, self.max_thread_series = thread_options(per_thread,
                                                                 max_thread_series)
        if self.per_thread != "none":
            _install_born_hook()

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            InfoMetricFamily)

        for f in families(per_thread=self.per_thread,
                          max_thread_series=self.max_thread_series):
            if f.type == "info":
                info = InfoMetricFamily(f.name, f.help)
                for labels, _v in f.samples:
                    info.add_metric([], labels)
                yield info
                continue
            names = list(f.samples[0][0]) if f.samples else []
            cls = CounterMetricFamily if f.type == "counter" else GaugeMetricFamily
            fam = cls(f.name, f.help, labels=names, unit=f.unit)
            for labels, v in f.samples:
                fam.add_metric([labels[n] for n in names], v)
            yield fam


# ---- HTTP ---------------------------------------------------------------------------------


class _Cache:
    """Rendered bodies, reused for max_age_s so that a burst of scrapes reads once."""

    def __init__(self, max_age_s: float, per_thread: str = DEFAULT_PER_THREAD,
                 max_thread_series: int = DEFAULT_MAX_THREAD_SERIES) -> None:
        self.max_age_s = max_age_s
        self.per_thread = per_thread
        self.max_thread_series = max_thread_series
        self._lock = threading.Lock()
        self._bodies: Dict[bool, Tuple[float, bytes]] = {}

    def body(self, openmetrics: bool) -> Optional[bytes]:
        with self._lock:
            now = time.monotonic()
            hit = self._bodies.get(openmetrics)
            if hit is not None and now - hit[0] < self.max_age_s:
                return hit[1]
            try:
                body = metrics_text(openmetrics, per_thread=self.per_thread,
                                    max_thread_series=self.max_thread_series).encode("utf-8")
            except Exception:
                log.exception("gil_adapt.metrics: reading the metrics failed")
                return None
            self._bodies[openmetrics] = (now, body)
            return body


def _serve_in_thread(sock: socket.socket, cache: _Cache, closing: threading.Event) -> None:
    """Answers scrapes until closing is set (see _metrics_helper.serve: several clients at
    once, each within a deadline)."""
    try:
        _helper.serve(sock, cache.body, closing.is_set, poll_s=0.25)
    except Exception:  # never lose the program to its exporter
        log.exception("gil_adapt.metrics: the metrics server stopped")


def _feed_helper(ctl: socket.socket, cache: _Cache) -> None:
    """Answers the helper process's refresh requests until the control socket closes."""
    while True:
        try:
            req = _helper._recv_exact(ctl, 5)
        except OSError:
            return
        if req is None:
            return
        body = cache.body(req[:1] == b"O")
        frame = req[1:] + struct.pack("!I", _helper.FAILED if body is None else len(body))
        try:
            ctl.sendall(frame + (body or b""))
        except OSError:
            return


_servers: "weakref.WeakSet[MetricsServer]" = weakref.WeakSet()


class MetricsServer:
    """A running exporter (from :func:`serve_metrics`).

    ``addr``, ``port``, ``url``; ``mode`` (``"process"`` or ``"thread"``); ``native_id``
    of the thread in this process that serves (thread mode) or feeds the helper
    (process mode); ``pid`` of the helper process (process mode); ``close()``.
    """

    def __init__(self, addr: str, port: int, thread: threading.Thread, mode: str,
                 sock: socket.socket, helper: Optional[subprocess.Popen] = None,
                 closing: Optional[threading.Event] = None) -> None:
        self.addr = addr
        self.port = port
        self.mode = mode
        self.native_id: Optional[int] = thread.native_id
        self.pid: Optional[int] = helper.pid if helper is not None else None
        host = f"[{addr}]" if ":" in addr else addr
        self.url = f"http://{host}:{port}/metrics"
        self._thread = thread
        self._sock = sock  # the listening socket (thread) or the control socket (process)
        self._helper = helper
        self._closing = closing
        self._closed = False
        _servers.add(self)

    def close(self) -> None:
        """Stops serving: the port is free and the helper process has exited on return."""
        if self._closed:
            return
        self._closed = True
        if self._closing is not None:
            self._closing.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()/recv()
        except OSError:
            pass
        if self._thread is not threading.current_thread():
            self._thread.join()
        self._sock.close()
        if self._helper is not None:
            try:
                self._helper.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                log.warning("gil_adapt.metrics: helper %d did not exit; killing it",
                            self._helper.pid)
                self._helper.kill()
                self._helper.wait()

    def _forget_after_fork(self) -> None:
        # In a forked child: close our copies, touch nothing shared (the parent serves on).
        self._closed = True
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url} ({self.mode})>"


def _after_fork_child() -> None:
    for server in list(_servers):
        server._forget_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_child)


def _start_helper(addr: str, port: int, cache: _Cache) -> MetricsServer:
    ours, theirs = socket.socketpair()
    try:
        helper = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(_helper.__file__),
             str(theirs.fileno()), addr, str(port), repr(cache.max_age_s)],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, start_new_session=True)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    try:
        ours.settimeout(10.0)
        status = b""
        while not status.endswith(b"\n"):
            chunk = ours.recv(512)
            if not chunk:
                break
            status += chunk
        ours.settimeout(None)
    except OSError as e:
        status = f"ERR {e.errno or 0} helper did not answer: {e}\n".encode()
    words = status.decode("utf-8", "replace").split(" ", 2)
    if words[0] != "OK":
        ours.close()
        if helper.poll() is None:
            helper.kill()
        helper.wait()
        if words[0] == "ERR" and len(words) == 3:
            raise OSError(int(words[1]) or None, words[2].strip())
        raise OSError(None, f"the helper process failed to start (exit {helper.returncode})")
    thread = threading.Thread(target=_feed_helper, args=(ours, cache),
                              name="gil-adapt-metrics", daemon=True)
    thread.start()
    return MetricsServer(addr, int(words[1]), thread, "process", ours, helper)


def serve_metrics(port: int, addr: str = "127.0.0.1", *, max_age_s: float = 1.0,
                  in_process: bool = False, per_thread: Optional[str] = None,
                  max_thread_series: Optional[int] = None) -> MetricsServer:
    """Serves ``GET /metrics`` on ``addr:port``; returns a handle with ``close()``.

    Loopback only unless ``addr`` says otherwise; ``port=0`` picks a free port (see
    ``handle.port``). OpenMetrics is served when the request's Accept header asks for
    ``application/openmetrics-text``, else the text format 0.0.4. Scrapes within
    ``max_age_s`` of each other share one read of the ledger.

    By default a small helper process (``python -I -S``, standard library only, ~10 MB)
    listens and answers the scrapes; this process only renders the metrics for it, at
    most once per ``max_age_s``, on a daemon thread. So a flood of scrapes costs a
    GIL-bound program nothing more than one read per ``max_age_s`` (a server thread in
    the program costs a few GIL hand-offs per scrape: about 10 % of the throughput of 4
    GIL-bound threads at 30 scrapes/s, see benchmarks/metrics_load.py). The helper exits
    when the server is closed or this process ends, however it ends. ``in_process=True``
    serves from a daemon thread instead (no extra process; also used when no interpreter
    can be started: no ``sys.executable``, or gil_adapt imported from a zip).

    ``per_thread`` and ``max_thread_series``: the per-thread series, as for
    :func:`metrics_text` (read from the environment here where not given, so
    ``GIL_ADAPT_METRICS_PER_THREAD=name gil-adapt run --port 9464 app.py`` works).

    Raises OSError with a clear message when the address cannot be bound (port in use,
    no such address), ValueError for a port out of range, TypeError or ValueError for a
    bad ``per_thread`` or ``max_thread_series`` (before anything listens).
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, not {port!r}")
    mode, cap = thread_options(per_thread, max_thread_series)
    _ledger.install()
    if mode != "none":
        _install_born_hook()  # now: threads that start before the first scrape are named
    cache = _Cache(max_age_s, mode, cap)
    try:
        if not in_process and sys.executable and os.path.isfile(_helper.__file__):
            handle = _start_helper(addr, port, cache)
        else:
            sock = _helper.listen(addr, port)
            closing = threading.Event()
            thread = threading.Thread(target=_serve_in_thread, args=(sock, cache, closing),
                                      name="gil-adapt-metrics", daemon=True)
            thread.start()
            bound = sock.getsockname()
            handle = MetricsServer(bound[0], bound[1], thread, "thread", sock,
                                   closing=closing)
    except OSError as e:
        raise OSError(e.errno, f"gil_adapt.serve_metrics: cannot listen on {addr}:{port}: "
                               f"{e.strerror or e}") from e
    log.info("gil_adapt: serving metrics at %s (%s)", handle.url, handle.mode)
    return handle
