"""AdaptiveExecutor's modes: auto (per-function backend), processes, asyncio.

No timing assertions: decisions are checked for direction and reason, tasks for exactly-once.
"""
from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import logging
import os
import signal
import subprocess
import sys
import time
import weakref

import pytest

from conftest import needs_gil

import gil_adapt
from gil_adapt import AdaptiveExecutor
from gil_adapt.backends import WorkerDied

sys.path.insert(0, os.path.dirname(__file__))
import backend_tasks as bt  # noqa: E402  (importable in worker processes too)

HANG = 60.0


def _spin_per_ms() -> int:
    n = 200_000
    t0 = time.thread_time()
    bt.spin(n)
    return max(1, int(n / ((time.thread_time() - t0) * 1000.0)))


PER_MS = _spin_per_ms()


async def double(x):
    await asyncio.sleep(0.001)
    return 2 * x


async def raise_value_error(x):
    await asyncio.sleep(0)
    raise ValueError(f"bad {x}")


def test_mode_validated_and_threads_default():
    for bad in ("thread", "", None, 3):
        with pytest.raises(ValueError, match="mode must be one of"):
            AdaptiveExecutor(mode=bad)
    with AdaptiveExecutor() as ex:
        assert ex.stats()["mode"] == "threads"
        assert "kinds" not in ex.stats()  # no router: nothing ever leaves the process
    with AdaptiveExecutor(mode="auto") as ex:
        with pytest.raises(TypeError):
            ex.submit(42)
        assert ex.stats()["kinds"] == {}  # the refused call left no trace


@pytest.mark.parametrize("mode", ["auto", "asyncio"])
def test_coroutines_as_asyncio_run(mode):
    with AdaptiveExecutor(mode=mode) as ex:
        fs = [ex.submit(double, i) for i in range(50)]
        bad = ex.submit(raise_value_error, 7)
        plain = ex.submit(abs, -3)
        assert [f.result(HANG) for f in fs] == [asyncio.run(double(i)) for i in range(50)]
        with pytest.raises(ValueError) as got:
            bad.result(HANG)
        with pytest.raises(ValueError) as want:
            asyncio.run(raise_value_error(7))
        assert str(got.value) == str(want.value)
        assert plain.result(HANG) == 3
        kinds = ex.stats()["kinds"]
    assert kinds[f"{__name__}:double"]["backend"] == "asyncio"
    assert kinds["builtins:abs"]["backend"] == "threads"


def test_threads_mode_returns_coroutine_objects_like_threadpool():
    with AdaptiveExecutor(mode="threads") as ex:
        coro = ex.submit(double, 1).result(HANG)
    assert asyncio.iscoroutine(coro)
    assert asyncio.run(coro) == 2


@needs_gil
def test_auto_moves_gil_bound_cpu_to_processes_and_back_or_stays(tmp_path, caplog):
    if (gil_adapt._core.limits().get("usable_cores") or 1) < 2 or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 usable cores (processes cannot help on one)")
    n = 6 * PER_MS  # ~6 ms of pure-Python CPU a task
    caplog.set_level(logging.INFO, logger="gil_adapt")
    with AdaptiveExecutor(mode="auto") as ex:
        fs = [ex.submit(bt.spin_record, str(tmp_path), i, n) for i in range(1500)]
        deadline = time.monotonic() + HANG
        while not ex.stats()["switches"]:
            assert time.monotonic() < deadline, ex.stats()["kinds"]
            time.sleep(0.05)
        results = [f.result(HANG) for f in fs]
        st = ex.stats()
    assert results == list(range(1500))
    assert sorted(bt.runs_in(str(tmp_path))) == list(range(1500))  # each ran exactly once
    first = st["switches"][0]
    assert (first["from"], first["to"], first["trial"]) == ("threads", "processes", True)
    assert "GIL" in first["reason"]
    assert st["processes"]["completed"] > 0
    kind = st["kinds"]["backend_tasks:spin_record"]
    assert kind["switches"] == len(st["switches"])
    # the first move warns once, naming the function and what changes
    warned = [r for r in caplog.records if r.levelno == logging.WARNING
              and "backend_tasks:spin_record" in r.getMessage()]
    assert len(warned) == 1 and "pickled" in warned[0].getMessage()


def test_auto_pinned_to_threads_never_moves(tmp_path):
    n = 6 * PER_MS
    with AdaptiveExecutor(mode="auto", pin={bt.spin_record: "threads"}) as ex:
        results = list(ex.map(bt.spin_record, [str(tmp_path)] * 300, range(300), [n] * 300))
        st = ex.stats()
    assert results == list(range(300))
    assert st["switches"] == [] and "processes" not in st
    assert st["kinds"]["backend_tasks:spin_record"]["reason"] == "pinned to threads"


def test_pin_names_resolve_and_bad_pins_raise():
    with AdaptiveExecutor(mode="auto", pin={"backend_tasks:ident": "processes"}) as ex:
        i, pid = ex.submit(bt.ident, 5).result(HANG)
        assert i == 5 and pid != os.getpid()
        assert ex.stats()["kinds"]["backend_tasks:ident"]["reason"] == "pinned to processes"
    for bad, err in [({"backend_tasks:no_such": "threads"}, ValueError),
                     ({"nomodule_xyz:f": "threads"}, ValueError),
                     ({bt.echo: "thread"}, ValueError),
                     ({42: "threads"}, TypeError),
                     ([("backend_tasks:echo", "threads")], TypeError)]:
        with pytest.raises(err, match="pin"):
            AdaptiveExecutor(mode="auto", pin=bad)
    with pytest.raises(ValueError, match="mode='auto' and mode='processes'"):
        AdaptiveExecutor(pin={bt.echo: "threads"})  # the default mode never leaves


class _Holder:
    def method(self, x):
        return x


@pytest.mark.parametrize("mode", ["auto", "processes", "asyncio"])
def test_no_reference_kept_in_any_mode(mode):
    with AdaptiveExecutor(mode=mode) as ex:
        obj, arg = _Holder(), _Holder()
        refs = [weakref.ref(obj), weakref.ref(arg)]
        assert ex.submit(obj.method, 3).result(HANG) == 3
        fut = ex.submit(bt.echo, arg)
        fut.result(HANG)
        del fut, obj, arg
        deadline = time.monotonic() + HANG
        while any(r() is not None for r in refs):
            assert time.monotonic() < deadline, [r() for r in refs]
            gc.collect()
            time.sleep(0.01)


MAIN_SCRIPT = """
import os, sys
sys.path.insert(0, {src!r})
from gil_adapt import AdaptiveExecutor

def square(x):  # defined in __main__: workers import the script as __mp_main__
    return x * x, os.getpid()

if __name__ == "__main__":
    with AdaptiveExecutor(mode="processes") as ex:
        out = list(ex.map(square, range(20)))
        kinds = ex.stats()["kinds"]
    assert [v for v, _ in out] == [x * x for x in range(20)], out
    pids = {{p for _, p in out}}
    print("backend", kinds["__main__:square"]["backend"], "in-parent", os.getpid() in pids)
"""


def test_functions_of_the_main_script_run_in_processes(tmp_path):
    script = tmp_path / "main_script.py"
    src = os.path.dirname(os.path.dirname(gil_adapt.__file__))
    script.write_text(MAIN_SCRIPT.format(src=src))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=HANG, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "backend processes in-parent False" in proc.stdout, proc.stdout + proc.stderr


def test_auto_stays_on_threads_on_one_core(one_core, tmp_path):
    n = 4 * PER_MS
    with AdaptiveExecutor(mode="auto") as ex:
        results = list(ex.map(bt.spin_record, [str(tmp_path)] * 400, range(400), [n] * 400))
        st = ex.stats()
    assert results == list(range(400))
    assert st["switches"] == [] and "processes" not in st
    reason = st["kinds"]["backend_tasks:spin_record"]["reason"]
    assert "usable core" in reason, reason


def test_processes_mode_runs_there_and_keeps_unpicklable_on_threads():
    with AdaptiveExecutor(mode="processes") as ex:
        pids = {f.result(HANG) for f in [ex.submit(os.getpid) for _ in range(20)]}
        local = ex.submit(lambda: os.getpid()).result(HANG)
        st = ex.stats()
    assert os.getpid() not in pids
    assert local == os.getpid()
    assert st["kinds"]["posix:getpid"]["backend"] == "processes"
    lam = [k for k in st["kinds"] if "<lambda>" in k][0]
    assert "refused" in st["kinds"][lam]["reason"]


def test_processes_mode_worker_killed_fails_only_its_task():
    with AdaptiveExecutor(mode="processes") as ex:
        killed = ex.submit(bt.kill_self, signal.SIGKILL)
        others = [ex.submit(bt.echo, i) for i in range(200)]
        with pytest.raises(WorkerDied):
            killed.result(HANG)
        assert [f.result(HANG) for f in others] == list(range(200))
        assert ex.submit(bt.echo, "healed").result(HANG) == "healed"


@pytest.mark.parametrize("mode", ["auto", "processes"])
def test_cancel_futures_across_backends_counts_every_task(mode, tmp_path):
    """10,000 tasks on threads, processes and loops; shutdown(cancel_futures=True) while
    they run (and, in auto, while CPU tasks may be moving): every future ends, each task
    that was not cancelled ran exactly once, none that was cancelled ran."""
    n = 2 * PER_MS
    ex = AdaptiveExecutor(mode=mode)
    fs = []
    for i in range(10_000):
        if i % 10 == 0:
            fs.append(ex.submit(double, i))
        elif i % 10 < 4:
            fs.append(ex.submit(bt.spin_record, str(tmp_path), i, n))
        else:
            fs.append(ex.submit(bt.record, str(tmp_path), i))
    time.sleep(1.0)
    ex.shutdown(wait=True, cancel_futures=True)
    ran = bt.runs_in(str(tmp_path))
    assert len(ran) == len(set(ran)), "a task ran twice"
    done = cancelled = 0
    for i, f in enumerate(fs):
        assert f.done(), i
        if f.cancelled():
            cancelled += 1
            assert i not in ran or i % 10 == 0
        else:
            assert f.result() == (2 * i if i % 10 == 0 else i)
            done += 1
            if i % 10:
                assert i in ran
    assert done + cancelled == 10_000 and done > 0
    with pytest.raises(RuntimeError):
        ex.submit(bt.echo, 1)


def test_auto_semantics_on_measured_tasks():
    """Tasks wrapped for measurement keep the Future semantics: exceptions, cancellation
    of queued tasks, results in order."""
    with AdaptiveExecutor(max_workers=1) as ex:
        gate = ex.submit(time.sleep, 0.3)
        queued = [ex.submit(bt.echo, i) for i in range(5)]
        assert queued[4].cancel()
        boom = ex.submit(bt.fail, "boom")
        gate.result(HANG)
        assert [f.result(HANG) for f in queued[:4]] == list(range(4))
        assert queued[4].cancelled()
        with pytest.raises(ValueError, match="boom"):
            boom.result(HANG)
    assert isinstance(boom.exception(), Exception)
    assert cf.wait(queued).not_done == set()
