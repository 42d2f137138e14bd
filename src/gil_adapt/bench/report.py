"""``results.json``, ``report.md`` and the PNG plots of a benchmark run."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence

from . import scoring
from .progress import format_duration
from .strategies import parse_strategy

log = logging.getLogger("gil_adapt.bench")

SUMMARY_COLUMNS = ("gil-adapt", "gil-adapt-auto", "betapool", "naive-512", "threads-default", "processes",
                   "asyncio-32", "asyncio-256")


# ---- formatting ------------------------------------------------------------------------

def pct(x: Optional[float]) -> str:
    return "—" if x is None else f"{x * 100:.0f}%"


def num(x: Optional[float], digits: int = 1) -> str:
    if x is None:
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def ms(x: Optional[float]) -> str:
    return "—" if x is None else f"{x * 1e3:.0f}"


def _cell_text(cell: Optional[Dict[str, Any]]) -> str:
    """A summary-table entry: % of oracle, or why there is none."""
    if cell is None:
        return "—"
    status = cell.get("status")
    if status == "skipped":
        return "skipped"
    if status == "failed":
        return ("OOM" if cell.get("failure") == "oom" else "failed") \
            + (" (1 rep)" if cell.get("pruned") else "")
    text = pct(cell.get("pct_oracle"))
    if status == "partial":
        text += " (OOM in some reps)" if cell.get("failure") == "oom" else " (partial)"
    if cell.get("pruned"):
        text += " (1 rep)"
    return text


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |"
            for row in rows]
    return out


def summary_rows(results: Dict[str, Any]) -> List[List[str]]:
    cells = {(c["config"], c["workload"], c["strategy"]): c for c in results["cells"]}
    rows = []
    for s in results["summary"]:
        cfg, w = s["config"], s["workload"]
        oracle, best = s.get("oracle"), s.get("best_any")
        row = [cfg, w,
               f"{num(oracle['throughput'])} (N={oracle['n']})" if oracle else "—",
               f"{best['strategy']} {pct(best['throughput'] / oracle['throughput'])}"
               if best and oracle else (best["strategy"] if best else "—")]
        for name in SUMMARY_COLUMNS:
            row.append(_cell_text(cells.get((cfg, w, name))))
        for name in ("gil-adapt", "gil-adapt-auto"):
            ga = cells.get((cfg, w, name))
            row.append(pct(ga.get("pct_best_any")) if ga and ga.get("status") != "skipped"
                       else "—")
        row.append(cliff_text(s.get("cliff") or {}, cfg, w, cells))
        rows.append(row)
    return rows


def cliff_text(cliff: Dict[str, Optional[float]], cfg: str, w: str,
               cells: Dict[tuple, Dict[str, Any]]) -> str:
    """The worst loss of threads-N (N >= 512) that ran, and which of them failed (OOM)."""
    losses, failed = [], []
    for name, loss in cliff.items():
        cell = cells.get((cfg, w, name), {})
        if cell.get("status") == "failed":
            failed.append(f"{'OOM' if cell.get('failure') == 'oom' else 'failed'} at "
                          f"{name.split('-')[1]}")
        elif loss is not None:
            losses.append(loss)
    parts = [f"{-max(losses) * 100:+.0f}%"] if losses else []
    return ", ".join(parts + failed) or "—"


SUMMARY_HEADERS = ["config", "workload", "oracle tasks/s", "best-any (% oracle)",
                   *SUMMARY_COLUMNS, "gil-adapt % best-any",
                   "gil-adapt-auto % best-any", "cliff (N>=512)"]


def summary_text(results: Dict[str, Any]) -> str:
    """The summary table (Markdown), as the CLI prints it."""
    rows = summary_rows(results)
    if not rows:
        return "(no cell was measured)"
    return "\n".join(table(SUMMARY_HEADERS, rows))


# ---- plots -----------------------------------------------------------------------------

def _plots(results: Dict[str, Any], out_dir: str) -> Dict[str, Dict[str, str]]:
    """PNG files per (config, workload): ``sweep`` and ``timeline``. Empty without
    matplotlib (the report says so)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except Exception as e:  # noqa: BLE001 - plots are optional
        log.warning("no plots: matplotlib unavailable (%s)", e)
        return {}
    os.makedirs(os.path.join(out_dir, "plots"), exist_ok=True)
    made: Dict[str, Dict[str, str]] = {}
    cells: Dict[tuple, Dict[str, Dict[str, Any]]] = {}
    for c in results["cells"]:
        cells.setdefault((c["config"], c["workload"]), {})[c["strategy"]] = c
    runs = results.get("runs", [])
    for (cfg, w), by in cells.items():
        key = f"{cfg}/{w}"
        made[key] = {}
        summary = next((s for s in results["summary"] if s["config"] == cfg
                        and s["workload"] == w), {})
        oracle = summary.get("oracle")
        # throughput vs N, each strategy marked
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for kind, style, label in (("threads", "o-", "threads-N (N live threads)"),
                                   ("tpe", "s--", "tpe-N (ThreadPoolExecutor(N))")):
            pts = sorted((parse_strategy(n).size, c) for n, c in by.items()
                         if c.get("status") != "skipped" and _kind(n) == kind)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ys = [p[1].get("throughput") or 0.0 for p in pts]
            lo = [y - (p[1].get("throughput_min") or 0.0) for y, p in zip(ys, pts)]
            hi = [(p[1].get("throughput_max") or 0.0) - y for y, p in zip(ys, pts)]
            ax.errorbar(xs, ys, yerr=[lo, hi], fmt=style, capsize=3, label=label)
            for x, p in pts:
                if p.get("status") in ("failed", "partial"):
                    ax.annotate("OOM" if p.get("failure") == "oom" else "failed",
                                (x, p.get("throughput") or 0.0), textcoords="offset points",
                                xytext=(0, 8), ha="center", fontsize=8, color="red")
        markers = iter("D^v<>Ph*X")
        for name, c in by.items():
            if c.get("status") == "skipped" or _kind(name) in ("threads", "tpe"):
                continue
            y = c.get("throughput") or 0.0
            x = c.get("workers_final")
            lab = f"{name}: {num(y)}/s" + (" (OOM)" if c.get("failure") == "oom" else "")
            if _kind(name) in ("processes", "asyncio") or not x:
                ax.axhline(y, linestyle=":", linewidth=1.2, label=lab,
                           color=f"C{hash(name) % 10}")
            else:
                ax.plot([x], [y], marker=next(markers, "o"), markersize=9, linestyle="none",
                        label=f"{lab} at {x:.0f} workers")
        if oracle:
            ax.set_title(f"{cfg} / {w}: oracle threads-{oracle['n']} "
                         f"= {num(oracle['throughput'])} tasks/s")
        else:
            ax.set_title(f"{cfg} / {w}")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
            lambda v, _pos: f"{v:g}"))
        ax.set_xlabel("threads (N) / workers")
        ax.set_ylabel("tasks/s (median, min-max bars)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        name = f"plots/{_slug(cfg)}_{_slug(w)}_sweep.png"
        fig.savefig(os.path.join(out_dir, name), dpi=100)
        plt.close(fig)
        made[key]["sweep"] = name
        # controller timeline (the median repetition of each adaptive strategy)
        series = []
        for strat in ("gil-adapt", "gil-adapt-auto", "betapool"):
            reps = [r for r in runs if r["kind"] == "cell" and r["config"] == cfg
                    and r["workload"] == w and r["strategy"] == strat
                    and r.get("status") == "ok" and r.get("series")]
            if reps:
                reps.sort(key=lambda r: r.get("throughput") or 0.0)
                series.append((strat, reps[len(reps) // 2]))
        if series:
            name = f"plots/{_slug(cfg)}_{_slug(w)}_timeline.png"
            _timeline(plt, series, oracle, f"{cfg} / {w}", os.path.join(out_dir, name))
            made[key]["timeline"] = name
    phase = [r for r in runs if r["kind"] == "phase" and r.get("status") == "ok"
             and r.get("series")]
    for cfg in sorted({r["config"] for r in phase}):
        series = []
        for strat in ("gil-adapt", "gil-adapt-auto", "betapool"):
            reps = sorted((r for r in phase if r["config"] == cfg and r["strategy"] == strat),
                          key=lambda r: r.get("throughput") or 0.0)
            if reps:
                series.append((strat, reps[len(reps) // 2]))
        if series:
            name = f"plots/{_slug(cfg)}_phase_timeline.png"
            ref = next((s.get("oracle") for s in results["summary"]
                        if s["config"] == cfg and s["workload"] == "micro"), None)
            _timeline(plt, series, ref, f"{cfg} / mixed -> micro at "
                      f"{series[0][1].get('switch_at_s')} s", os.path.join(out_dir, name))
            made.setdefault(f"{cfg}/mixed>micro", {})["timeline"] = name
    return made


def _timeline(plt: Any, series: List[tuple], oracle: Optional[Dict[str, Any]], title: str,
              path: str) -> None:
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1b = ax1.twinx()
    for i, (strat, run) in enumerate(series):
        pts = run["series"]
        t = [p.get("t") for p in pts]
        ax1.plot(t, [p.get("workers") for p in pts], f"C{i}-", label=f"{strat} workers")
        if any(p.get("target_workers") is not None for p in pts):
            ax1.plot(t, [p.get("target_workers") for p in pts], f"C{i}--",
                     label=f"{strat} target")
        if any(p.get("beta") is not None for p in pts):
            ax1b.plot(t, [p.get("beta") for p in pts], f"C{i}:", label=f"{strat} beta")
        bs = run.get("bucket_s", 0.5)
        b = run.get("buckets") or []
        ax2.step([(k + 1) * bs for k in range(len(b))], b, f"C{i}-", where="pre",
                 label=f"{strat} tasks/s")
        if run.get("switch_at_s"):
            for ax in (ax1, ax2):
                ax.axvline(run["switch_at_s"], color="grey", linestyle="-.", linewidth=1)
    if oracle:
        ax2.axhline(oracle["throughput"], color="k", linestyle=":",
                    label=f"oracle threads-{oracle['n']}")
        ax2.axhline(0.95 * oracle["throughput"], color="grey", linestyle=":", linewidth=0.8,
                    label="95% of oracle")
    ax1.set_ylabel("workers")
    ax1b.set_ylabel("beta")
    ax1b.set_ylim(0, 1.05)
    ax1.set_title(title)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=7, loc="best")
    ax2.set_xlabel("seconds since start")
    ax2.set_ylabel("tasks/s (0.5 s buckets)")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=7, loc="best")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _kind(name: str) -> str:
    try:
        return parse_strategy(name).kind
    except ValueError:
        return ""


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in text)


# ---- the Markdown report ---------------------------------------------------------------

def misses_section(results: Dict[str, Any]) -> List[str]:
    """The cells where gil-adapt (against the oracle) or gil-adapt-auto (against best-any)
    is below the bar, with why (scoring.misses); nothing when neither ran."""
    ran = {c.get("strategy") for c in results.get("cells", [])
           if c.get("status") != "skipped"}
    if not ran & {"gil-adapt", "gil-adapt-auto"}:
        return []
    bar = scoring.MISS_BAR
    L = [f"## Where gil-adapt is below {bar:.0%}", ""]
    for name in ("gil-adapt", "gil-adapt-auto"):
        t = scoring.fresh_tally(results.get("cells", []), name, bar)
        if t:
            against = "the oracle" if name == "gil-adapt" else "best-any"
            L.append(f"- Against {against} picked on the first repetition and measured on "
                     f"the later ones (the highest of several noisy medians runs high): "
                     f"{name} at or above {bar:.0%} in {t['at_bar']} of {t['cells']} "
                     f"cells, mean {t['mean']:.0%}, lowest {t['min']:.0%}.")
    if L[-1] != "":
        L.append("")
    found = scoring.misses(results, bar)
    if not found:
        return L + [f"In every scored cell gil-adapt is at or above {bar:.0%} of the oracle "
                    f"and gil-adapt-auto at or above {bar:.0%} of best-any.", ""]
    L.append(f"gil-adapt is held to {bar:.0%} of the oracle, gil-adapt-auto to {bar:.0%} of "
             "best-any, in every cell. Below, from the measured windows of its repetitions: "
             "the workers it held and its target (medians of the sampled state), its grow / "
             "shrink decisions in the window, and why.")
    L.append("")
    rows = []
    for m in found:
        ref = m["reference"] or {}
        rows.append([m["config"], m["workload"], m["strategy"],
                     f"{pct(m['score'])} of {m['against']} ({ref.get('strategy', '')})",
                     pct(m["best_rep_score"]),
                     f"{num(m['workers_held'], 0)} ({num(m['target_workers'], 0)})",
                     f"{num(m['grow_in_window'], 0)} / {num(m['shrink_in_window'], 0)}",
                     "; ".join(m["why"])])
    L += table(["config", "workload", "strategy", "score", "best rep", "workers (target)",
                "grow / shrink", "why"], rows)
    L.append("")
    return L


def markdown(results: Dict[str, Any], plots: Dict[str, Dict[str, str]],
             plots_note: Optional[str]) -> str:
    env, proto = results["environment"], results["protocol"]
    L: List[str] = ["# gil-adapt bench — report", ""]
    mode = "quick" if proto["quick"] else "full"
    L.append(f"Run started {results['started']}, {mode} mode, wall time "
             f"{format_duration(results['wall_s'])}"
             + (" — **interrupted**: partial results" if results.get("interrupted") else "")
             + ".")
    L.append("")
    L.append("## Environment")
    L.append("")
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v) or "none"
    missing = ", ".join(k for k, v in env["libraries"].items() if not v)
    L += [f"- CPU: {env['cpu_model']} — {len(env['host_cpus'])} CPUs allowed "
          f"({env['host_cpus']}), memory {num((env.get('memory_total_bytes') or 0) / 2**30)}"
          f" GiB",
          f"- Kernel {env['kernel']}; Python {env['python']} ({env['implementation']}, "
          f"{env['python_build']})",
          f"- Libraries: {libs}" + (f"; not installed: {missing}" if missing else ""),
          f"- Memory caps: {env['cgroup']['description']}"
          + (f"; **failed during the run**: {results['cgroup_failure']}"
             if results.get("cgroup_failure") else ""),
          f"- BLAS/OpenMP threads: 1 ({', '.join(env['thread_env'])}); ONNX Runtime: "
          f"1 intra-op, 1 inter-op thread"]
    loads = [r["loadavg"][0] for r in results.get("runs", []) if r.get("loadavg")]
    if loads:
        L.append(f"- Host load (1-min load average at the end of each run): "
                 f"{min(loads):.1f}–{max(loads):.1f} on {len(env['host_cpus'])} CPUs"
                 + (" — **the machine was shared with other work; expect noise**"
                    if max(loads) > len(env["host_cpus"]) else ""))
    caps = env.get("gil_adapt_capabilities") or {}
    if caps:
        L.append(f"- gil-adapt ledger: gil_wait {caps.get('gil_wait', caps.get('error'))}")
    if results.get("stale_cgroups_removed"):
        L.append(f"- Removed {len(results['stale_cgroups_removed'])} stale cgroup(s) left "
                 f"by a killed earlier run")
    L.append("")
    L.append("## Protocol")
    L.append("")
    L += [f"- Each run is a fresh process in its configuration's cgroup, pinned to its CPUs. "
          f"Closed loop: the main thread keeps {proto['inflight']} tasks submitted; warm-up "
          f"{proto['warmup_s']} s, then throughput and latency (submit → result) over the "
          f"{proto['measure_s']} s measured window.",
          f"- Median of {proto['reps']} repetitions (interleaved"
          + ("; one where pruned, see below" if proto.get("pruning") else "")
          + "); spread = min–max. "
          "A failed repetition (OOM kill, crash, timeout, tasks failing) counts as 0 tasks/s.",
          f"- Sweep: threads-N for N in {proto['sweep']}"
          + (" (coarse; refined per cell, see below)" if proto.get("pruning") else "")
          + " with all N threads started before "
          "the clock (the live count is reported). Oracle = best threads-N. Best-any = best "
          "fixed strategy of any kind (sweep, tpe-N, default, processes, asyncio).",
          f"- Cliff = loss of threads-N (N ≥ {proto['cliff_from']}) against the oracle. "
          f"Convergence = time until the running mean of throughput (0.5 s buckets) stays "
          f"≥ {proto['converged_share'] * 100:.0f}% of the oracle.",
          f"- The pure-Python CPU loop was calibrated at "
          f"{proto['loop_iterations_per_ms']:.0f} iterations/ms; I/O latencies × "
          f"{proto['latency_scale']}.",
          "- The warm-up lasts until the first task completed if that is later (at most "
          "4 × warm-up + 5 s): a strategy with a long start-up is measured after it. "
          "Strategies that complete in bursts (asyncio with a large semaphore on CPU-heavy "
          "tasks) need windows much longer than a burst period; short windows misstate them.",
          "- Latency in a saturated closed loop is mostly queueing (≈ in-flight / "
          "throughput); when the windows are shorter than the queue's turnover (quick mode) "
          "it reflects the start-up, not a steady state.",
          "- Phase change (mixed → micro): at the switch, queued tasks of the first phase "
          "are cancelled and the closed loop submits the second workload.",
          "- CPU used = the CPU the cell's process tree used in the measured window "
          "(its cgroup's CPU accounting, or /proc) ÷ (cores × window); CPU ms/task = that "
          "CPU ÷ the tasks completed in the window (under load; the workload table gives "
          "the task alone); faults/task = the page faults the tree took in the window "
          "(its memory cgroup's, or this process's) ÷ those tasks: a task whose heap is "
          "handed back to the kernel and faulted in again each time costs CPU the task "
          "alone does not. A cell marked ⚠ is not taken at face value and is neither the "
          "oracle nor best-any: its CPU exceeds its cores, or its window spans fewer than "
          f"{scoring.BURST_PERIODS} waves of completions (tasks at once × CPU per task "
          "alone ÷ cores); the note says which.",
          "- The oracle and best-any are the highest of several medians of a few noisy "
          "repetitions, which runs high. Fresh references remove that bias: the strategy "
          "best in the first repetition, measured by the median of its later repetitions "
          "(which played no part in picking it); the adaptive strategies are also scored "
          "against them (Where gil-adapt is below the bar)."]
    pruning = proto.get("pruning")
    if pruning:
        refined = [f"{c['config']}/{c['workload']} N*={c['coarse_best']}: "
                   f"+{', '.join(str(n) for n in c['refinement'])}"
                   for c in pruning["cells"] if c.get("refinement")]
        L += ["- Staged plan: repetition 1 of every strategy at the coarse sweep; then per "
              "cell a refinement, threads-N at the ×√2 points around the best coarse size "
              "N* (N*/2.8 … 2.8·N*), one repetition each"
              + (f" ({'; '.join(refined)})" if refined else "")
              + f"; then repetitions 2–{proto['reps']} of every strategy except fixed ones "
              f"whose first repetition was ≥ {pruning['prune_below'] * 100:.0f}% below the "
              f"best fixed strategy of the cell (a failed one counts as 0). Adaptive "
              f"strategies, the best threads-N and the sizes next to it are always repeated, "
              f"so the oracle is judged on full medians.",
              f"- Sizes and strategies ≥ {pruning['prune_below'] * 100:.0f}% below the best "
              f"after one repetition were not repeated: {pruning['pruned_cells']} of "
              f"{pruning['cells_run']} cells (their figures are that one repetition, "
              f"marked “1 rep” in the summary and “pruned” in the cell tables)."]
    if proto["quick"]:
        L.append("- **Quick mode**: reduced sweep, few workloads, short windows: indicative "
                 "only (best-any and the oracle included); adaptive strategies get the same "
                 "short warm-up as the rest.")
    flagged = [c for c in results["cells"] if c.get("flags")]
    if flagged:
        L.append(f"- {len(flagged)} of {len(results['cells'])} cells are marked ⚠ (listed "
                 "under Flagged cells).")
    L.append("")
    L.append("## Summary (% of oracle, median of repetitions)")
    L.append("")
    L.append(summary_text(results))
    L.append("")
    eff = scoring.efficiency(results["cells"], SUMMARY_COLUMNS)
    if eff:
        L.append("## Efficiency per strategy (over all cells; a failed cell counts as 0)")
        L.append("")
        L.extend(table(["strategy", "cells", "mean % oracle", "mean % best-any",
                        "worst cell (% best-any)"],
                       [[e["strategy"], str(e["cells"]), pct(e["mean_pct_oracle"]),
                         pct(e["mean_pct_best_any"]),
                         f"{e['worst_cell']} ({pct(e['worst_pct_best_any'])})"]
                        for e in eff]))
        L.append("")
    L += misses_section(results)
    # configurations
    L.append("## Configurations")
    L.append("")
    rows = []
    for c in results["configs"]:
        rows.append([c["name"], str(c["cores"]), f"{c['memory_bytes'] // 2**20} MiB",
                     c["status"], c.get("reason") or c.get("memory_cap") or "",
                     str(c.get("cpus", "")), str(c.get("server_cpus", ""))])
    L += table(["config", "cores", "memory", "status", "cap / reason", "CPUs",
                "server CPUs"], rows)
    L.append("")
    L.append("## Workloads")
    L.append("")
    rows = []
    for name, w in results["workloads"].items():
        p = w.get("probe") or {}
        rows.append([name, w["description"], w.get("io", ""), w["status"]
                     + (f": {w['reason']}" if w.get("reason") else ""),
                     num(p.get("cpu_ms"), 2), num(p.get("wall_ms"), 2)])
    L += table(["workload", "task", "I/O", "status", "CPU ms/task (alone)",
                "wall ms/task (alone)"], rows)
    L.append("")
    skipped = {n: s for n, s in results["strategies"].items() if s["status"] == "skipped"}
    if skipped:
        L.append("Strategies skipped: " + "; ".join(f"`{n}` — {s['reason']}"
                                                   for n, s in skipped.items()))
        L.append("")
    if flagged:
        L.append("## Flagged cells")
        L.append("")
        L += table(["config", "workload", "strategy", "tasks/s", "CPU used", "why"],
                   [[c["config"], c["workload"], c["strategy"], num(c.get("throughput")),
                     pct(c.get("cpu_utilisation")), "; ".join(c["flags"])] for c in flagged])
        L.append("")
    # failures
    bad = [c for c in results["cells"] if c.get("status") in ("failed", "partial")]
    if bad:
        L.append("## Failures")
        L.append("")
        L += table(["config", "workload", "strategy", "status", "reason"],
                   [[c["config"], c["workload"], c["strategy"], c["status"],
                     str(c.get("reason"))[:400]] for c in bad])
        L.append("")
    # per cell
    L.append("## Cells")
    L.append("")
    by_pair: Dict[tuple, List[Dict[str, Any]]] = {}
    for c in results["cells"]:
        by_pair.setdefault((c["config"], c["workload"]), []).append(c)
    for (cfg, w), cells in by_pair.items():
        L.append(f"### {cfg} / {w}")
        L.append("")
        s = next((x for x in results["summary"] if x["config"] == cfg
                  and x["workload"] == w), {})
        if s.get("oracle"):
            L.append(f"Oracle: threads-{s['oracle']['n']} at {num(s['oracle']['throughput'])}"
                     f" tasks/s; best-any: {s['best_any']['strategy']} at "
                     f"{num(s['best_any']['throughput'])} tasks/s."
                     + (" Cliff: " + ", ".join(f"{k} -{v * 100:.0f}%" for k, v in
                                               s["cliff"].items() if v is not None)
                        if s.get("cliff") else ""))
            L.append("")
        rows = []
        for c in cells:
            if c.get("status") == "skipped":
                rows.append([c["strategy"], "skipped", "", "", "", "", "", "", "", "", "",
                             "", "", "", str(c.get("reason"))])
                continue
            workers = num(c.get("workers_final"), 0)
            if c.get("live_threads_at_start") is not None:
                workers += f" ({c['live_threads_at_start']:.0f} live)"
            rows.append([
                c["strategy"] + (" ⚠" if c.get("flags") else ""), num(c.get("throughput")),
                f"{num(c.get('throughput_min'))}–{num(c.get('throughput_max'))}",
                pct(c.get("pct_oracle")), pct(c.get("pct_best_any")),
                pct(c.get("cpu_utilisation")), num(c.get("cpu_ms_per_task_window"), 2),
                num(c.get("faults_per_task_window"), 0),
                ms(c.get("latency_p50_s")), ms(c.get("latency_p99_s")),
                num(c.get("peak_rss_tree_mib"), 0), workers,
                num(c.get("beta_final"), 2), c.get("backend") or "",
                (c["status"] if c["status"] != "ok" else "")
                + (" pruned: 1 repetition (" + str(c.get("pruned_reason")) + ")"
                   if c.get("pruned") else "")
                + (f" {c.get('reason')}" if c.get("reason") else "")
                + (f" {c.get('note')}" if c.get("note") else "")
                + "".join(f" ⚠ {f}." for f in c.get("flags") or ())])
        L += table(["strategy", "tasks/s", "min–max", "% oracle", "% best-any", "CPU used",
                    "CPU ms/task", "faults/task", "p50 ms", "p99 ms", "peak RSS MiB",
                    "workers", "beta",
                    "backend", "notes"], rows)
        L.append("")
        for kind in ("sweep", "timeline"):
            path = plots.get(f"{cfg}/{w}", {}).get(kind)
            if path:
                L.append(f"![{cfg} {w} {kind}]({path})")
        L.append("")
    # convergence
    if results.get("convergence"):
        L.append("## Convergence")
        L.append("")
        rows = []
        for c in results["convergence"]:
            reps = ", ".join("never" if v is None else f"{v:.1f}" for v in c["seconds_reps"])
            rows.append([c["config"], c["workload"], c["strategy"], c["event"],
                         f"threads-{c['reference']['n']} {num(c['reference']['throughput'])}",
                         "not within the run" if c["seconds"] is None
                         else f"{c['seconds']:.1f} s", reps, f"{c['window_s']:.1f} s"])
        L += table(["config", "workload", "strategy", "from", "oracle", "median",
                    "reps (s)", "window"], rows)
        for cfg_w, p in plots.items():
            if cfg_w.endswith("mixed>micro") and p.get("timeline"):
                L.append("")
                L.append(f"![{cfg_w} phase change]({p['timeline']})")
        L.append("")
    if results.get("overhead"):
        L.append("## Overhead")
        L.append("")
        rows = []
        for o in results["overhead"]:
            if o["figure"] == "dispatch":
                rows.append([o["config"], "submit/result of no-op tasks",
                             f"gil-adapt {num(o['gil-adapt'], 0)}",
                             f"ThreadPoolExecutor() {num(o['ThreadPoolExecutor'], 0)}",
                             pct(o.get("ratio")), o["unit"]])
            else:
                rows.append([o["config"], "ledger on a GIL-heavy loop (4 threads)",
                             f"hooks on {num((o['hooks_on'] or 0) / 1e6, 2)} M",
                             f"hooks off {num((o['hooks_off'] or 0) / 1e6, 2)} M",
                             pct(o.get("ratio")), o["unit"]
                             + (f"; gil_wait exact: {o.get('gil_wait_exact')}")])
        L += table(["config", "figure", "with", "baseline", "ratio", "unit"], rows)
        L.append("")
    if plots_note:
        L.append(f"_{plots_note}_")
        L.append("")
    L.append("Every figure, with each repetition and the executors' sampled state, is in "
             "`results.json`.")
    return "\n".join(L) + "\n"


def write(results: Dict[str, Any], out_dir: str, plots: bool = True) -> Dict[str, str]:
    """Writes results.json, report.md and plots/ under out_dir; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "results.json")
    with open(json_path + ".tmp", "w") as f:
        json.dump(_finite(results), f, indent=1, default=_json_default, allow_nan=False)
    os.replace(json_path + ".tmp", json_path)
    made: Dict[str, Dict[str, str]] = {}
    note = None
    if plots:
        made = _plots(results, out_dir)
        if not made and results["cells"]:
            note = "No plots: matplotlib is not installed (pip install 'gil-adapt[bench]')."
    else:
        note = "Plots disabled (--no-plots)."
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w") as f:
        f.write(markdown(results, made, note))
    return {"results": json_path, "report": md_path}


def _finite(obj: Any) -> Any:
    """The same data with non-finite floats as None (JSON has no inf/nan)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, set):
        return list(obj)
    return str(obj)
