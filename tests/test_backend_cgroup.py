"""ProcessBackend under a real 512 MiB memory cgroup: no OOM kill, fewer workers, every task.

The test creates its own group (v2 ``memory.max`` where the unified hierarchy has the
memory controller, else v1 ``memory.limit_in_bytes``), runs a child Python inside it that
asks a ProcessBackend for 4 workers whose tasks each hold 150 MiB (4 x ~170 MiB would
cross 512 MiB), and removes the group afterwards, also after a failure. It is skipped,
saying why, where no group can be made (not root, no writable hierarchy).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Iterator, Tuple

import pytest

from gil_adapt.backends import _memory

pytestmark = pytest.mark.cgroup

LIMIT = 512 << 20
TASK_MIB = 150
TASKS = 12
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = "/sys/fs/cgroup"

CHILD = textwrap.dedent(r"""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from concurrent.futures import Future, ThreadPoolExecutor
    import backend_tasks as bt
    from gil_adapt.backends.processes import ProcessBackend

    threads = ThreadPoolExecutor(1)
    fallen = []

    def run(task):
        if task.future.set_running_or_notify_cancel():
            try:
                task.future.set_result(task.fn(*task.args, **task.kwargs))
            except BaseException as exc:
                task.future.set_exception(exc)

    def fallback(tasks):
        fallen.extend(tasks)
        for t in tasks:
            threads.submit(run, t)

    backend = ProcessBackend(4, fallback=fallback)
    futures = []
    for _ in range(int(sys.argv[3])):
        f = Future()
        assert backend.submit_task(f, bt.allocate, (int(sys.argv[2]), 0.2), {})
        futures.append(f)
    pids = [f.result(timeout=300) for f in futures]
    stats = backend.stats()
    backend.shutdown()
    threads.shutdown()
    print(json.dumps({"results": len(pids), "worker_pids": len(set(pids)),
                      "fallback": len(fallen), "stats": stats}, default=str))
""")


def _v2_usable() -> bool:
    try:
        with open(os.path.join(ROOT, "cgroup.controllers")) as f:
            if "memory" not in f.read().split():
                return False
        with open(os.path.join(ROOT, "cgroup.subtree_control")) as f:
            if "memory" in f.read().split():
                return True
        with open(os.path.join(ROOT, "cgroup.subtree_control"), "w") as f:
            f.write("+memory")
        return True
    except OSError:
        return False


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _make_group(name: str) -> Tuple[str, str]:
    """Creates the group; returns (its directory, hierarchy version 'v1'/'v2')."""
    if _v2_usable():
        path = os.path.join(ROOT, name)
        os.mkdir(path)
        _write(os.path.join(path, "memory.max"), str(LIMIT))
        if os.path.exists(os.path.join(path, "memory.swap.max")):
            _write(os.path.join(path, "memory.swap.max"), "0")
        return path, "v2"
    base = os.path.join(ROOT, "memory")
    if not os.path.exists(os.path.join(base, "memory.limit_in_bytes")):
        raise OSError("no cgroup v2 memory controller and no v1 memory hierarchy")
    path = os.path.join(base, name)
    os.mkdir(path)
    _write(os.path.join(path, "memory.limit_in_bytes"), str(LIMIT))
    memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
    if os.path.exists(memsw):  # no swapping our way out of the limit either
        _write(memsw, str(LIMIT))
    return path, "v1"


def _remove_group(path: str) -> None:
    for _ in range(100):
        try:
            with open(os.path.join(path, "cgroup.procs")) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)
    raise OSError(f"could not remove the test cgroup {path}")


@pytest.fixture
def memory_group() -> Iterator[Tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("cgroup test: needs root to create a memory cgroup")
    name = f"gil-adapt-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path, version = _make_group(name)
    except OSError as exc:
        pytest.skip(f"cgroup test: cannot create a 512 MiB memory cgroup here: {exc}")
    try:
        yield path, version
    finally:
        _remove_group(path)


def test_processes_stay_within_a_512_mib_cgroup(memory_group) -> None:
    path, version = memory_group
    procs = os.path.join(path, "cgroup.procs")
    cmd = ["sh", "-c", f'echo $$ > "{procs}" && exec "$0" -c "$1" "$2" "$3" "$4"',
           sys.executable, CHILD, HERE, str(TASK_MIB), str(TASKS)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    kills = _memory.oom_kills(path)
    assert child.returncode == 0, f"child exit {child.returncode} ({version}):\n{err[-3000:]}"
    report = json.loads(out.strip().splitlines()[-1])
    stats = report["stats"]
    assert kills in (0, None), f"{kills} OOM kills in the group"
    assert report["results"] == TASKS  # every task completed
    assert stats["died"] == 0 and stats["failed"] == 0
    # fewer workers than the 4 asked for, and no more than the measured budget fits
    fit = stats["memory_fit"]
    assert fit is not None and fit < 4, stats
    assert 1 <= stats["peak_workers"] <= max(1, fit), stats
    peak = stats["functions"]["backend_tasks:allocate"]["peak_rss_bytes"]
    assert peak >= TASK_MIB << 20  # the measured task peak is what sized the pool
    assert stats["memory_limits"] and stats["memory_limits"][0]["limit_bytes"] == LIMIT


NESTED_CHILD = textwrap.dedent(r"""
    import json
    from gil_adapt import _core
    print(json.dumps({"groups": _core.memory_groups(), "limits": _core.limits()}))
""")


def test_the_core_reads_a_limit_set_by_an_ancestor_group(memory_group) -> None:
    """A process in an unlimited child of a 512 MiB group is limited by the parent: the one
    reader of kernel facts (the C core) walks every ancestor, and the executor's budget
    (limits()) and the process backend's (memory_groups()) agree on it."""
    path, version = memory_group
    if version == "v2":
        _write(os.path.join(path, "cgroup.subtree_control"), "+memory")
    inner = os.path.join(path, "inner")
    os.mkdir(inner)
    try:
        procs = os.path.join(inner, "cgroup.procs")
        cmd = ["sh", "-c", f'echo $$ > "{procs}" && exec "$0" -c "$1"', sys.executable,
               NESTED_CHILD]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        report = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        _remove_group(inner)
    groups = report["groups"]
    assert [os.path.normpath(g[0]) for g in groups][:1] == [os.path.normpath(path)], groups
    assert groups[0][1] == LIMIT and 0 <= groups[0][2] <= LIMIT, groups
    assert report["limits"]["memory_limit_bytes"] == LIMIT, report["limits"]
    limits = report["limits"]
    assert limits["threads_max"] > 0 and limits["pid_max"] > 0, limits
