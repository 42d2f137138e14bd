"""gil-adapt bench: cgroup set-up, teardown and stale-group cleanup.

On a fake hierarchy in a temporary directory (v1 and v2 layouts; the seams ``_mkdir`` and
``_rmdir`` stand in for the kernel making and removing control files), and — marked
``cgroup``, skipped without root or a writable hierarchy — on the real one: a memory cap
that OOM-kills a child, and the groups of a harness killed by SIGKILL removed by the next.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from gil_adapt.bench import cgroups
from gil_adapt.bench.runner import classify

V1_FILES = {"memory": ["cgroup.procs", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
                       "memory.oom_control", "memory.failcnt", "memory.max_usage_in_bytes"],
            "cpuset": ["cgroup.procs", "cpuset.cpus", "cpuset.mems"]}
V2_FILES = ["cgroup.procs", "memory.max", "memory.swap.max", "memory.events", "memory.peak",
            "cpuset.cpus"]


def _touch(path: str, text: str = "") -> None:
    with open(path, "w") as f:
        f.write(text)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake hierarchy: mkdir fills a group with the control files of its controller."""

    def mkdir(path: str) -> None:
        os.mkdir(path)
        parent = os.path.basename(os.path.dirname(path))
        names = V1_FILES.get(parent, V2_FILES)
        for name in names:
            _touch(os.path.join(path, name),
                   "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"
                   if name == "memory.oom_control" else "")

    monkeypatch.setattr(cgroups, "_mkdir", mkdir)
    monkeypatch.setattr(cgroups, "_rmdir", shutil.rmtree)
    return tmp_path


def make_v1(root) -> None:
    for ctl, names in V1_FILES.items():
        os.makedirs(root / ctl)
        for name in names:
            _touch(str(root / ctl / name))
    _touch(str(root / "cpuset" / "cpuset.mems"), "0\n")


def make_v2(root) -> None:
    _touch(str(root / "cgroup.controllers"), "cpuset cpu io memory pids\n")
    _touch(str(root / "cgroup.subtree_control"), "")
    _touch(str(root / "cgroup.procs"), "")


def read(path) -> str:
    with open(path) as f:
        return f.read()


def test_detect_none(tmp_path):
    support = cgroups.detect(str(tmp_path))
    assert support.method == "none" and "no cgroup memory controller" in support.reason
    assert not cgroups.CgroupManager(support).available
    with pytest.raises(cgroups.CgroupError):
        cgroups.CgroupManager(support).create(1 << 29, [0])


def test_v1_setup_and_teardown(fake):
    make_v1(fake)
    support = cgroups.detect(str(fake))
    assert support.method == "v1" and support.cpuset
    mgr = cgroups.CgroupManager(support)
    g = mgr.create(512 << 20, [1])
    mem, cs = g.paths["memory"], g.paths["cpuset"]
    assert os.path.basename(mem).startswith(f"{cgroups.PREFIX}-{os.getpid()}.")
    assert read(os.path.join(mem, "memory.limit_in_bytes")) == str(512 << 20)
    assert read(os.path.join(mem, "memory.memsw.limit_in_bytes")) == str(512 << 20)
    assert read(os.path.join(cs, "cpuset.cpus")) == "1"
    assert read(os.path.join(cs, "cpuset.mems")) == "0"
    assert sorted(g.procs_files()) == sorted([os.path.join(mem, "cgroup.procs"),
                                              os.path.join(cs, "cgroup.procs")])
    _touch(os.path.join(mem, "memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\n"
                                                    "oom_kill 2\n")
    _touch(os.path.join(mem, "memory.failcnt"), "17\n")
    _touch(os.path.join(mem, "memory.max_usage_in_bytes"), "536870912\n")
    assert (g.oom_kills(), g.limit_hits(), g.peak_bytes()) == (2, 17, 512 << 20)
    mgr.destroy(g, wait_s=0.1)
    assert not os.path.exists(mem) and not os.path.exists(cs)
    assert mgr.groups == []


def test_v2_setup_enables_controllers(fake):
    make_v2(fake)
    support = cgroups.detect(str(fake))
    assert support.method == "v2" and support.cpuset
    mgr = cgroups.CgroupManager(support)
    g = mgr.create(1 << 30, [0, 1])
    path = g.paths["unified"]
    assert read(os.path.join(path, "memory.max")) == str(1 << 30)
    assert read(os.path.join(path, "memory.swap.max")) == "0"
    assert read(os.path.join(path, "cpuset.cpus")) == "0,1"
    # the fake file keeps the last write: cpuset was enabled after memory
    assert read(fake / "cgroup.subtree_control") == "+cpuset"
    _touch(os.path.join(path, "memory.events"), "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\n")
    assert g.oom_kills() == 1 and g.limit_hits() == 5
    mgr.destroy_all()
    assert not os.path.exists(path)


def test_failed_setup_removes_the_partial_group(fake, monkeypatch):
    make_v1(fake)
    mgr = cgroups.CgroupManager(cgroups.detect(str(fake)))
    real_write = cgroups._write

    def failing(path, value):
        if path.endswith("cpuset.cpus"):
            raise OSError(22, "Invalid argument")
        real_write(path, value)

    monkeypatch.setattr(cgroups, "_write", failing)
    with pytest.raises(cgroups.CgroupError, match="Invalid argument"):
        mgr.create(1 << 29, [7])
    assert [n for n in os.listdir(fake / "memory") if n.startswith(cgroups.PREFIX)] == []
    assert [n for n in os.listdir(fake / "cpuset") if n.startswith(cgroups.PREFIX)] == []
    assert mgr.groups == []


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_groups_of_dead_owners_are_removed(fake):
    make_v1(fake)
    support = cgroups.detect(str(fake))
    me = cgroups.CgroupManager(support)
    gone = dead_pid()
    stale = f"{cgroups.PREFIX}-{gone}.12345-1"
    reused = f"{cgroups.PREFIX}-{os.getpid()}.{me.owner_start + 1}-3"   # pid reused
    mine = f"{cgroups.PREFIX}-{os.getpid()}.{me.owner_start}-9"
    other = "some-other-group"
    # a leftover benchmark child of the dead run, still inside the stale group
    leftover = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for ctl in ("memory", "cpuset"):
            for name in (stale, reused, mine, other):
                os.makedirs(fake / ctl / name)
                _touch(str(fake / ctl / name / "cgroup.procs"),
                       f"{leftover.pid}\n" if name == stale else "")
        removed = me.cleanup_stale(wait_s=0.2)
        assert sorted(removed) == sorted(str(fake / c / n) for c in ("memory", "cpuset")
                                         for n in (stale, reused))
        for ctl in ("memory", "cpuset"):
            assert sorted(os.listdir(fake / ctl)) == sorted(
                V1_FILES[ctl] + [mine, other])
        assert leftover.wait(timeout=10) == -signal.SIGKILL
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_group_names():
    assert cgroups.parse_group_name(f"{cgroups.PREFIX}-12.345-6") == (12, 345, 6)
    assert cgroups.parse_group_name("gil-adapt-bench-12-6") is None
    assert cgroups.parse_group_name("user.slice") is None
    assert cgroups.owner_alive(os.getpid(), cgroups.process_start_time(os.getpid()))
    assert not cgroups.owner_alive(dead_pid(), 1)


# ---- the real hierarchy ---------------------------------------------------------------

def real_support() -> cgroups.CgroupSupport:
    if os.geteuid() != 0:
        pytest.skip("needs root to make cgroups")
    support = cgroups.detect()
    if support.method == "none":
        pytest.skip(f"no usable cgroup hierarchy: {support.reason}")
    return support


def _enter(group):
    """A preexec_fn that puts the child into ``group``."""
    files = [p.encode() for p in group.procs_files()]

    def enter():
        for path in files:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)

    return enter


@pytest.mark.cgroup
def test_real_memory_cap_oom_kill_is_detected():
    support = real_support()
    mgr = cgroups.CgroupManager(support)
    cpus = sorted(os.sched_getaffinity(0))[:1]
    group = mgr.create(64 << 20, cpus)
    try:
        enter = _enter(group)
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)));"
                                   "x = [bytearray(1 << 20) for _ in range(400)]"],
            preexec_fn=enter, capture_output=True, timeout=60)
        oom = group.oom_kills()
        assert child.returncode == -signal.SIGKILL
        assert oom is None or oom >= 1
        status, reason = classify(child.returncode, None, False, oom, group.limit_hits(),
                                  64, (group.peak_bytes() or 0) / 2**20, "", 60)
        assert status == "oom", reason
        assert "64 MiB cap" in reason
    finally:
        mgr.destroy(group)
    assert all(not os.path.exists(p) for p in group.paths.values())


@pytest.mark.cgroup
def test_real_memory_headroom_is_read_inside_the_cap():
    support = real_support()
    mgr = cgroups.CgroupManager(support)
    group = mgr.create(128 << 20, sorted(os.sched_getaffinity(0))[:1])
    try:
        enter = _enter(group)
        child = subprocess.run(
            [sys.executable, "-c", "from gil_adapt.bench import child;"
                                   "a = child._memory_headroom();"
                                   "x = bytearray(48 << 20); x[::4096] = b'1' * len(x[::4096]);"
                                   "print(a, child._memory_headroom())"],
            preexec_fn=enter, capture_output=True, text=True, timeout=60)
        assert child.returncode == 0, child.stderr
        before, after = (int(v) for v in child.stdout.split())
        assert 0 < before <= 128 << 20       # under the cap, less what Python took
        assert before - after >= 40 << 20    # the 48 MiB touched count against it
    finally:
        mgr.destroy(group)


CRASHER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from gil_adapt.bench import cgroups
    mgr = cgroups.CgroupManager(cgroups.detect())
    g = mgr.create(256 << 20, sorted(os.sched_getaffinity(0))[:1])
    files = [p.encode() for p in g.procs_files()]
    def enter():
        for path in files:
            fd = os.open(path, os.O_WRONLY); os.write(fd, str(os.getpid()).encode()); os.close(fd)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             preexec_fn=enter, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(" ".join(g.paths.values()), child.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)   # a harness killed mid-run: no teardown
""")


@pytest.mark.cgroup
def test_real_groups_of_a_killed_run_are_removed_by_the_next():
    support = real_support()
    env = dict(os.environ)
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(cgroups.__file__))))
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", CRASHER], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == -signal.SIGKILL, out.stderr
    *paths, pid = out.stdout.split()
    leftover = int(pid)
    try:
        assert paths and all(os.path.isdir(p) for p in paths)
        removed = cgroups.CgroupManager(support).cleanup_stale()
        assert set(paths) <= set(removed)
        assert all(not os.path.exists(p) for p in paths)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{leftover}") and time.monotonic() < deadline:
            try:   # reparented to init (or a subreaper): it may linger as a zombie
                with open(f"/proc/{leftover}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.05)
        alive = os.path.exists(f"/proc/{leftover}")
        if alive:
            with open(f"/proc/{leftover}/stat") as f:
                assert f.read().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        try:   # only the sleeper this test started, never a process that reused its pid
            with open(f"/proc/{leftover}/cmdline", "rb") as f:
                if b"time.sleep(120)" in f.read():
                    os.kill(leftover, signal.SIGKILL)
        except OSError:
            pass
