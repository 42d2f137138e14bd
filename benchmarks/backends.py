"""Auto mode, processes and threads for pure-Python CPU tasks, on 2 cores and pinned to 1.

Each point runs in a fresh process pinned to the first C allowed CPUs (before any thread
or worker exists; workers inherit the mask):

  threads    gil_adapt.AdaptiveExecutor(mode="threads") with its defaults (its controller
             sizes it)
  processes  gil_adapt.backends.ProcessBackend(C): one worker per usable core
  auto       gil_adapt.AdaptiveExecutor(mode="auto"): starts on threads, measures, and
             moves the function to worker processes if they pay; its figure includes the
             time it spent deciding (and the worker start-up), and the report says when
             it switched and where it ended

Tasks: a calibrated pure-Python loop of --task-ms milliseconds of CPU (default 5), --tasks
of them submitted at once after a warm-up; throughput = tasks / time to the last result.
The threads run is also measured by the ledger (per-task CPU, GIL wait, GIL held), and
the auto-mode chooser (gil_adapt.backends.choose) says what it would pick from those
figures, the cores and the memory budget. Repetitions alternate strategies; the ratio
reported is of the medians.

  python benchmarks/backends.py [--cores 2,1] [--task-ms 5] [--tasks 2000] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

from _child import per_ms_pinned

HERE = os.path.dirname(os.path.abspath(__file__))


def spin(n: int) -> int:
    """The task: pure-Python CPU (holds the GIL), n iterations."""
    x = 0
    for i in range(n):
        x += i
    return x


def calibrate() -> float:
    """Loop iterations per millisecond of thread CPU (best of 5, pinned to one CPU)."""
    return per_ms_pinned(lambda: spin(200_000), 200_000)


def child(cpus: int, strategy: str, n_tasks: int, per_task: int) -> Dict:
    """One measurement in this (fresh, pinned) process."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(allowed[:cpus]))
    sys.path.insert(0, HERE)
    from concurrent.futures import Future

    import backends as bench  # this file as a module: workers can import spin from it

    import gil_adapt
    from gil_adapt.backends import choose, usable_cores
    from gil_adapt.backends.processes import ProcessBackend

    out: Dict = {"cpus": cpus, "strategy": strategy, "usable_cores": usable_cores()}
    if strategy == "auto":
        ex = gil_adapt.AdaptiveExecutor(mode="auto")
        [f.result() for f in [ex.submit(bench.spin, per_task) for _ in range(4 * cpus)]]
        t0m = time.monotonic()
        t0 = time.perf_counter()
        [f.result() for f in [ex.submit(bench.spin, per_task) for _ in range(n_tasks)]]
        elapsed = time.perf_counter() - t0
        st = ex.stats()
        kind = st["kinds"]["backends:spin"]
        out.update(auto=kind["backend"], auto_reason=kind["reason"],
                   switches=[(round(sw["time_s"] - t0m, 2), sw["to"], sw["reason"])
                             for sw in st["switches"]],
                   on_processes=st.get("processes", {}).get("completed", 0))
        ex.shutdown()
    elif strategy == "processes":
        backend = ProcessBackend(cpus)

        def submit_all(n: int) -> List[Future]:
            fs = []
            for _ in range(n):
                f: Future = Future()
                assert backend.submit_task(f, bench.spin, (per_task,))
                fs.append(f)
            return fs

        [f.result() for f in submit_all(4 * cpus)]  # warm-up: workers started and measured
        t0 = time.perf_counter()
        [f.result() for f in submit_all(n_tasks)]
        elapsed = time.perf_counter() - t0
        stats = backend.stats()
        out.update(workers=stats["peak_workers"], memory_fit=stats["memory_fit"],
                   overhead_s=stats["functions"]["backends:spin"]["mean_overhead_s"])
        backend.shutdown()
    else:
        ex = gil_adapt.AdaptiveExecutor(mode="threads")
        [f.result() for f in [ex.submit(bench.spin, per_task) for _ in range(4 * cpus)]]
        with gil_adapt.measure() as m:
            t0 = time.perf_counter()
            [f.result() for f in [ex.submit(bench.spin, per_task) for _ in range(n_tasks)]]
            elapsed = time.perf_counter() - t0
        total = m.result["total"]
        # the workers: threads that ran Python (held the GIL), not the main or monitor thread
        workers = [t for t in m.result["threads"].values()
                   if t["gil_held_ns"] > 1e6 and t["name"] != "MainThread"]
        out["workers"] = len(workers)
        per = 1e9 * n_tasks
        profile = choose.Profile(
            tasks=n_tasks, elapsed_s=elapsed,
            wall_s=sum(t["wall_ns"] for t in workers) / per,
            cpu_s=sum(t["cpu_ns"] for t in workers) / per,
            gil_wait_s=sum(t["gil_wait_ns"] for t in workers) / per,
            gil_held_s=sum(t["gil_held_ns"] for t in workers) / per or None,
            io_wait_s=sum(t["io_wait_ns"] for t in workers) / per, backlog=True)
        from gil_adapt.backends.processes import DEFAULT_WORKER_RSS, memory_budget

        budget = memory_budget()  # workers of this task stay near a fresh interpreter's size
        fit = None if budget is None else int(budget // DEFAULT_WORKER_RSS)
        resources = choose.Resources(usable_cores=float(usable_cores()),
                                     process_workers_fit=fit)
        chooser = choose.Chooser("backends:spin")
        decision = None
        for k in range(chooser.policy.confirm):
            decision = chooser.update(float(k), resources, threads=profile)
        out.update(beta=total["beta"], gil_utilisation=total.get("gil_utilisation"),
                   profile=profile.__dict__, chooser=decision.backend.value,
                   chooser_reason=decision.reason)
        ex.shutdown()
    out["throughput"] = n_tasks / elapsed
    return out


def run_once(cpus: int, strategy: str, args: argparse.Namespace) -> Dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", str(cpus), strategy,
           str(args.tasks), str(args.per_task)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", default="2,1")
    ap.add_argument("--task-ms", type=float, default=5.0)
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cpus, strategy, n, per_task = args.child
        print(json.dumps(child(int(cpus), strategy, int(n), int(per_task)), default=str))
        return 0
    per_ms = calibrate()
    args.per_task = int(per_ms * args.task_ms)
    allowed = len(os.sched_getaffinity(0))
    print(f"Python {sys.version.split()[0]}, {allowed} CPUs allowed, load average "
          f"{os.getloadavg()[0]:.1f}; {args.tasks} tasks of {args.task_ms} ms pure-Python "
          f"CPU each, median of {args.reps} (alternating)")
    report: Dict[str, Dict] = {}
    status = 0
    for cpus in [int(c) for c in args.cores.split(",")]:
        if cpus > allowed:
            print(f"-- {cpus} cores: skipped ({allowed} allowed here)")
            continue
        runs: Dict[str, List[Dict]] = {"threads": [], "processes": [], "auto": []}
        for _ in range(args.reps):
            for strategy in runs:
                runs[strategy].append(run_once(cpus, strategy, args))
        med = {}
        for strategy, rs in runs.items():
            ok = [r for r in rs if "throughput" in r]
            if not ok:
                print(f"-- {cpus} cores, {strategy}: failed: {rs[0].get('error')}")
                status = 1
                continue
            med[strategy] = statistics.median(r["throughput"] for r in ok)
            each = ", ".join("%.1f" % r["throughput"] for r in ok)
            print(f"{cpus} core(s) {strategy:>9}: {med[strategy]:7.1f} tasks/s  "
                  f"(runs: {each}; workers {ok[-1].get('workers')})")
        if len(med) == 3:
            ratio = med["processes"] / med["threads"]
            auto = med["auto"] / med["threads"]
            print(f"{cpus} core(s) processes / threads = {ratio:.2f}; "
                  f"auto / threads = {auto:.2f}")
            last = [r for r in runs["threads"] if "chooser" in r][-1:]
            if last:
                p = last[0]["profile"]
                print(f"    threads, per task: cpu {1e3 * p['cpu_s']:.2f} ms, GIL held "
                      f"{1e3 * (p['gil_held_s'] or 0):.2f} ms, GIL wait "
                      f"{1e3 * p['gil_wait_s']:.2f} ms, I/O {1e3 * p['io_wait_s']:.2f} ms")
            for r in runs["auto"]:
                if "auto" in r:
                    print(f"    auto run: ended on {r['auto']} ({r['on_processes']} tasks ran "
                          f"on processes); switches (s after start, to, reason): "
                          f"{r['switches'] or 'none'}; last reason: {r['auto_reason']}")
            report[f"{cpus}c"] = {"ratio": ratio, "auto_ratio": auto, "median": med,
                                  "runs": runs}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return status


if __name__ == "__main__":
    sys.exit(main())
