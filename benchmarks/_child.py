"""Helpers the benchmark scripts share: a child process whose last line of output is a JSON
object, and a calibration of work per millisecond of CPU."""
from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Callable, Dict, List


def run_json(cmd: List[str], timeout: float) -> Dict:
    """Runs cmd; returns the JSON object on its last stdout line, or {"error": why}."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def per_ms_pinned(work: Callable[[], object], units: float, repeats: int = 5) -> float:
    """Units of `work` (one call does `units`) per millisecond of thread CPU: the best of
    `repeats` calls, pinned to one CPU (restored after)."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        best = 0.0
        for _ in range(repeats):
            t0 = time.thread_time()
            work()
            dt = time.thread_time() - t0
            if dt > 0:
                best = max(best, units / (dt * 1000.0))
        return best
    finally:
        os.sched_setaffinity(0, before)
