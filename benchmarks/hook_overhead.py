"""Cost of the ledger's hooks: the same GIL-heavy programs with the hook on and off.

Each configuration runs in a fresh interpreter (GIL_ADAPT_HOOK=0 for "off"), pinned to
one core, alternating on/off `--reps` times; the ratio of medians of wall time and of
the process's CPU time (less sensitive to other load on the machine) is printed.

  handoff : 4 threads handing the GIL back and forth (each loop iteration releases it
            with time.sleep(0) while the others want it) — the GIL-heavy loop.
  many    : 512 threads of the mixed task (0.2 ms CPU + 2 ms sleep) on one core — the
            case where a slow hook made a prototype collapse.

  python benchmarks/hook_overhead.py [--reps 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import os, sys, threading, time
    os.sched_setaffinity(0, {int(sys.argv[2])})
    import gil_adapt
    gil_adapt.install()
    exact = gil_adapt.capabilities()["gil_wait"] == "exact"
    kind = sys.argv[1]
    def spin(n):
        x = 0
        for i in range(n): x += i
    if kind == "handoff":
        N, ITER = 4, 20000
        def body():
            for _ in range(ITER):
                spin(20); time.sleep(0)
    else:
        N, ITER = 512, 10
        def body():
            for _ in range(ITER):
                spin(4000); time.sleep(0.002)
    ts = [threading.Thread(target=body) for _ in range(N)]
    t0, c0 = time.perf_counter(), time.process_time()
    for t in ts: t.start()
    for t in ts: t.join()
    print(time.perf_counter() - t0, time.process_time() - c0, int(exact))
""")


def run(kind: str, hook: bool, core: int) -> "tuple[float, float]":
    env = dict(os.environ)
    env["GIL_ADAPT_HOOK"] = "1" if hook else "0"
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(core)], env=env,
                         capture_output=True, text=True, check=True)
    secs, cpu, exact = out.stdout.split()
    if hook and exact != "1":
        raise SystemExit("the hook did not install: nothing to compare")
    return float(secs), float(cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--kinds", default="handoff,many")
    args = ap.parse_args()
    core = max(os.sched_getaffinity(0))
    print(f"Python {sys.version.split()[0]}, pinned to core {core}, {args.reps} alternating runs each")
    for kind in args.kinds.split(","):
        on, off = [], []
        for _ in range(args.reps):
            off.append(run(kind, False, core))
            on.append(run(kind, True, core))
        for i, what in ((0, "wall"), (1, "cpu ")):
            a = [x[i] for x in on]
            b = [x[i] for x in off]
            m_on, m_off = statistics.median(a), statistics.median(b)
            print(f"{kind:8s} {what} hook off {m_off:.3f} s  on {m_on:.3f} s  on/off = {m_on / m_off:.3f}"
                  f"  (spread off {min(b):.3f}-{max(b):.3f}, on {min(a):.3f}-{max(a):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
