"""Memory facts for the process backend: resident sizes, cgroup limits and usage, the budget.

The limit alone is not enough to size a pool: what the group already uses (the parent,
its other children, the kernel's charges) is read too, for the process's own memory
cgroup and every ancestor that sets a limit (v2 ``memory.max``/``memory.current``, v1
``memory.limit_in_bytes``/``memory.usage_in_bytes``), less the inactive file cache the
kernel reclaims before it kills anything. Without any cgroup limit the host's
``MemAvailable`` bounds the budget. ``gil_adapt._core.limits()`` supplies MemAvailable and
the own group's limit (the same readers the controller uses).
"""
from __future__ import annotations

import os
from typing import List, NamedTuple, Optional, Sequence

PAGE = os.sysconf("SC_PAGE_SIZE")
CGROUP_ROOT = "/sys/fs/cgroup"
#: v1 reports "no limit" as a huge page-rounded number.
_V1_UNLIMITED = 1 << 62
MIB = 1 << 20
#: Least safety margin kept free under the tightest bound.
MIN_MARGIN = 32 * MIB


class GroupMemory(NamedTuple):
    """A memory cgroup that limits this process: its limit and its working set now."""

    path: str
    limit_bytes: int
    used_bytes: int


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def rss_of(pid: int) -> Optional[int]:
    """Resident size of process ``pid`` in bytes (/proc/<pid>/statm), None when gone."""
    text = _read(f"/proc/{pid}/statm")
    try:
        return int(text.split()[1]) * PAGE if text else None
    except (ValueError, IndexError):
        return None


def _stat_field(text: Optional[str], name: str) -> int:
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _own_dirs() -> List[str]:
    """Own memory cgroup directory and its ancestors up to the hierarchy's root."""
    text = _read("/proc/self/cgroup") or ""
    v2 = "memory" in (_read(os.path.join(CGROUP_ROOT, "cgroup.controllers")) or "").split()
    start = base = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if v2 and controllers == "":
            base, start = CGROUP_ROOT, CGROUP_ROOT + path
            break
        if not v2 and "memory" in controllers.split(","):
            base = os.path.join(CGROUP_ROOT, "memory")
            start = base + path
            if not os.path.isdir(start):  # a namespaced mount shows the group at its root
                start = base
            break
    if base is None or start is None:
        return []
    dirs = []
    current = os.path.normpath(start)
    base = os.path.normpath(base)
    while current.startswith(base):
        dirs.append(current)
        if current == base:
            break
        current = os.path.dirname(current)
    return dirs


def cgroup_groups() -> List[GroupMemory]:
    """Every memory cgroup on the way to the root that sets a limit, with its usage now."""
    groups = []
    for d in _own_dirs():
        if os.path.exists(os.path.join(d, "memory.max")) or \
                os.path.exists(os.path.join(d, "memory.current")):
            limit_text = _read(os.path.join(d, "memory.max"))
            usage_text = _read(os.path.join(d, "memory.current"))
            inactive = _stat_field(_read(os.path.join(d, "memory.stat")), "inactive_file")
            if not limit_text or limit_text.strip() == "max":
                continue
        else:
            limit_text = _read(os.path.join(d, "memory.limit_in_bytes"))
            usage_text = _read(os.path.join(d, "memory.usage_in_bytes"))
            inactive = _stat_field(_read(os.path.join(d, "memory.stat")), "total_inactive_file")
        try:
            limit = int((limit_text or "").strip())
            usage = int((usage_text or "").strip())
        except ValueError:
            continue
        if limit <= 0 or limit >= _V1_UNLIMITED:
            continue
        groups.append(GroupMemory(d, limit, max(0, usage - inactive)))
    return groups


def oom_kills(path: str) -> Optional[int]:
    """OOM kills counted in the cgroup at ``path`` (v2 memory.events, v1 memory.oom_control)."""
    for leaf, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
        text = _read(os.path.join(path, leaf))
        if text is not None and key in text:
            return _stat_field(text, key)
    return None


def default_margin(bound_bytes: Optional[int]) -> int:
    """Safety margin below a bound: 1/16 of it, at least ``MIN_MARGIN``."""
    return max(MIN_MARGIN, (bound_bytes or 0) // 16)


def workers_budget(groups: Sequence[GroupMemory], available_bytes: int, parent_rss: int,
                   workers_rss: int, margin_bytes: Optional[int] = None) -> Optional[int]:
    """Bytes that worker processes may hold in total (pure; the figures are passed in).

    For each limiting cgroup: its limit less what the group uses apart from the workers
    (at least the parent's own resident size). Without a limit: ``MemAvailable`` plus what
    the workers hold now (MemAvailable already excludes them). The tightest bound, less the
    safety margin (``default_margin`` of that bound unless given). None when nothing is
    known.
    """
    bounds = []
    for g in groups:
        others = max(parent_rss, g.used_bytes - workers_rss)
        bounds.append((g.limit_bytes - others, g.limit_bytes))
    if available_bytes > 0:
        bounds.append((available_bytes + workers_rss, available_bytes + workers_rss + parent_rss))
    if not bounds:
        return None
    room, whole = min(bounds)
    margin = default_margin(whole) if margin_bytes is None else margin_bytes
    return max(0, room - margin)
