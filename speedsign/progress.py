"""Time as progress bars show it: durations in words, elapsed time and time left.

Used by the bars of data-set creation (rendering, unpacking, importing) and by the Train
page's job cards. Plain values only: no Streamlit here.
"""

from __future__ import annotations

import math
import time


def format_seconds(seconds: float | None) -> str:
    """A duration for a person: "8 s", "1 min 30 s", "1 h 02 min"; "estimating…" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "estimating…"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressClock:
    """Elapsed time and a linear estimate of time left for a (done, total) progress callback."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def describe(self, done: int, total: int) -> tuple[float, str]:
        """The fraction done (0..1) and its text: "120/1,800 · 0.4 s elapsed · 6 s left"."""
        elapsed = time.perf_counter() - self.started
        fraction = min(max(done / total, 0.0), 1.0) if total else 0.0
        left = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        text = f"{done:,}/{total:,} · {elapsed:.1f} s elapsed"
        if fraction < 1:
            text += f" · {format_seconds(left)} left"
        return fraction, text
