"""docassemble's date functions: signatures and results as its documentation gives them, via Babel."""

from __future__ import annotations

import asyncio
import datetime as dt
import zoneinfo
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from mailgate import (
    DADateTime,
    Template,
    as_datetime,
    date_difference,
    format_date,
    format_datetime,
    format_time,
    get_default_timezone,
    today,
)
from mailgate.core.context import CURRENT, ActionContext, User
from mailgate.errors import ActionError

NOW = dt.datetime(2026, 3, 1, 3, 30, tzinfo=dt.UTC)  # still February 28 in New York


@pytest.fixture
def clock() -> Iterator[ActionContext]:
    """A running action whose mailgate clock reads NOW and whose server time zone is New York's."""
    runtime = SimpleNamespace(store_clock=lambda: NOW.timestamp(),
                              config=SimpleNamespace(scheduler=SimpleNamespace(timezone="America/New_York")))
    ctx = ActionContext(kind="foreground", session_id="s1", interview=None, action="a", arguments={}, user=User(),
                        runtime=runtime, loop=asyncio.new_event_loop())
    token = CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        CURRENT.reset(token)
        ctx.loop.close()


def test_format_date_is_babel_in_the_language_given() -> None:
    day = dt.date(2026, 1, 5)
    assert format_date(day) == "January 5, 2026"
    assert format_date(day, format="short") == "1/5/26"
    assert format_date(day, format="yyyy-MM-dd") == "2026-01-05"
    assert format_date(day, language="fr") == "5 janvier 2026"
    assert format_date(day, format="full", language="de") == "Montag, 5. Januar 2026"
    assert format_date("2026-01-05") == format_date("January 5, 2026") == "January 5, 2026"
    assert format_date(None) == "" and format_date("") == ""
    with pytest.raises(ActionError, match="not a date"):
        format_date("not a date at all")


def test_format_datetime_and_format_time() -> None:
    moment = dt.datetime(2026, 1, 5, 15, 30, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
    assert format_time(moment) == "3:30\u202fPM" or format_time(moment) == "3:30 PM"
    assert format_time(moment, format="HH:mm") == "15:30"
    assert format_datetime(moment, format="yyyy-MM-dd HH:mm zzzz") == "2026-01-05 15:30 Central European Standard Time"
    assert format_datetime(moment, language="fr").startswith("5 janvier 2026")


def test_as_datetime_and_today_in_the_server_time_zone(clock: ActionContext) -> None:
    assert get_default_timezone() == "America/New_York"
    naive = as_datetime("2026-01-05 10:00")
    assert isinstance(naive, DADateTime)
    assert naive.utcoffset() == dt.timedelta(hours=-5) and naive.hour == 10  # read in the server's zone
    aware = as_datetime(dt.datetime(2026, 1, 5, 15, 0, tzinfo=dt.UTC), timezone="Europe/Paris")
    assert (aware.hour, aware.tzinfo) == (16, zoneinfo.ZoneInfo("Europe/Paris"))
    assert as_datetime(dt.date(2026, 1, 5)).hour == 0
    assert aware.format_date() == "January 5, 2026" and aware.plus(months=1).month == 2
    assert aware.minus(days=5).day == 31 and aware.dow == 1
    midnight = today()
    assert isinstance(midnight, DADateTime)
    assert (midnight.date(), midnight.hour) == (dt.date(2026, 2, 28), 0)  # New York's day, not UTC's
    assert today(timezone="UTC") == dt.datetime(2026, 3, 1, tzinfo=zoneinfo.ZoneInfo("UTC"))
    assert today(format="yyyy-MM-dd") == "2026-02-28"
    with pytest.raises(ActionError, match="unknown time zone"):
        as_datetime("2026-01-05", timezone="Mars/Olympus")


def test_date_difference(clock: ActionContext) -> None:
    diff = date_difference(starting=dt.date(2026, 2, 7))  # to now; the date is midnight in New York
    assert diff.days == pytest.approx(22 - 1.5 / 24)
    assert diff.delta == NOW - dt.datetime(2026, 2, 7, 5, tzinfo=dt.UTC)
    assert diff.weeks == pytest.approx(diff.days / 7) and diff.hours == pytest.approx(diff.days * 24)
    assert diff.minutes == pytest.approx(diff.hours * 60) and diff.seconds == diff.delta.total_seconds()
    back = date_difference(starting="2026-03-04", ending="2026-03-01")
    assert back.days == -3
    long = date_difference(starting=dt.date(2024, 1, 1), ending=dt.date(2026, 3, 4))
    assert long.describe() == "two years, two months, and three days"
    assert long.describe(specificity="month") == "two years and two months"
    assert long.describe(nice=False) == "2 years, 2 months, and 3 days"
    # docassemble names minutes only under two hours, and seconds only when nothing else is
    assert date_difference(starting="2026-01-01 10:00", ending="2026-01-01 12:30").describe() == "two hours"


def test_the_20_day_reminder_as_docassemble_writes_it(clock: ActionContext) -> None:
    # 000/001 "Scheduled tasks": the question and the cron test, verbatim but for YAML.
    question = Template(content="""
        Ok, I'll e-mail you at ${ email_address} 20 days
        from ${ format_date(filing_date) }.
    """)
    answers = {"email_address": "ann@example.org", "filing_date": dt.date(2026, 2, 7)}
    assert question.render_text(answers) == "Ok, I'll e-mail you at ann@example.org 20 days\nfrom February 7, 2026.\n"
    assert date_difference(starting=answers["filing_date"]).days > 20
    assert not date_difference(starting=dt.date(2026, 2, 9)).days > 20


def test_a_dadatetime_shows_as_docassemble_shows_it(clock: ActionContext) -> None:
    # docassemble: str(DADateTime) is format_date(); "${ today() }" in a template reads as a date
    assert str(today()) == "February 28, 2026" and f"{as_datetime('01/05/2026')}" == "January 5, 2026"
    assert "Due " + today().plus(days=20) == "Due March 20, 2026"
    assert today() + " is today" == "February 28, 2026 is today"
    assert isinstance(today() + dt.timedelta(days=1), DADateTime)
    t = Template(content="Filed ${ as_datetime(filing_date) }; due ${ today().plus(days=20) }.")
    assert t.render_text({"filing_date": "2026-01-05"}) == "Filed January 5, 2026; due March 20, 2026.\n"
    assert t.render_html({"filing_date": "2026-01-05"}) == "<p>Filed January 5, 2026; due March 20, 2026.</p>\n"
    assert today().replace_time(dt.time(9, 30)).format_time(format="HH:mm") == "09:30"
    assert today().nanosecond == 0


def test_current_datetime_is_a_dadatetime_in_the_server_time_zone(clock: ActionContext) -> None:
    from mailgate import current_datetime
    now = current_datetime()
    assert isinstance(now, DADateTime) and now == NOW
    assert (now.tzinfo, now.day, now.hour) == (zoneinfo.ZoneInfo("America/New_York"), 28, 22)
    assert current_datetime("UTC").day == 1 and str(current_datetime("UTC")) == "March 1, 2026"


def test_date_difference_as_docassemble_computes_it(clock: ActionContext) -> None:
    diff = date_difference(starting="2026-01-01 10:00:00.5", ending=dt.datetime(2026, 1, 3, 15, tzinfo=dt.UTC))
    zone = zoneinfo.ZoneInfo("America/New_York")
    assert (diff.start.tzinfo, diff.end.tzinfo) == (zone, zone)  # both taken into the server's zone
    assert diff.end.hour == 10 and diff.seconds == 2 * 86400 - 1 and isinstance(diff.seconds, int)
    assert str(diff) == diff.describe() == "one day"  # hours are named only when no year, month or day is

    def words(start: str, end: str, **kwargs: object) -> str:
        return date_difference(start, end).describe(**kwargs)  # type: ignore[arg-type]

    assert words("2026-01-01 10:00", "2026-01-01 11:30:20") == "one hour and 30 minutes"
    assert words("2026-01-01 10:00", "2026-01-01 13:20") == "three hours"  # minutes only under two hours
    assert words("2026-01-01 10:00", "2026-01-01 10:00:45") == "45 seconds"
    assert words("2026-01-01", "2026-01-01") == "zero seconds"
    assert words("2026-01-01", "2026-01-01 03:00", specificity="day") == "zero days"
    assert words("2024-01-01", "2026-03-04 05:06:07", specificity="second") == (
        "two years, two months, three days, five hours, six minutes, and seven seconds")
    assert words("2026-03-04", "2024-01-01", capitalize=True) == "Two years, two months, and three days"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: format_date("2026-01-05", format="bogus"), r"format_date\(format='bogus'\): not a format Babel knows"),
        (lambda: format_date("2026-01-05", format="qqqqqqq"), "not a format Babel knows"),
        (lambda: format_datetime("2026-01-05", format=5), "not a format Babel knows"),
        (lambda: format_date("2026-01-05", language="xx"), "unknown language 'xx'; use a locale such as"),
        (lambda: format_time("10:00", language=5), "unknown language 5"),
        (lambda: as_datetime("2026-01-05", timezone=5), "unknown time zone 5"),
        (lambda: today().plus(fortnights=1), r"plus\(\): .*fortnights.*use years="),
        (lambda: format_time("25:99"), "'25:99' is not a date"),
        (lambda: date_difference(starting=[1]), r"date_difference\(starting=\): expected a date"),
    ],
)
def test_bad_input_fails_as_an_action_error(clock: ActionContext, call: object, message: str) -> None:
    with pytest.raises(ActionError, match=message):
        call()  # type: ignore[operator]


def test_a_language_may_be_written_with_a_hyphen() -> None:
    assert format_date(dt.date(2026, 1, 5), format="full", language="de-CH") == "Montag, 5. Januar 2026"


def test_month_day_year_dow_of_and_date_interval() -> None:
    from mailgate import date_interval, day_of, dow_of, month_of, year_of
    assert (month_of("01/05/2026"), day_of("01/05/2026"), year_of("01/05/2026"), dow_of("01/05/2026")) == (1, 5, 2026, 1)
    assert month_of(dt.date(2026, 1, 5), as_word=True) == "January"
    assert month_of("2026-01-05", as_word=True, language="fr") == "janvier"
    assert dow_of("2026-01-11", as_word=True) == "Sunday" and dow_of("2026-01-11") == 7
    assert as_datetime("2026-01-31", timezone="UTC") + date_interval(months=1) == as_datetime("2026-02-28", timezone="UTC")
    t = Template(content="${ dow_of(d, as_word=True) }, ${ day_of(d) } ${ month_of(d, as_word=True) } ${ year_of(d) }")
    assert t.render_text({"d": "2026-01-05"}) == "Monday, 5 January 2026\n"
    with pytest.raises(ActionError, match=r"date_interval\(\): .*fortnights"):
        date_interval(fortnights=2)
    with pytest.raises(ActionError, match=r"month_of\(\): 'soon' is not a date"):
        month_of("soon")
