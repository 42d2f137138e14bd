"""From repetitions to figures: medians with spread, the oracle, best-any, scores, the cliff,
convergence. Pure functions of the runs' records (no I/O, no timing), so they are tested
directly.

Conventions:

* a repetition that failed (OOM-killed, crashed, timed out, tasks failing) counts as
  0 tasks/s: the benchmark scores a strategy that fails under a cap 0 for that cell;
* a cell's status is ``ok`` (every repetition ran), ``failed`` (none did) or ``partial``;
  ``skipped`` cells never ran and carry the reason;
* the **oracle** is the ``threads-N`` sweep point with the highest median throughput;
* **best-any** is the best fixed strategy of any kind in the cell (the sweep, ``tpe-N``,
  ``threads-default``, ``naive-512``, ``processes``, ``asyncio-K``): what one could pick by
  hand. The adaptive strategies (``betapool``, ``gil-adapt``) are scored against it, not
  part of it;
* a cell with ``flags`` (see :func:`soundness`: CPU above its cores, a window of too few
  waves) is reported but is neither the oracle nor best-any.
"""
from __future__ import annotations

import statistics
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .strategies import parse_strategy

CLIFF_FROM = 512
CONVERGED_SHARE = 0.95
CPU_TOLERANCE = 0.02      # CPU accounting granularity over a window (share of its cores)
BURST_PERIODS = 3         # a window spans at least this many waves of completions


def _median(values: Sequence[float]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def summarise_cell(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Median and spread of a cell's repetitions (each a run record with ``status``)."""
    if not runs:
        return {"status": "skipped", "reason": "no repetitions", "reps": 0}
    if all(r.get("status") == "skipped" for r in runs):
        return {"status": "skipped", "reason": runs[0].get("reason"), "reps": 0}
    ran = [r for r in runs if r.get("status") != "skipped"]
    ok = [r for r in ran if r.get("status") == "ok"]
    bad = [r for r in ran if r.get("status") != "ok"]
    thr = [float(r.get("throughput") or 0.0) if r.get("status") == "ok" else 0.0
           for r in ran]
    med = statistics.median(thr)
    out: Dict[str, Any] = {
        "status": "ok" if not bad else ("failed" if not ok else "partial"),
        "reps": len(ran),
        "reps_ok": len(ok),
        "throughput": med,
        "throughput_min": min(thr),
        "throughput_max": max(thr),
        "throughput_reps": thr,
        "spread": (max(thr) - min(thr)) / med if med > 0 else None,
    }
    if bad:
        kinds = sorted({r.get("status") for r in bad})
        out["failure"] = "oom" if "oom" in kinds else kinds[0]
        out["reason"] = f"{len(bad)}/{len(ran)} repetitions failed: " + \
            "; ".join(sorted({str(r.get("reason")) for r in bad}))
    for key in ("latency_p50_s", "latency_p99_s", "workers_final", "beta_final",
                "live_threads_at_start", "cgroup_peak_mib", "cpu_utilisation",
                "cpu_ms_per_task_window"):
        out[key] = _median([r.get(key) for r in ok])
    utils = [r["cpu_utilisation"] for r in ok if r.get("cpu_utilisation") is not None]
    out["cpu_utilisation_max"] = max(utils) if utils else None
    sources = sorted({str(r["cpu_source"]) for r in ok if r.get("cpu_source")})
    out["cpu_source"] = ",".join(sources) if sources else None
    peaks = [r.get("peak_rss_tree_mib") for r in ran if r.get("peak_rss_tree_mib")]
    out["peak_rss_tree_mib"] = max(peaks) if peaks else None
    backends = sorted({str(r.get("backend")) for r in ok if r.get("backend")})
    out["backend"] = ",".join(backends) if backends else None
    starved = [r for r in ok if r.get("completed") == 0]
    if starved:
        out["note"] = (f"{len(starved)}/{len(ok)} repetitions completed no task in the "
                       f"measured window (start-up longer than the warm-up)")
    return out


def soundness(cell: Dict[str, Any], strategy: str, cores: int, measure_s: float,
              cpu_ms_alone: Optional[float]) -> List[str]:
    """Why a cell's throughput cannot be taken at face value (empty: it can).

    * the CPU its process tree used in a measured window exceeds what its cores allow
      (beyond accounting granularity): the measurement itself is wrong;
    * its window is shorter than ``BURST_PERIODS`` burst periods: a strategy running
      ``size`` tasks at once completes them in waves about ``size x CPU per task / cores``
      apart, and a window of a few waves over- or under-counts by up to a wave. The CPU
      per task is the task's alone (``cpu_ms_alone``) where known: a window that caught a
      wave reads less CPU per completed task than the task takes.

    The task's CPU alone is not a bound on throughput: a CPU's speed under sustained load
    and the work a task shares with others under load (a wake-up serving several) make a
    task take markedly less CPU in a busy cell than alone; the CPU actually used is the
    check.
    """
    if cell.get("status") == "skipped":
        return []
    reasons = []
    util = cell.get("cpu_utilisation_max")
    if util is not None and util > 1.0 + CPU_TOLERANCE:
        reasons.append(f"measured CPU {util:.0%} of its cores: above what they allow")
    try:
        size = parse_strategy(strategy).size
    except ValueError:
        size = None
    size = size or cell.get("workers_final")
    cpu_ms = cpu_ms_alone or cell.get("cpu_ms_per_task_window")
    if size and cpu_ms and cores > 0 and measure_s > 0:
        wave = float(size) * cpu_ms / 1e3 / cores
        if measure_s < BURST_PERIODS * wave:
            reasons.append(f"window {measure_s:g} s < {BURST_PERIODS} waves of {wave:.2f} s "
                           f"({size:g} tasks at once x {cpu_ms:.2f} ms CPU / {cores} cores)")
    return reasons


def is_sweep(name: str) -> bool:
    try:
        return parse_strategy(name).kind == "threads"
    except ValueError:
        return False


def is_fixed(name: str) -> bool:
    """A strategy one picks by hand (not adaptive): candidates for best-any."""
    try:
        return not parse_strategy(name).adaptive
    except ValueError:
        return False


def pick_oracle(cells: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The best ``threads-N`` (highest median; ties to the smaller N), or None."""
    best: Optional[Tuple[float, int, str]] = None
    for name, cell in cells.items():
        if not is_sweep(name) or cell.get("status") == "skipped" or cell.get("flags"):
            continue
        thr = cell.get("throughput") or 0.0
        if thr <= 0:
            continue
        n = parse_strategy(name).size or 0
        key = (thr, -n, name)
        if best is None or key > best:
            best = key
    if best is None:
        return None
    return {"strategy": best[2], "n": -best[1], "throughput": best[0]}


def pick_best_any(cells: Dict[str, Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The best fixed strategy of any kind (sweep, tpe, default, processes, asyncio)."""
    best: Optional[Tuple[float, str]] = None
    for name, cell in cells.items():
        if not is_fixed(name) or cell.get("status") == "skipped" or cell.get("flags"):
            continue
        thr = cell.get("throughput") or 0.0
        if thr > 0 and (best is None or (thr, name) > best):
            best = (thr, name)
    if best is None:
        return None
    return {"strategy": best[1], "throughput": best[0]}


def share(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    """value / reference, None when either is unknown or the reference is 0."""
    if value is None or not reference:
        return None
    return value / reference


def cliff(cells: Dict[str, Dict[str, Any]], oracle: Optional[Dict[str, Any]],
          from_n: int = CLIFF_FROM) -> Dict[str, Optional[float]]:
    """Loss against the oracle of each ``threads-N`` with N >= ``from_n`` (0.22 = -22 %)."""
    out: Dict[str, Optional[float]] = {}
    if oracle is None:
        return out
    for name, cell in cells.items():
        if is_sweep(name) and (parse_strategy(name).size or 0) >= from_n \
                and cell.get("status") != "skipped":
            s = share(cell.get("throughput"), oracle["throughput"])
            out[name] = None if s is None else 1.0 - s
    return dict(sorted(out.items(), key=lambda kv: parse_strategy(kv[0]).size or 0))


def score_cells(cells: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Adds ``pct_oracle`` and ``pct_best_any`` to every cell; returns the cell's summary."""
    oracle = pick_oracle(cells)
    best = pick_best_any(cells)
    for cell in cells.values():
        if cell.get("status") == "skipped":
            cell["pct_oracle"] = cell["pct_best_any"] = None
            continue
        thr = cell.get("throughput")
        cell["pct_oracle"] = share(thr, oracle["throughput"] if oracle else None)
        cell["pct_best_any"] = share(thr, best["throughput"] if best else None)
    return {"oracle": oracle, "best_any": best, "cliff": cliff(cells, oracle)}


def efficiency(cells: Iterable[Dict[str, Any]],
               strategies: Sequence[str]) -> List[Dict[str, Any]]:
    """Per strategy, over the cells it ran in (a failed cell counts, as 0 tasks/s): the
    mean share of the oracle and of best-any, and its worst cell against best-any.
    Cells without a score (no oracle) are left out, and counted."""
    by: Dict[str, List[Dict[str, Any]]] = {name: [] for name in strategies}
    for cell in cells:
        if cell.get("strategy") in by and cell.get("status") != "skipped":
            by[cell["strategy"]].append(cell)
    out = []
    for name in strategies:
        scored = [c for c in by[name] if c.get("pct_best_any") is not None]
        if not scored:
            continue
        worst = min(scored, key=lambda c: c["pct_best_any"])
        oracle = [c["pct_oracle"] for c in scored if c.get("pct_oracle") is not None]
        out.append({
            "strategy": name, "cells": len(scored), "unscored": len(by[name]) - len(scored),
            "mean_pct_oracle": sum(oracle) / len(oracle) if oracle else None,
            "mean_pct_best_any": sum(c["pct_best_any"] for c in scored) / len(scored),
            "worst_pct_best_any": worst["pct_best_any"],
            "worst_cell": f"{worst.get('config')}/{worst.get('workload')}",
        })
    return out


def convergence_s(buckets: Sequence[float], bucket_s: float, reference: float,
                  start: int = 0, stop: Optional[int] = None,
                  share_needed: float = CONVERGED_SHARE) -> Optional[float]:
    """Seconds from bucket ``start`` until the throughput stays within 5 % of ``reference``.

    Stays = from that bucket on (to ``stop``), the running mean of the throughput never
    drops below ``share_needed`` x reference. None: not reached within the run.
    """
    seg = list(buckets[start:stop])
    if not seg or reference <= 0:
        return None
    need = share_needed * reference
    for i in range(len(seg)):
        total = 0.0
        good = True
        for j in range(i, len(seg)):
            total += seg[j]
            if total / (j - i + 1) < need:
                good = False
                break
        if good:
            return i * bucket_s
    return None


def median_or_none(values: Iterable[Optional[float]]) -> Optional[float]:
    return _median(list(values))  # type: ignore[arg-type]


def cell_runs(runs: Iterable[Dict[str, Any]], config: str, workload: str,
              strategy: str) -> List[Dict[str, Any]]:
    return [r for r in runs if r.get("config") == config and r.get("workload") == workload
            and r.get("strategy") == strategy]
