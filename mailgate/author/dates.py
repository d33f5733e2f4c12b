"""docassemble's date functions: ``date_difference``, ``format_date``, ``format_datetime``,
``format_time``, ``as_datetime``, ``today`` and ``get_default_timezone``, with its signatures.

Dates are formatted by Babel in the language given (a locale such as ``"en"``, ``"fr"`` or
``"de_CH"``; English by default). Times are taken from mailgate's clock (``current_datetime()``,
which tests control). docassemble's server time zone is mailgate's ``[scheduler] timezone``: the
zone in which cron runs is the one naive dates are read in. Strings are parsed as docassemble
does, with ``dateutil.parser.parse``.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import babel.dates
import dateutil.parser
from dateutil.relativedelta import relativedelta

from mailgate.author.functions import current_datetime
from mailgate.core.context import CURRENT
from mailgate.errors import ActionError

DEFAULT_LANGUAGE = "en"
_SMALL = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def get_default_timezone() -> str:
    """The server's time zone: ``[scheduler] timezone`` of the running mailgate (UTC outside one)."""
    ctx = CURRENT.get()
    runtime = ctx.runtime if ctx is not None else None
    return "UTC" if runtime is None else str(runtime.config.scheduler.timezone)


def _zone(timezone: str | None) -> zoneinfo.ZoneInfo:
    name = get_default_timezone() if timezone is None else timezone
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ActionError(f"unknown time zone {name!r}; use an IANA name such as 'America/New_York'") from None


class DADateTime(dt.datetime):
    """A timezone-aware datetime with docassemble's DADateTime methods."""

    @classmethod
    def of(cls, value: dt.datetime) -> DADateTime:
        return cls(value.year, value.month, value.day, value.hour, value.minute, value.second,
                   value.microsecond, value.tzinfo, fold=value.fold)

    def format(self, format: str | None = None, language: str | None = None) -> str:  # noqa: A002 - docassemble's name
        return format_date(self, format=format, language=language)

    def format_date(self, format: str | None = None, language: str | None = None) -> str:  # noqa: A002
        return format_date(self, format=format, language=language)

    def format_datetime(self, format: str | None = None, language: str | None = None) -> str:  # noqa: A002
        return format_datetime(self, format=format, language=language)

    def format_time(self, format: str | None = None, language: str | None = None) -> str:  # noqa: A002
        return format_time(self, format=format, language=language)

    def plus(self, **kwargs: Any) -> DADateTime:
        """This date plus ``years=``, ``months=``, ``weeks=``, ``days=``, ``hours=``, ... (relativedelta's)."""
        return DADateTime.of(self + relativedelta(**kwargs))

    def minus(self, **kwargs: Any) -> DADateTime:
        return DADateTime.of(self - relativedelta(**kwargs))

    @property
    def dow(self) -> int:
        """Day of the week, Monday 1 to Sunday 7 (docassemble's ``dow``)."""
        return self.isoweekday()

    @property
    def week(self) -> int:
        return self.isocalendar()[1]


def _datetime(value: Any, what: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time.min)
    if isinstance(value, str):
        try:
            return dateutil.parser.parse(value)
        except (ValueError, OverflowError) as exc:
            raise ActionError(f"{what}: {value!r} is not a date ({exc})") from None
    raise ActionError(f"{what}: expected a date, datetime or string, not {type(value).__name__}")


def as_datetime(the_date: Any, timezone: str | None = None) -> DADateTime:
    """``the_date`` (date, datetime or string) as a DADateTime in ``timezone`` (default: the server's).

    A naive value is read as a time in that zone; an aware one is converted to it.
    """
    zone = _zone(timezone)
    value = _datetime(the_date, "as_datetime()")
    value = value.replace(tzinfo=zone) if value.tzinfo is None else value.astimezone(zone)
    return DADateTime.of(value)


def today(timezone: str | None = None, format: str | None = None) -> DADateTime | str:  # noqa: A002
    """Midnight of today in ``timezone`` (default: the server's); with ``format``, today formatted."""
    now = current_datetime().astimezone(_zone(timezone))
    midnight = DADateTime.of(now.replace(hour=0, minute=0, second=0, microsecond=0))
    return midnight if format is None else format_date(midnight, format=format)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def format_date(the_date: Any, format: str | None = None, language: str | None = None) -> str:  # noqa: A002
    """``the_date`` formatted by Babel: ``format`` is ``'long'`` (default, "January 5, 2026"),
    ``'short'``, ``'medium'``, ``'full'`` or a CLDR pattern such as ``'yyyy-MM-dd'``; empty for None."""
    if _empty(the_date):
        return ""
    return str(babel.dates.format_date(_datetime(the_date, "format_date()").date(), format=format or "long",
                                       locale=language or DEFAULT_LANGUAGE))


def format_datetime(the_date: Any, format: str | None = None, language: str | None = None) -> str:  # noqa: A002
    """``the_date`` with its time, formatted by Babel (``format`` as for ``format_date``); a naive
    value is read in the server's time zone."""
    if _empty(the_date):
        return ""
    value = _datetime(the_date, "format_datetime()")
    if value.tzinfo is None:
        value = value.replace(tzinfo=_zone(None))
    return str(babel.dates.format_datetime(value, format=format or "long", tzinfo=value.tzinfo,
                                           locale=language or DEFAULT_LANGUAGE))


def format_time(the_time: Any, format: str | None = None, language: str | None = None) -> str:  # noqa: A002
    """The time of ``the_time`` formatted by Babel (``format`` default ``'short'``: "3:30 PM")."""
    if _empty(the_time):
        return ""
    value = the_time if isinstance(the_time, dt.time) else _datetime(the_time, "format_time()").timetz()
    return str(babel.dates.format_time(value, format=format or "short", locale=language or DEFAULT_LANGUAGE))


class DateDifference:
    """The result of ``date_difference()``: ``years``, ``weeks``, ``days``, ``hours``, ``minutes``,
    ``seconds`` (floats, negative when ending is before starting) and ``delta`` (a timedelta)."""

    def __init__(self, starting: dt.datetime, ending: dt.datetime) -> None:
        self.starting = starting
        self.ending = ending
        self.delta = ending - starting
        seconds = self.delta.total_seconds()
        self.seconds = seconds
        self.minutes = seconds / 60
        self.hours = seconds / 3600
        self.days = seconds / 86400
        self.weeks = seconds / 604800
        self.years = self.days / 365.2425

    def __repr__(self) -> str:
        return f"DateDifference(days={self.days!r})"

    def describe(self, specificity: str | None = None, nice: bool = True) -> str:
        """The difference in words, "2 years, 3 months, and 1 day"; ``specificity`` ('year', 'month',
        'day', 'hour', 'minute' or 'second', default 'day' unless the difference is under a day)
        is the smallest unit named; ``nice`` writes numbers up to ten as words."""
        units = ("year", "month", "day", "hour", "minute", "second")
        start, end = sorted((self.starting, self.ending))
        diff = relativedelta(end, start)
        if specificity is None:
            specificity = "day" if abs(self.delta) >= dt.timedelta(days=1) else "second"
        if specificity not in units:
            raise ActionError(f"describe(specificity={specificity!r}): use one of {', '.join(units)}")
        parts = []
        for unit in units[: units.index(specificity) + 1]:
            count = abs(getattr(diff, unit + "s"))
            if count:
                number = _SMALL[count] if nice and count < len(_SMALL) else str(count)
                parts.append(f"{number} {unit}{'' if count == 1 else 's'}")
        if not parts:
            return f"{'zero' if nice else '0'} {specificity}s"
        if len(parts) <= 2:
            return " and ".join(parts)
        return ", ".join(parts[:-1]) + ", and " + parts[-1]


def date_difference(starting: Any = None, ending: Any = None, timezone: str | None = None) -> DateDifference:
    """From ``starting`` to ``ending`` (each default now); naive values are read in ``timezone``
    (default: the server's). ``date_difference(starting=filing_date).days > 20``."""
    zone = _zone(timezone)

    def aware(value: Any, what: str) -> dt.datetime:
        if value is None:
            return current_datetime()
        moment = _datetime(value, f"date_difference({what}=)")
        return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment

    return DateDifference(aware(starting, "starting"), aware(ending, "ending"))
