"""The ledger's Python surface: capabilities(), snapshot(), measure().

All figures come from the C core (``gil_adapt._core``); this module only shapes them.
States of a thread (ns) partition its wall time::

    wall = cpu + runq_wait + gil_wait + lock_wait + idle + io_wait

``beta = gil_wait / (gil_wait + io_wait)`` (None when the thread did not wait at all); without
a GIL (free-threaded build) ``beta = (runq_wait + lock_wait) / (runq_wait + lock_wait + io_wait)``.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, Dict, List, Optional

from . import _core

log = logging.getLogger("gil_adapt")

STATES = ("cpu_ns", "runq_wait_ns", "gil_wait_ns", "lock_wait_ns", "idle_ns", "io_wait_ns")
# Fields of the C core's per-thread records (_core.ThreadSample), named by the core itself.
_FIELDS = _core.SAMPLE_FIELDS
# What a thread is waiting for at the instant of a snapshot (the "waiting" field).
WAITING = {-1: None, 0: "gil", 1: "lock", 2: "idle"}
# Inputs of the partition besides wall_ns (the keyword arguments of _core.finish).
_RAW = tuple(k for k in _core.SAMPLE_INPUTS if k != "wall_ns")

_install_lock = threading.Lock()
_install_rc: Optional[int] = None
_install_pid: Optional[int] = None


def install() -> bool:
    """Installs the GIL/lock hooks (idempotent). Returns True when GIL waits are exact.

    ``GIL_ADAPT_HOOK=0`` (or ``false``/``no``/``off``) in the environment disables the
    hook; figures that need it are
    then reported as unavailable, never guessed.
    """
    global _install_rc, _install_pid
    with _install_lock:
        if _install_rc is None or _install_pid != os.getpid():
            env_flag("GIL_ADAPT_HOOK", True)  # warns about a value the C core ignores
            _install_rc = _core.install()
            _install_pid = os.getpid()
            caps = _core.capabilities()
            if caps["gil_wait"] != "exact":
                log.info("gil_adapt: GIL waits unavailable: %s", caps["gil_wait_reason"])
    return _core.capabilities()["gil_wait"] == "exact"


_uninstalled = False


def uninstall() -> None:
    """Removes the hooks; waits already being timed finish normally. A GOT slot that
    another library hooked after gil_adapt keeps that library's hook (a warning names
    it): uninstalling never removes someone else's hook."""
    global _install_rc, _uninstalled
    with _install_lock:
        rc = _core.uninstall()
        _install_rc = None
        _uninstalled = True
        if rc < 0:
            raise OSError(-rc, "gil_adapt: restoring the GOT failed: " + os.strerror(-rc))
        caps = _core.capabilities()
        if caps.get("hook_slots_left"):
            log.warning("gil_adapt: %s", caps.get("gil_wait_reason") or caps.get("reason"))


CALM_DEFAULT = 4
CALM_ABOVE_DEFAULT = 32
_calm_chosen = False


def calm_gil(keep: int = CALM_DEFAULT, *, above: int = CALM_ABOVE_DEFAULT) -> int:
    """Thins the interpreter's GIL waiters while more than ``above`` threads wait for the
    GIL: only ``keep`` waiters at a time then wake every switch interval to ask the holder
    for the GIL; the others wait 20 intervals (or until the GIL is handed to them, as
    before). Removes the wake-up storm behind the saturation cliff of many I/O threads
    (2,048 threads sleeping 50 ms on one core: 0-8,000 tasks/s without, 17,000-28,000
    with; see csrc/calm.h). With ``above`` or fewer waiters CPython's own waits are left
    alone (thinning 25 GIL-bound workers on 2 cores cost them ~5 %); ``above=0`` thins at
    any count. ``keep=0`` turns it off. Installs the hook (the thinning needs it);
    process-wide. Returns the previous ``keep``.

    :class:`AdaptiveExecutor` turns it on with the defaults unless it was set here before
    or ``GIL_ADAPT_CALM`` is in the environment (``0`` = off, else the ``keep`` to use;
    ``GIL_ADAPT_CALM_ABOVE`` sets ``above``). A waiter that has waited a stretched wait's
    length waits stretched from then on: the hand-off's signal reaches the longest
    waiters first, so no thread starves (tests/test_ledger.py).
    """
    global _calm_chosen
    for name, value in (("keep", keep), ("above", above)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if keep < 0:
        raise ValueError("keep must be 0 (off) or a positive count")
    if above < 0:
        raise ValueError("above must be a count >= 0")
    install()
    _calm_chosen = True
    _core.set_calm_above(above)
    return int(_core.set_calm(keep))


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_warned_env: set = set()


def _bad_env(name: str, value: str, expected: str, default: str) -> None:
    if (name, value) not in _warned_env:  # once per variable and value
        _warned_env.add((name, value))
        log.warning("gil_adapt: %s=%r is not %s; using the default (%s)", name, value,
                    expected, default)


def env_flag(name: str, default: bool) -> bool:
    """A yes/no environment variable: ``0/1``, ``true/false``, ``yes/no``, ``on/off`` in
    any case. Unset or empty: ``default``; any other value logs one warning and gives
    ``default`` (a typo never breaks the program)."""
    env = os.environ.get(name, "").strip().lower()
    if not env:
        return default
    if env in _TRUE:
        return True
    if env in _FALSE:
        return False
    _bad_env(name, os.environ[name], "one of 0/1, true/false, yes/no, on/off",
             "on" if default else "off")
    return default


def env_count(name: str, allowed: str, off_is_zero: bool = False) -> Optional[int]:
    """The integer >= 0 in environment variable ``name``; None when unset or empty, and
    when the value is not such an integer (one warning says so; ``allowed`` says what it
    may be). With ``off_is_zero``, ``off/false/no`` read as 0."""
    raw = os.environ.get(name)
    env = (raw or "").strip()
    if not env:
        return None
    if off_is_zero and env.lower() in _FALSE[1:]:
        return 0
    try:
        value = int(env)
    except ValueError:
        value = -1
    if value < 0:
        _bad_env(name, raw or "", allowed, "unset")
        return None
    return value


def calm_default() -> None:
    """The executor's setting: GIL_ADAPT_CALM / GIL_ADAPT_CALM_ABOVE where set; the rest
    as calm_gil() chose, or the defaults if it did not."""
    global _calm_chosen
    keep = env_count("GIL_ADAPT_CALM", "0 (off) or a positive count", off_is_zero=True)
    above = env_count("GIL_ADAPT_CALM_ABOVE", "a count >= 0")
    if keep is None and above is None and _calm_chosen:
        return
    now_keep, _, now_above = _core.calm()
    if keep is None:
        keep = now_keep if _calm_chosen else CALM_DEFAULT
    if above is None:
        above = now_above if _calm_chosen else CALM_ABOVE_DEFAULT
    _core.set_calm_above(above)
    _core.set_calm(keep)
    _calm_chosen = True


def capabilities() -> Dict[str, Any]:
    """What the ledger can measure here and how (``exact``/``estimated``/``unavailable``).

    The first call installs the hook (as the first measurement would), so the answer is
    what measurements will get; after :func:`uninstall` it reports the hook as it is."""
    if _install_rc is None and not _uninstalled:
        install()
    caps = dict(_core.capabilities())
    caps["python"] = sys.version.split()[0]
    caps["implementation"] = sys.implementation.name
    caps["installed"] = _install_rc == 0
    caps["gil_calm_keep"], caps["gil_calm_stretched"], caps["gil_calm_above"] = _core.calm()
    caps.update(_core.limits())
    if caps["gil_wait"] != "exact":
        caps["reason"] = caps["gil_wait_reason"]
    return caps


def process_name() -> str:
    """This process's name as the kernel has it (what an unnamed thread is called)."""
    try:
        with open("/proc/self/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _python_names() -> Dict[int, str]:
    names = {}
    for t in threading.enumerate():
        native = getattr(t, "native_id", None)
        if native is not None:
            names[native] = t.name
    return names


def _raw() -> tuple:
    now, rows, exited = _core.read()
    return now, [dict(zip(_FIELDS, row)) for row in rows], dict(zip(_FIELDS, exited))


def snapshot() -> Dict[str, Any]:
    """Cumulative per-thread counters now.

    ``{"time_ns": int, "threads": {native_thread_id: {"name", "alive", "cpu_ns",
    "gil_wait_ns", "lock_wait_ns", "runq_wait_ns", "io_wait_ns", "idle_ns", "wall_ns"}}}``.
    Threads that exited stay listed (``alive`` False) with their final totals for a few
    seconds; ``exited`` holds the sum over every exited thread since the ledger started,
    read at the same instant as the threads (see :func:`diff`).
    """
    names = _python_names()
    now, rows, exited = _raw()
    threads: Dict[int, Dict[str, Any]] = {}
    for r in rows:
        tid = r["tid"]
        entry = {k: r[k] for k in ("wall_ns", "overlap_ns", "gil_held_ns") + STATES + _RAW}
        entry["name"] = names.get(tid, r["os_name"])
        entry["alive"] = bool(r["alive"])
        entry["start_ns"] = r["start_ns"]
        entry["serial"] = r["serial"]
        entry["waiting"] = WAITING.get(r["waiting"])
        if tid in threads and threads[tid]["alive"] and not entry["alive"]:
            continue  # a reused tid: keep the live thread under its id
        threads[tid] = entry
    return {
        "time_ns": now,
        "threads": threads,
        "exited": {k: exited[k] for k in ("wall_ns", "overlap_ns", "gil_held_ns") + STATES + _RAW},
        "gil_switches": _core.gil_switches(),
    }


def _beta(gil: int, io: int) -> Optional[float]:
    total = gil + io
    return gil / total if total > 0 else None


def free_threaded() -> bool:
    """True while this process runs without a GIL (a free-threaded build, GIL disabled)."""
    return not getattr(sys, "_is_gil_enabled", lambda: True)()


def _derive(d: Dict[str, Any]) -> None:
    if free_threaded():
        # No GIL: the contention a thread meets is the run queue (too few cores) and the
        # locks; they stand where the GIL wait stood.
        d["beta"] = _beta(d["runq_wait_ns"] + d["lock_wait_ns"], d["io_wait_ns"])
    else:
        d["beta"] = _beta(d["gil_wait_ns"], d["io_wait_ns"])
    contention = d["gil_wait_ns"] + d["runq_wait_ns"]
    denom = contention + d["io_wait_ns"]
    d["contention"] = contention / denom if denom > 0 else None
    d["beta_legacy"] = 1.0 - d["cpu_ns"] / d["wall_ns"] if d["wall_ns"] > 0 else None


_KEYS = ("wall_ns",) + _RAW + ("gil_held_ns",)  # what _unlisted sums; finish() takes all but the last


def _partition(inputs: Dict[str, int]) -> Dict[str, Any]:
    """The C core's partition of one thread's inputs over an interval (negatives as 0)."""
    return dict(zip(_FIELDS, _core.finish(**{k: max(0, int(v)) for k, v in inputs.items()})))


def _unlisted(before: Dict[str, Any], after: Dict[str, Any]) -> Optional[List[int]]:
    """Raw figures, over the interval, of the threads that exited in it and are no longer
    listed in ``after`` (records are listed a few seconds after exit, then only in the
    exited aggregate): the aggregate's growth, less the final totals of the exited threads
    still listed, less what the unlisted ones had at ``before``. None when there are none."""
    eb, ea = before.get("exited"), after.get("exited")
    if not eb or not ea:
        return None
    grew = [ea[k] - eb[k] for k in _KEYS]
    if grew[0] <= 0:
        return None
    listed = {(tid, a["serial"]) for tid, a in after["threads"].items()}
    for tid, a in after["threads"].items():
        b = before["threads"].get(tid)
        if not a["alive"] and not (b is not None and b["serial"] == a["serial"]
                                   and not b["alive"]):
            grew = [g - a[k] for g, k in zip(grew, _KEYS)]  # exited within the interval
    for tid, b in before["threads"].items():
        if b["alive"] and (tid, b["serial"]) not in listed:
            grew = [g - b[k] for g, k in zip(grew, _KEYS)]  # its part before the interval
    if grew[0] <= 0:
        return None
    return [max(0, g) for g in grew]


def diff(before: Dict[str, Any], after: Dict[str, Any]) -> Dict[str, Any]:
    """Per-thread states over the interval between two snapshots, re-partitioned.

    Threads that exited during the interval and are no longer listed (a long interval)
    are not lost: their time is in ``result["unlisted"]`` (one row for all of them) and
    in the totals."""
    threads: Dict[int, Dict[str, Any]] = {}
    for tid, a in after["threads"].items():
        b = before["threads"].get(tid)
        if b is not None and b["serial"] != a["serial"]:
            b = None  # a different thread that reused the id
        if b is not None and not b["alive"]:
            continue  # exited before the interval began
        row = _partition({k: a[k] - (b[k] if b else 0) for k in ("wall_ns",) + _RAW})
        entry = {k: row[k] for k in ("wall_ns", "overlap_ns") + STATES}
        entry["gil_held_ns"] = max(0, a["gil_held_ns"] - (b["gil_held_ns"] if b else 0))
        entry["name"] = a["name"]
        entry["alive"] = a["alive"]
        _derive(entry)
        threads[tid] = entry
    rows = list(threads.values())
    unlisted = _unlisted(before, after)
    extra: Optional[Dict[str, Any]] = None
    if unlisted is not None:
        row = _partition(dict(zip(_KEYS[:-1], unlisted[:-1])))
        extra = {k: row[k] for k in ("wall_ns", "overlap_ns") + STATES}
        extra["gil_held_ns"] = min(unlisted[-1], extra["wall_ns"])
        _derive(extra)
        rows.append(extra)
    total = {k: sum(t[k] for t in rows) for k in ("wall_ns", "gil_held_ns") + STATES}
    _derive(total)
    elapsed = after["time_ns"] - before["time_ns"]
    # Share of the interval during which some thread held the GIL (exact: take/drop hooks).
    total["gil_utilisation"] = min(1.0, total["gil_held_ns"] / elapsed) if elapsed > 0 else None
    return {"threads": threads, "total": total, "unlisted": extra,
            "gil_switches": max(0, after["gil_switches"] - before["gil_switches"])
            if after["gil_switches"] >= 0 and before["gil_switches"] >= 0 else None,
            "elapsed_ns": after["time_ns"] - before["time_ns"]}


class measure:
    """Context manager: ``with gil_adapt.measure() as m: ...`` then ``m.result``.

    ``result["threads"][native_id]`` holds each thread's ``*_ns`` states over the block
    and its ``beta`` (free-threaded: run-queue and lock waits in the GIL wait's place);
    ``result["total"]`` their sums with ``beta``, ``beta_legacy``
    (1 - cpu/wall), ``contention`` ((gil + runq) / (gil + runq + io)) and
    ``gil_utilisation`` (time some thread held the GIL / the block's length).
    ``gil_held_ns`` (time holding the GIL) overlaps cpu and runq: it is not a state.
    Measurements may nest and may run in several threads at once: each reads the
    process-wide ledger, which is never reset.
    """

    def __init__(self) -> None:
        self.result: Optional[Dict[str, Any]] = None
        self._before: Optional[Dict[str, Any]] = None

    def __enter__(self) -> "measure":
        install()
        self._before = snapshot()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._before is None:
            raise RuntimeError("measure() exited without being entered")
        self.result = diff(self._before, snapshot())
        self._before = None
