"""``gil-adapt demo``: the ledger on a small threaded program.

The same mixed task (about 10 ms of pure-Python CPU, then a 50 ms sleep standing in for
I/O) runs with 2 and with 64 threads on one core. With 2 threads the waiting is I/O
(beta low: more threads would help); with 64 it is the GIL (beta high: more threads only
queue for the interpreter). beta_legacy = 1 - cpu/wall cannot tell the two apart.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from ._ledger import STATES, _derive, capabilities, install, measure


def _spin(n: int) -> int:
    x = 0
    for i in range(n):
        x += i
    return x


def calibrate_spin(warm_s: float = 0.5) -> Callable[[float], None]:
    """Returns work(ms): pure-Python CPU work of about ms milliseconds.

    A loop timed cold runs markedly slower than the same loop once the CPU reaches its
    sustained clock and the interpreter's caches are warm, so the loop first runs for
    ``warm_s`` of CPU time and is then timed as the median of several short runs.
    """
    n = 20_000
    t_end = time.thread_time() + warm_s
    while time.thread_time() < t_end:
        _spin(n)
    rates = []
    for _ in range(7):
        t0 = time.thread_time()
        _spin(n * 10)
        rates.append(n * 10 / max(time.thread_time() - t0, 1e-9))
    per_ms = max(1, int(sorted(rates)[len(rates) // 2] / 1000.0))
    return lambda ms: _spin(int(per_ms * ms))


def run_mixed(threads: int, tasks_per_thread: int, cpu_ms: float = 10.0,
              io_s: float = 0.05) -> Dict[str, float]:
    """Runs the mixed task on `threads` threads; returns throughput and the states."""
    work = calibrate_spin()
    barrier = threading.Barrier(threads + 1)

    def body() -> None:
        barrier.wait()
        for _ in range(tasks_per_thread):
            work(cpu_ms)
            time.sleep(io_s)

    ts = [threading.Thread(target=body, name=f"demo-{i}") for i in range(threads)]
    for t in ts:
        t.start()
    with measure() as m:
        t0 = time.perf_counter()
        barrier.wait()
        for t in ts:
            t.join()
        elapsed = time.perf_counter() - t0
    assert m.result is not None
    ids = {t.native_id for t in ts}
    tot = {k: sum(m.result["threads"][i][k] for i in ids) for k in ("wall_ns",) + STATES}
    _derive(tot)
    tasks = threads * tasks_per_thread
    out: Dict[str, float] = {"threads": threads, "tasks_per_s": tasks / elapsed,
                             "cpu_ms_per_task": tot["cpu_ns"] / tasks / 1e6,
                             "cores_used": tot["cpu_ns"] / 1e9 / elapsed}
    for k in STATES:
        out[k[:-3] + "_share"] = tot[k] / tot["wall_ns"]
    out["beta"] = tot["beta"] if tot["beta"] is not None else float("nan")
    out["beta_legacy"] = tot["beta_legacy"]
    out["contention"] = tot["contention"] if tot["contention"] is not None else float("nan")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="gil-adapt demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="2,64", help="comma-separated thread counts (default 2,64)")
    p.add_argument("--tasks", type=int, default=6, help="tasks per thread (default 6)")
    p.add_argument("--cores", type=int, default=1, help="pin to this many cores (default 1)")
    args = p.parse_args(argv)
    try:
        counts = [int(x) for x in args.threads.split(",")]
    except ValueError:
        p.error("--threads must be comma-separated integers")
    if any(c < 1 for c in counts) or args.tasks < 1 or args.cores < 1:
        p.error("thread counts, --tasks and --cores must be positive")
    avail = sorted(os.sched_getaffinity(0))
    if args.cores > len(avail):
        p.error(f"--cores {args.cores}: only {len(avail)} usable here")
    os.sched_setaffinity(0, set(avail[: args.cores]))
    install()
    caps = capabilities()
    print(f"gil-adapt demo — Python {caps['python']}, GIL waits: {caps['gil_wait']}"
          + (f" ({caps['reason']})" if caps["gil_wait"] != "exact" else "")
          + f", run-queue: {caps['runq_wait']}, pinned to {args.cores} core(s)")
    print("task: ~10 ms pure-Python CPU + 50 ms sleep\n")
    cols = ["threads", "tasks/s", "cpu ms/task", "cores used", "cpu", "gil_wait", "runq", "lock",
            "io_wait", "beta", "beta_legacy"]
    print("  ".join(f"{c:>11}" for c in cols))
    rows: List[Dict[str, float]] = []
    for n in counts:
        r = run_mixed(n, args.tasks)
        rows.append(r)
        vals = [f"{n:>11d}", f"{r['tasks_per_s']:>11.1f}", f"{r['cpu_ms_per_task']:>11.2f}",
                f"{r['cores_used']:>11.2f}", f"{r['cpu_share']:>11.1%}",
                f"{r['gil_wait_share']:>11.1%}", f"{r['runq_wait_share']:>11.1%}",
                f"{r['lock_wait_share']:>11.1%}", f"{r['io_wait_share']:>11.1%}",
                f"{r['beta']:>11.2f}", f"{r['beta_legacy']:>11.2f}"]
        print("  ".join(vals))
    print("\ncpu ms/task is the CPU the threads used per task, measured under load; cores used is"
          f"\nthat CPU over the run's wall time (at most {args.cores} here)."
          "\nbeta = gil_wait / (gil_wait + io_wait): high means threads wait for the interpreter,"
          "\nnot for I/O, so adding threads cannot help; beta_legacy (1 - cpu/wall) is high in both.")
    return 0
