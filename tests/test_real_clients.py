"""Software nobody here wrote, run on AdaptiveExecutor() and on its stock alternative.

Each test runs a real client — dask's threaded scheduler, dask.distributed, requests against
a local http.server, sqlite3, a task that records into shared state — once per executor
(parametrized: ``AdaptiveExecutor()`` in its default mode, and ThreadPoolExecutor) and
asserts the same results and side effects. Correctness only: speed is measured by
benchmarks/real_clients.py. Every server and executor is stopped in ``finally``; network
traffic goes to 127.0.0.1 only.
"""
from __future__ import annotations

import concurrent.futures as cf
import http.server
import os
import sqlite3
import threading
import time
from typing import Any, Callable, Dict, Iterator, List

import pytest

from gil_adapt import AdaptiveExecutor

HANG = 60.0  # a guard against hangs, never a performance bound

EXECUTORS: Dict[str, Callable[[], cf.ThreadPoolExecutor]] = {
    "adaptive": lambda: AdaptiveExecutor(),
    "threadpool": lambda: cf.ThreadPoolExecutor(),
}


@pytest.fixture(params=sorted(EXECUTORS))
def executor(request: pytest.FixtureRequest) -> Iterator[cf.ThreadPoolExecutor]:
    ex = EXECUTORS[request.param]()
    try:
        yield ex
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


# ---- shared state ---------------------------------------------------------------------

def test_tasks_that_record_into_shared_state_are_all_seen(executor: Any) -> None:
    shared: Dict[int, int] = {}
    seen_threads = set()

    def record(i: int) -> None:
        x = 0
        for j in range(2000):  # a little Python CPU, as the probe had
            x += j
        shared[i] = x + i
        seen_threads.add(threading.get_ident())

    list(executor.map(record, range(400)))
    assert shared == {i: sum(range(2000)) + i for i in range(400)}
    assert threading.get_ident() not in seen_threads


# ---- dask -------------------------------------------------------------------------------

def test_dask_threaded_scheduler(executor: Any) -> None:
    dask = pytest.importorskip("dask", reason="dask is in the test extra")
    da = pytest.importorskip("dask.array", reason="dask[array] is in the test extra")
    dd = pytest.importorskip("dask.dataframe", reason="dask[dataframe] is in the test extra")
    np = pytest.importorskip("numpy")
    pd = pytest.importorskip("pandas")

    rng = np.random.default_rng(7)
    data = rng.standard_normal((800, 800))
    x = da.from_array(data, chunks=(100, 100))
    with dask.config.set(scheduler="threads", pool=executor):
        total = float((x + x.T).sum().compute())
        assert total == pytest.approx(float((data + data.T).sum()), rel=1e-9, abs=1e-6)

        frame = pd.DataFrame({"key": rng.integers(0, 20, 20_000), "v": rng.random(20_000)})
        got = dd.from_pandas(frame, npartitions=16).groupby("key").v.mean().compute()
        want = frame.groupby("key").v.mean()
        pd.testing.assert_series_equal(got.sort_index(), want.sort_index(), check_names=False)

        # da.store into a NumPy array: every chunk lands in this process's memory
        target = np.zeros((800, 800))
        da.store(x * 2, target, lock=False)
        assert np.array_equal(target, data * 2)


_RAN_ON: List[str] = []  # module-level: distributed pickles tasks by reference


def _distributed_work(i: int) -> int:
    _RAN_ON.append(threading.current_thread().name)
    time.sleep(0.002)
    return i * i


def test_dask_distributed_worker_runs_its_tasks_on_the_executor(executor: Any) -> None:
    distributed = pytest.importorskip("distributed", reason="distributed is in the test extra")
    _RAN_ON.clear()
    work, names = _distributed_work, _RAN_ON

    with distributed.LocalCluster(n_workers=1, processes=False, threads_per_worker=4,
                                  executor=executor, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        futures = client.map(work, range(100), pure=False)
        assert client.gather(futures) == [i * i for i in range(100)]
    assert len(names) == 100
    if isinstance(executor, AdaptiveExecutor):
        prefix = executor._thread_name_prefix
        assert all(n.startswith(prefix) for n in names), set(names)


# ---- requests against a local http.server ----------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        time.sleep(0.005)
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def server() -> Iterator[str]:
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(HANG)


def test_requests_against_a_local_server(executor: Any, server: str) -> None:
    requests = pytest.importorskip("requests", reason="requests is in the test extra")
    local = threading.local()

    def get(i: int) -> str:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        r = session.get(f"{server}/item/{i}", timeout=HANG)
        r.raise_for_status()
        return r.text

    assert list(executor.map(get, range(300))) == [f"/item/{i}" for i in range(300)]


# ---- sqlite3 from many threads ------------------------------------------------------------

def test_sqlite3_queries_from_many_threads(executor: Any, tmp_path: Any) -> None:
    path = os.path.join(str(tmp_path), "db.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        db.executemany("INSERT INTO t VALUES (?, ?)", ((i, i * 3) for i in range(20_000)))
    local = threading.local()
    connections: List[sqlite3.Connection] = []
    lock = threading.Lock()

    def query(i: int) -> int:
        db = getattr(local, "db", None)
        if db is None:
            db = local.db = sqlite3.connect(path, check_same_thread=False)
            with lock:
                connections.append(db)
        if i % 50 == 0:
            return db.execute("SELECT SUM(v) FROM t WHERE id < ?", (i,)).fetchone()[0] or 0
        return db.execute("SELECT v FROM t WHERE id = ?", (i,)).fetchone()[0]

    try:
        got = list(executor.map(query, range(2000)))
    finally:
        for db in connections:
            db.close()
    want = [sum(3 * j for j in range(i)) if i % 50 == 0 else 3 * i for i in range(2000)]
    assert got == want
