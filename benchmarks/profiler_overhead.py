"""Cost of ``gil-adapt run``: a GIL-heavy program run plainly and under the profiler.

The program (written to a temporary file) runs 4 threads of pure-Python CPU work that
hand the GIL to each other all the time. The whole process — the profiler's sampler
thread included — is pinned to ``--cores`` cores (default 1, the worst case: the sampler
competes with the program for the same core). Do not pin only the program's threads: a
thread on another core that wakes 100 times a second (the sampler, or any thread) makes
4 GIL-bound threads pinned to one core run up to 40 % *faster* on this CPython (it forces
GIL hand-offs the pinned waiters are slow to request), which hides the cost.

Three variants alternate ``--reps`` times: plain ``python``, the ledger's hooks only
(``gil_adapt.install()`` then the program), and ``gil-adapt run --no-live``. For each, the
work's wall time and the process's CPU time during the work (every thread's, the
sampler's included; less sensitive to other load on a shared machine), both measured
inside the program so that interpreter start-up, calibration and the report are not
counted, and the process's wall time; ratios of medians are printed (target for
profiled / plain: at most 1.03).

  python benchmarks/profiler_overhead.py [--reps 5] [--work 10000000] [--cores 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Dict, List, Tuple

PROGRAM = textwrap.dedent("""
    import sys, threading, time
    N = int(sys.argv[1])
    def spin(n):
        x = 0
        for i in range(n):
            x += i
        return x
    def body():
        for _ in range(N // 1000):
            spin(1000)
    ts = [threading.Thread(target=body) for _ in range(4)]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in ts: t.start()
    for t in ts: t.join()
    print(f"{time.perf_counter() - t0:.6f} {time.process_time() - c0:.6f}")
""")


def run(cmd: List[str], cores: set) -> Tuple[float, float, float]:
    """(work wall s, process wall s, work cpu s: every thread's, the sampler's included)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: os.sched_setaffinity(0, cores))
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, _usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} exited with {proc.returncode}")
    work_s, work_cpu_s = (float(x) for x in out.decode().split()[-2:])
    return work_s, wall, work_cpu_s


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--work", type=int, default=10_000_000, help="loop iterations per thread")
    p.add_argument("--cores", type=int, default=1)
    p.add_argument("--sample-hz", default="10")
    args = p.parse_args()
    cores = set(sorted(os.sched_getaffinity(0))[-args.cores:])
    with tempfile.TemporaryDirectory() as tmp:
        prog = os.path.join(tmp, "gil_heavy.py")
        with open(prog, "w") as fh:
            fh.write(PROGRAM)
        plain = [sys.executable, prog, str(args.work)]
        hooks = [sys.executable, "-c",
                 "import runpy, sys, gil_adapt; gil_adapt.install(); sys.argv = sys.argv[1:]; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')", prog, str(args.work)]
        profiled = [sys.executable, "-m", "gil_adapt", "run", "--no-live",
                    "--sample-hz", args.sample_hz, prog, str(args.work)]
        variants = [("plain", plain), ("hooks", hooks), ("profiled", profiled)]
        res: Dict[str, List[Tuple[float, float, float]]] = {name: [] for name, _ in variants}
        for i in range(args.reps):
            for name, cmd in variants if i % 2 == 0 else variants[::-1]:
                res[name].append(run(cmd, cores))
        print(f"4 GIL-bound threads x {args.work} iterations, pinned to {len(cores)} core(s), "
              f"{args.reps} reps")
        print(f"{'':10} {'work s':>8} {'proc wall s':>12} {'work cpu s':>11}   work s per run")
        med: Dict[str, Tuple[float, float]] = {}
        for name, rows in res.items():
            med[name] = (statistics.median(r[0] for r in rows),
                         statistics.median(r[2] for r in rows))
            print(f"{name:10} {med[name][0]:8.3f} {statistics.median(r[1] for r in rows):12.3f} "
                  f"{med[name][1]:11.3f}   " + " ".join(f"{r[0]:.3f}" for r in rows))
        for a, b, what in (("hooks", "plain", "hooks only / plain (see hook_overhead.py)"),
                           ("profiled", "hooks", "profiled / hooks only (the sampler)"),
                           ("profiled", "plain", "overhead ratio profiled / plain")):
            print(f"{what:45}: work {med[a][0] / med[b][0]:.3f}, "
                  f"cpu {med[a][1] / med[b][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
