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

Metrics (names and units by Prometheus conventions; seconds are the ledger's states,
which partition each thread's wall time)::

    gil_adapt_thread_{cpu,gil_wait,lock_wait,runq_wait,io_wait,idle}_seconds_total{thread,tid}
    gil_adapt_thread_gil_held_seconds_total{thread,tid}   (overlaps cpu/runq: not a state)
    gil_adapt_{cpu,gil_wait,lock_wait,runq_wait,io_wait,idle,gil_held}_seconds_total
                                                  (every thread, exited ones included)
    gil_adapt_gil_switches_total, gil_adapt_threads
    gil_adapt_beta, gil_adapt_contention, gil_adapt_gil_utilisation   (last WINDOW_S)
    gil_adapt_executor_{workers,target_workers,queue_length,beta,throughput}{executor}
    gil_adapt_executor_decisions_total{executor,decision}
    gil_adapt_executor_tasks_{submitted,completed}_total{executor}
    gil_adapt_build_info{version,python,gil_wait,...} 1

Counters never go down: a thread's states are re-partitioned from its raw totals at each
read (the share of GIL waits spent runnable is an estimate that moves a little), so a
state may be re-estimated slightly lower; the exporter then keeps the value it already
published.
"""
from __future__ import annotations

import collections
import logging
import math
import os
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
    """One metric family: name without ``_total``; samples are (labels, value)."""

    name: str
    type: str  # "counter" or "gauge"
    help: str
    unit: str  # "seconds" or ""
    samples: List[Tuple[Dict[str, str], float]]


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


class _Exporter:
    """Reads the ledger into families; keeps counters monotonic and the gauge window."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published: Dict[Tuple[int, int, str], float] = {}  # (tid, serial, key)
        self._published_process: Dict[str, float] = {}
        self._window: Deque[Tuple[int, Dict[str, float]]] = collections.deque()

    def _monotonic(self, key: Tuple[int, int, str], value: float) -> float:
        last = self._published.get(key, 0.0)
        if value < last:
            return last
        self._published[key] = value
        return value

    def families(self) -> List[Family]:
        _ledger.install()
        snap = _ledger.snapshot()
        caps = _ledger.capabilities()
        with self._lock:
            fams = self._ledger_families(snap)
        fams.extend(_executor_families())
        info = {"version": _version(), "python": sys.version.split()[0],
                "implementation": sys.implementation.name}
        for k in ("gil_wait", "runq_wait", "lock_wait"):
            if isinstance(caps.get(k), str):
                info[k] = caps[k]
        fams.append(Family("gil_adapt_build_info", "gauge",
                           "gil-adapt's version and how each state is measured here "
                           "(exact/estimated/unavailable)", "", [(info, 1.0)]))
        return fams

    def _ledger_families(self, snap: Dict[str, Any]) -> List[Family]:
        keys = [k for k, _, _ in _STATE_METRICS]
        per_state: Dict[str, List[Tuple[Dict[str, str], float]]] = {k: [] for k in keys}
        live_keys = set()
        process = {k: float(snap["exited"].get(k, 0)) for k in keys}
        live = 0
        for tid, t in sorted(snap["threads"].items()):
            labels = {"thread": str(t["name"]), "tid": str(tid)}
            for k in keys:
                key = (tid, t["serial"], k)
                live_keys.add(key)
                per_state[k].append((labels, self._monotonic(key, t[k] / 1e9)))
            if t["alive"]:
                live += 1
                for k in keys:
                    process[k] += t[k]
        for key in list(self._published):
            if key not in live_keys:
                del self._published[key]
        for k in keys:
            v = process[k] / 1e9
            last = self._published_process.get(k, 0.0)
            process[k] = max(v, last)
            self._published_process[k] = process[k]

        fams: List[Family] = []
        for k, part, what in _STATE_METRICS:
            fams.append(Family(f"gil_adapt_thread_{part}_seconds", "counter",
                               f"Time each thread spent {what}.", "seconds", per_state[k]))
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
            Family("gil_adapt_beta", "gauge",
                   f"GIL share of the threads' waiting, gil_wait / (gil_wait + io_wait), {span}; "
                   "NaN when they did not wait.", "", [({}, _ratio(gil, gil + io))]),
            Family("gil_adapt_contention", "gauge",
                   "(gil_wait + runq_wait) / (gil_wait + runq_wait + io_wait) " + span + ".",
                   "", [({}, _ratio(gil + runq, gil + runq + io))]),
            Family("gil_adapt_gil_utilisation", "gauge",
                   "Share of wall time some thread held the GIL (exact: take/drop hooks) "
                   + span + ".", "",
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
    gauges = (("workers", "Live worker threads."),
              ("target_workers", "Workers the controller aims for."),
              ("queue_length", "Tasks waiting for a worker."),
              ("beta", "GIL share of the workers' waiting in the controller's last window."),
              ("throughput", "Tasks per second in the controller's last window."))
    counters = (("submitted", "tasks_submitted", "Tasks submitted."),
                ("completed", "tasks_completed", "Tasks completed."))
    exs = executors()
    fams: List[Family] = []
    for key, help_ in gauges:
        fams.append(Family(f"gil_adapt_executor_{key}", "gauge", help_, "",
                           [({"executor": name}, _num(st.get(key))) for name, st in exs
                            if key in st]))
    for key, part, help_ in counters:
        fams.append(Family(f"gil_adapt_executor_{part}", "counter", help_, "",
                           [({"executor": name}, _num(st.get(key))) for name, st in exs
                            if key in st]))
    decisions = []
    for name, st in exs:
        for decision, count in sorted((st.get("decisions") or {}).items()):
            decisions.append(({"executor": name, "decision": str(decision)}, _num(count)))
    fams.append(Family("gil_adapt_executor_decisions", "counter",
                       "Controller decisions by kind (grow, shrink, veto, hold).", "",
                       decisions))
    return fams


_exporter = _Exporter()


def families() -> List[Family]:
    """The metrics now as :class:`Family` tuples (what the text formats and Collector use)."""
    return _exporter.families()


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


def render(fams: List[Family], openmetrics: bool = False) -> str:
    """Families in the Prometheus text format 0.0.4, or OpenMetrics 1.0."""
    out: List[str] = []
    for f in fams:
        sample = f.name + ("_total" if f.type == "counter" else "")
        head = f.name if openmetrics else sample
        out.append(f"# HELP {head} {_escape_help(f.help)}\n")
        out.append(f"# TYPE {head} {f.type}\n")
        if openmetrics and f.unit:
            out.append(f"# UNIT {head} {f.unit}\n")
        for labels, v in f.samples:
            out.append(f"{sample}{_labels(labels)} {_value(v)}\n")
    if openmetrics:
        out.append("# EOF\n")
    return "".join(out)


def metrics_text(openmetrics: bool = False) -> str:
    """The ledger's per-thread states, process totals, beta and executors, as text.

    Prometheus text format 0.0.4 by default (``CONTENT_TYPE_TEXT``); OpenMetrics 1.0
    (``CONTENT_TYPE_OPENMETRICS``) with ``openmetrics=True``. Installs the ledger's hooks
    if they are not installed yet.
    """
    return render(families(), openmetrics)


# ---- prometheus_client --------------------------------------------------------------------


class Collector:
    """The same metrics for a ``prometheus_client`` registry (needs prometheus_client).

    ``prometheus_client.REGISTRY.register(gil_adapt.metrics.Collector())``
    """

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for f in families():
            names = list(f.samples[0][0]) if f.samples else []
            cls = CounterMetricFamily if f.type == "counter" else GaugeMetricFamily
            fam = cls(f.name, f.help, labels=names, unit=f.unit)
            for labels, v in f.samples:
                fam.add_metric([labels[n] for n in names], v)
            yield fam


# ---- HTTP ---------------------------------------------------------------------------------


class _Cache:
    """Rendered bodies, reused for max_age_s so that a burst of scrapes reads once."""

    def __init__(self, max_age_s: float) -> None:
        self.max_age_s = max_age_s
        self._lock = threading.Lock()
        self._bodies: Dict[bool, Tuple[float, bytes]] = {}

    def body(self, openmetrics: bool) -> Optional[bytes]:
        with self._lock:
            now = time.monotonic()
            hit = self._bodies.get(openmetrics)
            if hit is not None and now - hit[0] < self.max_age_s:
                return hit[1]
            try:
                body = metrics_text(openmetrics).encode("utf-8")
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
                  in_process: bool = False) -> MetricsServer:
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

    Raises OSError with a clear message when the address cannot be bound (port in use,
    no such address), ValueError for a port out of range.
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in 0..65535, not {port!r}")
    _ledger.install()
    cache = _Cache(max_age_s)
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
