"""The full run's staged plan (docs/bench.md): a coarse sweep, a refinement around its best
size, and repetitions that leave out what one repetition already showed clearly beaten.

Per configuration:

1. **stage 1**: repetition 1 of every strategy for every workload, the ``threads-N`` sweep
   at the coarse sizes (``strategies.COARSE_SWEEP``, x4 steps, and the largest size);
2. **refinement**: per workload, ``threads-N`` at the x√2 points between the best coarse
   size N*'s coarse neighbours (:func:`refinement_sizes`), each run once;
3. **repetitions 2..R** of every strategy of the cell except the fixed ones whose first
   repetition was ``PRUNE_BELOW`` or more below the best fixed strategy's
   (:func:`prune_decision`); those keep their one repetition's figures.

Pure functions of the first repetitions' records, so they are tested directly.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from . import scoring
from .strategies import parse_strategy

REFINE_STEPS = tuple(range(-2, 3))   # N* x 2^(k/2): the x√2 points from N*/2 to 2 N*
REFINE_MAX = len(REFINE_STEPS) - 1   # sizes a refinement can add (N* itself is run)
PRUNE_BELOW = 0.20                   # a fixed strategy this far below the best is not repeated
#: The share of a cell's fixed strategies (sweep and refinement sizes included) assumed
#: pruned when a full run is estimated before it runs: the recorded full run on a 2-CPU
#: host (docs/results/2026-11-25-epyc-2cpu, 20 cells) gives 62 % under this rule.
TYPICAL_PRUNED_SHARE = 0.6


def refinement_sizes(n_star: int, max_size: int, already: Iterable[int] = ()) -> List[int]:
    """The sizes a refinement adds around the best coarse size ``n_star``:
    ``round(n_star x 2^(k/2))`` for k = -2..2, without sizes already run (``already``,
    ``n_star`` itself) and sizes below 1 or above ``max_size``; ascending."""
    done = set(already) | {n_star}
    out = {int(round(n_star * 2 ** (k / 2))) for k in REFINE_STEPS}
    return sorted(n for n in out if 1 <= n <= max_size and n not in done)


def first_cells(records: Iterable[Dict[str, Any]], cores: int, measure_s: float,
                cpu_ms_alone: Optional[float]) -> Dict[str, Dict[str, Any]]:
    """A cell's first repetitions (run records of one config and workload), summarised per
    strategy and flagged as the scoring does (a flagged figure is not a reference)."""
    by: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        if r.get("kind", "cell") == "cell" and r.get("strategy"):
            by.setdefault(r["strategy"], []).append(r)
    cells: Dict[str, Dict[str, Any]] = {}
    for name, runs in by.items():
        cell = scoring.summarise_cell(runs)
        flags = scoring.soundness(cell, name, cores, measure_s, cpu_ms_alone)
        if flags:
            cell["flags"] = flags
        cells[name] = cell
    return cells


def coarse_best(cells: Dict[str, Dict[str, Any]]) -> Optional[int]:
    """N*: the best ``threads-N`` of the cells (as the oracle is picked), or None."""
    oracle = scoring.pick_oracle(cells)
    return oracle["n"] if oracle else None


def _throughput(cell: Dict[str, Any]) -> float:
    """A first repetition's figure; a failed one (OOM, crash, timeout) counts as 0."""
    if cell.get("status") not in ("ok", "partial"):
        return 0.0
    return float(cell.get("throughput") or 0.0)


def prune_decision(cells: Dict[str, Dict[str, Any]], below: float = PRUNE_BELOW
                   ) -> Tuple[List[str], Dict[str, str]]:
    """Which strategies of a cell run repetitions 2..R, from their first repetitions.

    ``cells``: strategy name -> its first repetition summarised (``status``,
    ``throughput``, optional ``flags``). Returns ``(repeated, pruned)``, ``pruned`` mapping
    each left-out strategy to why. Repeated: the adaptive strategies, always; the best
    ``threads-N`` and the sizes next to it among those run (so the oracle is judged on full
    medians); every fixed strategy less than ``below`` under the best fixed strategy of the
    cell (flagged figures are not the reference). Pruned: a fixed strategy that failed (0)
    or is ``below`` or more under the best.
    """
    best = scoring.pick_best_any(cells)
    reference = best["throughput"] if best else None
    sizes = sorted((parse_strategy(n).size or 0, n) for n, c in cells.items()
                   if scoring.is_sweep(n) and c.get("status") != "skipped")
    oracle = scoring.pick_oracle(cells)
    protected: Dict[str, str] = {}
    if oracle:
        names = [n for _, n in sizes]
        i = names.index(oracle["strategy"])
        protected[names[i]] = "the best size"
        for j in (i - 1, i + 1):
            if 0 <= j < len(names):
                protected[names[j]] = "next to the best size"
    repeated: List[str] = []
    pruned: Dict[str, str] = {}
    for name, cell in cells.items():
        if cell.get("status") == "skipped":
            continue
        if not scoring.is_fixed(name):
            repeated.append(name)            # adaptive: always judged on full medians
            continue
        thr = _throughput(cell)
        if cell.get("status") not in ("ok", "partial") or thr <= 0:
            pruned[name] = f"first repetition {cell.get('failure') or cell.get('status')}"
            continue
        if name in protected:
            repeated.append(name)
            continue
        if reference and thr <= (1.0 - below) * reference + 1e-12:
            pruned[name] = (f"first repetition {thr:.1f} tasks/s, "
                            f"{(1.0 - thr / reference) * 100:.0f}% below the best fixed "
                            f"({best['strategy']}, {reference:.1f})")
            continue
        repeated.append(name)
    return repeated, pruned


def estimate(configs: int, workloads: int, fixed: int, adaptive: int, reps: int,
             cell_s: float, extras_s: float, probes_s: float, refine: bool = True,
             pruned_share: float = TYPICAL_PRUNED_SHARE) -> Dict[str, float]:
    """Seconds of a staged run before it runs.

    ``fixed``/``adaptive``: runs per cell and repetition (run keys); ``cell_s``: one cell
    run; ``extras_s``: phase and overhead runs of one configuration and repetition;
    ``refine``: the sweep has sizes to refine (REFINE_MAX per cell, the most it adds).
    ``upper_s`` repeats everything; ``typical_s`` assumes ``pruned_share`` of the fixed
    strategies (refinement included) pruned."""
    added = REFINE_MAX if refine else 0
    stage1 = configs * (workloads * (fixed + adaptive) * cell_s + extras_s)
    refinement = configs * workloads * added * cell_s
    later = max(0, reps - 1) * configs
    repeats_all = later * (workloads * (fixed + added + adaptive) * cell_s + extras_s)
    kept = adaptive + (1.0 - pruned_share) * (fixed + added)
    repeats_typical = later * (workloads * kept * cell_s + extras_s)
    return {"probes_s": probes_s, "stage1_s": stage1, "refinement_s": refinement,
            "repeats_all_s": repeats_all, "repeats_typical_s": repeats_typical,
            "pruned_share": pruned_share,
            "upper_s": probes_s + stage1 + refinement + repeats_all,
            "typical_s": probes_s + stage1 + refinement + repeats_typical,
            "per_tenth_pruned_s": later * workloads * 0.1 * (fixed + added) * cell_s}


def summarise_pruning(cells: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    """Counts over a run's cell entries: cells pruned, cells run."""
    ran = [c for c in cells if c.get("status") != "skipped"]
    return {"pruned": sum(1 for c in ran if c.get("pruned")), "cells": len(ran)}
