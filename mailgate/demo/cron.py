"""Ports of docassemble's scheduled-task demos: the hourly counter and the 20-day reminder."""

from __future__ import annotations

import datetime as dt
from typing import Any

from mailgate import (
    Interview,
    Template,
    action_argument,
    command,
    current_datetime,
    response,
    send_email,
    task_not_yet_performed,
)

Answers = dict[str, Any]

counter = Interview("cron-counter")


@counter.action("start")
def _counter_start(answers: Answers) -> None:
    answers["allow_cron"] = True
    answers["multi_user"] = True
    answers["counter"] = 0
    response("I will count every hour for 48 hours, then delete this session.")


@counter.action("cron_hourly")
def _counter_hourly(answers: Answers) -> None:
    answers["counter"] += 1
    if answers["counter"] > 48:
        command("exit")
    response(f"counter is {answers['counter']}")


@counter.action("screen")
def _counter_screen(answers: Answers) -> None:
    response(f"The counter is {answers.get('counter', 0)}.")


def _date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


reminder = Interview("cron-reminder")


@reminder.action("start")
def _reminder_start(answers: Answers) -> None:
    answers["allow_cron"] = True
    answers["multi_user"] = True
    answers["filing_date"] = _date(action_argument("filing_date"))
    answers["email_address"] = str(action_argument("email_address"))
    response(f"Ok, I'll e-mail you at {answers['email_address']} 20 days from {answers['filing_date']:%B %-d, %Y}.")


reminder_email = Template(
    subject="Hey, it's been 20 days.",
    content="Don't forget about that thing you need to do!",
)


@reminder.action("cron_daily")
def _reminder_daily(answers: Answers) -> None:
    days = (current_datetime().date() - _date(answers["filing_date"])).days
    if task_not_yet_performed("20 day reminder") and days > 20:
        send_email(to=answers["email_address"], template=reminder_email, task="20 day reminder")
    response()
