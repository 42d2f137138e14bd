"""Edge configurations of the benchmark (docs/bench.md): a number of cores and a memory cap.

A configuration is realised with CPU affinity (and the cgroup's cpuset where there is
one) plus a cgroup memory limit (:mod:`gil_adapt.bench.cgroups`). One that needs more
cores than this host lets the benchmark use is reported as skipped, never emulated.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

MIB = 1 << 20
GIB = 1 << 30

_NAME = re.compile(r"^(\d+)c-(\d+)([mg])$", re.IGNORECASE)


@dataclass(frozen=True)
class EdgeConfig:
    """``cores`` CPUs and ``memory_bytes`` of memory (the cgroup cap)."""

    name: str
    cores: int
    memory_bytes: int

    @property
    def memory_mib(self) -> int:
        return self.memory_bytes // MIB

    def to_dict(self) -> Dict[str, object]:
        return {"name": self.name, "cores": self.cores, "memory_bytes": self.memory_bytes}


DEFAULT_CONFIGS = ("1c-512m", "2c-1g", "4c-2g")


def parse_config(name: str) -> EdgeConfig:
    """``"1c-512m"`` -> 1 core, 512 MiB; ``"2c-1g"`` -> 2 cores, 1 GiB (any NcXm / NcXg)."""
    m = _NAME.match(name.strip())
    if not m:
        raise ValueError(f"bad configuration {name!r}: expected e.g. 1c-512m or 2c-1g")
    cores, amount, unit = int(m.group(1)), int(m.group(2)), m.group(3).lower()
    if cores < 1 or amount < 1:
        raise ValueError(f"bad configuration {name!r}: cores and memory must be positive")
    memory = amount * (GIB if unit == "g" else MIB)
    return EdgeConfig(name=name.strip().lower(), cores=cores, memory_bytes=memory)


def parse_configs(text: str) -> List[EdgeConfig]:
    """A comma-separated list of configuration names, in order, without duplicates."""
    out: List[EdgeConfig] = []
    for part in text.split(","):
        if part.strip():
            cfg = parse_config(part)
            if cfg not in out:
                out.append(cfg)
    if not out:
        raise ValueError("no configuration given")
    return out


def host_cpus() -> List[int]:
    """CPUs this process may run on (its affinity mask), sorted."""
    return sorted(os.sched_getaffinity(0))


def skip_reason(config: EdgeConfig, cpus: Sequence[int]) -> Optional[str]:
    """Why ``config`` cannot run on a host allowing ``cpus`` (None when it can)."""
    if config.cores > len(cpus):
        return (f"needs {config.cores} cores; this host allows {len(cpus)} "
                f"(never emulated)")
    return None


def config_cpus(config: EdgeConfig, cpus: Sequence[int]) -> List[int]:
    """The CPUs a configuration runs on: the first ``config.cores`` allowed ones."""
    if config.cores > len(cpus):
        raise ValueError(skip_reason(config, cpus))
    return list(cpus[: config.cores])
