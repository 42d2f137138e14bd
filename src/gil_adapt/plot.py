"""``gil-adapt run --plot out.png``: each thread's states over time (needs matplotlib).

Draws the timeline of :func:`gil_adapt.profiler.timeline`, which covers the threads that
the text report counts, under the report's names (a thread Python did not start is named
by the OS name it set, else "native thread <tid>"). Each panel stacks the states as shares
of wall time, one bar per bin, so a thread that lived within one bin shows as one bar. A
bin holds the samples taken in it, and a sample covers the time since the one before: a
bin's bar starts where the previous bin with a sample (of any thread) ends, the first at 0,
so bins left empty between two samples (bins narrower than the sampling period) leave no
gaps in a thread's life.

With more threads than ``max_threads``, the ``max_threads - 1`` with the most wall time get
a panel each and all the others share the last panel, "other N threads": per bin, their
state times summed over their summed wall time (the timeline's ``left_out`` sum included).
The title says how many threads the figure covers, how many of them share the last panel,
and how many the report counts without a bin to draw.

:func:`layout` computes the panels, :func:`build_figure` draws them and
:func:`plot_timeline` writes the file. Uses matplotlib's object API with the Agg canvas, so
it changes no global backend of a program that uses matplotlib itself.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger("gil_adapt")

# state -> colour (colour-blind friendly Tableau-ish palette)
COLOURS = {"cpu": "#4e79a7", "gil_wait": "#e15759", "lock_wait": "#f28e2b",
           "runq_wait": "#b07aa1", "io_wait": "#59a14f", "idle": "#bab0ac"}
STATES = tuple(COLOURS)


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


@dataclass
class Panel:
    """One panel: a thread, or the threads summed in the last panel."""

    label: str
    threads: int                   # how many of the report's threads it covers
    t_s: List[float]               # bin centres, seconds since the start
    wall_s: List[float]            # wall time in each bin, summed over its threads
    shares: Dict[str, List[float]]  # state -> its share of wall_s in each bin
    tids: List[int] = field(default_factory=list)  # the timeline's listed threads in it

    @property
    def total_wall_s(self) -> float:
        return sum(self.wall_s)


@dataclass
class Layout:
    """What the figure draws, in order: the threads with a panel each, then the others."""

    panels: List[Panel]
    bin_s: float
    total: int         # threads the report counts
    own_panels: int    # threads with a panel of their own
    summed: int        # threads in the last panel ("other N threads")
    without_bins: int  # threads the report counts with no bin to draw
    folded: int        # exited threads the report (and so one thread here) sums
    starts: Dict[int, float] = field(default_factory=dict)  # bin index -> where its bar starts

    def title(self, prefix: str = "") -> str:
        head = f"{prefix}: share of wall time per state" if prefix else \
            "share of wall time per state"
        drawn = self.total - self.without_bins
        if self.without_bins:
            counts = (f"{drawn} of {self.total} threads ({self.without_bins} without "
                      "samples, not drawn)")
        else:
            counts = {0: "no threads", 1: "1 thread"}.get(self.total, f"all {self.total} threads")
        if self.summed:
            counts += (f": {self.own_panels} with a panel each, {self.summed} summed in the "
                       "last panel")
        if self.folded:
            counts += f"; one of them is {self.folded} exited threads summed (as in the report)"
        return f"{head}\n{counts}"


def _bin_index(t: float, bin_s: float) -> int:
    return round(t / bin_s - 0.5)


def _thread_panel(t: Dict[str, Any], bin_s: float) -> Panel:
    tid, name = t.get("tid", 0), str(t.get("name", ""))
    # "native thread <tid>" and the report's folded row (tid 0) say what they are already
    plain = not tid or name == f"native thread {tid}"
    label = _clip(name, 24) if plain else f"{_clip(name, 24)}\n({tid})"
    wall = list(t.get("wall_s") or [bin_s] * len(t["t_s"]))  # no per-bin wall: bins alike
    return Panel(label=label, threads=1, t_s=list(t["t_s"]), wall_s=wall,
                 shares={s: list(t.get(s) or [0.0] * len(t["t_s"])) for s in STATES},
                 tids=[tid])


def _sum_panels(label: str, parts: Sequence[Panel], bin_s: float) -> Panel:
    """Per bin: each state's time summed over the parts, as a share of their summed wall."""
    wall: Dict[int, float] = {}
    spent: Dict[int, Dict[str, float]] = {}
    for p in parts:
        for i, t in enumerate(p.t_s):
            idx = _bin_index(t, bin_s)
            w = p.wall_s[i]
            wall[idx] = wall.get(idx, 0.0) + w
            acc = spent.setdefault(idx, dict.fromkeys(STATES, 0.0))
            for s in STATES:
                acc[s] += p.shares[s][i] * w
    order = sorted(idx for idx in wall if wall[idx] > 0)
    return Panel(label=label, threads=sum(p.threads for p in parts),
                 t_s=[(idx + 0.5) * bin_s for idx in order], wall_s=[wall[i] for i in order],
                 shares={s: [spent[i][s] / wall[i] for i in order] for s in STATES},
                 tids=[tid for p in parts for tid in p.tids])


def layout(timeline: Dict[str, Any], max_threads: int = 12) -> Layout:
    """The panels for ``timeline``: at most ``max_threads``, covering every thread in it."""
    if max_threads < 1:
        raise ValueError(f"max_threads must be at least 1 (got {max_threads})")
    bin_s = float(timeline.get("bin_s") or 0.0) or 1.0
    threads = [_thread_panel(t, bin_s) for t in timeline.get("threads", []) if t.get("t_s")]
    listed_empty = sum(1 for t in timeline.get("threads", []) if not t.get("t_s"))
    left = timeline.get("left_out")
    left_n = int(timeline.get("threads_left_out") or 0)
    rest: List[Panel] = []
    if left_n:
        if left and left.get("t_s"):
            rest.append(Panel(label="", threads=left_n, t_s=list(left["t_s"]),
                              wall_s=list(left["wall_s"]),
                              shares={s: list(left[s]) for s in STATES}))
        else:
            listed_empty += left_n  # counted, but their bins are not in the timeline
    without_bins = int(timeline.get("threads_without_bins") or 0) + listed_empty
    total = int(timeline.get("threads_total")
                or len(threads) + left_n + without_bins)
    sampled = sorted({_bin_index(t, bin_s) for p in threads + rest for t in p.t_s})
    starts = {idx: (prev + 1) * bin_s for prev, idx in zip([-1] + sampled, sampled)}
    threads.sort(key=lambda p: (-p.total_wall_s, p.tids[0]))
    if rest or len(threads) > max_threads:
        own, rest = threads[:max_threads - 1], threads[max_threads - 1:] + rest
    else:
        own = threads
    panels = sorted(own, key=lambda p: p.tids[0])
    summed = sum(p.threads for p in rest)
    if rest:
        label = f"other {summed} thread{'s' if summed != 1 else ''}" if own else \
            f"all {summed} thread{'s' if summed != 1 else ''}"
        panels.append(_sum_panels(label, rest, bin_s))
    return Layout(panels=panels, bin_s=bin_s, total=total, own_panels=len(own),
                  summed=summed, without_bins=without_bins,
                  folded=int(timeline.get("folded_threads") or 0), starts=starts)


def _steps(p: Panel, bin_s: float,
           starts: Dict[int, float]) -> Tuple[List[float], List[List[float]]]:
    """Each bin as a bar from ``starts[bin]`` to the bin's end: x and, per state, y of a
    step outline that drops to 0 between bars that do not touch."""
    xs: List[float] = []
    ys: List[List[float]] = [[] for _ in STATES]

    def point(x: float, values: Sequence[float]) -> None:
        xs.append(x)
        for y, v in zip(ys, values):
            y.append(v)

    zero = [0.0] * len(STATES)
    right = None
    for i, t in enumerate(p.t_s):
        idx = _bin_index(t, bin_s)
        left = starts.get(idx, idx * bin_s)
        if right is None or left - right > 1e-9 * bin_s:
            if right is not None:
                point(right, zero)
            point(left, zero)
        values = [p.shares[s][i] for s in STATES]
        right = (idx + 1) * bin_s
        point(left, values)
        point(right, values)
    if right is not None:
        point(right, zero)
    return xs, ys


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def build_figure(timeline: Dict[str, Any], title: str = "", max_threads: int = 12) -> Figure:
    """The figure for ``timeline`` (see :func:`layout`), on an Agg canvas.

    Raises :class:`PlotUnavailable` when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as e:
        raise PlotUnavailable("plotting needs matplotlib (pip install matplotlib)") from e
    lay = layout(timeline, max_threads)
    rows = max(1, len(lay.panels))
    fig = Figure(figsize=(10, 1.4 * rows + 1.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    end = 0.0
    for ax, p in zip(axes, lay.panels):
        xs, ys = _steps(p, lay.bin_s, lay.starts)
        drawn = [i for i, s in enumerate(STATES) if any(ys[i])]
        if drawn:
            ax.stackplot(xs, *[ys[i] for i in drawn], labels=[STATES[i] for i in drawn],
                         colors=[COLOURS[STATES[i]] for i in drawn])
        end = max(end, xs[-1] if xs else 0.0)
        ax.set_ylim(0, 1)
        ax.set_ylabel(p.label, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=7)
    if not lay.panels:
        axes[0].text(0.5, 0.5, "no samples", ha="center", va="center")
    elif end > 0:
        axes[0].set_xlim(0, end)
    axes[-1].set_xlabel(f"seconds (bins of {lay.bin_s:g} s)")
    handles = [Patch(color=c, label=s) for s, c in COLOURS.items()]
    top = 1.0 - 0.9 / fig.get_figheight()  # room for the title and the legend (inches)
    fig.suptitle(lay.title(title), y=0.995, va="top", fontsize=9)
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, top),
               ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    return fig


def plot_timeline(timeline: Dict[str, Any], path: str, title: str = "",
                  max_threads: int = 12) -> str:
    """Writes the figure to ``path`` (format from its extension); returns ``path``.

    Raises :class:`PlotUnavailable` when matplotlib is not installed.
    """
    fig = build_figure(timeline, title, max_threads)
    fig.savefig(path, dpi=100)
    log.info("gil-adapt run: plot written to %s", path)
    return path
