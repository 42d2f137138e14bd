"""``gil-adapt run --plot out.png``: each thread's states over time (needs matplotlib).

Draws the timeline of :func:`gil_adapt.profiler.timeline`: one panel per thread (the
``max_threads`` longest-lived), each a stacked area of the thread's states as shares of wall
time per bin. Uses matplotlib's object API with the Agg canvas, so it changes no global
backend of a program that uses matplotlib itself.
"""
from __future__ import annotations

import logging
from typing import Any, Dict

log = logging.getLogger("gil_adapt")

# state -> colour (colour-blind friendly Tableau-ish palette)
COLOURS = {"cpu": "#4e79a7", "gil_wait": "#e15759", "lock_wait": "#f28e2b",
           "runq_wait": "#b07aa1", "io_wait": "#59a14f", "idle": "#bab0ac"}


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot_timeline(timeline: Dict[str, Any], path: str, title: str = "",
                  max_threads: int = 12) -> str:
    """Writes the figure to ``path`` (format from its extension); returns ``path``.

    Raises :class:`PlotUnavailable` when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as e:
        raise PlotUnavailable("plotting needs matplotlib (pip install matplotlib)") from e
    threads = [t for t in timeline.get("threads", []) if t.get("t_s")]
    threads.sort(key=lambda t: -len(t["t_s"]))
    shown = sorted(threads[:max_threads], key=lambda t: t["tid"])
    rows = max(1, len(shown))
    fig = Figure(figsize=(10, 1.4 * rows + 1.0))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    for ax, t in zip(axes, shown):
        states = [s for s in COLOURS if any(t.get(s, []))]
        ax.stackplot(t["t_s"], *[t[s] for s in states], labels=states,
                     colors=[COLOURS[s] for s in states], step=None)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{t['name']}\n({t['tid']})", rotation=0, ha="right", va="center",
                      fontsize=8)
        ax.set_yticks([0, 0.5, 1])
        ax.tick_params(labelsize=7)
    if not shown:
        axes[0].text(0.5, 0.5, "no samples", ha="center", va="center")
    axes[-1].set_xlabel(f"seconds (bins of {timeline.get('bin_s', 0):g} s)")
    handles = [Patch(color=c, label=s) for s, c in COLOURS.items()]
    extra = f" (longest-lived {len(shown)} of {len(threads)} threads)" \
        if len(threads) > len(shown) else ""
    top = 1.0 - 0.9 / fig.get_figheight()  # room for the title and the legend (inches)
    fig.suptitle(f"{title}: share of wall time per state{extra}", y=0.995, va="top",
                 fontsize=9)
    fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, top),
               ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=100)
    log.info("gil-adapt run: plot written to %s", path)
    return path
