"""fork() with gil_adapt in use: from a worker inside a task, from the main thread, from a
plain thread, and while many threads wait for the GIL with waiter thinning on.

Each case runs in a subprocess of its own, so a crashing child shows as a signal in that
subprocess's report instead of a dead pytest. Every forked child is waited for with a
deadline and killed in ``finally``; the subprocess itself runs under a timeout.

The contract tested (pool.h, "fork()"; ``_core._after_fork_child``): in the child the
forking thread is a working process's only thread; the hook's GIL waiter counts and
holding state, and the ledger, hold only what the child has; an executor made before the
fork keeps working there (the parent's queued tasks stay in the parent; one shut down
before the fork refuses submits); a worker that forked inside a task stays its
executor's worker; a new executor works.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any, Dict, Optional

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

# Shared by every script: wait for a child with a deadline, kill it in `finally`; read
# what it wrote to a pipe once it is gone.
PRELUDE = '''
import json, os, signal, sys, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)

def wait_child(pid, timeout=60.0):
    """The child's exit code (negative: the signal that ended it), or "hung" (killed)."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                pid = 0
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                return "hung"
            time.sleep(0.01)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

def read_all(fd):
    """What the (finished) child wrote; the write ends are closed by then."""
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    os.close(fd)
    return json.loads(data) if data else None

def spin(seconds):
    """Holds the GIL this long (no other thread asks for it meanwhile)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass

def child_checks(ex, closed):
    """In a child: what a fork from a thread that is not a worker must leave."""
    from gil_adapt import AdaptiveExecutor, snapshot
    snap = snapshot()
    me = threading.get_native_id()
    info = {}
    s = ex.stats()
    info["old_empty"] = [s["workers"], s["busy"], s["queue_length"]]
    info["ledger_alive"] = sorted(t for t, r in snap["threads"].items() if r["alive"]) == [me]
    mine = snap["threads"].get(me)
    info["held_ms"] = mine["gil_held_ns"] / 1e6 if mine else None
    info["wall_ms"] = mine["wall_ns"] / 1e6 if mine else None
    info["old_runs"] = ex.submit(pow, 3, 3).result(timeout=30)
    info["old_workers"] = ex.stats()["workers"]
    try:
        closed.submit(abs, -1)
        info["closed"] = "accepted"
    except RuntimeError as e:
        info["closed"] = str(e)
    with AdaptiveExecutor(2) as other:
        info["new_runs"] = list(other.map(abs, [-1, -2, -3], timeout=30))
    ex.shutdown(wait=True)
    return info
'''


def _run(body: str, env: Optional[Dict[str, str]] = None, timeout: float = 120) -> Any:
    """Runs PRELUDE + body in a fresh interpreter; returns the JSON of its last line."""
    script = PRELUDE + textwrap.dedent(body)
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=timeout, env=full_env)
    assert out.returncode == 0, f"rc {out.returncode}\n{out.stdout}\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


# Both sizing modes: the controller, and a fixed pool (GIL_ADAPT_CONTROLLER=0), whose
# "a finished task leaves an idle worker" credits must not survive into the child.
MODES = [pytest.param({}, id="controller"),
         pytest.param({"GIL_ADAPT_CONTROLLER": "0"}, id="fixed")]


@pytest.mark.parametrize("env", MODES)
def test_fork_inside_a_task(env: Dict[str, str]) -> None:
    # The child's only thread is the worker that forked: its task returns to the worker's
    # loop there (the struct it runs on must have survived the reset), and the thread
    # keeps serving its executor. A thread started by the task in the child does the rest.
    # Freed memory is poisoned and not cached, so a read of a freed struct crashes.
    res = _run('''
        from gil_adapt import AdaptiveExecutor
        ex = AdaptiveExecutor(4)
        list(ex.map(abs, range(-20, 0)))
        gate = threading.Event()
        busy = [ex.submit(gate.wait, 60) for _ in range(2)]
        pid_r, pid_w = os.pipe()
        res_r, res_w = os.pipe()

        def child_main():
            info = {}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the forking worker back in its loop
                s = ex.stats()
                if s["completed"] >= 1 and s["idle"] >= 1:
                    break
                time.sleep(0.01)
            s = ex.stats()
            info["old_after_task"] = [s["workers"], s["idle"], s["completed"]]
            with AdaptiveExecutor(2) as other:
                info["new_runs"] = other.submit(pow, 2, 10).result(timeout=30)
            info["old_runs"] = [ex.submit(pow, 3, 3).result(timeout=30) for _ in range(5)]
            os.write(res_w, json.dumps(info).encode())
            os._exit(0)

        def task():
            pid = os.fork()
            if pid:
                os.write(pid_w, str(pid).encode())
                return "parent"
            os.close(res_r)
            threading.Thread(target=child_main).start()
            return "child"  # back to the worker's loop, in the child

        f = ex.submit(task)
        pid = int(os.read(pid_r, 32))  # no Python lock held while the worker forks
        os.close(res_w)
        code = wait_child(pid)
        info = read_all(res_r)
        gate.set()
        ok = f.result(timeout=30) == "parent" and all(b.result(timeout=30) for b in busy)
        ex.shutdown()
        print(json.dumps({"code": code, "child": info, "parent_ok": ok}))
    ''', env={**env, "MALLOC_PERTURB_": "165", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
    assert res["code"] == 0, res
    assert res["parent_ok"], res
    child = res["child"]
    assert child["old_after_task"] == [1, 1, 1], child  # the forking worker, idle again
    assert child["new_runs"] == 1024, child
    assert child["old_runs"] == [27] * 5, child


def test_fork_inside_an_initializer() -> None:
    # A worker forking in its initializer (inside enter): in the child it is still its
    # executor's starting worker, and becomes a serving one when the initializer returns.
    res = _run('''
        from gil_adapt import AdaptiveExecutor
        pid_r, pid_w = os.pipe()
        res_r, res_w = os.pipe()
        first = threading.Lock()

        def child_main():
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and ex.stats()["idle"] < 1:
                time.sleep(0.01)
            s = ex.stats()
            info = {"old": [s["workers"], s["idle"], s["starting"]]}
            info["old_runs"] = ex.submit(pow, 2, 3).result(timeout=30)
            with AdaptiveExecutor(2) as other:
                info["new_runs"] = other.submit(abs, -4).result(timeout=30)
            os.write(res_w, json.dumps(info).encode())
            os._exit(0)

        def init():
            if not first.acquire(blocking=False):
                return  # one fork: the first worker's
            pid = os.fork()
            if pid:
                os.write(pid_w, str(pid).encode())
                return
            os.close(res_r)
            threading.Thread(target=child_main).start()

        ex = AdaptiveExecutor(2, initializer=init)
        f = ex.submit(abs, -1)
        pid = int(os.read(pid_r, 32))
        os.close(res_w)
        code = wait_child(pid)
        info = read_all(res_r)
        ok = f.result(timeout=30) == 1
        ex.shutdown()
        print(json.dumps({"code": code, "child": info, "parent_ok": ok}))
    ''', env={"MALLOC_PERTURB_": "165", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
    assert res["code"] == 0 and res["parent_ok"], res
    assert res["child"] == {"old": [1, 1, 0], "old_runs": 8, "new_runs": 4}, res


_FORK_WITH_BUSY_WORKERS = '''
    from gil_adapt import AdaptiveExecutor
    ex = AdaptiveExecutor(3)
    # Three workers, each started by a task that blocks (a fixed pool starts a worker only
    # when no finished task left one idle, as ThreadPoolExecutor does); then finished tasks.
    warm = threading.Event()
    first = [ex.submit(warm.wait, 60) for _ in range(3)]
    deadline = time.monotonic() + 20
    while ex.stats()["busy"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    warm.set()
    [f.result(timeout=30) for f in first]
    list(ex.map(abs, range(-50, 0)))
    closed = AdaptiveExecutor(1)
    closed.shutdown()
    gate = threading.Event()
    busy = [ex.submit(gate.wait, 60) for _ in range(3)]
    queued = [ex.submit(pow, i, 2) for i in range(20)]
    deadline = time.monotonic() + 20
    while ex.stats()["busy"] < 3 and time.monotonic() < deadline:  # no worker wants the GIL
        time.sleep(0.01)
    out = {"busy": ex.stats()["busy"]}

    def fork_here():
        r, w = os.pipe()  # (releases the GIL)
        spin(0.3)  # a long holding of the GIL just before the fork
        pid = os.fork()
        if pid == 0:
            try:
                info = child_checks(ex, closed)
            except BaseException as e:
                info = {"error": repr(e)}
            os.write(w, json.dumps(info).encode())
            os._exit(0)
        os.close(w)
        out["code"] = wait_child(pid)
        out["child"] = read_all(r)

    FORK()
    gate.set()
    out["parent_ok"] = [f.result(timeout=30) for f in queued] == [i * i for i in range(20)]
    ex.shutdown()
    print(json.dumps(out))
'''


def _check_child(res: Dict[str, Any]) -> None:
    assert res["busy"] == 3, res
    assert res["code"] == 0, res
    assert res["parent_ok"], res  # the parent's queued tasks ran there
    child = res["child"]
    assert "error" not in child, child
    assert child["old_empty"] == [0, 0, 0], child  # the parent's workers and queue stay there
    assert child["ledger_alive"], child  # only the child's thread is alive in the ledger
    # The forking thread's record restarted at the fork, and so did its holding of the GIL
    # (slack for the two clock reads).
    assert child["held_ms"] is not None and child["held_ms"] <= child["wall_ms"] + 1, child
    assert child["old_runs"] == 27 and child["old_workers"] >= 1, child
    assert "shutdown" in child["closed"], child
    assert child["new_runs"] == [1, 2, 3], child


@pytest.mark.parametrize("env", MODES)
def test_fork_from_main_thread_with_busy_workers(env: Dict[str, str]) -> None:
    _check_child(_run(_FORK_WITH_BUSY_WORKERS.replace("FORK()", "fork_here()"), env=env))


@pytest.mark.parametrize("env", MODES)
def test_fork_from_a_plain_thread(env: Dict[str, str]) -> None:
    body = _FORK_WITH_BUSY_WORKERS.replace(
        "FORK()", "t = threading.Thread(target=fork_here)\n    t.start()\n    t.join()")
    _check_child(_run(body, env=env))


def test_fork_while_many_threads_wait_for_the_gil() -> None:
    # 65 GIL-bound threads with waiter thinning on (as an AdaptiveExecutor sets it): when
    # one of them forks, the other 64 wait for the GIL, far more than the thinning's
    # threshold. The child has two GIL-bound threads and a thread that sleeps 1 ms 20
    # times: each wake-up waits for the GIL behind them. With the parent's waiter counts
    # inherited, each such wait is stretched to 20 switch intervals (20 x 20 x 5 ms = 2 s
    # in all); with the child's own counts each lasts about one interval. Three forks,
    # each checked. (A spinning thread forks, at a set time: with 64 contenders under
    # thinning, a thread that slept waits stretched intervals to take the GIL back.)
    res = _run('''
        from gil_adapt import AdaptiveExecutor
        stop = False
        run = threading.Event()
        forked = threading.Event()
        plan = {"at": None}
        children = []

        def measure_in_child(w):
            for _ in range(2):
                threading.Thread(target=spin_forever, daemon=True).start()
            t0 = time.perf_counter()
            for _ in range(20):
                time.sleep(0.001)
            os.write(w, json.dumps(time.perf_counter() - t0).encode())
            os._exit(0)

        def spin_forever():
            while not stop:
                if not run.is_set():
                    run.wait()
                    continue
                at = plan["at"]
                if at is not None and time.monotonic() >= at:
                    plan["at"] = None  # one fork per plan (the GIL is held here)
                    r, w = os.pipe()
                    pid = os.fork()
                    if pid == 0:
                        measure_in_child(w)
                    os.close(w)
                    run.clear()  # the parent's threads rest while the child measures
                    children.append((pid, r))
                    forked.set()

        threads = [threading.Thread(target=spin_forever, daemon=True) for _ in range(65)]
        for t in threads:
            t.start()
        AdaptiveExecutor(1).shutdown()  # installs the hook, thinning on
        from gil_adapt import _core
        assert _core.calm()[0] > 0
        totals = []
        for _ in range(3):
            forked.clear()
            plan["at"] = time.monotonic() + 0.3  # all of them contending by then
            run.set()
            if not forked.wait(60):
                break
            pid, r = children.pop()
            code = wait_child(pid)
            totals.append([code, read_all(r)])
        stop = True
        run.set()
        print(json.dumps(totals))
    ''')
    assert len(res) == 3, res
    for code, total in res:
        assert code == 0, res
        assert total is not None and total < 1.0, res
