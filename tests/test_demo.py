"""``gil-adapt demo``'s figures are possible: the CPU its threads used fits the cores."""
from __future__ import annotations

import os

from gil_adapt import demo


def test_demo_reports_cpu_that_fits_the_cores() -> None:
    r = demo.run_mixed(3, 2, cpu_ms=2.0, io_s=0.01)
    cores = len(os.sched_getaffinity(0))
    assert r["cpu_ms_per_task"] > 0.5, r  # the threads' own CPU, measured by the ledger
    assert 0 < r["cores_used"] <= cores * 1.02, r
    assert abs(r["tasks_per_s"] * r["cpu_ms_per_task"] / 1e3 - r["cores_used"]) < 1e-6, r
    shares = sum(r[k] for k in r if k.endswith("_share"))
    assert abs(shares - 1.0) < 0.02, r  # the states partition each thread's wall time
