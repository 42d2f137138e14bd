"""The controller's simulator against real CPython: fixed-pool throughput curves for the same
workload in both, and AdaptiveExecutor on the real one.

The controller's unit tests judge it against the best fixed pool size *in the simulator*
(tests/c/test_controller.c). Where the simulator's curve has a shape the interpreter does
not, a miss there says nothing about the executor. This script measures that for given
workloads (by default those the simulator test had below 97 % on 2026-12-01 before its
last controller change, that fit this machine's cores): for each, the simulated curve
(tests/c/sim.c through tests/c/sim_curve.c, built by `make -C tests/c bin/plain/sim_curve`)
and the real one at the same sizes, each pool in a fresh process pinned to the first C
CPUs, then AdaptiveExecutor(max_workers=2048) in the same driver.

Real tasks have the simulator's demands exactly: Python CPU by a loop that runs until the
thread's CPU clock has advanced h ms (it holds the GIL throughout), native CPU with the GIL
released by hashlib.sha256 over a buffer sized to n ms (calibrated here), I/O by time.sleep
(w ms). Fixed demands only (what the misses have; exponential/uniform I/O is drawn per task
with random.expovariate/uniform when asked).

  python benchmarks/sim_vs_real.py [--workloads 'h,n,w,C,cpu,io[,number];...'] [--reps 3]
      [--warmup 3] [--measure 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Dict, List, Tuple

from _child import per_ms_pinned, run_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The simulator test's workloads below 97 % of its optimum (make -C tests/c, with the
# simulator's CPython GIL of 2026-12-01, fourth session), as it prints them: h, n, w (ms),
# cores, CPU and I/O distributions, and its number. Two with exponential CPU (185, 324)
# are left out: the real task's CPU is fixed. (Since the controller judges GIL-bound
# steps on the GIL-busy share, fifth session, the test has no workload below 97 %: these
# are kept as the default, the cases that were hardest.)
MISSES = [
    (5.97, 3.54, 147, 2, "fixed", "fixed", 48),
    (3.57, 1.27, 78.1, 1, "fixed", "fixed", 552),
    (7.49, 0.916, 160, 1, "fixed", "fixed", 938),
    (3.32, 2.84, 178, 3, "fixed", "fixed", 86),
    (13.8, 2.29, 189, 3, "fixed", "fixed", 776),
    (14.5, 2.21, 63.6, 3, "fixed", "fixed", 936),
    (12.2, 3.16, 77.3, 4, "fixed", "fixed", 561),
    (15.3, 3.09, 77.5, 4, "fixed", "fixed", 901),
]

CHILD = textwrap.dedent(r"""
    import hashlib, json, os, random, sys, threading, time
    import concurrent.futures as cf
    cpus, h_ms, n_ms, w_ms, io_dist, strategy, warmup, measure, hash_per_ms = sys.argv[1:10]
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(allowed[:int(cpus)]))   # before any thread exists
    h_s, n_ms, w_s = float(h_ms) / 1000, float(n_ms), float(w_ms) / 1000
    warmup, measure = float(warmup), float(measure)
    buf = b"x" * max(4096, int(n_ms * float(hash_per_ms)))
    draw = {"fixed": lambda: w_s, "uniform": lambda: random.uniform(0, 2 * w_s),
            "exp": lambda: random.expovariate(1 / w_s) if w_s > 0 else 0.0}[io_dist]

    def task():
        end = time.thread_time() + h_s
        while time.thread_time() < end:
            for _ in range(50):
                pass
        if n_ms > 0:
            hashlib.sha256(buf).digest()     # GIL released for buffers > 2 KiB
        time.sleep(draw())

    if strategy == "adaptive":
        import gil_adapt
        ex = gil_adapt.AdaptiveExecutor(max_workers=2048)
        inflight = 4096
    else:
        n = int(strategy)
        ex = cf.ThreadPoolExecutor(n)
        gate = threading.Event()
        for _ in range(n):                   # all n threads started before the clock
            ex.submit(gate.wait)
        while len(ex._threads) < n:
            time.sleep(0.01)
        gate.set()
        inflight = 4 * n + 64
    stamps = []
    sem = threading.Semaphore(inflight)
    def done(_):
        stamps.append(time.monotonic())
        sem.release()
    t0 = time.monotonic()
    end = t0 + warmup + measure
    while time.monotonic() < end:
        if sem.acquire(timeout=0.05):
            ex.submit(task).add_done_callback(done)
    counted = [s for s in stamps if t0 + warmup <= s < end]
    out = {"throughput": len(counted) / measure}
    if strategy == "adaptive":
        st = ex.stats()
        out.update(workers=st["workers"], target=st["target_workers"], reason=st["last_reason"])
    print(json.dumps(out), flush=True)
    os._exit(0)   # do not wait for sleeping threads
""")


def build_sim() -> str:
    """The simulator's command-line driver, built by the C tests' Makefile (their flags)."""
    c = os.path.join(ROOT, "tests", "c")
    subprocess.run(["make", "-s", "-C", c, "bin/plain/sim_curve"], check=True)
    return os.path.join(c, "bin", "plain", "sim_curve")


def sim_curve(exe: str, wl: Tuple, sizes: List[int], seed: int) -> Tuple[Dict[int, float], int]:
    h, n, w, cores, cpu, io = wl[:6]
    out = subprocess.run([exe, str(h), str(n), str(w), str(cores), cpu, io, str(seed), "120"]
                         + [str(s) for s in sizes], capture_output=True, text=True, check=True)
    curve, held = {}, 0
    for line in out.stdout.splitlines():
        f = line.split()
        if f[0] == "size":
            curve[int(f[1])] = float(f[2])
        elif f[0] == "controller":
            held = int(f[1])
    return curve, held


def calibrate_hash() -> float:
    """Bytes of sha256 per millisecond of thread CPU, pinned to one CPU, best of 5."""
    import hashlib
    buf = b"x" * (1 << 20)
    return per_ms_pinned(lambda: hashlib.sha256(buf).digest(), len(buf))


def real(wl: Tuple, strategy: str, args: argparse.Namespace) -> Dict:
    h, n, w, cores, _cpu, io = wl[:6]
    cmd = [sys.executable, "-c", CHILD, str(cores), str(h), str(n), str(w), io, strategy,
           str(args.warmup), str(args.measure), str(args.hash_per_ms)]
    return run_json(cmd, 120 + 2 * (args.warmup + args.measure))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", help="'h,n,w,C,cpu,io[,number];...' (ms; cpu must be "
                                        "fixed; number: the simulator test's, for its seed); "
                                        "default: the simulator test's former misses that fit")
    ap.add_argument("--reps", type=int, default=3, help="real runs per point (median)")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--measure", type=float, default=8.0)
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    if args.reps < 1 or args.warmup < 0 or args.measure <= 0:
        ap.error("--reps >= 1, --warmup >= 0, --measure > 0")
    allowed = len(os.sched_getaffinity(0))
    if args.workloads:
        wls = []
        for k, spec in enumerate(args.workloads.split(";")):
            f = spec.split(",")
            if len(f) not in (6, 7) or f[4] != "fixed" or f[5] not in ("fixed", "uniform", "exp"):
                ap.error(f"bad workload {spec!r}: h,n,w,C,fixed,fixed|uniform|exp[,number]")
            try:
                wls.append((float(f[0]), float(f[1]), float(f[2]), int(f[3]), f[4], f[5],
                            int(f[6]) if len(f) == 7 else k))
            except ValueError:
                ap.error(f"bad workload {spec!r}: h, n, w numbers, C and number integers")
    else:
        wls = list(MISSES)
    args.hash_per_ms = calibrate_hash()
    print(f"Python {sys.version.split()[0]}, {allowed} CPUs allowed; warmup {args.warmup} s, "
          f"measured {args.measure} s, median of {args.reps}; sha256 {args.hash_per_ms:.0f} B/ms")
    report = []
    exe = build_sim()
    for wl in wls:
        h, n, w, cores, cpu, io, tag = wl
        name = f"workload {tag}: h={h} ms n={n} ms w={w} ms C={cores} cpu {cpu} io {io}"
        if cores > allowed:
            print(f"== {name}: skipped ({cores} cores needed, {allowed} allowed)")
            report.append({"workload": wl, "skipped": f"{cores} cores needed"})
            continue
        grid = [4, 6, 8, 10, 12, 14, 16, 19, 22, 26, 30, 34, 40, 48, 56, 64, 80, 96, 128]
        coarse, held = sim_curve(exe, wl, grid, 1000 + int(tag))
        best = max(coarse, key=coarse.get)
        # the sizes around the simulator's best and the controller's size in both
        lo, hi = min(best, held) * 0.6, max(best, held) * 1.5
        sizes = sorted({s for s in grid if lo <= s <= hi} | {best, held})
        # the simulator is deterministic: only the sizes off the grid need another run
        simc = {s: coarse[s] for s in sizes if s in coarse}
        extra = [s for s in sizes if s not in coarse]
        if extra:
            simc.update(sim_curve(exe, wl, extra, 1000 + int(tag))[0])
        runs: Dict[str, List[float]] = {str(s): [] for s in sizes}
        runs["adaptive"] = []
        last_adaptive: Dict = {}
        t0 = time.monotonic()
        for _ in range(args.reps):                      # alternate, not one after another
            for strat in list(runs):
                r = real(wl, strat, args)
                if "throughput" in r:
                    runs[strat].append(r["throughput"])
                    if strat == "adaptive":
                        last_adaptive = r
        med = {k: statistics.median(v) if v else 0.0 for k, v in runs.items()}
        real_best = max(sizes, key=lambda s: med[str(s)])
        sim_best = max(sizes, key=lambda s: simc[s])
        print(f"== {name} ({time.monotonic() - t0:.0f} s)")
        print("   size   sim tasks/s (% of sim best)   real tasks/s (% of real best) [runs]")
        for s in sizes:
            mark = (" <- sim best" if s == sim_best else "") + \
                   (" <- real best" if s == real_best else "") + \
                   (" <- controller in the sim" if s == held else "")
            print(f"   {s:4d}   {simc[s]:8.1f} ({100 * simc[s] / simc[sim_best]:5.1f} %)"
                  f"      {med[str(s)]:8.1f} ({100 * med[str(s)] / med[str(real_best)]:5.1f} %)"
                  f" [{'/'.join(f'{x:.0f}' for x in runs[str(s)])}]{mark}")
        rb = med[str(real_best)]
        print(f"   in real CPython: the simulator's best size ({sim_best}) gives "
              f"{100 * med[str(sim_best)] / rb:.1f} % of the real best ({real_best}); the size "
              f"the controller holds in the simulator ({held}) {100 * med[str(held)] / rb:.1f} %")
        if runs["adaptive"]:
            print(f"   AdaptiveExecutor(max_workers=2048): {med['adaptive']:.1f} tasks/s = "
                  f"{100 * med['adaptive'] / rb:.1f} % of the real best "
                  f"[{'/'.join(f'{x:.0f}' for x in runs['adaptive'])}], held "
                  f"{last_adaptive.get('workers')} workers in its last run")
        report.append({"workload": wl, "sizes": sizes, "sim": simc, "real_runs": runs,
                       "real_median": med, "sim_best": sim_best, "real_best": real_best,
                       "controller_in_sim": held, "adaptive_last": last_adaptive})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"python": sys.version, "cpus": allowed, "reps": args.reps,
                       "warmup": args.warmup, "measure": args.measure,
                       "sha256_bytes_per_ms": args.hash_per_ms, "workloads": report}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
