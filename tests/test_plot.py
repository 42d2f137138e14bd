"""``gil-adapt run --plot``: the figure covers every thread the report counts."""
from __future__ import annotations

import ctypes
import sys
import threading
import time
from typing import Any, Dict, List

import pytest

from conftest import short_threads_exited
from gil_adapt import plot, profiler

STATES = plot.STATES
BIN = 0.1


def _thread(tid: int, first_bin: int, walls: List[float], io: float = 0.7) -> Dict[str, Any]:
    """A timeline row: bins from first_bin on, io_wait ``io`` of each bin, cpu the rest."""
    n = len(walls)
    row: Dict[str, Any] = {"tid": tid, "name": f"t-{tid}",
                           "t_s": [round((first_bin + i + 0.5) * BIN, 4) for i in range(n)],
                           "wall_s": list(walls)}
    for s in STATES:
        row[s] = [0.0] * n
    row["io_wait"] = [io] * n
    row["cpu"] = [round(1 - io, 4)] * n
    return row


def _timeline() -> Dict[str, Any]:
    """40 threads listed (10 long, 30 of one bin each) and 5 more summed in left_out."""
    threads = [_thread(100 + i, 0, [BIN] * (20 - i), io=0.5) for i in range(10)]
    threads += [_thread(200 + i, i % 15, [0.03 + 0.001 * i], io=0.9) for i in range(30)]
    left = _thread(0, 2, [0.04, 0.05], io=0.2)
    left = {k: v for k, v in left.items() if k not in ("tid", "name")}
    left["threads"] = 5
    return {"bin_s": BIN, "threads": threads, "threads_left_out": 5, "left_out": left,
            "threads_without_bins": 0, "threads_total": 45, "folded_threads": 0}


def test_layout_sums_every_thread_beyond_the_panels():
    tl = _timeline()
    lay = plot.layout(tl, max_threads=12)
    assert len(lay.panels) == 12
    own, other = lay.panels[:-1], lay.panels[-1]
    # the 11 with the most wall time: the 10 long ones and the longest single-bin one
    assert sorted(p.tids[0] for p in own) == list(range(100, 110)) + [229]
    assert [p.tids[0] for p in own] == sorted(p.tids[0] for p in own)
    assert (lay.total, lay.own_panels, lay.summed, lay.without_bins) == (45, 11, 34, 0)
    assert other.label == "other 34 threads" and other.threads == 34
    assert sorted(other.tids) == list(range(200, 229))
    rest = [t for t in tl["threads"] if t["tid"] in set(other.tids)]
    assert other.total_wall_s == pytest.approx(
        sum(sum(t["wall_s"]) for t in rest) + sum(tl["left_out"]["wall_s"]))
    # per bin: states summed over the threads' time, as a share of their summed wall
    i = other.t_s.index(pytest.approx(0.25))  # bin 2: threads 202, 217 and left_out
    parts = [(t["wall_s"][0], t["io_wait"][0]) for t in rest if t["tid"] in (202, 217)]
    parts.append((tl["left_out"]["wall_s"][0], tl["left_out"]["io_wait"][0]))
    wall = sum(w for w, _ in parts)
    assert other.wall_s[i] == pytest.approx(wall)
    assert other.shares["io_wait"][i] == pytest.approx(sum(w * s for w, s in parts) / wall)
    for j in range(len(other.t_s)):
        assert sum(other.shares[s][j] for s in STATES) == pytest.approx(1.0, abs=1e-3)
    assert lay.title("prog.py") == ("prog.py: share of wall time per state\nall 45 threads: "
                                     "11 with a panel each, 34 summed in the last panel")


def test_layout_without_more_threads_than_panels_has_no_sum():
    tl = {"bin_s": BIN, "threads": [_thread(1, 0, [BIN] * 3), _thread(2, 4, [0.02])],
          "threads_left_out": 0, "left_out": None, "threads_total": 2}
    lay = plot.layout(tl, max_threads=2)
    assert [p.tids for p in lay.panels] == [[1], [2]]
    assert lay.summed == 0
    assert lay.title() == "share of wall time per state\nall 2 threads"
    # one panel: everything in it, said so
    lay = plot.layout(tl, max_threads=1)
    assert [p.label for p in lay.panels] == ["all 2 threads"]
    assert lay.panels[0].total_wall_s == pytest.approx(0.32)


def test_title_counts_threads_without_samples_and_folded_rows():
    tl = {"bin_s": BIN, "threads": [_thread(1, 0, [BIN])], "threads_left_out": 0,
          "threads_without_bins": 2, "threads_total": 3, "folded_threads": 7}
    title = plot.layout(tl).title("x")
    assert "1 of 3 threads (2 without samples, not drawn)" in title
    assert "7 exited threads summed" in title
    assert plot.layout({"bin_s": BIN, "threads": []}).title().endswith("\nno threads")


def test_bars_reach_back_to_the_previous_sample():
    # a sample in every other bin (bins narrower than the sampling period)
    main = _thread(1, 0, [2 * BIN] * 4)
    main["t_s"] = [0.05, 0.25, 0.45, 0.65]
    late = _thread(2, 4, [0.15])
    lay = plot.layout({"bin_s": BIN, "threads": [main, late]})
    assert lay.starts == {0: 0.0, 2: pytest.approx(0.1), 4: pytest.approx(0.3),
                          6: pytest.approx(0.5)}
    by_tid = {p.tids[0]: p for p in lay.panels}
    xs, ys = plot._steps(by_tid[1], BIN, lay.starts)
    assert (xs[0], xs[-1]) == (0.0, pytest.approx(0.7))
    # no gap inside the thread's life: the stack is 0 only where the outline starts and ends
    heights = [sum(y[i] for y in ys) for i in range(len(xs))]
    assert heights[0] == heights[-1] == 0
    assert all(h == pytest.approx(1.0) for h in heights[1:-1])
    # a thread first seen in bin 4: its sample covers the time since the one in bin 2
    xs, ys = plot._steps(by_tid[2], BIN, lay.starts)
    assert (min(xs), max(xs)) == (pytest.approx(0.3), pytest.approx(0.5))


def _single_bin_axes(fig: Any, label: str) -> Any:
    return next(ax for ax in fig.axes if ax.get_ylabel() == label)


def test_figure_draws_every_thread_and_single_bin_ones():
    pytest.importorskip("matplotlib")
    tl = _timeline()
    fig = plot.build_figure(tl, title="prog.py", max_threads=12)
    assert len(fig.axes) == 12
    assert fig.axes[-1].get_ylabel() == "other 34 threads"
    texts = [t.get_text() for t in fig.texts]
    assert "prog.py: share of wall time per state\nall 45 threads: 11 with a panel each, " \
           "34 summed in the last panel" in texts
    # thread 229 lived within one bin (the 15th): drawn as a bar of that bin, full height
    ax = _single_bin_axes(fig, "t-229\n(229)")
    assert ax.collections, "a single-bin thread draws nothing"
    boxes = [p.get_extents() for c in ax.collections for p in c.get_paths()]
    x0, x1 = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
    assert (x0, x1) == (pytest.approx(14 * BIN), pytest.approx(15 * BIN))
    assert max(b.y1 for b in boxes) == pytest.approx(1.0, abs=1e-3)
    # every panel draws something, the summed one included
    assert all(a.collections for a in fig.axes)


def test_plot_timeline_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "t.png"
    assert plot.plot_timeline(_timeline(), str(out), title="p") == str(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the profiler's timeline: the report's threads ---------------------------------------


def _start_native_thread(usec: int) -> Any:
    """A thread Python did not start: pthread_create running libc's usleep(usec)."""
    libc = ctypes.CDLL(None)
    libc.pthread_create.argtypes = [ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p,
                                    ctypes.c_void_p, ctypes.c_void_p]
    libc.pthread_join.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
    handle = ctypes.c_ulong()
    usleep = ctypes.cast(libc.usleep, ctypes.c_void_p)
    assert libc.pthread_create(ctypes.byref(handle), None, usleep, ctypes.c_void_p(usec)) == 0
    return lambda: libc.pthread_join(handle, None)


@pytest.fixture(scope="module")
def short_lived_run():
    """30 short-lived Python threads, a longer one and a native one, profiled."""
    import gil_adapt

    gil_adapt.install()
    s = profiler.Sampler(profiler.Options(interval=0.05, plot_path="x.png", live=False),
                         sys.stderr)
    s.start()
    join_native = None
    s.native_tids = set()
    s.listed_before = set()
    if sys.platform.startswith("linux"):
        alive, tid_i = profiler._I_ALIVE, profiler._I_TID
        before = gil_adapt._core.read()[1]
        s.listed_before = {r[tid_i] for r in before}
        alive_before = {r[tid_i] for r in before if r[alive]}
        join_native = _start_native_thread(300_000)
        # the ledger finds it now, however slow the sampler
        python = {t.native_id for t in threading.enumerate()}
        s.native_tids = {r[tid_i] for r in gil_adapt._core.read()[1]
                         if r[alive] and r[tid_i] not in alive_before | python}
    ts = [threading.Thread(target=time.sleep, args=(0.01 * (i % 4),), name=f"short-{i}")
          for i in range(30)]
    for t in ts:
        t.start()
        time.sleep(0.005)
    long = threading.Thread(target=time.sleep, args=(0.3,), name="long")
    long.start()
    for t in ts + [long]:
        t.join()
    if join_native is not None:
        join_native()
    s.stop()
    return s, profiler.build_report(s, [], 0)


def test_timeline_covers_the_reports_threads_under_its_names(short_lived_run):
    s, report = short_lived_run
    tl = report["timeline"]
    assert tl["threads_total"] == report["process"]["threads"] == len(report["threads"])
    assert tl["threads_left_out"] == 0 and tl["threads_without_bins"] == 0
    assert {(t["tid"], t["name"]) for t in tl["threads"]} == \
        {(t["tid"], t["name"]) for t in report["threads"]}
    assert {f"short-{i}" for i in range(30)} | {"long"} <= {t["name"] for t in tl["threads"]}
    n = len(report["threads"])
    assert plot.layout(tl).title().splitlines()[1] == \
        f"all {n} threads: 11 with a panel each, {n - 11} summed in the last panel"
    for t in tl["threads"]:
        assert len(t["wall_s"]) == len(t["t_s"]) and all(w > 0 for w in t["wall_s"])
        row = next(r for r in report["threads"] if r["tid"] == t["tid"])
        assert sum(t["wall_s"]) == pytest.approx(row["wall_s"], rel=1e-3, abs=1e-5)
    if sys.platform.startswith("linux"):
        assert len(s.native_tids) == 1, s.native_tids
        (tid,) = s.native_tids
        if tid in s.listed_before:
            # the kernel gave it the id of a thread of an earlier test that the ledger
            # still lists as exited: the report shows one record per id
            pytest.skip(f"the native thread reused thread id {tid} of a listed record")
        # named by the report's rule (tests/test_profiler.py checks the rule itself):
        # "native thread <tid>" when it kept the name it inherited from its creator
        os_name = next(r[profiler._I_OS_NAME] for r in s.rows.values()
                       if r[profiler._I_TID] == tid)
        with open(f"/proc/self/task/{threading.get_native_id()}/comm") as f:
            creator = f.read().strip()
        native = [t["name"] for t in tl["threads"] if t["tid"] == tid]
        assert native == [profiler._native_name(tid, os_name)], \
            (native, os_name, creator, [t["name"] for t in tl["threads"]])
        if creator == profiler._PROCESS_NAME:
            assert native == [f"native thread {tid}"]
        lay = plot.layout(tl, max_threads=len(tl["threads"]))
        assert native[0] in [p.label for p in lay.panels]


def test_timeline_sums_the_threads_past_its_limit(short_lived_run, monkeypatch):
    s, report = short_lived_run
    monkeypatch.setattr(profiler, "TIMELINE_THREADS", 8)
    tl = profiler.timeline(s)
    n = len(report["threads"])
    assert len(tl["threads"]) == 8 and tl["threads_left_out"] == n - 8
    assert tl["left_out"]["threads"] == n - 8
    listed = sum(sum(t["wall_s"]) for t in tl["threads"]) + sum(tl["left_out"]["wall_s"])
    assert listed == pytest.approx(sum(t["wall_s"] for t in report["threads"]), rel=1e-3)
    # the 8 listed are those with the most wall time
    walls = sorted((t["wall_s"] for t in report["threads"]), reverse=True)
    assert min(sum(t["wall_s"]) for t in tl["threads"]) == pytest.approx(walls[7], rel=1e-3)
    lay = plot.layout(tl, max_threads=12)
    # the threads summed in the timeline can only be drawn summed
    assert lay.total == n and lay.own_panels == 8 and lay.summed == n - 8
    assert sum(p.threads for p in lay.panels) == n
    assert sum(p.total_wall_s for p in lay.panels) == pytest.approx(listed, rel=1e-6)


def test_folded_threads_keep_their_bins_in_one_row():
    import gil_adapt

    gil_adapt.install()
    s = profiler.Sampler(profiler.Options(interval=0.05, json_path="x.json", live=False),
                         sys.stderr)
    s.start()
    try:
        tids = short_threads_exited(5, 0.03)
        # the sampler's own thread stopped, its work done by hand: a tick that leaves the
        # exited threads' last bins open, then a fold as if the ledger had dropped them
        s._stop.set()
        s._thread.join()
        s.tick()
        walls = {key: sum(arr[1::profiler._WIDTH]) for key, arr in s.series.items()
                 if key[0] in tids}
        walls.update({key: walls.get(key, 0) + vec[0] for key, (_, vec) in s.open_bin.items()
                      if key[0] in tids})
        assert len(walls) == 5
        s._fold(set())
        assert not any(key[0] in tids for key in list(s.series) + list(s.open_bin))
        report = profiler.build_report(s, [], 0)
    finally:
        threading.setprofile(s._prev_profile)
    tl = report["timeline"]
    assert tl["threads_total"] == len(report["threads"])
    assert tl["folded_threads"] == s.folded >= 5
    row = next(t for t in tl["threads"] if t["tid"] == 0)
    assert row["name"] == f"({s.folded} exited threads, summed)"
    assert row["name"] in {t["name"] for t in report["threads"]}
    assert sum(row["wall_s"]) * 1e9 == pytest.approx(sum(walls.values()), rel=1e-3)
    assert not any(t["name"] == str(t["tid"]) for t in tl["threads"])  # no nameless leftovers
