"""A progress bar with ETA on stderr (a redrawn line on a terminal, a line per step elsewhere)."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """``total`` units of estimated cost; ETA = remaining estimate x (actual / estimated)."""

    def __init__(self, total_units: int, estimate_s: float, stream: Optional[TextIO] = None,
                 width: int = 28, enabled: bool = True) -> None:
        self.total = max(1, total_units)
        self.estimate_total = max(estimate_s, 1e-9)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.enabled = enabled
        self.done = 0
        self.done_estimate = 0.0
        self.t0 = time.monotonic()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._line_len = 0

    def set_total(self, total_units: int, estimate_s: float) -> None:
        """Re-estimates the whole (a staged plan learns its later stages as it goes): the
        total may grow or shrink, never below what is done."""
        self.total = max(1, total_units, self.done)
        self.estimate_total = max(estimate_s, self.done_estimate, 1e-9)

    def eta_s(self) -> Optional[float]:
        elapsed = time.monotonic() - self.t0
        remaining = max(0.0, self.estimate_total - self.done_estimate)
        if self.done_estimate <= 0:
            return remaining
        return remaining * (elapsed / self.done_estimate)

    def line(self, label: str = "") -> str:
        frac = min(1.0, self.done_estimate / self.estimate_total)
        fill = int(round(frac * self.width))
        bar = "#" * fill + "." * (self.width - fill)
        elapsed = time.monotonic() - self.t0
        return (f"[{bar}] {self.done}/{self.total} {frac * 100:3.0f}% "
                f"elapsed {format_duration(elapsed)} ETA {format_duration(self.eta_s())}"
                + (f"  {label}" if label else ""))

    def tick(self, label: str = "") -> None:
        """Redraws the bar (terminals only, at most 4 times a second)."""
        if not self.enabled or not self.tty:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.25:
            return
        self._last_draw = now
        self._draw(self.line(label))

    def step(self, estimate_s: float, label: str = "", result: str = "") -> None:
        """One unit finished (its estimated cost ``estimate_s``)."""
        self.done += 1
        self.done_estimate += estimate_s
        if not self.enabled:
            return
        text = self.line(label) + (f" -> {result}" if result else "")
        if self.tty:
            self._draw(text)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (the bar is redrawn after it)."""
        if not self.enabled:
            return
        if self.tty and self._line_len:
            self.stream.write("\r" + " " * self._line_len + "\r")
            self._line_len = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def _draw(self, text: str) -> None:
        pad = max(0, self._line_len - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._line_len = len(text)

    def close(self) -> None:
        if self.enabled and self.tty and self._line_len:
            self.stream.write("\n")
            self.stream.flush()
            self._line_len = 0
