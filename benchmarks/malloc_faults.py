"""Page faults and CPU per task: AdaptiveExecutor against ThreadPoolExecutor on a NumPy task.

The task is the bench's `audio` feature extraction (NumPy FFT, log-mel, MFCC of 1 s of
16 kHz audio: arrays of a few hundred KiB allocated and freed per task) after a 20 ms
sleep in place of its loopback read. Each executor holds the same number of workers
(AdaptiveExecutor(min_workers=N, max_workers=N)), so sizing plays no part: what differs
is the CPU each task costs the process, and the minor page faults behind it (glibc's
malloc handing free heap back to the kernel and faulting it in again).

Each run is a fresh process pinned to the first --cores CPUs, keeping 4,096 tasks in
flight; it counts over --measure seconds after --warmup. Runs alternate between the
executors (--reps each); the medians are printed, and every run with --verbose.
GLIBC_TUNABLES in the environment reaches every run (e.g.
glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=8388608).

  python benchmarks/malloc_faults.py [--cores 1] [--workers 36] [--reps 5]
      [--warmup 3] [--measure 6] [--verbose]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import textwrap
from typing import Dict, List

from _child import run_json

CHILD = textwrap.dedent(r"""
    import json, os, resource, sys, threading, time
    import concurrent.futures as cf

    kind, cores, workers, warmup, measure = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
        float(sys.argv[4]), float(sys.argv[5])
    # before NumPy starts its BLAS threads: they inherit it
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    import numpy as np
    from gil_adapt.bench import workloads
    chunk = np.random.default_rng(1).integers(-2000, 2000, 16000, dtype=np.int16).tobytes()

    def task():
        time.sleep(0.02)
        return workloads._audio_cpu(chunk)

    if kind == "threadpool":
        ex = cf.ThreadPoolExecutor(workers)
    else:
        from gil_adapt import AdaptiveExecutor
        ex = AdaptiveExecutor(min_workers=workers, max_workers=workers)
    sem = threading.Semaphore(4096)
    done = [0]
    lock = threading.Lock()

    def finished(_f):
        with lock:
            done[0] += 1
        sem.release()

    def drive():
        while True:
            sem.acquire()
            ex.submit(task).add_done_callback(finished)

    threading.Thread(target=drive, daemon=True).start()
    time.sleep(warmup)
    r0, d0, t0 = resource.getrusage(resource.RUSAGE_SELF), done[0], time.monotonic()
    time.sleep(measure)
    r1, d1, t1 = resource.getrusage(resource.RUSAGE_SELF), done[0], time.monotonic()
    n = max(1, d1 - d0)
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    print(json.dumps({"tasks_per_s": n / (t1 - t0), "cpu_ms_per_task": 1000 * cpu / n,
                      "sys_ms_per_task": 1000 * (r1.ru_stime - r0.ru_stime) / n,
                      "minflt_per_task": (r1.ru_minflt - r0.ru_minflt) / n,
                      "cpu_utilisation": cpu / (t1 - t0) / cores}), flush=True)
    os._exit(0)   # do not wait for the queued tasks
""")

KINDS = ("threadpool", "adaptive")
FIGURES = ("tasks_per_s", "cpu_ms_per_task", "sys_ms_per_task", "minflt_per_task",
           "cpu_utilisation")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cores", type=int, default=1)
    ap.add_argument("--workers", type=int, default=36)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--measure", type=float, default=6.0)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.cores < 1 or args.cores > len(os.sched_getaffinity(0)):
        ap.error(f"--cores must be 1..{len(os.sched_getaffinity(0))}")
    if args.workers < 1 or args.reps < 1 or args.warmup < 0 or args.measure <= 0:
        ap.error("--workers and --reps must be >= 1, --warmup >= 0, --measure > 0")
    runs: Dict[str, List[Dict[str, float]]] = {k: [] for k in KINDS}
    timeout = 60 + 2 * (args.warmup + args.measure)
    for r in range(args.reps):
        for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
            cmd = [sys.executable, "-c", CHILD, kind, str(args.cores), str(args.workers),
                   str(args.warmup), str(args.measure)]
            got = run_json(cmd, timeout)
            if "error" in got:
                print(f"{kind} rep {r + 1}: {got['error']}", file=sys.stderr)
                continue
            runs[kind].append(got)
            if args.verbose:
                print(f"  rep {r + 1} {kind:10s} " + "  ".join(
                    f"{k} {got[k]:.3f}" for k in FIGURES))
    print(f"Python {sys.version.split()[0]}, {args.cores} core(s), {args.workers} workers, "
          f"medians of {args.reps} interleaved runs ({args.warmup:g} s + {args.measure:g} s); "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
    print(f"{'executor':12s}" + "".join(f"{k:>18s}" for k in FIGURES))
    for kind in KINDS:
        if not runs[kind]:
            print(f"{kind:12s} no run finished")
            continue
        print(f"{kind:12s}" + "".join(
            f"{statistics.median(x[k] for x in runs[kind]):18.3f}" for k in FIGURES))
    return 0 if all(runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
