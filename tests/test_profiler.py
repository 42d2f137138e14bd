"""``gil-adapt run``: an unmodified program profiled; its output and exit status untouched."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import sys
import textwrap

import pytest

from gil_adapt import profiler

from conftest import needs_gil, short_threads_exited

RUN = [sys.executable, "-m", "gil_adapt", "run", "--no-live"]

MIXED = textwrap.dedent("""
    import os, sys, threading, time
    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})   # this thread and the ones it starts
    SECONDS = float(sys.argv[1])

    def spin():
        end = time.monotonic() + SECONDS
        x = 0
        while time.monotonic() < end:
            for i in range(2000):
                x += i

    def sleeper():
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            time.sleep(0.25)

    ts = [threading.Thread(target=spin, name=f"cpu-{i}") for i in range(4)]
    ts += [threading.Thread(target=sleeper, name=f"sleep-{i}") for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print("done", " ".join(sys.argv[1:]))
    sys.stdout.flush()
    sys.exit(int(sys.argv[2]))
""")


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def run(args, cwd=None, timeout=120, **kw):
    return subprocess.run(RUN + list(args), capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, **kw)


@pytest.fixture(scope="module")
def mixed_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    script = write(tmp, "mixed.py", MIXED)
    out = str(tmp / "report.json")
    plain = subprocess.run([sys.executable, script, "2.0", "3"], capture_output=True,
                           text=True, timeout=120)
    prof = run(["--json", out, script, "2.0", "3"])
    with open(out) as fh:
        report = json.load(fh)
    return plain, prof, report


@needs_gil
def test_mixed_threads_named_gil_and_io_bound(mixed_report):
    _, prof, report = mixed_report
    assert report["capabilities"]["gil_wait"] == "exact", report["capabilities"]
    threads = {t["name"]: t for t in report["threads"]}
    names = {f"cpu-{i}" for i in range(4)} | {f"sleep-{i}" for i in range(4)}
    assert names <= set(threads), [(t["tid"], t["name"], t["alive"]) for t in report["threads"]]
    for i in range(4):
        cpu = threads[f"cpu-{i}"]
        assert cpu["bound"] == "GIL-bound", cpu
        assert cpu["shares"]["gil_wait"] > 0.5, cpu
        assert cpu["beta"] > 0.6, cpu
        io = threads[f"sleep-{i}"]
        assert io["bound"] == "I/O-bound", io
        assert io["shares"]["io_wait"] > 0.7, io
        assert io["beta"] < 0.4, io
    for t in report["threads"]:
        assert abs(sum(t["shares"].values()) - 1.0) < 0.02, t
        assert all(v >= 0 for v in t["shares"].values()), t
    groups = report["verdict"]["thread_groups"]
    assert {f"cpu-{i}" for i in range(4)} <= set(groups["GIL-bound"])
    assert {f"sleep-{i}" for i in range(4)} <= set(groups["I/O-bound"])
    assert report["verdict"]["kind"] == "gil-bound"
    assert "GIL-bound" in report["verdict"]["text"]
    assert report["process"]["gil_utilisation"] > 0.5
    # and the text report says the same, on stderr
    assert "verdict: GIL-bound" in prof.stderr
    assert "I/O-bound: sleep-" in prof.stderr


@needs_gil
def test_functions_attributed(mixed_report):
    _, _, report = mixed_report
    f = report["functions"]
    assert f["method"].startswith("ledger-interval")
    assert f["samples"] > 3
    rows = {r["function"]: r for r in f["rows"]}
    assert rows["spin"]["bound"] == "GIL-bound", rows["spin"]
    assert rows["spin"]["threads"] == 4
    assert rows["sleeper"]["bound"] == "I/O-bound", rows["sleeper"]
    assert rows["sleeper"]["shares"]["io_wait"] > 0.7
    # per-function time adds up to the per-thread time (same ledger counters)
    cpu_threads = sum(t["wall_s"] for t in report["threads"] if t["name"].startswith("cpu-"))
    assert rows["spin"]["wall_s"] == pytest.approx(cpu_threads, rel=0.1)


def test_output_and_exit_code_unchanged(mixed_report):
    plain, prof, report = mixed_report
    assert plain.returncode == 3
    assert prof.returncode == 3
    assert prof.stdout == plain.stdout == "done 2.0 3\n"
    assert report["exit_code"] == 3
    assert report["timeline"]["threads"]


def test_script_exit_paths(tmp_path):
    script = write(tmp_path, "paths.py", """
        import sys
        print("argv", sys.argv[1:], __name__, __file__ == sys.argv[0] or __file__)
        kind = sys.argv[1]
        if kind == "str":
            sys.exit("bye")
        if kind == "none":
            sys.exit()
        if kind == "raise":
            raise ValueError("boom")
    """)
    for kind, code in (("str", 1), ("none", 0), ("raise", 1), ("end", 0)):
        plain = subprocess.run([sys.executable, script, kind], capture_output=True, text=True)
        prof = run([script, kind])
        assert prof.returncode == plain.returncode == code, (kind, prof.stderr)
        assert prof.stdout == plain.stdout, kind
        assert "verdict:" in prof.stderr
    prof = run([script, "raise"])
    tb = prof.stderr.split("gil-adapt run:")[0]
    assert "Traceback (most recent call last)" in tb
    assert 'paths.py", line 10, in <module>' in tb
    assert "ValueError: boom" in tb
    assert "profiler.py" not in tb and "runpy" not in tb
    assert "bye" in run([script, "str"]).stderr


def test_keyboard_interrupt_like_python(tmp_path):
    # The script installs Python's SIGINT handler itself: a test run started in the
    # background by a shell inherits SIGINT ignored, and python then leaves it ignored
    # (both runs slept 5 s and exited 0 that way).
    script = write(tmp_path, "intr.py", """
        import os, signal, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("before")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    """)
    plain = subprocess.run([sys.executable, script], capture_output=True, text=True)
    prof = run([script])
    assert plain.returncode == prof.returncode == -signal.SIGINT
    assert prof.stdout == plain.stdout == "before\n"
    assert "KeyboardInterrupt" in prof.stderr
    assert "verdict:" in prof.stderr


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_report_written_when_terminated(tmp_path, signame):
    """timeout, kill, docker and systemd stop a program with SIGTERM: the report and the
    --json file are still written, and the process still ends by that signal."""
    sig = getattr(signal, signame)
    if signal.getsignal(sig) == signal.SIG_IGN:
        # inherited as ignored (e.g. the suite runs under nohup): the profiled program
        # keeps it ignored, as Python does, so the signal cannot end it
        pytest.skip(f"{signame} is ignored in this process")
    script = write(tmp_path, "term.py", """
        import sys, threading, time
        def io():
            while True:
                time.sleep(0.01)
        threading.Thread(target=io, daemon=True).start()
        print("running", flush=True)
        time.sleep(60)
    """)
    out = tmp_path / "report.json"
    proc = subprocess.Popen(RUN + ["--json", str(out), script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "running\n"
        time.sleep(0.5)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -sig, stderr
    assert "verdict:" in stderr
    report = json.loads(out.read_text())
    assert report["exit_code"] == 128 + sig


def test_module_mode(tmp_path):
    write(tmp_path, "mymod.py", """
        import sys
        print(__name__, sys.argv[1:])
        sys.exit(5)
    """)
    prof = run(["-m", "mymod", "a", "--b"], cwd=tmp_path)
    assert prof.returncode == 5, prof.stderr
    assert prof.stdout == "__main__ ['a', '--b']\n"
    prof = run(["-m", "no_such_module_here"], cwd=tmp_path)
    assert prof.returncode == 1
    assert "No module named no_such_module_here" in prof.stderr
    assert "verdict" not in prof.stderr


@pytest.mark.parametrize("args,msg", [
    (["missing_script.py"], "can't open file"),
    (["--interval", "0", "x.py"], "--interval must be greater than 0"),
    (["--interval", "-1", "x.py"], "--interval must be greater than 0"),
    (["--interval=abc", "x.py"], "--interval needs a number"),
    (["--bogus", "x.py"], "unknown option"),
    ([], "no program given"),
    (["--json", "/nonexistent-dir/x.json", "x.py"], "no such directory"),
    (["--plot", "out.txt", "x.py"], "must end in one of"),
])
def test_bad_input(tmp_path, args, msg):
    prof = run(args, cwd=tmp_path, timeout=60)
    assert prof.returncode == 2
    assert msg in prof.stderr
    assert "verdict" not in prof.stderr
    assert prof.stdout == ""


def test_port_in_use(tmp_path):
    marker = tmp_path / "ran"
    script = write(tmp_path, "s.py", f"open({str(marker)!r}, 'w').close()\n")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        prof = run(["--port", str(busy.getsockname()[1]), script], timeout=60)
    finally:
        busy.close()
    assert prof.returncode != 0
    assert "cannot listen on 127.0.0.1" in prof.stderr
    assert not marker.exists()  # the program never started; the process has ended


def test_metrics_served_while_running(tmp_path):
    script = write(tmp_path, "scrape.py", """
        import sys, urllib.request
        url = sys.argv[1]
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        print("ok" if "gil_adapt_thread_cpu_seconds_total" in body else "missing")
    """)
    with socket.socket() as s:  # a free port (tiny race, fine for a test)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prof = run(["--port", str(port), script, f"http://127.0.0.1:{port}/metrics"])
    assert prof.returncode == 0, prof.stderr
    assert prof.stdout == "ok\n"
    assert f"metrics at http://127.0.0.1:{port}/metrics" in prof.stderr


def test_live_table_only_when_asked(tmp_path):
    script = write(tmp_path, "short.py", "import time\ntime.sleep(0.8)\nprint('x')\n")
    quiet = subprocess.run([sys.executable, "-m", "gil_adapt", "run", "--interval", "0.2",
                            script], capture_output=True, text=True, timeout=60)
    assert quiet.returncode == 0 and quiet.stdout == "x\n"
    assert "last 0.2 s" not in quiet.stderr  # stderr is not a terminal
    top = subprocess.run([sys.executable, "-m", "gil_adapt", "run", "--top", "--interval",
                          "0.2", script], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and top.stdout == "x\n"
    assert "last 0.2 s" in top.stderr
    assert "\x1b[" not in top.stderr  # no terminal control codes into a file


def test_plot(tmp_path):
    script = write(tmp_path, "p.py", "import time\ntime.sleep(0.3)\n")
    out = tmp_path / "states.png"
    prof = run(["--plot", str(out), script])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert prof.returncode == 2
        assert "--plot needs matplotlib" in prof.stderr
        assert not out.exists()
        return
    assert prof.returncode == 0, prof.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch):
    from gil_adapt import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.delitem(sys.modules, "matplotlib.figure", raising=False)
    monkeypatch.delitem(sys.modules, "matplotlib.backends.backend_agg", raising=False)
    with pytest.raises(plot.PlotUnavailable, match="needs matplotlib"):
        plot.plot_timeline({"bin_s": 0.1, "threads": []}, os.devnull)


# ---- pieces, in-process ----------------------------------------------------------------


def test_parse_args():
    o = profiler.parse_args(["--interval", "0.5", "--top", "--json=r.json", "s.py", "-x",
                             "--interval", "9"])
    assert (o.interval, o.top, o.json_path, o.script) == (0.5, True, "r.json", "s.py")
    assert o.args == ["-x", "--interval", "9"]
    o = profiler.parse_args(["-m", "pkg.mod", "--top"])
    assert (o.module, o.args, o.top) == ("pkg.mod", ["--top"], False)
    o = profiler.parse_args(["-mpkg"])
    assert o.module == "pkg"
    o = profiler.parse_args(["--", "-weird.py"])
    assert o.script == "-weird.py"
    for bad in (["--port", "x", "s.py"], ["--port", "70000", "s.py"], ["--sample-hz", "0", "s"],
                ["--interval"], ["-m"]):
        with pytest.raises(profiler.UsageError):
            profiler.parse_args(bad)


def _summary(threads):
    rows = []
    for name, st in threads:
        t = {"tid": len(rows) + 1, "name": name, "alive": True, "gil_held_ns": 0,
             **{k: 0 for k in profiler.STATE_KEYS}}
        t.update(st)
        t["wall_ns"] = sum(t[k] for k in profiler.STATE_KEYS)
        t["bound"] = profiler._bound(t)
        rows.append(t)
    total = {k: sum(t[k] for t in rows) for k in ("wall_ns", "gil_held_ns")
             + profiler.STATE_KEYS}
    profiler._ledger._derive(total)
    total["gil_utilisation"] = min(1.0, total["gil_held_ns"] / 10**9)
    return {"threads": rows, "total": total, "elapsed_ns": 10**9, "gil_switches": 0}


CAPS = {"gil_wait": "exact", "usable_cores": 2.0}
S = 10**9


def test_verdict_gil_bound_with_little_estimate():
    cpu = [(f"c{i}", {"cpu_ns": S // 4, "gil_wait_ns": 3 * S // 4, "gil_held_ns": S // 4})
           for i in range(4)]
    v = profiler.verdict(_summary(cpu), CAPS)
    assert v["kind"] == "gil-bound"
    assert v["threads_would_suffice"] == 1
    assert "1 thread would suffice" in v["text"]
    io = [(f"s{i}", {"io_wait_ns": S}) for i in range(4)]
    v = profiler.verdict(_summary(cpu + io), CAPS)
    assert v["kind"] == "gil-bound"
    assert v["threads_would_suffice"] == 5  # 1 to keep the GIL busy + 4 in I/O at once
    assert v["thread_groups"]["I/O-bound"] == ["s0", "s1", "s2", "s3"]


def test_verdict_io_and_cpu():
    io = [(f"s{i}", {"io_wait_ns": 9 * S // 10, "cpu_ns": S // 10, "gil_held_ns": S // 10})
          for i in range(2)]
    v = profiler.verdict(_summary(io), CAPS)
    assert v["kind"] == "io-bound"
    assert "more concurrency would help" in v["text"]
    assert v["threads_would_suffice"] == 10
    runq = [(f"r{i}", {"cpu_ns": S // 2, "runq_wait_ns": S // 2}) for i in range(4)]
    assert profiler.verdict(_summary(runq), {"gil_wait": "exact",
                                             "usable_cores": 1.0})["kind"] == "cpu-saturated"
    one = [("main", {"cpu_ns": S, "gil_held_ns": S})]
    assert profiler.verdict(_summary(one), CAPS)["kind"] == "cpu-bound"
    assert profiler.verdict(_summary([]), CAPS)["kind"] == "none"


def test_verdict_compares_with_threads_at_once_not_threads_seen():
    # thread-per-request: 300 short-lived threads over the run, 4 at a time, GIL 4 % busy
    per = [(f"req{i}", {"io_wait_ns": 4 * S // 300 - S // 7500, "cpu_ns": S // 7500,
                        "gil_held_ns": S // 7500}) for i in range(300)]
    v = profiler.verdict(_summary(per), CAPS)
    assert v["kind"] == "io-bound"
    assert v["concurrency"] == pytest.approx(4.0, rel=0.01)
    assert "more concurrency would help" in v["text"], v["text"]
    assert "4.0 ran at once" in v["text"]
    # 120 threads at once keeping the GIL 96 % busy: at the limit
    busy = [(f"w{i}", {"io_wait_ns": S - S // 125, "cpu_ns": S // 125, "gil_held_ns": S // 125})
            for i in range(120)]
    v = profiler.verdict(_summary(busy), CAPS)
    assert v["kind"] in ("io-bound", "gil-bound"), v
    if v["kind"] == "io-bound":
        assert "limit" in v["text"], v["text"]


def test_timeline_bins_coarsen(monkeypatch):
    import threading
    import time

    import gil_adapt

    gil_adapt.install()
    monkeypatch.setattr(profiler, "MAX_BINS", 4)
    s = profiler.Sampler(profiler.Options(interval=0.05, json_path="x.json", live=False),
                         sys.stderr)
    s.start()
    t = threading.Thread(target=time.sleep, args=(0.8,), name="sleepy")
    t.start()
    t.join()
    s.stop()
    assert s.bin_ns > 50_000_000  # doubled at least once
    tl = profiler.timeline(s)
    rows = {r["name"]: r for r in tl["threads"]}
    sleepy = rows["sleepy"]
    assert sleepy["t_s"] == sorted(sleepy["t_s"])
    assert len(sleepy["t_s"]) <= 5
    for i in range(len(sleepy["t_s"])):
        total = sum(sleepy[k][i] for k in ("cpu", "gil_wait", "lock_wait", "runq_wait",
                                           "io_wait", "idle"))
        assert total == pytest.approx(1.0, abs=0.01)
    assert max(sleepy["io_wait"]) > 0.5


def test_exited_threads_fold_into_one_row():
    import gil_adapt

    gil_adapt.install()
    s = profiler.Sampler(profiler.Options(live=False), sys.stderr)
    s.start()
    short_threads_exited(5, 0.05)
    s.stop()
    before = {r["name"]: r for r in profiler.build_report(s, [], 0)["threads"]}
    assert {f"short-{i}" for i in range(5)} <= set(before)
    s._fold(set())  # as if the ledger had dropped every exited record
    report = profiler.build_report(s, [], 0)
    rows = {r["name"]: r for r in report["threads"]}
    assert not {f"short-{i}" for i in range(5)} & set(rows)
    folded = [r for n, r in rows.items() if "exited threads, summed" in n]
    assert len(folded) == 1
    assert folded[0]["wall_s"] >= sum(before[f"short-{i}"]["wall_s"] for i in range(5)) * 0.99
    assert folded[0]["shares"]["io_wait"] > 0.5


def test_native_threads_named_by_what_they_are():
    proc = profiler._PROCESS_NAME
    assert profiler._native_name(123, proc) == "native thread 123"  # inherited name
    assert profiler._native_name(124, "") == "native thread 124"
    assert profiler._native_name(125, "OpenBLAS-1") == "OpenBLAS-1"  # a name it set


def test_function_rows_without_measured_time_are_left_out():
    row = {"threads": 1, "wall_ns": 0, "bound": "idle", "function": "Condition.wait",
           "file": "threading.py", "line": 295}
    row.update({k: 0 for k in profiler.STATE_KEYS})
    busy = dict(row, function="work", wall_ns=2 * 10**9, cpu_ns=2 * 10**9, bound="CPU-bound")
    text = profiler.render_functions([busy, row])
    assert "work" in text and "Condition.wait" not in text
