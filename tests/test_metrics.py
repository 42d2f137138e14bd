"""The exporter: Prometheus/OpenMetrics text, HTTP serving, prometheus_client, executors."""
from __future__ import annotations

import errno
import gc
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
import weakref

import pytest

import gil_adapt
from gil_adapt import metrics

try:
    from prometheus_client import parser
    from prometheus_client.openmetrics import parser as om_parser
except ImportError:  # the exporter needs none of it; the parsing checks do
    parser = om_parser = None

needs_client = pytest.mark.skipif(parser is None, reason="prometheus_client not installed")

STATE_FAMILIES = [f"gil_adapt_thread_{s}_seconds" for s in
                  ("cpu", "gil_wait", "lock_wait", "runq_wait", "io_wait", "idle", "gil_held")]


def families(text: str) -> dict:
    if parser is None:
        pytest.skip("prometheus_client not installed")
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


@pytest.fixture
def named_thread():
    """A thread with an awkward name that sleeps until released."""
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name='we"ird\\name\nx')
    t.start()
    try:
        yield t
    finally:
        stop.set()
        t.join()


def test_text_parses_and_names_follow_conventions(named_thread):
    fams = families(gil_adapt.metrics_text())
    for name in STATE_FAMILIES:
        assert fams[name].type == "counter", name
        for s in fams[name].samples:
            assert s.name == name + "_total"
            assert set(s.labels) == {"thread", "tid"}
            assert s.value >= 0
    for name in ("gil_adapt_beta_ratio", "gil_adapt_contention_ratio",
                 "gil_adapt_gil_utilisation_ratio", "gil_adapt_threads", "gil_adapt_build_info"):
        assert fams[name].type == "gauge", name
    assert fams["gil_adapt_cpu_seconds"].samples[0].value > 0
    # the awkward thread name survives escaping
    names = {s.labels["thread"]: s.labels["tid"] for s in fams[STATE_FAMILIES[0]].samples}
    assert named_thread.name in names
    assert names[named_thread.name] == str(named_thread.native_id)


@needs_client
def test_openmetrics_parses():
    text = metrics.metrics_text(openmetrics=True)
    assert text.endswith("# EOF\n")
    fams = {f.name: f for f in om_parser.text_string_to_metric_families(text)}
    assert fams["gil_adapt_thread_cpu_seconds"].unit == "seconds"
    assert fams["gil_adapt_thread_cpu_seconds"].type == "counter"
    assert fams["gil_adapt_beta_ratio"].unit == "ratio"
    assert fams["gil_adapt_build"].type == "info"
    assert [s.name for s in fams["gil_adapt_build"].samples] == ["gil_adapt_build_info"]


@needs_client
def test_counters_never_go_down():
    def values():
        out = {}
        for f in parser.text_string_to_metric_families(metrics.metrics_text()):
            if f.type == "counter":
                for s in f.samples:
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    first = values()
    x = 0
    for i in range(200_000):  # some work between the reads
        x += i
    time.sleep(0.01)
    second = values()
    common = set(first) & set(second)
    assert common
    for key in common:
        assert second[key] >= first[key], key


def _get(url: str, accept: str = "") -> tuple:
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.headers["Content-Type"], r.read().decode()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("in_process", [False, True])
def test_serve_metrics_over_http(in_process):
    with gil_adapt.serve_metrics(port=0, in_process=in_process) as srv:
        assert srv.mode == ("thread" if in_process else "process")
        assert srv.addr == "127.0.0.1" and srv.port > 0
        status, ctype, body = _get(srv.url)
        assert status == 200
        assert ctype.startswith("text/plain; version=0.0.4")
        assert "gil_adapt_thread_cpu_seconds" in families(body)
        status, ctype, body = _get(srv.url, "application/openmetrics-text; version=1.0.0")
        assert ctype.startswith("application/openmetrics-text")
        assert body.endswith("# EOF\n")
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(f"http://127.0.0.1:{srv.port}/nope")
        assert e.value.code == 404
        req = urllib.request.Request(srv.url, method="POST", data=b"x")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 405
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as c:
            c.sendall(b"nonsense\r\n\r\n")
            assert c.recv(64).startswith(b"HTTP/1.0 400")
        port, pid = srv.port, srv.pid
    # closed: nothing listens any more, the thread is gone
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not any(t.name == "gil-adapt-metrics" for t in threading.enumerate())
    if pid is not None:
        assert not _alive(pid)  # the helper has exited


@pytest.mark.parametrize("in_process", [False, True])
def test_slow_and_idle_clients_do_not_hold_up_scrapes(in_process):
    """Three idle connections and one that trickles a byte every 0.3 s: a scrape beside
    them is answered at once, and the trickler is cut off at its deadline."""
    from gil_adapt import _metrics_helper as helper

    held = []
    stop = threading.Event()
    with gil_adapt.serve_metrics(port=0, in_process=in_process) as srv:
        try:
            for _ in range(3):
                held.append(socket.create_connection(("127.0.0.1", srv.port), timeout=10))
            trickler = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            held.append(trickler)
            cut_off = threading.Event()

            def trickle() -> None:
                for b in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"x" * 200:
                    if stop.is_set():
                        return
                    try:
                        trickler.sendall(bytes([b]))
                    except OSError:
                        cut_off.set()
                        return
                    if stop.wait(0.3):
                        return

            t = threading.Thread(target=trickle, daemon=True)
            t.start()
            time.sleep(0.5)
            for _ in range(4):
                t0 = time.monotonic()
                status, _ctype, body = _get(srv.url)
                assert status == 200 and "gil_adapt_thread_cpu_seconds" in families(body)
                assert time.monotonic() - t0 < helper.CLIENT_DEADLINE_S  # not queued behind
            # the trickler gets no answer: its connection is closed at the deadline
            trickler.settimeout(helper.CLIENT_DEADLINE_S + 10)
            try:
                got = trickler.recv(100)
            except OSError:
                got = b""
            assert got == b"" or cut_off.is_set()
        finally:
            stop.set()
            for c in held:
                c.close()


def test_scrapes_share_one_read():
    with gil_adapt.serve_metrics(port=0, max_age_s=60) as srv:
        first = _get(srv.url)[2]
        time.sleep(0.05)
        assert _get(srv.url)[2] == first  # cached
    with gil_adapt.serve_metrics(port=0, max_age_s=0) as srv:
        first = _get(srv.url)[2]
        time.sleep(0.05)
        assert _get(srv.url)[2] != first  # fresh each time (cpu seconds moved)


@pytest.mark.parametrize("in_process", [False, True])
def test_port_in_use_is_a_clear_error(in_process):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        with pytest.raises(OSError, match="cannot listen on 127.0.0.1") as e:
            metrics.serve_metrics(port=busy.getsockname()[1], in_process=in_process)
        assert e.value.errno == errno.EADDRINUSE
    finally:
        busy.close()
    assert not any(t.name == "gil-adapt-metrics" for t in threading.enumerate())


def test_helper_exits_with_the_program():
    code = textwrap.dedent("""
        import gil_adapt, sys, time
        srv = gil_adapt.serve_metrics(port=0)
        print(srv.pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline())
        assert _alive(pid)
    finally:
        proc.kill()  # SIGKILL: no atexit, no close()
        proc.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


@pytest.mark.parametrize("port", [-1, 70000, "80", 1.5])
def test_bad_port(port):
    with pytest.raises(ValueError):
        metrics.serve_metrics(port=port)


@needs_client
def test_prometheus_client_collector():
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    reg.register(metrics.Collector())
    text = generate_latest(reg).decode()
    fams = families(text)
    assert "gil_adapt_thread_cpu_seconds" in fams
    assert "gil_adapt_beta_ratio" in fams
    assert fams["gil_adapt_build_info"].samples[0].labels["version"] == gil_adapt.__version__


class FakeExecutor:
    _thread_name_prefix = "fake-pool"

    def __init__(self, broken: bool = False) -> None:
        self.broken = broken

    def stats(self) -> dict:
        if self.broken:
            raise RuntimeError("shut down")
        return {"workers": 3, "target_workers": 4, "queue_length": 7, "beta": 0.25,
                "throughput": 12.5, "submitted": 10, "completed": 9,
                "decisions": {"grow": 2, "shrink": 1, "veto": 0}}


def test_executor_metrics_and_weak_registration():
    ex = FakeExecutor()
    metrics.register_executor(ex)
    metrics.register_executor(ex)  # idempotent
    broken = FakeExecutor(broken=True)
    metrics.register_executor(broken)
    fams = families(metrics.metrics_text())
    workers = [s for s in fams["gil_adapt_executor_workers"].samples
               if s.labels["executor"] == "fake-pool"]
    assert [s.value for s in workers] == [3.0]
    target = [s.value for s in fams["gil_adapt_executor_target_workers"].samples
              if s.labels["executor"] == "fake-pool"]
    assert target == [4.0]
    decisions = {s.labels["decision"]: s.value
                 for s in fams["gil_adapt_executor_decisions"].samples
                 if s.labels["executor"] == "fake-pool"}
    assert decisions == {"grow": 2.0, "shrink": 1.0, "veto": 0.0}
    del ex, broken
    gc.collect()
    assert not [n for n, _ in metrics.executors() if n.startswith("fake-pool")]


def test_adaptive_executor_exported_without_registration():
    with gil_adapt.AdaptiveExecutor(2, thread_name_prefix="metrics-test") as ex:
        list(ex.map(time.sleep, [0.001] * 4))
        fams = families(metrics.metrics_text())
        names = {s.labels["executor"] for s in fams["gil_adapt_executor_workers"].samples}
        assert "metrics-test" in names
        completed = [s.value for s in fams["gil_adapt_executor_tasks_completed"].samples
                     if s.labels["executor"] == "metrics-test"]
        assert completed and completed[0] >= 4
    # gone once shut down, and a dropped executor is not kept alive by the exporter
    fams = families(metrics.metrics_text())
    names = {s.labels["executor"] for s in fams["gil_adapt_executor_workers"].samples} \
        if "gil_adapt_executor_workers" in fams else set()
    assert "metrics-test" not in names
    ref = weakref.ref(gil_adapt.AdaptiveExecutor(2, thread_name_prefix="metrics-dropped"))
    gc.collect()
    assert ref() is None


def test_register_executor_needs_stats():
    with pytest.raises(TypeError):
        metrics.register_executor(object())


def test_no_prometheus_client_needed():
    code = textwrap.dedent("""
        import sys
        sys.modules["prometheus_client"] = None  # not installed
        import urllib.request
        import gil_adapt
        text = gil_adapt.metrics_text()
        assert "gil_adapt_thread_cpu_seconds_total{" in text
        with gil_adapt.serve_metrics(port=0) as srv:
            assert urllib.request.urlopen(srv.url, timeout=10).status == 200
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout == "ok\n", out.stderr
