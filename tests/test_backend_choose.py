"""The auto-mode decision, per function, from measured figures (pure: no clock, no I/O)."""
from __future__ import annotations

from typing import Optional

from dataclasses import replace

import pytest

from gil_adapt.backends.choose import (Backend, Chooser, Policy, Profile, Resources, classify,
                                       predicted_gain)

TWO = Resources(usable_cores=2.0, process_workers_fit=4)
ONE = Resources(usable_cores=1.0, process_workers_fit=4)


def gil_cpu(tasks: int = 100, throughput: float = 190.0, backlog: bool = True,
            cpu_ms: float = 5.0) -> Profile:
    """Pure-Python CPU tasks on threads: 5 ms CPU under the GIL, waiting for it as long."""
    cpu = cpu_ms / 1e3
    return Profile(tasks=tasks, elapsed_s=tasks / throughput, wall_s=2 * cpu, cpu_s=cpu,
                   gil_wait_s=cpu, gil_held_s=cpu * 0.98, backlog=backlog)


def on_processes(throughput: float, tasks: int = 100, backlog: bool = True,
                 io_ms: float = 0.0, cpu_ms: float = 5.0) -> Profile:
    cpu = cpu_ms / 1e3
    return Profile(tasks=tasks, elapsed_s=tasks / throughput, wall_s=cpu + io_ms / 1e3,
                   cpu_s=cpu, backlog=backlog)


def to_processes(c: Chooser, t: float = 0.0, r: Resources = TWO) -> float:
    """Drives a chooser through the confirming windows into a trial; returns the time."""
    for _ in range(c.policy.confirm):
        d = c.update(t, r, threads=gil_cpu())
        t += 1.0
    assert d.backend == Backend.PROCESSES and d.trial and d.switched, d
    return t


# ---- classification and prediction ---------------------------------------------------------

@pytest.mark.parametrize("profile, kind", [
    (gil_cpu(), "gil_cpu"),
    (Profile(100, 1.0, wall_s=0.060, cpu_s=0.010, gil_wait_s=0.001, gil_held_s=0.01), "io"),
    (Profile(100, 1.0, wall_s=0.010, cpu_s=0.010, gil_held_s=0.001), "native_cpu"),
    (Profile(100, 1.0, wall_s=0.010, cpu_s=0.008, gil_wait_s=0.002), "gil_cpu"),
    (Profile(100, 1.0, wall_s=0.010, cpu_s=0.010, gil_wait_s=0.0), "native_cpu"),
    (Profile(5, 1.0, wall_s=0.010, cpu_s=0.010), "unknown"),
])
def test_classify(profile: Profile, kind: str) -> None:
    assert classify(profile)[0] == kind


def test_predicted_gain_follows_cores_memory_and_overhead() -> None:
    p = gil_cpu()
    assert predicted_gain(p, TWO) == pytest.approx(2 * 0.98 * 0.005 / 0.0053, rel=1e-6)
    assert predicted_gain(p, ONE) < 1.0
    assert predicted_gain(p, Resources(2.0, process_workers_fit=1)) < 1.0
    tiny = gil_cpu(cpu_ms=0.05)
    assert predicted_gain(tiny, TWO) < 1.0  # the round trip costs more than it gains


# ---- from threads to a trial ---------------------------------------------------------------

def test_gil_saturated_cpu_goes_to_processes_after_confirmation() -> None:
    c = Chooser("m:f")
    first = c.update(0.0, TWO, threads=gil_cpu())
    assert first.backend == Backend.THREADS and "confirming" in first.reason
    second = c.update(1.0, TWO, threads=gil_cpu())
    assert second.backend == Backend.PROCESSES and second.trial and second.switched
    assert c.in_trial and c.switches == 1


def test_a_window_that_disagrees_restarts_confirmation() -> None:
    c = Chooser("m:f")
    c.update(0.0, TWO, threads=gil_cpu())
    assert c.update(1.0, TWO, threads=gil_cpu(backlog=False)).backend == Backend.THREADS
    assert c.update(2.0, TWO, threads=gil_cpu()).backend == Backend.THREADS
    assert c.update(3.0, TWO, threads=gil_cpu()).backend == Backend.PROCESSES


@pytest.mark.parametrize("resources, profile, words", [
    (ONE, gil_cpu(), "usable core"),
    (Resources(2.0, process_workers_fit=1), gil_cpu(), "memory budget fits 1"),
    (Resources(2.0, process_workers_fit=0), gil_cpu(), "memory budget fits 0"),
    (TWO, gil_cpu(backlog=False), "keep up"),
    (TWO, gil_cpu(cpu_ms=0.5), "too short"),
    (TWO, gil_cpu(tasks=3), "measuring"),
    (TWO, Profile(100, 1.0, wall_s=0.06, cpu_s=0.01, gil_wait_s=0.001), "I/O bound"),
    (TWO, Profile(100, 1.0, wall_s=0.01, cpu_s=0.01, gil_held_s=0.001), "outside the GIL"),
    (Resources(1.6, process_workers_fit=4, process_overhead_s=0.01), gil_cpu(), "not pay"),
])
def test_stays_on_threads(resources: Resources, profile: Profile, words: str) -> None:
    c = Chooser("m:f")
    for t in range(5):
        d = c.update(float(t), resources, threads=profile)
        assert d.backend == Backend.THREADS and not d.switched
    assert words in d.reason
    assert c.switches == 0


def test_one_core_stays_on_threads() -> None:
    c = Chooser("m:f")
    for t in range(20):
        assert c.update(float(t), ONE, threads=gil_cpu()).backend == Backend.THREADS


def test_cgroup_quota_counts_as_cores() -> None:
    quota_one = Resources(usable_cores=1.0)  # e.g. 4 CPUs in the mask, cpu.max = 1 core
    c = Chooser("m:f")
    for t in range(5):
        assert c.update(float(t), quota_one, threads=gil_cpu()).backend == Backend.THREADS


def test_refused_and_coroutine_functions() -> None:
    c = Chooser("m:f")
    c.refuse_processes("its function cannot be pickled")
    for t in range(5):
        d = c.update(float(t), TWO, threads=gil_cpu())
    assert d.backend == Backend.THREADS and "cannot be pickled" in d.reason
    a = Chooser("m:coro", is_coroutine=True)
    assert a.backend == Backend.ASYNCIO
    d = a.update(0.0, ONE, threads=gil_cpu())
    assert d.backend == Backend.ASYNCIO and not d.switched and a.switches == 0


# ---- the trial: measured after switching -----------------------------------------------------

def test_trial_that_pays_keeps_processes() -> None:
    c = Chooser("m:f")
    t = to_processes(c)
    assert "measuring" in c.update(t, TWO, processes=on_processes(380.0, tasks=5)).reason
    d = c.update(t + 2.0, TWO, processes=on_processes(380.0))
    assert d.backend == Backend.PROCESSES and "pay" in d.reason and not c.in_trial
    for k in range(10):  # keeps paying: stays
        assert c.update(t + 3 + k, TWO, processes=on_processes(370.0)).backend == \
            Backend.PROCESSES
    assert c.switches == 1


def test_trial_that_does_not_pay_goes_back_with_backoff() -> None:
    pol = Policy(backoff_s=30.0, backoff_max_s=100.0)
    c = Chooser("m:f", policy=pol)
    t = to_processes(c)
    d = c.update(t + 2.0, TWO, processes=on_processes(200.0))
    assert d.backend == Backend.THREADS and d.switched and "did not pay" in d.reason
    back = t + 2.0
    # within the backoff: stays on threads whatever the figures
    for k in range(1, 29, 5):
        d = c.update(back + k, TWO, threads=gil_cpu())
        assert d.backend == Backend.THREADS and "next try" in d.reason
    # after it: confirms again, tries again; a second failure doubles the wait
    t2 = to_processes(c, back + 31.0)
    c.update(t2 + 2.0, TWO, processes=on_processes(200.0))
    assert c.retry_at == pytest.approx(t2 + 2.0 + 60.0)
    t3 = to_processes(c, c.retry_at + 1.0)
    c.update(t3 + 2.0, TWO, processes=on_processes(200.0))
    assert c.retry_at == pytest.approx(t3 + 2.0 + 100.0)  # capped
    assert c.failed_trials == 3


def test_trial_that_cleared_the_backlog_pays() -> None:
    c = Chooser("m:f")
    t = to_processes(c)
    d = c.update(t + 2.0, TWO, processes=on_processes(195.0, backlog=False))
    assert d.backend == Backend.PROCESSES and "backlog" in d.reason


def test_switch_back_when_processes_stop_paying() -> None:
    c = Chooser("m:f")
    t = to_processes(c)
    c.update(t + 2.0, TWO, processes=on_processes(380.0))
    assert c.update(t + 3.0, TWO, processes=on_processes(150.0)).backend == Backend.PROCESSES
    d = c.update(t + 4.0, TWO, processes=on_processes(150.0))
    assert d.backend == Backend.THREADS and "stopped paying" in d.reason and d.switched
    assert c.retry_at > t + 4.0


def test_switch_back_when_it_turns_io_bound() -> None:
    c = Chooser("m:f")
    t = to_processes(c)
    c.update(t + 2.0, TWO, processes=on_processes(380.0))
    for k in range(2):
        d = c.update(t + 3.0 + k, TWO, processes=on_processes(380.0, io_ms=50.0))
    assert d.backend == Backend.THREADS and "I/O bound" in d.reason
    # the work changed kind, processes did not fail it: no back-off before the next move
    assert c.retry_at <= t + 4.0 and c.failed_trials == 0
    t2 = to_processes(c, t + 5.0)
    assert c.backend == Backend.PROCESSES and t2 >= t + 5.0


@pytest.mark.parametrize("cpu_ms", [0.5, 40.0])
def test_other_work_on_processes_goes_back_to_be_measured(cpu_ms: float) -> None:
    # a function that funnels many kinds of work (dask): NumPy after Python CPU is still
    # CPU-bound and "pays" against the old baseline, but its GIL use is unknown there
    c = Chooser("m:f")
    t = to_processes(c)
    c.update(t + 2.0, TWO, processes=on_processes(380.0))  # the trial pays
    assert c.backend == Backend.PROCESSES
    same = c.update(t + 3.0, TWO, processes=on_processes(2000.0, cpu_ms=6.0))
    assert same.backend == Backend.PROCESSES and same.reason == "processes pay"
    for k in range(2):
        d = c.update(t + 4.0 + k, TWO, processes=on_processes(2000.0, cpu_ms=cpu_ms))
    assert d.backend == Backend.THREADS and "work changed" in d.reason and d.switched
    assert c.failed_trials == 0 and c.retry_at <= t + 5.0


def test_work_that_releases_the_gil_on_processes_goes_back_to_threads() -> None:
    # NumPy after Python CPU, with about the same CPU a task (the work-change rule cannot
    # tell them apart): the workers measure how much of that CPU held their GIL
    c = Chooser("m:f")
    t = to_processes(c)
    c.update(t + 2.0, TWO, processes=on_processes(380.0))  # the trial pays
    python = replace(on_processes(2000.0, cpu_ms=5.0), gil_held_s=0.0049)
    assert c.update(t + 3.0, TWO, processes=python).reason == "processes pay"
    numpy = replace(on_processes(2000.0, cpu_ms=4.4), gil_held_s=0.0006)
    for k in range(2):
        d = c.update(t + 4.0 + k, TWO, processes=numpy)
    assert d.backend == Backend.THREADS and d.switched
    assert "no longer holds the GIL (14% of its CPU" in d.reason
    assert c.failed_trials == 0 and c.retry_at <= t + 5.0  # no back-off: other work


def test_resources_gone_send_it_back_at_once() -> None:
    c = Chooser("m:f")
    t = to_processes(c)
    d = c.update(t, Resources(2.0, process_workers_fit=1), processes=on_processes(380.0))
    assert d.backend == Backend.THREADS and d.switched and not c.in_trial
    assert "memory" in d.reason


def test_history_records_switches_only() -> None:
    c = Chooser("m:f")
    t = to_processes(c)
    c.update(t + 2.0, TWO, processes=on_processes(200.0))
    assert [d.backend for d in c.history] == [Backend.PROCESSES, Backend.THREADS]


def test_ledger_io_wait_is_used_when_given() -> None:
    # a worker thread that also idled and waited for a core: wall minus CPU is not I/O
    p = Profile(100, 1.0, wall_s=0.030, cpu_s=0.005, gil_wait_s=0.005, gil_held_s=0.005,
                io_wait_s=0.0001)
    assert p.io_s == 0.0001 and classify(p)[0] == "gil_cpu"
    assert Profile(100, 1.0, wall_s=0.030, cpu_s=0.005, gil_wait_s=0.005).io_s == \
        pytest.approx(0.020)


def test_no_figures_yet() -> None:
    c = Chooser("m:f")
    d: Optional[object] = c.update(0.0, TWO)
    assert d.backend == Backend.THREADS and "no measurements" in d.reason  # type: ignore[attr-defined]
