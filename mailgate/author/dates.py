"""docassemble's date functions: ``date_difference``, ``format_date``, ``format_datetime``,
``format_time``, ``as_datetime``, ``today``, ``current_datetime``, ``month_of``, ``day_of``,
``year_of``, ``dow_of``, ``date_interval``, ``get_default_timezone`` and the ``last_access_*``
family, with its signatures.

Dates are formatted by Babel in the language given (a locale such as ``"en"``, ``"fr"`` or
``"de_CH"``; English by default). Times are taken from mailgate's clock (``current_datetime()``,
which tests control). docassemble's server time zone is mailgate's ``[scheduler] timezone``: the
zone in which cron runs is the one naive dates are read in. Strings are parsed as docassemble
does, with ``dateutil.parser.parse``. Where docassemble returns "Bad date", these raise an
``ActionError`` saying what was wrong (a date, a format, a language or a time zone).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from typing import Any

import babel
import babel.dates
import dateutil.parser
from dateutil.relativedelta import relativedelta

from mailgate.author import functions
from mailgate.core import answers as codec
from mailgate.core.context import CURRENT, current
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
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        raise ActionError(f"unknown time zone {name!r}; use an IANA name such as 'America/New_York'") from None


def _locale(language: str | None) -> babel.Locale:
    name = DEFAULT_LANGUAGE if language is None else language
    try:
        return babel.Locale.parse(str(name).replace("-", "_"))
    except (ValueError, TypeError, babel.UnknownLocaleError):
        raise ActionError(f"unknown language {name!r}; use a locale such as 'en', 'fr' or 'de_CH'") from None


def _babel(function: str, format: str, format_it: Any) -> str:  # noqa: A002 - docassemble's name
    """``format_it()``, with Babel's error for a bad ``format`` said as the author's mistake."""
    try:
        return str(format_it())
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise ActionError(f"{function}(format={format!r}): not a format Babel knows ({type(exc).__name__}: {exc}); "
                          "use 'short', 'medium', 'long', 'full' or a CLDR pattern such as 'yyyy-MM-dd'") from None


def current_datetime(timezone: str | None = None) -> DADateTime:
    """Now, from mailgate's clock (which tests control), in ``timezone`` (default: the server's)."""
    return DADateTime.of(functions.current_datetime().astimezone(_zone(timezone)))


class DADateTime(dt.datetime):
    """A timezone-aware datetime with docassemble's DADateTime methods.

    As in docassemble, it shows as ``format_date()`` ("January 5, 2026", also in a template's
    ``${ }``), and adding a string concatenates it so.
    """

    def __str__(self) -> str:
        return format_date(self)

    def __add__(self, other: Any) -> Any:
        if isinstance(other, str):
            return str(self) + other
        return super().__add__(other)

    def __radd__(self, other: Any) -> Any:
        if isinstance(other, str):
            return other + str(self)
        return super().__radd__(other)

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
        return DADateTime.of(self + _interval("plus", kwargs))

    def minus(self, **kwargs: Any) -> DADateTime:
        return DADateTime.of(self - _interval("minus", kwargs))

    def replace_time(self, the_time: dt.time) -> DADateTime:
        """This date at ``the_time`` (a ``datetime.time``)."""
        return self.replace(hour=the_time.hour, minute=the_time.minute, second=the_time.second,
                            microsecond=the_time.microsecond)

    @property
    def nanosecond(self) -> int:
        return 0

    @property
    def dow(self) -> int:
        """Day of the week, Monday 1 to Sunday 7 (docassemble's ``dow``)."""
        return self.isoweekday()

    @property
    def week(self) -> int:
        return self.isocalendar()[1]


codec.register_datetime("DADateTime", DADateTime)  # saved answers keep it a DADateTime


def _interval(method: str, kwargs: dict[str, Any]) -> relativedelta:
    try:
        return relativedelta(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ActionError(f"{method}(): {exc}; use years=, months=, weeks=, days=, hours=, minutes=, seconds=") from None


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
    now = current_datetime(timezone)
    midnight = DADateTime.of(now.replace(hour=0, minute=0, second=0, microsecond=0))
    return midnight if format is None else format_date(midnight, format=format)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def format_date(the_date: Any, format: str | None = None, language: str | None = None) -> str:  # noqa: A002
    """``the_date`` formatted by Babel: ``format`` is ``'long'`` (default, "January 5, 2026"),
    ``'short'``, ``'medium'``, ``'full'`` or a CLDR pattern such as ``'yyyy-MM-dd'``; empty for None."""
    if _empty(the_date):
        return ""
    day, locale, pattern = _datetime(the_date, "format_date()").date(), _locale(language), format or "long"
    return _babel("format_date", pattern, lambda: babel.dates.format_date(day, format=pattern, locale=locale))


def format_datetime(the_date: Any, format: str | None = None, language: str | None = None) -> str:  # noqa: A002
    """``the_date`` with its time, formatted by Babel (``format`` as for ``format_date``); a naive
    value is read in the server's time zone."""
    if _empty(the_date):
        return ""
    value = _datetime(the_date, "format_datetime()")
    if value.tzinfo is None:
        value = value.replace(tzinfo=_zone(None))
    locale, pattern = _locale(language), format or "long"
    return _babel("format_datetime", pattern, lambda: babel.dates.format_datetime(
        value, format=pattern, tzinfo=value.tzinfo, locale=locale))


def format_time(the_time: Any, format: str | None = None, language: str | None = None) -> str:  # noqa: A002
    """The time of ``the_time`` formatted by Babel (``format`` default ``'short'``: "3:30 PM")."""
    if _empty(the_time):
        return ""
    value = the_time if isinstance(the_time, dt.time) else _datetime(the_time, "format_time()").timetz()
    locale, pattern = _locale(language), format or "short"
    return _babel("format_time", pattern, lambda: babel.dates.format_time(value, format=pattern, locale=locale))


def date_interval(**kwargs: Any) -> relativedelta:
    """A span to add to a date or subtract from it: ``today() + date_interval(months=1)``
    (``years=``, ``months=``, ``weeks=``, ``days=``, ``hours=``, ... as relativedelta's)."""
    return _interval("date_interval", kwargs)


def month_of(the_date: Any, as_word: bool = False, language: str | None = None) -> int | str:
    """The month of ``the_date`` (1-12), or with ``as_word`` its name in ``language`` ("January")."""
    day = _datetime(the_date, "month_of()")
    return _babel("month_of", "MMMM", lambda: babel.dates.format_date(day, "MMMM", _locale(language))) \
        if as_word else day.month


def day_of(the_date: Any, language: str | None = None) -> int:
    """The day of the month of ``the_date``."""
    return _datetime(the_date, "day_of()").day


def year_of(the_date: Any, language: str | None = None) -> int:
    """The year of ``the_date``."""
    return _datetime(the_date, "year_of()").year


def dow_of(the_date: Any, as_word: bool = False, language: str | None = None) -> int | str:
    """The day of the week of ``the_date``, Monday 1 to Sunday 7, or with ``as_word`` its name ("Monday")."""
    day = _datetime(the_date, "dow_of()")
    return _babel("dow_of", "EEEE", lambda: babel.dates.format_date(day, "EEEE", _locale(language))) \
        if as_word else day.isoweekday()


class DateDifference:
    """The result of ``date_difference()``, docassemble's: ``years``, ``weeks``, ``days``, ``hours``,
    ``minutes`` (floats), ``seconds`` (whole), ``delta`` (a timedelta), all negative when ending is
    before starting, and ``start`` / ``end`` (both in the time zone used). It shows as ``describe()``."""

    def __init__(self, start: dt.datetime, end: dt.datetime) -> None:
        self.start = start
        self.end = end
        self.delta = delta = end - start
        self.seconds = delta.days * 86400 + delta.seconds
        self.minutes = delta.days * 1440 + delta.seconds / 60
        self.hours = delta.days * 24 + delta.seconds / 3600
        self.days = delta.days + delta.seconds / 86400
        self.weeks = self.days / 7
        self.years = self.days / 365.2425

    def __repr__(self) -> str:
        return f"DateDifference(days={self.days!r})"

    def __str__(self) -> str:
        return self.describe()

    def describe(self, specificity: str | None = None, nice: bool = True, capitalize: bool = False) -> str:
        """The difference in words, as docassemble: "two years, three months, and one day".

        Years, months and days are named; hours and minutes only when those are all zero (minutes
        only under two hours), seconds only when nothing else is. ``specificity`` ('year', 'month',
        'day', 'hour', 'minute' or 'second') is the smallest unit named, and names the smaller ones
        down to it; ``nice`` writes numbers up to ten as words; ``capitalize`` the first letter.
        """
        units = ("year", "month", "day", "hour", "minute", "second")
        if specificity is not None and specificity not in units:
            raise ActionError(f"describe(specificity={specificity!r}): use one of {', '.join(units)}")
        smallest = units.index(specificity) if specificity is not None else len(units)
        diff = relativedelta(self.end, self.start)
        counts = {unit: abs(getattr(diff, unit + "s")) for unit in units}
        named = [u for u in units[:3] if units.index(u) <= smallest and counts[u]]
        if not named or specificity in ("hour", "minute", "second"):
            if counts["hour"] and smallest >= 3:
                named.append("hour")
            if counts["minute"] and smallest >= 4 and (counts["hour"] < 2 or specificity in ("minute", "second")):
                named.append("minute")
        if (not named or specificity == "second") and counts["second"] and smallest >= 5:
            named.append("second")
        parts = [(counts[u], u) for u in named] or [(0, specificity or "second")]
        words = [f"{_SMALL[n] if nice and n < len(_SMALL) else n} {unit}{'' if n == 1 else 's'}" for n, unit in parts]
        text = words[0] if len(words) == 1 else " and ".join(words) if len(words) == 2 else \
            ", ".join(words[:-1]) + ", and " + words[-1]
        return text[:1].upper() + text[1:] if capitalize else text


def date_difference(starting: Any = None, ending: Any = None, timezone: str | None = None) -> DateDifference:
    """From ``starting`` to ``ending`` (each default now), both taken into ``timezone`` (default: the
    server's): a naive value is read there, an aware one converted. ``date_difference(starting=filing_date).days > 20``."""
    zone = _zone(timezone)

    def moment(value: Any, what: str) -> dt.datetime:
        if value is None:
            return current_datetime(timezone)
        found = _datetime(value, f"date_difference({what}=)")
        return found.replace(tzinfo=zone) if found.tzinfo is None else found.astimezone(zone)

    return DateDifference(moment(starting, "starting"), moment(ending, "ending"))


# -- last access (docassemble's last_access_time / _delta / _days / _hours / _minutes) --------------
# docassemble keeps one access time per user (stamped by each save); mailgate keeps two per session:
# the last save by anyone but the cron user, and the last save by anyone.


def _privileges(value: Any, what: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value or ())
    if not all(isinstance(n, str) for n in names):
        raise ActionError(f"last_access_time({what}=...) takes a privilege name or a list of them, not {value!r}")
    return names


def last_access_time(include_privileges: Any = None, exclude_privileges: Any = None, include_cron: bool = False,
                     timezone: str | None = None) -> DADateTime | None:
    """When the session was last accessed (saved) by anyone but the cron user, as a DADateTime in UTC
    (or in ``timezone``); None if never. ``include_cron=True`` (or ``'cron'`` among
    ``include_privileges``) counts the cron user's saves too.

    mailgate does not keep an access time per user, so other privilege filters cannot be honoured:
    they raise, rather than quietly answer for every user (``exclude_privileges='cron'`` is the default).
    """
    ctx = current("last_access_time")
    include = _privileges(include_privileges, "include_privileges")
    exclude = [p for p in _privileges(exclude_privileges, "exclude_privileges") if p != "cron"]
    if "cron" in include:
        include_cron = True
        include.remove("cron")
    if include or exclude:
        raise ActionError(
            f"last_access_time() cannot filter by privilege {', '.join(repr(p) for p in include + exclude)}: mailgate "
            "records the last access by anyone but the cron user, and with include_cron=True by anyone")
    when = ctx.accessed_at
    if include_cron and ctx.modified_at is not None:
        when = ctx.modified_at if when is None else max(when, ctx.modified_at)
    if when is None:
        return None
    return DADateTime.of(dt.datetime.fromtimestamp(when, _zone(timezone) if timezone is not None else dt.UTC))


def last_access_delta(*pargs: Any, **kwargs: Any) -> dt.timedelta:
    """Time since ``last_access_time(*pargs, **kwargs)`` (zero if there was none)."""
    last = last_access_time(*pargs, **kwargs)
    return dt.timedelta(0) if last is None else max(dt.timedelta(0), current_datetime() - last)


def last_access_days(*pargs: Any, **kwargs: Any) -> float:
    """Days since the last access (``last_access_time()``'s arguments): by anyone but the cron user by default."""
    return last_access_delta(*pargs, **kwargs).total_seconds() / 86400


def last_access_hours(*pargs: Any, **kwargs: Any) -> float:
    """Hours since the last access (``last_access_time()``'s arguments)."""
    return last_access_delta(*pargs, **kwargs).total_seconds() / 3600


def last_access_minutes(*pargs: Any, **kwargs: Any) -> float:
    """Minutes since the last access (``last_access_time()``'s arguments)."""
    return last_access_delta(*pargs, **kwargs).total_seconds() / 60
