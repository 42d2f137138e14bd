"""gil-adapt bench: the loopback server and clients, the ten workloads (sync and async),
the MobileNetV2 graph, and a tiny end-to-end run of the command. No timing assertions.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from typing import Iterator, Tuple

import pytest

from gil_adapt import bench
from gil_adapt.bench import loopback, workloads

BENCH_MD_WORKLOADS = ["mixed", "micro", "io", "vision", "audio", "sensor-fusion", "rag",
                      "slm", "analytics", "onnx-mobilenetv2"]


@pytest.fixture(scope="module")
def server() -> Iterator[Tuple[str, int]]:
    """The loopback server on a thread of its own (its own event loop)."""
    ready = threading.Event()
    port: list = []
    loop = asyncio.new_event_loop()
    done = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        task = loop.create_task(loopback.serve("127.0.0.1", 0, ready=ready, out=port))
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        finally:
            done.set()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    assert ready.wait(10)
    yield ("127.0.0.1", port[0])
    for task in asyncio.all_tasks(loop):
        loop.call_soon_threadsafe(task.cancel)
    done.wait(5)


def test_registry_is_bench_md():
    assert list(workloads.WORKLOADS) == BENCH_MD_WORKLOADS
    for w in workloads.WORKLOADS.values():
        assert asyncio.iscoroutinefunction(w.async_)
        assert w.sync.__module__ == workloads.__name__   # picklable by reference


def test_sync_and_async_clients(server):
    frames = loopback.request(server, loopback.RAW, 0.0, 100_000)
    assert len(frames) == 1 and len(frames[0]) == 100_000
    again = loopback.request(server, loopback.RAW, 0.001, 10)   # the kept connection
    assert again[0] == frames[0][:10]
    stream = loopback.request(server, loopback.TOKENS, 0.002, 8, chunks=4)
    assert [len(f) for f in stream] == [8, 8, 8, 8]
    docs = json.loads(loopback.request(server, loopback.DOCS, 0.0, 3)[0])
    assert len(docs["matches"]) == 3
    csv = loopback.request(server, loopback.CSV, 0.0, 5)[0].decode().splitlines()
    assert csv[0].startswith("ts,device") and len(csv) == 6

    async def go():
        a = await loopback.arequest(server, loopback.RAW, 0.0, 1000, payload=b"x" * 70_000)
        b = await asyncio.gather(*(loopback.arequest(server, loopback.ANSWER, 0.001, 0)
                                   for _ in range(5)))
        return a, b

    a, b = asyncio.run(go())
    assert a[0] == frames[0][:1000]
    assert all(json.loads(x[0])["choices"] for x in b)


@pytest.mark.parametrize("name", BENCH_MD_WORKLOADS)
def test_workload_runs_sync_and_async(name, server, tmp_path_factory):
    wl = workloads.WORKLOADS[name]
    missing = workloads.missing_modules(wl)
    if missing:
        pytest.skip(f"needs {missing}")
    settings = {"server": server, "loop_per_ms": 1000.0, "latency_scale": 0.01}
    if wl.needs_model:
        from gil_adapt.bench import mobilenet

        settings["model_path"] = mobilenet.ensure_model(
            str(tmp_path_factory.getbasetemp() / "model-cache"))
    workloads.configure(settings)
    try:
        a = wl.sync()
        b = asyncio.run(wl.async_())
    finally:
        workloads.configure({})
    assert a == b     # the same computation on the same (seeded) data


def test_mobilenetv2_graph_is_the_published_architecture():
    pytest.importorskip("onnx")
    pytest.importorskip("numpy")
    from gil_adapt.bench import mobilenet

    model = mobilenet.build_model()
    ops = [n.op_type for n in model.graph.node]
    params = sum(int(__import__("numpy").prod(t.dims)) for t in model.graph.initializer)
    assert ops.count("Conv") == 52          # stem + 17 blocks (2 or 3 convs) + last 1x1
    assert ops.count("Add") == 10           # residuals where stride 1 and widths match
    assert ops.count("Gemm") == 1
    assert 3.4e6 < params < 3.6e6           # 3.5 M parameters (BN folded)
    assert 290e6 < mobilenet.count_macs(model) < 310e6   # ~300 M multiply-adds
    depthwise = [n for n in model.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(depthwise) == 17


def test_model_is_built_once(tmp_path):
    pytest.importorskip("onnx")
    from gil_adapt.bench import mobilenet

    p1 = mobilenet.ensure_model(str(tmp_path))
    stamp = os.stat(p1).st_mtime_ns
    p2 = mobilenet.ensure_model(str(tmp_path))
    assert p1 == p2 and os.stat(p2).st_mtime_ns == stamp
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


@pytest.mark.slow
def test_tiny_end_to_end_run(tmp_path, capsys):
    """The command on one small cell: a report and results come out (no cgroups needed)."""
    out = tmp_path / "out"
    rc = bench.main(["--configs", "1c-512m,64c-1g", "--workloads", "micro,io",
                     "--strategies", "threads-1,threads-4,asyncio-32,gil-adapt",
                     "--sweep", "1,4", "--reps", "1", "--warmup", "0.2", "--measure", "0.3",
                     "--no-cgroups", "--no-overhead", "--no-phase", "--no-plots",
                     "--out", str(out), "-q", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    with open(out / "results.json") as f:
        res = json.load(f)
    assert {c["name"]: c["status"] for c in res["configs"]} == {"1c-512m": "ran",
                                                                "64c-1g": "skipped"}
    assert "ran uncapped" in res["configs"][0]["memory_cap"]
    cells = {(c["workload"], c["strategy"]): c for c in res["cells"]}
    assert set(cells) == {(w, s) for w in ("micro", "io")
                          for s in ("threads-1", "threads-4", "asyncio-32", "gil-adapt")}
    for c in cells.values():
        assert c["status"] in ("ok", "failed", "partial", "skipped")
        if c["status"] == "ok":
            assert c["throughput"] > 0 and c["reps"] == 1
            # the CPU the cell's processes used in its window fits its one core (an
            # I/O cell may use less than /proc's 10 ms ticks in a 0.3 s window)
            assert c["cpu_source"] == "proc"
            assert 0 <= c["cpu_utilisation"] <= 1.02, c
            floor = c["cpu_utilisation_floor_max"]
            assert floor is None or floor <= 1.02, c
    assert any(c.get("cpu_utilisation") for c in cells.values()), cells  # CPU was seen
    assert res["workloads"]["micro"]["probe"]["cpu_ms"] > 0
    assert "| 1c-512m | micro |" in capsys.readouterr().out
    assert os.path.exists(out / "report.md")


@pytest.mark.slow
def test_tiny_staged_run_refines_and_prunes(tmp_path):
    """The full run's staged plan on one cell, with a forced coarse sweep 1,4: the
    refinement runs the sizes between, and what its first repetition showed clearly
    beaten keeps that one repetition while the rest are repeated."""
    from gil_adapt.bench import staging

    out = tmp_path / "out"
    rc = bench.main(["--configs", "1c-512m", "--workloads", "io",
                     "--strategies", "threads,asyncio-32,gil-adapt", "--coarse-sweep", "1,4",
                     "--inflight", "64", "--reps", "2", "--warmup", "0.2", "--measure", "0.3",
                     "--no-cgroups", "--no-overhead", "--no-phase", "--no-plots",
                     "--out", str(out), "-q", "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    with open(out / "results.json") as f:
        res = json.load(f)
    pruning = res["protocol"]["pruning"]
    assert res["protocol"]["staged"] and pruning["coarse_sweep"] == [1, 4]
    (stage,) = pruning["cells"]
    assert stage["coarse_best"] in (1, 4)
    assert stage["refinement"] == staging.refinement_sizes(stage["coarse_best"], 4, [1, 4])
    assert stage["refinement"] == [2, 3]
    cells = {c["strategy"]: c for c in res["cells"]}
    assert set(cells) == {"threads-1", "threads-2", "threads-3", "threads-4", "asyncio-32",
                          "gil-adapt"}
    # the refinement ran its sizes once, in repetition 1
    runs = [r for r in res["runs"] if r["kind"] == "cell"]
    for n in stage["refinement"]:
        assert [r["rep"] for r in runs if r["strategy"] == f"threads-{n}"][0] == 0
    # the pruning is the decision on the first repetitions, and it is what ran
    probe = res["workloads"]["io"]["probe"]
    first = staging.first_cells([r for r in runs if r["rep"] == 0], cores=1, measure_s=0.3,
                                cpu_ms_alone=probe["cpu_ms"] if probe["status"] == "ok"
                                else None)
    repeated, pruned = staging.prune_decision(first)
    assert set(pruned) == set(stage["pruned"])
    for name, c in cells.items():
        assert c["pruned"] == (name in pruned)
        assert c["reps"] == (1 if c["pruned"] else 2), name
    assert not cells["gil-adapt"]["pruned"] and cells["gil-adapt"]["reps"] == 2
    # threads-1 waits 50 ms per task: at most 20 tasks/s, far below 32 requests in flight
    assert cells["threads-1"]["pruned"]
    with open(out / "report.md") as f:
        md = f.read()
    assert "were not repeated" in md and "pruned: 1 repetition" in md


def test_tree_cpu_counts_the_session_and_interpolates():
    from gil_adapt.bench import child
    cpu = child._TreeCpu(own_cgroup=False)
    a = cpu.read()
    t_end = time.thread_time() + 0.2
    while time.thread_time() < t_end:
        pass
    b = cpu.read()
    assert a is not None and b is not None and b - a >= 0.15
    marks = [(0.0, 0.0, 1.0), (0.9, 1.1, 2.0), (3.0, 3.0, 2.0)]
    assert child._cpu_at(marks, 0.5) == pytest.approx(1.5)
    assert child._cpu_at(marks, 2.0) == pytest.approx(2.0)
    assert child._cpu_at(marks, 4.0) is None


def test_tree_faults_count_memory_first_touched():
    import mmap

    from gil_adapt.bench import child
    cpu = child._TreeCpu(own_cgroup=False)
    a = cpu.read_faults()
    m = mmap.mmap(-1, 8 << 20)  # fresh pages: each first write faults
    try:
        for off in range(0, len(m), 4096):
            m[off] = 1
    finally:
        m.close()
    b = cpu.read_faults()
    assert a is not None and b is not None
    assert b - a >= 0.9 * (8 << 20) / 4096  # at least one fault per page touched


DETACH = """
import os, sys, threading
from gil_adapt.bench import child
stop = threading.Event()
threading.Thread(target=stop.wait).start()   # never ends: a normal exit would wait for it
parent = os.getpid()
child._detach()
with open(sys.argv[1], "w") as f:             # only in the copy: the original left
    f.write(f"{parent} {os.getpid()} {threading.active_count()}")
os._exit(0)
"""


def test_detach_takes_the_figures_in_a_copy_holding_only_this_thread(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "copy.txt"
    proc = subprocess.run([sys.executable, "-c", DETACH, str(out)], timeout=60)
    assert proc.returncode == 0
    parent, pid, threads = (int(x) for x in out.read_text().split())
    assert pid != parent  # written by the copy
    assert threads == 1   # the worker thread is not in it


def test_cpu_floor_is_what_late_timestamps_cannot_inflate():
    from gil_adapt.bench import child
    # one core, truly 100 % busy from t=0 (CPU = t); each read waited for the interpreter
    # on one side or the other: its bracket, not its moment, is known
    reads = [(0.0, 0.0), (1.0, 1.3), (2.0, 2.0), (2.7, 3.0), (4.0, 4.0), (5.0, 5.0),
             (5.8, 6.0), (7.0, 7.0)]
    marks = [(a, b, true) for (a, b), true in zip(reads, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0,
                                                           6.0, 7.0])]
    floor = child._cpu_floor(marks, 1.0, 7.0, cores=1)
    assert floor is not None and floor <= 1.0  # never above what the core allows
    assert floor > 0.8                           # and close to the truth
    # stamped only after the reads (as before brackets), interpolation reads 106 %
    late = [(b, b, c) for a, b, c in marks]
    used = child._cpu_at(late, 6.0) - child._cpu_at(late, 1.3)
    assert used / (6.0 - 1.3) == pytest.approx(5.0 / 4.7)
    assert child._cpu_floor(marks, 6.5, 6.6, cores=1) is None  # no read inside
