"""Durations in words, moments in words, and the progress clock of long operations."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from speedsign.progress import MISSING, ProgressClock, format_seconds, format_time, parse_time


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


def test_parse_time_reads_iso_texts_and_numbers() -> None:
    assert parse_time("2026-12-03T14:05:00+00:00") == datetime(2026, 12, 3, 14, 5, tzinfo=UTC).timestamp()
    assert parse_time("2026-12-03T14:05:00") == parse_time("2026-12-03T14:05:00+00:00")  # speedsign writes UTC
    assert parse_time(1_700_000_000.5) == 1_700_000_000.5
    for bad in (None, "", "yesterday", True, 0, -5.0, math.nan, math.inf):
        assert parse_time(bad) is None, bad


def test_format_time_is_local_and_readable() -> None:
    moment = datetime(2026, 12, 3, 14, 5, tzinfo=UTC).timestamp()
    iso = "2026-12-03T14:05:00+00:00"
    assert format_time(iso, now=moment + 20) == "just now"
    assert format_time(iso, now=moment + 5 * 60 + 10) == "5 min ago"
    local = datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M")
    assert format_time(iso, now=moment + 3 * 3600) == local
    assert format_time(iso, now=moment - 3600) == local  # a clock ahead of ours: the moment itself
    assert format_time(moment, now=moment + 90) == "1 min ago"
    assert format_time(None) == format_time("not a time") == MISSING == "–"
