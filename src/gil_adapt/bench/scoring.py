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
  waves) is reported but is neither the oracle nor best-any;
* the highest of several noisy medians runs high (the size picked is the one whose
  repetitions happened to run fast), so beside them each cell has **fresh** references
  (:func:`fresh_reference`): the strategy best in the first repetition, measured by the
  median of its later repetitions, which played no part in picking it.
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
    if all(r.get("rep") is not None for r in ran):
        out["throughput_by_rep"] = {int(r["rep"]): t for r, t in zip(ran, thr)}
    if bad:
        kinds = sorted({r.get("status") for r in bad})
        out["failure"] = "oom" if "oom" in kinds else kinds[0]
        out["reason"] = f"{len(bad)}/{len(ran)} repetitions failed: " + \
            "; ".join(sorted({str(r.get("reason")) for r in bad}))
    for key in ("latency_p50_s", "latency_p99_s", "workers_final", "beta_final",
                "live_threads_at_start", "cgroup_peak_mib", "cpu_utilisation",
                "cpu_ms_per_task_window", "faults_per_task_window"):
        out[key] = _median([r.get(key) for r in ok])
    utils = [r["cpu_utilisation"] for r in ok if r.get("cpu_utilisation") is not None]
    out["cpu_utilisation_max"] = max(utils) if utils else None
    floors = [r["cpu_utilisation_floor"] for r in ok
              if r.get("cpu_utilisation_floor") is not None]
    out["cpu_utilisation_floor_max"] = max(floors) if floors else None
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
      (beyond accounting granularity): the measurement itself is wrong. Judged on the
      CPU it certainly used (``cpu_utilisation_floor``: marks bracketed in time, see
      child._cpu_floor) where the runs recorded it, so that a sampler's late timestamp
      cannot flag a sound cell;
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
    # the CPU the tree certainly used (marks bracketed in time) where recorded; runs
    # recorded before brackets existed give only the interpolated figure
    floor = cell.get("cpu_utilisation_floor_max")
    util = floor if floor is not None or cell.get("cpu_utilisation_max") is None \
        else cell["cpu_utilisation_max"]
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


def fresh_reference(cells: Dict[str, Dict[str, Any]], sweep_only: bool
                    ) -> Optional[Dict[str, Any]]:
    """The reference free of the pick's bias: among the unflagged ``threads-N`` cells
    (``sweep_only``) or fixed cells, the one with the highest first repetition (rep 0),
    and as its figure the median of its later repetitions (each failed one 0). None where
    no candidate has a first repetition and a later one."""
    best: Optional[Tuple[float, str]] = None
    for name, cell in cells.items():
        if not (is_sweep(name) if sweep_only else is_fixed(name)):
            continue
        by_rep = cell.get("throughput_by_rep") or {}
        if cell.get("status") == "skipped" or cell.get("flags") or 0 not in by_rep:
            continue
        if best is None or (by_rep[0], name) > best:
            best = (by_rep[0], name)
    if best is None:
        return None
    later = [t for rep, t in cells[best[1]]["throughput_by_rep"].items() if rep != 0]
    if not later:
        return None
    return {"strategy": best[1], "throughput": statistics.median(later),
            "first": best[0], "reps": len(later)}


def score_cells(cells: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Adds ``pct_oracle`` and ``pct_best_any`` to every cell, and to the adaptive ones
    ``pct_oracle_fresh`` and ``pct_best_any_fresh`` (against :func:`fresh_reference`,
    None where there is none); returns the cell's summary."""
    oracle = pick_oracle(cells)
    best = pick_best_any(cells)
    oracle_fresh = fresh_reference(cells, sweep_only=True)
    best_fresh = fresh_reference(cells, sweep_only=False)
    for name, cell in cells.items():
        if cell.get("status") == "skipped":
            cell["pct_oracle"] = cell["pct_best_any"] = None
            continue
        thr = cell.get("throughput")
        cell["pct_oracle"] = share(thr, oracle["throughput"] if oracle else None)
        cell["pct_best_any"] = share(thr, best["throughput"] if best else None)
        if not is_fixed(name):
            cell["pct_oracle_fresh"] = share(
                thr, oracle_fresh["throughput"] if oracle_fresh else None)
            cell["pct_best_any_fresh"] = share(
                thr, best_fresh["throughput"] if best_fresh else None)
    return {"oracle": oracle, "best_any": best, "oracle_fresh": oracle_fresh,
            "best_any_fresh": best_fresh, "cliff": cliff(cells, oracle)}


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


#: The bar the adaptive executor is held to: ``gil-adapt`` against the oracle,
#: ``gil-adapt-auto`` against best-any, in every cell.
MISS_BAR = 0.98
_AGAINST = {"gil-adapt": "pct_oracle", "gil-adapt-auto": "pct_best_any"}


def misses(results: Dict[str, Any], bar: float = MISS_BAR) -> List[Dict[str, Any]]:
    """The cells where ``gil-adapt`` is below ``bar`` of the oracle or ``gil-adapt-auto``
    below ``bar`` of best-any, each with what its runs say about why.

    From the repetitions' measured windows (the executor's state sampled every interval):
    the workers it held (median), its target, its decisions in the window, the
    throughput of the window's first and second halves, and its best repetition. The
    ``why`` list reads, in order: a failure; a best repetition at or above the bar (the
    miss lies within the repetitions' spread); fewer or more workers than the oracle's
    size (beyond a ×√2 step; not for work that ran on the event loops, which holds no
    pool of threads); a window still ramping (first half < 90 % of the second);
    the executor's last decision in the window (where sampled); for ``gil-adapt-auto``,
    best-any of another kind than where auto ran its work.
    """
    measure_s = float(results.get("protocol", {}).get("measure_s") or 0.0)
    summary = {(s["config"], s["workload"]): s for s in results.get("summary", [])}
    by_name = {(c.get("config"), c.get("workload"), c.get("strategy")): c
               for c in results.get("cells", [])}
    out = []
    for cell in results.get("cells", []):
        name = cell.get("strategy")
        key = _AGAINST.get(name or "")
        if key is None or cell.get("status") == "skipped" or cell.get(key) is None:
            continue
        score = cell[key]
        if score >= bar:
            continue
        s = summary.get((cell.get("config"), cell.get("workload")), {})
        ref = s.get("oracle") if key == "pct_oracle" else s.get("best_any")
        runs = [r for r in cell_runs(results.get("runs", []), cell.get("config", ""),
                                     cell.get("workload", ""), name or "")
                if r.get("status") == "ok"]
        held, target, first, second, grew, shrank = [], [], [], [], [], []
        last_reason = None
        for r in runs:
            lo = float(r.get("window_start_s") or 0.0)
            hi = lo + measure_s
            inside = [x for x in r.get("series") or () if lo <= float(x.get("t", -1)) < hi]
            held += [x["workers"] for x in inside if x.get("workers") is not None]
            target += [x["target_workers"] for x in inside
                       if x.get("target_workers") is not None]
            last_reason = next((x["last_reason"] for x in reversed(inside)
                                if x.get("last_reason")), last_reason)
            if len(inside) >= 2:
                d0 = inside[0].get("decisions") or {}
                d1 = inside[-1].get("decisions") or {}
                grew.append((d1.get("grow") or 0) - (d0.get("grow") or 0))
                shrank.append((d1.get("shrink") or 0) - (d0.get("shrink") or 0))
            b, bs = r.get("buckets") or [], float(r.get("bucket_s") or 0.0)
            if bs > 0 and measure_s > 0:
                i0, n = int(round(lo / bs)), int(round(measure_s / bs))
                seg = b[i0:i0 + n]
                if len(seg) >= 2:
                    half = len(seg) // 2
                    first.append(sum(seg[:half]) / half)
                    second.append(sum(seg[half:]) / (len(seg) - half))
        m = {
            "config": cell.get("config"), "workload": cell.get("workload"),
            "strategy": name, "against": "oracle" if key == "pct_oracle" else "best-any",
            "score": score, "reference": ref,
            "best_rep_score": share(cell.get("throughput_max"),
                                    ref.get("throughput") if ref else None),
            "workers_held": _median(held), "target_workers": _median(target),
            "grow_in_window": _median(grew), "shrink_in_window": _median(shrank),
            "first_half": _median(first), "second_half": _median(second),
            "backend": cell.get("backend"), "last_reason": last_reason,
        }
        m["fresh_score"] = cell.get(key + "_fresh")
        m["fresh_reference"] = s.get("oracle_fresh" if key == "pct_oracle" else
                                     "best_any_fresh")
        ref_cell = by_name.get((cell.get("config"), cell.get("workload"),
                                ref.get("strategy") if ref else None)) or {}
        m["why"] = (_miss_reasons(cell, m, bar) + _fresh_reasons(m, bar)
                    + _cost_reasons(cell, ref_cell))
        out.append(m)
    return out


def fresh_tally(cells: Iterable[Dict[str, Any]], strategy: str, bar: float = MISS_BAR
                ) -> Optional[Dict[str, Any]]:
    """Over the cells where ``strategy`` (an adaptive one) has a fresh score (against the
    oracle for ``gil-adapt``, best-any for the others; see :func:`fresh_reference`): how
    many are at or above ``bar``, of how many, and their mean. None where none has."""
    key = _AGAINST.get(strategy, "pct_best_any") + "_fresh"
    scores = [c[key] for c in cells if c.get("strategy") == strategy
              and c.get("status") != "skipped" and c.get(key) is not None]
    if not scores:
        return None
    return {"at_bar": sum(1 for x in scores if x >= bar), "cells": len(scores),
            "mean": sum(scores) / len(scores), "min": min(scores)}


def _fresh_reasons(m: Dict[str, Any], bar: float) -> List[str]:
    """The score against the fresh reference (see :func:`fresh_reference`), where known."""
    ref, score = m.get("fresh_reference"), m.get("fresh_score")
    if not ref or score is None:
        return []
    text = (f"against the {m['against']} picked on the first repetition and measured on "
            f"the later ones ({ref['strategy']}, {ref['throughput']:.1f} tasks/s): "
            f"{score:.0%}")
    if score >= bar:
        text += ": at the bar, the miss is within the pick's bias"
    return [text]


def _cost_reasons(cell: Dict[str, Any], ref: Dict[str, Any]) -> List[str]:
    """Where each task cost more CPU than at the reference (by over 10 %), by how much,
    with the page faults per task of both where recorded: a heap handed back to the
    kernel and faulted in again each task shows there (see README's limits)."""
    a, b = cell.get("cpu_ms_per_task_window"), ref.get("cpu_ms_per_task_window")
    if not (a and b and a > 1.1 * b):
        return []
    text = (f"each task took {a:.2f} ms of CPU against {b:.2f} ms at "
            f"{ref.get('strategy')} (+{a / b - 1:.0%})")
    fa, fb = cell.get("faults_per_task_window"), ref.get("faults_per_task_window")
    if fa is not None and fb is not None:
        text += f", {fa:.0f} against {fb:.0f} page faults per task"
    return [text]


def _miss_reasons(cell: Dict[str, Any], m: Dict[str, Any], bar: float) -> List[str]:
    why = []
    if cell.get("status") != "ok":
        why.append(f"{cell.get('status')}: {cell.get('reason')}")
    best = m["best_rep_score"]
    if best is not None and best >= bar:
        why.append(f"its best repetition reached {best:.0%}: within the repetitions' spread")
    ref = m["reference"] or {}
    n = ref.get("n")
    if n is None and ref.get("strategy") and is_sweep(ref["strategy"]):
        n = parse_strategy(ref["strategy"]).size
    held = m["workers_held"]
    on_loops = "asyncio" in str(m["backend"] or "") and not held
    if n and held is not None and not on_loops:
        if held < n / 1.42:
            why.append(f"held fewer workers than the best fixed size ({held:.0f} vs {n})")
        elif held > n * 1.42:
            why.append(f"held more workers than the best fixed size ({held:.0f} vs {n})")
        else:
            why.append(f"held about the best fixed size ({held:.0f} vs {n}): not the size")
    a, b = m["first_half"], m["second_half"]
    if a is not None and b and a < 0.9 * b:
        why.append(f"still ramping in the window (first half {a:.1f} tasks/s, second "
                   f"{b:.1f})")
    if m["last_reason"]:
        why.append(f"its last decision in the window: {m['last_reason']}")
    if m["against"] == "best-any" and ref.get("strategy") and (
            on_loops or not is_sweep(ref["strategy"])):
        kind = parse_strategy(ref["strategy"]).kind
        why.append(f"best-any is {ref['strategy']} ({kind}); it ran on "
                   f"{m['backend'] or 'threads'}")
    return why
