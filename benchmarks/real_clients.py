#!/usr/bin/env python3
"""AdaptiveExecutor in real clients that take a thread pool, against their stock pool and
fixed ThreadPoolExecutor sizes.

Each client is handed the executor the way its users would hand it one:

  dask-array      dask threaded scheduler, compute(scheduler="threads", pool=ex):
                  (x + x.T).sum() of a seeded 4000x4000 random array in 500x500 chunks;
                  check: the sum equals the single-threaded (scheduler="sync") result
                  (every chunk counted)
  dask-dataframe  the same scheduler: groupby("key").val.mean() of a 1e6-row frame built
                  from pandas in 16 partitions; check: equals pandas' own groupby-mean
                  (both dask cells compute --computes times (3) on the one pool, as a
                  program reuses its pool: one compute is ~0.1 s here, too short to time)
  asyncio         loop.set_default_executor(ex), then --asyncio-calls (2000)
                  asyncio.to_thread(time.sleep, 0.005) gathered; check: every call returned
  requests-sleep  --gets (2000) GETs, a requests.Session per thread (threading.local),
                  from a ThreadingHTTPServer whose handler sleeps 50 ms then answers "ok"
                  (HTTP/1.1 keep-alive, TCP_NODELAY: else each answer's body waits ~40 ms
                  for a delayed ACK; listen backlog 1024); check: every GET answered
  requests-burst  300 GETs of a 64 KiB file from a plain single-threaded http.server.HTTPServer
                  with SimpleHTTPRequestHandler serving a temp directory (HTTP/1.0: a new
                  connection per GET; listen backlog 5, CPython's default); each failed GET
                  (timeout 5 s) is retried up to 3 times; errors are counted and reported;
                  check: every GET answered with the whole file
  sqlite          a temp-file database of 100k rows, 2000 point queries on an indexed
                  column and 4 aggregate queries spread among them, one read-only
                  connection per thread (threading.local); check: every result equals
                  the one a single connection gets
  dict            1000 tasks, each a --dict-loop (10,000) step Python loop (~0.4 ms), then
                  shared[i] = result into one dict the caller owns; check: all 1000
                  entries landed, right (mode="auto" may move a function whose tasks hold
                  the GIL over 2 ms to processes, where such writes are lost: try
                  --only dict --dict-loop 100000)
  distributed     dask.distributed in-process: LocalCluster(n_workers=1, processes=False,
                  threads_per_worker=T, executor=ex) (LocalCluster forwards executor= to
                  its Worker), a Client maps 500 tasks of ~0.3 ms Python CPU + 10 ms
                  sleep; check: all 500 results right

The HTTP servers run in a child process (python -c, bound to 127.0.0.1, port 0), so their
threads neither share this process's GIL nor count in its CPU figure; they are stopped in
`finally`. All traffic goes to 127.0.0.1 only.

Strategies, each a fresh executor per cell (created and shut down outside the clock):
  stock          the pool the client uses when given none: dask's threaded scheduler
                 ContextAwareThreadPoolExecutor(cpu_count) (dask.system.CPU_COUNT);
                 distributed's Worker: its own ThreadPoolExecutor(nthreads = cpu_count);
                 the others ThreadPoolExecutor() = min(32, cpu_count + 4) threads
  tpe-N          ThreadPoolExecutor(N), N from --sizes (default 4,16,64,128); for
                 distributed the Worker gets nthreads=N as well
  adaptive       AdaptiveExecutor() (mode "threads", its default)
  adaptive-auto  AdaptiveExecutor(mode="auto")
For distributed the Worker runs at most nthreads tasks at a time whatever its executor,
so the two adaptive cells get nthreads = the largest --sizes entry and size the pool
themselves below it.

Repetitions are interleaved: repetition r runs every strategy once, in the order rotated by
r, so drift of this machine hits all alike; the garbage collector runs before each cell.
The table gives per strategy the median wall time of the measured region (the client's
work only: servers, databases, reference results, clusters and executors are set up and
torn down outside it), throughput = units / median wall, "x best" = that throughput over
the best fixed size's (stock and tpe-N: the best ThreadPoolExecutor), and CPU = this
process's user+sys time over the cell (getrusage(RUSAGE_SELF)) as a share of
cores x wall (100 % = every usable core busy the whole time; worker processes that
mode="auto" may start are not in it: such cells are marked "*").

AdaptiveExecutor installs the GIL hook and turns calm_gil on process-wide; the
ThreadPoolExecutor cells here run with calm_gil off (keep=0; the hook stays installed), as
they would in a program without gil_adapt (--tpe-calm keeps it on for them too).

  python benchmarks/real_clients.py --reps 3     # the default run, ~4-5 min on 2 cores
  python benchmarks/real_clients.py --quick      # smoke run, smaller counts, 1 rep, < 1 min
  python benchmarks/real_clients.py --only dask,asyncio --json out.json -v
      [--sizes 4,16,64,128] [--gets 2000] [--asyncio-calls 2000] [--computes 3]
      [--dict-loop 10000] [--tpe-calm]
  clients for --only: dask (dask-array, dask-dataframe), asyncio, requests (requests-sleep,
  requests-burst), sqlite, dict, distributed; or workload names.
  -v logs each AdaptiveExecutor cell's stats() (workers, target_workers, last_reason, and
  where mode="auto" ran each function) to stderr.

A client whose package (dask, pandas, distributed, requests) is missing is skipped with
its reason. Figures only: nothing here asserts a timing.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import gc
import json
import logging
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import gil_adapt
from gil_adapt import AdaptiveExecutor

log = logging.getLogger("real_clients")

CORES = len(os.sched_getaffinity(0))
TPE_DEFAULT = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor()'s size
DEFAULT_SIZES = (4, 16, 64, 128)


# -- strategies ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Strategy:
    label: str
    kind: str            # "stock", "tpe", "adaptive"
    size: int = 0        # tpe: N
    mode: str = "threads"


def strategies(sizes: Sequence[int]) -> List[Strategy]:
    return ([Strategy("stock", "stock")]
            + [Strategy(f"tpe-{n}", "tpe", n) for n in sizes]
            + [Strategy("adaptive", "adaptive"),
               Strategy("adaptive-auto", "adaptive", mode="auto")])


def is_fixed(s: Strategy) -> bool:
    return s.kind in ("stock", "tpe")


class Meter:
    """Wall and this process's CPU over a `with` block; an AdaptiveExecutor's stats() at
    its end (before any shutdown)."""

    def __init__(self, ex: Optional[cf.Executor]) -> None:
        self.ex = ex
        self.wall = float("nan")
        self.cpu = float("nan")
        self.stats: Optional[Dict[str, Any]] = None
        self._t0 = 0.0
        self._c0 = 0.0

    @staticmethod
    def _cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def __enter__(self) -> "Meter":
        self._c0 = self._cpu()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = self._cpu() - self._c0
        if isinstance(self.ex, AdaptiveExecutor):
            st = self.ex.stats()
            self.stats = {k: st.get(k) for k in (
                "workers", "target_workers", "last_decision", "last_reason", "decisions",
                "beta", "throughput", "workers_started", "workers_retired", "completed",
                "max_workers")}
            if "kinds" in st:
                self.stats["kinds"] = st["kinds"]
                self.stats["switches"] = st.get("switches")


@dataclass
class Outcome:
    units: int                 # work done, for throughput
    ok: bool                   # the correctness check held
    detail: str = ""           # shown beside the figures (errors, misses)
    extra: Dict[str, Any] = field(default_factory=dict)


# -- workloads ----------------------------------------------------------------------------

class Workload:
    """One client and its job. setup()/teardown() once per run (outside every clock);
    run() does one cell and times only the client's work with the Meter it creates."""

    name = ""
    client = ""
    unit = "tasks"

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick

    def describe(self) -> str:
        raise NotImplementedError

    def stock(self) -> Tuple[str, Callable[[], Optional[cf.Executor]]]:
        return f"ThreadPoolExecutor() = {TPE_DEFAULT} threads", cf.ThreadPoolExecutor

    def make(self, s: Strategy) -> Optional[cf.Executor]:
        if s.kind == "stock":
            return self.stock()[1]()
        if s.kind == "tpe":
            return cf.ThreadPoolExecutor(s.size)
        return AdaptiveExecutor(mode=s.mode)

    def setup(self) -> None:
        pass

    def run(self, ex: Optional[cf.Executor], s: Strategy) -> Tuple[Meter, Outcome]:
        raise NotImplementedError

    def teardown(self) -> None:
        pass


class DaskArray(Workload):
    name, client, unit = "dask-array", "dask", "graph tasks"

    def setup(self) -> None:
        import dask.array as da
        self.n, self.chunk = (2000, 500) if self.quick else (4000, 500)
        x = da.random.default_rng(42).random((self.n, self.n), chunks=self.chunk)
        self.expr = (x + x.T).sum()
        self.tasks = len(self.expr.__dask_graph__())
        self.expected = float(self.expr.compute(scheduler="sync"))

    def describe(self) -> str:
        return (f"(x + x.T).sum(), x {self.n}x{self.n} float64 random in {self.chunk}x"
                f"{self.chunk} chunks ({(self.n // self.chunk) ** 2} chunks, {self.tasks} "
                f"graph tasks), {self.args.computes} x compute(scheduler='threads', "
                f"pool=ex) per cell")

    def stock(self) -> Tuple[str, Callable[[], Optional[cf.Executor]]]:
        from dask.system import CPU_COUNT
        try:
            from dask.threaded import ContextAwareThreadPoolExecutor as Pool
        except ImportError:  # older dask: a plain ThreadPoolExecutor
            Pool = cf.ThreadPoolExecutor  # type: ignore[misc,assignment]
        return (f"dask's {Pool.__name__}({CPU_COUNT})", lambda: Pool(CPU_COUNT))

    def run(self, ex: Optional[cf.Executor], s: Strategy) -> Tuple[Meter, Outcome]:
        with Meter(ex) as m:
            got = [float(self.expr.compute(scheduler="threads", pool=ex))
                   for _ in range(self.args.computes)]
        bad = [g for g in got if abs(g - self.expected) > 1e-9 * abs(self.expected)]
        return m, Outcome(self.tasks * len(got), not bad,
                          "" if not bad else f"sum {bad[0]!r} != {self.expected!r}")


class DaskDataFrame(Workload):
    name, client, unit = "dask-dataframe", "dask", "rows"

    def setup(self) -> None:
        import numpy as np
        import pandas as pd
        import dask.dataframe as dd
        self.rows = 200_000 if self.quick else 1_000_000
        rng = np.random.default_rng(3)
        pdf = pd.DataFrame({"key": rng.integers(0, 1000, self.rows),
                            "val": rng.random(self.rows)})
        self.expected = pdf.groupby("key").val.mean().sort_index()
        self.ddf = dd.from_pandas(pdf, npartitions=16)

    def describe(self) -> str:
        return (f"groupby('key').val.mean() of {self.rows} rows (1000 keys) in 16 partitions "
                f"(from pandas), {self.args.computes} x compute(scheduler='threads', pool=ex) "
                f"per cell")

    stock = DaskArray.stock

    def run(self, ex: Optional[cf.Executor], s: Strategy) -> Tuple[Meter, Outcome]:
        import numpy as np
        with Meter(ex) as m:
            results = [self.ddf.groupby("key").val.mean().compute(scheduler="threads", pool=ex)
                       for _ in range(self.args.computes)]
        bad = 0
        for got in results:
            got = got.sort_index()
            if not (len(got) == len(self.expected)
                    and bool((got.index == self.expected.index).all())
                    and bool(np.allclose(got.to_numpy(), self.expected.to_numpy(),
                                         rtol=1e-12))):
                bad += 1
        return m, Outcome(self.rows * len(results), bad == 0,
                          "" if not bad else f"{bad} of {len(results)} results differ")


class Asyncio(Workload):
    name, client, unit = "asyncio", "asyncio", "calls"

    def setup(self) -> None:
        self.calls = 400 if self.quick else self.args.asyncio_calls
        self.delay = 0.005

    def describe(self) -> str:
        return (f"loop.set_default_executor(ex); gather {self.calls} x "
                f"asyncio.to_thread(time.sleep, {self.delay})")

    def run(self, ex: Optional[cf.Executor], s: Strategy) -> Tuple[Meter, Outcome]:
        m = Meter(ex)

        assert ex is not None

        async def main() -> int:
            loop = asyncio.get_running_loop()
            loop.set_default_executor(ex)
            with m:
                done = await asyncio.gather(*(asyncio.to_thread(time.sleep, self.delay)
                                              for _ in range(self.calls)))
            return len(done)

        n = asyncio.run(main())  # shuts the default executor down, as asyncio.run does
        return m, Outcome(self.calls, n == self.calls,
                          "" if n == self.calls else f"{n}/{self.calls} returned")


SERVER = textwrap.dedent(r"""
    import http.server, os, sys, time
    kind, arg = sys.argv[1], sys.argv[2]
    if kind == "sleep":
        delay = float(arg)
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without TCP_NODELAY the second waits
            # for the client's delayed ACK (~40 ms) on a kept-alive connection
            disable_nagle_algorithm = True
            def do_GET(self):
                time.sleep(delay)
                body = b"ok\n"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            def log_message(self, *args):
                pass
        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 1024
        srv = Server(("127.0.0.1", 0), Handler)
    else:
        os.chdir(arg)
        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass
        srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)  # backlog 5
    print(srv.server_address[1], flush=True)
    try:
        srv.serve_forever()
    finally:
        srv.server_close()
""")


def listen_overflows() -> Optional[int]:
    """The kernel's count of connections dropped because a listen queue was full
    (TcpExt ListenOverflows, this network namespace); None where not readable."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            counts = dict(zip(head.split()[1:], values.split()[1:]))
            if "ListenOverflows" in counts:
                return int(counts["ListenOverflows"])
    return None


class HttpWorkload(Workload):
    """A server in a child process; GETs through a requests.Session per executor thread."""

    client, unit = "requests", "GETs"
    server_kind = ""
    gets = 0
    timeout = 10.0
    retries = 3

    def server_arg(self) -> str:
        raise NotImplementedError

    def setup(self) -> None:
        import requests  # noqa: F401  (skip the client when missing)
        del requests
        self.proc: Optional[subprocess.Popen] = None
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, self.server_kind,
                                      self.server_arg()], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"{self.server_kind} server did not start")
        self.url = f"http://127.0.0.1:{int(line)}/{self.path()}"
        log.info("%s: server pid %d at %s", self.name, self.proc.pid, self.url)

    def path(self) -> str:
        return ""

    def teardown(self) -> None:  # also after a setup that failed part-way
        if getattr(self, "proc", None) is not None:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def expect(self, body: bytes) -> bool:
        raise NotImplementedError

    def run(self, ex: Optional[cf.Executor], s: Strategy) -> Tuple[Meter, Outcome]:
        import requests
        assert ex is not None
        local = threading.local()
        sessions: List[requests.Session] = []
        lock = threading.Lock()
        errors: List[str] = []

        def session() -> requests.Session:
            sess = getattr(local, "session", None)
            if sess is None:
                sess = local.session = requests.Session()
                with lock:
                    sessions.append(sess)
            return sess

        def get(_i: int) -> bool:
            for _attempt in range(1 + self.retries):
                try:
                    r = session().get(self.url, timeout=self.timeout)
                    if r.status_code == 200 and self.expect(r.content):
                        return True
                    why = f"HTTP {r.status_code}, {len(r.content)} bytes"
                except requests.RequestException as e:
                    why = type(e).__name__
                with lock:
                    errors.append(why)
            return False

        overflows0 = listen_overflows()
        try:
            with Meter(ex) as m:
                answered = sum(ex.map(get, range(self.gets)))
        finally:
            for sess in sessions:
                sess.close()
        overflows1 = listen_overflows()
        overflows = (overflows1 - overflows0 if overflows0 is not None and overflows1 is not None
                     else None)
        kinds: Dict[str, int] = {}
        for e in errors:
            kinds[e] = kinds.get(e, 0) + 1
        detail = f"{len(errors)} errors" + (
            f" ({', '.join(f'{k} x{v}' for k, v in sorted(kinds.items()))})" if kinds else "")
        if answered != self.gets:
            detail += f", {self.gets - answered} unanswered"
        if overflows is not None:
            detail += f", listen overflows {overflows}"
        return m, Outcome(self.gets, answered == self.gets, detail,
                          {"errors": len(errors), "unanswered": self.gets - answered,
                           "threads_with_session": len(sessions),
                           "listen_overflows": overflows})


class RequestsSleep(HttpWorkload):
    name, server_kind = "requests-sleep", "sleep"

    def setup(self) -> None:
        self.gets = 200 if self.quick else self.args.gets
        super().setup()

    def server_arg(self) -> str:
        return "0.05"

    def describe(self) -> str:
        return (f"{self.gets} GETs, requests.Session per thread, to a ThreadingHTTPServer "
                f"(child process) whose handler sleeps 50 ms")

    def expect(self, body: bytes) -> bool:
        return body == b"ok\n"


class RequestsBurst(HttpWorkload):
    name, server_kind = "requests-burst", "files"
    timeout = 5.0

    def setup(self) -> None:
        self.gets = 100 if self.quick else 300
        self.tmp = tempfile.TemporaryDirectory(prefix="real_clients_http_")
        self.blob = random.Random(5).randbytes(64 * 1024)
        with open(os.path.join(self.tmp.name, "blob.bin"), "wb") as f:
            f.write(self.blob)
        super().setup()

    def server_arg(self) -> str:
        return self.tmp.name

    def path(self) -> str:
        return "blob.bin"

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            if hasattr(self, "tmp"):
                self.tmp.cleanup()

    def describe(self) -> str:
        return (f"{self.gets} GETs of a 64 KiB file from a single-threaded HTTPServer + "
                f"SimpleHTTPRequestHandler (child process, listen backlog 5, a connection "
                f"per GET); timeout {self.timeout:g} s, up to {self.retries} retries per GET")

    def expect(self, body: bytes) -> bool:
        return body == self.blob


class Sqlite(Workload):
    name, client, unit = "sqlite", "sqlite", "queries"
    AGGREGATES: List[Tuple[str, Tuple[Any, ...]]] = [
        ("SELECT grp, COUNT(*), AVG(v) FROM t GROUP BY grp", ()),
        ("SELECT COUNT(*), SUM(v) FROM t WHERE s LIKE ?", ("%77%",)),
        ("SELECT MIN(v), MAX(v), COUNT(*) FROM t WHERE k BETWEEN ? AND ?", (1000, 60000)),
        ("SELECT grp, SUM(v) FROM t WHERE v > 0.5 GROUP BY grp ORDER BY 2 DESC LIMIT 10", ()),
    ]

    def setup(self) -> None:
        self.rows, points = (20_000, 500) if self.quick else (100_000, 2000)
        self.tmp = tempfile.TemporaryDirectory(prefix="real_clients_sqlite_")
        self.path = os.path.join(self.tmp.name, "bench.db")
        rng = random.Random(11)
        ks = list(range(self.rows))
        rng.shuffle(ks)
        con = sqlite3.connect(self.path)
        try:
            con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER NOT NULL, "
                        "grp INTEGER NOT NULL, v REAL NOT NULL, s TEXT NOT NULL)")
            con.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)",
                            ((i, ks[i], i % 100, rng.random(), f"row-{i}")
                             for i in range(self.rows)))
            con.execute("CREATE INDEX t_k ON t (k)")
            con.commit()
            queries: List[Tuple[str, Tuple[Any, ...]]] = [
                ("SELECT id, v, s FROM t WHERE k = ?", (rng.randrange(self.rows),))
                for _ in range(points)]
            step = points // len(self.AGGREGATES)
            for j, agg in enumerate(self.AGGREGATES):  # spread among the point queries
                queries.insert(j * (step + 1) + step // 2, agg)
            self.queries = queries
            self.expected = [con.execute(q, a).fetchall() for q, a in queries]
        finally:
            con.close()
        self.points = points

    def teardown(self) -> None:
        if hasattr(self, "tmp"):
            self.tmp.cleanup()

    def describe(self) -> str:
        return (f"{self.points} point queries on an indexed column + {len(self.AGGREGATES)} "
                f"aggregates over a {self.rows}-row temp-file table, a read-only connection "
                f"per thread")

    def run(self, ex: Optional[cf.Executor], s: Strategy) -> Tuple[Meter, Outcome]:
        assert ex is not None
        local = threading.local()
        conns: List[sqlite3.Connection] = []
        lock = threading.Lock()
        uri = f"file:{self.path}?mode=ro"

        def query(i: int) -> bool:
            con = getattr(local, "con", None)
            if con is None:  # check_same_thread=False only so that the caller closes it
                con = local.con = sqlite3.connect(uri, uri=True, check_same_thread=False)
                with lock:
                    conns.append(con)
            q, a = self.queries[i]
            return con.execute(q, a).fetchall() == self.expected[i]

        try:
            with Meter(ex) as m:
                right = sum(ex.map(query, range(len(self.queries))))
        finally:
            for con in conns:
                con.close()
        n = len(self.queries)
        return m, Outcome(n, right == n, "" if right == n else f"{n - right} wrong",
                          {"connections": len(conns)})


def record(shared: Dict[int, int], i: int, n: int) -> None:
    """The dict workload's task: a little Python arithmetic, then into the shared dict."""
    acc = 0
    for j in range(n):
        acc += (i * j) % 7
    shared[i] = acc


class SharedDict(Workload):
    name, client, unit = "dict", "dict", "tasks"

    def setup(self) -> None:
        self.tasks, self.loop = (300 if self.quick else 1000), self.args.dict_loop
        probe: Dict[int, int] = {}
        for i in range(self.tasks):
            record(probe, i, self.loop)
        self.expected = probe

    def describe(self) -> str:
        return (f"{self.tasks} tasks, each a {self.loop}-step Python loop then "
                f"shared[i] = result into the caller's dict")

    def run(self, ex: Optional[cf.Executor], s: Strategy) -> Tuple[Meter, Outcome]:
        assert ex is not None
        shared: Dict[int, int] = {}
        with Meter(ex) as m:
            futures = [ex.submit(record, shared, i, self.loop) for i in range(self.tasks)]
            for f in futures:
                f.result()
        landed = len(shared)
        right = sum(1 for i, v in shared.items() if self.expected.get(i) == v)
        ok = landed == self.tasks and right == self.tasks
        return m, Outcome(self.tasks, ok, f"{landed}/{self.tasks} landed"
                          + ("" if right == landed else f", {landed - right} wrong"),
                          {"landed": landed})


def dtask(i: int) -> int:
    """The distributed workload's task: ~0.3 ms of Python, 10 ms asleep."""
    acc = 0
    for j in range(5000):
        acc += j % 3
    time.sleep(0.01)
    return acc + i


class Distributed(Workload):
    name, client, unit = "distributed", "distributed", "tasks"

    def setup(self) -> None:
        import distributed  # noqa: F401  (skip the client when missing)
        del distributed
        self.tasks = 100 if self.quick else 500
        self.max_threads = max(self.args.size_list)
        base = sum(j % 3 for j in range(5000))
        self.expected = [base + i for i in range(self.tasks)]

    def describe(self) -> str:
        return (f"LocalCluster(n_workers=1, processes=False, threads_per_worker=T, executor=ex)"
                f" + Client.map of {self.tasks} tasks (~0.3 ms CPU + 10 ms sleep); T = N for "
                f"tpe-N, {self.max_threads} for adaptive")

    def stock(self) -> Tuple[str, Callable[[], Optional[cf.Executor]]]:
        from dask.system import CPU_COUNT  # what LocalCluster uses
        return (f"the Worker's own ThreadPoolExecutor(nthreads={CPU_COUNT})", lambda: None)

    def run(self, ex: Optional[cf.Executor], s: Strategy) -> Tuple[Meter, Outcome]:
        from distributed import Client, LocalCluster
        nthreads = (None if s.kind == "stock" else s.size if s.kind == "tpe"
                    else self.max_threads)
        kwargs: Dict[str, Any] = dict(n_workers=1, processes=False, threads_per_worker=nthreads,
                                      dashboard_address=None, silence_logs=logging.ERROR)
        if ex is not None:
            kwargs["executor"] = ex
        with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
            client.wait_for_workers(1)
            with Meter(ex) as m:
                futures = client.map(dtask, range(self.tasks), pure=False)
                got = client.gather(futures)
            # the Worker shuts its executor down when the cluster closes
        right = sum(1 for a, b in zip(got, self.expected) if a == b)
        ok = right == self.tasks and len(got) == self.tasks
        return m, Outcome(self.tasks, ok, "" if ok else f"{right}/{self.tasks} right")


WORKLOADS = [DaskArray, DaskDataFrame, Asyncio, RequestsSleep, RequestsBurst, Sqlite,
             SharedDict, Distributed]


# -- running ------------------------------------------------------------------------------

class Calm:
    """calm_gil as AdaptiveExecutor sets it for adaptive cells; off for ThreadPoolExecutor
    cells unless --tpe-calm."""

    def __init__(self, tpe_calm: bool) -> None:
        probe = AdaptiveExecutor(max_workers=1)  # installs the hook, applies calm_default
        probe.shutdown(wait=True)
        caps = gil_adapt.capabilities()
        self.keep: int = caps["gil_calm_keep"]
        self.above: int = caps["gil_calm_above"]
        self.tpe_calm = tpe_calm

    def set_for(self, s: Strategy) -> None:
        keep = self.keep if (s.kind == "adaptive" or self.tpe_calm) else 0
        gil_adapt.calm_gil(keep, above=self.above)


def cell(w: Workload, s: Strategy) -> Dict[str, Any]:
    gc.collect()
    ex: Optional[cf.Executor] = None
    try:
        ex = w.make(s)
        m, out = w.run(ex, s)
    except Exception as e:  # a failed cell is reported, the run goes on
        log.exception("%s / %s failed", w.name, s.label)
        return {"error": f"{type(e).__name__}: {e}", "ok": False}
    finally:
        if ex is not None:
            ex.shutdown(wait=True)
    res: Dict[str, Any] = {"wall": m.wall, "cpu_s": m.cpu,
                           "cpu_share": m.cpu / (CORES * m.wall) if m.wall > 0 else None,
                           "units": out.units, "ok": out.ok, "detail": out.detail}
    res.update(out.extra)
    if m.stats is not None:
        res["stats"] = m.stats
        kinds = m.stats.get("kinds") or {}
        res["processes"] = any(v.get("backend") == "processes" for v in kinds.values()) or \
            bool(m.stats.get("switches"))
        log.info("%s / %s: %.3f s, workers %s, target_workers %s, last_reason: %s%s",
                 w.name, s.label, m.wall, m.stats["workers"], m.stats["target_workers"],
                 m.stats["last_reason"],
                 "".join(f"; {k}: {v.get('backend')} ({v.get('reason')})"
                         for k, v in kinds.items()))
    else:
        log.debug("%s / %s: %.3f s", w.name, s.label, m.wall)
    return res


def summarize(w: Workload, strats: List[Strategy], cells: Dict[str, List[Dict[str, Any]]],
              stock_desc: str) -> Dict[str, Any]:
    med: Dict[str, float] = {}
    for s in strats:
        walls = [c["wall"] for c in cells[s.label] if "wall" in c]
        if walls:
            med[s.label] = statistics.median(walls)
    fixed = {s.label: med[s.label] for s in strats if is_fixed(s) and s.label in med}
    best = min(fixed, key=fixed.__getitem__) if fixed else None
    print(f"\n== {w.name}: {w.describe()}")
    print(f"   stock = {stock_desc}")
    print(f"   {'strategy':14s} {'median s':>9s} {'spread s':>13s} {w.unit + '/s':>15s} "
          f"{'x best':>7s} {'CPU':>6s}  check  notes")
    summary: Dict[str, Any] = {"best_fixed": best, "median_wall": med, "ratio_to_best": {}}
    for s in strats:
        rows = cells[s.label]
        errs = [c["error"] for c in rows if "error" in c]
        okn = sum(1 for c in rows if c.get("ok"))
        check = "ok" if okn == len(rows) else f"FAIL {len(rows) - okn}/{len(rows)}"
        if s.label not in med:
            print(f"   {s.label:14s} {'-':>9s} {'':>13s} {'':>15s} {'':>7s} {'':>6s}  {check}  "
                  f"{errs[0] if errs else ''}")
            continue
        walls = [c["wall"] for c in rows if "wall" in c]
        units = next(c["units"] for c in rows if "units" in c)
        shares = [c["cpu_share"] for c in rows if c.get("cpu_share") is not None]
        cpu = statistics.median(shares) if shares else float("nan")
        ratio = fixed[best] / med[s.label] if best else float("nan")
        summary["ratio_to_best"][s.label] = ratio
        star = "*" if any(c.get("processes") for c in rows) else " "
        done = [c for c in rows if "wall" in c]
        if done and all("errors" in c for c in done):  # HTTP: counts per repetition
            notes = f"errors {'/'.join(str(c['errors']) for c in done)}"
            if all(c.get("listen_overflows") is not None for c in done):
                notes += (f", listen overflows "
                          f"{'/'.join(str(c['listen_overflows']) for c in done)}")
            lost = sum(c.get("unanswered", 0) for c in done)
            if lost:
                notes += f", {lost} GETs unanswered after retries"
        else:
            notes = "; ".join(dict.fromkeys(c["detail"] for c in rows if c.get("detail")))
        if errs:
            notes = (notes + "; " if notes else "") + f"{len(errs)} cell(s) failed: {errs[0]}"
        if s.label == best:
            notes = "best fixed" + ("; " + notes if notes else "")
        if s.kind == "adaptive":
            st = [c["stats"] for c in rows if "stats" in c]
            if st:
                notes = (f"workers {'/'.join(str(x['workers']) for x in st)}"
                         + ("; " + notes if notes else ""))
        print(f"   {s.label:14s} {med[s.label]:9.3f} {min(walls):6.3f}-{max(walls):<6.3f} "
              f"{units / med[s.label]:15.1f} {ratio:6.2f}x {cpu * 100:5.1f}%{star} {check:5s}  "
              f"{notes}")
    return summary


def selected(only: Optional[str]) -> List[type[Workload]]:
    if not only:
        return list(WORKLOADS)
    names = {x.strip() for x in only.split(",") if x.strip()}
    known = {w.client for w in WORKLOADS} | {w.name for w in WORKLOADS}
    unknown = names - known
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(known))})")
    return [w for w in WORKLOADS if w.client in names or w.name in names]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=None,
                    help="interleaved repetitions (median); default 3, 1 with --quick")
    ap.add_argument("--quick", action="store_true", help="smaller counts, a smoke run")
    ap.add_argument("--only", help="comma-separated clients or workload names")
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                    help="fixed ThreadPoolExecutor sizes")
    ap.add_argument("--gets", type=int, default=2000,
                    help="GETs in requests-sleep (each holds a thread 50 ms: 2000 take "
                         "25 s per repetition at 4 threads, 3000 push the run past 6 min)")
    ap.add_argument("--asyncio-calls", type=int, default=2000,
                    help="to_thread calls gathered in asyncio")
    ap.add_argument("--computes", type=int, default=3,
                    help="dask computes per cell, on the one pool (one is ~0.1 s here)")
    ap.add_argument("--dict-loop", type=int, default=10_000,
                    help="steps of the dict task's Python loop (10,000: ~0.4 ms of CPU; "
                         "mode='auto' considers processes only above 2 ms)")
    ap.add_argument("--tpe-calm", action="store_true",
                    help="leave calm_gil on for the ThreadPoolExecutor cells too")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="log AdaptiveExecutor stats per cell (-vv: every cell)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.verbose < 2:  # -v: this script's and gil_adapt's INFO, not the clients' chatter
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda r: r.levelno >= logging.WARNING
                              or r.name.split(".")[0] in ("real_clients", "gil_adapt"))
    reps = args.reps if args.reps is not None else (1 if args.quick else 3)
    args.size_list = [int(x) for x in args.sizes.split(",")]
    strats = strategies(args.size_list)
    calm = Calm(args.tpe_calm)
    print(f"Python {sys.version.split()[0]}, gil_adapt {getattr(gil_adapt, '__version__', '?')},"
          f" {CORES} usable cores; {reps} interleaved repetition(s) of "
          f"{', '.join(s.label for s in strats)}; median wall of the client's work; "
          f"calm_gil keep={calm.keep} above={calm.above} for adaptive"
          f"{' and ThreadPoolExecutor' if args.tpe_calm else ', off for ThreadPoolExecutor'}"
          f" cells{'; --quick' if args.quick else ''}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    t_start = time.monotonic()
    report: Dict[str, Any] = {"python": sys.version.split()[0], "cores": CORES, "reps": reps,
                              "quick": args.quick, "sizes": args.size_list,
                              "tpe_calm": args.tpe_calm, "workloads": {}}
    failures: List[str] = []
    for cls in selected(args.only):
        w = cls(args)
        try:
            w.setup()
        except Exception as e:
            why = (f"{e.name or e} not installed" if isinstance(e, ImportError)
                   else f"setup failed: {type(e).__name__}: {e}")
            if not isinstance(e, ImportError):
                log.exception("%s: setup failed", cls.name)
                failures.append(f"{cls.name} (setup)")
            try:
                w.teardown()
            except Exception:
                log.exception("%s: teardown after the failed setup failed", cls.name)
            print(f"\n== {cls.name}: skipped ({why})")
            report["workloads"][cls.name] = {"skipped": why}
            continue
        t_w = time.monotonic()
        try:
            stock_desc = w.stock()[0]
            cells: Dict[str, List[Dict[str, Any]]] = {s.label: [] for s in strats}
            for r in range(reps):
                k = r % len(strats)
                for s in strats[k:] + strats[:k]:
                    calm.set_for(s)
                    cells[s.label].append(cell(w, s))
        finally:
            w.teardown()
        summary = summarize(w, strats, cells, stock_desc)
        load = os.getloadavg()
        print(f"   ({time.monotonic() - t_w:.0f} s; load average now {load[0]:.2f} "
              f"{load[1]:.2f} {load[2]:.2f})")
        summary["loadavg_after"] = load
        report["workloads"][w.name] = {"description": w.describe(), "stock": stock_desc,
                                       "unit": w.unit, "cells": cells, **summary}
        for s in strats:
            if not all(c.get("ok") for c in cells[s.label]):
                failures.append(f"{w.name}/{s.label}")
    calm.set_for(Strategy("adaptive", "adaptive"))
    report["seconds"] = time.monotonic() - t_start
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    print(f"\n{time.monotonic() - t_start:.0f} s in all; "
          + ("every correctness check held" if not failures
             else f"correctness checks failed: {', '.join(failures)}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
