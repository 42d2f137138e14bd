"""One benchmark child process: its last line of output is a JSON object."""
from __future__ import annotations

import json
import subprocess
from typing import Dict, List


def run_json(cmd: List[str], timeout: float) -> Dict:
    """Runs cmd; returns the JSON object on its last stdout line, or {"error": why}."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])
