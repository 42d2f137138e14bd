"""``gil-adapt bench``: the benchmark suite (docs/bench.md).

The same tasks, the same edge configuration (cores by affinity and cpuset, a real cgroup
memory cap), every strategy in one run, each scored as a share of the best fixed thread
pool (the oracle) and of the best strategy of any kind::

    gil-adapt bench [--quick] [--configs 1c-512m,2c-1g,4c-2g] [--workloads ...]
                    [--strategies ...] [--out DIR] [--dry-run]

The full run is staged: a coarse sweep, a refinement around each cell's best size, and
repetitions of what one repetition did not show clearly beaten (:mod:`.staging`).

Modules: :mod:`.configs` and :mod:`.cgroups` (edge configurations as kernel limits),
:mod:`.loopback` (the I/O server), :mod:`.workloads` and :mod:`.mobilenet` (the tasks),
:mod:`.strategies`, :mod:`.child` (one run in a fresh process), :mod:`.runner` (the
harness), :mod:`.staging` (the full run's coarse sweep, refinement and pruning),
:mod:`.scoring` (medians, oracle, scores), :mod:`.report` (JSON, Markdown, PNG).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from typing import Any, List, Optional

log = logging.getLogger("gil_adapt.bench")

__all__ = ["add_arguments", "main", "options_from_args"]

QUICK = {"configs": "1c-512m", "workloads": "mixed,micro,io,onnx-mobilenetv2",
         "warmup_s": 1.0, "measure_s": 1.5, "overhead_s": 0.5, "probe_s": 0.5}
FULL = {"configs": "1c-512m,2c-1g,4c-2g", "workloads": "all",
        "warmup_s": 3.0, "measure_s": 6.0, "overhead_s": 2.0, "probe_s": 2.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` options (for a CLI that embeds this subcommand)."""
    from .mobilenet import default_cache_dir

    parser.add_argument("--quick", action="store_true",
                        help="reduced run (about 10 minutes on 2 cores): config "
                             f"{QUICK['configs']}, workloads {QUICK['workloads']}, sweep "
                             "N in 1,4,16,64,256,512, 3 short repetitions")
    parser.add_argument("--configs", help="comma-separated edge configurations, e.g. "
                        "1c-512m,2c-1g,4c-2g (default: all three; quick: 1c-512m)")
    parser.add_argument("--workloads", help="comma-separated workloads or 'all' "
                        "(see --list)")
    parser.add_argument("--strategies", default="all",
                        help="comma-separated strategies or groups: threads, tpe, asyncio, "
                             "all; threads-N, tpe-N, threads-default, naive-512, processes, "
                             "asyncio-K, betapool, gil-adapt (default: all)")
    parser.add_argument("--sweep", help="thread counts of the sweep, e.g. 1,2,4,...,2048, "
                        "each run every repetition (default: the staged plan's coarse sweep "
                        "1,4,16,64,256,1024,2048, refined around each cell's best size; "
                        "quick: 1,4,16,64,256,512)")
    parser.add_argument("--coarse-sweep", help=argparse.SUPPRESS)  # the staged plan's sizes
    parser.add_argument("--dry-run", "--plan", dest="dry_run", action="store_true",
                        help="print what would run and the estimated duration (per stage "
                             "of the full run: an upper bound and the typical figure with "
                             "pruning), then exit")
    parser.add_argument("--out", default="bench-out", help="output directory "
                        "(results.json, report.md, plots/); default: bench-out")
    parser.add_argument("--reps", type=int, default=3,
                        help="repetitions per cell, median reported (default 3)")
    parser.add_argument("--warmup", type=float, help="seconds before counting "
                        f"(default {FULL['warmup_s']}; quick {QUICK['warmup_s']})")
    parser.add_argument("--measure", type=float, help="seconds counted "
                        f"(default {FULL['measure_s']}; quick {QUICK['measure_s']})")
    parser.add_argument("--inflight", type=int, help="tasks kept submitted (closed loop; "
                        "default: 2 x the largest N of the sweep)")
    parser.add_argument("--latency-scale", type=float, default=1.0,
                        help="multiply every I/O latency (sleeps and the loopback "
                             "server's delays) by this factor")
    parser.add_argument("--cache-dir", default=default_cache_dir(),
                        help="where the MobileNetV2 model is built once (default: "
                             "%(default)s)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-overhead", action="store_true",
                        help="skip the dispatch/ledger overhead runs")
    parser.add_argument("--no-phase", action="store_true",
                        help="skip the phase-change (mixed -> micro) convergence runs")
    parser.add_argument("--no-cgroups", action="store_true",
                        help="no memory caps (affinity only); the report says so")
    parser.add_argument("--list", action="store_true",
                        help="list workloads and strategies, then exit")
    parser.add_argument("-q", "--no-progress", action="store_true",
                        help="no progress bar")
    parser.add_argument("-v", "--verbose", action="count", default=0)


def options_from_args(args: argparse.Namespace) -> Any:
    """Parsed arguments -> runner.Options (defaults of quick or full mode filled in)."""
    from . import configs, strategies, workloads
    from .runner import Options

    d = QUICK if args.quick else FULL
    wl_text = args.workloads or d["workloads"]
    names = list(workloads.WORKLOADS) if wl_text.strip() == "all" else \
        [w.strip() for w in wl_text.split(",") if w.strip()]
    unknown = [w for w in names if w not in workloads.WORKLOADS]
    if unknown:
        raise ValueError(f"unknown workload(s) {', '.join(unknown)}; "
                         f"known: {', '.join(workloads.WORKLOADS)}")
    # the full run is staged (coarse sweep, refinement, pruning); quick mode and an
    # explicit --sweep run every size every repetition
    staged = not args.quick and not args.sweep
    text = args.sweep or getattr(args, "coarse_sweep", None)
    if text:
        sweep = sorted({int(x) for x in text.split(",") if x.strip()})
        if not sweep or sweep[0] < 1:
            raise ValueError("--sweep needs positive thread counts")
    elif args.quick:
        sweep = list(strategies.QUICK_SWEEP)
    else:
        sweep = list(strategies.COARSE_SWEEP)
    tokens = [t for t in args.strategies.split(",") if t.strip()]
    strategies.expand(tokens, sweep, args.quick)  # validates names
    if getattr(args, "coarse_sweep", None) and args.quick:
        raise ValueError("--coarse-sweep is the full run's staged plan (not with --quick)")
    if args.reps < 1:
        raise ValueError("--reps must be >= 1")
    return Options(
        quick=args.quick, configs=configs.parse_configs(args.configs or d["configs"]),
        workloads=list(dict.fromkeys(names)), strategy_tokens=tokens, out=args.out,
        reps=args.reps,
        warmup_s=args.warmup if args.warmup is not None else d["warmup_s"],
        measure_s=args.measure if args.measure is not None else d["measure_s"],
        inflight=args.inflight, sweep=sweep, latency_scale=args.latency_scale,
        cache_dir=args.cache_dir, plots=not args.no_plots, phase=not args.no_phase,
        overhead=not args.no_overhead, probe=True, overhead_s=d["overhead_s"],
        probe_s=d["probe_s"], use_cgroups=not args.no_cgroups,
        progress=not args.no_progress, staged=staged)


def _list() -> str:
    from . import strategies, workloads

    lines = ["workloads:"]
    for w in workloads.WORKLOADS.values():
        lines.append(f"  {w.name:18s} {w.description} [{w.io}]")
    lines.append("strategies:")
    lines.append("  " + ", ".join(strategies.default_names(strategies.COARSE_SWEEP, False,
                                                         tpe=False)))
    lines.append("  (the full run; its refinement adds threads-N near each cell's best size)")
    lines.append("  on request: tpe-N beside each N (--strategies all,tpe), any threads-N, "
                 "tpe-N, asyncio-K")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """``gil-adapt bench ...``; returns the exit status (0: report written)."""
    parser = argparse.ArgumentParser(prog="gil-adapt bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    level = logging.WARNING - 10 * min(2, args.verbose)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("gil_adapt").setLevel(level)
    if args.list:
        print(_list())
        return 0
    try:
        opts = options_from_args(args)
    except ValueError as e:
        parser.error(str(e))
        return 2

    from . import report
    from .runner import Harness, describe_plan

    if args.dry_run:
        print(describe_plan(opts))
        return 0

    def echo(text: str) -> None:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    harness = Harness(opts, echo)
    t0 = time.monotonic()
    try:
        results = harness.run()
    except KeyboardInterrupt:
        echo("interrupted before any result")
        return 130
    finally:
        harness.close()
        signal.signal(signal.SIGTERM, previous)
    paths = report.write(results, opts.out, plots=opts.plots)
    print(report.summary_text(results))
    print()
    print(f"report: {paths['report']}")
    print(f"results: {paths['results']}")
    print(f"wall time: {time.monotonic() - t0:.0f} s")
    return 130 if results.get("interrupted") else 0
