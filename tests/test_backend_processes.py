"""ProcessBackend: results and exceptions through standard futures, refusals at submit,
worker deaths that fail (or retry) only their own task, no lost or duplicated task under
kills, cancellation and moving queued tasks, sizing by target and by the memory budget.

Invariants only: timeouts guard against hangs and never bound a speed. Tasks that must
be counted exactly once append their id to a file per worker process (``record``).
"""
from __future__ import annotations

import glob
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Dict, List

import pytest

import backend_tasks as bt
from backend_util import HANG, made, poll
from gil_adapt.backends import (RemoteError, RemoteTraceback, ResultPicklingError, Task,
                                TaskUnpicklingError, WorkerDied, _memory, function_key)
from gil_adapt.backends import processes as proc_mod
from gil_adapt.backends.processes import ProcessBackend, memory_budget

HERE = os.path.dirname(os.path.abspath(__file__))


def submit(b: ProcessBackend, fn: Callable[..., Any], *args: Any, idempotent: bool = False,
           **kwargs: Any) -> Future:
    f: Future = Future()
    assert b.submit_task(f, fn, args, kwargs, idempotent=idempotent)
    return f


@pytest.fixture
def backend():
    with made(ProcessBackend) as make:
        yield make


def recorded(directory: str) -> List[int]:
    ids: List[int] = []
    for path in glob.glob(os.path.join(directory, "*.log")):
        with open(path) as f:
            ids.extend(int(line) for line in f.read().split())
    return ids


# ---- results, exceptions, refusals ---------------------------------------------------

def test_results_come_back_in_their_futures(backend) -> None:
    b = backend(2)
    futures = [submit(b, bt.ident, i) for i in range(300)]
    results = [f.result(timeout=HANG) for f in futures]
    assert [r[0] for r in results] == list(range(300))
    assert all(pid != os.getpid() for _, pid in results)
    s = b.stats()
    assert s["completed"] == 300 and s["failed"] == 0
    assert s["functions"][function_key(bt.ident)]["tasks"] == 300
    assert 1 <= s["peak_workers"] <= 2


def test_workers_measure_how_much_of_a_task_held_their_gil(backend) -> None:
    # Python CPU holds the worker's GIL; sleeping does not (how the router tells Python
    # work from native work that releases the GIL, on processes)
    import gil_adapt

    if gil_adapt.capabilities()["gil_wait"] != "exact":  # a worker's hook is this one's
        pytest.skip("the GIL hook is unavailable here: "
                    + gil_adapt.capabilities().get("reason", ""))
    b = backend(1)
    assert all(f.result(timeout=HANG) is not None
               for f in [submit(b, bt.spin, 300_000) for _ in range(5)])
    assert all(f.result(timeout=HANG) == 1
               for f in [submit(b, bt.sleep_return, 0.02, 1) for _ in range(5)])
    figs = b.stats()["functions"]
    spin, nap = figs[function_key(bt.spin)], figs[function_key(bt.sleep_return)]
    assert spin["held_tasks"] == 5 and nap["held_tasks"] == 5
    assert 0.8 * spin["cpu_s"] <= spin["gil_held_s"] <= spin["cpu_s"] * 1.05 + 0.005, spin
    assert nap["gil_held_s"] <= 0.005 + 0.5 * nap["cpu_s"], nap  # 5 x 20 ms asleep


def test_kwargs_partial_and_bound_methods(backend) -> None:
    import functools

    b = backend(1)
    assert submit(b, bt.sleep_return, 0, value=5).result(timeout=HANG) == 5
    assert submit(b, functools.partial(bt.echo, 7)).result(timeout=HANG) == 7
    assert submit(b, "a-b".split, "-").result(timeout=HANG) == ["a", "b"]


def test_exception_with_remote_traceback(backend) -> None:
    b = backend(1)
    f = submit(b, bt.fail, "no good")
    with pytest.raises(ValueError, match="no good") as info:
        f.result(timeout=HANG)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "in fail" in str(info.value.__cause__)
    assert submit(b, bt.echo, 1).result(timeout=HANG) == 1  # the worker lives on


def test_system_exit_in_a_task_is_its_exception(backend) -> None:
    b = backend(1)
    f = submit(b, sys.exit, 3)
    with pytest.raises(SystemExit):
        f.result(timeout=HANG)
    assert b.stats()["died"] == 0


def test_unpicklable_function_is_refused_once_per_function(backend, caplog) -> None:
    b = backend(1)
    caplog.set_level(logging.INFO, logger="gil_adapt")
    fn = lambda: 1  # noqa: E731
    for _ in range(3):
        f: Future = Future()
        assert b.submit_task(f, fn, (), {}) is False
        assert not f.running() and not f.done()  # untouched: the caller runs it elsewhere
    assert function_key(fn) in b.stats()["refused_functions"]
    assert len([r for r in caplog.records if "cannot be pickled" in r.getMessage()]) == 1


def test_unpicklable_arguments_refuse_only_that_task(backend) -> None:
    b = backend(1)
    assert b.submit_task(Future(), bt.echo, (threading.Lock(),), {}) is False
    assert submit(b, bt.echo, 4).result(timeout=HANG) == 4
    assert function_key(bt.echo) not in b.stats()["refused_functions"]


def test_unpicklable_result_and_exceptions(backend) -> None:
    b = backend(1)
    with pytest.raises(ResultPicklingError, match="could not be pickled"):
        submit(b, bt.unpicklable_result).result(timeout=HANG)
    with pytest.raises(RemoteError, match="Unpicklable: boom") as info:
        submit(b, bt.raise_unpicklable).result(timeout=HANG)
    assert "raise_unpicklable" in str(info.value.__cause__)
    with pytest.raises(RemoteError, match="could not be unpickled"):
        submit(b, bt.raise_bad_init).result(timeout=HANG)
    assert submit(b, bt.echo, "alive").result(timeout=HANG) == "alive"
    assert b.stats()["died"] == 0


def test_main_module_functions_stay_on_threads(backend, monkeypatch) -> None:
    main = sys.modules["__main__"]

    def gla_main_fn() -> int:
        return 1

    gla_main_fn.__module__ = "__main__"
    gla_main_fn.__qualname__ = "gla_main_fn"
    monkeypatch.setattr(main, "gla_main_fn", gla_main_fn, raising=False)
    b = backend(1)
    assert b.submit_task(Future(), gla_main_fn, (), {}) is False
    assert b.submit_task(Future(), bt.echo, (gla_main_fn,), {}) is False  # in the arguments
    assert submit(b, bt.echo, "__main__").result(timeout=HANG) == "__main__"  # a mere string


def test_task_not_rebuildable_in_the_worker(backend, tmp_path) -> None:
    mod = tmp_path / "gla_parent_only.py"
    mod.write_text("def f():\n    return 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import gla_parent_only  # type: ignore[import-not-found]

        b = backend(1)  # workers get sys.path as it is when they start: the module is found
        assert submit(b, gla_parent_only.f).result(timeout=HANG) == 1
        b.shutdown()
        os.rename(mod, tmp_path / "moved.py")
        b2 = backend(1)
        with pytest.raises(TaskUnpicklingError, match="could not rebuild"):
            submit(b2, gla_parent_only.f).result(timeout=HANG)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("gla_parent_only", None)


def test_initializer_runs_in_every_worker(backend) -> None:
    b = backend(1, initializer=bt.init, initargs=("ok",))
    assert submit(b, bt.initialised).result(timeout=HANG) == ["ok"]


def test_failing_initializer_breaks_backend_and_tasks_fall_back(backend) -> None:
    moved: List[Task] = []
    b = backend(1, initializer=bt.init_fail, fallback=moved.extend)
    futures = [submit(b, bt.echo, i) for i in range(5)]
    assert poll(lambda: len(moved) == 5)
    assert all(not f.done() for f in futures)  # pending, for the caller's threads
    s = b.stats()
    assert s["broken"] and s["start_failures"] >= proc_mod.MAX_START_FAILURES
    assert b.submit_task(Future(), bt.echo, (1,), {}) is False


def test_failing_initializer_without_fallback_fails_tasks(backend) -> None:
    b = backend(1, initializer=bt.init_fail)
    f = submit(b, bt.echo, 1)
    with pytest.raises(BrokenProcessPool, match="failed to start"):
        f.result(timeout=HANG)


def test_submit_after_shutdown_raises(backend) -> None:
    b = backend(1)
    b.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        b.submit_task(Future(), bt.echo, (1,), {})


def test_bad_arguments() -> None:
    for kwargs in (dict(workers=0), dict(workers=True), dict(max_workers=0)):
        with pytest.raises(ValueError):
            ProcessBackend(**kwargs)
    with pytest.raises(TypeError):
        ProcessBackend(1, initializer=42)


# ---- worker deaths -------------------------------------------------------------------

@pytest.mark.parametrize("fn, args, code, sig", [
    (bt.kill_self, (signal.SIGKILL,), -signal.SIGKILL, signal.SIGKILL),
    (bt.die, (3,), 3, None),
    (bt.segfault, (), -signal.SIGSEGV, signal.SIGSEGV),
])
def test_death_fails_only_its_task_and_pool_heals(backend, fn, args, code, sig) -> None:
    b = backend(2)
    before = [submit(b, bt.ident, i) for i in range(50)]
    bad = submit(b, fn, *args)
    after = [submit(b, bt.ident, i) for i in range(50, 100)]
    with pytest.raises(WorkerDied) as info:
        bad.result(timeout=HANG)
    assert isinstance(info.value, BrokenProcessPool)
    assert info.value.exitcode == code and info.value.signal == sig
    assert str(info.value.pid) in str(info.value)
    assert [f.result(timeout=HANG)[0] for f in before + after] == list(range(100))
    assert submit(b, bt.echo, 1).result(timeout=HANG) == 1
    s = b.stats()
    assert s["died"] == 1 and s["failed"] == 1 and s["completed"] == 101


def test_worker_killed_from_outside_mid_task(backend, tmp_path) -> None:
    b = backend(2)
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    victim = submit(b, bt.touch_and_wait, started, gate)
    assert poll(lambda: os.path.exists(started))
    others = [submit(b, bt.ident, i) for i in range(20)]
    assert poll(lambda: len(b.stats()["worker_rss_bytes"]) == 2)
    # the victim's worker is the one that runs none of the others (it waits at the gate)
    victim_pid = _pid_waiting_on(list(b.stats()["worker_rss_bytes"]), others)
    os.kill(victim_pid, signal.SIGKILL)
    with pytest.raises(WorkerDied, match="SIGKILL"):
        victim.result(timeout=HANG)
    assert [f.result(timeout=HANG)[0] for f in others] == list(range(20))
    open(gate, "w").close()


def _pid_waiting_on(pids: List[int], others: List[Future]) -> int:
    """The worker pid that did not run any of ``others`` (it is stuck in the gate task)."""
    wait(others, timeout=HANG)
    ran = {f.result()[1] for f in others}
    rest = [p for p in pids if p not in ran]
    assert len(rest) == 1, (pids, ran)
    return rest[0]


def test_idempotent_task_retried_once(backend, tmp_path) -> None:
    b = backend(1)
    marker = str(tmp_path / "m")
    assert submit(b, bt.kill_first_run, marker, 7, idempotent=True).result(timeout=HANG) == 7
    assert b.stats()["retried"] == 1
    always = submit(b, bt.kill_self, idempotent=True)  # dies twice: then it fails
    with pytest.raises(WorkerDied):
        always.result(timeout=HANG)
    os.unlink(marker)
    with pytest.raises(WorkerDied):  # not idempotent: no retry
        submit(b, bt.kill_first_run, marker, 7).result(timeout=HANG)


def test_no_task_lost_or_duplicated_under_kills(backend, tmp_path) -> None:
    """10,000 tasks, a worker killed (SIGKILL, os._exit, segfault) every 500 of them."""
    b = backend(2)
    d = str(tmp_path)
    killers = [(bt.kill_self, ()), (bt.die, (9,)), (bt.segfault, ())]
    normal: Dict[int, Future] = {}
    deadly: List[Future] = []
    for i in range(10_000):
        normal[i] = submit(b, bt.record, d, i)
        if i % 500 == 499:
            fn, args = killers[(i // 500) % 3]
            deadly.append(submit(b, fn, *args))
    done, not_done = wait(list(normal.values()) + deadly, timeout=HANG * 2)
    assert not not_done
    assert all(isinstance(f.exception(), WorkerDied) for f in deadly)
    assert sorted(f.result() for f in normal.values()) == list(range(10_000))
    assert sorted(recorded(d)) == list(range(10_000))  # each ran exactly once
    s = b.stats()
    assert s["died"] == len(deadly) and s["completed"] == 10_000


# ---- cancellation, shutdown, moving queued tasks ---------------------------------------

def test_cancelled_before_start_never_runs(backend, tmp_path) -> None:
    b = backend(1)
    gate = str(tmp_path / "gate")
    first = submit(b, bt.wait_for_file, gate)
    queued = [submit(b, bt.record, str(tmp_path), i) for i in range(10)]
    assert all(f.cancel() for f in queued[::2])
    open(gate, "w").close()
    first.result(timeout=HANG)
    assert [f.result(timeout=HANG) for f in queued[1::2]] == list(range(1, 10, 2))
    assert sorted(recorded(str(tmp_path))) == list(range(1, 10, 2))


def test_shutdown_cancel_futures(backend, tmp_path) -> None:
    b = backend(2)
    gate = str(tmp_path / "gate")
    d = str(tmp_path)
    running = [submit(b, bt.wait_for_file, gate) for _ in range(2)]
    assert poll(lambda: b.stats()["in_flight"] == 2)
    queued = [submit(b, bt.record, d, i) for i in range(2000)]
    assert b.shutdown(wait=False, cancel_futures=True) == []
    open(gate, "w").close()
    b.shutdown(wait=True)
    assert all(f.done() for f in running + queued)
    assert all(f.result() for f in running)
    assert all(f.cancelled() for f in queued)
    assert recorded(d) == []


def test_shutdown_runs_queued_tasks_by_default(backend, tmp_path) -> None:
    b = backend(2)
    futures = [submit(b, bt.record, str(tmp_path), i) for i in range(500)]
    b.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == list(range(500))
    assert b.stats()["workers"] == 0


def test_shutdown_while_switching_moves_queued_tasks(backend, tmp_path) -> None:
    """A switch away from processes: queued tasks move to threads, running ones finish."""
    b = backend(2)
    gate, d = str(tmp_path / "gate"), str(tmp_path)
    running = [submit(b, bt.wait_for_file, gate) for _ in range(2)]
    assert poll(lambda: b.stats()["in_flight"] == 2)
    queued = {i: submit(b, bt.record, d, i) for i in range(2000)}
    queued[3].cancel()
    moved = b.shutdown(wait=False, run_queued=False)
    assert len(moved) == 2000 and all(not t.future.done() or t.future.cancelled() for t in moved)
    with ThreadPoolExecutor(2) as threads:
        for t in moved:
            threads.submit(_run_task, t)
    open(gate, "w").close()
    b.shutdown(wait=True)
    assert all(f.result(timeout=0) for f in running)
    assert queued[3].cancelled()
    assert sorted(f.result(timeout=0) for i, f in queued.items() if i != 3) == \
        [i for i in range(2000) if i != 3]
    assert sorted(recorded(d)) == [i for i in range(2000) if i != 3]


def _run_task(t: Task) -> None:
    """What the executor's threads do with a moved task."""
    if not t.future.set_running_or_notify_cancel():
        return
    try:
        t.future.set_result(t.fn(*t.args, **t.kwargs))
    except BaseException as exc:
        t.future.set_exception(exc)


def test_take_queued_by_predicate(backend, tmp_path) -> None:
    b = backend(1)
    gate = str(tmp_path / "gate")
    first = submit(b, bt.wait_for_file, gate)
    assert poll(lambda: b.stats()["in_flight"] == 1)
    evens = [submit(b, bt.echo, i) for i in range(0, 20, 2)]
    odds = [submit(b, bt.ident, i) for i in range(1, 20, 2)]
    taken = b.take_queued(lambda t: t.fn is bt.echo)
    assert [t.args[0] for t in taken] == list(range(0, 20, 2))
    assert [t.future for t in taken] == evens
    open(gate, "w").close()
    assert [f.result(timeout=HANG)[0] for f in odds] == list(range(1, 20, 2))
    assert first.result(timeout=HANG) > 0
    assert not any(f.done() for f in evens)


def test_shutdown_from_a_done_callback_does_not_deadlock(backend) -> None:
    b = backend(1)
    f = submit(b, bt.echo, 1)
    f.add_done_callback(lambda _: b.shutdown(wait=True))
    assert f.result(timeout=HANG) == 1
    assert poll(lambda: not b._thread.is_alive())


def test_workers_exit_at_shutdown(backend) -> None:
    b = backend(2)
    pids = {submit(b, bt.ident, i).result(timeout=HANG)[1] for i in range(10)}
    b.shutdown(wait=True)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_workers_exit_when_the_parent_dies(tmp_path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {HERE!r})
        from concurrent.futures import Future
        import backend_tasks as bt
        from gil_adapt.backends.processes import ProcessBackend
        b = ProcessBackend(1)
        f = Future()
        b.submit_task(f, bt.ident, (1,), {{}})
        print(f.result(timeout=60)[1], flush=True)
        os._exit(0)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=HANG)
    pid = int(out.stdout.strip())
    assert poll(lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid), timeout=15)


def test_forked_child_keeps_tasks_on_threads(tmp_path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {HERE!r})
        from concurrent.futures import Future
        import backend_tasks as bt
        from gil_adapt.backends.processes import ProcessBackend
        b = ProcessBackend(1)
        f = Future(); b.submit_task(f, bt.echo, (1,), {{}}); f.result(timeout=60)
        pid = os.fork()
        if pid == 0:
            ok = b.submit_task(Future(), bt.echo, (2,), {{}})
            os._exit(0 if ok is False else 1)
        _, status = os.waitpid(pid, 0)
        f = Future(); b.submit_task(f, bt.echo, (3,), {{}})
        print(os.waitstatus_to_exitcode(status), f.result(timeout=60))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=HANG)
    assert out.stdout.split() == ["0", "3"], out.stderr


# ---- sizing: target and memory ---------------------------------------------------------

def test_resize(backend, tmp_path) -> None:
    b = backend(1)
    gate = str(tmp_path / "gate")
    futures = [submit(b, bt.wait_for_file, gate) for _ in range(3)]
    assert poll(lambda: b.stats()["in_flight"] == 1)
    b.resize(3)
    assert poll(lambda: b.stats()["in_flight"] == 3)
    open(gate, "w").close()
    assert len({f.result(timeout=HANG) for f in futures}) == 3
    b.resize(1)
    assert poll(lambda: b.stats()["workers"] == 1)
    with pytest.raises(ValueError):
        b.resize(0)


def test_max_workers_caps_resize(backend) -> None:
    b = backend(1, max_workers=2)
    b.resize(8)
    assert b.stats()["target_workers"] == 2


def test_idle_workers_retire(backend) -> None:
    b = backend(2, idle_timeout=0.2)
    [f.result(timeout=HANG) for f in [submit(b, bt.ident, i) for i in range(20)]]
    assert poll(lambda: b.stats()["workers"] == 0)
    assert submit(b, bt.echo, 1).result(timeout=HANG) == 1  # a new one starts on demand


def test_memory_budget_is_read() -> None:
    budget = memory_budget()
    assert budget is None or budget > 0
    b = ProcessBackend(1)
    try:
        assert submit(b, bt.echo, 1).result(timeout=HANG) == 1
        own = b.memory_budget()
        assert own is None or own > 0
        assert b.stats()["memory_budget_bytes"] is None or b.stats()["memory_fit"] >= 1
    finally:
        b.shutdown()


def test_workers_budget_pure() -> None:
    g = _memory.GroupMemory("g", 512 << 20, 100 << 20)
    # 100 MiB used, of which the workers hold 60: others = 40 MiB; margin 32 MiB
    assert _memory.workers_budget([g], 0, 30 << 20, 60 << 20) == (512 - 40 - 32) << 20
    # the parent's own size is the least "others" can be
    assert _memory.workers_budget([g], 0, 80 << 20, 60 << 20) == (512 - 80 - 32) << 20
    # without a cgroup: MemAvailable plus what the workers hold, less 1/16
    avail = _memory.workers_budget([], 1 << 30, 10 << 20, 0)
    assert avail == (1 << 30) - max(32 << 20, ((1 << 30) + (10 << 20)) // 16)
    # the tightest bound wins; nothing known -> None
    assert _memory.workers_budget([g], 100 << 30, 30 << 20, 0) < 512 << 20
    assert _memory.workers_budget([], 0, 0, 0) is None
    assert _memory.workers_budget([g], 0, 600 << 20, 0) == 0


def _fake_group(monkeypatch, limit_of_workers: int) -> None:
    """A cgroup whose limit leaves ``limit_of_workers`` bytes to the workers (margin 0)."""

    def groups() -> List[_memory.GroupMemory]:
        parent = _memory.rss_of(os.getpid()) or 0
        return [_memory.GroupMemory("fake", parent + limit_of_workers, parent)]

    monkeypatch.setattr(proc_mod, "_groups", groups)
    monkeypatch.setattr(proc_mod, "_available", lambda: 0)


def test_memory_budget_limits_workers_and_runs_heavy_tasks_one_at_a_time(
        backend, monkeypatch) -> None:
    """Room for two idle workers but one 80 MiB task at a time: never two at once."""
    _fake_group(monkeypatch, 160 << 20)
    b = backend(4, memory_margin_bytes=0)
    futures = [submit(b, bt.spans, 80, 0.05) for _ in range(6)]
    spans = sorted(f.result(timeout=HANG) for f in futures)
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert s2 >= e1, "two 80 MiB tasks ran at once in a 160 MiB budget"
    s = b.stats()
    assert s["memory_fit"] == 1
    assert s["functions"][function_key(bt.spans)]["peak_rss_bytes"] > 80 << 20
    assert s["died"] == 0


def test_budget_that_fits_no_worker_sends_tasks_to_fallback(backend, monkeypatch) -> None:
    _fake_group(monkeypatch, 1 << 20)
    moved: List[Task] = []
    b = backend(2, fallback=moved.extend, memory_margin_bytes=0)
    f = submit(b, bt.echo, 1)
    assert poll(lambda: len(moved) == 1) and moved[0].future is f and not f.done()
    assert b.stats()["memory_fit"] == 0 and b.stats()["started"] == 0
    assert b.submit_task(Future(), bt.echo, (2,), {}) is False  # now refused at submit


def test_budget_shrinking_retires_workers(backend, monkeypatch, tmp_path) -> None:
    b = backend(2, memory_margin_bytes=0)
    gate = str(tmp_path / "gate")
    futures = [submit(b, bt.wait_for_file, gate) for _ in range(2)]
    assert poll(lambda: b.stats()["in_flight"] == 2)
    held = sum(b.stats()["worker_rss_bytes"].values())
    _fake_group(monkeypatch, held // 2)
    assert poll(lambda: b.stats()["memory_retired"] >= 1)
    open(gate, "w").close()
    assert all(f.result(timeout=HANG) for f in futures)  # retiring workers finish their task
    assert poll(lambda: b.stats()["workers"] <= 1)
