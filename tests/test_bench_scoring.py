"""gil-adapt bench: medians, oracle and best-any selection, scores, cliff, convergence.

Pure functions of run records: no processes, no timing.
"""
from __future__ import annotations

import pytest

from gil_adapt.bench import scoring
from gil_adapt.bench.runner import _median_known


def ok(thr, **kw):
    return {"status": "ok", "throughput": thr, "completed": 10, **kw}


def test_summarise_median_and_spread():
    cell = scoring.summarise_cell([ok(90.0), ok(100.0), ok(120.0)])
    assert cell["status"] == "ok"
    assert cell["throughput"] == 100.0
    assert (cell["throughput_min"], cell["throughput_max"]) == (90.0, 120.0)
    assert cell["spread"] == pytest.approx(0.3)
    assert cell["reps"] == cell["reps_ok"] == 3


def test_failed_repetitions_count_as_zero():
    oom = {"status": "oom", "reason": "OOM: killed under the 512 MiB cap"}
    partial = scoring.summarise_cell([ok(100.0), oom, ok(80.0)])
    assert partial["status"] == "partial"
    assert partial["throughput"] == 80.0          # median of 100, 0, 80
    assert partial["failure"] == "oom"
    assert "1/3 repetitions failed" in partial["reason"]
    assert "512 MiB" in partial["reason"]
    failed = scoring.summarise_cell([oom, oom, ok(50.0)])
    assert failed["status"] == "partial" and failed["throughput"] == 0.0
    all_failed = scoring.summarise_cell([oom, {"status": "failed", "reason": "timeout"}])
    assert all_failed["status"] == "failed"
    assert all_failed["failure"] == "oom"          # OOM wins over other failures
    assert "timeout" in all_failed["reason"]


def test_skipped_cell_keeps_reason():
    cell = scoring.summarise_cell([{"status": "skipped", "reason": "betapool not installed"}])
    assert cell == {"status": "skipped", "reason": "betapool not installed", "reps": 0}


def test_note_when_no_task_completed_in_window():
    cell = scoring.summarise_cell([ok(0.0, completed=0), ok(10.0)])
    assert "no task" in cell["note"]


def cells(**thr):
    return {name.replace("_", "-"): {"status": "ok", "throughput": t}
            for name, t in thr.items()}


def test_oracle_is_best_sweep_point_only():
    c = cells(threads_1=10.0, threads_64=100.0, threads_512=80.0, naive_512=120.0,
              processes=130.0)
    c["gil-adapt"] = {"status": "ok", "throughput": 150.0}
    oracle = scoring.pick_oracle(c)
    assert oracle == {"strategy": "threads-64", "n": 64, "throughput": 100.0}


def test_oracle_ties_go_to_fewer_threads_and_failures_are_ignored():
    c = cells(threads_4=100.0, threads_16=100.0)
    c["threads-1024"] = {"status": "failed", "throughput": 0.0}
    c["threads-2048"] = {"status": "skipped"}
    assert scoring.pick_oracle(c)["n"] == 4
    assert scoring.pick_oracle({"threads-8": {"status": "failed", "throughput": 0.0}}) is None


def test_best_any_is_fixed_strategies_of_any_kind_not_adaptive():
    c = cells(threads_64=100.0, asyncio_32=135.0, processes=110.0, tpe_64=90.0)
    c["gil-adapt"] = {"status": "ok", "throughput": 200.0}
    c["betapool"] = {"status": "ok", "throughput": 300.0}
    assert scoring.pick_best_any(c) == {"strategy": "asyncio-32", "throughput": 135.0}


def test_score_cells_shares_and_cliff():
    c = cells(threads_1=20.0, threads_64=100.0, threads_512=78.0, threads_2048=60.0,
              asyncio_256=125.0)
    c["gil-adapt"] = {"status": "ok", "throughput": 97.0}
    c["betapool"] = {"status": "skipped", "reason": "absent"}
    summary = scoring.score_cells(c)
    assert summary["oracle"]["n"] == 64
    assert summary["best_any"]["strategy"] == "asyncio-256"
    assert c["gil-adapt"]["pct_oracle"] == pytest.approx(0.97)
    assert c["gil-adapt"]["pct_best_any"] == pytest.approx(97.0 / 125.0)
    assert c["betapool"]["pct_oracle"] is None
    assert summary["cliff"] == {"threads-512": pytest.approx(0.22),
                                "threads-2048": pytest.approx(0.40)}


def test_scores_without_an_oracle_are_unknown_not_zero():
    c = {"threads-1": {"status": "failed", "throughput": 0.0},
         "gil-adapt": {"status": "ok", "throughput": 5.0}}
    summary = scoring.score_cells(c)
    assert summary["oracle"] is None and summary["cliff"] == {}
    assert c["gil-adapt"]["pct_oracle"] is None


def test_share():
    assert scoring.share(50.0, 100.0) == 0.5
    assert scoring.share(None, 100.0) is None
    assert scoring.share(5.0, 0.0) is None


def test_convergence_running_mean():
    b = [10.0, 50.0, 96.0, 100.0, 99.0, 101.0]
    assert scoring.convergence_s(b, 0.5, 100.0) == pytest.approx(1.0)
    # a dip that drags the running mean under 95 % later means it had not converged
    assert scoring.convergence_s([100.0, 100.0, 50.0, 100.0], 0.5, 100.0) == 1.5
    assert scoring.convergence_s([10.0, 20.0], 0.5, 100.0) is None
    # from a phase change: counted from the switch bucket
    assert scoring.convergence_s([100.0, 100.0, 5.0, 99.0, 100.0], 0.5, 100.0,
                                 start=2) == 0.5
    assert scoring.convergence_s([], 0.5, 100.0) is None


def test_median_with_never_converged_as_infinity():
    assert _median_known([1.0, 2.0, None]) == 2.0
    assert _median_known([1.0, None, None]) is None
    assert _median_known([3.0, 1.0, 2.0]) == 2.0
    assert _median_known([], 0) is None


def test_efficiency_means_and_worst_cell_per_strategy():
    cells = [
        {"config": "1c", "workload": "a", "strategy": "gil-adapt", "status": "ok",
         "pct_oracle": 1.0, "pct_best_any": 0.9},
        {"config": "1c", "workload": "b", "strategy": "gil-adapt", "status": "failed",
         "pct_oracle": 0.0, "pct_best_any": 0.0},
        {"config": "1c", "workload": "c", "strategy": "gil-adapt", "status": "ok",
         "pct_oracle": None, "pct_best_any": None},          # no oracle: not scored
        {"config": "1c", "workload": "a", "strategy": "naive-512", "status": "skipped",
         "pct_oracle": None, "pct_best_any": None},
        {"config": "1c", "workload": "a", "strategy": "processes", "status": "ok",
         "pct_oracle": 0.5, "pct_best_any": 0.4},
    ]
    eff = scoring.efficiency(cells, ["gil-adapt", "naive-512", "processes"])
    assert [e["strategy"] for e in eff] == ["gil-adapt", "processes"]
    ga = eff[0]
    assert ga["cells"] == 2 and ga["unscored"] == 1
    assert ga["mean_pct_oracle"] == 0.5 and ga["mean_pct_best_any"] == 0.45
    assert ga["worst_pct_best_any"] == 0.0 and ga["worst_cell"] == "1c/b"
    assert eff[1]["mean_pct_best_any"] == 0.4


def test_soundness_flags_cpu_above_the_cores():
    cell = scoring.summarise_cell([ok(100.0, cpu_utilisation=0.97),
                                   ok(101.0, cpu_utilisation=1.30)])
    assert cell["cpu_utilisation_max"] == 1.30
    flags = scoring.soundness(cell, "threads-4", cores=1, measure_s=6.0, cpu_ms_alone=None)
    assert len(flags) == 1 and "above what they allow" in flags[0]
    fine = scoring.summarise_cell([ok(100.0, cpu_utilisation=0.99)])
    assert scoring.soundness(fine, "threads-4", cores=1, measure_s=6.0, cpu_ms_alone=None) == []


def test_soundness_judges_the_cpu_certainly_used_where_recorded():
    # interpolation read 106 % (late sampler timestamps); the bracketed floor 97 %
    cell = scoring.summarise_cell([ok(100.0, cpu_utilisation=1.06, cpu_utilisation_floor=0.97)])
    assert cell["cpu_utilisation_floor_max"] == 0.97
    assert scoring.soundness(cell, "threads-4", cores=1, measure_s=6.0, cpu_ms_alone=None) == []
    wrong = scoring.summarise_cell([ok(100.0, cpu_utilisation=1.3, cpu_utilisation_floor=1.2)])
    assert scoring.soundness(wrong, "threads-4", cores=1, measure_s=6.0, cpu_ms_alone=None)


def test_soundness_judges_the_cpu_used_not_the_task_alone():
    # 133 tasks/s of a task that took 10.2 ms alone, on one core: the CPU sped up under
    # load (7.5 ms a task in the window, 99 % of the core used); not a fault
    cell = scoring.summarise_cell([ok(133.0, cpu_utilisation=0.99,
                                      cpu_ms_per_task_window=7.46)])
    assert scoring.soundness(cell, "threads-16", cores=1, measure_s=6.0,
                             cpu_ms_alone=10.2) == []


def test_soundness_flags_windows_of_too_few_waves():
    # 256 tasks at once x 11 ms on one core: waves 2.8 s apart; 6 s is about two
    cell = scoring.summarise_cell([ok(90.0)])
    flags = scoring.soundness(cell, "asyncio-256", cores=1, measure_s=6.0, cpu_ms_alone=11.0)
    assert len(flags) == 1 and "waves" in flags[0]
    assert scoring.soundness(cell, "asyncio-256", cores=1, measure_s=9.0, cpu_ms_alone=11.0) == []
    assert scoring.soundness(cell, "asyncio-16", cores=1, measure_s=6.0, cpu_ms_alone=11.0) == []
    # an adaptive strategy's size is the workers it held
    held = scoring.summarise_cell([ok(90.0, workers_final=400)])
    assert scoring.soundness(held, "gil-adapt", cores=1, measure_s=6.0, cpu_ms_alone=11.0)


def test_flagged_cells_are_neither_oracle_nor_best_any():
    cells = {"threads-4": scoring.summarise_cell([ok(100.0)]),
             "threads-256": scoring.summarise_cell([ok(150.0)]),
             "asyncio-256": scoring.summarise_cell([ok(160.0)])}
    cells["threads-256"]["flags"] = ["window too short"]
    cells["asyncio-256"]["flags"] = ["window too short"]
    s = scoring.score_cells(cells)
    assert s["oracle"]["strategy"] == "threads-4"
    assert s["best_any"]["strategy"] == "threads-4"
    assert cells["asyncio-256"]["pct_best_any"] == pytest.approx(1.6)  # still reported


def _run(strategy, thr, workers, buckets, window_start=1.0):
    """A run record of a closed-loop cell: 0.5 s buckets, the executor sampled each 0.5 s."""
    series = [{"t": 0.5 * i, "workers": workers, "target_workers": workers,
               "decisions": {"grow": i, "shrink": 0}, "last_reason": f"step {i}"}
              for i in range(len(buckets))]
    return {"config": "1c", "workload": "mixed", "strategy": strategy, "status": "ok",
            "throughput": thr, "window_start_s": window_start, "bucket_s": 0.5,
            "buckets": buckets, "series": series}


def _results(cells, runs, oracle_n=16):
    return {"protocol": {"measure_s": 2.0}, "cells": cells, "runs": runs,
            "summary": [{"config": "1c", "workload": "mixed",
                         "oracle": {"strategy": f"threads-{oracle_n}", "n": oracle_n,
                                    "throughput": 100.0},
                         "best_any": {"strategy": "asyncio-32", "throughput": 110.0}}]}


def test_misses_list_cells_below_the_bar_with_why():
    cells = [
        {"config": "1c", "workload": "mixed", "strategy": "gil-adapt", "status": "ok",
         "throughput": 80.0, "throughput_max": 85.0, "pct_oracle": 0.80,
         "pct_best_any": 0.73},
        {"config": "1c", "workload": "mixed", "strategy": "gil-adapt-auto", "status": "ok",
         "throughput": 108.5, "throughput_max": 110.0, "pct_oracle": 1.085,
         "pct_best_any": 108.5 / 110.0, "backend": "auto: threads"},
        {"config": "1c", "workload": "mixed", "strategy": "threads-16", "status": "ok",
         "throughput": 100.0, "pct_oracle": 1.0, "pct_best_any": 0.91},
    ]
    # held 6 workers against the oracle's 16, ramping: 40 then 100 tasks/s in the window
    # (buckets 2..5 are the window [1 s, 3 s))
    runs = [_run("gil-adapt", 80.0, 6, [0, 0, 40, 40, 100, 100, 0]),
            _run("gil-adapt-auto", 108.5, 16, [0, 0, 108, 109, 108, 109, 0])]
    found = scoring.misses(_results(cells, runs))
    assert [m["strategy"] for m in found] == ["gil-adapt"]  # auto: 98.6 % of best-any
    m = found[0]
    assert m["against"] == "oracle" and m["score"] == 0.80
    assert m["workers_held"] == 6 and m["grow_in_window"] == 3
    assert m["first_half"] == 40 and m["second_half"] == 100
    why = " | ".join(m["why"])
    assert "fewer workers than the best fixed size (6 vs 16)" in why
    assert "still ramping" in why
    assert "best repetition" not in why  # 85 % < 98 %
    assert "last decision in the window: step 5" in why  # the window's last sample


def test_misses_say_where_each_task_cost_more_cpu_and_faults():
    cells = [
        {"config": "1c", "workload": "mixed", "strategy": "gil-adapt", "status": "ok",
         "throughput": 62.0, "throughput_max": 63.0, "pct_oracle": 0.62, "pct_best_any": 0.56,
         "cpu_ms_per_task_window": 0.70, "faults_per_task_window": 231.0},
        {"config": "1c", "workload": "mixed", "strategy": "threads-16", "status": "ok",
         "throughput": 100.0, "pct_oracle": 1.0, "pct_best_any": 0.91,
         "cpu_ms_per_task_window": 0.42, "faults_per_task_window": 35.0},
    ]
    runs = [_run("gil-adapt", 62.0, 16, [0, 0, 62, 62, 62, 62, 0])]
    why = " | ".join(scoring.misses(_results(cells, runs))[0]["why"])
    assert ("each task took 0.70 ms of CPU against 0.42 ms at threads-16 (+67%), "
            "231 against 35 page faults per task") in why
    # within 10 % of the reference's CPU per task: nothing said; no faults: CPU only
    cells[0]["cpu_ms_per_task_window"] = 0.46
    assert "ms of CPU" not in " | ".join(scoring.misses(_results(cells, runs))[0]["why"])
    cells[0]["cpu_ms_per_task_window"] = 0.70
    del cells[1]["faults_per_task_window"]
    why = " | ".join(scoring.misses(_results(cells, runs))[0]["why"])
    assert "at threads-16 (+67%)" in why and "page faults" not in why


def test_misses_of_auto_name_the_kind_of_best_any_and_the_spread():
    cells = [{"config": "1c", "workload": "mixed", "strategy": "gil-adapt-auto",
              "status": "ok", "throughput": 100.0, "throughput_max": 109.0,
              "pct_oracle": 1.0, "pct_best_any": 100.0 / 110.0, "backend": "auto: threads"}]
    runs = [_run("gil-adapt-auto", 100.0, 16, [0, 0, 100, 100, 100, 100, 0])]
    (m,) = scoring.misses(_results(cells, runs))
    why = " | ".join(m["why"])
    assert "best repetition reached 99%" in why
    assert "best-any is asyncio-32 (asyncio); it ran on auto: threads" in why
    assert "size" not in why  # best-any is no thread pool: no size to compare with
    # work on the event loops holds no threads: no size to compare, the kinds are named
    cells[0]["backend"] = "auto: asyncio"
    runs[0]["series"] = [dict(x, workers=0) for x in runs[0]["series"]]
    results = _results(cells, runs)
    results["summary"][0]["best_any"] = {"strategy": "threads-16", "throughput": 110.0}
    why = " | ".join(scoring.misses(results)[0]["why"])
    assert "fewer workers" not in why
    assert "best-any is threads-16 (threads); it ran on auto: asyncio" in why
    cells[0]["backend"] = "auto: threads"
    # at the bar nothing is listed
    cells[0]["pct_best_any"] = 0.98
    assert scoring.misses(_results(cells, runs)) == []


def test_report_lists_the_misses_or_says_there_are_none():
    from gil_adapt.bench import report

    cells = [{"config": "1c", "workload": "mixed", "strategy": "gil-adapt", "status": "ok",
              "throughput": 80.0, "throughput_max": 85.0, "pct_oracle": 0.80,
              "pct_best_any": 0.73}]
    runs = [_run("gil-adapt", 80.0, 6, [0, 0, 80, 80, 80, 80, 0])]
    text = "\n".join(report.misses_section(_results(cells, runs)))
    assert "## Where gil-adapt is below 98%" in text
    assert "| 1c | mixed | gil-adapt | 80% of oracle (threads-16) | 85% | 6 (6) |" in text
    cells[0]["pct_oracle"] = 0.99
    text = "\n".join(report.misses_section(_results(cells, runs)))
    assert "In every scored cell gil-adapt is at or above 98%" in text
    assert report.misses_section(_results([], [])) == []  # neither ran: no section


def _reps(*thr, fail_rep=None):
    """A cell's repetitions 0, 1, ... with those throughputs (fail_rep: that one OOM)."""
    return scoring.summarise_cell([
        {"status": "oom", "reason": "OOM", "rep": i} if i == fail_rep else ok(t, rep=i)
        for i, t in enumerate(thr)])


def test_fresh_reference_picks_on_the_first_repetition_and_measures_on_the_rest():
    # threads-16 ran high in its first repetition and low later; threads-8 steady
    cells = {"threads-8": _reps(100.0, 100.0, 100.0),
             "threads-16": _reps(120.0, 90.0, 92.0),
             "threads-32": _reps(95.0),                      # pruned: one repetition
             "asyncio-256": _reps(110.0, 105.0, 107.0),
             "gil-adapt": _reps(98.0, 97.0, 99.0)}
    s = scoring.score_cells(cells)
    assert s["oracle"]["strategy"] == "threads-8"            # highest median: 100
    assert s["oracle_fresh"] == {"strategy": "threads-16", "throughput": 91.0,
                                 "first": 120.0, "reps": 2}
    assert s["best_any_fresh"]["strategy"] == "threads-16"   # 120 first: fixed of any kind
    ga = cells["gil-adapt"]
    assert ga["pct_oracle"] == pytest.approx(0.98)
    assert ga["pct_oracle_fresh"] == pytest.approx(98.0 / 91.0)
    assert "pct_oracle_fresh" not in cells["threads-8"]      # fixed cells: no fresh score
    # a failed later repetition counts as 0; a flagged cell is no reference
    cells["threads-16"] = _reps(120.0, 90.0, 92.0, fail_rep=2)
    assert scoring.score_cells(cells)["oracle_fresh"]["throughput"] == 45.0
    cells["threads-16"]["flags"] = ["window too short"]
    assert scoring.score_cells(cells)["oracle_fresh"]["strategy"] == "threads-8"
    # one repetition everywhere: no fresh reference, no fresh score
    single = {"threads-8": _reps(100.0), "gil-adapt": _reps(99.0)}
    s = scoring.score_cells(single)
    assert s["oracle_fresh"] is None and single["gil-adapt"]["pct_oracle_fresh"] is None


def test_misses_and_the_tally_give_the_fresh_score():
    cells = [
        {"config": "1c", "workload": "mixed", "strategy": "gil-adapt", "status": "ok",
         "throughput": 95.0, "throughput_max": 96.0, "pct_oracle": 0.95,
         "pct_best_any": 0.86, "pct_oracle_fresh": 1.01},
        {"config": "1c", "workload": "micro", "strategy": "gil-adapt", "status": "ok",
         "pct_oracle": 1.0, "pct_oracle_fresh": 0.90},
    ]
    runs = [_run("gil-adapt", 95.0, 16, [0, 0, 95, 95, 95, 95, 0])]
    results = _results(cells, runs)
    results["summary"][0]["oracle_fresh"] = {"strategy": "threads-23", "throughput": 94.1,
                                             "first": 104.0, "reps": 2}
    (m,) = scoring.misses(results)
    assert m["fresh_score"] == 1.01
    why = " | ".join(m["why"])
    assert ("against the oracle picked on the first repetition and measured on the later "
            "ones (threads-23, 94.1 tasks/s): 101%: at the bar, the miss is within the "
            "pick's bias") in why
    t = scoring.fresh_tally(cells, "gil-adapt")
    assert t["at_bar"] == 1 and t["cells"] == 2
    assert t["mean"] == pytest.approx(0.955) and t["min"] == 0.90
    assert scoring.fresh_tally(cells, "gil-adapt-auto") is None
    from gil_adapt.bench import report

    text = "\n".join(report.misses_section(results))
    assert "gil-adapt at or above 98% in 1 of 2 cells, mean 96%, lowest 90%" in text


def test_rescore_scores_a_recorded_run_again_with_its_flags():
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "rescore.py")
    spec = importlib.util.spec_from_file_location("rescore", path)
    rescore = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rescore)

    def run(strategy, rep, thr):
        return {"kind": "cell", "config": "1c", "workload": "mixed", "strategy": strategy,
                "rep": rep, "status": "ok", "throughput": thr, "completed": 10}

    runs = [run("threads-8", i, t) for i, t in enumerate((100.0, 100.0, 100.0))]
    runs += [run("threads-16", i, t) for i, t in enumerate((130.0, 90.0, 92.0))]
    runs += [run("threads-32", i, t) for i, t in enumerate((140.0, 140.0, 140.0))]
    runs += [run("gil-adapt", i, t) for i, t in enumerate((98.0, 97.0, 99.0))]
    flagged = {"config": "1c", "workload": "mixed", "strategy": "threads-32",
               "flags": ["CPU above the cores"]}
    cells = {c["strategy"]: c for c in rescore.rescore({"runs": runs, "cells": [flagged]})}
    ga = cells["gil-adapt"]
    assert ga["summary"]["oracle"]["strategy"] == "threads-8"   # threads-32 flagged
    assert ga["pct_oracle"] == pytest.approx(0.98)
    assert ga["summary"]["oracle_fresh"]["strategy"] == "threads-16"
    assert ga["pct_oracle_fresh"] == pytest.approx(98.0 / 91.0)
