"""The strategies of the benchmark (docs/bench.md): names, what each one is, and whether it can run here.

==================  ========================================================================
``threads-N``       ``ThreadPoolExecutor(N)`` with all N threads started before the clock
                    (N blocking starters first): N live threads — the sweep
``tpe-N``           ``ThreadPoolExecutor(N)`` as users write it (threads start lazily)
``threads-default`` ``ThreadPoolExecutor()`` (CPython's default size)
``naive-512``       ``ThreadPoolExecutor(512)`` (the same measurement as ``tpe-512``)
``processes``       ``ProcessPoolExecutor(cores)``
``asyncio-K``       the async form of the task under ``asyncio.Semaphore(K)`` (K = 32, 256)
``betapool``        ``betapool.AdaptiveThreadPoolExecutor()`` defaults (optional)
``gil-adapt``       ``gil_adapt.AdaptiveExecutor()`` defaults (threads only, the drop-in),
                    given the task's sync form
``gil-adapt-auto``  ``gil_adapt.AdaptiveExecutor(mode="auto")`` given the task's async form
                    (coroutine functions run on its event-loop threads)
==================  ========================================================================
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

FULL_SWEEP = [1 << i for i in range(12)]            # 1 .. 2048
COARSE_SWEEP = [1, 4, 16, 64, 256, 1024, 2048]      # the full run's first stage (x4 steps)
QUICK_SWEEP = [1, 4, 16, 64, 256, 512]
ASYNCIO_LIMITS = (32, 256)
FIXED = ("threads-default", "naive-512", "processes", "betapool", "gil-adapt", "gil-adapt-auto")
ADAPTIVE_KINDS = ("betapool", "gil-adapt", "gil-adapt-auto")


@dataclass(frozen=True)
class Strategy:
    """``kind``: threads | tpe | default | processes | asyncio | betapool | gil-adapt |
    gil-adapt-auto."""

    name: str
    kind: str
    size: Optional[int] = None

    @property
    def run_key(self) -> str:
        """Strategies that are the same measurement share a key (naive-512 is tpe-512)."""
        if self.kind == "tpe":
            return f"tpe-{self.size}"
        return self.name

    @property
    def adaptive(self) -> bool:
        return self.kind in ADAPTIVE_KINDS

    @property
    def uses_async_form(self) -> bool:
        """Given the workload's coroutine function rather than its sync form."""
        return self.kind in ("asyncio", "gil-adapt-auto")


_SIZED = re.compile(r"^(threads|tpe|asyncio)-(\d+)$")


def parse_strategy(name: str) -> Strategy:
    name = name.strip()
    m = _SIZED.match(name)
    if m:
        size = int(m.group(2))
        if size < 1:
            raise ValueError(f"bad strategy {name!r}: size must be >= 1")
        return Strategy(name, m.group(1), size)
    if name == "threads-default":
        return Strategy(name, "default")
    if name == "naive-512":
        return Strategy(name, "tpe", 512)
    if name in ("processes", "betapool", "gil-adapt", "gil-adapt-auto"):
        return Strategy(name, name)
    raise ValueError(f"unknown strategy {name!r} (threads-N, tpe-N, threads-default, "
                     f"naive-512, processes, asyncio-K, betapool, gil-adapt, gil-adapt-auto; groups: "
                     f"threads, tpe, asyncio, all)")


def default_names(sweep: Sequence[int], quick: bool, tpe: Optional[bool] = None) -> List[str]:
    """All strategies of a run: the sweep, tpe-N beside it (``tpe``; by default not in
    quick mode), the rest."""
    names = [f"threads-{n}" for n in sweep]
    beside = (not quick) if tpe is None else tpe
    tpe_sizes: List[int] = list(sweep) if beside else []
    names += [f"tpe-{n}" for n in tpe_sizes if n != 512]
    names += ["threads-default", "naive-512", "processes"]
    names += [f"asyncio-{k}" for k in ASYNCIO_LIMITS]
    names += ["betapool", "gil-adapt", "gil-adapt-auto"]
    return names


def expand(tokens: Sequence[str], sweep: Sequence[int], quick: bool,
           tpe: Optional[bool] = None) -> List[Strategy]:
    """Strategy names or groups (``threads``, ``tpe``, ``asyncio``, ``all``) -> strategies.
    ``tpe``: whether ``all`` puts tpe-N beside each N (default: not in quick mode); the
    ``tpe`` group always does."""
    names: List[str] = []
    for token in tokens:
        token = token.strip()
        if not token:
            continue
        if token == "all":
            names += default_names(sweep, quick, tpe)
        elif token == "threads":
            names += [f"threads-{n}" for n in sweep]
        elif token == "tpe":
            names += [f"tpe-{n}" for n in sweep]
        elif token == "asyncio":
            names += [f"asyncio-{k}" for k in ASYNCIO_LIMITS]
        else:
            names.append(token)
    out: List[Strategy] = []
    seen = set()
    for n in names:
        s = parse_strategy(n)
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    return out


def unavailable_reason(strategy: Strategy) -> Optional[str]:
    """Why a strategy cannot run here (None when it can)."""
    if strategy.kind == "betapool":
        if importlib.util.find_spec("betapool") is None:
            return "betapool is not installed (optional: pip install 'gil-adapt[betapool]')"
        try:
            importlib.import_module("betapool").AdaptiveThreadPoolExecutor  # noqa: B018
        except Exception as e:  # noqa: BLE001 - any import failure is the reason
            return f"betapool does not import: {type(e).__name__}: {e}"
    if strategy.kind in ("gil-adapt", "gil-adapt-auto"):
        try:
            importlib.import_module("gil_adapt").AdaptiveExecutor  # noqa: B018
        except Exception as e:  # noqa: BLE001
            return f"gil_adapt.AdaptiveExecutor is not importable: {type(e).__name__}: {e}"
    return None
