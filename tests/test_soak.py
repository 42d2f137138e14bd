"""The fault soak (benchmarks/soak.py --quick): ~20,000 tasks through every mode with raising,
cancelled, worker-killing and forking tasks and shutdowns during backend moves; none may be
lost or run twice, and memory stays flat."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

SOAK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "benchmarks", "soak.py")


@pytest.mark.slow
def test_soak_quick_loses_and_duplicates_nothing() -> None:
    try:
        out = subprocess.run([sys.executable, SOAK, "--quick"], capture_output=True,
                             text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"soak --quick did not finish in 240 s; output so far:\n{exc.stdout}")
    report = f"stdout:\n{out.stdout}\nstderr (last 4000 characters):\n{out.stderr[-4000:]}"
    lines = out.stdout.strip().splitlines()
    assert lines, report
    final = re.fullmatch(r"soak: (\d+) tasks, (\d+) lost, (\d+) duplicated", lines[-1])
    assert final, report
    tasks, lost, duplicated = map(int, final.groups())
    assert (lost, duplicated) == (0, 0), report
    assert tasks >= 19_000, report
    assert out.returncode == 0, report
