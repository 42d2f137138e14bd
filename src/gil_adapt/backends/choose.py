"""The backend decision of ``mode="auto"``, per function (task kind), from measured figures.

Pure: no clock, no threads, no I/O. The executor feeds each function's :class:`Chooser`
with windows of measured figures (:class:`Profile`: per-task means from the ledger while
the function ran on threads, or from the process workers while it ran there) and the
machine's :class:`Resources`, with the time ``now``; it gets back a :class:`Decision`.

The rules, in order:

* a coroutine function runs on the event loops (asyncio);
* a function the process backend refused (not picklable, defined in ``__main__``) stays
  on threads;
* processes need more than one usable core (cgroup CPU quota counted) and a memory budget
  that fits at least two workers;
* only GIL-saturated Python CPU moves: CPU-bound (CPU ≥ ``cpu_share`` of the task's
  CPU + I/O) and held under the GIL (GIL held ≥ ``python_share`` of the CPU when known,
  else GIL wait ≥ ``gil_wait_share`` of the wall time), tasks long enough for the
  per-task cost of a process round trip, a backlog (threads do not keep up), and a
  predicted gain (Little's law: threads are capped at one task per GIL-held time,
  processes at ``min(cores, workers) / (cpu + overhead)``) of at least ``pay_ratio``;
  all of it in ``confirm`` consecutive windows (hysteresis);
* then a *trial*: the function runs on processes until ``trial_tasks`` tasks and
  ``trial_s`` seconds are measured there; it stays if its throughput is at least
  ``pay_ratio`` times what threads gave before (or processes cleared a backlog that
  threads had), else it goes back to threads and the next trial waits ``backoff_s``,
  doubling each failure up to ``backoff_max_s``;
* on processes it goes back to threads when it stops paying (throughput under
  ``keep_ratio`` times the threads figure: the next trial backs off as after a failed
  one) or it turned I/O-bound (no back-off: the work changed, and when it turns
  GIL-bound again it may move again at once) or its CPU no longer holds the worker's GIL
  (under ``python_share`` of it: native code that releases the GIL, which threads run in
  parallel; no back-off) or its task CPU moved out of
  [1/``work_change``, ``work_change``] times the CPU that made the move (other work, whose
  GIL-boundness only threads can measure; no back-off either) for ``confirm`` windows, or
  at once when cores or memory no longer allow processes.

Every decision carries its reason; switches are counted.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

__all__ = ["Backend", "Chooser", "Decision", "Policy", "Profile", "Resources", "classify",
           "predicted_gain"]


class Backend(str, enum.Enum):
    THREADS = "threads"
    PROCESSES = "processes"
    ASYNCIO = "asyncio"


@dataclass(frozen=True)
class Profile:
    """One function over one window, where it ran: per-task means in seconds.

    ``gil_held_s``: time holding the GIL (Python CPU), None when unknown (in a worker
    process it is that worker's own GIL: the share of the task's CPU that is Python). ``io_wait_s``: the
    ledger's I/O wait; when None, whatever of the wall time is neither CPU nor GIL wait
    counts as I/O (right for a worker process, not for a thread that also waited for a
    core or a lock, or idled). ``backlog``: tasks of this function waited in a queue
    during the window (demand exceeded capacity).
    """

    tasks: int
    elapsed_s: float
    wall_s: float
    cpu_s: float
    gil_wait_s: float = 0.0
    gil_held_s: Optional[float] = None
    backlog: bool = False
    io_wait_s: Optional[float] = None

    @property
    def throughput(self) -> float:
        return self.tasks / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def io_s(self) -> float:
        if self.io_wait_s is not None:
            return self.io_wait_s
        return max(0.0, self.wall_s - self.cpu_s - self.gil_wait_s)


@dataclass(frozen=True)
class Resources:
    """What the machine allows now. ``process_workers_fit``: worker processes the memory
    budget fits (None: unknown, unbounded). ``process_overhead_s``: measured cost of a
    task's round trip to a worker (ProcessBackend stats: ``mean_overhead_s``)."""

    usable_cores: float
    process_workers_fit: Optional[int] = None
    process_overhead_s: float = 0.0003


@dataclass(frozen=True)
class Policy:
    min_tasks: int = 20
    cpu_share: float = 0.6
    python_share: float = 0.7
    gil_wait_share: float = 0.2
    min_task_cpu_s: float = 0.002
    min_cores: float = 1.5
    min_workers: int = 2
    pay_ratio: float = 1.2
    keep_ratio: float = 1.05
    io_share_back: float = 0.3
    confirm: int = 2
    work_change: float = 2.0
    trial_tasks: int = 20
    trial_s: float = 1.0
    backoff_s: float = 30.0
    backoff_max_s: float = 600.0


@dataclass(frozen=True)
class Decision:
    backend: Backend
    reason: str
    switched: bool = False
    trial: bool = False


def classify(p: Profile, policy: Policy = Policy()) -> Tuple[str, str]:
    """(kind, reason) of a function from a threads window: ``"gil_cpu"`` (GIL-saturated
    Python CPU), ``"native_cpu"`` (CPU outside the GIL: threads already run in parallel),
    ``"io"``, or ``"unknown"`` (too few tasks)."""
    if p.tasks < policy.min_tasks:
        return "unknown", f"measuring ({p.tasks} of {policy.min_tasks} tasks)"
    busy = p.cpu_s + p.io_s
    share = p.cpu_s / busy if busy > 0 else 0.0
    if share < policy.cpu_share:
        return "io", f"I/O bound (CPU {share:.0%} of CPU + I/O)"
    if p.gil_held_s is not None and p.cpu_s > 0:
        held = p.gil_held_s / p.cpu_s  # above 1: held while preempted, as GIL-bound
        if held >= policy.python_share:
            return "gil_cpu", f"Python CPU under the GIL ({min(held, 1.0):.0%} of its CPU)"
        return "native_cpu", f"CPU mostly outside the GIL ({held:.0%} held)"
    waited = p.gil_wait_s / p.wall_s if p.wall_s > 0 else 0.0
    if waited >= policy.gil_wait_share:
        return "gil_cpu", f"CPU bound and waiting for the GIL {waited:.0%} of its time"
    return "native_cpu", f"CPU bound without GIL contention ({waited:.0%} GIL wait)"


def predicted_gain(p: Profile, r: Resources) -> float:
    """Capacity on processes over capacity on threads, by Little's law.

    Threads: one task per GIL-held time at most (the GIL serialises Python), and no more
    than the cores allow: ``min(1 / held, cores / cpu)``. Processes:
    ``min(cores, workers) / (cpu + overhead)``.
    """
    cores = max(1.0, r.usable_cores)
    held = p.gil_held_s if p.gil_held_s is not None else p.cpu_s
    if p.cpu_s <= 0 or held <= 0:
        return 0.0
    threads = min(1.0 / held, cores / p.cpu_s)
    workers = cores if r.process_workers_fit is None else min(cores, r.process_workers_fit)
    processes = workers / (p.cpu_s + r.process_overhead_s)
    return processes / threads


@dataclass
class _Trial:
    started: float
    threads_throughput: float
    threads_backlog: bool
    cpu_s: float = 0.0  # the task CPU that made the move


@dataclass
class Chooser:
    """The backend of one function under ``mode="auto"`` (see the module's docstring)."""

    key: str
    is_coroutine: bool = False
    policy: Policy = field(default_factory=Policy)
    backend: Backend = Backend.THREADS
    refused: Optional[str] = None
    switches: int = 0
    failed_trials: int = 0
    retry_at: float = 0.0
    _streak: int = 0
    _trial: Optional[_Trial] = None
    _baseline: Optional[_Trial] = None
    _history: List[Decision] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.is_coroutine:
            self.backend = Backend.ASYNCIO

    def refuse_processes(self, reason: str) -> None:
        """Processes can never run this function (the backend said why): threads for good."""
        self.refused = reason

    @property
    def in_trial(self) -> bool:
        return self._trial is not None

    @property
    def history(self) -> List[Decision]:
        """The decisions that switched backend, oldest first (at most 32)."""
        return list(self._history)

    def update(self, now: float, resources: Resources, threads: Optional[Profile] = None,
               processes: Optional[Profile] = None) -> Decision:
        """Decides from the newest window: ``threads`` while it runs on threads,
        ``processes`` while it runs on processes (the other is ignored)."""
        if self.is_coroutine:
            return self._go(Backend.ASYNCIO, "coroutine function: runs on the event loops")
        if self.refused:
            return self._go(Backend.THREADS, f"processes refused it: {self.refused}")
        unfit = self._unfit(resources)
        if unfit:
            self._trial = None
            return self._go(Backend.THREADS, unfit)
        if self.backend == Backend.PROCESSES:
            return self._on_processes(now, processes)
        return self._on_threads(now, resources, threads)

    # -- states

    def _on_threads(self, now: float, r: Resources, p: Optional[Profile]) -> Decision:
        pol = self.policy
        if p is None:
            return self._stay("no measurements yet")
        kind, why = classify(p, pol)
        reason = None
        if kind != "gil_cpu":
            reason = why
        elif p.cpu_s < pol.min_task_cpu_s:
            reason = (f"tasks too short for processes ({p.cpu_s * 1e3:.2f} ms CPU, "
                      f"under {pol.min_task_cpu_s * 1e3:.1f} ms)")
        elif not p.backlog:
            reason = "threads keep up (no backlog)"
        elif now < self.retry_at:
            reason = (f"processes did not pay at the last trial; next try in "
                      f"{self.retry_at - now:.0f} s")
        else:
            gain = predicted_gain(p, r)
            if gain < pol.pay_ratio:
                reason = f"processes would not pay (predicted x{gain:.2f})"
        if reason is not None:
            self._streak = 0
            return self._stay(reason)
        self._streak += 1
        if self._streak < pol.confirm:
            return self._stay(f"{why}: confirming ({self._streak}/{pol.confirm})")
        self._streak = 0
        self._trial = _Trial(now, p.throughput, p.backlog, p.cpu_s)
        self._baseline = self._trial
        return self._go(Backend.PROCESSES, f"{why}; trying processes (threads gave "
                                            f"{p.throughput:.1f} tasks/s)", trial=True)

    def _on_processes(self, now: float, p: Optional[Profile]) -> Decision:
        pol = self.policy
        trial = self._trial
        if trial is not None:
            if p is None or p.tasks < pol.trial_tasks or now - trial.started < pol.trial_s:
                return self._stay("trial of processes: measuring")
            self._trial = None
            ratio = p.throughput / trial.threads_throughput if trial.threads_throughput > 0 \
                else float("inf")
            if ratio >= pol.pay_ratio or (trial.threads_backlog and not p.backlog):
                self.failed_trials = 0
                what = f"x{ratio:.2f} the threads' throughput" if ratio >= pol.pay_ratio \
                    else "they cleared the backlog threads had"
                return self._stay(f"processes pay ({what})")
            self.failed_trials += 1
            wait = min(pol.backoff_max_s, pol.backoff_s * 2 ** (self.failed_trials - 1))
            self.retry_at = now + wait
            return self._go(Backend.THREADS, f"processes did not pay (x{ratio:.2f} < "
                                             f"x{pol.pay_ratio:.2f}); retry in {wait:.0f} s")
        if p is None or p.tasks < pol.min_tasks:
            self._streak = 0
            return self._stay("on processes: measuring")
        busy = p.cpu_s + p.io_s
        share = p.cpu_s / busy if busy > 0 else 0.0
        base = self._baseline.threads_throughput if self._baseline else 0.0
        reason = None
        moved_cpu = self._baseline.cpu_s if self._baseline else 0.0
        changed = True
        if share < pol.io_share_back:
            reason = f"turned I/O bound on processes (CPU {share:.0%})"
        elif p.gil_held_s is not None and p.cpu_s >= pol.min_task_cpu_s and \
                p.gil_held_s < pol.python_share * p.cpu_s:
            # its CPU no longer holds the GIL (native code that releases it): threads run
            # such work in parallel without a process's round trip
            reason = (f"the work no longer holds the GIL ({p.gil_held_s / p.cpu_s:.0%} of "
                      f"its CPU on processes): measuring it on threads")
        elif moved_cpu > 0 and not (moved_cpu / pol.work_change <= p.cpu_s
                                    <= moved_cpu * pol.work_change):
            # other work now: whether it is GIL-bound is only measurable on threads
            reason = (f"the work changed ({p.cpu_s * 1e3:.2f} ms CPU a task, "
                      f"{moved_cpu * 1e3:.2f} ms when it moved): measuring it on threads")
        elif p.backlog and base > 0 and p.throughput < pol.keep_ratio * base:
            changed = False
            reason = (f"processes stopped paying ({p.throughput:.1f} tasks/s against "
                      f"{base:.1f} on threads)")
        if reason is None:
            self._streak = 0
            return self._stay("processes pay")
        self._streak += 1
        if self._streak < pol.confirm:
            return self._stay(f"{reason}: confirming ({self._streak}/{pol.confirm})")
        self._streak = 0
        if not changed:
            # processes failed this work: wait before trying them again. Work that changed
            # kind is no failure: when it turns GIL-bound again it may move at once.
            self.failed_trials += 1
            self.retry_at = now + min(pol.backoff_max_s,
                                      pol.backoff_s * 2 ** (self.failed_trials - 1))
        return self._go(Backend.THREADS, reason)

    # -- helpers

    def _unfit(self, r: Resources) -> Optional[str]:
        pol = self.policy
        if r.usable_cores < pol.min_cores:
            return (f"{r.usable_cores:g} usable core(s): processes cannot add CPU; "
                    f"threads")
        if r.process_workers_fit is not None and r.process_workers_fit < pol.min_workers:
            return (f"the memory budget fits {r.process_workers_fit} worker process(es), "
                    f"under {pol.min_workers}")
        return None

    def _stay(self, reason: str) -> Decision:
        return Decision(self.backend, reason)

    def _go(self, backend: Backend, reason: str, trial: bool = False) -> Decision:
        if backend == self.backend:
            return Decision(backend, reason, trial=trial)
        self.backend = backend
        self.switches += 1
        decision = Decision(backend, reason, switched=True, trial=trial)
        self._history.append(decision)
        del self._history[:-32]
        return decision
