"""gil-adapt bench: the harness's logic — configurations and skips, strategy names,
planning, classification of finished children, results and report — without timing.
"""
from __future__ import annotations

import argparse
import json
import os
import signal

import pytest

from gil_adapt import bench
from gil_adapt.bench import configs, report, runner, scoring, staging, strategies
from gil_adapt.bench.progress import Progress
from gil_adapt.bench.runner import Options, build_results, classify


# ---- configurations --------------------------------------------------------------------

def test_parse_configs():
    c = configs.parse_configs("1c-512m,2c-1g,4c-2g,1c-512m")
    assert [(x.name, x.cores, x.memory_mib) for x in c] == [
        ("1c-512m", 1, 512), ("2c-1g", 2, 1024), ("4c-2g", 4, 2048)]
    with pytest.raises(ValueError):
        configs.parse_config("one-core")
    with pytest.raises(ValueError):
        configs.parse_configs(" , ")


def test_configs_needing_more_cores_are_skipped_not_emulated():
    four = configs.parse_config("4c-2g")
    reason = configs.skip_reason(four, [0, 1])
    assert "needs 4 cores" in reason and "allows 2" in reason and "never emulated" in reason
    assert configs.skip_reason(four, [0, 1, 2, 3]) is None
    assert configs.config_cpus(configs.parse_config("1c-512m"), [2, 3]) == [2]
    with pytest.raises(ValueError):
        configs.config_cpus(four, [0, 1])


# ---- strategies ------------------------------------------------------------------------

def test_strategy_names_and_groups():
    s = strategies.expand(["threads", "naive-512", "asyncio", "gil-adapt", "threads-4"],
                          [1, 4], quick=True)
    assert [x.name for x in s] == ["threads-1", "threads-4", "naive-512", "asyncio-32",
                                   "asyncio-256", "gil-adapt"]
    naive = strategies.parse_strategy("naive-512")
    assert (naive.kind, naive.size, naive.run_key) == ("tpe", 512, "tpe-512")
    assert strategies.parse_strategy("gil-adapt").adaptive
    with pytest.raises(ValueError, match="unknown strategy"):
        strategies.parse_strategy("threads-many")


def test_default_strategies_cover_bench_md():
    names = strategies.default_names(strategies.FULL_SWEEP, quick=False)
    for n in ["threads-1", "threads-2048", "tpe-2048", "threads-default", "naive-512",
              "processes", "asyncio-32", "asyncio-256", "betapool", "gil-adapt"]:
        assert n in names
    assert "tpe-512" not in names      # that is naive-512
    quick = strategies.default_names(strategies.QUICK_SWEEP, quick=True)
    assert [n for n in quick if n.startswith("threads-") and n[8:].isdigit()] == [
        f"threads-{n}" for n in strategies.QUICK_SWEEP]


def test_missing_optional_strategy_is_skipped_with_reason(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "betapool" else real(name, *a))
    reason = strategies.unavailable_reason(strategies.parse_strategy("betapool"))
    assert "not installed" in reason
    assert strategies.unavailable_reason(strategies.parse_strategy("threads-8")) is None


def test_unimportable_executor_is_skipped_with_reason(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a):
        if name == "gil_adapt":
            raise ImportError("no _core yet")
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", fake)
    reason = strategies.unavailable_reason(strategies.parse_strategy("gil-adapt"))
    assert "not importable" in reason and "no _core yet" in reason


# ---- planning --------------------------------------------------------------------------

def make_harness(tmp_path, **kw) -> runner.Harness:
    opts = Options(out=str(tmp_path), use_cgroups=False, progress=False, **kw)
    h = runner.Harness(opts, echo=lambda s: None)
    return h


def test_plan_interleaves_reps_and_runs_naive_512_once(tmp_path):
    h = make_harness(tmp_path, reps=2, sweep=[1, 512], phase=True, overhead=True)
    try:
        strats = strategies.expand(["threads", "naive-512", "tpe-512", "gil-adapt"],
                                   [1, 512], quick=False)
        cfgs = configs.parse_configs("1c-512m,2c-1g")
        plan = h.plan(cfgs, ["mixed", "micro"], strats, {"loop_per_ms": 1.0})
    finally:
        h.close()
    probes = [r for r in plan if r.kind == "probe"]
    cells = [r for r in plan if r.kind == "cell"]
    assert [r.workload for r in probes] == ["mixed", "micro"]
    # naive-512 and tpe-512 are one measurement, reported under both names
    keys = {tuple(r.names) for r in cells}
    assert ("tpe-512", "naive-512") in keys or ("naive-512", "tpe-512") in keys
    assert len(cells) == 2 * 2 * 2 * 4          # configs x reps x workloads x run keys
    # rep 1 of everything in a config before rep 2
    reps = [r.rep for r in cells if r.config.name == "1c-512m"]
    assert reps == sorted(reps)
    phase = [r for r in plan if r.kind == "phase"]
    assert {(r.config.name, r.strategy, r.rep) for r in phase} == {
        (c, "gil-adapt", k) for c in ("1c-512m", "2c-1g") for k in (0, 1)}
    assert all(r.spec["workload2"] == "micro" for r in phase)
    over = [r for r in plan if r.kind.startswith("overhead")]
    assert len(over) == 2 * 2 * 4
    assert all(r.estimate_s > 0 for r in plan)


# ---- the staged plan (full mode) -------------------------------------------------------

def test_refinement_sizes_are_the_sqrt2_points_around_the_best_coarse_size():
    coarse = strategies.COARSE_SWEEP
    # N* = 16: the x√2 points from N*/2 to 2 N*
    assert staging.refinement_sizes(16, 2048, coarse) == [8, 11, 23, 32]
    # N* = 1: nothing below 1; 1.41 rounds to 1, already run
    assert staging.refinement_sizes(1, 2048, coarse) == [2]
    # N* = 2048, the largest size: nothing above it; 1024 is a coarse size
    assert staging.refinement_sizes(2048, 2048, coarse) == [1448]
    assert staging.refinement_sizes(1024, 2048, coarse) == [512, 724, 1448]
    # a small forced sweep: nothing above its largest size
    assert staging.refinement_sizes(4, 4, [1, 4]) == [2, 3]
    for n_star in (1, 16, 2048):
        for n in staging.refinement_sizes(n_star, 2048, coarse):
            assert n_star / 4 < n < 4 * n_star and n not in coarse


def cell_record(strategy, thr, status="ok", **kw):
    r = {"kind": "cell", "config": "1c-512m", "workload": "mixed", "strategy": strategy,
         "rep": 0, "status": status, "throughput": thr if status == "ok" else 0.0,
         "completed": 100}
    if status != "ok":
        r["reason"] = "OOM: killed under the 512 MiB cap"
    r.update(kw)
    return r


def test_pruning_decision_from_first_repetitions():
    records = [
        cell_record("threads-1", 0.0, status="oom"),      # failed: counts as 0, pruned
        cell_record("threads-4", 75.0),                   # 25 % below the best: pruned
        cell_record("threads-11", 70.0),                  # next to the best size: kept
        cell_record("threads-16", 100.0),                 # the best size (and best fixed)
        cell_record("threads-23", 90.0),                  # next to the best size: kept
        cell_record("threads-32", 85.0),                  # 15 % below: kept
        cell_record("threads-64", 80.0),                  # exactly 20 % below: pruned
        cell_record("threads-2048", 0.0, status="oom"),
        cell_record("threads-default", 85.0),             # 15 % below: kept
        cell_record("processes", 75.0),                   # 25 % below: pruned
        cell_record("naive-512", 82.0),
        # a burst figure: 256 tasks x 11 ms on one core are waves 2.8 s apart, a 6 s
        # window is two of them; flagged, so not the reference (kept: not below it)
        cell_record("asyncio-256", 200.0),
        cell_record("gil-adapt", 10.0),                   # adaptive: always repeated
        cell_record("gil-adapt-auto", 0.0, status="failed"),
    ]
    cells = staging.first_cells(records, cores=1, measure_s=6.0, cpu_ms_alone=11.0)
    assert cells["asyncio-256"].get("flags")
    assert staging.coarse_best(cells) == 16
    repeated, pruned = staging.prune_decision(cells)
    assert set(pruned) == {"threads-1", "threads-4", "threads-64", "threads-2048",
                           "processes"}
    assert set(repeated) == {"threads-11", "threads-16", "threads-23", "threads-32",
                             "threads-default", "naive-512", "asyncio-256", "gil-adapt",
                             "gil-adapt-auto"}
    assert "25% below" in pruned["threads-4"] and "threads-16" in pruned["threads-4"]
    assert "oom" in pruned["threads-1"]


def test_pruning_keeps_the_best_sizes_neighbours_even_far_below_another_kind():
    # asyncio wins by far: the sweep's best size and its neighbours are still repeated,
    # so the oracle is judged on full medians
    cells = {n: scoring.summarise_cell([cell_record(n, t)]) for n, t in [
        ("threads-1", 10.0), ("threads-2", 19.0), ("threads-3", 25.0), ("threads-4", 20.0),
        ("asyncio-32", 600.0), ("betapool", 5.0)]}
    cells["processes"] = {"status": "skipped", "reason": "not here"}
    repeated, pruned = staging.prune_decision(cells)
    assert set(repeated) == {"threads-2", "threads-3", "threads-4", "asyncio-32", "betapool"}
    assert set(pruned) == {"threads-1"}
    # no sweep and no fixed reference: nothing to judge against, nothing pruned but failures
    repeated, pruned = staging.prune_decision(
        {"gil-adapt": scoring.summarise_cell([cell_record("gil-adapt", 5.0)]),
         "processes": scoring.summarise_cell([cell_record("processes", 0.0, "failed")])})
    assert repeated == ["gil-adapt"] and list(pruned) == ["processes"]


def test_staged_estimate_bounds():
    est = staging.estimate(configs=2, workloads=10, fixed=12, adaptive=2, reps=3,
                           cell_s=10.0, extras_s=50.0, probes_s=35.0, pruned_share=0.6)
    assert est["stage1_s"] == 2 * (10 * 14 * 10.0 + 50.0)
    assert est["refinement_s"] == 2 * 10 * staging.REFINE_MAX * 10.0
    assert est["repeats_all_s"] == 2 * 2 * (10 * (14 + staging.REFINE_MAX) * 10.0 + 50.0)
    kept = 2 + 0.4 * (12 + staging.REFINE_MAX)
    assert est["repeats_typical_s"] == pytest.approx(2 * 2 * (10 * kept * 10.0 + 50.0))
    assert est["upper_s"] == pytest.approx(35.0 + est["stage1_s"] + est["refinement_s"]
                                           + est["repeats_all_s"])
    assert est["typical_s"] < est["upper_s"]
    none = staging.estimate(2, 10, 12, 2, 3, 10.0, 50.0, 35.0, pruned_share=0.0)
    assert none["typical_s"] == pytest.approx(none["upper_s"])
    one = staging.estimate(2, 10, 12, 2, 1, 10.0, 50.0, 35.0)
    assert one["repeats_all_s"] == one["repeats_typical_s"] == 0.0


def test_full_mode_is_staged_at_the_coarse_sweep_without_tpe():
    f = parse([])
    assert f.staged and f.sweep == strategies.COARSE_SWEEP == [1, 4, 16, 64, 256, 1024, 2048]
    names = [s.name for s in f.strategy_list()]
    assert [n for n in names if n.startswith("threads-") and n[8:].isdigit()] == [
        f"threads-{n}" for n in strategies.COARSE_SWEEP]
    assert not [n for n in names if n.startswith("tpe-")]
    for n in ("threads-default", "naive-512", "processes", "asyncio-32", "asyncio-256",
              "betapool", "gil-adapt", "gil-adapt-auto"):
        assert n in names
    assert "tpe-2048" in [s.name for s in parse(["--strategies", "all,tpe"]).strategy_list()]
    assert not parse(["--quick"]).staged
    explicit = parse(["--sweep", "1,2,4"])
    assert not explicit.staged and "tpe-2" in [s.name for s in explicit.strategy_list()]
    forced = parse(["--coarse-sweep", "4,1"])
    assert forced.staged and forced.sweep == [1, 4]


def test_dry_run_describes_the_staged_plan(capsys):
    text = runner.describe_plan(parse(["--configs", "1c-512m,2c-1g,4c-2g"]), host=[0, 1])
    assert "nothing is run" in text and "4c-2g: needs 4 cores" in text
    for part in ("stage 1", "refinement", "repetitions 2-3", "upper bound", "typical"):
        assert part in text, part
    static = runner.describe_plan(parse(["--quick"]), host=[0, 1])
    assert "static plan" in static
    assert bench.main(["--dry-run", "--configs", "1c-512m", "--workloads", "micro"]) == 0
    assert "upper bound" in capsys.readouterr().out


def test_progress_total_can_be_re_estimated():
    p = Progress(10, 100.0, enabled=False)
    for _ in range(4):
        p.step(10.0)
    p.set_total(20, 250.0)                     # a stage was planned: more to do
    assert p.total == 20 and p.estimate_total == 250.0
    p.set_total(3, 20.0)                       # corrected down: never below what is done
    assert p.total == 4 and p.estimate_total == 40.0
    assert p.eta_s() == 0.0


def test_refinement_rows_are_ordered_by_size():
    rows = {n: {"kind": strategies.parse_strategy(n).kind,
                "size": strategies.parse_strategy(n).size, "status": "ran", "reason": None}
            for n in ("threads-1", "threads-4", "threads-16", "asyncio-32", "gil-adapt")}
    out = runner.with_refinement(rows, {("1c-512m", "mixed"): {"refinement": [2, 8, 6]},
                                        ("1c-512m", "io"): {"refinement": [2, 3]}})
    assert list(out) == ["threads-1", "threads-2", "threads-3", "threads-4", "threads-6",
                         "threads-8", "threads-16", "asyncio-32", "gil-adapt"]
    assert out["threads-6"]["refinement"] and not out["threads-4"].get("refinement")


# ---- classifying a finished child ------------------------------------------------------

def test_classify():
    ok = {"ok": True, "throughput": 10.0, "errors": 0, "completed_total": 50}
    assert classify(0, ok, False, 0, 0, 512, 100.0, "", 60) == ("ok", "")
    status, reason = classify(-signal.SIGKILL, None, False, 1, 40, 512, 512.0, "", 60)
    assert status == "oom"
    assert "killed by the kernel" in reason and "512 MiB cap" in reason
    # a worker process of the tree was killed, the child itself reported the damage
    status, reason = classify(0, {"ok": False, "error": "BrokenProcessPool: dead"}, False,
                              1, 3, 512, None, "", 60)
    assert status == "oom" and "a process of the tree" in reason and "BrokenProcess" in reason
    # SIGKILL with the limit hit but no oom_kill counter (old v1 kernels)
    assert classify(-signal.SIGKILL, None, False, None, 9, 512, None, "", 60)[0] == "oom"
    status, reason = classify(None, None, True, 0, 0, 512, None, "", 120)
    assert status == "failed" and "timeout" in reason
    status, reason = classify(1, None, False, None, None, None, None,
                              "Traceback...\nImportError: numpy\n", 60)
    assert status == "failed" and "exit code 1" in reason and "ImportError" in reason
    status, reason = classify(-signal.SIGSEGV, None, False, 0, 0, 512, None, "", 60)
    assert "SIGSEGV" in reason
    bad = dict(ok, errors=5, completed_total=20, first_error="ValueError: x")
    assert classify(0, bad, False, 0, 0, 512, None, "", 60) == (
        "failed", "5 tasks raised (ValueError: x)")
    few = dict(ok, errors=1, completed_total=1000)
    assert classify(0, few, False, 0, 0, 512, None, "", 60)[0] == "ok"
    assert classify(0, {"ok": False, "error": "MemoryError: "}, False, 0, 0, 512, None,
                    "", 60)[0] == "oom"


# ---- results and report ----------------------------------------------------------------

def run(strategy, thr, status="ok", rep=0, workload="mixed", **kw):
    r = {"kind": "cell", "config": "1c-512m", "workload": workload, "strategy": strategy,
         "rep": rep, "status": status, "throughput": thr, "completed": 10,
         "buckets": [thr] * 4, "bucket_s": 0.5, "workers_final": 8,
         "latency_p50_s": 0.5, "latency_p99_s": 0.9, "peak_rss_tree_mib": 40.0}
    r.update(kw)
    return r


def synthetic_results(tmp_path):
    opts = Options(out=str(tmp_path), sweep=[1, 64, 512], reps=3, quick=True)
    runs = []
    for rep in range(3):
        runs += [run("threads-1", 15.0 + rep, rep=rep), run("threads-64", 100.0 + rep, rep=rep),
                 run("threads-512", 80.0, rep=rep), run("asyncio-32", 120.0, rep=rep),
                 run("gil-adapt", 97.0, rep=rep,
                     series=[{"t": 0.25, "workers": 4, "target_workers": 9, "beta": 0.1}])]
        runs.append(run("threads-512", 0.0, status="oom", rep=rep, workload="onnx",
                        reason="OOM: the benchmark process was killed by the kernel under "
                               "the 512 MiB cap"))
        runs.append(run("threads-1", 40.0, rep=rep, workload="onnx"))
    runs.append({"kind": "phase", "config": "1c-512m", "workload": "mixed>micro",
                 "strategy": "gil-adapt", "rep": 0, "status": "ok", "throughput": 1.0,
                 "buckets": [100.0] * 4 + [5.0, 300.0, 300.0, 300.0], "bucket_s": 0.5,
                 "switch_at_s": 2.0, "series": [{"t": 1.0, "workers": 3}]})
    runs.append({"kind": "overhead-dispatch", "config": "1c-512m", "strategy": "gil-adapt",
                 "status": "ok", "tasks_per_s": 2000.0})
    runs.append({"kind": "overhead-dispatch", "config": "1c-512m", "strategy": "tpe-default",
                 "status": "ok", "tasks_per_s": 1000.0})
    configs_rows = [{"name": "1c-512m", "cores": 1, "memory_bytes": 512 << 20,
                     "status": "ran", "cpus": [0], "memory_cap": "cgroup v1"},
                    {"name": "4c-2g", "cores": 4, "memory_bytes": 2 << 30,
                     "status": "skipped", "reason": "needs 4 cores; this host allows 2 "
                                                    "(never emulated)"}]
    workload_rows = {"mixed": {"description": "d", "io": "sleep", "status": "ran"},
                     "onnx": {"description": "d", "io": "x", "status": "ran"},
                     "micro": {"description": "d", "io": "sleep", "status": "ran"},
                     "analytics": {"description": "d", "io": "x", "status": "skipped",
                                   "reason": "needs pandas: not installed"}}
    runs += [run("threads-64", 300.0, rep=k, workload="micro") for k in range(3)]
    strategy_rows = {n: {"kind": strategies.parse_strategy(n).kind, "size": None,
                         "status": "ran", "reason": None}
                     for n in ("threads-1", "threads-64", "threads-512", "asyncio-32",
                               "gil-adapt")}
    strategy_rows["betapool"] = {"kind": "betapool", "size": None, "status": "skipped",
                                 "reason": "betapool is not installed"}
    env = {"cpu_model": "Test CPU", "host_cpus": [0, 1], "memory_total_bytes": 1 << 30,
           "kernel": "6.0", "python": "3.11", "python_build": "main", "implementation":
           "cpython", "libraries": {"numpy": "2.0", "betapool": None},
           "cgroup": {"description": "cgroup v1 (test)"}, "thread_env": {"OMP_NUM_THREADS": "1"}}
    return build_results(opts=opts, env=env, config_rows=configs_rows,
                         workload_rows=workload_rows, strategy_rows=strategy_rows, runs=runs,
                         loop_per_ms=20000.0, started=0.0, wall_s=12.0, interrupted=False,
                         stale_removed=["/sys/fs/cgroup/memory/gil-adapt-bench-1.2-3"],
                         cgroup_failure=None, server_cpus={"1c-512m": [1]})


def test_build_results_scores_and_skips(tmp_path):
    res = synthetic_results(tmp_path)
    cells = {(c["workload"], c["strategy"]): c for c in res["cells"]}
    assert cells[("mixed", "gil-adapt")]["pct_oracle"] == pytest.approx(97.0 / 101.0)
    assert cells[("mixed", "gil-adapt")]["pct_best_any"] == pytest.approx(97.0 / 120.0)
    assert cells[("mixed", "betapool")]["status"] == "skipped"
    assert "not installed" in cells[("mixed", "betapool")]["reason"]
    oom = cells[("onnx", "threads-512")]
    assert oom["status"] == "failed" and oom["failure"] == "oom" and oom["throughput"] == 0.0
    assert "512 MiB cap" in oom["reason"]
    mixed = next(s for s in res["summary"] if s["workload"] == "mixed")
    assert mixed["oracle"]["n"] == 64 and mixed["best_any"]["strategy"] == "asyncio-32"
    assert mixed["cliff"]["threads-512"] == pytest.approx(1 - 80.0 / 101.0)
    assert not any(c["workload"] == "analytics" for c in res["cells"])
    conv = {(c["workload"], c["event"]): c for c in res["convergence"]}
    assert conv[("mixed", "start")]["seconds"] == 0.0      # 97/101 >= 95 % from the start
    assert conv[("mixed>micro", "phase change")]["seconds"] == pytest.approx(0.5)
    assert res["overhead"][0]["ratio"] == pytest.approx(2.0)


def test_report_is_written_with_skips_and_failures(tmp_path):
    res = synthetic_results(tmp_path)
    paths = report.write(res, str(tmp_path / "out"), plots=False)
    with open(paths["results"]) as f:
        data = json.load(f)
    assert data["environment"]["cpu_model"] == "Test CPU"
    with open(paths["report"]) as f:
        md = f.read()
    for text in ("## Summary", "needs 4 cores", "betapool is not installed",
                 "needs pandas", "512 MiB cap", "OOM at 512", "## Convergence",
                 "## Overhead", "Plots disabled"):
        assert text in md, text
    summary = report.summary_text(res)
    assert "| 1c-512m | mixed |" in summary and "asyncio-32" in summary


def test_report_plots(tmp_path):
    pytest.importorskip("matplotlib")
    res = synthetic_results(tmp_path)
    report.write(res, str(tmp_path / "out"), plots=True)
    plots = sorted(os.listdir(tmp_path / "out" / "plots"))
    assert "1c-512m_mixed_sweep.png" in plots
    assert "1c-512m_mixed_timeline.png" in plots
    assert "1c-512m_phase_timeline.png" in plots


def test_pruned_cells_keep_one_repetition_and_the_report_says_so(tmp_path):
    opts = Options(out=str(tmp_path), sweep=[1, 4], reps=3, staged=True)
    runs = []
    for rep in range(3):
        runs += [run("threads-4", 100.0 + rep, rep=rep), run("threads-3", 95.0, rep=rep),
                 run("gil-adapt", 90.0, rep=rep)]
    runs.append(run("threads-1", 20.0))                 # pruned after repetition 1
    runs.append(run("threads-2", 45.0))
    stages = {("1c-512m", "mixed"): {
        "coarse_best": 4, "refinement": [2, 3],
        "pruned": {"threads-1": "first repetition 20.0 tasks/s, 80% below the best fixed",
                   "threads-2": "first repetition 45.0 tasks/s, 55% below the best fixed"}}}
    rows = {n: {"kind": strategies.parse_strategy(n).kind, "size": None, "status": "ran",
                "reason": None} for n in ("threads-1", "threads-4", "gil-adapt")}
    rows = runner.with_refinement(rows, stages)
    env = {"cpu_model": "Test CPU", "host_cpus": [0, 1], "memory_total_bytes": 1 << 30,
           "kernel": "6.0", "python": "3.11", "python_build": "main", "implementation":
           "cpython", "libraries": {}, "cgroup": {"description": "none"},
           "thread_env": {"OMP_NUM_THREADS": "1"}}
    res = build_results(opts=opts, env=env,
                        config_rows=[{"name": "1c-512m", "cores": 1, "memory_bytes": 512 << 20,
                                      "status": "ran", "cpus": [0]}],
                        workload_rows={"mixed": {"description": "d", "io": "sleep",
                                                 "status": "ran"}},
                        strategy_rows=rows, runs=runs, loop_per_ms=20000.0, started=0.0,
                        wall_s=1.0, interrupted=False, stale_removed=[], cgroup_failure=None,
                        server_cpus={}, stages=stages)
    cells = {c["strategy"]: c for c in res["cells"]}
    assert [c["strategy"] for c in res["cells"]] == ["threads-1", "threads-2", "threads-3",
                                                     "threads-4", "gil-adapt"]
    assert cells["threads-1"]["pruned"] and cells["threads-1"]["reps"] == 1
    assert cells["threads-1"]["throughput"] == 20.0
    assert not cells["threads-4"]["pruned"] and cells["threads-4"]["reps"] == 3
    assert res["summary"][0]["oracle"]["n"] == 4
    p = res["protocol"]
    assert p["staged"] and p["pruning"]["prune_below"] == 0.2
    assert p["pruning"]["coarse_sweep"] == [1, 4]
    assert p["pruning"]["cells"][0]["refinement"] == [2, 3]
    assert (p["pruning"]["pruned_cells"], p["pruning"]["cells_run"]) == (2, 5)
    paths = report.write(res, str(tmp_path / "out"), plots=False)
    with open(paths["report"]) as f:
        md = f.read()
    assert "were not repeated: 2 of 5 cells" in md
    assert "pruned: 1 repetition" in md and "N*=4: +2, 3" in md
    # a static run has no pruning
    assert synthetic_results(tmp_path)["protocol"]["pruning"] is None


# ---- command line ----------------------------------------------------------------------

def parse(argv):
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return bench.options_from_args(p.parse_args(argv))


def test_quick_and_full_defaults():
    q = parse(["--quick"])
    assert q.quick and [c.name for c in q.configs] == ["1c-512m"]
    assert q.sweep == strategies.QUICK_SWEEP and q.reps == 3
    assert "mixed" in q.workloads and "onnx-mobilenetv2" in q.workloads
    assert q.inflight_for() == 1024
    f = parse([])
    assert [c.name for c in f.configs] == ["1c-512m", "2c-1g", "4c-2g"]
    assert len(f.workloads) == 10 and f.sweep[-1] == 2048 and f.inflight_for() == 4096
    o = parse(["--workloads", "io,rag", "--strategies", "threads,gil-adapt", "--sweep",
               "8,2", "--reps", "5", "--out", "x"])
    assert o.workloads == ["io", "rag"] and o.sweep == [2, 8] and o.reps == 5


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="unknown workload"):
        parse(["--workloads", "mixed,nope"])
    with pytest.raises(ValueError, match="unknown strategy"):
        parse(["--strategies", "threads-x"])


def test_list(capsys):
    assert bench.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "onnx-mobilenetv2" in out and "gil-adapt" in out
