"""How exact the ledger is, against known truths, on one core.

  cpu4   : 4 threads of pure-Python CPU work  -> each should wait for the GIL ~75 % of wall
  sleep4 : 4 threads sleeping in a loop       -> gil_wait ~0, io_wait ~100 %
  mixed  : N threads of 10 ms CPU + 50 ms sleep, N in --threads -> io_wait vs the true
           (requested) sleep time, beta, beta_legacy

  python benchmarks/ledger_accuracy.py [--threads 2,64,256,512]
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import gil_adapt
from gil_adapt import _ledger
from gil_adapt.demo import calibrate_spin


def run(n: int, body) -> tuple:
    bar = threading.Barrier(n + 1)

    def wrapped() -> None:
        bar.wait()
        body()

    ts = [threading.Thread(target=wrapped) for _ in range(n)]
    for t in ts:
        t.start()
    with gil_adapt.measure() as m:
        bar.wait()
        for t in ts:
            t.join()
    ids = {t.native_id for t in ts}
    tot = {k: sum(m.result["threads"][i][k] for i in ids) for k in ("wall_ns",) + _ledger.STATES}
    _ledger._derive(tot)
    return m.result, ids, tot


def shares(d: dict) -> str:
    w = d["wall_ns"]
    return " ".join(f"{k[:-3]}={d[k] / w:.3f}" for k in _ledger.STATES)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="2,64,256,512")
    ap.add_argument("--rounds", type=int, default=4, help="mixed tasks per thread")
    args = ap.parse_args()
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    gil_adapt.install()
    caps = gil_adapt.capabilities()
    print(f"Python {caps['python']}, gil_wait {caps['gil_wait']}, runq {caps['runq_wait']}, one core")
    work = calibrate_spin()
    r, ids, _ = run(4, lambda: work(250))
    for i in sorted(ids):
        d = r["threads"][i]
        print(f"cpu4   gil/wall={d['gil_wait_ns'] / d['wall_ns']:.3f} "
              f"gil/(wall-runq)={d['gil_wait_ns'] / (d['wall_ns'] - d['runq_wait_ns']):.3f}  {shares(d)}")

    def sleeper() -> None:
        for _ in range(20):
            time.sleep(0.02)

    r, ids, tot = run(4, sleeper)
    print(f"sleep4 {shares(tot)}")
    for n in (int(x) for x in args.threads.split(",")):
        def mixed() -> None:
            for _ in range(args.rounds):
                work(10)
                time.sleep(0.05)
        r, ids, tot = run(n, mixed)
        true = n * args.rounds * 0.05e9
        print(f"mixed N={n:<4d} io/true_sleep={tot['io_wait_ns'] / true:.3f} beta={tot['beta']:.3f} "
              f"beta_legacy={tot['beta_legacy']:.3f} contention={tot['contention']:.3f}  {shares(tot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
