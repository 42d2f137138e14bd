"""Resident memory: AdaptiveExecutor against ThreadPoolExecutor with the same number of workers.

For each size, two fresh processes (one per executor) import gil_adapt, start exactly N
live workers (N blocking tasks, then released), run a short mixed workload on them
(CPU + sleep, so every worker has run a task and touched its stack), and report the
process's resident memory (VmRSS, and its peak VmHWM) against the same process before
the executor existed. "chosen" first runs the mixed workload on AdaptiveExecutor
(max_workers=2048) and takes the size its controller settled on.

Worker stacks: AdaptiveExecutor reserves gil_adapt.executor.worker_stack_size() per
worker (2 MiB at the default recursion limit), ThreadPoolExecutor the process default
(8 MiB here); only touched pages are resident, which is what this measures.

  python benchmarks/memory.py [--sizes chosen,16,128,512] [--seconds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from typing import Dict

CHILD = textwrap.dedent("""
    import json, os, sys, threading, time
    import concurrent.futures as cf
    import gil_adapt
    from gil_adapt import AdaptiveExecutor
    from gil_adapt.executor import worker_stack_size

    def status():
        out = {}
        with open("/proc/self/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "VmSize", "Threads"):
                    out[k] = int(v.split()[0])
        return out

    def spin(ms):
        end = time.thread_time() + ms / 1000.0
        x = 0
        while time.thread_time() < end:
            x += 1
        return x

    def task(i):
        spin(0.2)
        time.sleep(0.005)
        return i

    kind, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    gil_adapt.install()
    base = status()
    if kind == "adaptive":
        os.environ["GIL_ADAPT_CONTROLLER"] = "0"  # exactly n workers
        ex = AdaptiveExecutor(n)
        stack = worker_stack_size()
    else:
        ex = cf.ThreadPoolExecutor(n)
        stack = threading.stack_size() or 8 << 20
    gate = threading.Event()
    starters = [ex.submit(gate.wait, 60) for _ in range(n)]
    while True:  # all n workers live
        live = status()["Threads"] - base["Threads"]
        if live >= n:
            break
        time.sleep(0.01)
    gate.set()
    for f in starters:
        f.result()
    end = time.monotonic() + seconds
    done = 0
    while time.monotonic() < end:
        done += len(list(ex.map(task, range(4 * n))))
    time.sleep(0.2)
    after = status()
    ex.shutdown(wait=True)
    print(json.dumps({"base": base, "after": after, "tasks": done, "stack": stack}))
""")

CHOOSE = textwrap.dedent("""
    import sys, time
    from gil_adapt import AdaptiveExecutor
    def spin(ms):
        end = time.thread_time() + ms / 1000.0
        while time.thread_time() < end:
            pass
    def task(i):
        spin(10)
        time.sleep(0.05)
    seconds = float(sys.argv[1])
    with AdaptiveExecutor(2048) as ex:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            list(ex.map(task, range(200)))
        print(ex.stats()["workers"])
""")


def child(kind: str, n: int, seconds: float) -> Dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(n), str(seconds)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="chosen,16,128,512")
    ap.add_argument("--seconds", type=float, default=2.0, help="mixed work per measurement")
    args = ap.parse_args()
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; RSS in MiB "
          f"(delta = process RSS after the run - before the executor)")
    print(f"{'workers':>8} {'executor':<22} {'stack KiB':>9} {'RSS':>8} {'delta':>8} "
          f"{'peak':>8} {'KiB/worker':>10}  {'vs TPE':>7}")
    verdicts = []
    for size in args.sizes.split(","):
        if size == "chosen":
            out = subprocess.run([sys.executable, "-c", CHOOSE, str(max(3.0, args.seconds))],
                                 capture_output=True, text=True, timeout=600)
            n = int(out.stdout.strip().splitlines()[-1])
            label = f"{n} (chosen)"
        else:
            n = int(size)
            label = str(n)
        rows = {}
        for kind in ("adaptive", "threadpool"):
            rows[kind] = child(kind, n, args.seconds)
        tpe_delta = rows["threadpool"]["after"]["VmRSS"] - rows["threadpool"]["base"]["VmRSS"]
        for kind, name in (("adaptive", "AdaptiveExecutor"), ("threadpool", "ThreadPoolExecutor")):
            r = rows[kind]
            rss = r["after"]["VmRSS"]
            delta = rss - r["base"]["VmRSS"]
            rel = (rss / rows["threadpool"]["after"]["VmRSS"] - 1) * 100
            print(f"{label:>8} {name:<22} {r['stack'] // 1024:>9} {rss / 1024:8.1f} "
                  f"{delta / 1024:8.1f} {r['after']['VmHWM'] / 1024:8.1f} {delta / n:10.1f}  "
                  f"{rel:+6.1f}%")
        ada = rows["adaptive"]["after"]["VmRSS"]
        tpe = rows["threadpool"]["after"]["VmRSS"]
        verdicts.append((label, ada <= 1.10 * tpe, ada / tpe, tpe_delta))
    for label, ok, ratio, _ in verdicts:
        print(f"acceptance at {label} workers (RSS within +10 % of ThreadPoolExecutor): "
              f"{'PASS' if ok else 'FAIL'} ({(ratio - 1) * 100:+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
