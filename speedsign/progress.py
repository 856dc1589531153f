"""Time as the pages show it: durations in words, elapsed time and time left, moments.

Used by the bars of data-set creation (rendering, unpacking, importing) and by the Train
page's job cards and tables. Plain values only: no Streamlit here.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

MISSING = "–"  # what a table or card shows for a value it does not have (never "None")


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


def parse_time(value: str | float | None) -> float | None:
    """A moment from a run file as seconds since the epoch: an ISO text or a number; None when unreadable.

    An ISO text without a zone is taken as UTC: speedsign writes UTC (`runs.now_iso`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value > 0 else None
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(value: str | float | None, *, now: float | None = None) -> str:
    """A moment for a person, in local time: "just now", "5 min ago" within the hour, else
    "2026-12-03 14:05"; "–" when unknown. `value` is an ISO text or seconds since the epoch."""
    moment = parse_time(value)
    if moment is None:
        return MISSING
    age = (time.time() if now is None else now) - moment
    if 0 <= age < 60:
        return "just now"
    if 0 <= age < 3600:
        return f"{int(age // 60)} min ago"
    return datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M")


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
