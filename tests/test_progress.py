"""Durations in words and the progress clock of long operations."""

from __future__ import annotations

import math

from speedsign.progress import ProgressClock, format_seconds


def test_format_seconds() -> None:
    assert format_seconds(7.6) == "8 s"
    assert format_seconds(None) == "estimating…"
    assert format_seconds(math.inf) == "estimating…"
    assert format_seconds(90) == "1 min 30 s"
    assert format_seconds(3725) == "1 h 02 min"


def test_progress_clock_fraction_and_text() -> None:
    clock = ProgressClock()
    fraction, text = clock.describe(5, 10)
    assert fraction == 0.5 and text.startswith("5/10 · ") and text.endswith(" left")
    fraction, text = clock.describe(10, 10)
    assert fraction == 1.0 and "left" not in text
    assert clock.describe(0, 0)[0] == 0.0
