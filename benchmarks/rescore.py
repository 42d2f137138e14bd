"""Re-scores a recorded `gil-adapt bench` run with the current scoring: per cell, the adaptive
strategies against the oracle and best-any (the highest medians) and against the fresh
references (the strategy best in the first repetition, measured on its later ones: free
of the bias of picking the highest of noisy medians; docs/design/benchmark.md).

The runs' records in results.json are summarised again; each cell keeps the flags the run
recorded (a flagged cell is no reference). Nothing is measured.

  python benchmarks/rescore.py docs/results/2026-12-07-full-2cpu/results.json
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Tuple

from gil_adapt.bench import scoring


def rescore(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every cell of the run, summarised and scored again (adaptive cells carry
    ``pct_oracle_fresh`` and ``pct_best_any_fresh``)."""
    flags = {(c["config"], c["workload"], c["strategy"]): c.get("flags")
             for c in results.get("cells", [])}
    by: Dict[Tuple[str, str], Dict[str, List[Dict[str, Any]]]] = {}
    for r in results.get("runs", []):
        if r.get("kind", "cell") == "cell" and r.get("strategy"):
            by.setdefault((r["config"], r["workload"]), {}).setdefault(
                r["strategy"], []).append(r)
    out = []
    for (cfg, w), strategies in sorted(by.items()):
        cells = {}
        for name, runs in strategies.items():
            cell = scoring.summarise_cell(runs)
            if flags.get((cfg, w, name)):
                cell["flags"] = flags[(cfg, w, name)]
            cell.update(config=cfg, workload=w, strategy=name)
            cells[name] = cell
        summary = scoring.score_cells(cells)
        for cell in cells.values():
            cell["summary"] = summary
        out += cells.values()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="a run's results.json")
    args = ap.parse_args()
    with open(args.results) as f:
        cells = rescore(json.load(f))
    pct = "{:.0%}".format
    print(f"{'config':8s} {'workload':17s} {'gil-adapt':>10s} {'fresh':>6s} {'oracle':>12s} "
          f"{'fresh oracle':>13s} {'auto':>6s} {'fresh':>6s} {'fresh best-any':>15s}")
    for c in cells:
        if c["strategy"] != "gil-adapt":
            continue
        s = c["summary"]
        auto = next((x for x in cells if x["strategy"] == "gil-adapt-auto"
                     and (x["config"], x["workload"]) == (c["config"], c["workload"])), {})
        cols = [pct(c["pct_oracle"]) if c.get("pct_oracle") is not None else "-",
                pct(c["pct_oracle_fresh"]) if c.get("pct_oracle_fresh") is not None else "-",
                (s["oracle"] or {}).get("strategy", "-"),
                (s["oracle_fresh"] or {}).get("strategy", "-"),
                pct(auto["pct_best_any"]) if auto.get("pct_best_any") is not None else "-",
                pct(auto["pct_best_any_fresh"])
                if auto.get("pct_best_any_fresh") is not None else "-",
                (s["best_any_fresh"] or {}).get("strategy", "-")]
        print(f"{c['config']:8s} {c['workload']:17s} {cols[0]:>10s} {cols[1]:>6s} "
              f"{cols[2]:>12s} {cols[3]:>13s} {cols[4]:>6s} {cols[5]:>6s} {cols[6]:>15s}")
    for name, key, against in (("gil-adapt", "pct_oracle", "the oracle"),
                               ("gil-adapt-auto", "pct_best_any", "best-any")):
        scored = [c[key] for c in cells if c["strategy"] == name and c.get(key) is not None]
        t = scoring.fresh_tally(cells, name)
        if not scored or not t:
            continue
        at = sum(1 for x in scored if x >= scoring.MISS_BAR)
        print(f"{name}: at or above {scoring.MISS_BAR:.0%} of {against} in {at} of "
              f"{len(scored)} cells (mean {pct(sum(scored) / len(scored))}); of the fresh "
              f"reference in {t['at_bar']} of {t['cells']} (mean {pct(t['mean'])}, lowest "
              f"{pct(t['min'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
