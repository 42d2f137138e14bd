"""Memory caps and CPU sets as real kernel limits: cgroup v2 or v1, made and removed here.

Groups are named ``gil-adapt-bench-<owner pid>.<owner start time>-<seq>``, directly
under the hierarchy's root (v2: the unified mount; v1: each controller's mount). The owner
is the harness process; its start time (``/proc/<pid>/stat`` field 22) makes the name
safe against pid reuse. :meth:`CgroupManager.cleanup_stale` removes every group of that
form whose owner is no longer alive (a run killed with SIGKILL leaves its groups behind):
the processes still in such a group are leftover benchmark children of the dead run; they
are killed (so they do not disturb the measurements of this run), and the group removed.

Teardown of a group: its processes are killed (a benchmark child's tree, after the cell
ended), any that remain are moved to the parent group, then the directory is removed.

Limits written:

* v2: ``memory.max`` (and ``memory.swap.max = 0`` where swap is accounted), ``cpuset.cpus``
  where the cpuset controller is enabled for the root's children.
* v1: ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``, the same, where swap
  is accounted), ``cpuset.cpus`` and ``cpuset.mems`` (copied from the parent) in the cpuset
  hierarchy where it is mounted.

An OOM kill is read from ``memory.events`` (v2) or ``memory.oom_control`` (v1:
``oom_kill``, kernel >= 4.13), the peak from ``memory.peak`` / ``memory.max_usage_in_bytes``.
"""
from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

log = logging.getLogger("gil_adapt.bench")

PREFIX = "gil-adapt-bench"
_NAME = re.compile(r"^" + re.escape(PREFIX) + r"-(\d+)\.(\d+)-(\d+)$")
DEFAULT_ROOT = "/sys/fs/cgroup"


class CgroupError(Exception):
    """A group could not be made or configured (the reason is the message)."""


def _mkdir(path: str) -> None:
    """Makes a group's directory; the kernel fills it with control files (a seam for tests
    on a fake hierarchy, where the test makes those files)."""
    os.mkdir(path)


def _rmdir(path: str) -> None:
    """Removes a group's directory (a seam for tests on a fake hierarchy)."""
    os.rmdir(path)


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _write(path: str, value: str) -> None:
    # One write() per value: cgroup files take one value per write.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def process_start_time(pid: int) -> Optional[int]:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks since boot), None if no such process."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    try:
        rest = text[text.rindex(")") + 2:].split()
        return int(rest[19])  # fields after the comm start at field 3
    except (ValueError, IndexError):
        return None


def owner_alive(pid: int, start_time: int) -> bool:
    """True while the process that made a group (pid and start time) still runs."""
    now = process_start_time(pid)
    return now is not None and now == start_time


def parse_group_name(name: str) -> Optional[tuple]:
    """``(owner_pid, owner_start_time, seq)`` for one of our group names, else None."""
    m = _NAME.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@dataclass
class CgroupSupport:
    """What the host offers: ``method`` is ``"v2"``, ``"v1"`` or ``"none"`` (then ``reason``).

    ``roots`` maps ``"unified"`` (v2) or ``"memory"``/``"cpuset"`` (v1) to the directory
    under which groups are made.
    """

    method: str
    roots: Dict[str, str] = field(default_factory=dict)
    reason: Optional[str] = None
    cpuset: bool = False

    def describe(self) -> str:
        if self.method == "none":
            return f"none ({self.reason})"
        where = ", ".join(f"{k}={v}" for k, v in sorted(self.roots.items()))
        cpus = "cpuset + affinity" if self.cpuset else "affinity only (no cpuset controller)"
        return f"cgroup {self.method} ({where}); CPUs: {cpus}"

    def to_dict(self) -> Dict[str, object]:
        return {"method": self.method, "roots": dict(self.roots), "reason": self.reason,
                "cpuset": self.cpuset, "description": self.describe()}


def detect(root: str = DEFAULT_ROOT) -> CgroupSupport:
    """Which cgroup hierarchy can cap memory here (v2 preferred when it has the memory
    controller, else v1's memory controller), or why none can."""
    controllers = _read(os.path.join(root, "cgroup.controllers"))
    if controllers is not None and "memory" in controllers.split():
        if not os.access(root, os.W_OK):
            return CgroupSupport("none", reason=f"cgroup v2 at {root} is not writable "
                                                f"(needs root)")
        return CgroupSupport("v2", {"unified": root}, cpuset="cpuset" in controllers.split())
    memory = os.path.join(root, "memory")
    if os.path.exists(os.path.join(memory, "memory.limit_in_bytes")):
        if not os.access(memory, os.W_OK):
            return CgroupSupport("none", reason=f"cgroup v1 memory controller at {memory} "
                                                f"is not writable (needs root)")
        roots = {"memory": memory}
        cpuset = os.path.join(root, "cpuset")
        has_cpuset = (os.path.exists(os.path.join(cpuset, "cpuset.cpus"))
                      and os.access(cpuset, os.W_OK))
        if has_cpuset:
            roots["cpuset"] = cpuset
        return CgroupSupport("v1", roots, cpuset=has_cpuset)
    return CgroupSupport("none", reason=f"no cgroup memory controller found under {root}")


@dataclass
class Group:
    """One group (one directory per hierarchy it lives in)."""

    name: str
    method: str
    paths: Dict[str, str]          # controller key -> group directory
    parents: Dict[str, str]        # controller key -> parent directory
    memory_bytes: int
    cpus: List[int]
    cpuset: bool = False

    @property
    def memory_path(self) -> str:
        return self.paths["unified" if self.method == "v2" else "memory"]

    def procs_files(self) -> List[str]:
        """The ``cgroup.procs`` files a process writes its pid into to enter the group."""
        return [os.path.join(p, "cgroup.procs") for p in self.paths.values()]

    def pids(self) -> List[int]:
        out: set = set()
        for path in self.paths.values():
            text = _read(os.path.join(path, "cgroup.procs")) or ""
            out.update(int(x) for x in text.split() if x.strip().isdigit())
        return sorted(out)

    def _stat(self, filename: str, key: str) -> Optional[int]:
        text = _read(os.path.join(self.memory_path, filename))
        if text is None:
            return None
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                try:
                    return int(parts[1])
                except ValueError:
                    return None
        return None

    def oom_kills(self) -> Optional[int]:
        """Processes of the group killed by the OOM killer so far (None: not reported)."""
        if self.method == "v2":
            return self._stat("memory.events", "oom_kill")
        return self._stat("memory.oom_control", "oom_kill")

    def limit_hits(self) -> Optional[int]:
        """Times usage hit the limit (v2 ``memory.events`` max, v1 ``memory.failcnt``)."""
        if self.method == "v2":
            return self._stat("memory.events", "max")
        text = _read(os.path.join(self.memory_path, "memory.failcnt"))
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None

    def peak_bytes(self) -> Optional[int]:
        """Peak memory charged to the group (RSS and page cache), None if not reported."""
        name = "memory.peak" if self.method == "v2" else "memory.max_usage_in_bytes"
        text = _read(os.path.join(self.memory_path, name))
        try:
            return int(text) if text is not None else None
        except ValueError:
            return None


class CgroupManager:
    """Makes, tracks and removes this process's groups; removes stale ones of dead runs."""

    def __init__(self, support: CgroupSupport, owner_pid: Optional[int] = None) -> None:
        self.support = support
        self.owner_pid = os.getpid() if owner_pid is None else owner_pid
        start = process_start_time(self.owner_pid)
        self.owner_start = start if start is not None else 0
        self._seq = itertools.count(1)
        self.groups: List[Group] = []

    @property
    def available(self) -> bool:
        return self.support.method in ("v1", "v2")

    # ---- stale groups -------------------------------------------------------------------

    def cleanup_stale(self, wait_s: float = 5.0) -> List[str]:
        """Removes the groups of dead owners under every root; returns their directories."""
        removed: List[str] = []
        for key, root in sorted(self.support.roots.items()):
            try:
                names = sorted(os.listdir(root))
            except OSError:
                continue
            for name in names:
                parsed = parse_group_name(name)
                if parsed is None or owner_alive(parsed[0], parsed[1]):
                    continue
                path = os.path.join(root, name)
                if not os.path.isdir(path):
                    continue
                log.info("removing stale benchmark cgroup %s (owner pid %d is gone)",
                         path, parsed[0])
                try:
                    self._remove_dir(path, root, wait_s)
                    removed.append(path)
                except OSError as e:
                    log.warning("could not remove stale cgroup %s: %s", path, e)
        return removed

    # ---- making groups ------------------------------------------------------------------

    def new_name(self) -> str:
        return f"{PREFIX}-{self.owner_pid}.{self.owner_start}-{next(self._seq)}"

    def create(self, memory_bytes: int, cpus: Sequence[int]) -> Group:
        """A new group capped at ``memory_bytes`` on ``cpus``; CgroupError says why not."""
        if not self.available:
            raise CgroupError(self.support.reason or "no cgroup support")
        name = self.new_name()
        if self.support.method == "v2":
            root = self.support.roots["unified"]
            group = Group(name, "v2", {"unified": os.path.join(root, name)},
                          {"unified": root}, memory_bytes, list(cpus))
        else:
            paths = {k: os.path.join(r, name) for k, r in self.support.roots.items()}
            group = Group(name, "v1", paths, dict(self.support.roots), memory_bytes,
                          list(cpus))
        self.groups.append(group)
        try:
            if group.method == "v2":
                self._setup_v2(group)
            else:
                self._setup_v1(group)
        except OSError as e:
            self.destroy(group)
            raise CgroupError(f"setting up {name}: {e}") from e
        return group

    def _setup_v2(self, group: Group) -> None:
        root = group.parents["unified"]
        wanted = ["memory"] + (["cpuset"] if self.support.cpuset else [])
        enabled = (_read(os.path.join(root, "cgroup.subtree_control")) or "").split()
        for ctl in wanted:
            if ctl not in enabled:
                try:
                    _write(os.path.join(root, "cgroup.subtree_control"), f"+{ctl}")
                except OSError as e:
                    if ctl == "memory":
                        raise
                    log.info("cpuset not enabled for %s (%s): affinity only", root, e)
        path = group.paths["unified"]
        _mkdir(path)
        _write(os.path.join(path, "memory.max"), str(group.memory_bytes))
        if os.path.exists(os.path.join(path, "memory.swap.max")):
            _write(os.path.join(path, "memory.swap.max"), "0")
        if os.path.exists(os.path.join(path, "cpuset.cpus")):
            _write(os.path.join(path, "cpuset.cpus"), ",".join(map(str, group.cpus)))
            group.cpuset = True

    def _setup_v1(self, group: Group) -> None:
        mem = group.paths["memory"]
        _mkdir(mem)
        _write(os.path.join(mem, "memory.limit_in_bytes"), str(group.memory_bytes))
        memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):
            _write(memsw, str(group.memory_bytes))
        if "cpuset" in group.paths:
            cs = group.paths["cpuset"]
            _mkdir(cs)
            mems = (_read(os.path.join(group.parents["cpuset"], "cpuset.mems")) or "0").strip()
            _write(os.path.join(cs, "cpuset.mems"), mems or "0")
            _write(os.path.join(cs, "cpuset.cpus"), ",".join(map(str, group.cpus)))
            group.cpuset = True

    # ---- removing groups ----------------------------------------------------------------

    def destroy(self, group: Group, wait_s: float = 5.0) -> None:
        """Kills what is left in the group, moves stragglers out, removes its directories."""
        errors: List[str] = []
        for key in sorted(group.paths, key=lambda k: k != "memory"):  # memory first
            path = group.paths[key]
            if not os.path.isdir(path):
                continue
            try:
                self._remove_dir(path, group.parents[key], wait_s)
            except OSError as e:
                errors.append(f"{path}: {e}")
        if group in self.groups:
            self.groups.remove(group)
        if errors:
            log.warning("cgroup teardown incomplete: %s", "; ".join(errors))

    def destroy_all(self) -> None:
        for group in list(self.groups):
            self.destroy(group)

    @staticmethod
    def _remove_dir(path: str, parent: str, wait_s: float = 5.0) -> None:
        procs = os.path.join(path, "cgroup.procs")

        def members() -> List[int]:
            text = _read(procs) or ""
            return [int(x) for x in text.split() if x.strip().isdigit()]

        pids = members()
        for pid in pids:
            if pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        deadline = time.monotonic() + wait_s
        while pids and time.monotonic() < deadline:
            time.sleep(0.02)
            pids = members()
        for pid in pids:  # stuck (or ourselves): move to the parent group
            try:
                _write(os.path.join(parent, "cgroup.procs"), str(pid))
            except OSError as e:
                if e.errno != errno.ESRCH:
                    log.warning("could not move pid %d out of %s: %s", pid, path, e)
        for attempt in range(50):
            try:
                _rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno not in (errno.EBUSY, errno.ENOTEMPTY) or attempt == 49:
                    raise
                time.sleep(0.02)
