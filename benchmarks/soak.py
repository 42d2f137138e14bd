#!/usr/bin/env python3
"""Fault soak: a million tasks through AdaptiveExecutor in every mode, faults mixed in, every
task counted.

Modes, each with its own share of --tasks (split evenly), run in --rounds rounds:

  threads    one long-lived AdaptiveExecutor(mode="threads"): no-op tasks, 1 % raising,
             1 % cancelled (Future.cancel right after submit, while queued), and
             --forks tasks a round that os.fork(): the child os._exit(0)s at once, the
             task waitpid()s it (a child that has not exited after 30 s is killed and
             its task fails: counted as a wrong outcome)
  processes  one long-lived AdaptiveExecutor(mode="processes"): the same no-op, raising
             and cancelled tasks on worker processes, and --kills tasks a round that
             SIGKILL their own worker (they must fail with gil_adapt.backends.WorkerDied,
             and only they)
  asyncio    one long-lived AdaptiveExecutor(mode="asyncio"): coroutine tasks on the
             event loops (1 % raising, 1 % cancelled: queued or running), 2 % plain
             functions (threads)
  auto       a fresh AdaptiveExecutor(mode="auto") a round (rounds of at least 1000
             tasks): the no-op, raising and cancelled tasks, then up to 1000 tasks of
             ~4 ms pure-Python CPU (GIL-bound: the executor moves them to worker
             processes after a second or so) with a no-op after every 8 of them; then
             shutdown(cancel_futures=True), timed by turns:
               requeue  the moment the GIL-bound function becomes a candidate for
                        processes (a thread polls stats()["kinds"]): auto mode then takes
                        its queued tasks (up to 3000 in these rounds) off the queue and
                        queues them again, measured — the step before the move; the switch
                        interval is 0.2 ms during these rounds so that the shutdown can land
                        inside that step (tasks a shutdown refuses go to the next round)
               in-move  from the log call that announces the move, in the thread that then
                        moves the queued tasks
               racing   from another thread, woken by that log record
               after    0-300 ms after the move
             every other round first runs 4 tasks of a function pinned to processes (so
             the process backend exists before the move); each round ends with
             shutdown(wait=True)
The last round of each long-lived executor ends with shutdown(wait=True,
cancel_futures=True) right after its tasks are submitted.

Counting: every task has a unique id and records it once where the caller can see it:
tasks in this process (threads, loops, auto's threads) in a lock-protected per-round
count; tasks in worker processes append it to a per-process log file (O_APPEND) read after
the round. Every future is then exactly one of completed (its result is its id, recorded
once), raised (its own SoakError, recorded once), cancelled (future.cancelled(); a
cancelled task never ran, except a coroutine cancelled while running), died (WorkerDied,
the killer tasks only); a future not done (done(): finished or cancelled) within
--timeout s (auto: 5 s after its shutdown(wait=True) returned) is lost; an id recorded
twice (or after its round was counted) is duplicated; any other outcome (a wrong result
or exception, WorkerDied of another task, a task that completed unrecorded, a fork child
that hung, a shutdown that hung) is wrong.

Memory: this process's VmRSS (/proc/self/status) after every round (gc.collect() first);
the run fails where a mode's last quarter of rounds has a median RSS above the first
quarter's by more than --rss-ratio (0.20) plus --rss-slack-mib (16 MiB).

Exit status 0 only with 0 lost, 0 duplicated, 0 wrong and flat memory in every mode. The
last line: "soak: N tasks, L lost, D duplicated".

  python benchmarks/soak.py                  # 1,000,000 tasks, ~3 min on 2 cores
  python benchmarks/soak.py --quick          # ~20,000 tasks, < 60 s
  python benchmarks/soak.py --tasks 200000 --modes processes,auto -v
      [--rounds 40] [--forks 3] [--kills 2] [--timeout 120] [--seed 1]
  -v logs every round (and gil_adapt's INFO); -vv also the warnings the faults provoke
  (worker deaths, moves to processes), which are hidden otherwise.

Task bodies live in this module: worker processes import it as __mp_main__ (hence the
``if __name__ == "__main__":`` guard).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import gil_adapt
from gil_adapt import AdaptiveExecutor
from gil_adapt.backends import WorkerDied

log = logging.getLogger("soak")

MODES = ("threads", "auto", "processes", "asyncio")
RUN_DIR_ENV = "GIL_ADAPT_SOAK_DIR"
#: Share of tasks that raise, and of tasks cancelled right after submit.
RAISE_SHARE = 0.01
CANCEL_SHARE = 0.01
#: asyncio mode: share of plain functions (they run on threads there).
PLAIN_SHARE = 0.02
#: auto mode: GIL-bound tasks a round, their CPU each, a no-op after every AUTO_GAP of them,
#: and the fewest tasks an auto round gets (it needs the GIL-bound ones to move).
AUTO_SPINS = 1000
#: ...in the rounds that shut down as they are requeued (the more queued, the longer the
#: requeue), and the switch interval then (the default 5 ms would rarely let the
#: shutdown in while it runs).
AUTO_SPINS_REQUEUE = 3000
REQUEUE_SWITCH_S = 0.0002
AUTO_SPIN_MS = 4.0
AUTO_GAP = 8
AUTO_MIN_ROUND = 1000
#: auto mode: how long a round waits for the move before it shuts down anyway.
AUTO_MOVE_WAIT_S = 15.0
#: auto mode: tasks of the function pinned to processes, run first in the rounds that pin.
PINNED_TASKS = 4
#: How the auto rounds time their shutdown, in turn (see the module's docstring).
AUTO_SHUTDOWNS = ("requeue", "in-move", "racing", "requeue", "after")
#: A fork child that has not exited after this long is killed (its task fails).
FORK_WAIT_S = 30.0
#: How long a shutdown(wait=True) may take before it counts as hung.
SHUTDOWN_WAIT_S = 120.0
#: After a shutdown(wait=True) returned every future must be done; this long to be sure.
AFTER_SHUTDOWN_S = 5.0
#: Problems described in full, per mode (the rest are counted).
DETAILS = 12

# outcome each task is built for
OK, RAISE, KILL = 0, 1, 2


# ---- task bodies (this process, or worker processes importing this module) -------------

class SoakError(Exception):
    """Raised by the raising tasks: args == (id,)."""


class _Seen:
    """Run counts of this round's task ids, for the tasks that run in this process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.base = 0
        self.counts = bytearray()
        self.stray: List[int] = []  # ids outside the round (ran after their round)

    def start(self, base: int, n: int) -> None:
        with self.lock:  # strays stay until taken
            self.base, self.counts = base, bytearray(n)

    def add(self, i: int) -> None:
        with self.lock:
            j = i - self.base
            if 0 <= j < len(self.counts):
                if self.counts[j] < 255:
                    self.counts[j] += 1
            else:
                self.stray.append(i)

    def take(self) -> Tuple[bytearray, List[int]]:
        with self.lock:
            counts, stray = self.counts, self.stray
            self.counts, self.stray = bytearray(), []
        return counts, stray


#: Set in the soak's own process only: a worker process records into its log file.
_SEEN: Optional[_Seen] = None
_LOG_FD: Optional[int] = None


def _record(i: int) -> None:
    """Records that task ``i`` ran: in this round's counts here, or in this worker's log."""
    seen = _SEEN
    if seen is not None:
        seen.add(i)
        return
    global _LOG_FD
    if _LOG_FD is None:
        directory = os.environ.get(RUN_DIR_ENV)
        if not directory:
            raise RuntimeError(f"{RUN_DIR_ENV} is not set: not a soak worker process")
        _LOG_FD = os.open(os.path.join(directory, f"{os.getpid()}.log"),
                          os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(_LOG_FD, b"%d\n" % i)


def noop(i: int) -> int:
    _record(i)
    return i


def pinned(i: int) -> int:
    """noop under another name: the function auto mode pins to processes."""
    _record(i)
    return i


def boom(i: int) -> int:
    _record(i)
    raise SoakError(i)


def killer(i: int) -> int:
    """SIGKILLs the worker process that runs it (never the soak itself)."""
    if _SEEN is not None:
        raise RuntimeError("killer task ran in the soak's own process: not killing it")
    _record(i)
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)
    return i


def forker(i: int) -> int:
    """Forks; the child exits at once, the task waits for it (bounded) and checks it."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    deadline = time.monotonic() + FORK_WAIT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError(f"fork child {pid} had not exited after {FORK_WAIT_S:.0f} s")
        time.sleep(0.0005)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"fork child {pid} exited with {code}")
    _record(i)
    return i


def spin(i: int, n: int) -> int:
    """GIL-bound pure-Python CPU, n loop steps."""
    x = 0
    for k in range(n):
        x += k
    _record(i)
    return i


async def anoop(i: int) -> int:
    await asyncio.sleep(0)
    _record(i)
    return i


async def aboom(i: int) -> int:
    await asyncio.sleep(0)
    _record(i)
    raise SoakError(i)


# ---- bookkeeping -------------------------------------------------------------------------

class RunLogs:
    """The ids worker processes wrote to their log files, read incrementally."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.offsets: Dict[str, int] = {}

    def read(self) -> Iterator[int]:
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            offset = self.offsets.get(name, 0)
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
            end = data.rfind(b"\n") + 1  # whole lines only
            self.offsets[name] = offset + end
            for line in data[:end].split():
                yield int(line)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Tally:
    mode: str
    tasks: int = 0
    completed: int = 0
    raised: int = 0
    cancelled: int = 0
    died: int = 0
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    rss: List[int] = field(default_factory=list)  # KiB, one per round
    seconds: float = 0.0
    rounds: int = 0
    notes: Dict[str, int] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    more_problems: int = 0
    memory_ok: bool = True
    memory_verdict: str = ""

    def note(self, key: str, n: int = 1) -> None:
        self.notes[key] = self.notes.get(key, 0) + n

    def problem(self, text: str) -> None:
        """Described (and logged) up to DETAILS times per mode, then only counted."""
        if len(self.problems) < DETAILS:
            self.problems.append(text)
            log.error("%s: %s", self.mode, text)
        else:
            self.more_problems += 1

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.wrong) and self.memory_ok


@dataclass
class Round:
    """One round's tasks: ids base..base+n-1, what each is built for, its future."""

    base: int
    kinds: bytearray
    futures: List[Optional[Future]]

    @classmethod
    def new(cls, base: int, n: int) -> "Round":
        return cls(base, bytearray(n), [None] * n)


def wait_done(futures: Sequence[Future], timeout: float) -> int:
    """Waits up to ``timeout`` s until every future is done (finished or cancelled); returns
    how many are not. Not concurrent.futures.wait: that never counts a future cancelled
    without set_running_or_notify_cancel() as done, and ThreadPoolExecutor's (and
    AdaptiveExecutor's threads') shutdown(cancel_futures=True) leaves futures so."""
    pending = [f for f in futures if not f.done()]
    if not pending:
        return 0
    lock = threading.Lock()
    all_done = threading.Event()
    left = [len(pending)]

    def one_done(_f: Future) -> None:
        with lock:
            left[0] -= 1
            if left[0] == 0:
                all_done.set()

    for f in pending:
        f.add_done_callback(one_done)
    all_done.wait(timeout)
    return sum(1 for f in pending if not f.done())


KIND_NAMES = {OK: "ok", RAISE: "raising", KILL: "killer"}


def _ids(ids: List[int]) -> str:
    shown = ", ".join(map(str, ids[:6]))
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > 6 else "")


def account(t: Tally, rnd: Round, counts: bytearray, waited: float) -> bool:
    """Counts each of the round's futures by its outcome (``waited``: how long they were
    given, for the report); False when some are lost. A task recorded more than once is
    duplicated whatever its outcome."""
    lost: List[int] = []
    twice: List[int] = []
    for j, f in enumerate(rnd.futures):
        if f is None:  # never submitted (a submit refused after shutdown): not a task
            continue
        i = rnd.base + j
        t.tasks += 1
        runs = counts[j] if j < len(counts) else 0
        kind = rnd.kinds[j]
        what = f"task {i} ({KIND_NAMES[kind]}, recorded {runs} times)"
        if runs > 1:
            t.duplicated += 1
            twice.append(i)
        if not f.done():
            t.lost += 1
            lost.append(i)
            continue
        if f.cancelled():
            t.cancelled += 1
            # a coroutine may have started (and recorded) before it was cancelled
            if runs and t.mode != "asyncio":
                t.wrong += 1
                t.problem(f"{what} was cancelled, but ran")
            continue
        exc = f.exception()
        if exc is None:
            result = f.result()
            if kind == OK and result == i and runs:
                t.completed += 1
            else:
                t.wrong += 1
                t.problem(f"{what} completed with {result!r}")
        elif kind == RAISE and type(exc) is SoakError and exc.args == (i,) and runs:
            t.raised += 1
        elif kind == KILL and isinstance(exc, WorkerDied):
            t.died += 1
        else:
            t.wrong += 1
            t.problem(f"{what} failed with {type(exc).__name__}: {exc}")
    if lost:
        t.problem(f"round {t.rounds + 1}: {len(lost)} tasks lost (their futures not done "
                  f"{waited:.0f} s after they should have been): {_ids(lost)}")
    if twice:
        t.problem(f"round {t.rounds + 1}: {len(twice)} tasks ran more than once: "
                  f"{_ids(twice)}")
    return not lost


def merge_counts(rnd: Round, seen: _Seen, logs: Optional[RunLogs], t: Tally) -> bytearray:
    """This round's run counts: this process's plus the worker processes' logs. Ids of
    earlier rounds seen now ran after their round was counted: duplicated."""
    counts, stray = seen.take()
    if len(counts) < len(rnd.kinds):
        counts.extend(bytes(len(rnd.kinds) - len(counts)))
    if logs is not None:
        for i in logs.read():
            j = i - rnd.base
            if 0 <= j < len(counts):
                if counts[j] < 255:
                    counts[j] += 1
            else:
                stray.append(i)
    if stray:
        t.duplicated += len(stray)
        t.problem(f"{len(stray)} tasks ran after their round was counted (a second run, or "
                  f"a run after they were cancelled or lost): {_ids(stray)}")
    return counts


def bounded_shutdown(ex: AdaptiveExecutor, t: Tally, cancel_futures: bool,
                     limit: float = SHUTDOWN_WAIT_S) -> bool:
    """ex.shutdown(wait=True, cancel_futures=...) in a thread; False (a wrong outcome) when
    it has not returned after ``limit`` s."""
    th = threading.Thread(target=ex.shutdown, kwargs={"wait": True,
                                                       "cancel_futures": cancel_futures},
                          name="soak-shutdown", daemon=True)
    th.start()
    th.join(limit)
    if th.is_alive():
        t.wrong += 1
        t.problem(f"shutdown(wait=True, cancel_futures={cancel_futures}) has not returned "
                  f"after {limit:.0f} s")
        return False
    return True


def sample_rss(t: Tally) -> None:
    gc.collect()
    t.rss.append(rss_kib())


def memory_check(t: Tally, ratio: float, slack_mib: float) -> None:
    if not t.rss:
        t.memory_verdict = "no samples"
        return
    q = max(1, len(t.rss) // 4)
    first = statistics.median(t.rss[:q])
    last = statistics.median(t.rss[-q:])
    bound = first * (1 + ratio) + slack_mib * 1024
    t.memory_ok = last <= bound
    t.memory_verdict = (f"median RSS of the last {q} rounds {last / 1024:.1f} MiB "
                        f"{'<=' if t.memory_ok else '>'} {bound / 1024:.1f} MiB (first {q}: "
                        f"{first / 1024:.1f} MiB, +{ratio:.0%} + {slack_mib:g} MiB)")
    if not t.memory_ok:
        t.problem(f"memory grew: {t.memory_verdict}")


def split(total: int, parts: int) -> List[int]:
    parts = max(1, parts)
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def marks(rng: random.Random, n: int, share: float, count: Optional[int] = None) -> List[int]:
    """Positions in 0..n-1 picked at random: about share * n of them, or count."""
    k = count if count is not None else int(round(n * share))
    if k == 0 and share > 0 and rng.random() < n * share:
        k = 1
    return rng.sample(range(n), min(n, k))


# ---- the modes ---------------------------------------------------------------------------

@dataclass
class Context:
    args: argparse.Namespace
    rng: random.Random
    seen: _Seen
    logs: RunLogs
    next_id: int = 0
    spin_n: int = 0

    def ids(self, n: int) -> int:
        base = self.next_id
        self.next_id += n
        return base


def submit_plain(ex: AdaptiveExecutor, rnd: Round, j: int, fn: Callable[..., Any],
                 kind: int, *extra: Any) -> Future:
    rnd.kinds[j] = kind
    f = ex.submit(fn, rnd.base + j, *extra)
    rnd.futures[j] = f
    return f


def long_lived(ctx: Context, mode: str, sizes: Sequence[int]) -> Tally:
    """threads, processes and asyncio: one executor through every round."""
    args, rng = ctx.args, ctx.rng
    t = Tally(mode)
    start = time.monotonic()
    ex = AdaptiveExecutor(mode=mode, thread_name_prefix=f"soak-{mode}")
    closed = False
    try:
        for r, n in enumerate(sizes):
            t0 = time.monotonic()
            last = r == len(sizes) - 1
            rnd = Round.new(ctx.ids(n), n)
            ctx.seen.start(rnd.base, n)
            raising = set(marks(rng, n, RAISE_SHARE))
            cancel = set(marks(rng, n, CANCEL_SHARE)) - raising
            special: Dict[int, int] = {}
            if mode == "threads":
                special = {j: OK for j in marks(rng, n, 0, args.forks)}
            elif mode == "processes":
                special = {j: KILL for j in marks(rng, n, 0, args.kills)}
            plain = set(marks(rng, n, PLAIN_SHARE)) if mode == "asyncio" else set()
            for j in range(n):
                if j in special:
                    submit_plain(ex, rnd, j, forker if mode == "threads" else killer,
                                 special[j])
                    t.note("forks" if mode == "threads" else "kills")
                elif mode == "asyncio" and j not in plain:
                    if j in raising:
                        submit_plain(ex, rnd, j, aboom, RAISE)
                    else:
                        submit_plain(ex, rnd, j, anoop, OK)
                elif j in raising:
                    submit_plain(ex, rnd, j, boom, RAISE)
                else:
                    submit_plain(ex, rnd, j, noop, OK)
                if j in cancel and j not in special:
                    t.note("cancel attempts")
                    if rnd.futures[j].cancel():  # type: ignore[union-attr]
                        t.note("cancels that took")
            if last:  # the executor's end: queued tasks are cancelled
                closed = True
                bounded_shutdown(ex, t, cancel_futures=True)
            # run counts are read once every future of the round is done (or given up on)
            wait_done([f for f in rnd.futures if f is not None], args.timeout)
            counts = merge_counts(rnd, ctx.seen, ctx.logs, t)
            complete = account(t, rnd, counts, args.timeout)
            t.rounds += 1
            del rnd, counts
            sample_rss(t)
            log.info("%s round %d/%d: %d tasks in %.2f s; so far %d completed, %d raised, "
                     "%d cancelled, %d died, %d lost, %d duplicated, %d wrong; RSS %.1f MiB",
                     mode, r + 1, len(sizes), n, time.monotonic() - t0, t.completed,
                     t.raised, t.cancelled, t.died, t.lost, t.duplicated, t.wrong,
                     t.rss[-1] / 1024)
            if not complete:
                log.error("%s: tasks lost; the remaining rounds are skipped", mode)
                break
    finally:
        if not closed:
            threading.Thread(target=ex.shutdown, kwargs={"wait": False, "cancel_futures": True},
                             daemon=True).start()
    st = ex.stats()
    if mode == "processes":
        p = st.get("processes", {})
        t.note("workers started", p.get("started", 0))
        t.note("workers died", p.get("died", 0))
    t.seconds = time.monotonic() - start
    return t


def shutdown_when_measuring(ex: AdaptiveExecutor, key: str, stop: threading.Event,
                            shut_down: Callable[[], None]) -> None:
    """Shuts ``ex`` down the moment its function ``key`` becomes a candidate for processes:
    auto mode then takes that function's queued tasks off the queue and queues them again,
    measured (the step before the move)."""
    while not stop.is_set():
        kind = ex.stats().get("kinds", {}).get(key)
        if kind is not None and "measuring every task" in kind["reason"]:
            shut_down()
            return
        time.sleep(0.0002)


class MoveWatch(logging.Handler):
    """Sees gil_adapt log that a function moves to worker processes; runs ``action`` (once)
    in the logging thread, inside the move, and sets ``moved``."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.moved = threading.Event()
        self.action: Optional[Callable[[], None]] = None

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "moves to worker processes" not in msg and "-> processes" not in msg:
            return
        action, self.action = self.action, None
        self.moved.set()
        if action is not None:
            action()


def auto_plan(rng: random.Random, n: int, spins: int, pins: int
              ) -> Iterator[Tuple[Callable[..., Any], int, bool]]:
    """(function, outcome, cancel it) for each task of an auto round after the pinned ones:
    no-op, raising and cancelled tasks, then the GIL-bound ones with a no-op after every
    AUTO_GAP of them, then no-ops to fill the round."""
    bulk = max(0, n - pins - spins - spins // AUTO_GAP)
    raising = set(marks(rng, bulk, RAISE_SHARE))
    cancel = set(marks(rng, bulk, CANCEL_SHARE)) - raising
    for j in range(bulk):
        yield (boom, RAISE, False) if j in raising else (noop, OK, j in cancel)
    left = n - pins - bulk
    for s in range(spins):
        if left <= 0:
            return
        yield spin, OK, False
        left -= 1
        if s % AUTO_GAP == AUTO_GAP - 1 and left > 0:
            yield noop, OK, False
            left -= 1
    for _ in range(left):
        yield noop, OK, False


def auto_rounds(ctx: Context, sizes: Sequence[int]) -> Tally:
    """auto: a fresh executor a round, shut down (cancel_futures) as GIL-bound tasks move."""
    args, rng = ctx.args, ctx.rng
    t = Tally("auto")
    start = time.monotonic()
    watch = MoveWatch()
    switch_interval = sys.getswitchinterval()
    gl = logging.getLogger("gil_adapt")
    gl.addHandler(watch)
    todo = list(sizes)
    spin_key = f"{__name__}:spin"
    try:
        r = 0
        while r < len(todo):
            n = todo[r]
            t0 = time.monotonic()
            lost_before = t.lost
            how = AUTO_SHUTDOWNS[r % len(AUTO_SHUTDOWNS)]
            pin = r % 2 == 1
            spins = min(AUTO_SPINS_REQUEUE if how == "requeue" else AUTO_SPINS, n * 4 // 5)
            rnd = Round.new(ctx.ids(n), n)
            ctx.seen.start(rnd.base, n)
            watch.moved.clear()
            watch.action = None
            ex = AdaptiveExecutor(mode="auto", thread_name_prefix=f"soak-auto-{r}",
                                  pin={pinned: "processes"} if pin else None)
            shut = threading.Event()  # the soak shut ex down (its submits may be refused)

            def shut_down(ex: AdaptiveExecutor = ex, shut: threading.Event = shut) -> None:
                shut.set()
                ex.shutdown(wait=False, cancel_futures=True)

            if how == "in-move":
                watch.action = shut_down
            stop_poll = threading.Event()
            poller: Optional[threading.Thread] = None
            if how == "requeue":
                # a short switch interval lets the poller in while the requeue runs
                sys.setswitchinterval(REQUEUE_SWITCH_S)
                poller = threading.Thread(target=shutdown_when_measuring,
                                          args=(ex, spin_key, stop_poll, shut_down),
                                          name="soak-requeue", daemon=True)
                poller.start()
            n_pins = min(n, PINNED_TASKS) if pin else 0
            for j in range(n_pins):  # first: the process backend starts before the move
                submit_plain(ex, rnd, j, pinned, OK)
            # done before the GIL-bound tasks start: their round trips, timed while those
            # hold this process's GIL, would count in the overhead the move is predicted from
            wait_done(rnd.futures[:n_pins], args.timeout)  # type: ignore[arg-type]
            spun: List[Future] = []
            j = n_pins
            try:
                for fn, kind, cancel in auto_plan(rng, n, spins, n_pins):
                    f = submit_plain(ex, rnd, j, fn, kind, *((ctx.spin_n,) if fn is spin
                                                              else ()))
                    j += 1
                    if fn is spin:
                        spun.append(f)
                    if cancel:
                        t.note("cancel attempts")
                        if f.cancel():
                            t.note("cancels that took")
            except RuntimeError:
                if not shut.is_set():
                    raise
                # shut down while this round was still submitting (requeue rounds): the
                # rest of its tasks go to the next round
                carry = n - j
                t.note("tasks left to the next round (submits refused after the shutdown)",
                       carry)
                if r + 1 < len(todo):
                    todo[r + 1] += carry
                else:
                    todo.append(carry)
            # wait for the move, or the requeue (or give up: every GIL-bound task done, or
            # the deadline)
            deadline = time.monotonic() + AUTO_MOVE_WAIT_S
            while not watch.moved.wait(0.05):
                if time.monotonic() > deadline or all(f.done() for f in spun[-8:]) or (
                        poller is not None and not poller.is_alive()):
                    break
            moved = watch.moved.is_set()
            watch.action = None
            if poller is not None:
                stop_poll.set()
                poller.join()
                t.note("shutdown requeue (as the candidate was seen)" if shut.is_set()
                       else "shutdown requeue (missed: no candidate seen)")
            elif moved:
                t.note(f"shutdown {how} (after a move)")
                if how == "after":
                    time.sleep(rng.uniform(0.0, 0.3))
            else:
                t.note(f"shutdown {how} (no move within {AUTO_MOVE_WAIT_S:.0f} s)")
            shut_down()
            bounded_shutdown(ex, t, cancel_futures=True)
            st = ex.stats()
            sys.setswitchinterval(switch_interval)
            wait_done([f for f in rnd.futures if f is not None], AFTER_SHUTDOWN_S)
            counts = merge_counts(rnd, ctx.seen, ctx.logs, t)
            complete = account(t, rnd, counts, AFTER_SHUTDOWN_S)
            t.rounds += 1
            kind_st = st.get("kinds", {}).get(spin_key, {})
            del rnd, counts, spun, ex, st, shut_down
            sample_rss(t)
            log.info("auto round %d/%d (shutdown %s%s): %d tasks in %.2f s, spin on %s (%s); "
                     "so far %d completed, %d raised, %d cancelled, %d lost, %d duplicated, "
                     "%d wrong; RSS %.1f MiB", r + 1, len(todo), how, ", pinned" if pin else "",
                     j, time.monotonic() - t0, kind_st.get("backend"), kind_st.get("reason"),
                     t.completed, t.raised, t.cancelled, t.lost, t.duplicated, t.wrong,
                     t.rss[-1] / 1024)
            if not complete:  # the next round's executor is a fresh one: go on
                log.error("auto: round %d (shutdown %s): %d tasks lost (%d in all)", r + 1,
                          how, t.lost - lost_before, t.lost)
            r += 1
    finally:
        gl.removeHandler(watch)
        sys.setswitchinterval(switch_interval)
    t.seconds = time.monotonic() - start
    return t


# ---- main --------------------------------------------------------------------------------

def spin_per_ms() -> int:
    n = 200_000
    best = float("inf")
    for _ in range(3):
        t0 = time.thread_time()
        _spin_only(n)
        best = min(best, time.thread_time() - t0)
    return max(1, int(n / (best * 1000.0)))


def _spin_only(n: int) -> None:
    x = 0
    for k in range(n):
        x += k


def print_table(tallies: Sequence[Tally]) -> None:
    head = (f"{'mode':<10} {'tasks':>9} {'completed':>9} {'raised':>7} {'cancelled':>9} "
            f"{'died':>5} {'lost':>5} {'duplicated':>10} {'wrong':>5}  "
            f"{'RSS MiB first/last/max':>22} {'seconds':>8}")
    print(head)
    print("-" * len(head))
    for t in tallies:
        rss = "/".join(f"{x / 1024:.1f}" for x in (t.rss[0], t.rss[-1], max(t.rss))) \
            if t.rss else "-"
        print(f"{t.mode:<10} {t.tasks:>9} {t.completed:>9} {t.raised:>7} {t.cancelled:>9} "
              f"{t.died:>5} {t.lost:>5} {t.duplicated:>10} {t.wrong:>5}  {rss:>22} "
              f"{t.seconds:>8.1f}")
    for t in tallies:
        notes = ", ".join(f"{k} {v}" for k, v in t.notes.items())
        print(f"{t.mode}: {t.rounds} rounds; {notes}; memory "
              f"{'flat' if t.memory_ok else 'GREW'}: {t.memory_verdict}")
        for p in t.problems:
            print(f"  {t.mode}: {p}")
        if t.more_problems:
            print(f"  {t.mode}: ... and {t.more_problems} more problems")


class _QuietFaults(logging.Filter):
    """Hides the warnings the soak provokes on purpose (workers it kills, moves)."""

    EXPECTED = ("moves to worker processes", "died (killed by SIGKILL) while running "
                "__main__:killer", ": threads -> processes", ": processes -> threads")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".")[0] != "gil_adapt":
            return True
        msg = record.getMessage()
        return not any(e in msg for e in self.EXPECTED)


def main() -> int:
    global _SEEN
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=None,
                    help="tasks in all, split evenly across the modes (default 1,000,000; "
                         "20,000 with --quick)")
    ap.add_argument("--quick", action="store_true", help="~20,000 tasks, < 60 s")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated, of "
                    + ", ".join(MODES))
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds per mode (default 40, 8 with --quick; auto rounds hold at "
                         f"least {AUTO_MIN_ROUND} tasks)")
    ap.add_argument("--forks", type=int, default=3, help="forking tasks a threads round")
    ap.add_argument("--kills", type=int, default=2,
                    help="tasks a processes round that SIGKILL their worker")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds a round's futures may take before the rest count as lost "
                         "(default 120, 60 with --quick)")
    ap.add_argument("--rss-ratio", type=float, default=0.20,
                    help="allowed growth of the median RSS, last quarter over first")
    ap.add_argument("--rss-slack-mib", type=float, default=16.0,
                    help="allowed growth on top of --rss-ratio, MiB")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="log every round (-vv: and the warnings the faults provoke)")
    args = ap.parse_args()
    total = args.tasks if args.tasks is not None else (20_000 if args.quick else 1_000_000)
    rounds = args.rounds if args.rounds is not None else (8 if args.quick else 40)
    if args.timeout is None:
        args.timeout = 60.0 if args.quick else 120.0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        ap.error(f"--modes: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(MODES)}")
    if total < 1 or rounds < 1:
        ap.error("--tasks and --rounds must be at least 1")

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.verbose < 2:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietFaults())

    # SIGTERM (a test's timeout, a CI job cancelled) ends the run through the finally
    # below, which removes the workers' log files
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(128 + signal.SIGTERM))
    run_dir = tempfile.mkdtemp(prefix="gil-adapt-soak-")
    os.environ[RUN_DIR_ENV] = run_dir  # worker processes inherit it
    _SEEN = _Seen()
    ctx = Context(args, random.Random(args.seed), _SEEN, RunLogs(run_dir))
    ctx.spin_n = int(spin_per_ms() * AUTO_SPIN_MS)
    cores = len(os.sched_getaffinity(0))
    print(f"soak: Python {sys.version.split()[0]}, gil_adapt "
          f"{getattr(gil_adapt, '__version__', '?')}, {cores} usable cores; {total} tasks "
          f"over {', '.join(modes)}; seed {args.seed}; faults: {RAISE_SHARE:.0%} raising, "
          f"{CANCEL_SHARE:.0%} cancelled, {args.forks} forks a threads round, {args.kills} "
          f"kills a processes round, auto shut down during moves", flush=True)
    t_all = time.monotonic()
    tallies: List[Tally] = []
    try:
        for mode, share in zip(modes, split(total, len(modes))):
            if mode == "auto":
                n_rounds = min(rounds, max(1, share // AUTO_MIN_ROUND))
            else:
                n_rounds = min(rounds, share)
            sizes = split(share, n_rounds)
            log.info("%s: %d tasks in %d rounds", mode, share, n_rounds)
            t = auto_rounds(ctx, sizes) if mode == "auto" else long_lived(ctx, mode, sizes)
            # late runs: ids of this mode's rounds written after they were counted
            ctx.seen.start(ctx.next_id, 0)
            merge_counts(Round.new(ctx.next_id, 0), ctx.seen, ctx.logs, t)
            memory_check(t, args.rss_ratio, args.rss_slack_mib)
            tallies.append(t)
            print(f"soak: {mode} done in {t.seconds:.1f} s: {t.tasks} tasks, {t.lost} lost, "
                  f"{t.duplicated} duplicated, {t.wrong} wrong, memory "
                  f"{'flat' if t.memory_ok else 'GREW'}", flush=True)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    print()
    print_table(tallies)
    tasks = sum(t.tasks for t in tallies)
    lost = sum(t.lost for t in tallies)
    dup = sum(t.duplicated for t in tallies)
    wrong = sum(t.wrong for t in tallies)
    ok = all(t.ok for t in tallies)
    print(f"\n{time.monotonic() - t_all:.0f} s in all; {wrong} wrong outcomes; memory "
          + ("flat in every mode" if all(t.memory_ok for t in tallies) else
             "grew in " + ", ".join(t.mode for t in tallies if not t.memory_ok))
          + ("" if ok else "; FAILED"))
    print(f"soak: {tasks} tasks, {lost} lost, {dup} duplicated", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
