"""One benchmark cell in a fresh process: ``python -m gil_adapt.bench.child SPEC RESULT``.

The harness starts this process already inside the configuration's cgroup and pinned to
its CPUs (see :mod:`gil_adapt.bench.runner`). ``SPEC`` is a JSON file naming the mode,
workload, strategy and timings; the figures are written as JSON to ``RESULT``. Nothing is
written when the process dies (OOM kill, crash): the harness reports that.

Modes:

* ``cell`` — a closed loop keeps ``inflight`` tasks submitted to the strategy;
  throughput and latency (submit -> result) are counted over ``measure_s`` seconds after
  a warm-up of ``warmup_s`` (longer when no task has completed by then: see ``_Window``).
  With ``workload2`` and ``switch_at_s`` the task changes at that time
  (a workload phase change). The executor's state is sampled every ``sample_interval_s``.
  Once the window is over, the figures are taken in a forked copy of the process that
  holds only the thread that forked (:func:`_detach`): a pool of thousands of threads
  with work queued leaves that thread waiting tens of seconds for each turn at the
  interpreter otherwise. The harness stops the whole tree once the result is written.
* ``probe`` — the sync task run serially: its wall and CPU time per task.
* ``overhead-dispatch`` — no-op tasks per second through submit/result.
* ``overhead-ledger`` — a GIL-heavy loop in 4 threads, with the ledger's hooks on or off.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import json
import logging
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import loopback, workloads
from .strategies import Strategy, parse_strategy

log = logging.getLogger("gil_adapt.bench")

BUCKET_S = 0.5


def _percentile(sorted_values: List[float], q: float) -> Optional[float]:
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


class _Pool:
    """An executor strategy: the executor plus how to read its worker count."""

    def __init__(self, strategy: Strategy, cores: int, settings: Dict[str, Any]) -> None:
        self.strategy = strategy
        self.backend = "threads"
        self.live_at_start: Optional[int] = None
        kind, n = strategy.kind, strategy.size
        if kind == "threads":
            assert n is not None
            ex = cf.ThreadPoolExecutor(n)
            gate = threading.Event()
            starters = [ex.submit(gate.wait) for _ in range(n)]
            tries = 0
            while len(ex._threads) < n and tries < n:  # type: ignore[attr-defined]
                ex.submit(gate.wait)  # TPE starts a thread per submit while none is idle
                tries += 1
            gate.set()
            for f in starters:
                f.result()
            self.live_at_start = len(ex._threads)  # type: ignore[attr-defined]
        elif kind == "tpe":
            ex = cf.ThreadPoolExecutor(n)
        elif kind == "default":
            ex = cf.ThreadPoolExecutor()
        elif kind == "processes":
            ex = cf.ProcessPoolExecutor(cores, initializer=workloads.configure,
                                        initargs=(settings,))
            self.backend = "processes"
        elif kind == "betapool":
            from betapool import AdaptiveThreadPoolExecutor

            ex = AdaptiveThreadPoolExecutor()
        elif kind == "gil-adapt":
            from gil_adapt import AdaptiveExecutor

            ex = AdaptiveExecutor()
        elif kind == "gil-adapt-auto":
            from gil_adapt import AdaptiveExecutor

            ex = AdaptiveExecutor(mode="auto")
        else:
            raise ValueError(f"not an executor strategy: {strategy.name}")
        self.ex: Any = ex

    def sample(self) -> Dict[str, Any]:
        """Worker count (and the controller's figures where there is one) now."""
        ex, kind = self.ex, self.strategy.kind
        if kind in ("gil-adapt", "gil-adapt-auto"):
            st = ex.stats()
            out = {k: st.get(k) for k in ("workers", "target_workers", "beta", "throughput",
                                          "queue_length")}
            out["decisions"] = dict(st.get("decisions") or {})
            out["last_reason"] = st.get("last_reason")
            # where auto mode runs the workload's function(s) now, e.g. "auto: processes"
            chosen = sorted({k["backend"] for k in (st.get("kinds") or {}).values()})
            mode = st.get("mode", "threads")
            out["backend"] = f"{mode}: {'+'.join(chosen)}" if chosen else mode
            out["switches"] = len(st.get("switches") or ())
            return out
        if kind == "betapool":
            m = ex.get_metrics()
            return {"workers": m.get("current_threads"), "target_workers": None,
                    "beta": m.get("avg_blocking_ratio"), "throughput": m.get("throughput"),
                    "queue_length": None,
                    "decisions": {"grow": m.get("scale_up_count"),
                                  "shrink": m.get("scale_down_count")}}
        if kind == "processes":
            return {"workers": len(getattr(ex, "_processes", None) or {})}
        return {"workers": len(ex._threads)}

    def max_workers(self) -> Optional[int]:
        return getattr(self.ex, "_max_workers", None) or getattr(self.ex, "max_workers", None)

    def kill(self) -> None:
        """Leaves at once: worker processes are killed, threads abandoned (os._exit next)."""
        if self.strategy.kind == "processes":
            for p in list((getattr(self.ex, "_processes", None) or {}).values()):
                try:
                    p.kill()
                except Exception:  # noqa: BLE001 - already gone
                    pass


class _Recorder:
    """Completion times and latencies of tasks, counted by worker threads or the loop."""

    def __init__(self) -> None:
        self.done: List[float] = []
        self.latency: List[float] = []
        self.errors = 0
        self.first_error: Optional[str] = None

    def record(self, t_submit: float, error: Optional[BaseException]) -> None:
        now = time.monotonic()
        if error is not None:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{type(error).__name__}: {error}"
            return
        self.done.append(now)
        self.latency.append(now - t_submit)


def _own_groups() -> List[Tuple[int, List[str], str]]:
    """This process's cgroups below the root, from ``/proc/self/cgroup``: (2, [], its
    directory) for the unified hierarchy, (1, controllers, its directory) for each v1
    one; empty where the file cannot be read."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        hier, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if path in ("", "/"):
            continue
        if hier == "0" and not ctrls:
            out.append((2, [], f"/sys/fs/cgroup{path}"))
        else:
            out.append((1, ctrls.split(","), f"/sys/fs/cgroup/{ctrls}{path}"))
    return out


class _TreeCpu:
    """CPU seconds used so far by this process and its descendants, and the page faults
    they took.

    CPU from the group the harness made for this run when ``own_cgroup`` (cgroup v2
    ``cpu.stat`` ``usage_usec``, v1 ``cpuacct.usage``: exact, and it includes exited
    worker processes), otherwise from ``/proc``: every process of this session (the
    harness starts each child as a session leader), its own and its reaped children's user
    + system time. Page faults from the run's memory group (``memory.stat`` ``pgfault``,
    v1 ``total_pgfault``: the whole tree) when ``own_cgroup``, otherwise this process's
    and its reaped children's (``/proc/self/stat`` minflt + majflt + cminflt + cmajflt;
    live worker processes not counted): a task that faults its heap in again each time
    (an allocator handing memory back to the kernel) costs CPU the task alone does not.
    """

    def __init__(self, own_cgroup: bool = False) -> None:
        self.path: Optional[str] = None
        self.source = "proc"
        self.faults_path: Optional[str] = None
        self.faults_source = "proc self"
        for version, ctrls, base in _own_groups() if own_cgroup else ():
            if version == 2:
                cpu = (f"{base}/cpu.stat", "cgroup v2 cpu.stat")
                mem = (f"{base}/memory.stat", "cgroup v2 memory.stat")
            elif "cpuacct" in ctrls:
                cpu, mem = (f"{base}/cpuacct.usage", "cgroup v1 cpuacct"), None
            elif "memory" in ctrls:
                cpu, mem = None, (f"{base}/memory.stat", "cgroup v1 memory.stat")
            else:
                continue
            if cpu and self.path is None and os.access(cpu[0], os.R_OK):
                self.path, self.source = cpu
            if mem and self.faults_path is None and os.access(mem[0], os.R_OK):
                self.faults_path, self.faults_source = mem
        self.sid = os.getsid(0)
        self.tick = os.sysconf("SC_CLK_TCK")

    def read(self) -> Optional[float]:
        try:
            if self.path is not None:
                with open(self.path) as f:
                    text = f.read()
                if self.path.endswith("cpu.stat"):
                    for line in text.splitlines():
                        if line.startswith("usage_usec "):
                            return int(line.split()[1]) / 1e6
                    return None
                return int(text) / 1e9
            return self._proc()
        except (OSError, ValueError):
            return None

    def _proc(self) -> float:
        return sum(ticks for _, ticks in session_members(self.sid)) / self.tick

    def read_faults(self) -> Optional[float]:
        """Page faults so far (see the class); None where unreadable."""
        try:
            if self.faults_path is not None:
                with open(self.faults_path) as f:
                    stat = dict(line.split()[:2] for line in f if line.strip())
                value = stat.get("total_pgfault", stat.get("pgfault"))
                return float(value) if value is not None else None
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return float(sum(int(x) for x in fields[7:11]))  # minflt cminflt majflt cmajflt
        except (OSError, ValueError, IndexError):
            return None


def session_members(sid: int) -> List[Tuple[int, int]]:
    """``(pid, CPU ticks)`` of every process whose session id is ``sid``.

    The ticks are the process's own and its reaped children's user + system time
    (``/proc/PID/stat`` utime, stime, cutime, cstime; ``SC_CLK_TCK`` per second). The
    harness starts each child as a session leader, so ``sid`` is the child's pid.
    """
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:  # session id (field 6 of stat)
                out.append((int(name), sum(int(x) for x in fields[11:15])))
        except (OSError, ValueError, IndexError):
            continue
    return out


class _Sampler(threading.Thread):
    def __init__(self, interval: float, t0: float, rec: _Recorder,
                 sample: Callable[[], Dict[str, Any]], own_cgroup: bool = False) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.interval, self.t0, self.rec, self.fn = interval, t0, rec, sample
        self.series: List[Dict[str, Any]] = []
        self.stop = threading.Event()
        self.error: Optional[str] = None
        self.cpu = _TreeCpu(own_cgroup)
        self.cpu_marks: List[Tuple[float, float, float]] = []
        self.fault_marks: List[Tuple[float, float, float]] = []
        self.mark_cpu()

    def mark_cpu(self) -> None:
        """Notes (time before, time after, tree CPU) now, and the page faults likewise;
        the sampler does at each interval.

        The read happened somewhere between the two times: this is a Python thread, and
        in a busy cell it can wait a long time for the interpreter on either side of it."""
        t_before = time.monotonic()
        c = self.cpu.read()
        t_after = time.monotonic()
        if c is not None:
            self.cpu_marks.append((t_before, t_after, c))
        f = self.cpu.read_faults()
        if f is not None:
            self.fault_marks.append((t_after, time.monotonic(), f))

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.mark_cpu()
            try:
                s = self.fn()
            except Exception as e:  # noqa: BLE001 - keep the run going, say why
                self.error = f"{type(e).__name__}: {e}"
                s = {}
            s["t"] = round(time.monotonic() - self.t0, 3)
            s["completed"] = len(self.rec.done)
            s["threads"] = threading.active_count()
            self.series.append(s)


class _Window:
    """The measured window: ``measure`` seconds from the end of the warm-up, which is
    ``warmup`` seconds after the start or the first completed task, whichever is later
    (a strategy whose first task takes longer than the warm-up — asyncio with a large
    semaphore runs the CPU phases of all its admitted tasks first — is measured in its
    steady state, not its start-up), but at most ``max_warmup`` seconds after the start."""

    def __init__(self, t0: float, warmup: float, measure: float, rec: _Recorder) -> None:
        self.t0, self.warmup, self.measure, self.rec = t0, warmup, measure, rec
        self.max_warmup = max(warmup, 4.0 * warmup + 5.0)

    def start(self) -> Optional[float]:
        """When counting starts (None: not known yet — no task completed)."""
        if self.rec.done:
            return max(self.t0 + self.warmup, min(self.rec.done[0],
                                                  self.t0 + self.max_warmup))
        now = time.monotonic()
        if now >= self.t0 + self.max_warmup:
            return self.t0 + self.max_warmup
        return None

    def end(self) -> float:
        start = self.start()
        if start is None:
            return self.t0 + self.max_warmup + self.measure
        return start + self.measure


def _cpu_at(marks: Sequence[Tuple[float, float, float]], t: float) -> Optional[float]:
    """Tree CPU at time t, interpolated between the marks around it, each taken at the
    middle of its bracket (None: not covered)."""
    mids = [((a + b) / 2.0, c) for a, b, c in marks]
    for (ta, ca), (tb, cb) in zip(mids, mids[1:]):
        if ta <= t <= tb:
            return ca if tb == ta else ca + (cb - ca) * (t - ta) / (tb - ta)
    return None


def _cpu_floor(marks: Sequence[Tuple[float, float, float]], start: float, end: float,
               cores: int) -> Optional[float]:
    """A utilisation the tree certainly reached inside [start, end] (None: too few marks).

    Between the first mark read after ``start`` (its bracket begins after it) and the last
    read before ``end`` (its bracket ends before it) the tree used their difference in CPU
    over at most the time from the first bracket's beginning to the last one's end: that
    CPU over that time is a lower bound of the mean utilisation between the two reads,
    whatever the delays inside the brackets. Above the cores, the measurement is wrong."""
    first = next((m for m in marks if m[0] >= start), None)
    last = next((m for m in reversed(marks) if m[1] <= end), None)
    if first is None or last is None or last[0] <= first[1] or cores <= 0:
        return None
    span = last[1] - first[0]
    return max(0.0, last[2] - first[2]) / (cores * span) if span > 0 else None


def _cpu_figures(sampler: "_Sampler", start: float, end: float, measure: float,
                 completed: int) -> Dict[str, Any]:
    """The CPU the process tree used in the measured window and what it implies."""
    sampler.stop.set()
    sampler.join(5.0)
    sampler.mark_cpu()
    marks = sorted(sampler.cpu_marks)
    c0, c1 = _cpu_at(marks, start), _cpu_at(marks, end)
    out: Dict[str, Any] = {"cpu_source": sampler.cpu.source}
    if c0 is None or c1 is None:
        return out
    cores = len(os.sched_getaffinity(0))
    used = max(0.0, c1 - c0)
    out.update(cpu_window_s=used, cpu_utilisation=used / (cores * measure),
               cpu_utilisation_floor=_cpu_floor(marks, start, end, cores),
               cpu_ms_per_task_window=used / completed * 1e3 if completed else None)
    faults = sorted(sampler.fault_marks)
    f0, f1 = _cpu_at(faults, start), _cpu_at(faults, end)
    if f0 is not None and f1 is not None and completed:
        out.update(faults_source=sampler.cpu.faults_source,
                   faults_per_task_window=max(0.0, f1 - f0) / completed)
    return out


def _summarise(rec: _Recorder, win: _Window, switch_at: Optional[float],
               sampler: Optional["_Sampler"] = None) -> Dict[str, Any]:
    t0, measure = win.t0, win.measure
    start = win.start()
    if start is None:
        start = t0 + win.max_warmup
    end = start + measure
    pairs = list(zip(rec.done, rec.latency))
    window = sorted(lat for t, lat in pairs if start <= t < end)
    buckets = [0] * max(1, int(round((end - t0) / BUCKET_S)))
    for t, _ in pairs:
        i = int((t - t0) / BUCKET_S)
        if 0 <= i < len(buckets):
            buckets[i] += 1
    out: Dict[str, Any] = {
        "throughput": len(window) / measure,
        "completed": len(window),
        "completed_total": len(pairs),
        "latency_p50_s": _percentile(window, 0.50),
        "latency_p99_s": _percentile(window, 0.99),
        "window_start_s": start - t0,
        "bucket_s": BUCKET_S,
        "buckets": [b / BUCKET_S for b in buckets],
        "errors": rec.errors,
        "first_error": rec.first_error,
    }
    if switch_at is not None:
        out["switch_at_s"] = switch_at
    if sampler is not None:
        out.update(_cpu_figures(sampler, start, end, measure, len(window)))
    return out


def run_executor(spec: Dict[str, Any], strategy: Strategy, task: Callable[[], Any],
                 task2: Optional[Callable[[], Any]]) -> Dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    t_setup = time.monotonic()
    pool = _Pool(strategy, cores, spec["settings"])
    setup_s = time.monotonic() - t_setup
    warmup, measure = float(spec["warmup_s"]), float(spec["measure_s"])
    inflight = int(spec["inflight"])
    switch_at = spec.get("switch_at_s") if task2 is not None else None
    rec = _Recorder()
    sem = threading.Semaphore(inflight)

    # A phase change: tasks of the first phase still queued are cancelled at the switch
    # (the queue holds up to `inflight` of them), so the executor meets the new workload.
    outstanding: Optional[set] = set() if switch_at is not None else None
    cancelled = 0

    def on_done(t_submit: float, fut: cf.Future) -> None:
        try:
            if outstanding is not None:
                outstanding.discard(fut)
            if not fut.cancelled():
                rec.record(t_submit, fut.exception())
        finally:
            sem.release()

    t0 = time.monotonic()
    win = _Window(t0, warmup, measure, rec)
    sampler = _Sampler(float(spec.get("sample_interval_s", 0.25)), t0, rec, pool.sample,
                       bool(spec.get("own_cgroup")))
    sampler.start()
    t_switch = t0 + switch_at if switch_at is not None else None
    submit_error: Optional[str] = None
    submit = pool.ex.submit
    while True:
        if not sem.acquire(timeout=0.05):
            if time.monotonic() >= win.end():
                break
            continue
        now = time.monotonic()
        if now >= win.end():
            sem.release()
            break
        fn = task
        if t_switch is not None and now >= t_switch:
            fn = task2
            if outstanding is not None and not cancelled:
                cancelled = sum(1 for f in list(outstanding) if f.cancel()) or -1
        try:
            fut = submit(fn)
        except Exception as e:  # noqa: BLE001 - e.g. BrokenProcessPool: the cell failed
            submit_error = f"submit failed: {type(e).__name__}: {e}"
            break
        if outstanding is not None:
            outstanding.add(fut)
        fut.add_done_callback(functools.partial(on_done, now))
    sampler.stop.set()
    try:
        final = pool.sample()
    except Exception as e:  # noqa: BLE001
        final = {"error": f"{type(e).__name__}: {e}"}
    _detach()
    out = _summarise(rec, win, switch_at, sampler)
    out.update(backend=final.get("backend", pool.backend), workers_final=final.get("workers"),
               target_workers_final=final.get("target_workers"), beta_final=final.get("beta"),
               decisions=final.get("decisions"), live_threads_at_start=pool.live_at_start,
               max_workers=pool.max_workers(), threads_final=threading.active_count(),
               series=sampler.series, sampler_error=sampler.error, setup_s=setup_s)
    if outstanding is not None:
        out["cancelled_at_switch"] = max(0, cancelled)
    if submit_error:
        out["error"] = submit_error
    pool.kill()
    return out


FORK_HEADROOM = 64 << 20  # the copy's own memory (pages it writes, the result) fits


def _memory_headroom() -> Optional[int]:
    """Bytes left under this process's cgroup memory limit (v2 ``memory.max`` less
    ``memory.current``, v1 ``memory.limit_in_bytes`` less ``memory.usage_in_bytes``);
    None where there is no limit or it cannot be read."""
    for version, ctrls, base in _own_groups():
        if version == 2:
            files = (f"{base}/memory.max", f"{base}/memory.current")
        elif "memory" in ctrls:
            files = (f"{base}/memory.limit_in_bytes", f"{base}/memory.usage_in_bytes")
        else:
            continue
        try:
            with open(files[0]) as f:
                limit = f.read().strip()
            with open(files[1]) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            return int(limit) - used
    return None


def _detach() -> None:
    """Goes on in a forked copy of this process, which has this thread only: the window's
    records are complete (appended to under the interpreter's lock, which the forking
    thread holds), and no worker competes with it for the interpreter while it sums them
    up and writes the result. The original process waits for the copy and leaves; the
    harness stops the tree as soon as the result is written. Where fork is unavailable
    or fails, or the memory cap leaves the copy too little room (its own pages would
    count against it, and an OOM kill there would fail a finished run), the figures are
    taken here, as before."""
    if not hasattr(os, "fork"):
        return
    room = _memory_headroom()
    if room is not None and room < FORK_HEADROOM:
        return
    import warnings

    try:
        with warnings.catch_warnings():
            # 3.12+: forking a threaded process; the copy only reads its own memory
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        return
    if pid == 0:
        return
    try:
        os.waitpid(pid, 0)
    finally:
        os._exit(0)


def run_asyncio(spec: Dict[str, Any], strategy: Strategy, task: Callable[[], Any],
                task2: Optional[Callable[[], Any]]) -> Dict[str, Any]:
    limit = int(strategy.size or 32)
    warmup, measure = float(spec["warmup_s"]), float(spec["measure_s"])
    inflight = int(spec["inflight"])
    switch_at = spec.get("switch_at_s") if task2 is not None else None
    rec = _Recorder()
    state = {"running": 0}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(limit)
        t0 = time.monotonic()   # the loop's clock is time.monotonic too
        win = _Window(t0, warmup, measure, rec)
        t_switch = t0 + switch_at if switch_at is not None else None
        tasks: set = set()
        sampler = _Sampler(float(spec.get("sample_interval_s", 0.25)), t0, rec,
                           lambda: {"workers": state["running"]}, bool(spec.get("own_cgroup")))
        sampler.start()
        holder["win"], holder["sampler"] = win, sampler

        async def one(t_submit: float, fn: Callable[[], Any]) -> None:
            err: Optional[BaseException] = None
            try:
                async with sem:
                    state["running"] += 1
                    try:
                        await fn()
                    finally:
                        state["running"] -= 1
            except Exception as e:  # noqa: BLE001 - counted as a failed task
                err = e
            rec.record(t_submit, err)
            if time.monotonic() < win.end():
                spawn()

        def spawn() -> None:
            now = time.monotonic()
            fn = task2 if (t_switch is not None and now >= t_switch) else task
            t = loop.create_task(one(now, fn))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

        for _ in range(inflight):
            spawn()
        while time.monotonic() < win.end():
            await asyncio.sleep(min(0.05, max(0.0, win.end() - time.monotonic())))
        sampler.stop.set()

    holder: Dict[str, Any] = {}
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        pass  # tasks still in flight are abandoned (os._exit next)
    out = _summarise(rec, holder["win"], switch_at, holder["sampler"])
    out.update(backend="asyncio", workers_final=limit, series=holder["sampler"].series,
               max_workers=limit, threads_final=threading.active_count())
    return out


def run_probe(spec: Dict[str, Any], task: Callable[[], Any]) -> Dict[str, Any]:
    """The task alone, serially: median wall and CPU time per task, measured once the
    task has run for a while (a cold interpreter and CPU clock read slower)."""
    duration = float(spec.get("duration_s", 1.0))
    task()  # first call builds per-process state
    t_warm = time.monotonic() + min(1.0, duration / 2)
    while time.monotonic() < t_warm:
        task()
    walls, cpus = [], []
    t_end = time.monotonic() + duration
    while time.monotonic() < t_end or len(walls) < 3:
        w0, c0 = time.perf_counter(), time.thread_time()
        task()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.thread_time() - c0)
        if len(walls) >= 2000:
            break
    walls.sort()
    cpus.sort()
    return {"tasks": len(walls), "wall_ms": walls[len(walls) // 2] * 1e3,
            "cpu_ms": cpus[len(cpus) // 2] * 1e3,
            "io_ms": (walls[len(walls) // 2] - cpus[len(cpus) // 2]) * 1e3}


def _noop() -> None:
    return None


def run_overhead_dispatch(spec: Dict[str, Any]) -> Dict[str, Any]:
    """No-op tasks per second through submit + result, batches of 256, for ``duration_s``."""
    which = spec["strategy"]
    if which == "gil-adapt":
        from gil_adapt import AdaptiveExecutor

        ex: Any = AdaptiveExecutor()
    else:
        ex = cf.ThreadPoolExecutor()
    duration = float(spec.get("duration_s", 1.0))
    for f in [ex.submit(_noop) for _ in range(256)]:  # warm: threads started
        f.result()
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration:
        for f in [ex.submit(_noop) for _ in range(256)]:
            f.result()
        n += 256
    elapsed = time.perf_counter() - t0
    return {"tasks_per_s": n / elapsed, "tasks": n, "executor": which}


def run_overhead_ledger(spec: Dict[str, Any]) -> Dict[str, Any]:
    """A GIL-heavy loop (4 threads of pure-Python work) with the hooks on or off."""
    hooks = bool(spec.get("hooks"))
    exact = None
    if hooks:
        import gil_adapt

        exact = gil_adapt.install()
    duration = float(spec.get("duration_s", 1.0))
    chunk = int(workloads._settings.loop_per_ms * 5)   # ~5 ms slices of work
    counts = [0] * 4
    stop = threading.Event()

    def worker(i: int) -> None:
        while not stop.is_set():
            workloads.spin(chunk)
            counts[i] += chunk

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(duration)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {"iterations_per_s": sum(counts) / elapsed, "hooks": hooks, "gil_wait_exact": exact}


def run(spec: Dict[str, Any]) -> Dict[str, Any]:
    workloads.configure(spec.get("settings") or {})
    mode = spec.get("mode", "cell")
    base: Dict[str, Any] = {"pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)),
                            "python": sys.version.split()[0]}
    if mode == "overhead-dispatch":
        return {**base, **run_overhead_dispatch(spec)}
    if mode == "overhead-ledger":
        return {**base, **run_overhead_ledger(spec)}
    wl = workloads.WORKLOADS[spec["workload"]]
    task, task2 = wl.sync, None
    if mode == "probe":
        return {**base, **run_probe(spec, task)}
    strategy = parse_strategy(spec["strategy"])
    if strategy.uses_async_form:
        task = wl.async_
    if spec.get("workload2"):
        wl2 = workloads.WORKLOADS[spec["workload2"]]
        task2 = wl2.async_ if strategy.uses_async_form else wl2.sync
    # Libraries and per-process state are ready before the clock, for every strategy.
    wl.sync()
    if task2 is not None:
        workloads.WORKLOADS[spec["workload2"]].sync()
    if strategy.kind == "asyncio":
        return {**base, **run_asyncio(spec, strategy, wl.async_, task2)}
    return {**base, **run_executor(spec, strategy, task, task2)}


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        sys.stderr.write("usage: python -m gil_adapt.bench.child SPEC.json RESULT.json\n")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    loopback.set_parent_death_signal()
    loopback.raise_nofile_limit()
    with open(args[0]) as f:
        spec = json.load(f)
    try:
        result = run(spec)
        result.setdefault("ok", "error" not in result)
    except BaseException as e:  # noqa: BLE001 - the cell failed: say why, in the result
        result = {"ok": False, "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc(limit=8)}
    tmp = args[1] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args[1])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for thousands of threads, or tasks still in flight


if __name__ == "__main__":
    sys.exit(main())
