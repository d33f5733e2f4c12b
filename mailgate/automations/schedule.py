"""When a ``Repeat`` node fires next (pure functions of epoch seconds).

Occurrences are the stored start point + k·interval, or (``At(h, m)``) h:m local time in the given
zone each day (every n days with ``EveryNDays(n)``), computed like cron across DST changes: a local
time that does not exist on a spring-forward day fires at the first valid instant after the gap, an
ambiguous one on a fall-back day fires once (at its first occurrence). The next occurrence is always
strictly after the moment the node was entered, so periods missed while nothing ran fire once.
"""

from __future__ import annotations

import datetime as dt
import math
import zoneinfo


def next_interval(start: float, interval: float, after: float) -> float:
    """The first ``start + k·interval`` (k >= 1) strictly after ``after``."""
    k = max(1, math.floor((after - start) / interval) + 1)
    when = start + k * interval
    while when <= after:  # float rounding
        when += interval
    return when


def local_at(day: dt.date, hour: int, minute: int, zone: zoneinfo.ZoneInfo) -> float:
    """Epoch seconds of ``day`` at hour:minute in ``zone``."""
    # PEP 495: fold=0 maps a time inside a spring-forward gap to the instant it would be without the
    # jump (02:30 -> 03:30 summer time) and an ambiguous fall-back time to its first occurrence.
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=zone, fold=0).timestamp()


def next_daily(start: float, hour: int, minute: int, after: float, zone: zoneinfo.ZoneInfo, every_days: int = 1) -> float:
    """The first h:m local time strictly after ``after`` on a day ``k·every_days`` days after ``start``'s day."""
    first_day = dt.datetime.fromtimestamp(start, zone).date()
    day = dt.datetime.fromtimestamp(after, zone).date() - dt.timedelta(days=1)
    for _ in range(every_days + 3):
        if (day - first_day).days % every_days == 0:
            when = local_at(day, hour, minute, zone)
            if when > after:
                return when
        day += dt.timedelta(days=1)
    raise AssertionError("unreachable: a daily occurrence exists within every_days + 2 days")
