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
from gil_adapt.bench import configs, report, runner, strategies
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
