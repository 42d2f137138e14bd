"""The exporter's per-thread series (per_thread, max_thread_series), label values and
naming conventions, checked with prometheus_client's parser and with promtool."""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from typing import Dict, Iterator, List, Tuple

import pytest

import gil_adapt
from gil_adapt import metrics

try:
    from prometheus_client import parser
except ImportError:  # the exporter needs none of it; these checks do
    parser = None

needs_client = pytest.mark.skipif(parser is None, reason="prometheus_client not installed")

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
THREAD_FAMILIES = [f"gil_adapt_thread_{s}_seconds" for s in
                   ("cpu", "gil_wait", "lock_wait", "runq_wait", "io_wait", "idle", "gil_held")]
CPU = "gil_adapt_thread_cpu_seconds"
REQUEST_GROUP = "Thread-N (process_request_thread)"

Series = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def parse(text: str) -> list:
    if parser is None:
        pytest.skip("prometheus_client not installed")
    return list(parser.text_string_to_metric_families(text))


def series(text: str) -> Series:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in parse(text) for s in f.samples}


def thread_samples(text: str) -> List[Dict[str, str]]:
    fams = {f.name: f for f in parse(text)}
    return [s.labels for s in fams[CPU].samples] if CPU in fams else []


@pytest.fixture
def busy_process() -> Iterator[Dict[str, object]]:
    """Threads waiting (one with an empty name, two per-request style, two numbered
    workers), a live AdaptiveExecutor that has run tasks, and a registered executor whose
    decisions include an empty kind."""
    stop = threading.Event()
    names = ["", "Thread-7 (process_request_thread)", "Thread-8 (process_request_thread)",
             "worker-1", "worker-2"]
    threads = [threading.Thread(target=stop.wait) for _ in names]
    for t, name in zip(threads, names):
        t.name = name  # "" only this way: Thread(name="") picks a name
        t.start()

    class Odd:
        _thread_name_prefix = ""  # no prefix: labelled executor-<n>

        def stats(self) -> dict:
            return {"workers": 1, "submitted": 2, "completed": 2, "beta": None,
                    "decisions": {"": 1, "grow": 1}}

    odd = Odd()
    metrics.register_executor(odd)
    ex = gil_adapt.AdaptiveExecutor(2, thread_name_prefix="series-pool")
    try:
        list(ex.map(abs, range(8)))
        yield {"threads": threads, "executor": ex}
    finally:
        ex.shutdown()
        metrics.unregister_executor(odd)
        stop.set()
        for t in threads:
            t.join()


# ---- options --------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [
    ("Thread-123 (process_request_thread)", REQUEST_GROUP),
    ("ThreadPoolExecutor-0_3", "ThreadPoolExecutor-N_N"),
    ("asyncio_12", "asyncio_N"),
    ("conn 0x7f3a2b10", "conn N"),
    ("MainThread", "MainThread"),
    ("", "unnamed"),
])
def test_aggregate_name(name, expected):
    assert metrics.aggregate_name(name) == expected


BAD_OPTIONS = [
    ({"per_thread": "threads"}, ValueError, "per_thread must be one of 'thread', 'name', 'none'"),
    ({"per_thread": "NAME"}, ValueError, "per_thread must be one of"),
    ({"per_thread": 1}, TypeError, "per_thread must be a str"),
    ({"max_thread_series": -1}, ValueError, "max_thread_series must be >= 0"),
    ({"max_thread_series": "8"}, TypeError, "max_thread_series must be an int"),
    ({"max_thread_series": True}, TypeError, "max_thread_series must be an int"),
    ({"max_thread_series": 1.5}, TypeError, "max_thread_series must be an int"),
]


@pytest.mark.parametrize("kwargs, exc, message", BAD_OPTIONS)
def test_bad_options_are_clear_errors(kwargs, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        metrics.metrics_text(**kwargs)
    with pytest.raises(exc, match=re.escape(message)):
        metrics.Collector(**kwargs)
    with pytest.raises(exc, match=re.escape(message)):
        gil_adapt.serve_metrics(port=0, in_process=True, **kwargs)
    assert not any(t.name == "gil-adapt-metrics" for t in threading.enumerate())


def test_options_from_the_environment(monkeypatch, caplog):
    monkeypatch.delenv(metrics.ENV_PER_THREAD, raising=False)
    monkeypatch.delenv(metrics.ENV_MAX_THREAD_SERIES, raising=False)
    assert metrics.thread_options() == ("thread", 64)
    monkeypatch.setenv(metrics.ENV_PER_THREAD, " Name ")
    monkeypatch.setenv(metrics.ENV_MAX_THREAD_SERIES, "0")
    assert metrics.thread_options() == ("name", 0)
    assert metrics.thread_options("none", 3) == ("none", 3)  # arguments first
    monkeypatch.setenv(metrics.ENV_PER_THREAD, "per-request")
    monkeypatch.setenv(metrics.ENV_MAX_THREAD_SERIES, "lots")
    with caplog.at_level(logging.WARNING, logger="gil_adapt"):
        assert metrics.thread_options() == ("thread", 64)  # a typo never breaks the program
    assert "GIL_ADAPT_METRICS_PER_THREAD='per-request'" in caplog.text
    assert "GIL_ADAPT_METRICS_MAX_THREAD_SERIES='lots'" in caplog.text


# ---- modes ------------------------------------------------------------------------------


@needs_client
def test_name_mode_aggregates_without_tid(busy_process):
    labels = thread_samples(metrics.metrics_text(per_thread="name", max_thread_series=0))
    names = [lab["thread"] for lab in labels]
    assert all(set(lab) == {"thread"} for lab in labels), labels
    assert len(names) == len(set(names))
    assert {REQUEST_GROUP, "worker-N", "unnamed", "MainThread"} <= set(names), names
    assert "series-pool_N" in names  # the executor's workers, by its prefix


@needs_client
def test_none_mode_has_no_thread_series(busy_process):
    fams = {f.name for f in parse(metrics.metrics_text(per_thread="none"))}
    assert not fams & set(THREAD_FAMILIES)
    assert "gil_adapt_cpu_seconds" in fams


@needs_client
def test_cap_puts_the_rest_in_other(busy_process):
    stops = [threading.Event() for _ in range(12)]
    extra = [threading.Thread(target=ev.wait, name=f"capped-{i}")
             for i, ev in enumerate(stops)]
    for t in extra:
        t.start()
    other = (CPU + "_total", (("thread", "other"), ("tid", "other")))
    try:
        first = series(metrics.metrics_text(per_thread="thread", max_thread_series=3))
        cpu = [k for k in first if k[0] == CPU + "_total"]
        assert len(cpu) <= 4 and other in cpu, cpu  # 3 threads, then "other"
        for ev, t in zip(stops[:6], extra[:6]):  # half of them exit: "other" keeps them
            ev.set()
            t.join()
        second = series(metrics.metrics_text(per_thread="thread", max_thread_series=3))
        assert second[other] >= first[other]
        assert len([k for k in second if k[0] == CPU + "_total"]) <= 4
    finally:
        for ev, t in zip(stops, extra):
            ev.set()
            t.join()
    named = thread_samples(metrics.metrics_text(per_thread="name", max_thread_series=2))
    assert len(named) <= 3 and named[-1] == {"thread": "other"}, named


# ---- label values and names -------------------------------------------------------------


def check_conventions(text: str) -> None:
    """Every family's name and type follow Prometheus' conventions; every sample has
    non-empty label values; no series repeats."""
    seen = set()
    for f in parse(text):
        assert METRIC_NAME.match(f.name) and f.name.startswith("gil_adapt_"), f.name
        assert f.documentation, f.name
        if f.type == "counter":
            assert not f.name.endswith("_total"), f.name
        elif f.type == "gauge":
            assert not f.name.endswith(("_total", "_count", "_sum", "_bucket")), f.name
        else:
            pytest.fail(f"{f.name}: unexpected type {f.type}")
        if "seconds" in f.name or "ratio" in f.name:
            assert f.name.endswith(("_seconds", "_ratio")), f.name  # the unit last
        assert not re.search(r"milli|micro|nano|percent|_ms$|_ns$", f.name), f.name
        for s in f.samples:
            assert s.name == (f.name + "_total" if f.type == "counter" else f.name), s.name
            for k, v in s.labels.items():
                assert LABEL_NAME.match(k) and not k.startswith("__"), (s.name, k)
                assert isinstance(v, str) and v != "", (s.name, s.labels)
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in seen, key
            seen.add(key)
            if f.type == "counter":
                assert s.value >= 0 and not math.isnan(s.value), (s.name, s.value)
    assert "gil_adapt_build_info" in {s.name for f in parse(text) for s in f.samples}


@needs_client
@pytest.mark.parametrize("per_thread", ["thread", "name", "none"])
def test_no_empty_labels_and_conventional_names(busy_process, per_thread):
    text = metrics.metrics_text(per_thread=per_thread, max_thread_series=4)
    check_conventions(text)
    fams = {f.name: f for f in parse(text)}
    decisions = {(s.labels["executor"], s.labels["decision"])
                 for s in fams["gil_adapt_executor_decisions"].samples}
    assert any(d == "unknown" and e.startswith("executor-") for e, d in decisions), decisions
    if per_thread != "none":
        wide = metrics.metrics_text(per_thread=per_thread, max_thread_series=0)
        assert "unnamed" in {lab["thread"] for lab in thread_samples(wide)}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not on PATH (Debian: the prometheus package; "
                    "scripts/get-promtool.sh unpacks only promtool)")
    return path


@pytest.mark.parametrize("per_thread", ["thread", "name", "none"])
def test_promtool_check_metrics(busy_process, per_thread):
    tool = promtool()
    text = metrics.metrics_text(per_thread=per_thread, max_thread_series=4)
    out = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "" and out.stderr.strip() == "", out.stdout + out.stderr


# ---- thread-per-request: bounded, monotonic ----------------------------------------------

REQUESTS = textwrap.dedent("""
    import json, sys, threading, time
    from prometheus_client import parser
    from gil_adapt import _ledger, metrics

    CAP = 8
    MODES = (("name", CAP), ("thread", CAP))

    def read(mode, cap):
        text = metrics.metrics_text(per_thread=mode, max_thread_series=cap)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in parser.text_string_to_metric_families(text) for s in f.samples}

    def handle():  # a short request: some Python work and a little I/O
        x = 0
        for i in range(20000):
            x += i
        time.sleep(0.002)

    prev = {m: read(*m) for m in MODES}
    decreases, sizes, labels, gaps = [], {m[0]: [] for m in MODES}, set(), []
    group = []
    n = 0
    for wave in range(10):  # 200 threads named as socketserver.ThreadingMixIn names them
        ts = [threading.Thread(target=handle, name=f"Thread-{n + i} (process_request_thread)")
              for i in range(20)]
        n += len(ts)
        for t in ts:
            t.start()
        for when in ("running", "exited"):
            if when == "exited":
                for t in ts:
                    t.join()
                time.sleep(0.3 if wave % 2 else 0.02)  # odd waves: no longer listed
            for m in MODES:
                cur = read(*m)
                cpu = {k: v for k, v in cur.items()
                       if k[0] == "gil_adapt_thread_cpu_seconds_total"}
                sizes[m[0]].append(len(cpu))
                for k, v in prev[m].items():
                    if k[0].endswith("_total") and k in cur and cur[k] < v:
                        decreases.append([m[0], k[0], dict(k[1]), v, cur[k]])
                prev[m] = cur
                if m[0] == "name":
                    labels.update(dict(k[1])["thread"] for k in cpu)
                    key = ("gil_adapt_thread_cpu_seconds_total",
                           (("thread", "Thread-N (process_request_thread)"),))
                    group.append(cur.get(key, 0.0))
                    total = cur[("gil_adapt_cpu_seconds_total", ())]
                    snap = _ledger.snapshot()  # after the read: the kernel's CPU so far
                    raw = snap["exited"]["raw_cpu_ns"] + sum(
                        t["raw_cpu_ns"] for t in snap["threads"].values() if t["alive"])
                    gaps.append([sum(cpu.values()), total, raw / 1e9])
    print(json.dumps({"decreases": decreases, "sizes": sizes, "labels": sorted(labels),
                      "group": group, "gaps": gaps, "threads": n}))
""")


@needs_client
def test_thread_per_request_series_bounded_and_monotonic(tmp_path):
    """200 short-lived threads named like http.server's: the name mode keeps a handful of
    series for good, the cap bounds each scrape of the per-thread mode, and no counter
    goes down while the threads exit and leave the ledger's listing (dead records kept
    200 ms here, so half the scrapes come after their records went)."""
    script = tmp_path / "requests.py"
    script.write_text(REQUESTS)
    env = dict(os.environ, GIL_ADAPT_DEAD_KEEP_MS="200")
    env.pop(metrics.ENV_PER_THREAD, None)
    env.pop(metrics.ENV_MAX_THREAD_SERIES, None)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["threads"] == 200
    assert res["decreases"] == []
    assert max(res["sizes"]["thread"]) <= 8 + 1
    assert max(res["sizes"]["name"]) <= 8 + 1
    assert len(res["labels"]) <= 8 + 1, res["labels"]  # over the whole run, not per scrape
    assert "Thread-N (process_request_thread)" in res["labels"]
    assert all("Thread-1" not in lab for lab in res["labels"])
    group = res["group"]
    assert group == sorted(group) and group[-1] > group[0]
    # The name mode's series hold the process total (the exited threads included) and
    # no more CPU than the kernel counted. They may exceed the total: a thread's CPU is the
    # kernel's less an estimate of the CPU inside its GIL waits, that estimate is revised
    # as samples come in, and every series keeps the most it published.
    for thread_sum, total, raw in res["gaps"]:
        assert thread_sum >= total * 0.98 - 0.002, (thread_sum, total)
        assert thread_sum <= raw + 1e-6, (thread_sum, raw)


HOOK = textwrap.dedent("""
    import sys, threading
    seen = []

    def program_hook(frame, event, arg):  # the program's own, set before the exporter's
        seen.append(threading.current_thread().name)
        sys.setprofile(None)

    threading.setprofile(program_hook)
    from gil_adapt import metrics
    metrics.metrics_text()  # installs the exporter's hook, chained to the program's
    assert threading.getprofile() is not program_hook
    t = threading.Thread(target=lambda: None, name="short-lived-1")
    t.start()
    t.join()  # exited before any read saw it alive
    text = metrics.metrics_text()
    assert 'thread="short-lived-1"' in text, text
    assert seen == ["short-lived-1"], seen  # the program's hook still ran, once
    print("ok")
""")


@pytest.mark.skipif(sys.version_info < (3, 10), reason="threading.getprofile is 3.10+")
def test_name_hook_chains_to_the_programs():
    out = subprocess.run([sys.executable, "-c", HOOK], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout == "ok\n", out.stderr


def test_gil_adapt_run_takes_the_options_from_the_environment(tmp_path):
    script = tmp_path / "scrape.py"
    script.write_text(textwrap.dedent("""
        import sys, urllib.request
        body = urllib.request.urlopen(sys.argv[1], timeout=10).read().decode()
        cpu = [line for line in body.splitlines()
               if line.startswith("gil_adapt_thread_cpu_seconds_total{")]
        print("ok" if cpu and not any("tid=" in line for line in cpu) else body)
    """))
    import socket
    with socket.socket() as s:  # a free port (tiny race, fine for a test)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GIL_ADAPT_METRICS_PER_THREAD="name")
    out = subprocess.run([sys.executable, "-m", "gil_adapt", "run", "--no-live",
                          "--port", str(port), str(script),
                          f"http://127.0.0.1:{port}/metrics"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ok\n", out.stdout
