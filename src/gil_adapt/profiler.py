"""``gil-adapt run``: profile an unmodified program with the ledger on.

::

    gil-adapt run [options] script.py [args ...]
    gil-adapt run [options] -m module [args ...]

The program runs in this process, in the main thread, as ``python script.py`` would run it
(``sys.argv``, ``sys.path[0]``, ``__main__``); its output, exit status and signal handling
are its own (an uncaught exception prints its traceback and exits 1; KeyboardInterrupt
ends the process by SIGINT, as python does). The profiler's only additions are a daemon
sampler thread and, with ``--port``, the metrics exporter (see :mod:`gil_adapt.metrics`);
everything it prints goes to stderr.

What it shows, per thread and for the whole program: the ledger's states as shares of wall
time (cpu, gil_wait, lock_wait, runq_wait, io_wait, idle), beta, GIL utilisation (exact:
the time some thread held the GIL), contention and a verdict; and which Python functions
those states belong to.

**Per-thread and process figures** are the ledger's own, between a read taken just before
the program starts and one taken at its end (after its non-daemon threads were joined and
its atexit handlers ran: the report is an atexit handler registered before the program
starts). Threads that ended are kept; beyond ``MAX_RECORDS`` of them, those the ledger no
longer lists are summed into one row.

**Attribution to functions** (method ``"ledger-interval"``): the sampler wakes about
``--sample-hz`` times a second; each time it takes every thread's innermost Python frame
(``sys._current_frames()``, which needs the GIL for a few microseconds) and reads the
ledger's raw counters (without the GIL). Each thread's counters since the previous sample
— its exact time in each state over that interval — go to the function it is in at the
sample; the partition into states is made per (thread, function) at the end. So the
per-function times add up to the per-thread times, and a thread that sits in one function
is attributed exactly; for threads that move between functions within an interval the
attribution is sampled. Executor workers are sampled the same way (no task boundaries are
used). The sampler keeps its own CPU time (almost all of it with the GIL released, reading
/proc) under ``DUTY`` (1 %) of one core by slowing down when there are many threads.
Each sample takes the GIL twice (waking up, and after reading the ledger); with GIL-bound
threads each take waits up to the switch interval, so the rate reached is at most about
20/s there. The default rate is 20/s: on 4 GIL-bound threads pinned to one core, 50-100
samples/s cost about 5 % of their throughput, 20/s about 1 % (within noise).

The live table (``--top``, or by default when stderr is a terminal) shows the last
``--interval`` seconds; the final report covers the whole run. The timeline (``--json``,
``--plot``: each thread's states per bin of at most 0.1 s, bins doubling in width past
``MAX_BINS``) covers the report's threads, under the report's names: the
``TIMELINE_THREADS`` with the most wall time one by one, the others summed.
"""
from __future__ import annotations

import atexit
import builtins
import importlib.util
import io
import json
import logging
import math
import operator
import os
import runpy
import signal
import sys
import threading
import time
import types
from array import array
from dataclasses import dataclass, field
from typing import Any, Dict, IO, List, Optional, Sequence, Tuple

from . import _core, _ledger

log = logging.getLogger("gil_adapt")

USAGE = """\
usage: gil-adapt run [options] script.py [args ...]
       gil-adapt run [options] -m module [args ...]

Runs an unmodified Python program with the ledger on; shows per thread and for the whole
program where the time goes (cpu, GIL wait, lock wait, run-queue wait, I/O, idle), beta,
GIL utilisation, a verdict, and which functions wait on the GIL or on I/O.
The program's stdout, exit status and signals are its own; reports go to stderr.

options:
  --interval S     live table refresh and timeline resolution cap, seconds (default 1)
  --top            show the live table on stderr even when it is not a terminal
  --no-live        never show the live table
  --json FILE      also write the final report as JSON to FILE
  --plot FILE.png  draw each thread's states over time (needs matplotlib)
  --sample-hz HZ   function samples per second at most (default 10)
  --port PORT      serve Prometheus metrics on PORT while the program runs (0: any;
                   per-thread series: GIL_ADAPT_METRICS_PER_THREAD=thread|name|none,
                   GIL_ADAPT_METRICS_MAX_THREAD_SERIES=N, see gil_adapt.metrics)
  --addr ADDR      address for --port (default 127.0.0.1)
  -h, --help       this text
"""

STATE_KEYS = ("cpu_ns", "gil_wait_ns", "lock_wait_ns", "runq_wait_ns", "io_wait_ns", "idle_ns")
STATE_NAMES = {"cpu_ns": "cpu", "gil_wait_ns": "gil_wait", "lock_wait_ns": "lock_wait",
               "runq_wait_ns": "runq_wait", "io_wait_ns": "io_wait", "idle_ns": "idle"}
BOUND = {"cpu_ns": "CPU-bound", "gil_wait_ns": "GIL-bound", "lock_wait_ns": "lock-bound",
         "runq_wait_ns": "core-bound", "io_wait_ns": "I/O-bound", "idle_ns": "idle"}
BETA_THRESHOLD = 0.6  # waiting mostly for the GIL: more threads only queue for it
# The process is GIL-bound when its threads queue for the GIL at least this share of
# their active time (cpu + gil_wait + runq_wait + io_wait) and either their waiting is
# mostly for the GIL (beta) or the GIL is busy at least GIL_BUSY of the time (I/O threads
# beside GIL-bound ones lower beta, not the verdict).
GIL_SHARE_BOUND = 0.25
GIL_BUSY = 0.5
DUTY = 0.01           # the sampler's CPU time, at most this share of one core
MAX_RECORDS = 4096    # exited threads followed one by one; older ones are folded together
MAX_BINS = 400        # timeline bins per thread; past it bins double in width
TIMELINE_THREADS = 64 # threads in the timeline one by one (the most wall time); the rest summed
_SERIES = ("wall_ns",) + STATE_KEYS  # a closed bin: its index, then these (ns)
_WIDTH = 1 + len(_SERIES)            # ints per closed bin in a series
OWN_THREAD_PREFIX = "gil-adapt-"
_INTERRUPTED = 130    # the program ended by KeyboardInterrupt (its shell status)
ATTRIBUTION_METHOD = (
    "ledger-interval: each thread's exact state times between two samples go to the "
    "innermost Python function it is in at the later sample (sys._current_frames(), which "
    "holds the GIL briefly; the ledger is read without it). Executor tasks are sampled "
    "the same way, not split at task boundaries.")

_VEC_KEYS = ("wall_ns",) + _ledger._RAW
_F = _ledger._FIELDS
_I_TID, _I_SERIAL, _I_HELD = _F.index("tid"), _F.index("serial"), _F.index("gil_held_ns")
_I_ALIVE, _I_REGISTERED, _I_OS_NAME = _F.index("alive"), _F.index("registered"), _F.index("os_name")
_vec_of = operator.itemgetter(*(_F.index(k) for k in _VEC_KEYS))
_ZERO = (0,) * len(_VEC_KEYS)
_NO_FRAME = "(outside Python code)"


class UsageError(Exception):
    """Bad command line: the message says what, the exit status is 2."""


# ---- options -----------------------------------------------------------------------------


@dataclass
class Options:
    interval: float = 1.0
    top: bool = False
    live: Optional[bool] = None  # None: when stderr is a terminal
    json_path: Optional[str] = None
    plot_path: Optional[str] = None
    sample_hz: float = 10.0
    port: Optional[int] = None
    addr: str = "127.0.0.1"
    module: Optional[str] = None
    script: Optional[str] = None
    args: List[str] = field(default_factory=list)
    help: bool = False


_VALUED = ("--interval", "--json", "--plot", "--sample-hz", "--port", "--addr")


def _positive(opt: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{opt} needs a number, not {text!r}") from None
    if not v > 0 or math.isinf(v):
        raise UsageError(f"{opt} must be greater than 0 (got {text})")
    return v


def parse_args(argv: Sequence[str]) -> Options:
    """Options up to the script (or ``-m module``); everything after it is the program's."""
    o = Options()
    i = 0
    argv = list(argv)
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if a in ("-h", "--help"):
            o.help = True
            return o
        if a == "-m" or (a.startswith("-m") and not a.startswith("--")):
            mod = a[2:] or (argv[i + 1] if i + 1 < len(argv) else "")
            if not mod:
                raise UsageError("-m needs a module name")
            o.module = mod
            o.args = argv[i + (1 if a[2:] else 2):]
            return _check(o)
        if not a.startswith("-") or a == "-":
            break
        name, eq, value = a.partition("=")
        if name in _VALUED:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"{name} needs a value")
                value = argv[i + 1]
                i += 1
            if name == "--interval":
                o.interval = _positive(name, value)
            elif name == "--sample-hz":
                o.sample_hz = _positive(name, value)
            elif name == "--json":
                o.json_path = value
            elif name == "--plot":
                o.plot_path = value
            elif name == "--addr":
                o.addr = value
            else:
                try:
                    o.port = int(value)
                except ValueError:
                    raise UsageError(f"--port needs an integer, not {value!r}") from None
                if not 0 <= o.port <= 65535:
                    raise UsageError(f"--port must be in 0..65535 (got {value})")
        elif a == "--top" and not eq:
            o.top = True
        elif a == "--no-live" and not eq:
            o.live = False
        else:
            raise UsageError(f"unknown option {a!r}")
        i += 1
    if i >= len(argv):
        raise UsageError("no program given: gil-adapt run [options] script.py [args ...]")
    o.script = argv[i]
    o.args = argv[i + 1:]
    return _check(o)


#: Formats the plot can be written in (matplotlib's, by file extension).
PLOT_FORMATS = ("png", "svg", "pdf", "jpg", "jpeg")


def _check(o: Options) -> Options:
    for opt, path in (("--json", o.json_path), ("--plot", o.plot_path)):
        if path is not None:
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise UsageError(f"{opt} {path}: no such directory {parent!r}")
    if o.plot_path is not None:
        ext = os.path.splitext(o.plot_path)[1].lstrip(".").lower()
        if ext not in PLOT_FORMATS:
            raise UsageError(f"--plot {o.plot_path}: the file name must end in one of "
                             f"{', '.join('.' + f for f in PLOT_FORMATS)}")
    return o


# ---- the sampler ---------------------------------------------------------------------------


def _add(a: Tuple[int, ...], b: Tuple[int, ...]) -> Tuple[int, ...]:
    return tuple(map(operator.add, a, b))


def _states(vec: Sequence[int]) -> Dict[str, int]:
    """The ledger's partition of one accumulated raw vector (wall + raw inputs)."""
    row = _ledger._partition(dict(zip(_VEC_KEYS, vec)))
    out = {k: row[k] for k in ("wall_ns",) + _ledger.STATES}
    return out


def _code_key(code: Any) -> Tuple[str, str, int]:
    if isinstance(code, str):
        return (code, "", 0)
    name = getattr(code, "co_qualname", None) or code.co_name
    return (name, code.co_filename, code.co_firstlineno)


Key = Tuple[int, int]  # a ledger record: (tid, serial)
#: Where exited threads folded together keep their function times and timeline bins (no
#: thread has id 0); the report shows them as one row with tid 0.
FOLDED: Key = (0, 0)


def _prefer(a: Tuple[Any, ...], b: Tuple[Any, ...], tracked: Dict[Key, Any]) -> bool:
    """Of two live ledger records of one tid, whether a is the thread's own (keep it).

    The record a thread registered itself holds its GIL and lock waits; a second live
    record for the same tid (made by a reader's /proc discovery racing the thread's own
    registration) has only the kernel's cpu/run-queue figures and would show its GIL
    waits as I/O. Prefer the registered record, then the one already followed, then the
    older one.
    """
    if a[_I_REGISTERED] != b[_I_REGISTERED]:
        return bool(a[_I_REGISTERED])
    a_known = (a[_I_TID], a[_I_SERIAL]) in tracked
    if a_known != ((b[_I_TID], b[_I_SERIAL]) in tracked):
        return a_known
    return a[_I_SERIAL] < b[_I_SERIAL]


class Sampler:
    """The daemon thread: function samples, timeline bins and the live table.

    Everything comes from its own reads of the ledger (``_core.read()``), one per
    sample, de-duplicated per thread (see :func:`_prefer`): the per-thread report and the
    live table are ``_ledger.diff`` of two of them.
    """

    def __init__(self, opts: Options, out: IO[str]) -> None:
        self.opts = opts
        self.out = out
        self.own_tids: set = set()
        self.names: Dict[Key, str] = {}
        self.born: Dict[int, str] = {}  # native id -> threading name, told by the thread
        self._prev_profile: Any = None
        self.rows: Dict[Key, Tuple[Any, ...]] = {}  # the latest row of every record followed
        self.base: Dict[str, Any] = {}              # snapshot-like, at the start
        self.at_start: Dict[Key, Tuple[Tuple[int, ...], int]] = {}  # every record's, then
        self.last_code: Dict[Key, Any] = {}
        self.by_func: Dict[Tuple[Key, Any], Tuple[int, ...]] = {}
        self.samples_by_func: Dict[Tuple[Key, Any], int] = {}
        self.duplicates: set = set()
        # Exited threads past MAX_RECORDS: their time summed (wall + raw inputs), GIL held.
        self.folded = 0
        self.folded_vec: Tuple[int, ...] = _ZERO
        self.folded_held = 0
        # Timeline (only for --json/--plot): per thread, the raw counters of its open bin,
        # and its closed bins partitioned into states, flat in an array (8 ints a bin).
        self.keep_timeline = bool(opts.json_path or opts.plot_path)
        self.open_bin: Dict[Key, Tuple[int, Tuple[int, ...]]] = {}
        self.series: Dict[Key, "array[int]"] = {}
        self.bin_ns = int(min(opts.interval, 0.1) * 1e9)
        self.samples = 0
        self.cost_s = 0.0
        self.live_tables = 0
        self.t0_ns = 0
        self.now_ns = 0
        self._live_snap: Optional[Dict[str, Any]] = None
        self._caps: Optional[Dict[str, Any]] = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # ticks: the sampler's and the final one
        self._thread: Optional[threading.Thread] = None
        self.live = opts.live is not False and (opts.top or _isatty(out))

    def start(self) -> None:
        now, rows, _exited = _core.read()
        for r in self._dedupe(rows):  # exited records too: they will not change
            self.rows[(r[_I_TID], r[_I_SERIAL])] = r
            self.at_start[(r[_I_TID], r[_I_SERIAL])] = (_vec_of(r), r[_I_HELD])
        self.t0_ns = self.now_ns = now
        self._switches = _core.gil_switches()
        self.base = self.snapshot()
        self._live_snap = self.base
        # Each thread started through threading tells its name as it starts (a thread
        # that lives between two samples would otherwise be known by its id only).
        self._prev_profile = getattr(threading, "_profile_hook", None)
        threading.setprofile(self._on_thread_start)
        self._thread = threading.Thread(target=self._run, name=OWN_THREAD_PREFIX + "sampler",
                                        daemon=True)
        self._thread.start()

    def _on_thread_start(self, frame: Any, event: str, arg: Any) -> None:
        t = threading.current_thread()
        native = getattr(t, "native_id", None)
        if native is not None:
            self.born[native] = t.name
        sys.setprofile(self._prev_profile)  # once per thread: hand over to the program's
        if self._prev_profile is not None:
            self._prev_profile(frame, event, arg)

    def stop(self) -> None:
        if getattr(threading, "_profile_hook", None) == self._on_thread_start:
            threading.setprofile(self._prev_profile)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self.tick(final=True)

    def _dedupe(self, rows: List[Tuple[Any, ...]]) -> List[Tuple[Any, ...]]:
        live: Dict[int, Tuple[Any, ...]] = {}
        for r in rows:
            if r[_I_ALIVE]:
                other = live.get(r[_I_TID])
                if other is None or _prefer(r, other, self.rows):
                    live[r[_I_TID]] = r
        out = []
        for r in rows:
            if r[_I_ALIVE] and live[r[_I_TID]] is not r:
                self.duplicates.add((r[_I_TID], r[_I_SERIAL]))
                continue
            out.append(r)
        return out

    def shown_records(self) -> Dict[int, Key]:
        """The record that stands for each thread id in the report and the timeline: the
        live one of a reused id, else its latest."""
        chosen: Dict[int, Key] = {}
        for key, r in self.rows.items():
            old = chosen.get(key[0])
            if old is not None and (self.rows[old][_I_ALIVE]
                                    or (not r[_I_ALIVE] and old[1] > key[1])):
                continue
            chosen[key[0]] = key
        return chosen

    def snapshot(self) -> Dict[str, Any]:
        """The records followed, shaped like ``_ledger.snapshot()`` (one per tid)."""
        threads: Dict[int, Dict[str, Any]] = {}
        for tid, key in self.shown_records().items():
            r = self.rows[key]
            entry = dict(zip(_VEC_KEYS, _vec_of(r)))
            entry.update(serial=key[1], alive=bool(r[_I_ALIVE]), gil_held_ns=r[_I_HELD],
                         name=self.names.get(key) or self.born.get(tid)
                         or _native_name(tid, r[_I_OS_NAME]))
            threads[tid] = entry
        return {"time_ns": self.now_ns, "threads": threads, "gil_switches": self._switches}

    _switches = -1

    def _run(self) -> None:
        self.own_tids.add(threading.get_native_id())
        period = 1.0 / self.opts.sample_hz
        next_live = time.monotonic() + self.opts.interval
        while not self._stop.is_set():
            c0 = time.thread_time()
            try:
                self.tick()
                if self.live and time.monotonic() >= next_live:
                    next_live += self.opts.interval * max(
                        1, math.ceil((time.monotonic() - next_live) / self.opts.interval))
                    self._show_live()
            except Exception:  # never take the program down; say it once
                log.exception("gil-adapt run: the sampler failed; profiling stops here")
                return
            cost = time.thread_time() - c0
            self.cost_s += cost
            self._stop.wait(max(period, cost / DUTY) - cost)

    def tick(self, final: bool = False) -> None:
        """One sample: each thread's counters since the last go to its current function."""
        with self._lock:
            code_of: Dict[int, Any] = {}
            name_of: Dict[int, str] = {}
            if not final:
                frames = sys._current_frames()
                for t in threading.enumerate():
                    native = getattr(t, "native_id", None)
                    if native is None:
                        continue
                    name_of[native] = t.name
                    frame = frames.get(t.ident)
                    if frame is not None:
                        code_of[native] = frame.f_code
                del frames
            now, rows, _exited = _core.read()
            self._switches = _core.gil_switches()
            self.now_ns = now
            bin_idx = max(0, now - self.t0_ns) // self.bin_ns
            self.samples += 1
            for r in self._dedupe(rows):
                tid = r[_I_TID]
                key = (tid, r[_I_SERIAL])
                old_row = self.rows.get(key)
                self.rows[key] = r
                if tid in self.own_tids:
                    continue
                vec = _vec_of(r)
                prev = _vec_of(old_row) if old_row is not None else _ZERO
                if vec[0] == prev[0]:
                    continue  # no time passed: an exited thread
                delta = tuple(map(operator.sub, vec, prev))
                if tid in name_of:
                    self.names[key] = name_of[tid]
                elif key not in self.names and tid in self.born:
                    self.names[key] = self.born[tid]
                if final or tid not in name_of:
                    # exited since (or never known to threading): where it was last seen
                    code = self.last_code.get(key, _NO_FRAME)
                else:
                    code = code_of.get(tid, _NO_FRAME)  # known, but running no Python code
                    self.last_code[key] = code
                fk = (key, code)
                old = self.by_func.get(fk)
                self.by_func[fk] = delta if old is None else _add(old, delta)
                self.samples_by_func[fk] = self.samples_by_func.get(fk, 0) + 1
                if self.keep_timeline:
                    self._bin_add(key, bin_idx, delta)
            if final:
                for key in list(self.open_bin):
                    self._close_bin(key)
            elif bin_idx >= MAX_BINS:
                self._coarsen()
            if len(self.rows) > MAX_RECORDS:
                self._fold({(r[_I_TID], r[_I_SERIAL]) for r in rows})

    def _fold(self, listed: set) -> None:
        """Bounds memory: exited threads the ledger no longer lists become one sum (their
        timeline bins too, under FOLDED)."""
        gone = {key for key, r in self.rows.items() if not r[_I_ALIVE] and key not in listed}
        folded_series: List["array[int]"] = []
        for key in gone:
            r = self.rows.pop(key)
            if key[0] in self.own_tids:
                continue
            start, held0 = self.at_start.pop(key, (_ZERO, 0))  # only time since start
            self.folded += 1
            self.folded_vec = _add(self.folded_vec, tuple(map(operator.sub, _vec_of(r), start)))
            self.folded_held += r[_I_HELD] - held0
            self.names.pop(key, None)
            self.last_code.pop(key, None)
            if key in self.open_bin:  # an unlisted record gets no more time: its bin is final
                self._close_bin(key)
            arr = self.series.pop(key, None)
            if arr is not None:
                folded_series.append(arr)
        if folded_series:
            self.series[FOLDED] = _merge_series([self.series.get(FOLDED, array("q"))]
                                                + folded_series)
        for tid in {key[0] for key in gone} - {key[0] for key in self.rows}:
            self.born.pop(tid, None)
        for fk in [fk for fk in self.by_func if fk[0] in gone]:
            to = (FOLDED, fk[1])
            self.by_func[to] = _add(self.by_func.get(to, _ZERO), self.by_func.pop(fk))
            self.samples_by_func[to] = (self.samples_by_func.get(to, 0)
                                        + self.samples_by_func.pop(fk, 0))

    def _bin_add(self, key: Key, idx: int, delta: Tuple[int, ...]) -> None:
        ob = self.open_bin.get(key)
        if ob is not None and ob[0] == idx:
            self.open_bin[key] = (idx, _add(ob[1], delta))
            return
        if ob is not None:
            self._close_bin(key)
        self.open_bin[key] = (idx, delta)

    def _close_bin(self, key: Key) -> None:
        idx, vec = self.open_bin.pop(key)
        st = _states(vec)
        self.series.setdefault(key, array("q")).extend([idx] + [st[k] for k in _SERIES])

    def _coarsen(self) -> None:
        """Doubles the bin width: bins 2i and 2i+1 become bin i."""
        self.bin_ns *= 2
        width = _WIDTH
        for key, arr in self.series.items():
            merged = array("q")
            for j in range(0, len(arr), width):
                row = arr[j:j + width]
                row[0] //= 2
                if len(merged) and merged[-width] == row[0]:
                    for k in range(1, width):
                        merged[len(merged) - width + k] += row[k]
                else:
                    merged.extend(row)
            self.series[key] = merged
        self.open_bin = {key: (idx // 2, vec) for key, (idx, vec) in self.open_bin.items()}

    def _show_live(self) -> None:
        with self._lock:
            snap = self.snapshot()
        assert self._live_snap is not None
        d = _ledger.diff(self._live_snap, snap)
        self._live_snap = snap
        summary = summarise(d, self.own_tids)
        if self._caps is None:
            self._caps = _ledger.capabilities()
        text = render_threads(summary, title=f"gil-adapt run: last {self.opts.interval:g} s")
        text += f"verdict (last {self.opts.interval:g} s): {verdict(summary, self._caps)['text']}\n"
        self.live_tables += 1
        try:
            if _isatty(self.out):
                self.out.write("\x1b[H\x1b[2J" + text)
            else:
                self.out.write(text + "\n")
            self.out.flush()
        except (OSError, ValueError):
            self.live = False


def _merge_series(series: Sequence["array[int]"]) -> "array[int]":
    """Several threads' closed bins as one series: the bins of equal index summed."""
    bins: Dict[int, List[int]] = {}
    for arr in series:
        for j in range(0, len(arr), _WIDTH):
            row = bins.get(arr[j])
            if row is None:
                bins[arr[j]] = list(arr[j + 1:j + _WIDTH])
            else:
                for k in range(_WIDTH - 1):
                    row[k] += arr[j + 1 + k]
    out = array("q")
    for idx in sorted(bins):
        out.append(idx)
        out.extend(bins[idx])
    return out


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


# ---- figures -------------------------------------------------------------------------------


def _shares(d: Dict[str, Any]) -> Dict[str, float]:
    wall = d["wall_ns"]
    return {STATE_NAMES[k]: (d[k] / wall if wall > 0 else 0.0) for k in STATE_KEYS}


def _bound(d: Dict[str, Any]) -> str:
    if d["wall_ns"] <= 0:
        return "-"
    return BOUND[max(STATE_KEYS, key=lambda k: d[k])]


def _own(tid: int, t: Dict[str, Any], own_tids: set) -> bool:
    return tid in own_tids or str(t.get("name", "")).startswith(OWN_THREAD_PREFIX)


def summarise(d: Dict[str, Any], own_tids: set) -> Dict[str, Any]:
    """The program's threads (the profiler's own left out) and their totals from a diff."""
    threads = []
    for tid, t in sorted(d["threads"].items()):
        if _own(tid, t, own_tids) or t["wall_ns"] <= 0:
            continue
        threads.append({"tid": tid, "name": t["name"], "alive": t["alive"],
                        **{k: t[k] for k in ("wall_ns", "gil_held_ns") + _ledger.STATES},
                        "beta": t["beta"], "contention": t["contention"],
                        "bound": _bound(t)})
    total = {k: sum(t[k] for t in threads) for k in ("wall_ns", "gil_held_ns") + _ledger.STATES}
    _ledger._derive(total)
    elapsed = d["elapsed_ns"]
    total["gil_utilisation"] = min(1.0, total["gil_held_ns"] / elapsed) if elapsed > 0 else None
    return {"threads": threads, "total": total, "elapsed_ns": elapsed,
            "gil_switches": d.get("gil_switches")}


def threads_would_suffice(total: Dict[str, Any], cores: float,
                          gil_exact: bool) -> Tuple[Optional[float], str]:
    """Little's law: the concurrency that keeps the bottleneck (GIL or cores) busy.

    With H the time the threads held the GIL, n their CPU time outside it (native code)
    and w their I/O time, the same work takes at least max(H, (H + n) / cores), and the
    number of threads busy at once that reaches that is (H + n + w) / that time.
    """
    held = total["gil_held_ns"] if gil_exact else total["cpu_ns"]
    native = max(0, total["cpu_ns"] - held)
    io_ns = total["io_wait_ns"]
    bottleneck = max(held, (held + native) / max(cores, 1.0))
    if bottleneck <= 0:
        return None, "no CPU time measured"
    how = ("estimate (Little's law: GIL-held, native CPU and I/O time of the threads, "
           f"{cores:g} usable core(s))")
    if not gil_exact:
        how += "; GIL-held time unavailable here: all CPU time counted as under the GIL"
    return (held + native + io_ns) / bottleneck, how


#: The GIL (or the cores) counts as at its limit from this busy share on.
LIMIT_BUSY = 0.7


def verdict(summary: Dict[str, Any], caps: Dict[str, Any]) -> Dict[str, Any]:
    """A plain-language verdict from the totals and the per-thread states.

    The Little's-law estimate of the threads that keep the GIL (or the cores) busy is
    compared with the threads that ran at once (their busy time over the run's length),
    never with every thread ever started: a thread-per-request server starts hundreds
    but runs a few at a time."""
    total = summary["total"]
    exact = caps.get("gil_wait") == "exact"
    cores = float(caps.get("usable_cores") or 1.0)
    active = sum(total[k] for k in ("cpu_ns", "gil_wait_ns", "runq_wait_ns", "io_wait_ns"))
    out: Dict[str, Any] = {"kind": "none", "text": "", "threads_would_suffice": None,
                           "estimate": None, "notes": []}
    if total["wall_ns"] <= 0:
        out["text"] = "no thread ran long enough to measure"
        return out
    share = {k: (total[k] / active if active > 0 else 0.0) for k in STATE_KEYS}
    util = total.get("gil_utilisation")
    beta = total.get("beta")
    n_est, how = threads_would_suffice(total, cores, exact)
    out["estimate"] = how
    n_int = None if n_est is None else max(1, math.ceil(n_est - 0.05))
    # Threads alive at once, not every thread ever seen: the mean number busy (CPU, waiting
    # for the GIL or a core, or in I/O) over the run, which the estimate is compared with
    elapsed = summary.get("elapsed_ns") or 0
    concurrency = active / elapsed if elapsed > 0 else None
    out["concurrency"] = concurrency
    if active <= 0:
        out["kind"], out["text"] = "waiting", (
            "threads only waited on each other (Python locks, queues, joins) or were idle")
    elif exact and share["gil_wait_ns"] >= GIL_SHARE_BOUND and (
            (beta is not None and beta >= BETA_THRESHOLD)
            or (util is not None and util >= GIL_BUSY)):
        out["kind"] = "gil-bound"
        out["threads_would_suffice"] = n_int
        n_txt = f"; {n_int} thread{'s' if n_int != 1 else ''} would suffice (estimate)" \
            if n_int is not None else ""
        out["text"] = f"GIL-bound: more threads will not help{n_txt}"
    elif not exact and (total.get("contention") or 0) >= BETA_THRESHOLD:
        out["kind"] = "contended"
        out["text"] = ("contended: the threads wait for the GIL or a core more than for I/O "
                       "(GIL waits are not measured here: " + str(caps.get("reason", "")) + ")")
    elif share["runq_wait_ns"] >= 0.25:
        out["kind"] = "cpu-saturated"
        out["text"] = (f"CPU-saturated: threads wait for a core ({cores:g} usable); "
                       "more threads will not help")
    elif share["io_wait_ns"] >= 0.5:
        out["kind"] = "io-bound"
        limit = "the GIL" if exact else "the cores"
        out["threads_would_suffice"] = n_int
        ran = "" if concurrency is None else f"; {concurrency:.1f} ran at once on average"
        busy = util if exact else (total["cpu_ns"] / (elapsed * cores) if elapsed else None)
        if n_int is not None and concurrency is not None and n_int <= concurrency * 1.1 \
                and busy is not None and busy >= LIMIT_BUSY:
            out["text"] = (f"I/O-bound, at {limit}'s limit: the threads mostly wait on I/O, "
                           f"but about {n_int} thread{'s' if n_int != 1 else ''} at once keep "
                           f"{limit} busy ({busy:.0%}){ran}; more will not help (estimate)")
        else:
            out["text"] = "I/O-bound: more concurrency would help"
            if n_int is not None:
                out["text"] += (f" (about {n_int if n_int <= 10000 else 'over 10000'} "
                                f"threads at once before {limit} saturates{ran}, estimate)")
    elif share["cpu_ns"] >= 0.5:
        out["kind"] = "cpu-bound"
        out["text"] = ("CPU-bound without contention: more threads would only contend for "
                       "the GIL unless the work releases it (native code)")
    else:
        out["kind"] = "mixed"
        out["text"] = "mixed: no single state dominates; see the threads and functions below"
    if util is not None and util >= 0.9 and out["kind"] not in ("gil-bound",):
        out["notes"].append(f"the GIL is held {util:.0%} of the time: it is close to "
                            "saturation, more Python work will queue for it")
    lock = total["lock_wait_ns"] / total["wall_ns"]
    if lock >= 0.2:
        out["notes"].append(f"{lock:.0%} of the threads' time is waiting on Python locks, "
                            "queues or joins (threads waiting for each other)")
    groups: Dict[str, List[str]] = {}
    for t in summary["threads"]:
        groups.setdefault(t["bound"], []).append(str(t["name"]))
    out["thread_groups"] = groups
    return out


# ---- report --------------------------------------------------------------------------------


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100.0 * x:5.1f}%"


def _num(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}"


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


_HEAD = ("   cpu  gil_wait  lock_wait  runq_wait  io_wait    idle   beta  bound")


def _row_states(shares: Dict[str, float]) -> str:
    return (f"{_pct(shares['cpu'])} {_pct(shares['gil_wait']):>9} {_pct(shares['lock_wait']):>10} "
            f"{_pct(shares['runq_wait']):>10} {_pct(shares['io_wait']):>8} {_pct(shares['idle']):>7}")


def render_threads(summary: Dict[str, Any], title: str, max_rows: int = 40) -> str:
    total = summary["total"]
    lines = [f"{title}: {len(summary['threads'])} thread(s), GIL utilisation "
             f"{_pct(total.get('gil_utilisation')).strip()}, beta {_num(total['beta'])}, "
             f"contention {_num(total['contention'])}",
             f"{'thread':<22} {'tid':>7} {_HEAD}"]
    rows = summary["threads"]
    for t in rows[:max_rows]:
        name = _clip(str(t["name"]) + ("" if t["alive"] else " (exited)"), 22)
        lines.append(f"{name:<22} {t['tid']:>7} {_row_states(_shares(t))} "
                     f"{_num(t['beta']):>6}  {t['bound']}")
    if len(rows) > max_rows:
        lines.append(f"  ... {len(rows) - max_rows} more thread(s) (see --json)")
    lines.append(f"{'all threads':<22} {'':>7} {_row_states(_shares(total))} "
                 f"{_num(total['beta']):>6}")
    return "\n".join(lines) + "\n"


def function_rows(sampler: Sampler) -> List[Dict[str, Any]]:
    """Per function: its threads' states summed over the intervals attributed to it."""
    acc: Dict[Tuple[str, str, int], Dict[str, Any]] = {}
    for (key, code), vec in sampler.by_func.items():
        st = _states(vec)
        fk = _code_key(code)
        row = acc.get(fk)
        if row is None:
            row = acc[fk] = {"function": fk[0], "file": fk[1], "line": fk[2], "threads": set(),
                             "samples": 0, **{k: 0 for k in ("wall_ns",) + STATE_KEYS}}
        row["threads"].add(key)
        row["samples"] += sampler.samples_by_func.get((key, code), 0)
        for k in ("wall_ns",) + STATE_KEYS:
            row[k] += st[k]
    out = []
    for row in acc.values():
        row["threads"] = len(row["threads"])
        row["bound"] = _bound(row)
        out.append(row)
    out.sort(key=lambda r: -r["wall_ns"])
    return out


def _where(row: Dict[str, Any]) -> str:
    if not row["file"]:
        return row["function"]
    return f"{row['function']} ({os.path.basename(row['file'])}:{row['line']})"


_PROCESS_NAME = _ledger.process_name()


def _native_name(tid: int, os_name: str) -> str:
    """A thread Python does not know (a native library's: BLAS, ONNX Runtime): its OS name
    when it set one, else "native thread <tid>" — not the process name it inherited."""
    if os_name and os_name != _PROCESS_NAME and not (
            _PROCESS_NAME and _PROCESS_NAME.startswith(os_name)):
        return os_name
    return f"native thread {tid}"


def render_functions(rows: List[Dict[str, Any]], max_rows: int = 15) -> str:
    # a function in which no time was measured (a wait that began as the run ended) says
    # nothing: left out
    rows = [r for r in rows if r["wall_ns"] >= 5_000_000]
    lines = [f"{'function':<40} {'threads':>7} {'time s':>8} {_HEAD.replace('   beta', '')}"]
    for r in rows[:max_rows]:
        lines.append(f"{_clip(_where(r), 40):<40} {r['threads']:>7} {r['wall_ns'] / 1e9:8.2f} "
                     f"{_row_states(_shares(r))}  {r['bound']}")
    if len(rows) > max_rows:
        lines.append(f"  ... {len(rows) - max_rows} more function(s) (see --json)")
    for key, label in (("gil_wait_ns", "waiting for the GIL"), ("io_wait_ns", "waiting on I/O"),
                       ("lock_wait_ns", "waiting on locks")):
        top = sorted((r for r in rows if r[key] > 0), key=lambda r: -r[key])[:3]
        total = sum(r[key] for r in rows)
        if top and total > 0:
            lines.append(f"most {label}: " + ", ".join(
                f"{_where(r)} {r[key] / total:.0%}" for r in top))
    return "\n".join(lines) + "\n"


def _series_dict(arr: "array[int]", bin_ns: int) -> Dict[str, List[float]]:
    """Closed bins as lists: bin centres (``t_s``), wall time (``wall_s``) and each state's
    share of it; bins without wall time are left out."""
    out: Dict[str, List[float]] = {"t_s": [], "wall_s": []}
    for k in STATE_KEYS:
        out[STATE_NAMES[k]] = []
    for j in range(0, len(arr), _WIDTH):
        wall = arr[j + 1]
        if wall <= 0:
            continue
        out["t_s"].append(round((arr[j] + 0.5) * bin_ns / 1e9, 4))
        out["wall_s"].append(round(wall / 1e9, 6))
        for n, k in enumerate(STATE_KEYS):
            out[STATE_NAMES[k]].append(round(arr[j + 2 + n] / wall, 4))
    return out


def timeline(sampler: Sampler, summary: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Per thread of the report, its states in each bin (shares of the bin's wall time).

    The threads are the report's (``summary``, by default the final one): the same
    records, names and count. The ``TIMELINE_THREADS`` with the most wall time are listed
    one by one in ``threads``; the bins of the others are summed in ``left_out`` (their
    number: ``threads_left_out``). ``threads_without_bins`` counts the report's threads
    with no timeline bin, so ``threads_total``, the report's count, is the sum of the
    three. ``folded_threads``: exited threads the report sums into one row (tid 0).
    """
    if summary is None:
        summary = _final_summary(sampler)
    shown = sampler.shown_records()
    rows: List[Tuple[int, Dict[str, Any], "array[int]"]] = []  # (wall ns, thread, bins)
    without_bins = 0
    for t in summary["threads"]:
        key = FOLDED if t["tid"] == FOLDED[0] else shown.get(t["tid"])
        arr = sampler.series.get(key) if key is not None else None
        wall = sum(arr[1::_WIDTH]) if arr is not None else 0
        if wall <= 0:
            without_bins += 1
            continue
        rows.append((wall, t, arr))
    rows.sort(key=lambda r: (-r[0], r[1]["tid"]))
    listed, rest = rows[:TIMELINE_THREADS], rows[TIMELINE_THREADS:]
    out = [{"tid": t["tid"], "name": t["name"], **_series_dict(arr, sampler.bin_ns)}
           for _, t, arr in sorted(listed, key=lambda r: r[1]["tid"])]
    left_out = None
    if rest:
        left_out = {"threads": len(rest),
                    **_series_dict(_merge_series([arr for _, _, arr in rest]), sampler.bin_ns)}
    return {"bin_s": sampler.bin_ns / 1e9, "threads": out,
            "threads_left_out": len(rest), "left_out": left_out,
            "threads_without_bins": without_bins, "threads_total": len(summary["threads"]),
            "folded_threads": sampler.folded}


def _seconds(d: Dict[str, Any]) -> Dict[str, float]:
    return {STATE_NAMES[k]: d[k] / 1e9 for k in STATE_KEYS}


def _final_summary(sampler: Sampler) -> Dict[str, Any]:
    """The report's threads and totals over the whole run (after ``sampler.stop()``)."""
    d = _ledger.diff(sampler.base, sampler.snapshot())
    if sampler.folded:
        entry = _states(sampler.folded_vec)
        entry.update(name=f"({sampler.folded} exited threads, summed)", alive=False,
                     gil_held_ns=sampler.folded_held)
        _ledger._derive(entry)
        d["threads"][FOLDED[0]] = entry
    return summarise(d, sampler.own_tids)


def build_report(sampler: Sampler, command: List[str],
                 exit_code: Optional[int]) -> Dict[str, Any]:
    """The final report (after ``sampler.stop()``) as a JSON-ready dict."""
    summary = _final_summary(sampler)
    caps = _ledger.capabilities()
    total = summary["total"]
    v = verdict(summary, caps)
    funcs = function_rows(sampler)
    execs = []
    try:
        from .metrics import executors
        execs = [{"name": name, **{k: st.get(k) for k in (
            "workers", "target_workers", "queue_length", "beta", "throughput", "submitted",
            "completed", "decisions")}} for name, st in executors()]
    except Exception:
        log.debug("gil-adapt run: executor stats unavailable", exc_info=True)
    elapsed = summary["elapsed_ns"] / 1e9
    return {
        "version": 1,
        "command": command,
        "exit_code": exit_code,
        "elapsed_s": elapsed,
        "capabilities": {k: caps.get(k) for k in ("gil_wait", "runq_wait", "lock_wait",
                                                  "python", "usable_cores") if k in caps},
        "process": {
            "threads": len(summary["threads"]),
            "thread_seconds": _seconds(total),
            "shares": _shares(total),
            "wall_s": total["wall_ns"] / 1e9,
            "gil_held_s": total["gil_held_ns"] / 1e9,
            "beta": total["beta"], "beta_legacy": total["beta_legacy"],
            "contention": total["contention"],
            "gil_utilisation": total["gil_utilisation"],
            "gil_utilisation_method": "exact: time some thread held the GIL (take/drop hooks) "
                                      "/ elapsed" if caps.get("gil_wait") == "exact"
            else "unavailable: no GIL hook here",
            "gil_switches": summary["gil_switches"],
        },
        "verdict": v,
        "threads": [{"tid": t["tid"], "name": t["name"], "alive": t["alive"],
                     "wall_s": t["wall_ns"] / 1e9, "gil_held_s": t["gil_held_ns"] / 1e9,
                     "seconds": _seconds(t), "shares": _shares(t), "beta": t["beta"],
                     "contention": t["contention"], "bound": t["bound"]}
                    for t in summary["threads"]],
        "functions": {
            "method": ATTRIBUTION_METHOD,
            "samples": sampler.samples,
            "rate_hz": sampler.samples / elapsed if elapsed > 0 else None,
            "rows": [{"function": r["function"], "file": r["file"], "line": r["line"],
                      "threads": r["threads"], "samples": r["samples"],
                      "wall_s": r["wall_ns"] / 1e9, "seconds": _seconds(r),
                      "shares": _shares(r), "bound": r["bound"]} for r in funcs[:500]],
        },
        "executors": execs,
        "timeline": timeline(sampler, summary) if sampler.keep_timeline else None,
        "profiler": {"sampler_cpu_s": sampler.cost_s, "samples": sampler.samples,
                     "live_tables": sampler.live_tables, "duty_limit": DUTY,
                     "duplicate_ledger_records_ignored": len(sampler.duplicates)},
        "_function_table": funcs,  # removed before JSON output
        "_summary": summary,
    }


def render_report(report: Dict[str, Any], target: str) -> str:
    p = report["process"]
    v = report["verdict"]
    out = ["", render_threads(report["_summary"],
                              title=f"gil-adapt run: {target}, {report['elapsed_s']:.2f} s")]
    util_how = "exact" if report["capabilities"].get("gil_wait") == "exact" else "unavailable"
    out.append(f"GIL utilisation {_pct(p['gil_utilisation']).strip()} ({util_how}), "
               f"beta {_num(p['beta'])} (legacy 1-cpu/wall {_num(p['beta_legacy'])}), "
               f"contention {_num(p['contention'])}, GIL switches {p['gil_switches']}\n")
    out.append(f"verdict: {v['text']}\n")
    for note in v.get("notes", []):
        out.append(f"  note: {note}\n")
    if v.get("threads_would_suffice") is not None:
        out.append(f"  ({v['estimate']})\n")
    groups = v.get("thread_groups", {})
    for label in ("GIL-bound", "I/O-bound", "CPU-bound", "lock-bound", "core-bound"):
        if groups.get(label):
            names = groups[label]
            out.append(f"  {label}: {', '.join(_clip(n, 30) for n in names[:8])}"
                       f"{' ...' if len(names) > 8 else ''}\n")
    f = report["functions"]
    out.append(f"\nfunctions ({f['samples']} samples, {f['rate_hz'] or 0:.0f}/s; "
               "states between samples go to the function a thread is in at the sample):\n")
    out.append(render_functions(report["_function_table"]))
    for ex in report["executors"]:
        out.append(f"executor {ex['name']}: workers {ex['workers']} (target "
                   f"{ex['target_workers']}), beta {_num(ex['beta'])}, decisions "
                   f"{ex['decisions']}\n")
    prof = report["profiler"]
    out.append(f"profiler: sampler CPU {prof['sampler_cpu_s']:.3f} s "
               f"({prof['sampler_cpu_s'] / max(report['elapsed_s'], 1e-9):.2%} of one core)\n")
    return "".join(out)


def _json_ready(report: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in report.items() if not k.startswith("_")}


# ---- running the program ---------------------------------------------------------------------


def _trim_tb(tb: Any) -> Any:
    skip = {os.path.abspath(__file__), os.path.abspath(runpy.__file__)}
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) in skip:
        tb = tb.tb_next
    return tb


def _fresh_main(path: Optional[str]) -> types.ModuleType:
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, __file__=path, __cached__=None,
                         __package__=None, __spec__=None, __loader__=None)
    if path is None:
        del main.__dict__["__file__"]
    sys.modules["__main__"] = main
    return main


def _run_target(opts: Options) -> int:
    """Runs the program like the interpreter would; returns its exit status."""
    try:
        if opts.module is not None:
            sys.argv = ["-m"] + opts.args
            sys.path[0] = os.getcwd()
            _fresh_main(None)
            runner = getattr(runpy, "_run_module_as_main", None)
            if runner is not None:
                runner(opts.module, True)
            else:  # pragma: no cover - every CPython has it
                runpy.run_module(opts.module, run_name="__main__", alter_sys=True)
        else:
            assert opts.script is not None
            path = opts.script
            sys.argv = [path] + opts.args
            sys.path[0] = os.path.dirname(os.path.realpath(path))
            if os.path.isdir(path) or not path.endswith((".py", ".pyw")) and \
                    _is_zip(path):
                runpy.run_path(path, run_name="__main__")
            else:
                full = os.path.abspath(path)  # as python >= 3.9 names __main__'s file
                with io.open_code(full) as fh:
                    source = fh.read()
                main = _fresh_main(full)
                code = compile(source, full, "exec", dont_inherit=True)
                exec(code, main.__dict__)
        return 0
    except SystemExit as e:
        return _exit_status(e)
    except BaseException as e:  # the program's uncaught exception: as python prints it
        tb = _trim_tb(e.__traceback__)
        e.__traceback__ = tb  # the default hook prints the exception's own traceback
        sys.excepthook(type(e), e, tb)
        return _INTERRUPTED if isinstance(e, KeyboardInterrupt) else 1


def _is_zip(path: str) -> bool:
    import zipfile
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def _exit_status(e: SystemExit) -> int:
    code = e.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


class _Session:
    """Everything started for one run, and the report produced once at the end."""

    def __init__(self, opts: Options, command: List[str]) -> None:
        self.opts = opts
        self.command = command
        self.pid = os.getpid()
        self.err = sys.stderr
        self.sampler = Sampler(opts, self.err)
        self.server: Any = None
        self.exit_code: Optional[int] = None
        self.done = False

    def finish(self) -> None:
        if self.done or os.getpid() != self.pid:
            return  # once; and never in a forked child
        self.done = True
        try:
            self.sampler.stop()
            report = build_report(self.sampler, self.command, self.exit_code)
            target = self.opts.script or f"-m {self.opts.module}"
            try:
                self.err.write(render_report(report, target))
                self.err.flush()
            except (OSError, ValueError):
                pass
            if self.opts.json_path:
                with open(self.opts.json_path, "w") as fh:
                    json.dump(_json_ready(report), fh, indent=1, default=str)
            if self.opts.plot_path:
                from .plot import plot_timeline
                plot_timeline(report["timeline"], self.opts.plot_path, title=target)
        except Exception as e:
            self._say(f"gil-adapt run: the report failed: {e}")
            log.debug("gil-adapt run: report failure", exc_info=True)
        finally:
            if self.server is not None:
                self.server.close()
            if self.exit_code == _INTERRUPTED:
                _rearm_sigint_exit()

    def _say(self, msg: str) -> None:
        try:
            self.err.write(msg + "\n")
            self.err.flush()
        except (OSError, ValueError):
            pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``gil-adapt run``: returns the program's exit status (2 for a bad command line).

    The final report is written when the interpreter exits (an atexit handler registered
    before the program starts, so it runs after the program's own handlers and after its
    non-daemon threads were joined), or when a KeyboardInterrupt ends the program.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    err = sys.stderr
    try:
        opts = parse_args(args)
    except UsageError as e:
        err.write(f"gil-adapt run: {e}\n{USAGE.splitlines()[0]}\n       "
                  "(gil-adapt run --help for the options)\n")
        return 2
    if opts.help:
        sys.stdout.write(USAGE)
        return 0
    if opts.script is not None and not os.path.exists(opts.script):
        err.write(f"gil-adapt run: can't open file {os.path.abspath(opts.script)!r}: "
                  "[Errno 2] No such file or directory\n")
        return 2
    if opts.module is not None:
        try:
            spec = importlib.util.find_spec(opts.module)
        except (ImportError, ValueError) as e:  # a parent package is missing or broken
            err.write(f"gil-adapt run: error while finding module {opts.module!r}: {e}\n")
            return 1
        if spec is None:
            err.write(f"gil-adapt run: No module named {opts.module}\n")
            return 1
    if opts.plot_path and importlib.util.find_spec("matplotlib") is None:
        err.write("gil-adapt run: --plot needs matplotlib, which is not installed "
                  "(pip install matplotlib)\n")
        return 2
    _ledger.install()
    session = _Session(opts, args)
    if opts.port is not None:
        from .metrics import serve_metrics
        try:
            session.server = serve_metrics(opts.port, opts.addr)
        except (OSError, ValueError) as e:
            err.write(f"gil-adapt run: --port: {e}\n")
            return 1
        if session.server.native_id is not None:
            session.sampler.own_tids.add(session.server.native_id)
        err.write(f"gil-adapt run: metrics at {session.server.url}\n")
    atexit.register(session.finish)
    _report_on_termination(session)
    session.sampler.start()
    code = _run_target(opts)
    session.exit_code = code
    if code == _INTERRUPTED:
        # As python: the traceback is printed (done), the interpreter finalizes (threads
        # joined, atexit: the report), then the process ends by SIGINT. Re-raising at top
        # level is what makes CPython do that; its second printing is silenced.
        sys.excepthook = _silent_hook
        raise KeyboardInterrupt
    return code


#: Signals that end a program (timeout, kill, docker, systemd) after which the report is
#: still written; the process then ends by the same signal, so its status is preserved.
REPORT_SIGNALS = ("SIGTERM", "SIGHUP")


def _report_on_termination(session: "_Session") -> None:
    """Installs handlers for REPORT_SIGNALS where their action is the default (ending the
    process): write the report, then end by that signal. A second signal during the
    report ends the process at once (the default action is back first). A program that
    installs its own handler replaces this one, and its exit writes the report."""

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signum, signal.SIG_DFL)
        session.exit_code = 128 + signum
        session.finish()
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signum)

    for name in REPORT_SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            if signal.getsignal(signum) == signal.SIG_DFL:
                signal.signal(signum, handler)
        except (OSError, ValueError):  # not the main thread, or not settable here
            pass


def _silent_hook(*args: Any) -> None:
    return None


def _rearm_sigint_exit() -> None:
    """Makes CPython still end by SIGINT after the report.

    CPython notes that KeyboardInterrupt ended the main program in a flag that it reads
    after finalization; every exec() of a string clears it first (the report's imports
    do, through namedtuple), and one that ends in KeyboardInterrupt sets it again.
    """
    try:
        exec("raise KeyboardInterrupt", {})
    except KeyboardInterrupt:
        pass
