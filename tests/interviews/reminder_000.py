"""The 20-day reminder of docassemble's "Background processes" page (shared/seeds/000), ported block
by block: each YAML block becomes the action or object it stands for, and its code is copied as is.

The page's older flag name ``use_cron`` is kept on purpose (mailgate honours it with a deprecation
line). The final screen's ``${ format_date(filing_date) }`` is a Mako call, which mailgate's template
engine does not evaluate: the screen is the action's response, formatted in Python instead.
``date_difference`` comes from mailgate when it provides it; until then from the small stand-in below.
"""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import mailgate
from mailgate import (
    Interview,
    Template,
    action_argument,
    current_datetime,
    response,
    send_email,
    task_not_yet_performed,
)

interview = Interview("reminder-000")


def _as_date(value: Any) -> dt.date:
    return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))


def _date_difference(starting: Any = None, ending: Any = None, timezone: Any = None) -> SimpleNamespace:
    end = _as_date(ending) if ending is not None else current_datetime().date()
    return SimpleNamespace(days=(end - _as_date(starting)).days)


date_difference = getattr(mailgate, "date_difference", None) or _date_difference


@interview.action("start")  # mandatory code block, then the two questions, then the final screen
def start(answers: dict[str, Any]) -> None:
    # mandatory: True / code: |
    answers["use_cron"] = True
    answers["multi_user"] = True
    # question: When was the document filed? / What is your e-mail address?
    answers["filing_date"] = _as_date(action_argument("filing_date"))
    answers["email_address"] = str(action_argument("email_address"))
    # mandatory question with a Leave button: the session stays on the server
    response(f"Ok, I'll e-mail you at {answers['email_address']} 20 days\n"
             f"from {answers['filing_date']:%B %-d, %Y}.")


# template: reminder_email
reminder_email = Template(
    subject="Hey, it's been 20 days.",
    content="Don't forget about that thing you need to do!",
)


@interview.action("cron_daily")  # event: cron_daily
def cron_daily(answers: dict[str, Any]) -> None:
    filing_date, email_address = answers["filing_date"], answers["email_address"]
    if task_not_yet_performed('20 day reminder') and date_difference(starting=filing_date).days > 20:
        send_email(to=email_address, template=reminder_email, task='20 day reminder')
