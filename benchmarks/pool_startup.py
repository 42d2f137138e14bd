"""A pool held at a large size, started under load: tasks/s second by second.

AdaptiveExecutor(min_workers=N, max_workers=N) and ThreadPoolExecutor(N) get the mixed
task (10 ms of Python CPU + 50 ms sleep) from a closed-loop driver that keeps 4096
submitted, from an empty pool, pinned to --cores CPUs, each in a fresh process. Every
AdaptiveExecutor worker must win a GIL turn to enter (PyGILState_Ensure) behind the
running tasks; started all at once (GIL_ADAPT_START_BURST=100000) a thousand of them
join the GIL's waiters at once, started two at a time (the default) they do not. Rows
with calm=0 turn the GIL waiter thinning off (GIL_ADAPT_CALM=0), which otherwise hides
part of it. ThreadPoolExecutor starts a thread per submit and waits for each to run.

  python benchmarks/pool_startup.py [--cores 2] [--size 1024] [--seconds 10] [--reps 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from executor_vs_sweep import calibrate_loop  # noqa: E402  (same task loop, same calibration)

CHILD = textwrap.dedent(r"""
    import json, os, sys, threading, time
    import concurrent.futures as cf
    cpus, kind, n, seconds, per_ms = sys.argv[1:6]
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(allowed[:int(cpus)]))   # before any thread exists
    n, seconds, spin = int(n), int(seconds), int(float(per_ms) * 10)

    def loop(k):
        x = 0
        for _ in range(k):
            x += 1

    def task():
        loop(spin)
        time.sleep(0.05)

    if kind == "adaptive":
        from gil_adapt import AdaptiveExecutor
        ex = AdaptiveExecutor(min_workers=n, max_workers=n)
    else:
        ex = cf.ThreadPoolExecutor(n)
    stamps = []
    sem = threading.Semaphore(4096)
    def done(_f):
        stamps.append(time.monotonic())
        sem.release()
    t0 = time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:
        if sem.acquire(timeout=0.05):
            ex.submit(task).add_done_callback(done)
    per_s = [0] * seconds
    for s in stamps:
        i = int(s - t0)
        if 0 <= i < seconds:
            per_s[i] += 1
    workers = ex.stats()["workers"] if kind == "adaptive" else len(ex._threads)
    print(json.dumps({"per_s": per_s, "workers": workers}), flush=True)
    os._exit(0)   # do not wait for the pool's threads
""")

SETTINGS = [  # (label, kind, environment)
    ("AdaptiveExecutor, start 2 at a time (default)", "adaptive", {}),
    ("AdaptiveExecutor, start all at once", "adaptive", {"GIL_ADAPT_START_BURST": "100000"}),
    ("ThreadPoolExecutor", "tpe", {}),
    ("AdaptiveExecutor, start 2 at a time, calm=0", "adaptive", {"GIL_ADAPT_CALM": "0"}),
    ("AdaptiveExecutor, start all at once, calm=0", "adaptive",
     {"GIL_ADAPT_CALM": "0", "GIL_ADAPT_START_BURST": "100000"}),
]


def run_once(args: argparse.Namespace, kind: str, env: Dict[str, str], per_ms: float) -> Dict:
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.cores), kind,
                              str(args.size), str(args.seconds), str(per_ms)],
                             capture_output=True, text=True, env=dict(os.environ, **env),
                             timeout=args.seconds + 60)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, ValueError):
        # a collapsed interpreter may not even reach its report: nothing counted
        return {"per_s": [0] * args.seconds, "workers": None, "hung": True}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    if args.cores < 1 or args.size < 1 or args.seconds < 2 or args.reps < 1:
        ap.error("--cores, --size, --reps >= 1 and --seconds >= 2")
    if args.cores > len(os.sched_getaffinity(0)):
        ap.error(f"--cores {args.cores}: only {len(os.sched_getaffinity(0))} CPUs allowed")
    per_ms = calibrate_loop()
    print(f"Python {sys.version.split()[0]}, pinned to {args.cores} CPU(s), pool of "
          f"{args.size}, mixed task (10 ms CPU + 50 ms sleep), 4096 in flight, "
          f"{args.seconds} s from an empty pool, {args.reps} rep(s) alternating; tasks/s "
          f"per second")
    results: Dict[str, List[Dict]] = {label: [] for label, _, _ in SETTINGS}
    for _ in range(args.reps):
        for label, kind, env in SETTINGS:
            results[label].append(run_once(args, kind, env, per_ms))
    for label, _, _ in SETTINGS:
        for r in results[label]:
            total = sum(r["per_s"]) / args.seconds
            first = sum(r["per_s"][:3]) / 3
            tag = " (no report: hung)" if r.get("hung") else f", {r['workers']} workers at the end"
            print(f"  {label:<48} mean {total:6.1f}, first 3 s {first:6.1f}: "
                  f"{r['per_s']}{tag}")
        means = [sum(r["per_s"]) / args.seconds for r in results[label]]
        print(f"  {'':<48} median of means {statistics.median(means):.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
