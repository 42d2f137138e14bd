"""Memory facts for the process backend: resident sizes, cgroup limits and usage, the budget.

The limit alone is not enough to size a pool: what the group already uses (the parent,
its other children, the kernel's charges) is read too, for the process's own memory
cgroup and every ancestor that sets a limit (v2 ``memory.max``/``memory.current``, v1
``memory.limit_in_bytes``/``memory.usage_in_bytes``), less the inactive file cache the
kernel reclaims before it kills anything. Without any cgroup limit the host's
``MemAvailable`` bounds the budget. The C core reads these facts (``_core.memory_groups()``,
``_core.limits()``: the same readers the executor uses); this module only combines them.
"""
from __future__ import annotations

import os
from typing import List, NamedTuple, Optional, Sequence

PAGE = os.sysconf("SC_PAGE_SIZE")
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


def cgroup_groups() -> List[GroupMemory]:
    """Every memory cgroup on the way to the root that sets a limit, with its usage now
    (read by the C core: ``gil_adapt._core.memory_groups()``)."""
    from .. import _core

    return [GroupMemory(path, limit, working_set)
            for path, limit, working_set in _core.memory_groups()]


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
