"""GIL waiter thinning (gil_adapt.calm_gil) on and off, for plain ThreadPoolExecutors.

Each run is a fresh process pinned to the first C CPUs, with the gil-adapt hook installed
and the thinning set to --keep (on) or 0 (off); on and off alternate, --reps times, and
the medians are compared. Workloads (pure-Python CPU by a calibrated loop, I/O by sleep):

  io     50 ms I/O                 ThreadPoolExecutor(N), all N threads live
  mixed  10 ms CPU + 50 ms I/O     idem
  micro  0.1 ms CPU + 1 ms I/O     idem
  cpu    8 threads spinning on Python CPU while the main thread sleeps 1 ms 50 times:
         the spinners' work per second and the sleeper's worst wake-up (the GIL's
         latency) -- the thinning must not starve anyone nor slow CPU-bound threads

  python benchmarks/gil_calm.py [--cores 1,2] [--sizes 512,1024,2048] [--reps 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import textwrap
from typing import Dict, List

from _child import run_json
from gil_adapt._ledger import CALM_ABOVE_DEFAULT

WORKLOADS = {"io": (0.0, 50.0), "mixed": (10.0, 50.0), "micro": (0.1, 1.0)}

CHILD = textwrap.dedent(r"""
    import json, os, sys, threading, time
    import concurrent.futures as cf
    cpus, workload, n, keep, above, warmup, measure = sys.argv[1:8]
    cpus, n, keep, above = int(cpus), int(n), int(keep), int(above)
    warmup, measure = float(warmup), float(measure)
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cpus]))
    import gil_adapt
    from gil_adapt import _core
    if not gil_adapt.install():
        print(json.dumps({"error": "hook not installed"})); sys.exit(0)
    gil_adapt.calm_gil(keep, above=above)

    def loop(k):
        x = 0
        for _ in range(k):
            x += 1
        return x

    t0 = time.thread_time(); loop(300_000)
    per_ms = 300_000 / ((time.thread_time() - t0) * 1000)
    out = {}
    if workload == "cpu":
        stop = threading.Event()
        counts = [0] * 8
        def spin(i):
            while not stop.is_set():
                loop(int(per_ms * 0.5))
                counts[i] += 1
        ts = [threading.Thread(target=spin, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        time.sleep(warmup)
        c0, s0, start = sum(counts), _core.gil_switches(), time.monotonic()
        lat = []
        for _ in range(50):
            a = time.monotonic(); time.sleep(0.001); lat.append(time.monotonic() - a)
        span = time.monotonic() - start
        out = {"throughput": (sum(counts) - c0) * 0.5 / span,   # ms of CPU work per s
               "worst_wake_ms": max(lat) * 1000, "median_wake_ms": sorted(lat)[25] * 1000,
               "switches_per_s": (_core.gil_switches() - s0) / span}
        stop.set()
        for t in ts:
            t.join()
    else:
        cpu_ms, io_ms = {"io": (0.0, 50.0), "mixed": (10.0, 50.0), "micro": (0.1, 1.0)}[workload]
        spin_n, io_s = int(per_ms * cpu_ms), io_ms / 1000
        def task():
            if spin_n:
                loop(spin_n)
            time.sleep(io_s)
        ex = cf.ThreadPoolExecutor(n)
        gate = threading.Event()
        starters = [ex.submit(gate.wait) for _ in range(n)]
        while len(ex._threads) < n:
            ex.submit(gate.wait)
        gate.set()
        for f in starters:
            f.result()
        sem = threading.Semaphore(4096)
        stamps = []
        def done(_f):
            stamps.append(time.monotonic()); sem.release()
        t0 = time.monotonic(); end = t0 + warmup + measure
        while time.monotonic() < end:
            if sem.acquire(timeout=0.05):
                ex.submit(task).add_done_callback(done)
        out = {"throughput": sum(1 for s in stamps if t0 + warmup <= s < end) / measure}
    out["stretched"] = _core.calm()[1]
    print(json.dumps(out), flush=True)
    os._exit(0)
""")


def run_once(cpus: int, workload: str, n: int, keep: int, args) -> Dict:
    cmd = [sys.executable, "-c", CHILD, str(cpus), workload, str(n), str(keep),
           str(args.above), str(args.warmup), str(args.measure)]
    return run_json(cmd, 60 + 3 * (args.warmup + args.measure))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", default="1,2")
    ap.add_argument("--workloads", default="io,mixed,micro,cpu")
    ap.add_argument("--sizes", default="512,1024,2048")
    ap.add_argument("--keep", type=int, default=4)
    ap.add_argument("--above", type=int, default=CALM_ABOVE_DEFAULT,
                    help="thin only while more than this many threads wait for the GIL "
                         "(default: the library's, %(default)s)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--measure", type=float, default=3.0)
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    allowed = len(os.sched_getaffinity(0))
    print(f"Python {sys.version.split()[0]}; thinning keep={args.keep} above={args.above} vs off; warmup "
          f"{args.warmup} s, measured {args.measure} s; median of {args.reps} alternating reps")
    report: Dict[str, Dict[str, List[Dict]]] = {}
    for cpus in [int(c) for c in args.cores.split(",")]:
        if cpus > allowed:
            print(f"-- {cpus} cores: skipped ({allowed} allowed here)")
            continue
        for workload in args.workloads.split(","):
            sizes = [8] if workload == "cpu" else [int(s) for s in args.sizes.split(",")]
            for n in sizes:
                runs: Dict[str, List[Dict]] = {"off": [], "on": []}
                for _ in range(args.reps):
                    runs["off"].append(run_once(cpus, workload, n, 0, args))
                    runs["on"].append(run_once(cpus, workload, n, args.keep, args))
                report[f"{cpus}c/{workload}/{n}"] = runs
                med = {}
                for k, rs in runs.items():
                    ok = [r for r in rs if "throughput" in r]
                    med[k] = statistics.median(r["throughput"] for r in ok) if ok else None
                line = f"{cpus}c {workload:5s} N={n:<5d}"
                for k in ("off", "on"):
                    vals = "/".join(f"{r['throughput']:.0f}" if "throughput" in r else "ERR"
                                    for r in runs[k])
                    line += f"  {k}: {med[k] or 0:9.1f} ({vals})"
                if med["off"] and med["on"]:
                    line += f"  on/off {med['on'] / med['off']:.2f}"
                if workload == "cpu":
                    for k in ("off", "on"):
                        ok = [r for r in runs[k] if "worst_wake_ms" in r]
                        if ok:
                            line += (f"  {k}: wake worst {max(r['worst_wake_ms'] for r in ok):.0f} ms"
                                     f" median {statistics.median(r['median_wake_ms'] for r in ok):.1f} ms"
                                     f" switches/s {statistics.median(r['switches_per_s'] for r in ok):.0f}")
                print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
