"""The same workloads on CPython 3.13 with and without the GIL, side by side.

Reads two ``gil-adapt bench`` results (one run with a 3.13 interpreter that has the GIL,
one with the free-threaded build, same configurations, workloads and strategies) and
prints, per configuration and workload: the best fixed thread pool with and without the
GIL (size and tasks/s) and the speed-up free threading gives; the cliff (the loss of
the largest pools against the best one) in each; and AdaptiveExecutor's share of the
best pool in each. Cells the bench flagged as unsound are marked and are never a best.

  .venv-3.13.0/bin/gil-adapt bench --out bench-gil ...
  .venv-3.13t/bin/gil-adapt bench --out bench-ft ...    (the same options)
  python benchmarks/ft_compare.py bench-gil/results.json bench-ft/results.json
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Optional, Tuple

from gil_adapt.bench import scoring


def _load(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _index(res: Dict[str, Any]) -> Tuple[Dict[Tuple[str, str], Dict[str, Any]],
                                         Dict[Tuple[str, str, str], Dict[str, Any]]]:
    """Per (config, workload): the summary, re-scored with this version's soundness
    rules (a results file keeps the flags of the version that wrote it)."""
    cores = {c["name"]: len(c.get("cpus") or ()) or 1 for c in res["configs"]}
    measure = float(res["protocol"]["measure_s"])
    groups: Dict[Tuple[str, str], Dict[str, Dict[str, Any]]] = {}
    for c in res["cells"]:
        groups.setdefault((c["config"], c["workload"]), {})[c["strategy"]] = c
    summ = {}
    for (cfg, w), cells in groups.items():
        probe = res["workloads"].get(w, {}).get("probe") or {}
        alone = probe.get("cpu_ms") if probe.get("status") == "ok" else None
        for name, cell in cells.items():
            cell.pop("flags", None)
            flags = scoring.soundness(cell, name, cores.get(cfg, 1), measure, alone)
            if flags:
                cell["flags"] = flags
        summ[(cfg, w)] = scoring.score_cells(cells)
    cells_by = {(c["config"], c["workload"], c["strategy"]): c for c in res["cells"]}
    return summ, cells_by


def _pct(x: Optional[float]) -> str:
    return "—" if x is None else f"{x * 100:.0f} %"


def _cliff(s: Dict[str, Any], cells: Dict[str, Dict[str, Any]]) -> str:
    """The largest pool's loss against the best (a gain shows as +); ⚠: that cell is
    flagged (its window spans few waves), so the figure is indicative."""
    cl = {k: v for k, v in (s.get("cliff") or {}).items() if v is not None}
    if not cl:
        return "—"
    name, loss = max(cl.items(), key=lambda kv: kv[1])
    mark = " ⚠" if cells.get(name, {}).get("flags") else ""
    return f"{-loss * 100:+.0f} % ({name}){mark}"


def _cells_of(cells: Dict[Tuple[str, str, str], Dict[str, Any]],
              key: Tuple[str, str]) -> Dict[str, Dict[str, Any]]:
    return {s: c for (cfg, w, s), c in cells.items() if (cfg, w) == key}


def compare(gil: Dict[str, Any], ft: Dict[str, Any]) -> List[str]:
    sg, cg = _index(gil)
    sf, cf = _index(ft)
    out = [f"with the GIL: Python {gil['environment'].get('python')}; "
           f"without: Python {ft['environment'].get('python')}", "",
           "| config | workload | best pool, GIL | best pool, no GIL | speed-up | cliff, GIL "
           "| cliff, no GIL | gil-adapt % best, GIL | gil-adapt % best, no GIL |",
           "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(set(sg) & set(sf)):
        a, b = sg[key], sf[key]
        oa, ob = a.get("oracle"), b.get("oracle")
        speed = ob["throughput"] / oa["throughput"] if oa and ob and oa["throughput"] else None
        ga = cg.get(key + ("gil-adapt",)) or {}
        gb = cf.get(key + ("gil-adapt",)) or {}
        out.append("| " + " | ".join([
            key[0], key[1],
            f"{oa['throughput']:.1f}/s (N={oa['n']})" if oa else "—",
            f"{ob['throughput']:.1f}/s (N={ob['n']})" if ob else "—",
            f"{speed:.2f}×" if speed else "—",
            _cliff(a, _cells_of(cg, key)), _cliff(b, _cells_of(cf, key)),
            _pct(ga.get("pct_oracle")) + (" ⚠" if ga.get("flags") else ""),
            _pct(gb.get("pct_oracle")) + (" ⚠" if gb.get("flags") else "")]) + " |")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gil_results")
    ap.add_argument("ft_results")
    args = ap.parse_args()
    print("\n".join(compare(_load(args.gil_results), _load(args.ft_results))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
